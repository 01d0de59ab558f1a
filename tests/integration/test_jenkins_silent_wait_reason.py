"""A build waiting because Jenkins does not answer says so, through the same path as one it
refuses (tests/integration/test_refused_wait_reason.py): a GitLab push, the mover, an RQ
SimpleWorker with the production failure handler, reconcile passes, kmock over HTTP, the Jenkins
fake. During a controller restart (every URL 503 "Please wait while Jenkins is getting ready to
work": hudson.util.HudsonIsLoading) or a busy spell (429s, read timeouts) the provision fails
retryably and the build stays `queued`: its commit status said "queued" and the status page
nothing. Now its record, its pending status and the page say Jenkins is not answering, and the
word goes once Jenkins takes the build."""

import html
import time

import pytest

from tests.integration.test_jenkins_token_refused import passes, run_retries, state_of
from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_refused_wait_reason import _pending_text
from workers.core.waiting_text import JENKINS_WAIT_FIELD

SAID = "waiting: Jenkins is not answering (restarting or overloaded)"


def _page(app) -> str:
    return " ".join(html.unescape(app.test_client().get("/status").get_data(as_text=True)).split())


@pytest.mark.parametrize("silence", ["restarting", "overloaded"])
def test_a_build_waiting_on_a_jenkins_that_does_not_answer_says_so_until_it_is_taken(
        app, kube, jenkins_fake, silence):  # noqa: F811
    jenkins_fake.add_job("build", parameters=OURS)
    if silence == "restarting":
        jenkins_fake.go_down()
        jenkins_fake.come_up()  # every URL 503 with its loading page
    else:
        jenkins_fake.fail_next(429, times=1000)  # Jenkins (or its front) asks us to slow down

    key = push(app.test_client(), 1)
    run_worker(app)

    record = state_of(app).get_build(key)
    assert record["status"] == "queued", record
    text = _pending_text(app, key)
    assert text.startswith(SAID), text
    assert SAID in _page(app)

    if silence == "restarting":
        jenkins_fake.finish_loading()
    else:
        jenkins_fake.clear_failures()
    passes(app, 1, time.time())
    run_retries(app)

    record = state_of(app).get_build(key)
    assert record["status"] == "triggered", record
    assert not record.get(JENKINS_WAIT_FIELD)
    assert "not answering" not in _pending_text(app, key)
    assert "not answering" not in _page(app)
