"""RQ's maintenance run (its locks, the registries' cleaning: SETs every 10 minutes) put off
while Redis meets it with a passing error, said once per outage: Redis full
(workers.concurrency.full_redis: skipped until the next interval) or not answering
(workers.concurrency.redis_away: run at the loop's next turn, once Redis answers). Either
error raised from RQ's loop quit the worker. Another error still raises."""

import logging
from collections.abc import Callable

import redis

log = logging.getLogger("ci_autoscaler.pool_worker")


class Maintenance:
    """`run(maintain)` calls RQ's maintenance; a Redis error `passing` holds for is logged
    (once, as `said`, with `error(err)`) and `skipped()` called, instead of raising."""

    def __init__(self, passing: Callable[[BaseException], bool], said: str,
                 error: Callable[[BaseException], str],
                 skipped: Callable[[], None] = lambda: None) -> None:
        self._passing, self._said, self._error, self._on_skip = passing, said, error, skipped
        self._skipped = False

    def run(self, maintain: Callable[[], None]) -> None:
        try:
            maintain()
        except redis.exceptions.RedisError as err:
            if not self._passing(err):
                raise
            self._on_skip()
            if not self._skipped:
                log.warning(self._said, extra={"error": self._error(err)})
            self._skipped = True
            return
        self._skipped = False
