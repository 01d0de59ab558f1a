"""What Redis says of its memory: `INFO memory` (used_memory, maxmemory, maxmemory_policy),
`INFO stats` (evicted_keys, a count since the server started) and `INFO persistence`
(aof_enabled: whether a restart keeps what was written), in one round trip. A Redis that
refuses INFO (an ACL user without it; a managed Redis that renamed the command) raises
redis.ResponseError; one that does not answer, redis-py's ConnectionError or TimeoutError.
Managed services that disable CONFIG (ElastiCache) still answer INFO."""

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class RedisMemory:
    used_bytes: int
    max_bytes: int  # 0: no limit set
    policy: str  # maxmemory-policy: noeviction, allkeys-lru, volatile-lru, ...
    evicted_keys: int
    aof_enabled: bool | None = None  # INFO persistence; None: a server that does not say


def read(connection: redis.Redis) -> RedisMemory:
    # Two sections as two commands: INFO with several sections is Redis 7's only.
    with connection.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.info("stats")
        pipe.info("persistence")
        memory, stats, persistence = pipe.execute(raise_on_error=False)
    for answer in (memory, stats):
        if isinstance(answer, Exception):
            raise answer
    # A Redis-compatible server that refuses this section alone still gives the rest
    aof = None if isinstance(persistence, Exception) else persistence.get("aof_enabled")
    return RedisMemory(used_bytes=_count(memory.get("used_memory")),
                       max_bytes=_count(memory.get("maxmemory")),
                       policy=str(memory.get("maxmemory_policy", "")),
                       evicted_keys=_count(stats.get("evicted_keys")),
                       aof_enabled=None if aof is None else bool(_count(aof)))


def _count(value: object) -> int:
    """A number INFO gives (redis-py has made it an int); 0 for one a Redis-compatible server
    gives as text ("maxmemory:unlimited") or leaves out: it is read for metrics and a warning,
    neither worth failing a scrape or a start for."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
