"""The worker (workers.concurrency.pool_worker) on a real redis-server that stops answering
for a while (a Sentinel failover, a restart) and comes back with its data (AOF, as the chart
runs it). RQ's work loop waits out a connection error only in its read for a job; met anywhere
else (its maintenance, a heartbeat while every thread is busy, ...) it quit: under a failover
of the operator's test (test_no_loss_operator, on a loaded machine) the worker process ended,
and the pushes answered during the failover were never built. It waits now, and goes on."""

import logging
import threading

import pytest
import redis
from rq import Queue

from tests.support import jobs as test_jobs
from tests.support.monitoring import wait_until
from tests.support.redis_server import RedisServer
from workers.concurrency import redis_away
from workers.concurrency.pool_worker import PoolWorker

TIMEOUT_SECONDS = 30


@pytest.fixture
def aof_redis(tmp_path):
    """Stopped and started again, it keeps its data: the queued jobs are still there."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


class Beats:
    """The worker's `alive` (the liveness file's touch): called on every heartbeat it tries,
    Redis answering or not: how the test awaits the next ones."""

    def __init__(self) -> None:
        self.lock, self.count = threading.Lock(), 0

    def __call__(self) -> None:
        with self.lock:
            self.count += 1

    def now(self) -> int:
        with self.lock:
            return self.count


def test_a_worker_whose_redis_goes_away_while_its_threads_are_busy_goes_on_when_it_is_back(
        aof_redis):
    """Every thread busy, the main thread sends the worker's heartbeat while it waits for a
    free one (outside RQ's read for a job): with Redis away it raised ConnectionError and RQ's
    loop quit ("found an unhandled exception, quitting"), the second job never run."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("away-busy", connection=conn)
    gate = test_jobs.new_gate("away-busy")
    queue.enqueue("tests.support.jobs.wait_at_gate", gate="away-busy")
    queue.enqueue("tests.support.jobs.mark_done", redis_url=aof_redis.url, key="marks:after")
    beats = Beats()
    worker = PoolWorker([queue], connection=conn, concurrency=1, alive=beats)
    failure: list[BaseException] = []

    def step() -> None:
        try:
            wait_until(lambda: gate.active == 1, timeout=TIMEOUT_SECONDS,
                       what="the first job runs, the one thread busy")
            aof_redis.stop()
            stopped_at = beats.now()
            # two heartbeats tried with Redis away (the first may have begun before it went)
            wait_until(lambda: beats.now() >= stopped_at + 2, timeout=TIMEOUT_SECONDS,
                       what="the worker's heartbeats while Redis is away")
            aof_redis.start()
        except BaseException as err:  # reported on the test's thread below
            failure.append(err)
        finally:
            gate.open.set()
    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    worked = worker.work(burst=False, max_idle_time=3)  # quits once idle, the jobs done
    thread.join(TIMEOUT_SECONDS)
    if failure:
        raise failure[0]

    assert worked
    assert conn.get("marks:after") == b"1"  # the second job, run once Redis was back
    assert queue.count == 0


def burst_once_redis_is_back(worker: PoolWorker, aof_redis) -> bool:
    """`worker.work(burst=True)` with Redis stopped, started again once the worker said it
    waits for it (asserted); what `work` returned."""
    said = threading.Event()

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == redis_away.WAITS:
                said.set()
    handler = Said()
    logging.getLogger("ci_autoscaler.pool_worker").addHandler(handler)

    def step() -> None:
        try:
            said.wait(TIMEOUT_SECONDS)
        finally:
            aof_redis.start()
    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    try:
        worked = worker.work(burst=True)
    finally:
        logging.getLogger("ci_autoscaler.pool_worker").removeHandler(handler)
        thread.join(TIMEOUT_SECONDS)
    assert said.is_set(), "the worker said it waits for Redis"
    return worked


def test_a_worker_started_while_redis_does_not_answer_waits_and_then_runs_the_queued_jobs(
        aof_redis):
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("away-start", connection=conn)
    queue.enqueue("tests.support.jobs.mark_done", redis_url=aof_redis.url, key="marks:start")
    worker = PoolWorker([queue], connection=conn, concurrency=2)
    aof_redis.stop()
    assert burst_once_redis_is_back(worker, aof_redis)
    assert conn.get("marks:start") == b"1"


def test_rqs_maintenance_while_redis_does_not_answer_is_put_off_not_the_end_of_the_worker(
        aof_redis, caplog):
    """What the operator's failover test met: RQ's maintenance (its registries' cleaning, at
    the top of the work loop) as the master went. Called as that loop does."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("away-maintenance", connection=conn)
    worker = PoolWorker([queue], connection=conn, concurrency=1)
    aof_redis.stop()
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.pool_worker"):
        worker.run_maintenance_tasks()
        worker.run_maintenance_tasks()  # still away: said once
    put_off = [r for r in caplog.records
               if r.getMessage() == "worker maintenance put off: Redis does not answer"]
    assert len(put_off) == 1
    assert worker.should_run_maintenance_tasks  # due still: the loop's next turn runs it
    aof_redis.start()
    worker.run_maintenance_tasks()
    assert not worker.should_run_maintenance_tasks


def test_a_worker_whose_redis_goes_away_as_it_starts_waits_and_then_runs_the_queued_jobs(
        aof_redis):
    """Registered, then Redis away before RQ's loop began: RQ's start (its command channel,
    its state), before the loop and outside it, raised ConnectionError out of `work`, and the
    worker process ended (the operator's failover test, its worker started late on a loaded
    machine, as the master was SIGKILLed)."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("away-starting", connection=conn)
    queue.enqueue("tests.support.jobs.mark_done", redis_url=aof_redis.url, key="marks:begun")
    worker = PoolWorker([queue], connection=conn, concurrency=2)
    worker.register_birth()  # as PoolWorker.work does first
    aof_redis.stop()
    assert burst_once_redis_is_back(worker, aof_redis)
    assert conn.get("marks:begun") == b"1"


def test_a_scheduler_whose_redis_does_not_answer_at_the_workers_start_is_left_for_later(
        aof_redis, caplog):
    """RQ takes the scheduler's lock as its work loop starts (`_start_scheduler`), outside the
    loop: a Redis away then ended the worker. Called as RQ's `work` calls it. The scheduler is
    left made and not started: the loop's heartbeats start it once Redis answers
    (PoolWorker._keep_scheduler; its process is forked in test_worker_scheduler, from a
    process of its own: a fork of this multi-threaded one may hang)."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    worker = PoolWorker([Queue("away-scheduler", connection=conn)], connection=conn,
                        concurrency=1)
    aof_redis.stop()
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.pool_worker"):
        worker._start_scheduler(False)
    assert [r.getMessage() for r in caplog.records] == [
        "scheduler not started: Redis does not answer (started once it does)"]
    assert worker.scheduler is not None and worker.scheduler._process is None
    aof_redis.start()
    worker.scheduler.acquire_locks()  # what _keep_scheduler asks for, with auto_start
    assert worker.scheduler.acquired_locks
    worker.scheduler.release_locks()
