"""A build waiting because Jenkins refuses us (a missing Agent/Create permission, a refused
token) says so: through the real path (a GitLab push, the mover, an RQ SimpleWorker with the
production failure handler, reconcile passes, kmock over HTTP, the Jenkins fake), its record
carries the refusal, its commit status reads it in words a developer understands (within
GitLab's 255 characters, no secret), the status page shows it, and it goes once Jenkins lets
the build through. Before, the record stayed `queued` with no word: GitLab said "queued" and
the page nothing, while the build waited for an admin."""

import html
import time

from tests.integration.test_jenkins_token_refused import passes, run_retries, state_of
from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, run_worker)
from tests.integration.test_placement_on_cluster import push
from workers.core import commit_status
from workers.core.commit_status import State
from workers.core.waiting_text import JENKINS_WAIT_FIELD
from workers.engine import tasks
from tests.integration.test_commit_status import arrives, posted, world  # noqa: F401
from tests.support.app import work


def _pending_text(app, key) -> str:
    want = commit_status.wanted(state_of(app).get_build(key), secrets=[TOKEN])
    assert want is not None and want.state is State.PENDING
    assert len(want.description) <= commit_status.DESCRIPTION_MAX_CHARS
    return want.description


TOKEN = "11" + "ef" * 16


def test_a_build_waiting_on_a_missing_agent_permission_says_why_and_clears_when_granted(
        app, kube, jenkins_fake):  # noqa: F811
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.missing_permissions = {"Agent/Create"}

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 1, time.time())

    text = _pending_text(app, key)
    assert text.startswith("waiting: Jenkins refuses ci-autoscaler"), text
    assert "Agent/Create" in text
    page = html.unescape(app.test_client().get("/status").get_data(as_text=True))
    assert "Agent/Create" in page

    jenkins_fake.missing_permissions = set()  # the admin grants it
    passes(app, 1, later)
    run_retries(app)

    record = state_of(app).get_build(key)
    assert record["status"] == "triggered"
    assert not record.get(JENKINS_WAIT_FIELD)
    assert "refuses" not in _pending_text(app, key)
    assert "Agent/Create" not in html.unescape(
        app.test_client().get("/status").get_data(as_text=True))


def test_a_build_waiting_on_a_refused_token_says_so_without_the_token(
        app, kube, jenkins_fake):  # noqa: F811
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, TOKEN  # ours no longer valid

    key = push(app.test_client(), 1)
    run_worker(app)

    text = _pending_text(app, key)
    assert text.startswith("waiting: Jenkins refuses ci-autoscaler"), text
    assert "JENKINS_API_TOKEN not accepted" in text
    assert token not in text and TOKEN not in text
    page = html.unescape(app.test_client().get("/status").get_data(as_text=True))
    assert "JENKINS_API_TOKEN not accepted" in page
    assert token not in page and TOKEN not in page


def test_a_waiting_build_placed_while_jenkins_refuses_us_says_so_not_its_old_reason(
        app, kube, jenkins_fake):  # noqa: F811
    """The template's cap (2) holds the third build back; a release frees its slot and the
    re-drive places it, but Jenkins refuses to register its agent: it waits on Jenkins now,
    not on the cap, which the page and its status went on saying."""
    jenkins_fake.add_job("build", parameters=OURS)
    keys = [push(app.test_client(), n) for n in (1, 2, 3)]
    run_worker(app)
    state = state_of(app)
    assert state.get_build(keys[2])["wait_reason"] == "cap"
    jenkins_fake.missing_permissions = {"Agent/Create"}

    tasks.release_agent(keys[0], state.get_build(keys[0])["agent"])
    run_worker(app)  # the re-drive the release queued

    assert state.get_build(keys[2])["status"] == "waiting", state.get_build(keys[2])
    assert "Agent/Create" in _pending_text(app, keys[2])
    page = " ".join(html.unescape(app.test_client().get("/status").get_data(
        as_text=True)).split())
    assert "placed, but Jenkins refuses ci-autoscaler" in page and "Agent/Create" in page

    jenkins_fake.missing_permissions = set()
    passes(app, 1, time.time())
    assert state.get_build(keys[2])["status"] == "triggered"
    assert not state.get_build(keys[2]).get(JENKINS_WAIT_FIELD)


def test_the_developer_sees_in_gitlab_that_jenkins_refuses_us(
        world, kube, jenkins_fake, gitlab_fake):  # noqa: F811
    """Through the real sender and the GitLab fake: the build's pending status names the
    refusal at once (it is decided: no wait for the worker's decision), within GitLab's 255
    characters and without the token."""
    app, _ = world
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, TOKEN

    push(app.test_client(), 0)
    work(app)
    arrives(gitlab_fake, 0, "pending")

    [(state, text, answer)] = posted(gitlab_fake, 0)
    assert text.startswith("waiting: Jenkins refuses ci-autoscaler until an admin fixes"), text
    assert "JENKINS_API_TOKEN not accepted" in text and len(text) <= 255
    assert token not in text and TOKEN not in text
