"""A token whose user may not set commit statuses (below Developer, or a protected ref): every
build of the project is refused 403 alike. The sender logs it as an error once per project
(again after FORBIDDEN_LOG_SECONDS, or after a status was taken on the ref refused), and counts
every one; against the GitLab API fake over HTTP (roles: authorize! :create_commit_status;
protected refs: Ci::PipelinePolicy), on a real redis-server."""

import logging
import time

import pytest

from tests.integration import test_commit_status_sender
from tests.integration.test_commit_status_sender import state  # noqa: F401 (fixture)
from tests.support.gitlab_fake import GitLabFake
from workers.adapters import gitlab as gitlab_api
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.metric_store import counter_values
from workers.commit_statuses import sender as status_sender, touch
from workers.telemetry.metrics import COMMIT_STATUS_TOTAL

API_TOKEN = "glpat-forbidden-api-2Kq9"
SHA = "feed" * 10
PROJECTS = ("team/app", "team/lib")


class Clock(test_commit_status_sender.Clock):
    """The test's clock: real time, one second ahead, plus what the test moves it on by.
    `running` stamps its touches with time.time(); on a loaded machine a touch made seconds
    after a fixed clock was set was not due yet at that clock's time, and the pass sent
    nothing."""

    def __init__(self):
        super().__init__()
        self.started = time.time()

    def __call__(self) -> float:
        return self.now + (time.time() - self.started)


@pytest.fixture
def gitlab():
    with GitLabFake() as fake:
        fake.tokens[API_TOKEN] = {"api"}
        fake.roles[API_TOKEN] = "reporter"  # may read, may not set statuses
        for path in PROJECTS:
            fake.add_project(path, branches={"main": SHA})
        yield fake


def running(state, key: str, project: str, job: str = "build",
            ref: str = "refs/heads/main") -> None:
    """A running build's record as the mover and the worker write it, touched."""
    state.redis.hset(f"{state.prefix}build:{key}", mapping={
        "status": "running", "started_at": "1", "project": project, "sha": SHA, "job": job,
        "ref": ref, "delivery": "gitlab:d-" + key, "received_at": "1000000"})
    touch(state, key)


def refused_count(sender) -> float:
    """ci_autoscaler_commit_status_total{result="refused"} as /metrics reads it."""
    raw = sender.metrics.store.read([COMMIT_STATUS_TOTAL.name])[COMMIT_STATUS_TOTAL.name]
    return counter_values(raw).get(("refused",), 0.0)


def errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.levelno >= logging.ERROR and r.name == "ci_autoscaler.commit_status"]


def test_a_403_is_logged_once_per_project_and_counted_for_every_build(state, gitlab, caplog):
    clock = Clock()
    gl = gitlab_api.client(url=gitlab.url, token=API_TOKEN)
    sender = status_sender.Sender(state=state, capacity=CapacityStore(state.redis), gl=gl,
                                  secrets=(API_TOKEN,), clock=clock)
    sender.queue.switch_on(ttl_seconds=60)
    caplog.set_level(logging.DEBUG, logger="ci_autoscaler")
    for i in range(3):
        for project in PROJECTS:
            running(state, f"{project}-{i}", project)
    assert status_sender.send_due(sender) == {"refused": 6}
    assert gitlab.answered(403) == 6 and refused_count(sender) == 6
    logged = errors(caplog)
    assert len(logged) == 2  # one per project, where each build logged its own
    assert sorted(r.project for r in logged) == sorted(PROJECTS)
    for r in logged:  # the causes named, the token never
        assert "Developer role" in r.error and "protected branch" in r.error
    assert all(API_TOKEN not in r.getMessage() + str(r.__dict__) for r in caplog.records)

    caplog.clear()  # still refused: counted, not logged again
    running(state, "app-3", "team/app")
    assert status_sender.send_due(sender) == {"refused": 1}
    assert refused_count(sender) == 7 and errors(caplog) == []

    clock.now += status_sender.FORBIDDEN_LOG_SECONDS  # an hour on: said again, with the count
    running(state, "app-4", "team/app")
    assert status_sender.send_due(sender) == {"refused": 1}
    [again] = errors(caplog)
    assert again.project == "team/app" and again.refused_since_last_logged == 3

    caplog.clear()  # the role fixed for a while: taken; then taken away again, said at once
    gitlab.roles[API_TOKEN] = "developer"
    running(state, "app-5", "team/app")
    assert status_sender.send_due(sender) == {"sent": 1}
    # team/app's refused ones posted again; all of one job and commit, so of one status,
    # which app-5's running holds already
    assert status_sender.send_due(sender) == {"already": 5}
    gitlab.roles[API_TOKEN] = "reporter"
    running(state, "app-6", "team/app", job="test")
    assert status_sender.send_due(sender) == {"refused": 1}
    [after] = errors(caplog)
    assert after.project == "team/app" and not hasattr(after, "refused_since_last_logged")


def test_a_protected_branch_403_is_logged_once_while_other_branches_statuses_are_taken(
        state, gitlab, caplog):
    """The usual 403: a token of a Developer, and the default branch protected as GitLab
    protects it by default (Maintainers push and merge: Ci::PipelinePolicy refuses
    :update_pipeline on it), while the project's other branches take their statuses. A status
    taken on a feature branch says nothing of main: each main build logged the error again,
    the once-per-project line did not hold where the 403 is most often met."""
    clock = Clock()
    gl = gitlab_api.client(url=gitlab.url, token=API_TOKEN)
    gitlab.roles[API_TOKEN] = "developer"
    gitlab.protect("team/app", "main")
    gitlab.projects["team/app"].branches["feature"] = gitlab.projects["team/app"].branches[
        "main"]
    sender = status_sender.Sender(state=state, capacity=CapacityStore(state.redis), gl=gl,
                                  secrets=(API_TOKEN,), clock=clock)
    sender.queue.switch_on(ttl_seconds=60)
    caplog.set_level(logging.DEBUG, logger="ci_autoscaler")
    for i in range(3):
        running(state, f"main-{i}", "team/app")
        assert status_sender.send_due(sender) == {"refused": 1}
        running(state, f"feature-{i}", "team/app", job=f"build-{i}",
                ref="refs/heads/feature")
        assert status_sender.send_due(sender) == {"sent": 1}
    assert refused_count(sender) == 3
    [logged] = errors(caplog)
    assert logged.project == "team/app" and "main here" in logged.error

    clock.now += status_sender.FORBIDDEN_LOG_SECONDS  # an hour on: said again, with the count
    running(state, "main-3", "team/app")
    assert status_sender.send_due(sender) == {"refused": 1}
    assert [r.refused_since_last_logged for r in errors(caplog)[1:]] == [2]


def test_a_project_the_token_does_not_see_is_logged_once_not_per_build(state, gitlab, caplog):
    """The token's user is no member of a private project (GitLab answers it 404 "Project Not
    Found", as a deleted one) whose hook still sends its pushes: every status of every build
    of it is refused alike, and each logged an error of its own, three a build."""
    clock = Clock()
    gitlab.roles[API_TOKEN] = "developer"
    gitlab.remove_project("team/lib")
    gl = gitlab_api.client(url=gitlab.url, token=API_TOKEN)
    sender = status_sender.Sender(state=state, capacity=CapacityStore(state.redis), gl=gl,
                                  secrets=(API_TOKEN,), clock=clock)
    sender.queue.switch_on(ttl_seconds=60)
    caplog.set_level(logging.DEBUG, logger="ci_autoscaler")
    for i in range(3):
        running(state, f"lib-{i}", "team/lib")
    running(state, "app-0", "team/app")
    assert status_sender.send_due(sender) == {"refused": 3, "sent": 1}
    assert gitlab.answered(404) == 3 and refused_count(sender) == 3
    [logged] = errors(caplog)
    assert logged.project == "team/lib" and "not a member" in logged.error
    assert all(API_TOKEN not in r.getMessage() + str(r.__dict__) for r in caplog.records)
