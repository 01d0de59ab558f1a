"""The catch-up on real parts: a real redis-server, the web app's own webhook endpoint, the
intake's mover, and python-gitlab against the GitLab API fake over HTTP. Pushes whose
deliveries were dropped are built in one pass, once; what was built, what no route matches
and what a pass already saw start nothing; pages are followed and rate limits honoured."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from service.app import create_app
from tests.support.app import GITLAB_TOKEN, make_settings
from tests.support.dashboards import ROOT
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from workers.engine import catchup
from workers.adapters import gitlab as gitlab_api
from workers.config.config_file import parse_file_config
from workers.core.errors import PermanentError
from workers.core.keys import build_key
from workers.core.models import EventKind
from workers.core.routing import Push, route_push
from workers.engine.intake import Mover, record as intake_record

CONFIG = """
routes:
  - {project: "team/*", ref: "refs/heads/*", job: build, template: small,
     parameters: {GIT_COMMIT: "{sha}", GIT_BRANCH: "{branch}"}}
  - {project: "team/app", ref: "refs/tags/v*", job: release, template: small}
templates:
  small: {}
catchUp:
  groups: [team]
"""
APP, LIB = "team/app", "team/lib"
HOOK_URL = "https://ci.example.com/webhooks/gitlab"


def sha(n: int) -> str:
    return f"{n:040x}"


@pytest.fixture
def world(redis_url, gitlab_fake):
    """The web app and a catch-up on one Redis; GitLab with two projects in group `team`."""
    config = parse_file_config(CONFIG)
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(APP, branches={"main": sha(1), "dev": sha(2)}, tags={"v1": sha(1)})
    gitlab_fake.add_project(LIB, branches={"main": sha(3)})
    gitlab_fake.add_project("other/x", branches={"main": sha(4)})  # in no group listed

    def new_catch_up(token: str = gitlab_fake.token) -> catchup.CatchUp:
        """A catch-up as a fresh process makes it: nothing in memory but Redis."""
        return catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                               gl=gitlab_api.client(url=gitlab_fake.url, token=token))
    return app, ctx.state, new_catch_up


def intake_builds(state) -> list[dict]:
    return [json.loads(r) for r in state.redis.lrange(state.intake.key, 0, -1)]


def webhook(app, project: str, branch: str, commit: str, delivery: str):
    body = fixture("gitlab_push_real_lrz.json")
    body["ref"] = f"refs/heads/{branch}"
    body["after"] = body["checkout_sha"] = commit
    body["project"]["path_with_namespace"] = project
    return app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery})


def metric(app, line_start: str) -> float | None:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith(line_start)), None)


def test_ten_pushes_whose_deliveries_were_dropped_are_built_within_one_pass_and_only_once(
        world, gitlab_fake):
    app, state, new_catch_up = world
    first = catchup.catch_up_once(new_catch_up())
    # The baseline: both projects of the group (not other/x) recorded, nothing built.
    assert first["projects"] == 2 and first["baseline"] == 4 and "queued" not in first
    assert intake_builds(state) == []

    # Moved branches, a new tag and new branches of both projects; no webhook came for any.
    refs = [(APP, "refs/heads/dev"), (LIB, "refs/heads/main"), (APP, "refs/tags/v2")] + \
        [(APP if n % 2 else LIB, f"refs/heads/feature-{n}") for n in range(7)]
    pushed = {}
    for n, (project, ref) in enumerate(refs):
        name = ref.split("/", 2)[2]
        (gitlab_fake.tag if ref.startswith("refs/tags/") else gitlab_fake.push)(
            project, name, sha(100 + n))
        pushed[(project, ref)] = sha(100 + n)
    assert len(pushed) == 10

    second = catchup.catch_up_once(new_catch_up())
    assert second["queued"] == 10 and second["build"] == 10
    stored = intake_builds(state)
    assert {(r["build"]["project"], r["build"]["ref"]): r["build"]["sha"] for r in stored} \
        == pushed
    assert all(r["delivery"].startswith("catch-up:") for r in stored)
    release = next(r["build"] for r in stored if r["build"]["ref"] == "refs/tags/v2")
    assert release["job"] == "release"  # the webhook's routing: tags to their own route
    assert Mover(state).drain() == 10
    assert {state.get_build(r["build"]["build_key"])["status"] for r in stored} == {"queued"}
    assert {state.get_build(r["build"]["build_key"])["delivery"].split(":")[0]
            for r in stored} == {"catch-up"}  # its build state says where it came from
    assert metric(app, 'ci_autoscaler_missed_pushes_total{project="team/app"}') == 5
    assert metric(app, 'ci_autoscaler_missed_pushes_total{project="team/lib"}') == 5

    # A second pass, and one by a restarted process (only Redis remembers), build nothing.
    for again in (catchup.catch_up_once(new_catch_up()), catchup.catch_up_once(new_catch_up())):
        assert "queued" not in again and again["projects"] == 2
    assert intake_builds(state) == [] and state.queue.count == 10


def test_heads_already_built_and_unrouted_refs_start_nothing(world, gitlab_fake):
    app, state, new_catch_up = world
    cu = new_catch_up()
    catchup.catch_up_once(cu)
    gitlab_fake.push(APP, "fix", sha(50))  # its webhook came
    assert webhook(app, APP, "fix", sha(50), "d-50").status_code == 202
    Mover(state).drain()
    gitlab_fake.tag(APP, "nightly", sha(51))  # no route takes refs/tags/nightly
    result = catchup.catch_up_once(cu)
    assert result["built"] == 1 and result["unrouted"] == 1 and "queued" not in result
    assert intake_builds(state) == [] and state.queue.count == 1  # the webhook's build only
    assert catchup.catch_up_once(cu).get("unrouted") is None  # remembered: no work again


def test_a_ref_the_webhook_refuses_as_too_long_is_not_built_by_the_catch_up(world, gitlab_fake):
    """git takes a ref of any length whose parts each fit a file name, and GitLab lists it;
    its webhook's push is answered "ignored" (longer than 255 bytes), while the catch-up built
    it as a missed push: counted, its run mark set, and the mover set the record aside."""
    app, state, new_catch_up = world
    cu = new_catch_up()
    catchup.catch_up_once(cu)
    branch = "/".join(["a" * 60] * 5)  # refs/heads/ + 304 bytes
    gitlab_fake.push(APP, branch, sha(52))
    answer = webhook(app, APP, branch, sha(52), "d-52")
    assert answer.status_code == 200 and answer.get_json() == {
        "status": "ignored", "reason": "ref is longer than 255 bytes"}
    result = catchup.catch_up_once(cu)
    assert result.get("unrouted") == 1 and "queued" not in result, result
    assert intake_builds(state) == [] and state.queue.count == 0
    assert metric(app, 'ci_autoscaler_missed_pushes_total{project="team/app"}') == 0


def test_a_route_for_tags_added_later_records_the_existing_tags_and_builds_new_ones(
        world, gitlab_fake):
    app, state, new_catch_up = world
    branches_only = parse_file_config(CONFIG.replace(
        '  - {project: "team/app", ref: "refs/tags/v*", job: release, template: small}\n', ""))
    cu = new_catch_up()
    cu.config = branches_only
    catchup.catch_up_once(cu)
    assert not [r for r in gitlab_fake.requests if r.path.endswith("/repository/tags")]
    gitlab_fake.tag(APP, "v1.1", sha(80))  # before the route for tags exists
    result = catchup.catch_up_once(new_catch_up())  # the config now routes tags
    assert result["baseline"] == 2 and "queued" not in result  # v1 and v1.1: recorded only
    gitlab_fake.tag(APP, "v1.2", sha(81))
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1
    [built] = intake_builds(state)
    assert built["build"]["ref"] == "refs/tags/v1.2"


def test_a_webhook_that_arrives_after_the_catch_up_built_the_head_is_a_duplicate(
        world, gitlab_fake):
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up())
    gitlab_fake.push(APP, "late", sha(60))  # its delivery is late, not lost
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1
    late = webhook(app, APP, "late", sha(60), "d-60")
    assert late.status_code == 200 and late.json["status"] == "duplicate", late.json
    assert late.json["reason"] == "a run of this commit is in flight"
    assert Mover(state).drain() == 1 and state.queue.count == 1


def test_more_than_a_hundred_branches_are_read_page_by_page(world, gitlab_fake):
    app, state, new_catch_up = world
    for n in range(250):
        gitlab_fake.push(LIB, f"b-{n:03}", sha(1000 + n))
    catchup.catch_up_once(new_catch_up())
    gitlab_fake.push(LIB, "b-249", sha(5000))  # on the third page
    gitlab_fake.requests.clear()
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1
    [built] = intake_builds(state)
    assert (built["build"]["ref"], built["build"]["sha"]) == ("refs/heads/b-249", sha(5000))
    lib_id = gitlab_fake.projects[LIB].id  # listed by its id, which a rename keeps
    pages = [r.query.get("page", "1") for r in gitlab_fake.requests
             if r.path == f"/api/v4/projects/{lib_id}/repository/branches"]
    assert pages == ["1", "2", "3"]
    assert {r.query["per_page"] for r in gitlab_fake.requests if "/repository/" in r.path} \
        == {"100"}


def test_pages_are_read_from_gitlab_url_though_gitlab_links_its_external_url(world,
                                                                             gitlab_fake):
    """GitLab's Link headers name the host and port of its own external_url, whatever
    address was asked (Gitlab::Pagination::OffsetHeaderBuilder#base_request_uri). With
    GITLAB_URL an in-cluster Service (the GitLab chart's webservice) and the external_url a
    name the cluster does not reach, python-gitlab followed page 2 there: every project with
    more than 100 branches failed every pass, and its pushes were never caught up."""
    app, state, new_catch_up = world
    for n in range(150):
        gitlab_fake.push(LIB, f"b-{n:03}", sha(1000 + n))
    gitlab_fake.external_host = f"127.0.0.1:{free_port()}"  # nothing listens there
    first = catchup.catch_up_once(new_catch_up())
    assert not catchup.pass_failed(first) and first["refs"] == 3 + 151, first


def test_branches_gitlab_leaves_out_of_its_pages_are_not_taken_for_deleted(world, gitlab_fake):
    """GitLab 18 before gitlab-org/gitlab MR 244062 (work item 605032; the new branches
    finder, on by default) answers every branch page past the 100th branch [] while X-Total
    counts them all. Taken as the whole list, the branches past the 100th were forgotten as
    deleted, and once GitLab was patched each came back as a new head: a build of every one
    of them at once, and no catch-up for them meanwhile went unsaid. The listed heads are
    still acted on; what GitLab counted but did not list is kept, and the pass says so."""
    app, state, new_catch_up = world
    for n in range(150):
        gitlab_fake.push(LIB, f"b-{n:03}", sha(1000 + n))
    catchup.catch_up_once(new_catch_up())  # the baseline: 151 branches of team/lib
    gitlab_fake.cut_branch_pages(100)  # GitLab upgraded to an affected version
    gitlab_fake.push(LIB, "b-000", sha(6000))  # on the first page: still caught
    cut = catchup.catch_up_once(new_catch_up())
    assert cut["queued"] == 1 and cut["refs_unlisted"] == 51
    assert [b["build"]["ref"] for b in intake_builds(state)] == ["refs/heads/b-000"]
    gitlab_fake.cut_branch_pages(None)  # GitLab patched
    healed = catchup.catch_up_once(new_catch_up())
    assert "queued" not in healed and "refs_unlisted" not in healed
    assert len(intake_builds(state)) == 1


def test_a_branch_one_listing_skips_is_not_built_as_new_when_it_is_listed_again(
        world, gitlab_fake):
    """Offset pages read a list that changes between them: a branch deleted while a pass
    reads the pages (a merged merge request's source branch) moves the first branch of the
    next page onto the page already read, and that listing leaves it out. Taken as deleted,
    it was forgotten, and the next pass built its old head as a push never heard of. A ref
    is forgotten once two passes in a row do not list it."""
    app, state, new_catch_up = world
    for n in range(150):
        gitlab_fake.push(LIB, f"b-{n:03}", sha(1000 + n))
    catchup.catch_up_once(new_catch_up())  # the baseline
    gitlab_fake.delete_branch_after_page(LIB, "b-050", page=1)  # b-100 is then skipped
    skipped = catchup.catch_up_once(new_catch_up())
    assert skipped["refs"] == 150 + 3 and "queued" not in skipped  # b-100 missing
    for _ in range(2):  # b-100 listed again; b-050 not listed twice: forgotten
        again = catchup.catch_up_once(new_catch_up())
        assert "queued" not in again and intake_builds(state) == []
    memory = f"id:{gitlab_fake.projects[LIB].id}"  # kept by the id, which a rename keeps
    seen, _ = new_catch_up().store.seen(memory)
    assert "refs/heads/b-100" in seen and "refs/heads/b-050" not in seen
    assert new_catch_up().store.absent(memory) == set()
    gitlab_fake.push(LIB, "b-050", sha(8000))  # made again: a new head, built
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1


def test_a_first_pass_gitlab_cuts_short_is_a_baseline_again_when_it_lists_them_all(
        world, gitlab_fake):
    """The project's first pass meets the cut pages (above): its baseline holds the first 100
    branches only; the next full listing records the rest too, and builds none of them."""
    app, state, new_catch_up = world
    for n in range(150):
        gitlab_fake.push(LIB, f"b-{n:03}", sha(1000 + n))
    gitlab_fake.cut_branch_pages(100)
    first = catchup.catch_up_once(new_catch_up())
    assert first["refs_unlisted"] == 51 and "queued" not in first
    gitlab_fake.cut_branch_pages(None)
    assert "queued" not in catchup.catch_up_once(new_catch_up())
    gitlab_fake.push(LIB, "b-149", sha(7000))  # a push after the full baseline is built
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1


def test_a_429_with_retry_after_is_waited_out_and_the_pass_then_succeeds(world, gitlab_fake):
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up())
    gitlab_fake.push(APP, "main", sha(70))
    gitlab_fake.throttle_next(1, retry_after=1)
    started = time.monotonic()
    result = catchup.catch_up_once(new_catch_up())
    assert time.monotonic() - started >= 1.0
    assert result["queued"] == 1 and "projects_failed" not in result
    assert gitlab_fake.answered(429) == 1


def test_a_retry_after_beyond_the_limit_ends_the_pass_and_the_next_one_does_the_work(
        world, gitlab_fake):
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up())
    gitlab_fake.push(APP, "main", sha(71))
    gitlab_fake.requests.clear()
    gitlab_fake.throttle_next(1, retry_after=3600)
    started = time.monotonic()
    result = catchup.catch_up_once(new_catch_up())
    assert time.monotonic() - started < 5  # not an hour asleep
    assert result == {"groups_failed": 1}  # and not one more call that pass
    assert len(gitlab_fake.requests) == 1
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1  # nothing was forgotten


FIVE_PROJECTS = ("team/a", "team/b", "team/c", "team/d", "team/e")


def test_a_project_without_a_repository_in_a_listed_group_fails_no_pass(world, gitlab_fake,
                                                                         caplog):
    """A group's project kept for its issues or wiki has its Repository feature off, and
    GitLab answers its branches 404 "Repository Not Found" (require_repository_enabled!):
    it has no refs, so no push to miss. A route for the whole group (team/*) made every pass
    'catch-up pass failed' with an error for it, and `catch-up --once` exit 1, for good."""
    app, state, new_catch_up = world
    gitlab_fake.add_project("team/handbook").repository_enabled = False
    cu = new_catch_up()
    caplog.set_level(logging.INFO)
    first = catchup.catch_up_once(cu)
    assert not catchup.pass_failed(first) and first["projects"] == 3, first
    gitlab_fake.push(APP, "fix", sha(73))
    again = catchup.catch_up_once(cu)
    assert not catchup.pass_failed(again) and again["queued"] == 1, again
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_project_without_a_repository_fails_no_pass_where_only_tags_are_routed(
        redis_url, gitlab_fake, caplog):
    """With tag routes only, the catch-up asks a project's tags alone, and GitLab's API::Tags
    refuses a project whose Repository feature is off with authorize_read_code!'s 403 before
    anything else (ProjectPolicy: repository_disabled prevents read_code), not the branches'
    404 "Repository Not Found": a release route for a group (team/*, refs/tags/*) made every
    pass 'catch-up pass failed' for its handbook project, for good."""
    caplog.set_level(logging.INFO)
    config = parse_file_config(
        "routes:\n  - {project: 'team/*', ref: 'refs/tags/*', job: release}\n"
        "catchUp:\n  groups: [team]\n")
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(APP, branches={"main": sha(1)})
    gitlab_fake.add_project("team/handbook").repository_enabled = False
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    first = catchup.catch_up_once(cu)
    assert not catchup.pass_failed(first) and first["projects"] == 2, first
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    gitlab_fake.roles[gitlab_fake.token] = "guest"  # its 403 is no missing repository
    again = catchup.catch_up_once(cu)
    assert again["projects_failed"] == 1 and again["projects"] == 1, again


def test_a_repository_for_members_only_is_no_missing_repository(world, gitlab_fake):
    """GitLab answers 404 "Repository Not Found" too when the Repository feature is on for
    the project's members only and the token's user is none (require_repository_enabled!:
    feature_available?(:repository, current_user)): its pushes cannot be caught up, and the
    pass said nothing of it, as if the project had no repository, while a token without
    the membership lost them for good. Only repository_access_level "disabled" is no refs."""
    app, state, new_catch_up = world
    project = gitlab_fake.add_project("team/public", branches={"main": sha(5)})
    project.repository_members_only = True
    project.outsiders.add(gitlab_fake.token)
    first = catchup.catch_up_once(new_catch_up())
    assert catchup.pass_failed(first) and first["projects_failed"] == 1, first


def test_a_project_failing_alike_every_pass_is_logged_as_an_error_once(world, gitlab_fake,
                                                                     caplog):
    """A project of a listed group whose code the token's user may not read (a Guest's, or a
    members-only repository): the same ERROR line every pass, 720 a day for each such
    project, burying the lines that say something new. Logged once as an error (and again
    once it failed otherwise, or was caught up in between); counted every pass."""
    app, state, new_catch_up = world
    project = gitlab_fake.add_project("team/public", branches={"main": sha(5)})
    project.repository_members_only = True
    project.outsiders.add(gitlab_fake.token)
    caplog.set_level(logging.INFO, logger="ci_autoscaler.catchup")
    cu = new_catch_up()
    for _ in range(3):
        assert catchup.catch_up_once(cu)["projects_failed"] == 1
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.getMessage(), r.project) for r in errors] == [
        ("catch-up of a project failed", "team/public")]
    assert metric(app, 'ci_autoscaler_errors_total{component="catch_up",kind="permanent"}') == 3
    project.outsiders.clear()  # made a member: caught up; then failing again is news
    assert "projects_failed" not in catchup.catch_up_once(cu)
    project.outsiders.add(gitlab_fake.token)
    catchup.catch_up_once(cu)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2


def test_what_failed_is_remembered_for_so_many_projects_at_most(world):
    """The failures remembered for logging each once stayed for every project that ever
    failed: renamed, deleted and unlisted projects' too, for the life of the process. The
    oldest are forgotten past FAILING_REMEMBERED (logged again once, if they fail again)."""
    app, state, new_catch_up = world
    cu = new_catch_up()
    err = PermanentError("GitLab answered 404: 404 Project Not Found")
    for n in range(catchup.FAILING_REMEMBERED + 10):
        catchup._failed(cu, "catch-up of a project failed", f"team/p{n}", err)
    assert len(cu._failing) == catchup.FAILING_REMEMBERED
    assert ("catch-up of a project failed", "team/p0") not in cu._failing


def test_a_project_shared_with_a_listed_group_is_not_one_of_its_projects(redis_url,
                                                                         gitlab_fake):
    """GitLab lists a group's projects with those other namespaces shared with it unless
    asked with_shared=false (doc/api/groups.md): with a route for every project, a project
    shared with `team` (another team's, with no hook to us) had its pushes built by the
    catch-up, though catchUp.groups lists the projects *of* a group (README)."""
    config = parse_file_config(
        "routes:\n  - {project: '*', ref: 'refs/heads/*', job: build}\n"
        "catchUp:\n  groups: [team]\n")
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(APP, branches={"main": sha(1)})
    gitlab_fake.add_project("other/x", branches={"main": sha(4)})
    gitlab_fake.share_project("other/x", "team")
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu)["projects"] == 1
    gitlab_fake.push("other/x", "fix", sha(74))
    assert "queued" not in catchup.catch_up_once(cu)
    assert intake_builds(ctx.state) == []


def test_a_429_that_outlasts_the_retries_ends_the_pass(redis_url, gitlab_fake):
    """GitLab still answering 429 after python-gitlab waited its Retry-After three times (the
    token's quota spent by another client of the same user): the pass went on to the next
    project and the next, each costing its listing's and its hooks' four calls and waits,
    every one of them throttled alike, instead of leaving the work to the next pass."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.outage(60, 429, retry_after=1)
    result = catchup.catch_up_once(cu)
    assert result["projects_failed"] == 1, result
    assert gitlab_fake.answered(429) == 1 + gitlab_api.MAX_RETRIES


def _five_projects(redis_url, gitlab_fake) -> catchup.CatchUp:
    config = parse_file_config("routes:\n" + "".join(
        f"  - {{project: {p}, ref: 'refs/heads/*', job: build}}\n" for p in FIVE_PROJECTS))
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    for path in FIVE_PROJECTS:
        gitlab_fake.add_project(path, branches={"main": sha(1)})
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu)["projects"] == len(FIVE_PROJECTS)
    gitlab_fake.requests.clear()
    return cu


@pytest.mark.parametrize("status", [503, 502])
def test_gitlab_not_serving_ends_the_pass_after_two_projects(redis_url, gitlab_fake, status,
                                                             caplog):
    """GitLab away for an upgrade (its front answers 502 or 503 to every call): two projects
    in a row not served end the pass, and the next one goes on. It went on over every
    project, each one's listing and hooks tried 4 times (python-gitlab's retries) and logged,
    for every pass of the maintenance."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.outage(60, status=status)
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.catchup")
    assert catchup.catch_up_once(cu) == {"projects_failed": 2}
    # the first one's listing and hooks, the second one's listing: 3 calls, retried
    assert len(gitlab_fake.requests) == 3 * (1 + gitlab_api.MAX_RETRIES)
    assert [r.getMessage() for r in caplog.records] == [
        "catch-up of a project failed", "reading a project's hooks failed",
        "catch-up of a project failed"]
    gitlab_fake.outage(0)
    gitlab_fake.push("team/e", "fix", sha(2))
    assert catchup.catch_up_once(cu)["queued"] == 1  # nothing forgotten


def test_gitlab_answering_no_call_in_time_ends_the_pass_after_two_projects(redis_url,
                                                                          gitlab_fake):
    """GitLab overloaded (its workers all busy: each call taken, none answered within the
    client's timeout): every project's listing and hooks ran into the timeout four times
    (python-gitlab retries a timeout), one project after another, all pass long: with 1,000
    projects and the 10 s timeout, a pass of 22 hours that added to GitLab's load. Two
    projects in a row not answered end it, as GitLab not serving does."""
    cu = _five_projects(redis_url, gitlab_fake)
    cu.gl = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token, timeout=0.2)
    gitlab_fake.stall(0.6)
    result = catchup.catch_up_once(cu)
    assert result == {"projects_failed": 2}, result
    # the first one's listing and hooks, the second one's listing: 3 calls, retried
    assert len(gitlab_fake.requests) <= 3 * (1 + gitlab_api.MAX_RETRIES)
    gitlab_fake.stall(0)
    # the client's own timeout again: 0.2 s is not a bound a loaded test machine keeps
    cu.gl = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)
    gitlab_fake.push("team/e", "fix", sha(2))
    assert catchup.catch_up_once(cu)["queued"] == 1  # nothing forgotten


def test_gitlab_s_html_error_page_is_logged_by_its_title(redis_url, gitlab_fake, caplog):
    """Puma away, Workhorse answers its 502.html page: the log's error held the page's first
    200 characters (doctype, meta tags, no word of what happened) in every line."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.outage(60, status=502)
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.catchup")
    catchup.catch_up_once(cu)
    errors = [str(getattr(r, "error", "")) for r in caplog.records]
    assert errors and all(e.endswith("GitLab answered 502: GitLab is not responding (502)")
                          for e in errors), errors


def test_a_5xx_asking_for_an_hour_ends_the_pass_instead_of_waiting(redis_url, gitlab_fake):
    """A front's maintenance page: 503 with Retry-After 3600. python-gitlab waits any
    retryable answer's Retry-After before it tries again, uncapped: the catch-up thread slept
    an hour, three times, holding its lease; only a 429's wait was held to the 60 s a call
    may wait."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.outage(60, status=503, retry_after=3600, retry_after_on_5xx=True)
    results: list[dict] = []
    thread = threading.Thread(target=lambda: results.append(catchup.catch_up_once(cu)),
                              daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the pass waits out the 503's Retry-After"
    assert results[0]["projects_failed"] == 1, results


@pytest.mark.parametrize("ahead, served", [(3600, False), (2, True)])
def test_a_5xx_asking_to_retry_at_a_date_is_waited_or_left_for_a_later_pass(
        redis_url, gitlab_fake, ahead, served):
    """A front's maintenance page may say when to come back as an HTTP-date (RFC 9110 10.2.3
    allows it): python-gitlab reads Retry-After with int() (gitlab.utils.Retry), and its
    ValueError escaped the catch-up's error handling: no project counted, the pass logged
    as "ValueError: invalid literal for int()". Read as the seconds it means: an hour ends the
    pass, as a Retry-After of 3600 does; two seconds are waited, and the call served."""
    cu = _five_projects(redis_url, gitlab_fake)
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + ahead))
    gitlab_fake.outage(1 if served else 60, status=503, retry_after=when,
                       retry_after_on_5xx=True)
    result = catchup.catch_up_once(cu)
    if served:
        assert result["projects"] == 5 and not catchup.pass_failed(result), result
    else:
        assert result == {"projects_failed": 1}, result


def test_a_5xx_with_rate_limit_headers_is_retried_soon_not_at_the_quotas_reset(
        redis_url, gitlab_fake):
    """GitLab.com puts RateLimit-* on every answer, a 500 too; python-gitlab sends a 500
    again once RateLimit-Reset is reached: one project's 500 waited out the rate-limit
    window (here an hour's) three times, with plenty of quota left."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.rate_limit(100_000, 3600)
    gitlab_fake.fail_project("team/a", 500, under="repository/")
    results: list[dict] = []
    thread = threading.Thread(target=lambda: results.append(catchup.catch_up_once(cu)),
                              daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the 500 is retried at the quota's reset"
    assert results[0]["projects_failed"] == 1 and results[0]["projects"] == 4, results
    assert gitlab_fake.answered(500) == 1 + gitlab_api.MAX_RETRIES


def _four_groups(redis_url, gitlab_fake) -> catchup.CatchUp:
    """A catch-up of four groups to list (g1 to g4), a project in each, caught up once."""
    groups = ("g1", "g2", "g3", "g4")
    config = parse_file_config("routes:\n  - {project: '*', ref: 'refs/heads/*', job: build}\n"
                               f"catchUp:\n  groups: [{', '.join(groups)}]\n")
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    for group in groups:
        gitlab_fake.add_project(f"{group}/app", branches={"main": sha(1)})
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu)["projects"] == len(groups)
    return cu


def test_gitlab_not_serving_ends_the_pass_after_two_groups(redis_url, gitlab_fake):
    """Routes for every project and four groups to list: GitLab away, each pass listed every
    group, each listing tried 4 times and logged, before it came to the projects."""
    cu = _four_groups(redis_url, gitlab_fake)
    gitlab_fake.requests.clear()
    gitlab_fake.outage(60, status=503)
    assert catchup.catch_up_once(cu) == {"groups_failed": 2}
    assert len(gitlab_fake.requests) == 2 * (1 + gitlab_api.MAX_RETRIES)
    gitlab_fake.outage(0)
    gitlab_fake.push("g4/app", "fix", sha(2))
    assert catchup.catch_up_once(cu)["queued"] == 1


def test_two_big_groups_too_slow_to_list_side_by_side_do_not_end_every_pass(redis_url,
                                                                           gitlab_fake):
    """Two big groups side by side in catchUp.groups whose listings (subgroups included) the
    front answers 504, or our client's timeout cuts, every pass: taken for GitLab not serving,
    they ended every pass before its first project, and no push of any group was caught up
    again. A listing out of time counts neither way; the projects' own calls still end the
    pass on a GitLab that serves nothing (and groups are a few, named in the config)."""
    cu = _four_groups(redis_url, gitlab_fake)
    gitlab_fake.fail_group("g1")
    gitlab_fake.fail_group("g2")
    gitlab_fake.push("g4/app", "fix", sha(2))
    result = catchup.catch_up_once(cu)
    assert result["groups_failed"] == 2 and result["projects"] == 2, result
    assert result["queued"] == 1


def test_one_projects_gateway_timeout_does_not_end_the_pass(redis_url, gitlab_fake):
    """A front's 504 for one slow repository, every pass: the others are caught up."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.fail_project("team/a", 504)
    gitlab_fake.push("team/e", "fix", sha(2))
    assert catchup.catch_up_once(cu) == {
        "projects_failed": 1, "projects": 4, "refs": 5, "build": 1, "queued": 1,
        "hooks_disabled": 0}


def test_a_slow_repositorys_hooks_are_read_though_its_listing_times_out(redis_url,
                                                                         gitlab_fake):
    """One slow repository's branch listing answered 504 by the front, every pass, while its
    hooks (a database read) are served: its hooks were left unread, as if GitLab were not
    serving, and its disabled-hook state kept as last seen for as long as the repository
    was slow: a hook GitLab disabled meanwhile, on the very project whose pushes only the
    catch-up would see, never showed, and CIGitLabHookDisabled never fired."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.add_hook("team/a", HOOK_URL, alert_status="disabled")
    gitlab_fake.fail_project("team/a", 504, under="repository/")
    result = catchup.catch_up_once(cu)
    assert result["projects_failed"] == 1 and result["projects"] == 4
    assert result["hooks_disabled"] == 1
    assert cu.store.hooks_disabled() == {"team/a": 1}


def test_two_slow_repositories_side_by_side_do_not_end_every_pass(redis_url, gitlab_fake):
    """Two repositories next to each other in the pass (two big monorepos, `team/a` and
    `team/b`) whose listings the front answers 504 every pass, while GitLab serves their
    hooks: taken for GitLab not serving (two projects in a row), every pass ended there, and
    the pushes of every project after them were never caught up. A project whose hooks GitLab
    served shows that GitLab serves."""
    cu = _five_projects(redis_url, gitlab_fake)
    gitlab_fake.fail_project("team/a", 504, under="repository/")
    gitlab_fake.fail_project("team/b", 504, under="repository/")
    gitlab_fake.push("team/e", "fix", sha(2))
    result = catchup.catch_up_once(cu)
    assert result["projects_failed"] == 2 and result["projects"] == 3, result
    assert result["queued"] == 1


def test_every_repository_too_slow_to_list_ends_the_pass_though_hooks_are_served(
        redis_url, gitlab_fake):
    """Gitaly overloaded while Puma serves: every listing runs out of time (the front's 504,
    or our 10 s read timeout, four times a call with python-gitlab's retries), every
    project's hooks (a database read) served. Each served hook counted as GitLab serving, so
    the pass went on through every project, 40 s each: 11 hours for 1,000 projects, holding
    the lease and adding to Gitaly's load, which is what ending a pass on an overloaded
    GitLab was for. Two slow repositories side by side are theirs; a third in a row ends it."""
    cu = _five_projects(redis_url, gitlab_fake)
    for path in FIVE_PROJECTS:
        gitlab_fake.fail_project(path, 504, under="repository/")
    assert catchup.catch_up_once(cu) == {"projects_failed": 3, "hooks_disabled": 0}


def test_repositories_all_unavailable_end_the_pass_though_hooks_are_served(redis_url,
                                                                          gitlab_fake):
    """Gitaly away while Puma serves: every listing answered 503, every project's hooks (a
    database read) served. That every repository fails alike is no slow repository's: two
    in a row end the pass, as GitLab not serving does, not four tries of each project's
    listing for every project of the pass."""
    cu = _five_projects(redis_url, gitlab_fake)
    for path in FIVE_PROJECTS:
        gitlab_fake.fail_project(path, 503, under="repository/")
    assert catchup.catch_up_once(cu) == {"projects_failed": 2, "hooks_disabled": 0}


def test_the_pass_slows_down_before_the_rate_limit_and_meets_no_429(world, gitlab_fake):
    app, state, new_catch_up = world
    # Windows of 2 s (GitLab's are 60 s): a pass on a loaded machine (CI's two cores under the
    # whole suite) took over a second for three calls, its windows rolled over by themselves
    # and it never had to wait; 3 calls in 2 s is a pace no machine here falls below.
    gitlab_fake.rate_limit(4, period_seconds=2)
    cu = new_catch_up()
    result = catchup.catch_up_once(cu)  # group, 2 projects x (branches, tags or not, hooks)
    assert result["projects"] == 2 and "projects_failed" not in result
    assert gitlab_fake.answered(429) == 0
    assert cu.gl.session.paused_seconds > 0
    assert len(gitlab_fake.requests) > 4  # more than one window's worth, paced


def test_a_refused_token_fails_the_pass_with_a_reason_and_never_the_token(
        world, gitlab_fake, caplog):
    app, state, new_catch_up = world
    caplog.set_level(logging.INFO)
    bad_token = "glpat-revoked-9Zx1"
    result = catchup.catch_up_once(new_catch_up(token=bad_token))
    assert result == {"groups_failed": 1}
    assert metric(app, 'ci_autoscaler_errors_total{component="catch_up",kind="unauthorized"}') == 1
    # Through the loop, as the reconcile process runs it: counted, logged, retried next time.
    cu = new_catch_up(token=bad_token)
    thread, stop = catchup.start(cu, interval=0.2)
    try:
        deadline = time.monotonic() + 10
        while metric(app, 'ci_autoscaler_errors_total{component="catch_up",kind="unauthorized"}') \
                < 2:
            assert time.monotonic() < deadline, "the failed pass was not counted"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert any("401" in json.dumps(getattr(r, "error", "")) for r in caplog.records)
    assert all(bad_token not in r.getMessage() and bad_token not in json.dumps(
        getattr(r, "error", "")) for r in caplog.records)


def test_an_expired_token_is_logged_as_expired(world, gitlab_fake, caplog):
    """A token past its expiry date (GitLab 16 gives every access token at most a year, so
    every installation meets it) is answered 401 {"error": "invalid_token",
    "error_description": "Token is expired. ..."}: the log said "401: invalid_token", as for
    a mistyped or revoked token, and the operator could not tell that the token only needs
    renewing. Failing alike every pass, it stays an error every pass (it ends each one),
    unlike a project's alike failures, logged at INFO after the first."""
    app, state, new_catch_up = world
    caplog.set_level(logging.ERROR, logger="ci_autoscaler.catchup")
    gitlab_fake.expired_tokens.add(gitlab_fake.token)
    cu = new_catch_up()
    for _ in range(2):
        assert catchup.catch_up_once(cu) == {"groups_failed": 1}
    errors = [str(getattr(r, "error", "")) for r in caplog.records]
    assert len(errors) == 2 and all("401" in e and "Token is expired" in e and
                                    gitlab_fake.token not in e for e in errors), errors
    assert metric(app, 'ci_autoscaler_errors_total{component="catch_up",kind="unauthorized"}') == 2


def test_a_token_without_an_api_scope_ends_the_pass_as_a_refused_token_and_says_read_api(
        world, gitlab_fake, caplog):
    """A token made with read_repository only (the scope a clone needs, an easy mistake) is
    answered 403 insufficient_scope by every API call, as a revoked one is 401: the pass went
    on to every project, each failing and logged as a 'permanent' error with GitLab's
    scope text, none naming GITLAB_API_TOKEN nor the read_api it needs."""
    app, state, new_catch_up = world
    caplog.set_level(logging.INFO)
    clone_token = "glpat-clone-only-4Rt8"
    gitlab_fake.tokens[clone_token] = {"read_repository"}
    result = catchup.catch_up_once(new_catch_up(token=clone_token))
    assert result == {"groups_failed": 1}
    assert gitlab_fake.answered(403) == 1  # nothing more asked of GitLab this pass
    assert metric(app, 'ci_autoscaler_errors_total{component="catch_up",kind="unauthorized"}') == 1
    errors = [json.dumps(getattr(r, "error", "")) for r in caplog.records
              if r.levelno >= logging.ERROR]
    assert errors and all("GITLAB_API_TOKEN" in e and "read_api" in e for e in errors)
    assert all(clone_token not in r.getMessage() and clone_token not in json.dumps(
        getattr(r, "error", "")) for r in caplog.records)


def test_a_guests_403_ends_no_pass_whatever_the_projects_name(redis_url, gitlab_fake):
    """Only GitLab's insufficient_scope answer (its body's `error`, rack-oauth2's Bearer::
    Forbidden: lib/api/api_guard.rb) is a scope refused; a Guest's 403 ({"message":"403
    Forbidden"}) is the project's alone. The check read the whole error text, the project's
    path in it: a project named `team/insufficient_scope` made a Guest's 403 end the pass,
    and the projects after it were never caught up."""
    config = parse_file_config("routes:\n  - {project: 'team/*', ref: 'refs/heads/*', job: b}\n"
                               "catchUp:\n  groups: [team]\n")
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    for path in ("team/a", "team/insufficient_scope", "team/z"):
        gitlab_fake.add_project(path, branches={"main": sha(1)})
    gitlab_fake.roles[gitlab_fake.token] = "guest"
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu)["projects_failed"] == 3


def test_a_disabled_hook_shows_as_a_metric_per_project(world, gitlab_fake):
    app, state, new_catch_up = world
    gitlab_fake.add_hook(APP, HOOK_URL, alert_status="temporarily_disabled",
                         disabled_until=time.time() + 60)
    gitlab_fake.add_hook(APP, "https://chat.example.com/hook")  # not ours
    gitlab_fake.add_hook(LIB, HOOK_URL)
    gitlab_fake.projects["other/x"].hooks_readable = False
    cu = new_catch_up()
    assert catchup.catch_up_once(cu)["hooks_disabled"] == 1
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') == 1
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/lib"}') == 0
    gitlab_fake.projects[APP].hooks[0].update(alert_status="executable", disabled_until=None)
    catchup.catch_up_once(cu)
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') == 0
    # A project whose hooks the token may not read has no series.
    assert catchup.check_hooks(cu, "other/x", time.time()) is None
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="other/x"}') is None


def test_a_project_the_catch_up_no_longer_looks_at_loses_its_hook_series(world, gitlab_fake,
                                                                         redis_url):
    """A project taken out of the routes (or out of its group) is checked no more; the hook
    hash, renewed by the other projects' states, kept its last 1, and CIGitLabHookDisabled
    fired for it for ever. A pass that could not list its group forgets nothing."""
    app, state, new_catch_up = world
    gitlab_fake.add_hook(APP, HOOK_URL, alert_status="disabled")
    gitlab_fake.add_hook(LIB, HOOK_URL)
    assert catchup.catch_up_once(new_catch_up())["hooks_disabled"] == 1
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') == 1

    lib_only = parse_file_config(CONFIG.replace('"team/*"', '"team/lib"').replace(
        '  - {project: "team/app", ref: "refs/tags/v*", job: release, template: small}\n', ""))
    ctx = app.extensions["ci_autoscaler"]
    cu = catchup.CatchUp(settings=ctx.settings, config=lib_only, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert list(catchup.listed_projects(cu)) == [LIB]
    gitlab_fake.outage(30, status=500)
    assert catchup.catch_up_once(cu)["groups_failed"] == 1  # team/app's fate not known
    gitlab_fake.outage(0)
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') == 1

    assert catchup.catch_up_once(cu)["projects"] == 1
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') is None
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/lib"}') == 0


def test_a_project_the_token_no_longer_sees_loses_its_hook_series(world, gitlab_fake):
    """A route still names team/app, but the token's user left the private project (or it was
    deleted): GitLab answers its hooks 404, not 403. Its state is as unknown as a 403 leaves
    it, yet the last 1 was kept, renewed with the other projects', and CIGitLabHookDisabled
    fired for ever."""
    app, state, new_catch_up = world
    gitlab_fake.add_hook(APP, HOOK_URL, alert_status="disabled")
    cu = new_catch_up()
    assert catchup.catch_up_once(cu)["hooks_disabled"] == 1
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') == 1

    gitlab_fake.remove_project(APP)
    assert APP in catchup.listed_projects(cu)  # the route names it
    assert catchup.check_hooks(cu, APP, time.time()) is None
    assert catchup.catch_up_once(cu)["projects_failed"] == 1  # its heads: 404, logged
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') is None


def test_the_catch_up_command_runs_one_pass_from_the_environment(world, gitlab_fake, tmp_path,
                                                                 redis_url):
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    env = dict(os.environ, REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(config),
               GITLAB_URL=gitlab_fake.url, GITLAB_API_TOKEN=gitlab_fake.token)
    result = subprocess.run([sys.executable, "-m", "service.cli", "catch-up", "--once"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1])["projects"] == 2
    assert redis.Redis.from_url(redis_url).exists(
        f"cia:catchup:heads:id:{gitlab_fake.projects[APP].id}")
    assert gitlab_fake.token not in result.stdout + result.stderr


def test_the_catch_up_command_exits_1_when_its_pass_failed(gitlab_fake, tmp_path, redis_url):
    """An operator's cron or script runs `catch-up --once`: a pass that did not get through
    (the token refused here) printed its failure in the JSON and exited 0, as a good one."""
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    gitlab_fake.add_project(APP, branches={"main": sha(1)})
    env = dict(os.environ, REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(config),
               GITLAB_URL=gitlab_fake.url, GITLAB_API_TOKEN="glpat-revoked-9Zx1")
    result = subprocess.run([sys.executable, "-m", "service.cli", "catch-up", "--once"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"groups_failed": 1}
    assert "glpat-revoked-9Zx1" not in result.stdout + result.stderr


def test_the_catch_up_command_with_redis_away_says_so_in_one_line(gitlab_fake, tmp_path):
    """`catch-up --once` with Redis away ended in redis-py's traceback, whose text names the
    URL (and would its password)."""
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    gitlab_fake.add_project(APP, branches={"main": sha(1)})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{port}/0",
               CI_AUTOSCALER_CONFIG=str(config), GITLAB_URL=gitlab_fake.url,
               GITLAB_API_TOKEN=gitlab_fake.token)
    result = subprocess.run([sys.executable, "-m", "service.cli", "catch-up", "--once"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == f"error: Redis at 127.0.0.1:{port}/0: ConnectionError"
    assert "hunter2-secret" not in result.stdout + result.stderr


class OnePass(threading.Event):
    """run_forever's stop: set once its first pass is over (its wait for the next)."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return True


@pytest.mark.parametrize("token_refused", [False, True])
def test_a_failed_pass_is_not_logged_caught_up(world, gitlab_fake, caplog, token_refused):
    """The loop logged "caught up" after every pass, one whose every call failed too."""
    app, state, new_catch_up = world
    caplog.set_level(logging.INFO, logger="ci_autoscaler.catchup")
    cu = new_catch_up(**({"token": "glpat-revoked-9Zx1"} if token_refused else {}))
    catchup.run_forever(cu, OnePass(), interval=60)
    [summary] = [r for r in caplog.records
                 if r.getMessage() in ("caught up", "catch-up pass failed")]
    if token_refused:
        assert (summary.getMessage(), summary.levelno) == ("catch-up pass failed",
                                                           logging.WARNING)
        assert summary.groups_failed == 1
    else:
        assert (summary.getMessage(), summary.levelno) == ("caught up", logging.INFO)
        assert summary.projects == 2


NAMED_IN_LOWER_CASE = """
routes:
  - {project: "team/app", ref: "refs/heads/*", job: build, template: small}
templates:
  small: {}
"""


def _case_world(redis_url, gitlab_fake, text: str):
    """GitLab holds "Team/App" (its path as created); the route types it "team/app"."""
    config = parse_file_config(text)
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project("Team/App", branches={"main": sha(1)})
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    return app, ctx.state, cu


def test_a_route_typing_the_project_in_another_case_builds_its_webhook_push_once(
        redis_url, gitlab_fake):
    """GitLab finds a project path in any case, and its webhook names the project as it was
    created: the route "team/app" takes the push of "Team/App", and the catch-up, which
    lists the project under the route's spelling, knows that push as built."""
    app, state, cu = _case_world(redis_url, gitlab_fake, NAMED_IN_LOWER_CASE)
    assert catchup.catch_up_once(cu)["baseline"] == 1
    gitlab_fake.push("Team/App", "fix", sha(70))
    hook = webhook(app, "Team/App", "fix", sha(70), "d-70")
    assert hook.status_code == 202, hook.json  # was 200 "no route for project 'Team/App'"
    again = catchup.catch_up_once(cu)
    assert again.get("built") == 1 and "queued" not in again, again
    assert Mover(state).drain() == 1 and state.queue.count == 1


def test_a_project_named_by_a_route_and_listed_by_its_group_in_another_case_is_read_once(
        redis_url, gitlab_fake):
    app, state, cu = _case_world(redis_url, gitlab_fake,
                                 NAMED_IN_LOWER_CASE + "catchUp:\n  groups: [team]\n")
    gitlab_fake.requests.clear()
    assert catchup.catch_up_once(cu)["projects"] == 1
    branch_lists = [r.path for r in gitlab_fake.requests if r.path.endswith("/branches")]
    project_id = gitlab_fake.projects["Team/App"].id  # listed by its id
    assert branch_lists == [f"/api/v4/projects/{project_id}/repository/branches"]


@pytest.mark.parametrize("groups", ["", "catchUp:\n  groups: [team]\n"])
def test_a_missed_push_is_counted_under_the_project_as_the_config_names_it(
        redis_url, gitlab_fake, groups):
    """The route types "team/app", GitLab holds "Team/App": /metrics shows the missed pushes
    of "team/app" at 0 from the start, and the hook's state under that name; the catch-up
    counted its pushes under GitLab's "Team/App", a second series, while the one the
    operator watched (and the runbook of CIGitLabHookDisabled points to) stayed at 0."""
    app, state, cu = _case_world(redis_url, gitlab_fake, NAMED_IN_LOWER_CASE + groups)
    gitlab_fake.add_hook("Team/App", HOOK_URL, alert_status="disabled")
    assert metric(app, 'ci_autoscaler_missed_pushes_total{project="team/app"}') == 0
    catchup.catch_up_once(cu)
    gitlab_fake.push("Team/App", "fix", sha(71))
    assert catchup.catch_up_once(cu)["queued"] == 1
    assert metric(app, 'ci_autoscaler_missed_pushes_total{project="team/app"}') == 1
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="team/app"}') == 1
    assert metric(app, 'ci_autoscaler_missed_pushes_total{project="Team/App"}') is None
    assert metric(app, 'ci_autoscaler_gitlab_hook_disabled{project="Team/App"}') is None


def test_a_push_a_version_before_took_is_not_built_again_by_the_first_pass_after_upgrade(
        redis_url, gitlab_fake):
    """Versions before one commit key per project in any case keyed a push by the path as
    spelt ("Team/App", as GitLab's webhook and a route in that case both spell it). A push
    whose webhook such a version took after the catch-up's last pass has its run mark under
    that key; the first pass after the upgrade, keying it "team/app", built it again."""
    app, state, cu = _case_world(redis_url, gitlab_fake, NAMED_IN_LOWER_CASE.replace(
        '"team/app"', '"Team/App"'))
    assert catchup.catch_up_once(cu)["baseline"] == 1
    gitlab_fake.push("Team/App", "fix", sha(71))
    # What the version before stored for that webhook (service.webhooks), its commit key
    # computed as keys.commit_key did then: build_key(source, project, ref, sha).
    push = Push(event=EventKind.PUSH, project="Team/App", ref="refs/heads/fix", sha=sha(71),
                user="dev")
    before = build_key("gitlab", "Team/App", "refs/heads/fix", sha(71))
    request = route_push(push, cu.config.routes, received_at=time.time(), delivery="d-71",
                         commit=before)
    assert state.intake.push(delivery_id="gitlab:d-71", mark=request.build_key,
                             record=intake_record("gitlab:d-71", request.to_dict()),
                             ttl_seconds=3600, commit=before, run_ttl_seconds=3600)
    assert Mover(state).drain() == 1
    again = catchup.catch_up_once(cu)
    assert again.get("built") == 1 and "queued" not in again, again
    assert Mover(state).drain() == 0 and state.queue.count == 1


def test_a_project_listed_by_its_numeric_id_is_caught_up_under_its_path(
        redis_url, gitlab_fake, caplog):
    """GitLab's API takes a project by its numeric id as by its path (doc/api/rest/_index.md,
    "Namespaced paths": `:id` is the ID or URL-encoded path), and the id is what a rename or
    move keeps: `catchUp.projects: ["4711"]` was refused as "no project's path"."""
    caplog.set_level(logging.INFO)
    gitlab_fake.add_project("team/app", branches={"main": sha(1)}, project_id=4711)
    config = parse_file_config(NAMED_IN_LOWER_CASE.replace('project: "team/app"',
                                                           'project: "team/*"')
                               + 'catchUp:\n  projects: ["4711"]\n')
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu)["baseline"] == 1
    gitlab_fake.push("team/app", "fix", sha(72))
    assert catchup.catch_up_once(cu)["queued"] == 1
    assert [r["build"]["project"] for r in intake_builds(ctx.state)] == ["team/app"]
    assert not [r for r in caplog.records if "renamed" in r.getMessage()]  # an id is no rename


@pytest.mark.parametrize("given", [{"gitlab_url": "https://gitlab.example.com"},
                                   {"gitlab_api_token": "glpat-only-the-token-8Vw2"}])
def test_gitlab_url_or_token_alone_says_the_catch_up_is_off(redis_url, caplog, given):
    """GITLAB_URL set and the token under another name (GITLAB_TOKEN), or the other way
    round: the reconcile process ran with no catch-up and said nothing, and every push
    whose webhook GitLab never sent was lost while the operator thought it caught up."""
    caplog.set_level(logging.INFO)
    settings = make_settings(redis_url, **given)
    app = create_app(settings, file_config=parse_file_config(CONFIG))
    state = app.extensions["ci_autoscaler"].state
    assert catchup.from_settings(settings, parse_file_config(CONFIG), state) is None
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING
              and r.name == "ci_autoscaler.catchup"]
    missing = "GITLAB_API_TOKEN" if "gitlab_url" in given else "GITLAB_URL"
    assert line.missing == missing and "catch-up off" in line.getMessage()
    assert "glpat-only-the-token-8Vw2" not in line.getMessage()
