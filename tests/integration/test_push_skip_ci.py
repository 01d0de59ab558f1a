"""A push whose pusher asked for no build (`git push -o ci.skip`, `-o integrations.skip_ci`, a
commit message with [skip ci]) builds nothing, neither at its webhook nor at a later catch-up
pass; GitLab's own sample push,
which a system hook's "Test" button sends, starts no build either. Real parts: a redis-server,
the web app's webhook endpoint, the catch-up with python-gitlab against the GitLab API fake."""

import json
import logging

from service.app import create_app
from tests.support.app import GITLAB_TOKEN, make_app, make_settings
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from workers.adapters import gitlab as gitlab_api
from workers.config.config_file import parse_file_config
from workers.engine import catchup

CONFIG = """
routes:
  - {project: "team/*", ref: "refs/heads/*", job: build, template: small}
templates:
  small: {}
catchUp:
  groups: [team]
"""
APP = "team/app"
# Gitlab::DataBuilder::Push::SAMPLE_DATA (lib/gitlab/data_builder/push.rb, GitLab 17-18): what
# TestHooks::SystemService#push_events_data sends for a system hook's "Test > Push events"
# (and Push.build_sample for a project whose repository is empty). Its project and commit are
# no one's: a build of it fails on checkout and its statuses are refused (404).
SAMPLE_DATA = {
    "object_kind": "push", "event_name": "push",
    "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
    "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "ref": "refs/heads/master",
    "ref_protected": True, "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    "message": "Hello World", "user_id": 4, "user_name": "John Smith",
    "user_email": "john@example.com", "project_id": 15,
    "project": {"id": 15, "name": "gitlab", "description": "",
                "web_url": "http://test.example.com/gitlab/gitlab",
                "git_ssh_url": "git@test.example.com:gitlab/gitlab.git",
                "git_http_url": "http://test.example.com/gitlab/gitlab.git",
                "namespace": "gitlab", "visibility_level": 0,
                "path_with_namespace": "gitlab/gitlab", "default_branch": "master"},
    "commits": [{"id": "c5feabde2d8cd023215af4d2ceeb7a64839fc428",
                 "message": "Add simple search to projects in public area\n\ncommit message body",
                 "title": "Add simple search to projects in public area",
                 "timestamp": "2013-05-13T18:18:08+00:00",
                 "url": "https://test.example.com/gitlab/gitlab/-/commit/"
                        "c5feabde2d8cd023215af4d2ceeb7a64839fc428",
                 "author": {"name": "Test User", "email": "test@example.com"}}],
    "total_commits_count": 1, "push_options": {"ci": {"skip": True}}}


def sha(n: int) -> str:
    return f"{n:040x}"


def push(client, project: str, branch: str, commit: str, push_options, delivery: str,
         message: str = "a change"):
    body = fixture("gitlab_push_real_lrz.json")
    body.update(ref=f"refs/heads/{branch}", after=commit, checkout_sha=commit,
                push_options=push_options)
    body["commits"][-1].update(id=commit, message=message)
    body["project"]["path_with_namespace"] = project
    return client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery})


def intake(state) -> list[dict]:
    return [json.loads(r) for r in state.redis.lrange(state.intake.key, 0, -1)]


def test_a_push_asking_for_no_build_is_built_neither_by_its_webhook_nor_by_the_catch_up(
        redis_url, gitlab_fake):
    config = parse_file_config(CONFIG)
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(APP, branches={"main": sha(1)})

    def catch_up() -> dict:
        return catchup.catch_up_once(catchup.CatchUp(
            settings=ctx.settings, config=config, state=ctx.state,
            gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)))
    assert catch_up()["baseline"] == 1

    client = app.test_client()
    for n, options in enumerate(({"ci": {"skip": True}}, {"integrations": {"skip_ci": True}})):
        branch, commit = f"wip-{n}", sha(10 + n)
        gitlab_fake.push(APP, branch, commit)
        answer = push(client, APP, branch, commit, options, f"delivery-{n}")
        assert answer.status_code == 200, answer.json
        assert answer.json["status"] == "ignored" and "asked for no build" in \
            answer.json["reason"]
    bump = "chore(release): 1.4.0 [skip ci]\n\nversion bump pushed back by the release job"
    gitlab_fake.push(APP, "release", sha(12), message=bump)
    answer = push(client, APP, "release", sha(12), {}, "delivery-2", message=bump)
    assert answer.json == {"status": "ignored",
                           "reason": "the commit's message asks for no build ([skip ci])"}
    # pushes whose deliveries GitLab failed: the catch-up builds the one that asked for no
    # skip, and reads a [skip ci] head's message as the webhook does
    gitlab_fake.push(APP, "feature", sha(20))
    gitlab_fake.push(APP, "bump", sha(21), message="[ci skip] 1.4.1")
    assert intake(ctx.state) == []

    second = catch_up()
    assert second.get("queued") == 1 and second.get("skipped") == 1, second
    assert [r["build"]["ref"] for r in intake(ctx.state)] == ["refs/heads/feature"]


def test_the_sample_push_a_system_hooks_test_sends_starts_no_build(redis_url):
    # the shipped example config routes every project's branch pushes ("*")
    client = make_app(redis_url).test_client()
    answer = client.post("/webhooks/gitlab", json=SAMPLE_DATA, headers={
        "X-Gitlab-Event": "System Hook", "X-Gitlab-Token": GITLAB_TOKEN})
    assert answer.status_code == 200, answer.json
    assert answer.json == {"status": "ignored",
                           "reason": "push option ci.skip: the pusher asked for no build"}


def test_the_tag_push_a_projects_test_sends_without_tags_starts_no_build(redis_url):
    """Integrations::ProjectTestData#tag_push_events_data (Push.build_sample, is_tag: true)
    in a project with commits and no tag: tag v1.0.0, no one's, with `after` the default
    branch's head and checkout_sha null (Push#checkout_sha: no such tag). The example
    config routes every project's tags to the build job, with GIT_TAG v1.0.0."""
    body = fixture("gitlab_push_real_lrz.json")
    body.update(object_kind="tag_push", event_name="tag_push", ref="refs/tags/v1.0.0",
                before=body["commits"][0]["id"], checkout_sha=None, push_options={})
    answer = make_app(redis_url).test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Token": GITLAB_TOKEN})
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "ignored"
    assert answer.json["reason"].startswith("tag push names no commit")


def test_a_push_not_built_as_its_pusher_asked_is_logged_with_why(redis_url, caplog):
    """An operator asked why a push built nothing finds it in the web's log: its project, ref,
    commit and reason. Before, only the answer (in GitLab's Recent events of the hook) said
    why, and /metrics counted it with every other ignored delivery."""
    client = make_app(redis_url).test_client()
    caplog.set_level(logging.INFO, logger="ci_autoscaler.webhooks")
    push(client, APP, "wip", sha(30), {"ci": {"skip": True}}, "delivery-30")
    push(client, APP, "release", sha(31), {}, "delivery-31", message="1.4.0 [ci skip]")
    skipped = [r for r in caplog.records if r.getMessage() == "push not built: its pusher "
               "asked for no build"]
    assert [(r.project, r.ref, r.sha, r.reason) for r in skipped] == [
        (APP, "refs/heads/wip", sha(30), "push option ci.skip: the pusher asked for no build"),
        (APP, "refs/heads/release", sha(31),
         "the commit's message asks for no build ([skip ci])")]


def test_a_lost_push_the_catch_up_does_not_build_for_its_skip_ci_is_logged(
        redis_url, gitlab_fake, caplog):
    """The catch-up's pass counts such heads `skipped`; which head that was, and why, is in
    its log as a missed push built is (before: in no line)."""
    config = parse_file_config(CONFIG)
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(APP, branches={"main": sha(1)})
    run = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                          gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(run)["baseline"] == 1
    gitlab_fake.push(APP, "bump", sha(40), message="1.4.1 [skip ci]")
    caplog.set_level(logging.INFO, logger="ci_autoscaler.catchup")
    assert catchup.catch_up_once(run).get("skipped") == 1
    skipped = [r for r in caplog.records if r.getMessage() == "missed push not built: its "
               "commit's message asks for no build"]
    assert [(r.project, r.ref, r.sha, r.reason) for r in skipped] == [
        (APP, "refs/heads/bump", sha(40), "the commit's message asks for no build ([skip ci])")]


def test_a_push_asking_for_no_build_is_ignored_while_redis_is_away(caplog):
    """Nothing of such a push is stored, so Redis away changes only its mark: the push is still
    200 ignored (not 503: a failure GitLab counts towards disabling the hook), and the web
    says its head may be built by a catch-up pass."""
    client = make_app(f"redis://127.0.0.1:{free_port()}/0").test_client()
    caplog.set_level(logging.INFO, logger="ci_autoscaler.webhooks")
    answer = push(client, APP, "wip", sha(50), {"ci": {"skip": True}}, "delivery-50")
    assert (answer.status_code, answer.json["status"]) == (200, "ignored"), answer.json
    assert [(r.levelname, r.sha) for r in caplog.records if r.getMessage().startswith(
        "push asking for no build not marked for the catch-up")] == [("WARNING", sha(50))]
