"""A job's end written once Redis answers again (workers.concurrency.pool_worker's job threads).

RQ writes a job's end after its function returned or raised: the job's heartbeat, then one
transaction with its result (or its failure and the retry it schedules) that takes its
Execution out of the started registry. With Redis away then (a Sentinel failover, a restart),
RQ raised out of perform_job ("RQ could not record a job's end"), or, for a failure, logged
the transaction's error and went on: the job stayed `started`, its retry never scheduled. Only
RQ's cleanup of abandoned jobs, once the Execution's time to live had passed, failed it, and a
provision cut so was done again by the reconcile pass's restart of stalled builds a minute and
more later, or retried though it had made its pod. The job thread now waits for Redis, then
writes the end it missed, once: a transaction that went through (its answer lost) or that
RQ's cleanup wrote meanwhile is known by the Execution no longer being in the registry.

A failure written again runs RQ's exception handling (its log line, the exception handlers)
only the first time (`handled_once`): written again after Redis went away past its handlers
(in RQ's transaction of the failure, which it swallows), the handlers ran twice, and
ci_autoscaler_jobs_failed_total counted one failed job twice ("job failed" said twice).
"""

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import redis

from workers.concurrency import redis_away

log = logging.getLogger("ci_autoscaler.pool_worker")
WAITS = "job's end not recorded: Redis does not answer; it is recorded once it does"
# The pauses between looks at Redis while a job's end waits for it: doubled from the first
# to the last (a failover takes seconds; a thread per job waits, each one ZSCORE a look).
FIRST_PAUSE_SECONDS, MOST_PAUSE_SECONDS = 0.2, 2.0
SWALLOWED_MOST = 3
# How long a worker that is stopping (a warm stop, SIGTERM) still waits for Redis to write a
# job's end: it waited for ever, the stop with it, and the pod was SIGKILLed at the end of its
# grace period (120 s) with the end still unwritten. Given up, the end is left to RQ's cleanup
# of abandoned jobs, as a SIGKILL leaves it, and the worker exits. Counted from when the job
# thread sees the stop: the task's own wait to let its lease go (up to the lease's 60 s,
# workers.concurrency.heartbeat.let_go) may come before it.
STOPPING_WAIT_SECONDS = 30.0


class _End:
    """The end of `job` being written on this thread: what a write again restores on the job
    (`kept`), and whether RQ's exception handling ran for it (`handled`)."""

    def __init__(self, job: Any) -> None:
        self.job, self.kept, self.handled = job, _Kept(job), False


_writing: ContextVar[_End | None] = ContextVar("job_end_writing", default=None)


class _GaveUp(Exception):
    """The worker stops, and Redis did not answer within STOPPING_WAIT_SECONDS of it."""


def written(write: Callable[[], Any], job: Any, execution: Any, *, check: bool,
            stopping: Callable[[], bool] = lambda: False) -> None:
    """write() (RQ's end of `job`: its _finalize_success or _finalize_failure) until Redis has
    it. `check`: RQ may swallow the error of this write (its handle_job_failure logs it and
    returns), so whether it went through is asked after it, one ZSCORE; one swallowed
    SWALLOWED_MOST times while Redis answers is not an outage (a full Redis, a refusal):
    left, as before, to RQ's cleanup of abandoned jobs. A warm stop (`stopping()`) waits for
    the write as it waits for the job, for STOPPING_WAIT_SECONDS at most; a cold one ends the
    process and this thread with it."""
    end = _End(job)
    writing = _writing.set(end)
    try:
        _write(write, job, execution, end, check=check, stopping=stopping)
    finally:
        _writing.reset(writing)


def handled_once(job: Any, handle: Callable[[], None]) -> None:
    """handle() (RQ's exception handling of `job`'s failure: its log line, the exception
    handlers) the first time its end is written, not again when that end is written again.
    What the handlers set on the job (no retry for a PermanentError, a Retry-After's longer
    interval: workers.engine.jobs) is what a write again restores. Outside a job's end (RQ's
    other callers), handle() as is."""
    end = _writing.get()
    if end is None or end.job is not job:
        handle()
        return
    if end.handled:
        return
    handle()
    end.kept, end.handled = _Kept(job), True


def _write(write: Callable[[], Any], job: Any, execution: Any, end: _End, *, check: bool,
           stopping: Callable[[], bool]) -> None:
    began, told, swallowed = time.monotonic(), False, 0
    give_up = _GiveUp(stopping)
    while True:
        try:
            write()
            if not check or not _pending(job, execution):
                break
            swallowed += 1
            if swallowed >= SWALLOWED_MOST:
                log.error("job's end not recorded: RQ could not write it (left to its cleanup "
                          "of abandoned jobs)", extra={"job_id": job.id})
                return
        except redis.exceptions.RedisError as err:
            if not redis_away.away(err):
                raise
            if not told:
                log.warning(WAITS, extra={"job_id": job.id,
                                          "error": f"{type(err).__name__}: {err}"})
                told = True
        try:
            if not _until_pending(job, execution, give_up):
                break  # written after all: the transaction's answer was lost, or RQ's cleanup
        except _GaveUp:
            log.error("job's end not recorded: the worker stops and Redis does not answer "
                      "(left to RQ's cleanup of abandoned jobs)", extra={"job_id": job.id})
            return
        end.kept.restore()
    if told:
        log.info("job's end recorded once Redis answered",
                 extra={"job_id": job.id, "waited_seconds": round(time.monotonic() - began, 1)})


def _pending(job: Any, execution: Any) -> bool:
    """Whether the job's end is still to be written: its Execution is in the started
    registry (RQ's end, and its cleanup of an abandoned job, both take it out)."""
    registry = job.started_job_registry
    return registry.connection.zscore(registry.key, execution.composite_key) is not None


def _until_pending(job: Any, execution: Any, give_up: "_GiveUp") -> bool:
    """Wait until Redis answers (a pause first: never a write after a write at once); then
    whether the job's end is still to be written. _GaveUp once `give_up` says so."""
    pause = FIRST_PAUSE_SECONDS
    while True:
        give_up.check()
        time.sleep(pause)
        pause = min(2 * pause, MOST_PAUSE_SECONDS)
        try:
            return _pending(job, execution)
        except redis.exceptions.RedisError as err:
            if not redis_away.away(err):
                raise


class _GiveUp:
    """Raises _GaveUp once the worker has been stopping for STOPPING_WAIT_SECONDS."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self._stopping = stopping
        self._since: float | None = None

    def check(self) -> None:
        if self._since is None:
            if self._stopping():
                self._since = time.monotonic()
            return
        if time.monotonic() - self._since >= STOPPING_WAIT_SECONDS:
            raise _GaveUp()


class _Kept:
    """What RQ's end changes on the job in memory before its write (Job.retry takes one of its
    retries, the exception handlers may set them to none or lengthen an interval; a Retry
    returned is counted in number_of_retries), put back before it is written again: the retry
    taken twice, the job had one retry less each time."""

    def __init__(self, job: Any) -> None:
        self._job = job
        self._retries_left = job.retries_left
        self._intervals = job.retry_intervals and list(job.retry_intervals)
        self._status = job._status
        self._number_of_retries = job.number_of_retries
        self._at_front = job.enqueue_at_front_on_retry

    def restore(self) -> None:
        self._job.retries_left = self._retries_left
        self._job.retry_intervals = self._intervals and list(self._intervals)
        self._job._status = self._status
        self._job.number_of_retries = self._number_of_retries
        self._job.enqueue_at_front_on_retry = self._at_front
