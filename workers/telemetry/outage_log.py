"""One log line when something a loop retries every few seconds starts failing, one when it
works again (with how long it failed), nothing in between. The reconcile leader renews its
lease before every agent poll between passes (every 2 s): with Redis away, each renewal's
failure was logged as "agent poll failed", every 2 s for as long as the outage lasted, and
nothing said when Redis was back."""

import logging
import time

import redis


def _why(err: Exception) -> str:
    if isinstance(err, (redis.ConnectionError, redis.TimeoutError)):
        return ": Redis does not answer"
    if isinstance(err, redis.RedisError):
        return ": Redis refuses it"
    return ""


class OutageLog:
    """`failing` logged (with why, when Redis is what failed, and the error's type, never its
    text: it may quote a URL) at the first failure of a run of them; `recovered` at the first
    success after it."""

    def __init__(self, log: logging.Logger, failing: str, recovered: str):
        self._log, self._failing, self._recovered = log, failing, recovered
        self._since: float | None = None

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, err: Exception) -> None:
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning(self._failing + _why(err),
                              extra={"error": type(err).__name__})

    def ok(self) -> None:
        if self._since is not None:
            self._log.warning(self._recovered,
                              extra={"failed_seconds": round(time.monotonic() - self._since)})
            self._since = None
