"""The reconcile pass's move of RQ's due retries (workers.adapters.rq_retries), on a real
redis-server, beside a worker's scheduler: RQ's scheduler takes the queue's lock
(rq:scheduler-lock:<queue>, rq/scheduler.py acquire_locks) before it moves a due job, so
while one holds it the pass moves nothing (two movers would queue one job twice)."""

import time
from datetime import datetime, timezone

from rq import Queue
from rq.scheduler import RQScheduler

from workers.adapters.redis_state import JOB_RETRY, SERIALIZER
from workers.adapters.rq_retries import queue_due_retries
from workers.concurrency.pool_worker import PoolWorker

TASK = "workers.tasks.release_agent"


def _waiting_retry(redis_conn, due_in: float) -> tuple[Queue, str]:
    """A job waiting in RQ's scheduled registry for its retry, due in `due_in` seconds."""
    queue = Queue("ci-autoscaler", connection=redis_conn, serializer=SERIALIZER)
    job = queue.create_job(TASK, kwargs={"build_key": "k"}, retry=JOB_RETRY)
    job.save()
    queue.scheduled_job_registry.schedule(job, _at(due_in))
    return queue, job.id


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(time.time() + seconds, tz=timezone.utc)


def test_a_due_retry_is_queued_once_and_one_not_due_stays(redis_conn):
    queue, job_id = _waiting_retry(redis_conn, due_in=5)
    assert queue_due_retries(queue, time.time()) == 0
    assert queue.count == 0

    assert queue_due_retries(queue, time.time() + 6) == 1
    assert queue.get_job_ids() == [job_id]
    assert queue.scheduled_job_registry.get_job_ids() == []
    assert queue_due_retries(queue, time.time() + 6) == 0  # not twice
    assert queue.get_job_ids() == [job_id]
    assert not redis_conn.exists(RQScheduler.get_locking_key(queue.name))  # released


def test_while_a_workers_scheduler_holds_the_queue_it_moves_them_not_the_pass(redis_conn):
    queue, job_id = _waiting_retry(redis_conn, due_in=-1)
    scheduler = RQScheduler([queue], connection=redis_conn, serializer=SERIALIZER)
    assert scheduler.acquire_locks() == {queue.name}

    assert queue_due_retries(queue, time.time()) == 0
    assert queue.count == 0 and queue.scheduled_job_registry.get_job_ids() == [job_id]
    # its lock untouched
    assert redis_conn.get(RQScheduler.get_locking_key(queue.name)).decode() == scheduler.name

    scheduler.release_locks()  # the worker gone (KEDA scaled it away)
    assert queue_due_retries(queue, time.time()) == 1
    assert queue.get_job_ids() == [job_id]


def test_a_retry_whose_job_expired_leaves_only_its_entry(redis_conn):
    queue, job_id = _waiting_retry(redis_conn, due_in=-1)
    redis_conn.delete(f"rq:job:{job_id}")
    assert queue_due_retries(queue, time.time()) == 0
    assert queue.count == 0 and queue.scheduled_job_registry.get_job_ids() == []


def test_a_workers_scheduler_held_up_past_a_takeover_moves_nothing(redis_conn):
    """A worker's scheduler held up after its heartbeat (a frozen process, a stalled node, a
    long pass) for longer than another worker waits before it takes the lock over
    (workers.concurrency.scheduler_lock: 10 s unrenewed) went on with its move once it could:
    RQ's scheduler asks whether it holds its locks in its heartbeat only, and moved the due
    retries the new holder moves too, each queued and run twice (rq/scheduler.py work:
    heartbeat, then enqueue_scheduled_jobs). It moves a queue's jobs only while it holds the
    queue's lock."""
    queue, job_id = _waiting_retry(redis_conn, due_in=-1)
    lock = RQScheduler.get_locking_key(queue.name)
    redis_conn.set(lock, "another worker's scheduler", ex=61)
    worker = PoolWorker([queue], connection=redis_conn, serializer=SERIALIZER)
    worker._start_scheduler()  # as RQ's work() does: the lock is another's, no process started
    assert worker.scheduler is not None and worker.scheduler._process is None
    redis_conn.delete(lock)  # that one gone: this worker's scheduler took it, and heartbeats
    assert worker.scheduler.acquire_locks() == {queue.name}

    redis_conn.set(lock, "the scheduler that took over", ex=61)  # while this one was held up
    worker.scheduler.enqueue_scheduled_jobs()
    assert queue.count == 0 and queue.scheduled_job_registry.get_job_ids() == [job_id]

    redis_conn.set(lock, worker.scheduler.name, ex=61)  # its own again: it moves them, once
    worker.scheduler.enqueue_scheduled_jobs()
    worker.scheduler.enqueue_scheduled_jobs()
    assert queue.get_job_ids() == [job_id] and queue.scheduled_job_registry.get_job_ids() == []
