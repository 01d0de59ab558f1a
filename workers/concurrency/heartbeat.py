"""A lease kept for as long as a task runs: renewed on a side thread every third of its time
to live (every 5 s at most, so a dead holder's is seen soon: workers.adapters.lease
free_if_stale), however slow the task's calls are (Jenkins or the API server slow under
faults, a Retry-After, a re-drive waiting for its turn).

Renewals between the task's steps would not do: one slow call (four attempts with backoffs,
each up to the client timeout) outlasts the lease, and a second task (a re-drive, a replay of
the intake) then provisions the same build. A renewal on its own thread keeps the lease
through any one call, and still lets it lapse within its time to live when the process dies
(the thread dies with it). If a renewal finds the lease taken by another, or none succeeds for
`holder_seconds` (Redis away from this worker, or the process frozen), the lease is lost:
`check` raises before the task's next effect, so the two never act on one build at once. That
is less than its time to live for a provision's lease, which the reconcile loop frees once it
went unrenewed for 20 s (workers.adapters.lease free_if_stale): a worker alive but cut off
from Redis that long (a network partition, a failover) or frozen (SIGSTOP, a node starved of
CPU) kept placing and triggering its build until a renewal went through again, beside the
provision started again meanwhile (a second pod under a new agent name, a second trigger).
`check` counts that time itself: a frozen process's heartbeat thread wakes no sooner than the
task's, and a renewal Redis does not answer holds the thread up to its socket time-out.

The task lets its lease go at its end (`let_go`) once Redis answers: with Redis away then (a
failover, a restart) the release raised in the task's `finally`, the task's own end was lost
with it (a provision that made its pod was failed and retried), and the lease stayed for the
rest of its time to live, so a Jenkins COMPLETED's release of the build, and the provision's
own retry, waited "being provisioned" for up to a minute.
"""

import logging
import threading
import time
from types import TracebackType

import redis

from workers.adapters.lease import Lease, holder_seconds, renew_seconds
from workers.concurrency import redis_away
from workers.concurrency.side import block_stop_signals
from workers.core.errors import RetryableError

log = logging.getLogger("ci_autoscaler.heartbeat")
# How often a task's end asks again to let its lease go while Redis does not answer.
LET_GO_PAUSE_SECONDS = 0.2


class Heartbeat:
    """`with Heartbeat(lease) as beat:` renews the held `lease` until the block ends."""

    def __init__(self, lease: Lease, *, what: str = "") -> None:
        self._lease = lease
        self._what = what or lease.key
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._interval = renew_seconds(lease.millis / 1000)  # a third of it, 5 s at most
        self._most = holder_seconds(lease)  # unrenewed longer, it may be another's
        self._renewed = lease.sent_at  # when the last renewal that went through was sent
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"heartbeat {self._what}")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def lost(self) -> bool:
        if not self._lost.is_set() and time.monotonic() - self._renewed >= self._most:
            self._lost.set()
            log.warning("lease lost while its task runs: not renewed in time",
                        extra={"lease": self._what, "seconds": self._most})
        return self._lost.is_set()

    def check(self, step: str) -> None:
        """RetryableError if the lease was lost: another task may hold it now."""
        if self.lost:
            raise RetryableError(f"{self._what}: lease lost before {step}; another task may "
                                 "hold it")

    def _run(self) -> None:
        block_stop_signals()
        while not self._stop.wait(self._interval):
            if self.lost:  # not renewed in time (a beat held up, the process frozen)
                return
            sent = time.monotonic()
            try:
                held = self._lease.renew()
            except Exception as err:  # Redis busy or away: the next beat tries again
                if not self.lost:
                    log.warning("lease renewal failed", extra={
                        "lease": self._what, "error": type(err).__name__})
                    continue
                return
            if not held:
                self._lost.set()
                log.warning("lease lost while its task runs", extra={"lease": self._what})
                return
            if self.lost:  # sent too late: Redis may have let another take it before
                return
            self._renewed = sent  # Redis counts the TTL from when it ran it, after this


def let_go(lease: Lease, *, what: str = "") -> bool:
    """Release `lease` at its task's end, once Redis answers, waiting at most the lease's time
    to live: by then it has lapsed by itself (and a release then is a no-op: it deletes only a
    lease that is still this owner's). The task's work is over, so the lease never goes while
    its task may still act; the task's own end (its result, or its error) is kept. False when
    given up so (a lease taken before this one, of the same time to live, has lapsed too)."""
    until = time.monotonic() + lease.millis / 1000
    told = False
    while True:
        try:
            lease.release()
        except redis.exceptions.RedisError as err:
            if not redis_away.away(err):
                raise
            if time.monotonic() >= until:
                log.warning("lease not released: Redis did not answer within its time to "
                            "live (it has lapsed)", extra={"lease": what or lease.key})
                return False
            if not told:
                log.warning("lease not released: Redis does not answer; released once it does",
                            extra={"lease": what or lease.key, "error": type(err).__name__})
                told = True
            time.sleep(min(LET_GO_PAUSE_SECONDS, max(0.0, until - time.monotonic())))
            continue
        if told:
            log.info("lease released once Redis answered", extra={"lease": what or lease.key})
        return True
