"""During a rolling upgrade a worker of one release runs the jobs the other release queued
(workers.engine.task_args). Jobs are written into a real redis-server as each release's code
queued them (dotted task name, JSON keyword arguments, the same RQ options) and run by RQ's
SimpleWorker on today's code, through kmock over HTTP and the Jenkins fake; and a job today's
code queues is one the previous release's task signature takes
(tests/fixtures/task_signatures.json)."""

import inspect
import json
import logging
import time
from pathlib import Path

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import (  # noqa: F401 (the fixture)
    FAIL_FAST_SECONDS, app, cleaned_up, one_build, state_of, until)
from tests.support.app import work
from workers.adapters.redis_state import (
    JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_RETRY, JOB_TIMEOUT_SECONDS)
from workers.agent_starts.watch import FAIL_TASK
from workers.engine.intake import Mover, PROVISION_TASK, RELEASE_TASK

TABLE = json.loads((Path(__file__).resolve().parents[1] / "fixtures/task_signatures.json")
                   .read_text())["tasks"]
DETAIL = 'container jnlp: ImagePullBackOff: Back-off pulling image "agent:1"'
# fail_start's arguments as each release's queue_failure wrote them for a pod whose image
# cannot be pulled (`git show <commit>:workers/agent_starts/watch.py`)
OLD_FAIL_KWARGS = {
    "ddc2da5": {"reason": "ImagePullBackOff", "detail": DETAIL, "only_before_connect": False},
    "a0fd260": {"reason": "ImagePullBackOff", "detail": DETAIL, "only_before_connect": False,
                "disrupted": False},
}


def queue_as_a_release_did(state, func, kwargs, description):
    """The job as every release since the JSON serializer queued its tasks (enqueue_call with
    these options; workers.agent_starts.watch.queue_failure, workers.engine.tasks.queue_provision)."""
    state.queue.enqueue_call(
        func, kwargs=kwargs, timeout=JOB_TIMEOUT_SECONDS, result_ttl=JOB_RESULT_TTL_SECONDS,
        failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY, at_front=True,
        description=description)


def failed_for(app, key):
    build = state_of(app).get_build(key)
    return build["status"], build.get("fail_reason")


@pytest.mark.parametrize("release", sorted(OLD_FAIL_KWARGS))
def test_a_fail_start_job_an_earlier_release_queued_fails_the_build(
        app, kube, jenkins_fake, release):
    key, agent, item = one_build(app, kube, jenkins_fake)
    queue_as_a_release_did(state_of(app), FAIL_TASK,
                           {"build_key": key, "agent_name": agent, **OLD_FAIL_KWARGS[release]},
                           f"fail_start {key}")
    until(app, cleaned_up(kube, jenkins_fake, agent))
    assert failed_for(app, key) == ("failed", "ImagePullBackOff")
    assert jenkins_fake.cancelled_items == [item]


def test_a_fail_start_job_a_newer_release_queued_fails_the_build_and_names_what_it_ignored(
        app, kube, jenkins_fake, caplog):
    """Before, a TypeError failed the job on this worker: the build stayed triggered, its pod
    and queue item left, its failure lost."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    newer = {"placed_by": "a newer release", "secret_hint": "s3cr3t-value"}
    for _ in range(2):  # the second finds it failed already; logged once
        queue_as_a_release_did(state_of(app), FAIL_TASK,
                               {"build_key": key, "agent_name": agent,
                                **OLD_FAIL_KWARGS["a0fd260"], **newer},
                               f"fail_start {key}")
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.task_args"):
        until(app, cleaned_up(kube, jenkins_fake, agent))
        work(app)
    assert failed_for(app, key) == ("failed", "ImagePullBackOff")
    assert jenkins_fake.cancelled_items == [item]
    notes = [r for r in caplog.records if r.name == "ci_autoscaler.task_args"]
    assert [(r.task, r.arguments) for r in notes] == [("fail_start",
                                                       ["placed_by", "secret_hint"])]
    assert "s3cr3t-value" not in caplog.text


def test_a_start_failure_job_queued_today_is_one_the_previous_release_runs(
        app, kube, jenkins_fake):
    """queue_failure sends the flags added since only when set: the fail_start of the
    previous release recorded (ddc2da5, before `disrupted`) takes the job. Before, every job
    carried `disrupted`, and that worker failed it on a TypeError."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent)
    state = state_of(app)
    deadline = time.monotonic() + FAIL_FAST_SECONDS
    while not state.queue.count:  # the worker's own watch queues it (in this process)
        assert time.monotonic() < deadline, "no fail_start job queued"
        time.sleep(0.02)
    [job] = state.queue.get_jobs()
    assert job.func_name == FAIL_TASK
    oldest = [part.rstrip("=") for part in TABLE[FAIL_TASK]["ddc2da5"].split(", ")]
    previous = inspect.Signature([inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY)
                                  for name in oldest])
    assert set(job.kwargs) <= set(oldest), job.kwargs  # would be a TypeError there
    previous.bind_partial(**job.kwargs)
    until(app, cleaned_up(kube, jenkins_fake, agent))
    assert failed_for(app, key) == ("failed", "ImagePullBackOff")


def test_a_provision_job_a_newer_release_queued_provisions_the_build(app, kube, jenkins_fake):
    """A newer web's build (a field this release does not know) and a newer argument: the
    build is provisioned as this release knows it (BuildRequest.from_dict), not failed on a
    TypeError for every push queued by the new web while this worker still runs."""
    key = push(app.test_client(), 0)
    state = state_of(app)
    Mover(state).drain()
    [job] = state.queue.get_jobs()
    build = job.kwargs["build"]
    job.delete()
    queue_as_a_release_did(state, PROVISION_TASK,
                           {"build": {**build, "newer_field": ["x"]}, "newer_arg": 1},
                           f"provision_agent {key}")
    work(app)
    assert state.get_build(key)["status"] == "triggered"
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent_name"]]


def test_a_release_job_a_newer_release_queued_releases_the_agent(app, kube, jenkins_fake):
    key, agent, _ = one_build(app, kube, jenkins_fake)
    queue_as_a_release_did(state_of(app), RELEASE_TASK,
                           {"build_key": key, "agent_name": agent, "reason": "build_completed",
                            "newer_arg": True}, f"release_agent {key}")
    work(app)
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
