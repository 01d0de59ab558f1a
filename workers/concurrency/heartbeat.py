"""A lease kept for as long as a task runs: renewed on a side thread every third of its time
to live, however slow the task's calls are (Jenkins or the API server slow under faults, a
Retry-After, a re-drive waiting for its turn).

Renewals between the task's steps would not do: one slow call (four attempts with backoffs,
each up to the client timeout) outlasts the lease, and a second task (a re-drive, a replay of
the intake) then provisions the same build. A renewal on its own thread keeps the lease
through any one call, and still lets it lapse within its time to live when the process dies
(the thread dies with it). If a renewal finds the lease taken by another, or none succeeds for
a whole time to live (Redis away), the lease is lost: `check` raises before the task's next
effect, so the two never act on one build at once.
"""

import logging
import threading
import time
from types import TracebackType

from workers.adapters.lease import Lease
from workers.concurrency.side import block_stop_signals
from workers.core.errors import RetryableError

log = logging.getLogger("ci_autoscaler.heartbeat")
BEATS_PER_TTL = 3  # a renewal may fail twice (Redis busy) before the lease can lapse


class Heartbeat:
    """`with Heartbeat(lease) as beat:` renews the held `lease` until the block ends."""

    def __init__(self, lease: Lease, *, what: str = "") -> None:
        self._lease = lease
        self._what = what or lease.key
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._interval = lease.millis / 1000 / BEATS_PER_TTL
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
        return self._lost.is_set()

    def check(self, step: str) -> None:
        """RetryableError if the lease was lost: another task may hold it now."""
        if self.lost:
            raise RetryableError(f"{self._what}: lease lost before {step}; another task may "
                                 "hold it")

    def _run(self) -> None:
        block_stop_signals()
        renewed = time.monotonic()
        ttl = self._lease.millis / 1000
        while not self._stop.wait(self._interval):
            try:
                held = self._lease.renew()
            except Exception as err:  # Redis busy or away: the next beat tries again
                if time.monotonic() - renewed < ttl:
                    log.warning("lease renewal failed", extra={
                        "lease": self._what, "error": type(err).__name__})
                    continue
                held = False  # not renewed for a whole time to live: it may have lapsed
            if not held:
                self._lost.set()
                log.warning("lease lost while its task runs", extra={"lease": self._what})
                return
            renewed = time.monotonic()
