"""RQ's retries of a provision job and the reconcile loop's restart of stalled builds, through
the real path (a GitLab push to the webhook, the worker's mover, an RQ SimpleWorker with the
production failure handler, the reconcile pass, kmock over HTTP and the Jenkins fake): while a
job waits for its retry (Jenkins refusing our token, 401), the build is not provisioned a
second time; two jobs of one build, whichever way they came, make one Jenkins node, one pod
and one Jenkins build; and a job that gives up on a retryable error is not counted as failed
for good, since its build waits for the reconcile loop, not failed."""

import json
import time

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    LEASE_SECONDS, OURS, app, metrics, pod_creates, run_worker)
from tests.integration.test_jenkins_token_refused import run_retries, state_of
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.engine import reconcile, tasks
from workers.adapters.redis_state import JOB_RETRY
from workers.core.models import BuildRequest

BAD_TOKEN = "11" + "9a" * 16


def provision_jobs(app) -> list:
    """The provision jobs RQ holds: queued, or scheduled for a retry."""
    queue = state_of(app).queue
    ids = queue.get_job_ids() + queue.scheduled_job_registry.get_job_ids()
    return [job for job in map(queue.fetch_job, ids)
            if job is not None and job.func_name == tasks.PROVISION_TASK]


def assert_built_once(app, kube, jenkins_fake, key) -> None:
    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert len(jenkins_fake.requests_to("/computer/doCreateItem", "POST")) == 1
    assert list(jenkins_fake.nodes) == [state_of(app).get_build(key)["agent"]]
    assert len(pod_creates(kube)) == 1 and len(kube.pods(NAMESPACE)) == 1
    assert state_of(app).get_build(key)["status"] == "triggered"


def test_a_build_whose_job_waits_for_its_retry_is_not_provisioned_again(
        app, kube, jenkins_fake):
    """RQ's later retry intervals (60 s, 120 s) are as long as a lease period (60 s by
    default) or longer: a build whose job waits for one is quiet for as long as the restart
    of stalled builds waits, or longer, and the scheduled retry is in no queue
    (`queue.count` sees none)."""
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, BAD_TOKEN
    key = push(app.test_client(), 1)
    run_worker(app)
    for _ in range(3):  # the retries after 5, 15 and 30 s: the next one after 60 s
        run_retries(app)
    [job] = provision_jobs(app)
    assert job.retries_left == 1 and JOB_RETRY.intervals[-2] > LEASE_SECONDS

    # a pass a little later, before that retry is due, but more than a lease period after
    # anything touched the build
    result, _error = reconcile.reconcile_pass(runtime.current(),
                                              now=time.time() + 2 * LEASE_SECONDS)

    assert result["stalled_builds_restarted"] == 0
    assert len(provision_jobs(app)) == 1
    jenkins_fake.token = token
    run_retries(app)
    assert_built_once(app, kube, jenkins_fake, key)


def test_a_build_still_stalled_after_its_retry_was_due_is_provisioned_again(
        app, kube, jenkins_fake):
    """The retry is due and nothing ran it (its worker gone, a Redis that lost it): the
    build is provisioned again a lease period later, as before."""
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, BAD_TOKEN
    key = push(app.test_client(), 1)
    run_worker(app)
    [job] = provision_jobs(app)
    state_of(app).queue.scheduled_job_registry.remove(job)  # lost
    job.delete()

    result, _error = reconcile.reconcile_pass(
        runtime.current(), now=time.time() + JOB_RETRY.intervals[0] + 2 * LEASE_SECONDS)

    assert result["stalled_builds_restarted"] == 1
    jenkins_fake.token = token
    run_worker(app)
    assert_built_once(app, kube, jenkins_fake, key)


def test_two_provision_jobs_of_one_build_make_one_node_one_pod_and_one_jenkins_build(
        app, kube, jenkins_fake):
    """However a second job came (a restart while the first still had a retry left, a
    duplicate enqueue), the guards keep its effects single: the provision lease (one at a
    time), the pod marks and the pod read back (a made pod is not made again; a create
    answered 409 is read back), the queue item kept in the build's state (no second trigger),
    the node create answered "already exists" and reused (ours)."""
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, BAD_TOKEN
    key = push(app.test_client(), 1)
    run_worker(app)
    request = BuildRequest.from_dict(json.loads(state_of(app).get_build(key)["request"]))
    tasks.queue_provision(runtime.current(), request)
    assert len(provision_jobs(app)) == 2

    jenkins_fake.token = token
    run_retries(app)  # both: the retry and the second job
    run_retries(app)

    assert provision_jobs(app) == []
    assert_built_once(app, kube, jenkins_fake, key)


def test_a_job_that_gives_up_on_a_retryable_error_is_not_counted_as_failed_for_good(
        app, kube, jenkins_fake):
    """Its build waits (the reconcile loop provisions it again): `jobs_failed_total` is what
    an operator alerts on, and says "failed for good"."""
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, BAD_TOKEN
    key = push(app.test_client(), 1)
    run_worker(app)
    for _ in range(JOB_RETRY.max):
        run_retries(app)

    assert provision_jobs(app) == []
    assert state_of(app).queue.failed_job_registry.count == 1  # RQ's: out of retries
    assert state_of(app).get_build(key)["status"] == "queued"
    assert 'ci_autoscaler_jobs_failed_total{task="provision_agent"} 0.0' in metrics(app)
    jenkins_fake.token = token
    # a lease period after its last retry ran (the test's retries ran early, at once)
    result, _error = reconcile.reconcile_pass(
        runtime.current(), now=time.time() + JOB_RETRY.intervals[-1] + 2 * LEASE_SECONDS)
    assert result["stalled_builds_restarted"] == 1
    run_worker(app)
    assert_built_once(app, kube, jenkins_fake, key)


def test_a_due_retry_with_no_worker_left_is_queued_by_the_reconcile_pass(
        app, kube, jenkins_fake):
    """With KEDA's scale to zero the workers can all be gone while a job waits for its retry
    in RQ's scheduled registry: only a worker's scheduler moved it back, and KEDA's Redis
    trigger counts the queue's list (LLEN rq:queue:<name>, KEDA docs, "Redis Lists"), never
    that sorted set, so no worker came back for it. The pass moves it to the queue when due,
    not before."""
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, BAD_TOKEN
    key = push(app.test_client(), 1)
    run_worker(app)  # the job fails on the refused token: its retry is scheduled, no worker left
    queue = state_of(app).queue
    [job] = provision_jobs(app)
    assert queue.count == 0 and queue.scheduled_job_registry.get_job_ids() == [job.id]

    rt = runtime.current()
    reconcile.reconcile_pass(rt, now=time.time())
    assert queue.count == 0  # not due yet

    result, _error = reconcile.reconcile_pass(rt, now=time.time() + JOB_RETRY.intervals[0] + 1)

    assert queue.get_job_ids() == [job.id]  # what KEDA counts: a worker is started for it
    assert queue.scheduled_job_registry.get_job_ids() == []
    assert result["retries_queued"] == 1 and result["stalled_builds_restarted"] == 0
    jenkins_fake.token = token
    run_worker(app)
    assert_built_once(app, kube, jenkins_fake, key)
