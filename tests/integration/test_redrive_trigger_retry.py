"""A build a re-drive placed whose Jenkins trigger failed retryably (a rate-limiting proxy's
429 with Retry-After, through the adapter's own retries) is triggered again after the wait
Jenkins asked for, not a lease period or ten later by the restart of stalled builds: through
the real path (a GitLab push to the webhook, the worker's mover, an RQ SimpleWorker with the
production failure handler and scheduler, kmock over HTTP and the Jenkins fake)."""

import json
import time

import pytest

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, pod_creates, run_worker)
from tests.integration.test_jenkins_token_refused import state_of
from tests.integration.test_placement_on_cluster import push
from workers import runtime
from workers.engine import tasks, trigger_retry
from workers.adapters.redis_state import JOB_RETRY, RETRY_AT
from workers.adapters.rq_retries import queue_due_retries
from workers.core.errors import RetryableError
from workers.core.models import BuildRequest

RETRY_AFTER = 2
TRIGGER = "/job/build/buildWithParameters"


def scheduled_provisions(app) -> list[tuple[str, float]]:
    """The provision jobs in RQ's scheduled registry: (build key, when due)."""
    queue = state_of(app).queue
    registry = queue.scheduled_job_registry
    jobs = []
    for job_id in registry.get_job_ids():
        job = queue.fetch_job(job_id)
        if job is not None and job.func_name == tasks.PROVISION_TASK:
            due = registry.get_scheduled_time(job_id).timestamp()
            jobs.append((job.kwargs["build"]["build_key"], due))
    return jobs


def test_a_placed_build_whose_trigger_was_rate_limited_is_triggered_after_retry_after(
        app, kube, jenkins_fake):
    jenkins_fake.add_job("build", parameters=OURS)
    first = push(app.test_client(), 1)
    second = push(app.test_client(), 2)
    third = push(app.test_client(), 3)
    run_worker(app)
    state = state_of(app)
    assert state.get_build(third)["status"] == "waiting"  # the template's cap: 2
    # Jenkins behind a rate-limiting proxy: every call of the adapter's trigger is 429
    jenkins_fake.fail_next(429, times=4, path_prefix=TRIGGER,
                           headers={"Retry-After": str(RETRY_AFTER)})

    tasks.release_agent(first, state.get_build(first)["agent"])  # queues a re-drive
    before = time.time()
    run_worker(app)  # the re-drive: the third's pod is made, its trigger fails

    build = state.get_build(third)
    assert build["status"] == "pod_created"
    assert len(pod_creates(kube)) == 3
    [(key, due)] = scheduled_provisions(app)  # fails without the fix: nothing retries it
    assert key == third
    # not at once: due after Retry-After (the adapter's own waits came first, so the
    # whole seconds RQ keeps are no earlier than that)
    assert before + RETRY_AFTER <= due <= time.time() + RETRY_AFTER + 1
    # RQ keeps the due time in whole seconds
    assert float(build[RETRY_AT]) == pytest.approx(due, abs=2)  # not taken for stalled before

    # once due (a worker's scheduler, or the reconcile pass, moves it to the queue)
    assert queue_due_retries(state.queue, due + 1) == 1
    run_worker(app)

    build = state.get_build(third)
    assert build["status"] == "triggered" and build["queue_item"]
    keys = [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds]
    assert sorted(keys) == sorted([first, second, third])  # triggered once each
    assert len(pod_creates(kube)) == 3  # its pod was found, not made again
    assert scheduled_provisions(app) == []


def test_the_wait_is_retry_after_within_rqs_retry_intervals():
    assert trigger_retry.delay_seconds(RetryableError("503")) == JOB_RETRY.intervals[0]
    assert trigger_retry.delay_seconds(RetryableError("429", retry_after=3)) == 3
    assert trigger_retry.delay_seconds(RetryableError("429", retry_after=3600)) \
        == JOB_RETRY.intervals[-1]


def test_a_build_another_task_triggered_or_ended_gets_no_job_from_a_lost_lease(
        app, kube, jenkins_fake):
    """Two re-drives at once (the reconcile pass's and a release's job) both try a waiting
    build: the one that lost its lease ("being provisioned by another task") looks at the
    build only once its whole chunk has ended, by when the other may have placed and
    triggered it, or the build ended (released, its pipeline cancelled): nothing is left to
    trigger."""
    jenkins_fake.add_job("build", parameters=OURS)
    triggered, _, ended = (push(app.test_client(), n) for n in (1, 2, 3))
    run_worker(app)
    state = state_of(app)
    assert state.get_build(triggered)["queue_item"]
    assert state.get_build(ended)["status"] == "waiting"  # the template's cap: 2
    tasks.release_agent(ended, state.get_build(ended)["agent"])
    assert state.get_build(ended)["status"] == "released"
    assert not state.get_build(ended).get("queue_item")

    for key in (triggered, ended):  # each fails without the fix: a job, and a false warning
        request = BuildRequest.from_dict(json.loads(state.get_build(key)["request"]))
        lost_lease = RetryableError(f"build {key} is being provisioned by another task")
        assert not trigger_retry.after_redrive(runtime.current(), request, lost_lease), key
        assert RETRY_AT not in state.get_build(key)
    assert scheduled_provisions(app) == []


def test_a_newer_releases_field_of_the_request_is_in_the_retried_provision(
        app, kube, jenkins_fake):
    """A rolling upgrade: the newer web wrote the waiting build's request with a field this
    release does not know; this release's re-drive reads it (BuildRequest.from_dict) and,
    its trigger failing, queues the provision again from what it read. Before, the field
    was dropped there: the newer worker that ran the retried job built the push without it."""
    jenkins_fake.add_job("build", parameters=OURS)
    first, _, third = (push(app.test_client(), n) for n in (1, 2, 3))
    run_worker(app)
    state = state_of(app)
    assert state.get_build(third)["status"] == "waiting"  # the template's cap: 2
    newer = {"merge_ref": "refs/merge-requests/7/merge"}
    state.update_build(third, request=json.dumps(
        {**json.loads(state.get_build(third)["request"]), **newer}))
    jenkins_fake.fail_next(429, times=4, path_prefix=TRIGGER,
                           headers={"Retry-After": str(RETRY_AFTER)})

    tasks.release_agent(first, state.get_build(first)["agent"])  # queues a re-drive
    run_worker(app)  # the third's pod is made, its trigger fails: a provision scheduled

    queue = state.queue
    [job] = [queue.fetch_job(i) for i in queue.scheduled_job_registry.get_job_ids()]
    assert job.kwargs["build"]["build_key"] == third
    assert job.kwargs["build"]["merge_ref"] == newer["merge_ref"]  # fails without the fix
