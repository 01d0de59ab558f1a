"""A job that ends while Redis does not answer (a Sentinel failover, a restart) has its end
written once Redis is back (workers.concurrency.job_end), on a real redis-server stopped and
started again with its data (AOF, as the chart runs it).

RQ writes a job's end right after the job: with Redis away then, the worker logged "RQ could
not record a job's end" (a job that returned) or RQ's "failed to persist failure" (one that
raised) and went on, and the job stayed `started`, its result or its retry never written,
until RQ's cleanup took it for abandoned. Seen in the operator's outage tests
(test_no_loss_operator.py, test_spool_outage.py) as builds provisioned again a minute late.
Each point is reached for real: the job waits at a gate, or its thread is held in RQ's own log
line of that point (a logging handler), while the test stops the server."""

import logging
import os
import signal
import threading
import time

import pytest
import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from tests.support import jobs as test_jobs
from tests.support.monitoring import wait_until
from tests.support.redis_server import RedisServer
from workers.adapters.metric_store import counter_values
from workers.concurrency import job_end
from workers.concurrency.pool_worker import PoolWorker
from workers.engine import jobs
from workers.telemetry.metrics import JOBS_FAILED_TOTAL, EngineMetrics

TIMEOUT_SECONDS = 30
# What a job thread says once it met Redis away at its job's end: it waits (job_end), or,
# before, it gave the end up (pool_worker's own line; RQ's for a failure it swallowed).
MET = (job_end.WAITS, "RQ could not record a job's end", "failed to persist failure")
# RQ's first log line in handle_job_failure, before any write of the job's failure (debug).
FAILURE_HANDLED = "handling failed execution of job"
# RQ's first log line in handle_job_retry (a job that returned a Retry), before its writes.
RETRY_HANDLED = "handling retry of job"


@pytest.fixture
def aof_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


class Said(logging.Handler):
    """The messages logged, on any thread; `hold` a thread in the first that holds it until
    `go` is set."""

    def __init__(self, hold: str | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.hold, self.held, self.go = hold, threading.Event(), threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.hold and self.hold in message and not self.held.is_set():
            self.held.set()
            self.go.wait(TIMEOUT_SECONDS)

    def met(self) -> bool:
        return any(said in message for message in list(self.messages) for said in MET)


@pytest.fixture
def said():
    """Listening to the worker's and RQ's loggers (RQ's at debug, put back after)."""
    handlers: list[Said] = []
    loggers = [logging.getLogger(name) for name in ("ci_autoscaler.pool_worker", "rq.worker")]
    levels = [logger.level for logger in loggers]

    def listen(hold: str | None = None) -> Said:
        handler = Said(hold)
        handlers.append(handler)
        for logger in loggers:
            logger.addHandler(handler)
        return handler
    yield listen
    for logger, level in zip(loggers, levels):
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)


def outage(server: RedisServer, before, heard: Said) -> threading.Thread:
    """On a thread: once `before()` says the job is where the test wants it, Redis stops;
    `heard.go` lets the job go on, and Redis starts again once its thread met Redis away."""
    failure: list[BaseException] = []

    def step() -> None:
        try:
            before()
            server.stop()
        except BaseException as err:  # reported by the test's assertions (a job left held)
            failure.append(err)
        finally:
            heard.go.set()
        try:
            wait_until(heard.met, timeout=TIMEOUT_SECONDS,
                       what="the job thread meets Redis away at its job's end")
        finally:
            server.start()
    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    return thread


def test_a_job_that_returns_while_redis_is_away_has_its_end_written_once_redis_is_back(
        aof_redis, said):
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("end-returned", connection=conn)
    gate = test_jobs.new_gate("end-returned")
    job = queue.enqueue("tests.support.jobs.wait_at_gate", gate="end-returned")
    heard = said()
    heard.go = gate.open  # the job returns once Redis is stopped
    thread = outage(aof_redis, lambda: wait_until(lambda: gate.active == 1,
                                                  timeout=TIMEOUT_SECONDS, what="the job runs"),
                    heard)
    worker = PoolWorker([queue], connection=conn, concurrency=1)

    assert worker.work(burst=True)
    thread.join(TIMEOUT_SECONDS)

    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == 1
    assert queue.started_job_registry.count == 0
    assert queue.finished_job_registry.get_job_ids() == [job.id]
    assert job_end.WAITS in heard.messages  # Redis was away at the job's end


@pytest.mark.parametrize("retry, status, retries_left", [
    (Retry(max=2, interval=[600]), JobStatus.SCHEDULED, 1),
    (None, JobStatus.FAILED, None),
], ids=["retried", "failed"])
def test_a_job_that_raised_has_its_failure_written_once_redis_is_back(
        aof_redis, said, retry, status, retries_left):
    """Redis goes away as RQ writes the failure: a retry's first write (its status) raised out
    of RQ's failure handling; a failure's transaction RQ logged and let go. Written again, a
    retry takes one of the job's retries, not two."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("end-raised", connection=conn)
    job = queue.enqueue("tests.support.jobs.always_fails", retry=retry)
    heard = said(hold=FAILURE_HANDLED)
    thread = outage(aof_redis, lambda: heard.held.wait(TIMEOUT_SECONDS), heard)
    worker = PoolWorker([queue], connection=conn, concurrency=1)

    assert worker.work(burst=True, logging_level="DEBUG")
    thread.join(TIMEOUT_SECONDS)

    assert heard.held.is_set()
    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == status
    assert job.retries_left == retries_left
    assert queue.started_job_registry.count == 0
    if status == JobStatus.SCHEDULED:
        assert queue.scheduled_job_registry.get_job_ids() == [job.id]
    else:
        assert queue.failed_job_registry.get_job_ids() == [job.id]
    assert job_end.WAITS in heard.messages  # Redis was away as its failure was written


def test_a_failure_written_again_runs_the_exception_handlers_once(aof_redis, said):
    """Redis goes away after the exception handlers ran, as RQ writes the failure (its
    transaction, which it swallows): written again, the whole of RQ's failure handling ran
    again, its handlers with it, and ci_autoscaler_jobs_failed_total counted one failed job
    twice. A PermanentError's "no retry", set by the handler, holds for the write again."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("end-handled", connection=conn)
    job = queue.enqueue("tests.support.jobs.fails_counted", redis_url=aof_redis.url,
                        key="end-handled:runs", permanent=True, retry=Retry(max=2))
    metrics = EngineMetrics(conn, prefix="end-handled:")
    heard = said(hold=FAILURE_HANDLED)
    thread = outage(aof_redis, lambda: heard.held.wait(TIMEOUT_SECONDS), heard)
    worker = PoolWorker([queue], connection=conn, concurrency=1)
    worker.push_exc_handler(jobs.failure_handler(metrics))

    assert worker.work(burst=True, logging_level="DEBUG")
    thread.join(TIMEOUT_SECONDS)

    assert heard.held.is_set()
    assert job_end.WAITS in heard.messages  # Redis was away as its failure was written
    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == JobStatus.FAILED
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    assert conn.get("end-handled:runs") == b"1"  # not retried
    failed = counter_values(metrics.store.read([JOBS_FAILED_TOTAL.name])[JOBS_FAILED_TOTAL.name])
    assert failed == {("fails_counted",): 1.0}


def test_a_job_that_returned_a_retry_has_it_written_once_redis_is_back_counting_one_retry(
        aof_redis, said):
    """RQ counts the retry on the job (number_of_retries) before its first write (the status):
    written again, the retry was counted twice, and the job was failed a retry early
    ("exceeded maximum retry attempts"), its next pause the one after."""
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("end-retry-returned", connection=conn)
    job = queue.enqueue("tests.support.jobs.returns_retry", most=2, interval=600)
    heard = said(hold=RETRY_HANDLED)
    thread = outage(aof_redis, lambda: heard.held.wait(TIMEOUT_SECONDS), heard)
    worker = PoolWorker([queue], connection=conn, concurrency=1)

    assert worker.work(burst=True, logging_level="DEBUG")
    thread.join(TIMEOUT_SECONDS)

    assert heard.held.is_set()
    job = Job.fetch(job.id, connection=conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.number_of_retries == 1
    assert queue.scheduled_job_registry.get_job_ids() == [job.id]
    assert queue.started_job_registry.count == 0
    assert job_end.WAITS in heard.messages  # Redis was away as its retry was written


def test_a_stopping_worker_gives_up_a_job_end_redis_does_not_answer_for(
        aof_redis, said, monkeypatch):
    """A SIGTERM while a job's end waits for Redis: the wait is given up after
    STOPPING_WAIT_SECONDS (left to RQ's cleanup, as a SIGKILL leaves it) and the worker exits;
    it waited for ever, and a pod was SIGKILLed at the end of its grace period."""
    monkeypatch.setattr(job_end, "STOPPING_WAIT_SECONDS", 1.0, raising=False)
    conn = redis.Redis.from_url(aof_redis.url, socket_timeout=2)
    queue = Queue("end-stopping", connection=conn)
    gate = test_jobs.new_gate("end-stopping")
    job = queue.enqueue("tests.support.jobs.wait_at_gate", gate="end-stopping")
    heard = said()
    returned, restarted = threading.Event(), threading.Event()

    def step() -> None:
        try:
            wait_until(lambda: gate.active == 1, timeout=TIMEOUT_SECONDS, what="the job runs")
            aof_redis.stop()
            gate.open.set()
            wait_until(lambda: job_end.WAITS in heard.messages, timeout=TIMEOUT_SECONDS,
                       what="the job's end waits for Redis")
            os.kill(os.getpid(), signal.SIGTERM)  # to the main thread, RQ's handler: warm
        finally:
            gate.open.set()
            if not returned.wait(TIMEOUT_SECONDS):  # the stop did not end: Redis back, so
                restarted.set()                      # that the test ends (and fails)
            aof_redis.start()
    thread = threading.Thread(target=step, daemon=True)
    before = signal.getsignal(signal.SIGTERM)
    worker = PoolWorker([queue], connection=conn, concurrency=1)
    thread.start()
    try:
        began = time.monotonic()
        worker.work(burst=False)
        took = time.monotonic() - began
        returned.set()
    finally:
        signal.signal(signal.SIGTERM, before)
    thread.join(TIMEOUT_SECONDS)

    assert not restarted.is_set(), "the warm stop waited for Redis to come back"
    assert took < TIMEOUT_SECONDS
    assert any("the worker stops and Redis does not answer" in m for m in heard.messages)
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.STARTED  # RQ's cleanup
