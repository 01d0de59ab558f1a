"""A build a re-drive placed whose Jenkins trigger failed retryably is triggered again soon.

A re-drive (workers.engine.redrive) takes a build out of the waiting set once its pod is made; its
trigger, made beside the create, may still fail after the adapter's own retries (Jenkins
answering 429 from a rate-limiting proxy, or 503 "Jenkins is getting ready to work" while it
starts, or timing out: workers.adapters.retry gives up after four calls, or at once on a
Retry-After longer than it blocks a worker). A provision job would be retried by RQ; a
re-drive's build was only logged "re-drive deferred", no longer waiting, and nothing tried it
again until the reconcile loop's restart of stalled builds (workers.engine.repairs.restart_stalled),
a lease period later or ten while jobs are queued: its agent pod idled meanwhile.

Such a build gets a provision job of its own, due after the wait Jenkins asked for
(Retry-After), or RQ's first retry interval without one, never later than its last: it finds
the pod made, looks for the build by its agent parameter (a trigger whose answer was lost may
have queued it: tasks._trigger_once) and triggers it only if there is none. Failing again, it
is retried by RQ (redis_state.JOB_RETRY: a bounded backoff). The build's record says when it
runs (RETRY_AT), so the restart of stalled builds does not queue a second job before then.
"""

import logging
import time
from datetime import timedelta

from workers import runtime
from workers.engine import tasks
from workers.adapters.redis_state import (
    FINISHED, JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_RETRY, JOB_TIMEOUT_SECONDS)
from workers.core.errors import RetryableError
from workers.core.models import BuildRequest

log = logging.getLogger("ci_autoscaler.trigger_retry")


def delay_seconds(err: RetryableError) -> float:
    """Jenkins' Retry-After, within RQ's retry intervals; the first of them without one."""
    intervals = JOB_RETRY.intervals
    if err.retry_after is None:
        return float(intervals[0])
    return min(max(0.0, err.retry_after), float(intervals[-1]))


def after_redrive(rt: runtime.Runtime, request: BuildRequest, err: RetryableError) -> bool:
    """A re-drive's provision of `request` failed on `err`: unless the build still waits (the
    next re-drive tries it: it failed before its pod was made), or has its queue item or has
    ended (another task held its lease: a concurrent re-drive, the reconcile pass's or a
    release's, which triggered or released it while this one's chunk ran), queue its
    provision after the delay. Whether one was queued."""
    key = request.build_key
    # One member's score, not the whole set: it runs for every build of a pass whose provision
    # failed retryably, and reading the set each time made a pass of W such builds read W x W.
    if rt.capacity.still_waiting([key]):
        return False
    status, queue_item = rt.state.build_fields([key], "status", "queue_item")[0]
    if queue_item or status is None or status in FINISHED:
        return False
    delay = delay_seconds(err)
    rt.state.queue.enqueue_in(
        timedelta(seconds=delay), tasks.PROVISION_TASK, kwargs={"build": request.to_dict()},
        job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=JOB_RESULT_TTL_SECONDS,
        failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY,
        description=f"provision_agent {key}")
    rt.state.note_retry(key, time.time() + delay)
    log.warning("placed build's trigger failed: provisioned again shortly", extra={
        "build_key": key, "agent": request.agent_name, "delay_seconds": delay,
        "error": str(err)})
    return True
