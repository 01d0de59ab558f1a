"""The worker (workers.concurrency.pool_worker) on a real redis-server that reaches its
maxmemory under noeviction (the chart's policy): Redis is up and answers every write that may
add memory (HSET, LMOVE, ...) with an OOM error. The worker waits for room, as it waits for a
Redis that does not answer, and runs the queued jobs once Redis has room again; it used to
quit (RQ's loop took the OOM for an unhandled exception) or fail to start, so every worker
process exited while Redis was full."""

import logging
import threading

import pytest
from rq import Queue

from tests.support import jobs as test_jobs
from tests.support.monitoring import wait_until
from workers.concurrency.pool_worker import PoolWorker
from workers.telemetry import exposition

WAITS = "Redis is full (maxmemory): the worker waits for room"
TIMEOUT_SECONDS = 30


class Said(logging.Handler):
    """Sets `event` when the worker logs `message`."""

    def __init__(self, message: str):
        super().__init__()
        self.message, self.event = message, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == self.message:
            self.event.set()


@pytest.fixture
def said():
    handler = Said(WAITS)
    logger = logging.getLogger("ci_autoscaler.pool_worker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def redis_full(redis_conn):
    """(fill, make room): maxmemory well under what Redis uses, then no limit again."""
    redis_conn.set("junk", "x" * 200_000)  # so that the limit is well above Redis's bare use

    def fill() -> None:
        redis_conn.config_set("maxmemory-policy", "noeviction")
        redis_conn.config_set("maxmemory", redis_conn.info("memory")["used_memory"] // 2)

    def make_room() -> None:
        redis_conn.config_set("maxmemory", 0)
    yield fill, make_room
    make_room()


def work_through(worker: PoolWorker, step, make_room) -> bool:
    """Run the worker's burst on this (the main) thread, `step` beside it; Redis is given
    room again (`make_room`) when `step` ends, however it ends."""
    failure: list[BaseException] = []

    def stepping() -> None:
        try:
            step()
        except BaseException as err:  # reported on the test's thread below
            failure.append(err)
        finally:
            make_room()
    thread = threading.Thread(target=stepping, daemon=True)
    thread.start()
    try:
        return worker.work(burst=True)
    finally:
        thread.join(TIMEOUT_SECONDS)
        if failure:
            raise failure[0]


def test_a_worker_whose_redis_fills_up_waits_and_then_runs_the_queued_jobs(
        redis_conn, redis_url, redis_full, said):
    queue = Queue("full-running", connection=redis_conn)
    gate = test_jobs.new_gate("full-running")
    queue.enqueue("tests.support.jobs.wait_at_gate", gate="full-running")
    queue.enqueue("tests.support.jobs.mark_done", redis_url=redis_url, key="marks:after")
    fill, make_room = redis_full

    def step() -> None:
        wait_until(lambda: gate.active == 1, timeout=TIMEOUT_SECONDS, what="the first job runs")
        fill()  # while it runs; the second waits in the queue
        gate.open.set()
        assert said.event.wait(TIMEOUT_SECONDS), "the worker said it waits for room"

    worked = work_through(PoolWorker([queue], connection=redis_conn, concurrency=1), step,
                          make_room)

    assert worked
    assert redis_conn.get("marks:after") == b"1"  # run once Redis had room again
    assert queue.count == 0


def test_a_worker_started_on_a_full_redis_waits_and_then_runs_the_queued_jobs(
        redis_conn, redis_url, redis_full, said):
    queue = Queue("full-start", connection=redis_conn)
    queue.enqueue("tests.support.jobs.mark_done", redis_url=redis_url, key="marks:start")
    fill, make_room = redis_full
    fill()

    def step() -> None:
        assert said.event.wait(TIMEOUT_SECONDS), "the worker said it waits for room"

    worked = work_through(PoolWorker([queue], connection=redis_conn, concurrency=2), step,
                          make_room)

    assert worked
    assert redis_conn.get("marks:start") == b"1"


def test_a_stop_asked_for_while_a_starting_worker_waits_for_room_ends_it(
        redis_conn, redis_full, said):
    """What the worker command's signal handler does until RQ's own are in (service.cli)."""
    queue = Queue("full-stop", connection=redis_conn)
    fill, make_room = redis_full
    fill()
    worker = PoolWorker([queue], connection=redis_conn, concurrency=1)

    def step() -> None:
        assert said.event.wait(TIMEOUT_SECONDS), "the worker said it waits for room"
        worker._stop_requested = True

    def stop_only() -> None:  # Redis stays full: the stop alone ends the wait
        pass
    assert work_through(worker, step, stop_only) is False
    make_room()
    assert not redis_conn.exists(worker.key)  # never registered: nothing left behind


def _blocked_in_blmove(redis_conn) -> bool:
    return any(client.get("cmd") == "blmove" for client in redis_conn.client_list())


def _push_and_fill(redis_conn, queue: Queue, job) -> None:
    """The job pushed and Redis filled in one transaction: the worker's BLMOVE, admitted while
    Redis had room, is served after it, and the Execution's writes find Redis full."""
    with redis_conn.pipeline(transaction=True) as pipe:
        pipe.rpush(queue.key, job.id)
        pipe.config_set("maxmemory-policy", "noeviction")
        pipe.config_set("maxmemory", redis_conn.info("memory")["used_memory"] // 2)
        pipe.execute()


def test_a_job_taken_as_redis_fills_runs_once_it_has_room_and_the_worker_goes_on(
        redis_conn, redis_url, redis_full, said):
    """RQ wrote the job's Execution after its LMOVE: refused, the worker quit ("found an
    unhandled exception, quitting") and the job stayed in RQ's intermediate queue, to be
    failed as stuck by a later maintenance."""
    queue = Queue("full-taken", connection=redis_conn)
    job = queue.create_job("tests.support.jobs.mark_done",
                           kwargs={"redis_url": redis_url, "key": "marks:taken"})
    job.save()
    _, make_room = redis_full
    worker = PoolWorker([queue], connection=redis_conn, concurrency=2)

    def step() -> None:
        wait_until(lambda: _blocked_in_blmove(redis_conn), timeout=TIMEOUT_SECONDS,
                   what="the worker waiting for a job")
        _push_and_fill(redis_conn, queue, job)
        assert said.event.wait(TIMEOUT_SECONDS), "the worker said it waits for room"
    thread = threading.Thread(target=lambda: (step(), make_room()), daemon=True)
    thread.start()
    worked = worker.work(burst=False, max_idle_time=2)  # quits once idle, the job done
    thread.join(TIMEOUT_SECONDS)

    assert worked
    assert redis_conn.get("marks:taken") == b"1"
    assert redis_conn.llen(queue.intermediate_queue.key) == 0
    assert queue.failed_job_registry.count == 0


def test_a_stop_while_a_taken_job_waits_for_room_puts_it_back_in_its_queue(
        redis_conn, redis_url, redis_full, said):
    queue = Queue("full-put-back", connection=redis_conn)
    job = queue.create_job("tests.support.jobs.mark_done",
                           kwargs={"redis_url": redis_url, "key": "marks:back"})
    job.save()
    worker = PoolWorker([queue], connection=redis_conn, concurrency=1)

    def step() -> None:
        wait_until(lambda: _blocked_in_blmove(redis_conn), timeout=TIMEOUT_SECONDS,
                   what="the worker waiting for a job")
        _push_and_fill(redis_conn, queue, job)
        assert said.event.wait(TIMEOUT_SECONDS), "the worker said it waits for room"
        worker._stop_requested = True  # a SIGTERM's warm stop (PoolWorker._shutdown)
    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    worked = worker.work(burst=False, max_idle_time=TIMEOUT_SECONDS)
    thread.join(TIMEOUT_SECONDS)

    assert not worked  # Redis still full: the stop alone ended it
    assert redis_conn.lrange(queue.key, 0, -1) == [job.id.encode()]
    assert redis_conn.llen(queue.intermediate_queue.key) == 0
    assert redis_conn.get("marks:back") is None


def test_rqs_maintenance_on_a_full_redis_is_skipped_until_the_next_not_the_end_of_the_worker(
        redis_conn, redis_full, caplog):
    """RQ's maintenance (every 10 minutes, at the top of the work loop) takes its locks with
    SET: refused, the OOM error left the loop and the worker quit. Called as that loop does."""
    queue = Queue("full-maintenance", connection=redis_conn)
    fill, make_room = redis_full
    worker = PoolWorker([queue], connection=redis_conn, concurrency=1)
    fill()
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.pool_worker"):
        worker.run_maintenance_tasks()
        assert not worker.should_run_maintenance_tasks  # the next one in 10 minutes
        worker.last_cleaned_at = None
        worker.run_maintenance_tasks()  # Redis still full: said once
    skipped = [r for r in caplog.records
               if r.getMessage() == "worker maintenance skipped: Redis is full (maxmemory)"]
    assert len(skipped) == 1
    make_room()
    worker.last_cleaned_at = None
    worker.run_maintenance_tasks()
    assert redis_conn.exists(queue.intermediate_queue.key) == 0


def test_a_worker_waiting_for_room_stays_registered_past_its_records_time_to_live(
        redis_conn, redis_full):
    """Its heartbeat's HSET refused, RQ's EXPIREs were never sent: after 8 minutes the record
    of a live worker expired, ci_autoscaler_workers read 0 and CIWorkersDown paged."""
    queue = Queue("full-registered", connection=redis_conn)
    fill, make_room = redis_full
    worker = PoolWorker([queue], connection=redis_conn, concurrency=1)
    worker.register_birth()
    fill()
    redis_conn.expire(worker.key, 3)  # the record's last seconds (EXPIRE passes a full Redis)
    worker.heartbeat()  # as the work loop sends it while it waits for room
    assert redis_conn.ttl(worker.key) > 60
    make_room()
    worker.register_death()


def test_a_worker_waiting_for_room_to_start_a_taken_job_stays_registered(
        redis_conn, redis_url, redis_full, said):
    """The main thread waits for room to write the Execution of a job it took (execute_job):
    no heartbeat was sent meanwhile, so a Redis full for 8 minutes let the record of a live
    worker expire, ci_autoscaler_workers read 0 and CIWorkersDown paged, as before the
    heartbeat's EXPIREs were sent alone."""
    queue = Queue("full-taken-registered", connection=redis_conn)
    job = queue.create_job("tests.support.jobs.mark_done",
                           kwargs={"redis_url": redis_url, "key": "marks:registered"})
    job.save()
    _, make_room = redis_full
    worker = PoolWorker([queue], connection=redis_conn, concurrency=2)
    kept: list[bool] = []

    def step() -> None:
        try:
            wait_until(lambda: _blocked_in_blmove(redis_conn), timeout=TIMEOUT_SECONDS,
                       what="the worker waiting for a job")
            _push_and_fill(redis_conn, queue, job)
            assert said.event.wait(TIMEOUT_SECONDS), "the worker said it waits for room"
            redis_conn.expire(worker.key, 3)  # the record's last seconds
            try:
                wait_until(lambda: redis_conn.ttl(worker.key) > 60, timeout=10,
                           what="the record's time to live renewed")
                kept.append(True)
            except AssertionError:
                kept.append(False)
        finally:
            make_room()
    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    worker.work(burst=False, max_idle_time=2)
    thread.join(TIMEOUT_SECONDS)

    assert kept == [True]
    assert redis_conn.get("marks:registered") == b"1"


def test_a_worker_waiting_for_room_counts_on_metrics_by_the_expire_it_sends(
        redis_conn, redis_full, monkeypatch):
    """/metrics counts a worker while it beats (exposition.WORKER_SILENT_SECONDS); a full
    Redis refuses the HSET of its last_heartbeat, and the EXPIRE it still sends
    (full_redis.keep_registered) is its beat: a Redis full is CIRedisMemoryHigh's page, not
    CIWorkersDown's too."""
    # not 90 s in a test; 5 s, not 1: Redis answers TTL in whole seconds, rounded (480 until
    # 0.5 s after the EXPIRE), so a bound of 1 s left the assertion below half a second
    monkeypatch.setattr(exposition, "WORKER_SILENT_SECONDS", 5.0)
    queue = Queue("full-counted", connection=redis_conn)
    fill, make_room = redis_full
    worker = PoolWorker([queue], connection=redis_conn, concurrency=1)
    worker.register_birth()
    fill()
    try:
        wait_until(lambda: exposition.beating_workers(redis_conn, [worker.key]) == 0,
                   timeout=30, what="its birth's beat older than the bound")
        worker.heartbeat()  # as the work loop sends it while it waits for room
        assert exposition.beating_workers(redis_conn, [worker.key]) == 1
    finally:
        make_room()
        worker.register_death()
