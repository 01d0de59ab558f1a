"""The intake: push events stored by the webhook, waiting for a worker to make them RQ jobs.

A push is answered after one short script: the delivery is deduped and its event appended to
the intake list, durably, in one round trip. Writing the RQ job and the build state (about
thirty hash fields) is left to the mover in each worker process (workers.intake), which makes
the web's part of a push half what it was (bench/results/ingest.md).

A mover claims records by moving them to a list of its own, and turns each into a job in one
script that also takes the record off that list: a record becomes one job, exactly once. A
mover that dies holding records stops renewing its heartbeat; `recover` puts its records back
at the head of the intake for another mover.

Keys (under the prefix):
  ``intake``                   list: the records waiting (JSON: the delivery and the build)
  ``intake:claimed:<mover>``   list: the records a mover took and has not finished
  ``intake:movers``            set: the movers that may hold records
  ``intake:mover:<mover>``     a mover's heartbeat (expires unless renewed)
  ``intake:failed``            list: records no job could be made of (logged; kept to inspect)
"""

import redis

from workers.adapters.redis_script import ScriptCall
from workers.core.errors import RetryableError

# KEYS[1] the delivery mark, KEYS[2] the intake. ARGV[1] the mark's value, ARGV[2] its TTL in
# seconds, ARGV[3] the record. The mark is written last: if the push fails, the delivery stays
# unmarked and the sender's retry is not taken for a duplicate.
_PUSH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# KEYS[1] the intake, KEYS[2] the mover's claimed list; ARGV[1] how many records at most.
_CLAIM = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local record = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not record then break end
  out[i] = record
end
return out
"""
# KEYS[1] the mover's heartbeat, KEYS[2] its claimed list, KEYS[3] the intake, KEYS[4] the
# movers set; ARGV[1] the mover. Nothing is moved while the heartbeat lives.
_RECOVER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'LEFT') do n = n + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return n
"""


class Intake:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self.key = prefix + "intake"
        self.failed_key = prefix + "intake:failed"
        self._movers_key = prefix + "intake:movers"
        self._push = ScriptCall(connection, _PUSH)
        self._claim = connection.register_script(_CLAIM)
        self._recover = connection.register_script(_RECOVER)

    def claimed_key(self, mover: str) -> str:
        return f"{self.prefix}intake:claimed:{mover}"

    def heartbeat_key(self, mover: str) -> str:
        return f"{self.prefix}intake:mover:{mover}"

    def push(self, *, delivery_id: str, mark: str, record: bytes, ttl_seconds: int) -> bool:
        """Store the event unless this delivery was seen (False); raises RetryableError when
        Redis cannot be reached, so the sender is told to retry."""
        try:
            return bool(self._push([self.prefix + "delivery:" + delivery_id, self.key],
                                   [mark, ttl_seconds, record]))
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def heartbeat(self, mover: str, ttl_seconds: int) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self._movers_key, mover)
            pipe.set(self.heartbeat_key(mover), 1, ex=ttl_seconds)
            pipe.execute()

    def claim(self, mover: str, limit: int, *, block_seconds: float = 0) -> list[bytes]:
        """Up to `limit` records, oldest first, moved to the mover's claimed list; with
        `block_seconds`, wait that long for the first one."""
        claimed = self.claimed_key(mover)
        records: list[bytes] = []
        if block_seconds:
            first = self.redis.blmove(self.key, claimed, block_seconds, "LEFT", "RIGHT")
            if first is None:
                return []
            records.append(first)
            limit -= 1
        return records + list(self._claim(keys=[self.key, claimed], args=[limit]))

    def set_aside(self, mover: str, record: bytes) -> None:
        """A record no job can be made of: off the claimed list, onto the failed list."""
        with self.redis.pipeline() as pipe:
            pipe.rpush(self.failed_key, record)
            pipe.lrem(self.claimed_key(mover), 1, record)
            pipe.execute()

    def recover(self) -> int:
        """Put back the records of every mover whose heartbeat has lapsed; how many."""
        moved = 0
        for raw in self.redis.smembers(self._movers_key):
            mover = raw.decode() if isinstance(raw, bytes) else raw
            n = self._recover(keys=[self.heartbeat_key(mover), self.claimed_key(mover),
                                    self.key, self._movers_key], args=[mover])
            moved += max(0, int(n))
        return moved

    def leave(self, mover: str) -> int:
        """A mover that stops: its heartbeat ends, and what it still holds goes back."""
        self.redis.delete(self.heartbeat_key(mover))
        return max(0, int(self._recover(keys=[
            self.heartbeat_key(mover), self.claimed_key(mover), self.key, self._movers_key],
            args=[mover])))

    def counts(self) -> tuple[int, int]:
        """(waiting, failed) records."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.key)
            pipe.llen(self.failed_key)
            waiting, failed = pipe.execute()
        return int(waiting), int(failed)
