"""The catch-up after a project it names by path is renamed or moved: GitLab's API follows
the old path (API::Helpers#find_project, follow_redirects: true) until another project or group
takes the path (Route#delete_conflicting_redirects: then 404, or the new project). The catch-up
looks the name up (GET /projects/:path: the project's id and current path), lists the project
by its id, keys its builds by its current path (as its webhooks' pushes) and gives them its id.
On the real webhook endpoint, the intake and the GitLab API fake over HTTP
(tests/support/gitlab_fake.py: rename_project, add_group, add_project)."""

import pytest

from service.app import create_app
from tests.integration.test_catchup import intake_builds, webhook
from tests.support.app import make_settings
from workers.adapters import gitlab as gitlab_api
from workers.config.config_file import parse_file_config
from workers.core.catchup_project import RESOLVE_SECONDS
from workers.engine import catchup
from workers.engine.intake import Mover

CONFIG = """
routes:
  - {project: "*", ref: "refs/heads/*", job: build, template: small}
templates:
  small: {}
catchUp:
  projects: [team/app]
"""
OLD, NEW = "team/app", "platform/app"


@pytest.fixture
def world(redis_url, gitlab_fake):
    config = parse_file_config(CONFIG)
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(OLD, branches={"main": "1" * 40})
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu, now=1000)["baseline"] == 1
    gitlab_fake.rename_project(OLD, NEW)
    return app, ctx.state, cu


def lookups(gitlab_fake) -> list[str]:
    """The GET /projects/:id requests (a project looked up), by what they asked for."""
    return [r.path.rsplit("/", 1)[1] for r in gitlab_fake.requests
            if r.path.count("/") == 4 and r.path.startswith("/api/v4/projects/")]


def test_a_renamed_projects_missed_push_is_built_under_its_new_path_with_its_id(
        world, gitlab_fake):
    """Its webhook lost, the push is built as the webhook would have built it: under the path
    the push carries (the new one), and with the project's id, which its commit statuses go
    to (workers.core.commit_status.PROJECT_ID_FIELD)."""
    app, state, cu = world
    project_id = gitlab_fake.projects[NEW].id
    gitlab_fake.push(NEW, "dev", "2" * 40)
    assert catchup.catch_up_once(cu, now=2000)["queued"] == 1
    [stored] = intake_builds(state)
    assert (stored["build"]["project"], stored["build"]["ref"]) == (NEW, "refs/heads/dev")
    assert stored["project_id"] == project_id
    assert Mover(state).drain() == 1
    assert state.get_build(stored["build"]["build_key"])["project_id"] == str(project_id)


def test_a_push_of_a_renamed_project_that_its_webhook_built_is_not_built_again(
        world, gitlab_fake):
    """After the rename, the webhook's push carries the new path and is built under it; the
    catch-up listed the same head through the old path, found no run of it under that path,
    and built the commit a second time."""
    app, state, cu = world
    gitlab_fake.push(NEW, "main", "2" * 40)
    assert webhook(app, NEW, "main", "2" * 40, "d-1").status_code == 202
    catchup.catch_up_once(cu, now=2000)
    assert len(intake_builds(state)) == 1, [
        (b["build"]["project"], b["delivery"]) for b in intake_builds(state)]


def test_once_a_group_takes_the_old_path_the_project_is_still_caught_up_by_its_id(
        world, gitlab_fake):
    """A group made at the old path (a reorganisation): GitLab answers the old path 404 from
    then on; listed by it, the project failed every pass. It is followed by the id it had."""
    app, state, cu = world
    catchup.catch_up_once(cu, now=2000)  # the rename seen
    gitlab_fake.add_group("team")
    gitlab_fake.push(NEW, "dev", "3" * 40)
    result = catchup.catch_up_once(cu, now=3000)
    assert result["queued"] == 1 and "projects_failed" not in result, result
    assert [b["build"]["project"] for b in intake_builds(state)] == [NEW]
    assert gitlab_fake.answered(404, "/projects/team%2Fapp") == 1  # looked up once, then by id
    assert "projects_failed" not in catchup.catch_up_once(cu, now=3000 + RESOLVE_SECONDS)


def test_a_new_project_at_the_old_path_is_not_mixed_up_with_the_moved_one(world, gitlab_fake):
    """A project made at the moved one's old path is another project: its branches are not
    the moved project's heads moved (each one built as a missed push); it gets a first pass
    of its own, recorded, nothing built."""
    app, state, cu = world
    catchup.catch_up_once(cu, now=2000)
    gitlab_fake.add_project(OLD, branches={"main": "4" * 40, "dev": "5" * 40,
                                           "feature": "6" * 40})
    result = catchup.catch_up_once(cu, now=2000 + RESOLVE_SECONDS)
    assert result.get("baseline") == 3 and "queued" not in result, result
    gitlab_fake.push(OLD, "dev", "7" * 40)  # the new project's push, its webhook lost
    result = catchup.catch_up_once(cu, now=2100 + RESOLVE_SECONDS)
    assert result["queued"] == 1
    [stored] = intake_builds(state)
    assert (stored["build"]["project"], stored["project_id"]) == (
        OLD, gitlab_fake.projects[OLD].id)


def test_a_new_project_at_the_old_path_is_noticed_by_the_moved_ones_next_push(
        world, gitlab_fake):
    """A changed head is decided on only after a fresh lookup: the moved project's push after
    a new project took its old path is not built under the new project's path (nor id)."""
    app, state, cu = world
    catchup.catch_up_once(cu, now=2000)
    gitlab_fake.add_project(OLD, branches={"main": "4" * 40})
    gitlab_fake.push(NEW, "main", "8" * 40)
    result = catchup.catch_up_once(cu, now=2100)  # the lookup of 2000 not yet due
    assert result.get("baseline") == 1 and "queued" not in result, result
    assert intake_builds(state) == []


def test_a_pass_with_no_changed_head_looks_no_project_up(world, gitlab_fake):
    """GitLab's rate limits: the lookup is one call per project per RESOLVE_SECONDS, or per
    pass that finds a changed head; a quiet pass costs what it cost before (branches, hooks)."""
    app, state, cu = world
    catchup.catch_up_once(cu, now=2000)
    gitlab_fake.requests.clear()
    for n in range(3):
        assert catchup.catch_up_once(cu, now=2001 + n)["projects"] == 1
    assert lookups(gitlab_fake) == []
    assert len(gitlab_fake.requests) == 3 * 2
    catchup.catch_up_once(cu, now=2000 + RESOLVE_SECONDS)
    assert lookups(gitlab_fake) == ["team%2Fapp"]


def test_the_heads_a_version_before_kept_by_path_are_taken_over_once(redis_url, gitlab_fake):
    """Versions before kept a project's heads under its path; the first pass after the
    upgrade reads them (a push missed meanwhile is built, not taken for a first pass) and keeps
    them by the project's id from then on."""
    config = parse_file_config(CONFIG)
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    project = gitlab_fake.add_project(OLD, branches={"main": "1" * 40})
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    cu.store.record(OLD, heads={"refs/heads/main": "1" * 40}, vanished=(), kinds=["push"],
                    now=1000, ttl_seconds=3600)  # as the version before wrote it
    gitlab_fake.push(OLD, "main", "2" * 40)
    assert catchup.catch_up_once(cu, now=2000)["queued"] == 1
    assert not state_has(ctx.state, f"catchup:heads:{OLD}")
    assert cu.store.seen(f"id:{project.id}")[0] == {"refs/heads/main": "2" * 40}


def state_has(state, key: str) -> bool:
    return bool(state.redis.exists(state.prefix + key))


def test_a_renamed_project_named_by_its_old_path_and_listed_by_its_new_group_is_read_once(
        redis_url, gitlab_fake):
    """catchUp.projects names it by its old path, and catchUp.groups lists it under its new
    one: one project, listed once a pass (not twice, with two hook series)."""
    config = parse_file_config(CONFIG + "  groups: [platform]\n")
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    project = gitlab_fake.add_project(OLD, branches={"main": "1" * 40})
    gitlab_fake.add_project("platform/lib", branches={"main": "1" * 40})
    gitlab_fake.rename_project(OLD, NEW)
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu, now=1000)["projects"] == 2
    branch_lists = [r.path for r in gitlab_fake.requests if r.path.endswith("/branches")]
    assert branch_lists.count(f"/api/v4/projects/{project.id}/repository/branches") == 1
    assert len(branch_lists) == 2


def test_a_renamed_projects_push_only_its_old_route_matches_is_built_under_its_new_path(
        redis_url, gitlab_fake, caplog):
    """A route names the project by its old path: its webhooks' pushes (new path) match no
    route and are answered "no route". The catch-up built them a pass late (under the old
    path) before it followed the project by its id; then it built none (issue 16: no push is
    ever lost). It builds each under the new path, as the webhook would once the route names
    it, by the route of the old path (the webhook built none: no duplicate), and tells the
    operator to route the new path, once."""
    config = parse_file_config(CONFIG.replace('project: "*"', f'project: "{OLD}"'))
    app = create_app(make_settings(redis_url), file_config=config)
    ctx = app.extensions["ci_autoscaler"]
    gitlab_fake.add_project(OLD, branches={"main": "1" * 40})
    cu = catchup.CatchUp(settings=ctx.settings, config=config, state=ctx.state,
                         gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    catchup.catch_up_once(cu, now=1000)
    gitlab_fake.rename_project(OLD, NEW)
    gitlab_fake.push(NEW, "main", "2" * 40)
    assert webhook(app, NEW, "main", "2" * 40, "d-2").status_code == 200  # no route
    assert catchup.catch_up_once(cu, now=2000).get("queued") == 1
    gitlab_fake.push(NEW, "dev", "3" * 40)  # the lookup of 2000 not due: the path kept
    assert catchup.catch_up_once(cu, now=2100).get("queued") == 1
    for now in (2000 + RESOLVE_SECONDS, 2000 + 2 * RESOLVE_SECONDS):
        assert "queued" not in catchup.catch_up_once(cu, now=now)
    built = [(b["build"]["project"], b["build"]["ref"], b["build"]["job"], b["project_id"])
             for b in intake_builds(state=ctx.state)]
    project_id = gitlab_fake.projects[NEW].id
    assert built == [(NEW, "refs/heads/main", "build", project_id),
                     (NEW, "refs/heads/dev", "build", project_id)]
    told = [r for r in caplog.records if "route its new path" in r.getMessage()]
    assert len(told) == 1 and told[0].path == NEW and told[0].levelname == "WARNING"
