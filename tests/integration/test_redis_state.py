"""enqueue_once on a real redis-server: one script writes the delivery mark, the build state
and a stock RQ job, or nothing."""

import threading
import zlib

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from workers.adapters.redis_state import (
    JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_RETRY, JOB_TIMEOUT_SECONDS, SERIALIZER,
    RedisState)
from workers.core.errors import RetryableError

NEW_BUILD = {"status": "queued", "agent": "build-abc", "job": "build", "project": "p/q"}


@pytest.fixture
def state(redis_conn):
    return RedisState(redis_conn)


def enqueue(state, delivery="d-1", *, func="tests.support.jobs.mark_done", kwargs=None,
            **more):
    return state.enqueue_once(delivery_id=delivery, build_key="bk-1", func=func,
                              kwargs=kwargs or {}, ttl_seconds=60, **more)


def test_a_stock_simple_worker_runs_the_enqueued_job(state, redis_conn, redis_url):
    done = enqueue(state, kwargs={"redis_url": redis_url, "key": "ran"}, new_build=NEW_BUILD)
    assert done.queued
    job = state.queue.get_jobs()[0]
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (
        JOB_TIMEOUT_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_FAILURE_TTL_SECONDS)
    assert job.retries_left == JOB_RETRY.max and job.retry_intervals == JOB_RETRY.intervals
    assert job.description == "mark_done bk-1"
    assert SimpleWorker([Queue(state.queue.name, connection=redis_conn, serializer=SERIALIZER)],
                        connection=redis_conn, serializer=SERIALIZER).work(burst=True)
    assert redis_conn.get("ran") == b"1"
    assert Job.fetch(job.id, connection=redis_conn).get_status() == JobStatus.FINISHED


def test_a_failing_job_is_scheduled_again_by_its_retry_policy(state, redis_conn):
    enqueue(state, func="tests.support.jobs.always_fails")
    job_id = state.queue.job_ids[0]
    SimpleWorker([state.queue], connection=redis_conn, serializer=SERIALIZER).work(burst=True)
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.retries_left == JOB_RETRY.max - 1
    assert job_id in ScheduledJobRegistry(queue=state.queue).get_job_ids()


def test_the_mark_the_build_and_the_job_are_written_together(state, redis_conn):
    assert enqueue(state, new_build=NEW_BUILD).queued
    assert redis_conn.get("cia:delivery:d-1") == b"bk-1"
    assert 0 < redis_conn.ttl("cia:delivery:d-1") <= 60
    assert state.get_build("bk-1")["status"] == "queued"
    assert state.build_for_agent("build-abc") == "bk-1"
    assert state.recent_builds() == ["bk-1"]
    assert state.queue.count == 1


def test_a_duplicate_writes_nothing(state, redis_conn):
    enqueue(state, new_build=NEW_BUILD)
    before = {key: redis_conn.dump(key) for key in redis_conn.keys()}
    again = enqueue(state, new_build=NEW_BUILD | {"status": "changed"}, update={"x": "1"})
    assert not again.queued
    assert {key: redis_conn.dump(key) for key in redis_conn.keys()} == before


def test_a_new_delivery_of_a_known_build_keeps_its_state_and_applies_the_update(state):
    enqueue(state, "d-1", new_build=NEW_BUILD)
    state.update_build("bk-1", status="running")
    assert enqueue(state, "d-2", new_build=NEW_BUILD, update={"result": "SUCCESS"}).queued
    build = state.get_build("bk-1")
    assert build["status"] == "running" and build["result"] == "SUCCESS"
    assert state.queue.count == 2


def test_racing_copies_of_a_delivery_queue_one_job(state, redis_url):
    start = threading.Barrier(8)
    results = []

    def deliver():
        own = RedisState(Redis.from_url(redis_url))
        start.wait()
        results.append(enqueue(own).queued)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert state.queue.count == 1


def test_a_failed_write_leaves_the_delivery_unmarked_so_the_retry_is_queued(state, redis_conn):
    redis_conn.set("cia:build:bk-1", "not a hash")  # HSET on it fails inside the script
    with pytest.raises(RetryableError):
        enqueue(state, update={"status": "done"})
    assert redis_conn.exists("cia:delivery:d-1") == 0
    redis_conn.delete("cia:build:bk-1")
    assert enqueue(state, update={"status": "done"}).queued


def test_redis_down_is_retryable(own_redis):
    state = RedisState(Redis.from_url(own_redis.url))
    own_redis.stop()
    with pytest.raises(RetryableError):
        enqueue(state)





def test_the_job_is_the_one_rq_itself_would_write(state, redis_conn):
    """The job hash is filled in from RQ's recorded enqueue: every field RQ writes for the same
    call, equal but for the id and the timestamps."""
    kwargs = {"build": {"build_key": "bk-1", "parameters": {"A": "1"}}}
    enqueue(state, func="tests.support.jobs.mark_done", kwargs=kwargs)
    ours = redis_conn.hgetall(f"rq:job:{state.queue.job_ids[0]}")
    stock = state.queue.enqueue_call(
        "tests.support.jobs.mark_done", kwargs=kwargs, timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=JOB_RESULT_TTL_SECONDS, failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY,
        description="mark_done bk-1")
    theirs = redis_conn.hgetall(f"rq:job:{stock.id}")
    stamps = {b"created_at", b"enqueued_at", b"data"}  # the data: compressed at another level
    assert {k: v for k, v in ours.items() if k not in stamps} == {
        k: v for k, v in theirs.items() if k not in stamps}
    assert zlib.decompress(ours[b"data"]) == zlib.decompress(theirs[b"data"])
    job = Job.fetch(state.queue.job_ids[0], connection=redis_conn, serializer=SERIALIZER)
    assert job.kwargs == kwargs and job.enqueued_at is not None and job.created_at is not None
    assert state.queue.job_ids[0] != stock.id


def test_the_enqueue_still_works_after_redis_forgot_its_scripts(state, redis_conn):
    """The job's static part lives in the script: a Redis restart (SCRIPT FLUSH here) must not
    lose it; redis-py loads the script again on NOSCRIPT."""
    assert enqueue(state, "d-1").queued
    redis_conn.script_flush()
    assert enqueue(state, "d-2").queued
    assert state.queue.count == 2
    assert all(Job.fetch(i, connection=redis_conn).retries_left == JOB_RETRY.max
               for i in state.queue.job_ids)


def test_a_queue_named_like_the_scripts_placeholders_still_gets_its_job(redis_conn):
    state = RedisState(redis_conn, queue_name="GUARD-MARK-JOB")
    assert enqueue(state, new_build=NEW_BUILD).queued
    assert not enqueue(state, new_build=NEW_BUILD).queued  # the guard is still the guard
    [job] = state.queue.get_jobs()
    assert job.origin == "GUARD-MARK-JOB" and job.description == "mark_done bk-1"


@pytest.mark.parametrize(("before", "status", "after", "went_on"), [
    ("running", "triggered", "running", True),  # STARTED taken while the provision ran
    ("running", "pod_created", "running", True),
    ("triggered", "pod_created", "triggered", True),
    ("queued", "pod_created", "pod_created", True),
    ("waiting", "triggered", "triggered", True),
    ("pod_created", "pod_created", "pod_created", True),
    ("released", "triggered", "released", False),  # its end handled first: the caller undoes
    ("failed", "running", "failed", False),
    (None, "triggered", "triggered", True),
])
def test_a_late_advance_never_moves_the_status_back_and_writes_its_fields(
        state, before, status, after, went_on):
    if before is not None:
        state.update_build("bk-1", status=before)

    assert state.advance_build("bk-1", status=status, node="node-a") is went_on

    build = state.get_build("bk-1")
    assert (build["status"], build["node"]) == (after, "node-a")


@pytest.mark.parametrize(("before", "after"), [
    ("triggered", "running"), ("pod_created", "running"), (None, "running"),
    ("failed", "failed"),  # its STARTED taken late (spooled): not running again
    ("released", "released"),
])
def test_a_started_build_is_running_unless_it_finished(state, before, after):
    if before is not None:
        state.update_build("bk-1", status=before)

    state.mark_running("bk-1", jenkins_build=7)

    build = state.get_build("bk-1")
    assert (build["status"], build["jenkins_build"]) == (after, "7")


@pytest.mark.parametrize(("before", "after"), [
    ("triggered", "running"), ("running", "running"),
    ("released", "released"),  # released by its COMPLETED while a pass read the agent's run
])
def test_a_run_an_adopted_agent_took_makes_the_build_running_unless_it_finished(
        state, before, after):
    """A pass reads the adopted agent's run, then records it (workers.engine.adoption); a
    release job that found the agent idle a moment later may have released the build in
    between. Recorded over it, the released build was running again, its agent deleted."""
    state.update_build("bk-1", status=before)

    state.record_run("bk-1", job="nightly", number=8)

    build = state.get_build("bk-1")
    assert (build["status"], build["job"], build["jenkins_build"]) == (after, "nightly", "8")
    assert state.build_for_notification(job="nightly", number=8, agent=None,
                                        queue_id=None) == "bk-1"
