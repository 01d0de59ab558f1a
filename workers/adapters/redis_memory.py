"""What Redis says of its memory: `INFO memory` (used_memory, maxmemory, maxmemory_policy) and
`INFO stats` (evicted_keys, a count since the server started), in one round trip. A Redis that
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


def read(connection: redis.Redis) -> RedisMemory:
    # Two sections as two commands: INFO with several sections is Redis 7's only.
    with connection.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.info("stats")
        memory, stats = pipe.execute()
    return RedisMemory(used_bytes=int(memory.get("used_memory", 0)),
                       max_bytes=int(memory.get("maxmemory", 0)),
                       policy=str(memory.get("maxmemory_policy", "")),
                       evicted_keys=int(stats.get("evicted_keys", 0)))
