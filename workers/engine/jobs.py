"""How the RQ worker treats a job whose task raised.

A job is queued with ``redis_state.JOB_RETRY``; RQ runs every exception handler before it
decides whether to retry. This handler:
- stops the retries of a job that failed on a ``PermanentError`` (a 4xx other than 409 and 429,
  a bad template, a pod name taken by someone else's pod): running it again cannot help, and
  the job fails at once with that reason;
- logs, at error and with the hint in its message, a job Jenkins refused our credentials to
  (``Unauthorized``: a token rotated or revoked; or none reached Jenkins, or JENKINS_URL is
  not Jenkins' address): it is retried like any retryable error, and
  its build waits (a build whose retries run out is provisioned again by the reconcile loop's
  restart of stalled builds), but only a person can fix it;
- delays the retry of a job that failed on a ``RetryableError`` carrying the wait the other
  side asked for (Jenkins' or GitLab's 429, or 503, with ``Retry-After``, longer than the
  adapter sleeps through in a worker: workers.adapters.retry) to no sooner than that wait,
  within RQ's last interval (``retry_after_interval``): on RQ's fixed intervals alone (5 s,
  15 s, 30 s...) a job rate-limited for a minute spent three of its five retries on
  requests the proxy was bound to refuse, each one more against the limit;
- writes down, on the build, when a provision job that will be retried runs again
  (``RedisState.note_retry``, with `state`): RQ's later retry intervals (60 s, 120 s) are
  as long as a lease period (60 s by default) or longer, and a job waiting for its retry is
  in RQ's scheduled registry, in no queue, so the reconcile loop took its build for stalled
  and queued a second provision job beside it (harmless, every step being idempotent and
  leased, but a second job per build and lease period, each with its own retries, through a
  whole Jenkins outage);
- counts a job that failed for good in ``ci_autoscaler_jobs_failed_total``: a permanent
  error, or an unexpected one (a bug) with no retry left. A job out of retries on a
  ``RetryableError`` (Jenkins or Kubernetes away longer than its retries last, our token
  refused) is not: its work is not lost, the reconcile loop takes it over (a provision that
  stopped half-way is provisioned again by its restart of stalled builds, a lost release is
  done by its repairs, a waiting build re-driven by its pass), and its build waits, not
  failed. It is logged at warning; each attempt's error is in ``ci_autoscaler_errors_total``;
- refuses, without a retry, a job whose data is not JSON (``redis_state.SERIALIZER``), or that
  names no task of ours (``TaskJob``, the worker's job class): RQ could not read it, or would
  have called whatever it names, so it ran nothing; it is logged and counted under the task
  ``refused``. Such a job was not written by us (a pickled object planted in ``rq:job:*`` is
  the known attack; with JSON, a job naming ``os.system`` ran its command just the same).
A job abandoned by a killed worker comes through here too (``AbandonedJobError``) when RQ
cleans its registries; the reconcile loop does not wait for that (see workers.engine.reconcile).
"""

import logging
import math
import time
from typing import Any

from rq.exceptions import DeserializationError
from rq.job import UNEVALUATED, Job

from workers.adapters.redis_state import RedisState
from workers.concurrency.failure_text import last_error
from workers.core.errors import CIAutoscalerError, PermanentError, RetryableError, Unauthorized
from workers.telemetry.metrics import EngineMetrics
from workers.engine.tasks import PROVISION_TASK

log = logging.getLogger("ci_autoscaler.jobs")

# Every task a job may name: the names the code queues by (the *_TASK constants;
# tests/integration/test_task_signatures.py holds the two equal), which stay across releases.
TASKS = frozenset({
    "workers.failures.fail_start", "workers.job_history.learn.learn_late",
    "workers.tasks.provision_agent", "workers.tasks.redrive_waiting",
    "workers.tasks.release_agent", "workers.warm.tasks.give_way", "workers.warm.tasks.replenish"})


class TaskJob(Job):
    """The worker's RQ job: one that names a task not in TASKS, a method of an instance, or a
    callback (we queue none) cannot be read (DeserializationError, as a job that is not JSON),
    so RQ runs nothing of it. RQ imports and calls whatever dotted name a job's data gives
    (rq.job.Job.func, rq.utils.import_attribute): JSON alone kept out pickle, not a job written
    into rq:job:* that names os.system with its command as the argument (issue 17: write access
    to Redis was code execution in the worker, whose credentials reach Kubernetes and Jenkins).
    """

    def _deserialize_data(self) -> None:
        super()._deserialize_data()
        name = self._func_name
        if name in TASKS and self._instance is None and not (
                self._success_callback_name or self._failure_callback_name
                or self._stopped_callback_name):
            return
        self._func_name = self._instance = self._args = self._kwargs = UNEVALUATED
        raise DeserializationError(f"the job names {str(name)[:200]!r}, not a task of ours, "
                                   "or an instance or callback")

    # RQ imports and calls a job's callbacks by the names in its hash, and its failure callback
    # even for a job refused above (rq.worker Worker._finalize_failure): the refusal called
    # whatever an attacker named. We queue no callbacks, so none is ever read.
    success_callback = failure_callback = stopped_callback = property(lambda self: None)


def failure_handler(metrics: EngineMetrics, state: RedisState | None = None):
    """An RQ exception handler (``Worker.push_exc_handler``) that reports to `metrics` and
    notes a provision job's retry on its build in `state`."""

    def handle(job: Any, exc_type: type, exc_value: BaseException, traceback: Any) -> bool:
        try:
            task = (job.func_name or "").rsplit(".", 1)[-1]
        except DeserializationError:  # not JSON: refused, never run (RQ raised reading it)
            job.retries_left = 0
            metrics.job_failed("refused")
            log.error("job refused: its data is not JSON, or names no task of ours",
                      extra={"job_id": job.id})
            return True
        if isinstance(exc_value, Unauthorized) and job.retries_left:
            # Not only a token: a 403 as anonymous, an address that is not Jenkins' (404,
            # HTML) are Unauthorized too (workers.adapters.jenkins): the error says which
            log.error("job will be retried: Jenkins refuses us until a setting is fixed",
                      extra={"task": task, "job_id": job.id, "retries_left": job.retries_left,
                             "error": str(exc_value)})
        if isinstance(exc_value, PermanentError) and job.retries_left:
            job.retries_left = 0  # RQ reads it right after the handlers: no retry
        if job.retries_left and isinstance(exc_value, RetryableError) \
                and exc_value.retry_after is not None:
            _retry_after(job, exc_value.retry_after)
        if job.retries_left and state is not None and job.func_name == PROVISION_TASK:
            _note_retry(state, job)
        if not job.retries_left and isinstance(exc_value, RetryableError):
            log.warning("job out of retries: the reconcile loop takes its work over",
                        extra={"task": task, "job_id": job.id,
                               "error": f"{exc_type.__name__}: {exc_value}"})
        elif not job.retries_left:
            metrics.job_failed(task)
            # a library's error no adapter translated: its type and status, not the page or
            # headers after them (failure_text)
            log.error("job failed", extra={"task": task, "job_id": job.id, "error": (
                f"{exc_type.__name__}: {exc_value}" if isinstance(exc_value, CIAutoscalerError)
                else last_error((exc_type, exc_value, None)))})
        return True  # let RQ's own handling (and any other handler) go on

    return handle


def retry_after_interval(interval: float, retry_after: float, last: float) -> int:
    """The wait before a job's retry: RQ's `interval` for it, or longer if the other side
    asked for longer (`retry_after`), but never past RQ's `last` interval (a Retry-After of
    an hour is not slept through by a queued job; the reconcile loop takes over a job out of
    retries). Whole seconds, as RQ keeps them."""
    return int(max(interval, min(math.ceil(retry_after), last)))


def _retry_after(job: Any, retry_after: float) -> None:
    """Make RQ's interval for the retry it schedules right after the handlers (Job.retry
    reads Job.get_retry_interval: the interval at len(intervals) - retries_left, rq 3.0) no
    shorter than `retry_after`. Only that try's interval changes: the job's later tries keep
    theirs (one retry past the list's length reuses its first, which is changed then)."""
    intervals = list(job.retry_intervals or [])
    if not intervals:
        return
    index = max(len(intervals) - job.retries_left, 0)
    intervals[index] = retry_after_interval(intervals[index], retry_after, max(intervals))
    job.retry_intervals = intervals


def _note_retry(state: RedisState, job: Any) -> None:
    """When RQ will run this provision job again: its retry interval from now (RQ reads the
    same interval right after the handlers, Job.get_retry_interval). Best effort: with Redis
    away the job's retry is not written either, and the build is restarted as before."""
    build_key = ((job.kwargs or {}).get("build") or {}).get("build_key")
    if not build_key:
        return
    try:
        state.note_retry(build_key, time.time() + job.get_retry_interval())
    except RetryableError as err:
        log.warning("job retry not noted on its build", extra={
            "build_key": build_key, "job_id": job.id, "error": str(err)})
