"""The intake: push events stored by the webhook, waiting for a worker to make them RQ jobs.

A push is answered after one short script: the delivery is deduped and its event appended to
the intake list, durably, in one round trip. Writing the RQ job and the build state (about
thirty hash fields) is left to the mover in each worker process (workers.engine.intake), which makes
the web's part of a push half what it was (bench/results/ingest.md).

A mover claims records by moving them to a list of its own, and turns each into a job in one
script that also takes the record off that list: a record becomes one job, exactly once. A
mover that dies holding records stops renewing its heartbeat; `recover` puts its records back
at the head of the intake for another mover.

A push that names its commit is also a duplicate while an earlier run of that commit is in
flight (queued in the intake, or its build not yet finished): the commit's run mark holds the
key of its latest run, and the script reads that run's status. Once the run has finished, the
same commit pushed again with another delivery id is a new run and is stored.

Keys (under the prefix):
  ``delivery:<id>``            a delivery already taken (the dedupe window), value = build key
  ``commit:<key>``             the key of a commit's latest run (deleted with that run's state,
                               workers.adapters.expiry; its TTL is a backstop)
  ``intake``                   list: the records waiting (JSON: the delivery and the build,
                               or a Jenkins notification's release or STARTED)
  ``intake:claimed:<mover>``   list: the records a mover took and has not finished
  ``intake:movers``            set: the movers that may hold records
  ``intake:mover:<mover>``     a mover's heartbeat (expires unless renewed)
  ``intake:failed``            list: records no job could be made of (logged; kept to inspect);
                               one a later release reads is put back (Mover.retake_set_aside)
"""

from collections.abc import Iterable
from typing import Any

import redis

from workers.adapters.redis_script import FunctionBatch, FunctionCall, Library
from workers.core.catchup import delivery_id as catch_up_delivery
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
# As _PUSH, and KEYS[3] the commit's run mark; ARGV[4] the run mark's TTL in seconds, ARGV[5]
# the build hashes' key prefix. A delivery seen is answered with the run it made (0), a run
# still in flight with its key (2): its state not written yet (the record is in the intake) or
# its status not one of ENDED (filled in from the statuses the state adapter gives). The run's
# hash is a key the script names itself, not in KEYS (as the enqueue scripts name RQ's keys):
# right on one Redis, with or without Sentinel; Redis Cluster is not supported.
# KEYS[4] the catch-up's delivery mark of this commit (workers.engine.catchup), ARGV[6] when the web
# received this push ('' when unknown): a push received before the catch-up's run of its
# commit was made is the one that run stood in for (its delivery was lost, or spooled and
# drained late), and is a duplicate of it (3) even after that run ended. A push of the same
# commit received later is a new run.
_PUSH_RUN = """
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
local current = redis.call('GET', KEYS[3])
if current then
  local status = redis.call('HGET', ARGV[5] .. current, 'status')
  if not status or not ENDED[status] then return {2, current} end
  if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) == current then
    local made = tonumber(redis.call('HGET', ARGV[5] .. current, 'received_at') or '')
    if made and made >= tonumber(ARGV[6]) then return {3, current} end
  end
end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[4])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {1, ARGV[1]}
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
# KEYS[1] the mover's claimed list, KEYS[2] the commit's run mark (or the list again, for a
# record that names no commit); ARGV[1] the record, ARGV[2] the run it made. The mark goes only
# while it names this run (a later run of the commit has its own).
_DROP = """
if KEYS[2] ~= KEYS[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return redis.call('LREM', KEYS[1], 1, ARGV[1])
"""
# As _DROP, and KEYS[3] the failed list, onto which the record goes; ARGV[3] the build hashes'
# key prefix: a mark whose run has a state is left (a forged record naming a run in flight
# would free its commit for a second run; the state's expiry deletes that mark).
_SET_ASIDE = """
if KEYS[2] ~= KEYS[1] and redis.call('GET', KEYS[2]) == ARGV[2]
    and redis.call('EXISTS', ARGV[3] .. ARGV[2]) == 0 then
  redis.call('DEL', KEYS[2])
end
redis.call('RPUSH', KEYS[3], ARGV[1])
return redis.call('LREM', KEYS[1], 1, ARGV[1])
"""
# KEYS[1] the failed list, KEYS[2] the intake; ARGV the records to put back: each one still on
# the failed list goes to the intake's end, once (two movers taking the same record back
# make one record of it). How many went.
_RETAKE = """
local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
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


class Pushed:
    """What became of a push: stored (`queued`), or a duplicate of the delivery or of the run
    in flight; `build_key` is the run it made or the run it duplicates. (A plain class with
    slots: a frozen dataclass costs a push microseconds, bench/results/ingest.md.)"""

    __slots__ = ("queued", "build_key", "reason")

    def __init__(self, queued: bool, build_key: str, reason: str = ""):
        self.queued, self.build_key, self.reason = queued, build_key, reason

    def __bool__(self) -> bool:
        return self.queued

    def __repr__(self) -> str:
        return f"Pushed({self.queued!r}, {self.build_key!r}, {self.reason!r})"


_DUPLICATE_REASONS = {0: "delivery already taken", 2: "a run of this commit is in flight",
                      3: "the catch-up built this push already"}


class Intake:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:",
                 ended: Iterable[str] = (), wait: tuple[int, int] | None = None):
        """`ended`: the build statuses of a run that is over (redis_state.FINISHED); `wait`:
        (replicas, milliseconds) a push waits for (redis_script: NotReplicated, which `push`
        raises as RetryableError, so the web spools the push as well)."""
        self.redis = connection
        self.prefix = prefix
        self.key = prefix + "intake"
        self.failed_key = prefix + "intake:failed"
        self._movers_key = prefix + "intake:movers"
        ended_table = "local ENDED = {" + ", ".join(f"[{_lua(s)}] = true" for s in sorted(ended)) \
            + "}\n"
        # The web's calls: Redis functions, the only code its Redis user may run.
        self.library = Library("cia_intake", {"push": _PUSH, "push_run": ended_table + _PUSH_RUN})
        self._push = FunctionCall(connection, self.library, "push", wait=wait)
        self._push_run = FunctionCall(connection, self.library, "push_run", wait=wait)
        self._push_batch = FunctionBatch(connection, self.library, wait=wait)
        self._claim = connection.register_script(_CLAIM)
        self._recover = connection.register_script(_RECOVER)
        self._drop = connection.register_script(_DROP)
        self._set_aside = connection.register_script(_SET_ASIDE)
        self._retake = connection.register_script(_RETAKE)

    def claimed_key(self, mover: str) -> str:
        return f"{self.prefix}intake:claimed:{mover}"

    def heartbeat_key(self, mover: str) -> str:
        return f"{self.prefix}intake:mover:{mover}"

    def push(self, *, delivery_id: str, mark: str, record: bytes, ttl_seconds: int,
             commit: str | None = None, run_ttl_seconds: int = 0,
             received_at: float | None = None) -> Pushed:
        """Store the event unless this delivery was seen, or (with `commit`, the key of the
        commit this run `mark` builds) a run of that commit is still in flight, or the
        catch-up built that commit after this push was `received_at`; raises RetryableError
        when Redis cannot be reached, so the sender is told to retry."""
        name, keys, args = self._push_call(
            delivery_id=delivery_id, mark=mark, record=record, ttl_seconds=ttl_seconds,
            commit=commit, run_ttl_seconds=run_ttl_seconds, received_at=received_at)
        try:
            answer = (self._push if name == "push" else self._push_run)(keys, args)
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        return _pushed(name, mark, answer)

    def push_many(self, pushes: Iterable[dict[str, Any]]) -> list[Pushed | RetryableError]:
        """`push` for each (its keyword arguments), in order, all in one round trip: what
        became of each, or the RetryableError of one Redis refused (out of memory, say; those
        after it ran too). Raises RetryableError when Redis cannot be reached or did not
        replicate the batch in time (NotReplicated, its cause): any of them may have been
        taken, and each is a duplicate of its delivery when pushed again."""
        calls = [self._push_call(**push) for push in pushes]
        try:
            answers = self._push_batch(calls)
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        return [_refused(answer) if isinstance(answer, redis.ResponseError)
                else _pushed(name, args[0], answer)
                for (name, _, args), answer in zip(calls, answers)]

    def _push_call(self, *, delivery_id: str, mark: str, record: bytes, ttl_seconds: int,
                   commit: str | None = None, run_ttl_seconds: int = 0,
                   received_at: float | None = None) -> tuple[str, list[str], list[Any]]:
        """(function, keys, args) of one push."""
        delivery_key = self.prefix + "delivery:" + delivery_id
        if commit is None:
            return "push", [delivery_key, self.key], [mark, ttl_seconds, record]
        return "push_run", [
            delivery_key, self.key, self.prefix + "commit:" + commit,
            self.prefix + "delivery:" + catch_up_delivery(commit)], [
            mark, ttl_seconds, record, run_ttl_seconds, self.prefix + "build:",
            "" if received_at is None else repr(received_at)]

    def load_functions(self) -> bool:
        """Load the web's functions into Redis (the worker does, at start): True if it had
        them not."""
        return self.library.load(self.redis)

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

    def held(self, mover: str) -> list[bytes]:
        """The records on the mover's claimed list, oldest first."""
        return list(self.redis.lrange(self.claimed_key(mover), 0, -1))

    def set_aside(self, mover: str, record: bytes, *, commit: str | None = None,
                  run: str = "") -> None:
        """A record no job can be made of: off the claimed list, onto the failed list. With
        `commit` and `run`, as `drop`: the commit's run mark, if it still names that run, goes
        (the run never was: kept, the mark held the commit "in flight" for its TTL, a push of
        it again a duplicate, and the catch-up took it for built)."""
        claimed = self.claimed_key(mover)
        mark = self.prefix + "commit:" + commit if commit else claimed
        self._set_aside(keys=[claimed, mark, self.failed_key],
                        args=[record, run, self.prefix + "build:"])

    def drop(self, mover: str, record: bytes, *, commit: str | None = None,
             run: str = "") -> None:
        """A record that makes no job, and needs none (a push no route takes): off the
        claimed list. With `commit`, the key of the commit whose `run` the record is: the
        commit's run mark, if it still names that run, goes with it (the run never was: kept,
        the mark held the commit "in flight" until its TTL, and the catch-up took it for built)."""
        claimed = self.claimed_key(mover)
        mark = self.prefix + "commit:" + commit if commit else claimed
        self._drop(keys=[claimed, mark], args=[record, run])

    def set_aside_records(self, limit: int, *, start: int = 0) -> list[bytes]:
        """Up to `limit` records of the failed list from position `start`, oldest first."""
        return list(self.redis.lrange(self.failed_key, start, start + limit - 1)) \
            if limit > 0 else []

    def retake(self, records: list[bytes]) -> int:
        """These records, if still on the failed list, put back on the intake; how many."""
        if not records:
            return 0
        return int(self._retake(keys=[self.failed_key, self.key], args=records))

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


def _pushed(function: str, mark: str, answer: Any) -> Pushed:
    """A push function's answer as a Pushed."""
    if function == "push":
        return Pushed(bool(answer), mark, "" if answer else _DUPLICATE_REASONS[0])
    code, key = answer
    key = key.decode() if isinstance(key, bytes) else str(key)
    return Pushed(code == 1, key, _DUPLICATE_REASONS.get(int(code), ""))


def _refused(err: redis.ResponseError) -> RetryableError:
    refused = RetryableError(f"redis unavailable: {type(err).__name__}: {err}")
    refused.__cause__ = err
    return refused


def _lua(text: str) -> str:
    """A Lua string literal of a status name (letters, digits, _ and -)."""
    if not all(c.isalnum() or c in "_-" for c in text):
        raise ValueError(f"not a status name: {text!r}")
    return f"'{text}'"
