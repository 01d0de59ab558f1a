"""The catch-up after a project it names by path is renamed or moved: GitLab's API follows
the old path for its GET of the branches too (API::Helpers#find_project, follow_redirects:
true), until another project or group takes the path (then 404, every pass). On the real
webhook endpoint, the intake and the GitLab API fake over HTTP (tests/support/gitlab_fake.py:
rename_project, add_group)."""

import pytest

from service.app import create_app
from tests.integration.test_catchup import intake_builds, webhook
from tests.support.app import make_settings
from workers.adapters import gitlab as gitlab_api
from workers.config.config_file import parse_file_config
from workers.engine import catchup

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


def test_the_old_path_still_lists_the_renamed_projects_branches_until_it_is_taken(
        world, gitlab_fake):
    app, state, cu = world
    gitlab_fake.push(NEW, "dev", "2" * 40)  # its webhook lost
    assert catchup.catch_up_once(cu, now=2000)["queued"] == 1
    assert [(b["build"]["project"], b["build"]["ref"]) for b in intake_builds(state)] == [
        (OLD, "refs/heads/dev")]
    gitlab_fake.add_group("team")  # the old path taken: the project is not found by it
    assert catchup.catch_up_once(cu, now=3000)["projects_failed"] == 1


@pytest.mark.xfail(strict=True, reason="not fixed yet: the catch-up keys the builds it finds "
                   "by the path the config names, the webhook by the project's current one")
def test_a_push_of_a_renamed_project_that_its_webhook_built_is_not_built_again(
        world, gitlab_fake):
    """After the rename, the webhook's push carries the new path and is built under it; the
    catch-up lists the same head through the old path, finds no run of it under that path,
    and builds the commit a second time."""
    app, state, cu = world
    gitlab_fake.push(NEW, "main", "2" * 40)
    assert webhook(app, NEW, "main", "2" * 40, "d-1").status_code == 202
    catchup.catch_up_once(cu, now=2000)
    assert len(intake_builds(state)) == 1, [
        (b["build"]["project"], b["delivery"]) for b in intake_builds(state)]
