"""A project renamed or moved while its builds run (a group reorganisation): its commit
statuses still reach it. A push goes through the real webhook and the intake's mover, which
keep the push's project id on the build's record; the sender posts against the GitLab API fake
over HTTP, which follows an old path as GitLab does until another project or group takes it
(tests/support/gitlab_fake.py: rename_project, move_group, add_group)."""

import json

import pytest

from tests.support.app import GITLAB_TOKEN, make_app
from tests.support.gitlab_fake import GitLabFake
from tests.support.payloads import fixture
from workers.adapters import gitlab as gitlab_api
from workers.adapters.capacity_store import CapacityStore
from workers.commit_statuses import sender as status_sender, touch
from workers.core.commit_status import PROJECT_ID_FIELD
from workers.engine.intake import Mover, record

PROJECT = "team/app"
API_TOKEN = "glpat-rename-api-8Jd3"
SHA = "5eed" * 10


@pytest.fixture
def gitlab():
    with GitLabFake() as fake:
        fake.tokens[API_TOKEN] = {"api"}
        fake.add_project(PROJECT, branches={"main": SHA})
        yield fake


@pytest.fixture
def app(redis_url):
    return make_app(redis_url)


@pytest.fixture
def state(app):
    return app.extensions["ci_autoscaler"].state


def push(app, gitlab, path: str = PROJECT) -> str:
    """The real push capture, of `path` and its id in the fake, through the webhook and the
    mover; the build's key."""
    body = fixture("gitlab_push_real_lrz.json")
    project_id = gitlab.projects[path].id
    body["project"] |= {"id": project_id, "path_with_namespace": path}
    body |= {"project_id": project_id, "after": SHA, "checkout_sha": SHA}
    response = app.test_client().post("/webhooks/gitlab", data=json.dumps(body), headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "X-Gitlab-Event-UUID": f"uuid-{path}"})
    assert response.status_code == 202, response.get_json()
    assert Mover(state_of(app)).drain() == 1
    return response.get_json()["build_key"]


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def make_sender(state, gitlab):
    gl = gitlab_api.client(url=gitlab.url, token=API_TOKEN)
    sender = status_sender.Sender(state=state, capacity=CapacityStore(state.redis), gl=gl,
                                  secrets=(API_TOKEN,))
    sender.queue.switch_on(ttl_seconds=60)
    return sender


def progress(state, key: str, **fields) -> None:
    """The worker's and Jenkins' word on the build, as they write it, and its touch."""
    state.redis.hset(f"{state.prefix}build:{key}", mapping=fields)
    touch(state, key)


def statuses(gitlab, path: str) -> list[str]:
    return [s["status"] for s in gitlab.projects[path].statuses]


def test_the_build_record_keeps_the_pushs_project_id(app, state, gitlab):
    key = push(app, gitlab)
    assert state.get_build(key)[PROJECT_ID_FIELD] == str(gitlab.projects[PROJECT].id)


def test_a_final_status_reaches_a_project_moved_when_a_new_group_takes_its_old_path(
        app, state, gitlab):
    """The group is moved under another and a new group made at its old name (a
    reorganisation): GitLab deletes the redirects under that path (Route#
    delete_conflicting_redirects), and a project made there takes the old path. Posted by the
    path, the final status went to that new project, which has no such commit: 404, taken as
    GitLab's final answer, and the commit showed the build running for ever."""
    key = push(app, gitlab)
    sender = make_sender(state, gitlab)
    progress(state, key, status="running", started_at="1")
    assert status_sender.send_due(sender) == {"sent": 1}
    gitlab.move_group("team", "platform/team")
    gitlab.add_group("team")
    gitlab.add_project(PROJECT, branches={"main": "0be7" * 10})
    progress(state, key, status="done", result="SUCCESS")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert statuses(gitlab, "platform/team/app") == ["success"]
    assert statuses(gitlab, PROJECT) == [] and gitlab.status_history(PROJECT) == []


def test_a_status_never_lands_on_a_mirror_made_at_the_old_path(app, state, gitlab):
    """The project is renamed and a mirror of it made at its old path: the mirror holds the
    same commits, so a status posted by the path was taken (201) by the mirror, and the
    project itself kept "running"."""
    key = push(app, gitlab)
    project_id = gitlab.projects[PROJECT].id
    sender = make_sender(state, gitlab)
    progress(state, key, status="running", started_at="1")
    assert status_sender.send_due(sender) == {"sent": 1}
    gitlab.rename_project(PROJECT, "team/app-legacy")
    gitlab.add_project(PROJECT, branches={"main": SHA})  # the mirror
    progress(state, key, status="done", result="FAILURE")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert statuses(gitlab, "team/app-legacy") == ["failed"]
    assert statuses(gitlab, PROJECT) == []
    assert gitlab.requests[-1].path == f"/api/v4/projects/{project_id}/statuses/{SHA}"


def test_a_build_recorded_without_the_id_is_posted_by_its_path(app, state, gitlab):
    """A rolling upgrade: a push stored by a web of a release before the id (its intake record
    has none), or found by the catch-up. Its status goes by the path, which GitLab's redirect
    still follows after a rename."""
    build = {"build_key": "old-web-1", "agent_name": "cia-build-old1", "source": "gitlab",
             "project": PROJECT, "ref": "refs/heads/main", "sha": SHA, "user": "u",
             "job": "build", "template": "default", "parameters": {},
             "received_at": 1.0, "node_label": ""}
    assert state.intake.push(delivery_id="gitlab:old", mark="old-web-1",
                             record=record("gitlab:old", build), ttl_seconds=60)
    assert Mover(state).drain() == 1
    assert PROJECT_ID_FIELD not in state.get_build("old-web-1")
    gitlab.rename_project(PROJECT, "platform/app")
    sender = make_sender(state, gitlab)
    progress(state, "old-web-1", status="done", result="SUCCESS")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert statuses(gitlab, "platform/app") == ["success"]
    assert gitlab.requests[-1].path == f"/api/v4/projects/team%2Fapp/statuses/{SHA}"
