"""Redis losing its data, told when it happens. A Redis without the append-only file that
restarts, a FLUSHALL, a failover to a replica that had not caught up, or keys evicted at
maxmemory leave a Redis that answers as before with what we wrote gone: answered pushes,
build records, delivery marks. Nothing else says so (redis-py sees a working server). The
reconcile loop keeps a mark in Redis (`<prefix>redis-epoch`, a random token written once,
never expired) and reads it each round: the mark it saw gone, or another's in its place (an
instance that found it gone first wrote its own), means Redis lost what it held. Logged at
error, once per loss; see workers.engine.orphans for what the next pass keeps running."""

import logging
import uuid

import redis

log = logging.getLogger("ci_autoscaler.reconcile")
KEY = "redis-epoch"


class LossWatch:
    def __init__(self, connection: redis.Redis, prefix: str):
        self._redis, self._key = connection, prefix + KEY
        self.seen: bytes | str | None = None  # the mark as last read

    def check(self) -> bool:
        """Whether Redis lost its data since the last check; a Redis that does not answer,
        or refuses the write (full), is left to the next round."""
        try:
            self._redis.set(self._key, uuid.uuid4().hex, nx=True)
            mark = self._redis.get(self._key)
        except redis.RedisError:
            return False
        lost = self.seen is not None and mark != self.seen
        self.seen = mark
        if lost:
            log.error("Redis lost its data: restarted without its append-only file, flushed, "
                      "failed over to a replica that lagged, or its keys evicted; pushes it had "
                      "taken and builds it knew are gone (agent pods whose builds Jenkins "
                      "still runs are kept until those end)", extra={"mark": self._key})
        return lost
