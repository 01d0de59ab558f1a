"""Whether this web process could read Redis at its last /metrics scrape, logged when that
changes (workers.telemetry.exposition). CIRedisUnavailable's runbook sends the operator to the web log
for the reason, and a web that got no push meanwhile logged none; a scrape every 30 s must not
log it at every scrape either."""

import logging

log = logging.getLogger("ci_autoscaler.metrics")


class RedisReads:
    failing: str | None = None  # the Redis error type of this process's last scrape, if any

    @classmethod
    def note(cls, err: Exception | None) -> None:
        """After a scrape: the Redis error that cut it short, or None when Redis was read.
        The error's type only: a Redis URL's password never shows."""
        failing = None if err is None else type(err).__name__
        if failing == cls.failing:
            return
        if failing is not None:
            log.warning("redis cannot be read: /metrics leaves out what it reads there "
                        "(ci_autoscaler_redis_up 0)", extra={"error": failing})
        else:
            log.info("redis read again: /metrics is whole again")
        cls.failing = failing
