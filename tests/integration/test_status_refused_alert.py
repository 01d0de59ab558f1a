"""A GitLab API token changed to another user who cannot see some projects: the statuses of
their builds are refused for good (404 "Project Not Found"), and the commits keep the state
the old token set, "running", for ever; the other projects' statuses go. The one alert on
commit statuses, CIGitLabCommitStatusFailing, pages only while none gets through, so nothing
paged. CIGitLabCommitStatusRefused does, on Debian's Prometheus scraping the web app's
/metrics, with the real sender against the GitLab API fake over HTTP and a real redis-server."""

import time
from datetime import datetime, timedelta, timezone

from service.app import create_app
from tests.integration.test_status_403_log import Clock, running
from tests.support.app import make_settings
from tests.support.dashboards import rules, rules_with_for
from tests.support.monitoring import Prometheus, running as servers_running, \
    serve_app, wait_until
from workers.adapters import gitlab as gitlab_api
from workers.adapters.capacity_store import CapacityStore
from workers.commit_statuses import sender as status_sender, touch
from workers.config.config_file import parse_file_config

SHA = "feed" * 10
OLD_TOKEN, NEW_TOKEN = "glpat-old-user-7Hn3", "glpat-bot-user-2Lc8"
CONFIG = """
routes:
  - {project: "team/*", ref: "refs/heads/*", job: build, template: small}
templates:
  small: {}
"""
REFUSED = 'ci_autoscaler_commit_status_total{result="refused"}'


def _firing(prometheus: Prometheus) -> set[str]:
    return {a["labels"]["alertname"] for a in prometheus.alerts() if a["state"] == "firing"}


def _sender(state, gitlab_fake, token: str) -> status_sender.Sender:
    sender = status_sender.Sender(state=state, capacity=CapacityStore(state.redis,
                                                                      prefix=state.prefix),
                                  gl=gitlab_api.client(url=gitlab_fake.url, token=token),
                                  secrets=(token,))
    sender.queue.switch_on(ttl_seconds=60)
    return sender


def test_statuses_a_new_tokens_user_may_not_set_page_while_other_projects_go(
        redis_url, gitlab_fake, tmp_path):
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    for token in (OLD_TOKEN, NEW_TOKEN):
        gitlab_fake.tokens[token] = {"api"}
    for path in ("team/app", "team/lib"):
        gitlab_fake.add_project(path, branches={"main": SHA})
    lib = gitlab_fake.projects["team/lib"]
    rule_file = tmp_path / "rules-for-1s.yaml"
    rule_file.write_text(rules_with_for("1s"))
    failing = next(r["expr"] for r in rules() if r["alert"] == "CIGitLabCommitStatusFailing")
    with serve_app(app) as base:
        prometheus = Prometheus(tmp_path / "prometheus", rule_files=[rule_file],
                                targets={"ci-autoscaler": base.removeprefix("http://")})
        with servers_running(prometheus):
            wait_until(lambda: prometheus.query(f"count_over_time({REFUSED}[1m]) >= 3")[
                "data"]["result"], timeout=30, what="scrapes of no refusal")

            old = _sender(state, gitlab_fake, OLD_TOKEN)
            keys = {f"lib-{i}": "team/lib" for i in range(3)} | {"app-0": "team/app"}
            for key, project in keys.items():  # three jobs of one push, one of another
                running(state, key, project, job=f"build-{key}")
            assert status_sender.send_due(old) == {"sent": 4}

            # GITLAB_API_TOKEN changed to a bot user who is no member of private team/lib
            # (GitLab answers it 404, as a deleted project: lib/api/helpers.rb find_project!)
            gitlab_fake.remove_project("team/lib")
            new = _sender(state, gitlab_fake, NEW_TOKEN)
            for key in keys:
                state.redis.hset(f"{state.prefix}build:{key}",
                                 mapping={"status": "done", "result": "SUCCESS"})
                touch(state, key)
            assert status_sender.send_due(new) == {"refused": 3, "sent": 1}
            assert [s["status"] for s in lib.statuses] == ["running"] * 3  # for ever

            wait_until(lambda: "CIGitLabCommitStatusRefused" in _firing(prometheus),
                       timeout=60, what="CIGitLabCommitStatusRefused firing")
            moment = datetime.now(timezone.utc) + timedelta(seconds=2)
            wait_until(lambda: prometheus.evaluated_after(moment), timeout=30,
                       what="the rules evaluated again")
            # the gap: the alert there was stays quiet, as a status got through
            assert "CIGitLabCommitStatusFailing" not in _firing(prometheus)
            assert prometheus.query(failing)["data"]["result"] == []


def test_statuses_refused_for_the_tokens_access_are_posted_again_once_it_has_it(
        redis_url, gitlab_fake):
    """The runbook's fix (the new token's user made a member of team/lib) left the refused
    builds' commits "running" for ever: a refused status was never posted again. The first
    status the project takes again brings them back; a protected branch's refusals (403 on
    that ref) come back with a status taken on that ref only, not on another branch's."""
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    for token in (OLD_TOKEN, NEW_TOKEN):
        gitlab_fake.tokens[token] = {"api"}
    for path in ("team/app", "team/lib"):
        gitlab_fake.add_project(path, branches={"main": SHA, "feature": SHA})
    lib = gitlab_fake.projects["team/lib"]
    old = _sender(state, gitlab_fake, OLD_TOKEN)
    for i in range(3):
        running(state, f"lib-{i}", "team/lib", job=f"build-{i}")
    running(state, "app-0", "team/app")
    assert status_sender.send_due(old) == {"sent": 4}

    gitlab_fake.remove_project("team/lib")  # the new token's user is no member
    gitlab_fake.roles[NEW_TOKEN] = "developer"
    gitlab_fake.protect("team/app", "main")  # and may not push to team/app's main
    new = _sender(state, gitlab_fake, NEW_TOKEN)
    for key in ("lib-0", "lib-1", "lib-2", "app-0"):
        state.redis.hset(f"{state.prefix}build:{key}",
                         mapping={"status": "done", "result": "SUCCESS"})
        touch(state, key)
    assert status_sender.send_due(new) == {"refused": 4}

    gitlab_fake.projects["team/lib"] = lib  # made a member
    running(state, "lib-3", "team/lib", job="test")
    assert status_sender.send_due(new) == {"sent": 1}
    assert status_sender.send_due(new) == {"sent": 3}  # the refused ones, again
    shown = {s["name"]: s["status"] for s in lib.statuses if s["id"] not in lib.retried}
    assert shown == {"ci-autoscaler/build-0": "success", "ci-autoscaler/build-1": "success",
                     "ci-autoscaler/build-2": "success", "ci-autoscaler/test": "running"}

    # team/app's main is still protected: a feature branch's status taken says nothing of it
    running(state, "app-1", "team/app", job="lint", ref="refs/heads/feature")
    assert status_sender.send_due(new) == {"sent": 1}
    assert status_sender.send_due(new) == {}
    gitlab_fake.roles[NEW_TOKEN] = "maintainer"  # may push to main now
    running(state, "app-2", "team/app", job="docs")
    assert status_sender.send_due(new) == {"sent": 1}
    assert status_sender.send_due(new) == {"sent": 1}  # app-0's success, at last
    app_statuses = gitlab_fake.projects["team/app"].statuses
    assert [s["status"] for s in app_statuses if s["name"] == "ci-autoscaler/build"
            and s["id"] not in gitlab_fake.projects["team/app"].retried] == ["success"]


def _exported(app, name: str) -> float | None:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith(name + " ")), None)


class _OnePass:
    """run_forever's stop: set once its first pass is over."""

    def __init__(self):
        self.passes = 0

    def is_set(self) -> bool:
        return self.passes > 0

    def wait(self, timeout=None) -> bool:
        self.passes += 1
        return True


def test_a_read_api_token_turning_statuses_off_pages_until_a_restart_with_api(
        redis_url, gitlab_fake, tmp_path):
    """A GITLAB_API_TOKEN with read_api, as the catch-up needs: the first status is refused
    403 insufficient_scope and the sender turns statuses off until a restart. One refusal
    was counted (CIGitLabCommitStatusFailing: 5 minutes of page, then none), and no status
    was ever posted again, silently."""
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    gitlab_fake.add_project("team/app", branches={"main": SHA})
    assert _exported(app, "ci_autoscaler_commit_status_off") == 0
    rule_file = tmp_path / "rules-for-1s.yaml"
    rule_file.write_text(rules_with_for("1s"))
    with serve_app(app) as base:
        prometheus = Prometheus(tmp_path / "prometheus", rule_files=[rule_file],
                                targets={"ci-autoscaler": base.removeprefix("http://")})
        with servers_running(prometheus):
            reader = _sender(state, gitlab_fake, gitlab_fake.token)  # read_api only
            running(state, "app-0", "team/app")
            state.redis.zadd(f"{state.prefix}builds", {"app-0": time.time()})  # received now
            assert status_sender.send_due(reader) == {"refused": 1} and reader.off
            assert _exported(app, "ci_autoscaler_commit_status_off") == 1
            wait_until(lambda: "CIGitLabCommitStatusOff" in _firing(prometheus), timeout=60,
                       what="CIGitLabCommitStatusOff firing")

            # restarted with a token that has api: on again, and the build's status posted
            gitlab_fake.tokens[NEW_TOKEN] = {"api"}
            status_sender.run_forever(_sender(state, gitlab_fake, NEW_TOKEN), _OnePass())
            assert _exported(app, "ci_autoscaler_commit_status_off") == 0
            assert [s["status"] for s in gitlab_fake.projects["team/app"].statuses] == [
                "running"]
            wait_until(lambda: "CIGitLabCommitStatusOff" not in _firing(prometheus),
                       timeout=60, what="CIGitLabCommitStatusOff resolved")


def test_commit_statuses_turned_off_by_setting_forget_a_sender_s_off(redis_url, gitlab_fake):
    """The other way out: CI_AUTOSCALER_COMMIT_STATUS=false (or no GitLab), and a restart."""
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project("team/app", branches={"main": SHA})
    reader = _sender(ctx.state, gitlab_fake, gitlab_fake.token)  # read_api only
    running(ctx.state, "app-0", "team/app")
    assert status_sender.send_due(reader) == {"refused": 1}
    assert _exported(app, "ci_autoscaler_commit_status_off") == 1
    assert not ctx.settings.commit_status_enabled
    assert status_sender.from_settings(ctx.settings, ctx.state, reader.capacity) is None
    assert _exported(app, "ci_autoscaler_commit_status_off") == 0


def _done(state, key: str, result: str) -> None:
    state.redis.hset(f"{state.prefix}build:{key}", mapping={"status": "done", "result": result})
    touch(state, key)


def test_refusals_are_kept_a_day_not_for_as_long_as_the_project_is_refused(
        redis_url, gitlab_fake):
    """A project the token's user never gets into (a fork the routes match, say): each build's
    refusal renewed the day of the whole list, so it kept every build the project ever had,
    growing with each one, and the first status taken there, months on, posted them all."""
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    gitlab_fake.tokens[NEW_TOKEN] = {"api"}
    gitlab_fake.add_project("team/lib", branches={"main": SHA})
    lib = gitlab_fake.projects["team/lib"]
    gitlab_fake.remove_project("team/lib")  # the token's user is no member
    clock = Clock()
    sender = _sender(state, gitlab_fake, NEW_TOKEN)
    sender.clock = clock
    for day in range(3):
        running(state, f"lib-{day}", "team/lib", job=f"build-{day}")
        assert status_sender.send_due(sender) == {"refused": 1}
        clock.now += 25 * 3600
    refused = state.redis.hkeys(f"{state.prefix}commit-status:refused:team/lib")
    assert [k.decode() for k in refused] == ["lib-2"]  # the last day's alone

    gitlab_fake.projects["team/lib"] = lib  # made a member
    clock.now -= 25 * 3600  # the day lib-2 was refused
    running(state, "lib-3", "team/lib", job="test")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert status_sender.send_due(sender) == {"sent": 1}  # lib-2's, not the days before


def test_refused_runs_of_one_commit_are_posted_again_in_the_order_they_were_refused(
        redis_url, gitlab_fake):
    """Two runs of one commit, ref and job (the commit pushed again after its first run
    failed) share one status. Both refused, they were posted again in the order of their
    build keys, a hash: the first run's "failed" could come last, and GitLab showed it
    over the second run's "success"."""
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    gitlab_fake.tokens[NEW_TOKEN] = {"api"}
    gitlab_fake.add_project("team/lib", branches={"main": SHA})
    lib = gitlab_fake.projects["team/lib"]
    gitlab_fake.remove_project("team/lib")
    clock = Clock()
    sender = _sender(state, gitlab_fake, NEW_TOKEN)
    sender.clock = clock
    for key, result in (("z-first-run", "FAILURE"), ("a-second-run", "SUCCESS")):
        running(state, key, "team/lib")
        _done(state, key, result)
        assert status_sender.send_due(sender) == {"refused": 1}
        clock.now += 60

    gitlab_fake.projects["team/lib"] = lib
    running(state, "lib-lint", "team/lib", job="lint")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert status_sender.send_due(sender) == {"sent": 2}
    shown = [s["status"] for s in lib.statuses
             if s["name"] == "ci-autoscaler/build" and s["id"] not in lib.retried]
    assert shown == ["success"]


def test_a_build_refused_then_taken_is_not_posted_again(redis_url, gitlab_fake):
    """Its running refused (a 403 on a protected main), the protection lifted, its success
    taken: its own refusal brought it back once more, and GitLab made a second "success"
    status of it (none pending or running to move), the first marked retried."""
    app = create_app(make_settings(redis_url), file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    gitlab_fake.tokens[NEW_TOKEN] = {"api"}
    gitlab_fake.roles[NEW_TOKEN] = "developer"
    gitlab_fake.add_project("team/app", branches={"main": SHA})
    gitlab_fake.protect("team/app", "main")
    sender = _sender(state, gitlab_fake, NEW_TOKEN)
    running(state, "app-0", "team/app")
    assert status_sender.send_due(sender) == {"refused": 1}
    gitlab_fake.roles[NEW_TOKEN] = "maintainer"
    _done(state, "app-0", "SUCCESS")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert status_sender.send_due(sender) == {}
    assert [p["answer"] for p in gitlab_fake.projects["team/app"].status_posts] == [403, 201]
