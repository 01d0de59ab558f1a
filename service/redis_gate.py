"""Which of the web's store attempts go to Redis while it does not answer.

A store attempt on a hung Redis (or hung sentinels, or a master that is gone) holds its thread
for CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS before the push is spooled. A web process has a few
threads (gunicorn's `threads` times WEB_CONCURRENCY), and GitLab sends many deliveries at
once (each of its Sidekiq threads one): with every thread waiting its 2 s, the deliveries
behind them queued, and 15 of 48 sent at once to one web process were answered after GitLab's
10 s (REALITY.md), which counts them as failures and disables the hook after four. So once an
attempt has failed, one attempt at a time (the probe) goes to Redis; the others are spooled at
once, and the first probe that succeeds lets every attempt go to Redis again.
"""

import threading


class RedisGate:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing = False  # the last attempt that ended failed
        self._probing = False  # an attempt is at Redis while it is failing

    def enter(self) -> bool | None:
        """None: spool at once (Redis failed, another attempt is trying it); True: this
        attempt is the probe; False: an attempt while Redis answers."""
        with self._lock:
            if not self._failing:
                return False
            if self._probing:
                return None
            self._probing = True
            return True

    def leave(self, probe: bool, ok: bool) -> None:
        """The end of an attempt `enter` let through."""
        with self._lock:
            self._failing = not ok
            if probe:
                self._probing = False
