"""Retries at the boundaries: a call to Kubernetes or Jenkins that failed with a
``RetryableError`` (429, 5xx, a timeout, a refused or reset connection) is made again after an
exponential backoff with full jitter, or after the wait the server asked for in Retry-After.

Only calls that are safe to repeat go through here: reads, and writes that the adapter makes
idempotent (a create answered 409 is read back; a delete of a missing object is success; a
Jenkins build request with the same parameters is folded into the queued item). A wait longer
than ``max_retry_after`` is not slept through in a worker: the error goes up, and the RQ job
retry policy (``redis_state.JOB_RETRY``) runs the task again later. In a run that is asked to
stop (the reconcile pass on SIGTERM: workers.adapters.run_bound), the wait ends then, and the
call fails with its last error, not retried: a Retry-After of 30 s no longer held a stopping
reconcile pod past its grace period.
"""

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from workers.adapters import run_bound
from workers.core.errors import RetryableError, Unauthorized

log = logging.getLogger("ci_autoscaler.retry")
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    attempts: int = 4  # calls in all, the first included
    base_seconds: float = 0.25  # the first backoff is drawn from [0, base]
    cap_seconds: float = 8.0  # no backoff is drawn from a wider range than [0, cap]
    max_retry_after_seconds: float = 30.0

    def delay(self, retry: int, err: RetryableError, rng: Callable[[], float]) -> float | None:
        """Seconds to wait before retry number `retry` (0 for the first), or None to give up
        now (the server asked for a longer wait than a worker should block)."""
        if err.retry_after is not None:
            return err.retry_after if err.retry_after <= self.max_retry_after_seconds else None
        return rng() * min(self.cap_seconds, self.base_seconds * 2 ** retry)


DEFAULT_BACKOFF = Backoff()


def retrying(what: str, fn: Callable[[], T], *, backoff: Backoff = DEFAULT_BACKOFF,
             sleep: Callable[[float], bool | None] = run_bound.wait,
             rng: Callable[[], float] = random.random) -> T:
    """fn(), again after a backoff while it raises RetryableError, at most `backoff.attempts`
    times in all; the last error goes up. Any other exception, Unauthorized, and a
    RetryableError that is not `in_call` (a full quota), goes up at once; so does the last
    error once the run is asked to stop (`sleep` answers False: run_bound.wait)."""
    for retry in range(backoff.attempts):
        try:
            return fn()
        except Unauthorized:
            # Refused credentials are refused again a second later: only the RQ job's retries
            # (minutes) and the reconcile pass can outlast a token rotation.
            raise
        except RetryableError as err:
            wait = backoff.delay(retry, err, rng)
            if retry == backoff.attempts - 1 or wait is None or not err.in_call \
                    or run_bound.stopping():
                raise
            log.info("retrying", extra={"call": what, "retry": retry + 1,
                                        "wait_seconds": round(wait, 3), "error": str(err)})
            if sleep(wait) is False:  # asked to stop meanwhile: no further call
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header as seconds to wait: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
