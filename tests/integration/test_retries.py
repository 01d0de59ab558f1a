"""Retries at the boundaries: Kubernetes and Jenkins calls are made again on 429, 5xx and
connection errors, with backoff and jitter, honouring Retry-After; permanent errors are not
retried; an RQ job that fails on a permanent error fails at once and is counted."""

import time

import pytest
from rq import SimpleWorker

from tests.integration.test_kube_adapter import NS, manifest
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_reconcile_repairs import app, state_of  # noqa: F401 (fixture)
from workers import runtime
from workers.engine import jobs, tasks
from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.kube import KubeCluster
from workers.adapters.retry import Backoff, retry_after_seconds, retrying
from workers.core.errors import PermanentError, RetryableError
from workers.engine.intake import Mover
from workers.adapters.redis_state import JOB_RETRY, RETRY_AT, SERIALIZER


def jenkins(fake, **kwargs) -> JenkinsAdapter:
    return JenkinsAdapter(url=fake.url, user=fake.user, token=fake.token, **kwargs)


def test_jenkins_calls_are_retried_on_5xx_and_succeed(jenkins_fake):
    jenkins_fake.fail_next(500, times=2, path_prefix="/job/")

    queue_item = jenkins(jenkins_fake).trigger_build("app", {"A": "1"})

    assert len(jenkins_fake.requests_to("/job/app/buildWithParameters")) == 3
    assert [b.queue_id for b in jenkins_fake.builds] == [queue_item]


def test_a_429_is_retried_after_the_wait_jenkins_asked_for(jenkins_fake):
    jenkins_fake.fail_next(429, headers={"Retry-After": "1"}, path_prefix="/computer/")
    started = time.monotonic()

    assert jenkins(jenkins_fake).delete_node("gone") is False

    assert time.monotonic() - started >= 1.0
    assert len(jenkins_fake.requests_to("/computer/gone/api/json")) == 2


def test_a_wait_longer_than_a_worker_should_block_goes_to_the_job_retry(jenkins_fake):
    jenkins_fake.fail_next(429, headers={"Retry-After": "3600"}, path_prefix="/job/")

    with pytest.raises(RetryableError) as caught:
        jenkins(jenkins_fake).trigger_build("app", {"A": "1"})
    assert caught.value.retry_after == 3600
    assert len(jenkins_fake.requests_to("/job/app/buildWithParameters")) == 1


def test_permanent_errors_are_not_retried(jenkins_fake):
    jenkins_fake.jobs = {"other"}

    with pytest.raises(PermanentError, match="404"):
        jenkins(jenkins_fake).trigger_build("app", {"A": "1"})
    assert len(jenkins_fake.requests_to("/job/app/buildWithParameters")) == 1


def test_jenkins_errors_give_up_after_the_last_attempt(jenkins_fake):
    jenkins_fake.fail_next(503, times=10)
    adapter = jenkins(jenkins_fake, backoff=Backoff(attempts=3, base_seconds=0.01))

    with pytest.raises(RetryableError, match="503"):
        adapter.agent_secret("agent-1")
    assert len(jenkins_fake.requests) == 3


@pytest.mark.parametrize("status", [500, 429])
def test_kubernetes_calls_are_retried_on_5xx_and_429(kube, status):
    cluster = KubeCluster(api_client=kube.api_client(), namespace=NS)
    kube.fail("get", f"/api/v1/namespaces/{NS}/pods", status=status, reason="Injected", times=2)
    cluster.create_pod(manifest())

    assert [p.name for p in cluster.list_pods()] == [manifest()["metadata"]["name"]]
    lists = [r for r in kube.requests() if r.startswith(f"GET /api/v1/namespaces/{NS}/pods?")]
    assert len(lists) == 3


def test_a_kubernetes_4xx_is_not_retried(kube):
    cluster = KubeCluster(api_client=kube.api_client(), namespace=NS)
    kube.fail("get", f"/api/v1/namespaces/{NS}/pods", status=403, reason="Forbidden")

    with pytest.raises(PermanentError, match="403"):
        cluster.list_pods()
    assert len([r for r in kube.requests() if r.startswith("GET")]) == 1


def test_backoff_is_exponential_with_full_jitter_and_capped():
    waits: list[float] = []
    backoff = Backoff(attempts=6, base_seconds=0.5, cap_seconds=2.0)

    def always_fails():
        raise RetryableError("down")

    with pytest.raises(RetryableError):
        retrying("call", always_fails, backoff=backoff, sleep=waits.append, rng=lambda: 1.0)
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]  # the top of each jitter range
    waits.clear()
    with pytest.raises(RetryableError):
        retrying("call", always_fails, backoff=backoff, sleep=waits.append, rng=lambda: 0.25)
    assert waits == [0.125, 0.25, 0.5, 0.5, 0.5]


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == 10
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_job_failing_on_a_permanent_error_fails_at_once_and_is_counted(app, jenkins_fake):
    jenkins_fake.jobs = {"not-the-routed-job"}  # Jenkins answers 404 for the routed job
    push(app.test_client(), 1)
    state = state_of(app)
    rt = runtime.current()
    Mover(state).drain()
    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER)
    worker.push_exc_handler(jobs.failure_handler(tasks.engine_metrics(rt)))

    worker.work(burst=True, with_scheduler=True)

    assert state.queue.failed_job_registry.count == 1
    assert state.queue.scheduled_job_registry.count == 0  # no retry scheduled
    # The job is read before a trigger (workers.checks.jobs): it does not exist, so no trigger.
    assert len(jenkins_fake.requests_to("/job/build/api/json", "GET")) == 1
    assert jenkins_fake.requests_to("/job/build/buildWithParameters") == []
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'ci_autoscaler_jobs_failed_total{task="provision_agent"} 1.0' in text


def test_a_job_failing_on_a_retryable_error_is_scheduled_again(app, jenkins_fake):
    jenkins_fake.fail_next(503, times=100, path_prefix="/job/")
    push(app.test_client(), 1)
    state = state_of(app)
    Mover(state).drain()
    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER)
    worker.push_exc_handler(jobs.failure_handler(tasks.engine_metrics(runtime.current())))

    worker.work(burst=True)

    assert state.queue.failed_job_registry.count == 0
    (job_id,) = state.queue.scheduled_job_registry.get_job_ids()
    assert state.queue.fetch_job(job_id).retries_left == 4
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'ci_autoscaler_jobs_failed_total{task="provision_agent"} 0.0' in text


@pytest.mark.parametrize("retry_after, due_in", [(45, 45), (3600, JOB_RETRY.intervals[-1]),
                                                 (2, JOB_RETRY.intervals[0])])
def test_a_job_jenkins_asked_to_wait_is_retried_no_sooner_than_retry_after(
        app, jenkins_fake, retry_after, due_in):
    """A rate-limiting proxy in front of Jenkins answers 429 with a Retry-After longer than
    the adapter sleeps through: the job's retry is due after it (within RQ's last interval),
    not on RQ's first interval (5 s), and the build's RETRY_AT says so (fails without the
    fix: due in 5 s for the first two cases). A shorter one keeps RQ's own interval."""
    jenkins_fake.fail_next(429, times=100, path_prefix="/job/",
                           headers={"Retry-After": str(retry_after)})
    key = push(app.test_client(), 1)
    state = state_of(app)
    Mover(state).drain()
    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER)
    worker.push_exc_handler(jobs.failure_handler(tasks.engine_metrics(runtime.current()),
                                                 state))
    before = time.time()

    worker.work(burst=True)

    (job_id,) = state.queue.scheduled_job_registry.get_job_ids()
    due = state.queue.scheduled_job_registry.get_scheduled_time(job_id).timestamp()
    assert int(before) + due_in <= due <= time.time() + due_in + 1  # RQ keeps whole seconds
    assert float(state.get_build(key)[RETRY_AT]) == pytest.approx(due, abs=2)
    job = state.queue.fetch_job(job_id)
    assert job.retries_left == 4
    assert job.retry_intervals[1:] == JOB_RETRY.intervals[1:]  # the later tries keep theirs
