"""The live agents counted by template, phase and image pull, kept in Redis so that a /metrics
scrape costs a few commands whatever the number of builds (pull_reads.live_agents, the
reference kept beside it, reads every live build's record: 10,000 HMGETs a scrape).

Keys (under the prefix):
  ``agent-counts``   hash: "phase|pulling|template" -> how many live builds, as the last
                     recount found them; ``_gen`` the recount's number. Expires unless a
                     pass recounts (COUNTS_TTL_SECONDS): a scrape then reads every record
  ``agent-counted``  hash: build key -> the field it was counted under by that recount
  ``agents-dirty``   set: builds whose status, template, agent or pull error was written
                     since (RedisState._write_build adds them in the write's own MULTI)

A scrape reads the counts and the dirty builds, then only the dirty builds' records and what
each was counted as, and moves each from the one to the other (`read`): commands in the
number of states and of builds changed since the recount, not of builds. The reconcile pass
recounts every build (`recount`): it reads every record in chunks, as a scrape did before
(Redis serves others in between), writes the new counts beside the live ones, then one
script reads again the builds written meanwhile, puts the new counts in place and empties the
dirty set, its work the dirty builds', not every build's (a script reading all 10,000 held
Redis for 110-180 ms). Whatever the counts may have drifted by (a write from a version that
marked nothing, a failover that lost a write) is corrected there. Plain reads for the
scrape (MULTI, HGETALL, SMEMBERS, HMGET, HGET): the web's Redis user may run no script (the
chart's ci-autoscaler.redisWebAcl).
"""

import uuid
from collections import Counter
from collections.abc import Iterable

import redis

from workers.adapters.pull_reads import FIELDS, LiveAgent, agent_of
from workers.adapters.redis_state import AGENT_PHASE_OF, AGENTS_DIRTY, RedisState

COUNTS = "agent-counts"
COUNTED = "agent-counted"
_GEN = "_gen"
# a recount between a scrape's two reads: read again, at most this often, then every record
READ_ATTEMPTS = 3

# KEYS: agents-dirty, agent-counts, agent-counted, then the new counts and counted the
# recount wrote beside them. ARGV[1] the build hashes' prefix, ARGV[2] the counts' TTL in
# seconds (COUNTS_TTL_SECONDS), ARGV[3..7] pull_reads.FIELDS (the record's fields, in its
# order), then status/phase pairs (AGENT_PHASE_OF). The builds written since the recount
# began (dirty) are read again and moved in the new counts as the scrape moves them, by the
# same rule as pull_reads.agent_of: a build counts under its status's phase, template
# ("unknown" if none) and whether its own pod's image pull is retried (an error, phase
# pending, the error's agent its agent). Then the new keys take the old ones' place (the
# counted builds' TTL, for a recount that died, removed; the counts' set to ARGV[2], for the
# passes that stop recounting).
_INSTALL = """
local phases = {}
for i = 8, #ARGV, 2 do phases[ARGV[i]] = ARGV[i + 1] end
local moved = 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = redis.call('HMGET', ARGV[1] .. key, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  local phase = r[2] and phases[r[2]]
  local now = false
  if phase then
    local pulling = (r[3] and r[3] ~= '' and phase == 'pending' and r[4] == r[5]) and '1' or '0'
    now = phase .. '|' .. pulling .. '|' .. (r[1] or 'unknown')
  end
  local was = redis.call('HGET', KEYS[5], key)
  if was ~= now then
    moved = moved + 1
    if was then redis.call('HINCRBY', KEYS[4], was, -1) end
    if now then
      redis.call('HINCRBY', KEYS[4], now, 1)
      redis.call('HSET', KEYS[5], key, now)
    else
      redis.call('HDEL', KEYS[5], key)
    end
  end
end
local gen = tonumber(redis.call('HGET', KEYS[2], '_gen') or '0') + 1
redis.call('HSET', KEYS[4], '_gen', gen)
redis.call('DEL', KEYS[1])
redis.call('UNLINK', KEYS[2], KEYS[3])
redis.call('RENAME', KEYS[4], KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('RENAME', KEYS[5], KEYS[3])
  redis.call('PERSIST', KEYS[3])
end
return moved
"""
# What a recount writes beside the live keys lives this long if it dies before installing it
NEW_TTL_SECONDS = 600
READ_CHUNK = 1000  # records read, and fields written, per round trip
# The counts expire unless a pass recounts (two of the longest passes, workers.engine.reconcile's
# PASS_MOST_SECONDS): a reconcile that stopped recounting (down; rolled back to, or in a
# rolling upgrade led again by, a version without counts, whose writes mark nothing) left
# counts read for good, its releases never taken off. Gone, a scrape reads every record.
COUNTS_TTL_SECONDS = 1200

Key = tuple[str, str, bool]  # template, phase, image pull retried


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _field(agent: LiveAgent) -> str:
    return f"{agent.phase}|{int(agent.pull_retrying)}|{agent.template}"


def _key(field: bytes | str) -> Key:
    phase, pulling, template = _s(field).split("|", 2)
    return template, phase, pulling == "1"


def tally(agents: Iterable[LiveAgent]) -> Counter[Key]:
    """Live agents counted as `read` counts them (the reference's answer, in its shape)."""
    return Counter((a.template, a.phase, a.pull_retrying) for a in agents)


def read_all(state: RedisState) -> dict[str, str]:
    """Every live build's field (build key -> "phase|pulling|template"), read in round trips
    of READ_CHUNK records: Redis serves other clients between them."""
    keys = sorted(_s(k) for k in state.redis.smembers(state.prefix + "live-agents"))
    counted = {}
    for at in range(0, len(keys), READ_CHUNK):
        chunk = keys[at:at + READ_CHUNK]
        with state.redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hmget(state.prefix + "build:" + key, *FIELDS)
            rows = pipe.execute()
        for key, row in zip(chunk, rows):
            if (agent := agent_of(row)) is not None:
                counted[key] = _field(agent)
    return counted


def install(state: RedisState, counted: dict[str, str], *,
            ttl_seconds: int = COUNTS_TTL_SECONDS) -> int:
    """Make `counted` (read_all's) the counts, with the builds written since it was read
    (the dirty set, which it empties) read again: written beside the live keys in round trips
    of READ_CHUNK fields, then put in their place in one script whose work is the dirty
    builds', not every build's. How many builds that script moved."""
    new = f"{state.prefix}{COUNTS}:new:{uuid.uuid4().hex[:12]}"
    new_counts, new_counted = new, new + ":counted"
    items = list(counted.items())
    with state.redis.pipeline(transaction=False) as pipe:
        pipe.hset(new_counts, mapping={_GEN: 0, **Counter(counted.values())})
        pipe.expire(new_counts, NEW_TTL_SECONDS)
        for at in range(0, len(items), READ_CHUNK):
            pipe.hset(new_counted, mapping=dict(items[at:at + READ_CHUNK]))
        if items:
            pipe.expire(new_counted, NEW_TTL_SECONDS)
        pipe.execute()
    args = [state.prefix + "build:", str(ttl_seconds), *FIELDS]
    for status, phase in AGENT_PHASE_OF.items():
        args += [str(status), phase]
    keys = [state.prefix + k for k in (AGENTS_DIRTY, COUNTS, COUNTED)] + [new_counts,
                                                                          new_counted]
    return int(state.redis.eval(_INSTALL, len(keys), *keys, *args))


def recount(state: RedisState, *, ttl_seconds: int = COUNTS_TTL_SECONDS) -> int:
    """Count every live build afresh and start a new generation (the reconcile pass's; the
    web may run no script): every record read as a scrape read them before, in chunks, then
    the counts put in place with what was written meanwhile. How many live builds."""
    if not state.redis.exists(state.prefix + COUNTS):
        # No scrape reads the dirty set yet: what was written before the read is read then,
        # and the script reads again only what is written from now on (not every build
        # written since the install, the first recount's every build)
        state.redis.delete(state.prefix + AGENTS_DIRTY)
    counted = read_all(state)
    install(state, counted, ttl_seconds=ttl_seconds)
    return int(state.redis.hlen(state.prefix + COUNTED))


def read(state: RedisState) -> Counter[Key] | None:
    """The live agents by (template, phase, pulling): the last recount's counts, with the
    builds written since counted as they are now; None before any recount (or when recounts
    kept coming between the two reads, or Redis is full): the caller reads every record then.
    A Redis at maxmemory under noeviction refuses every command queued in MULTI, reads too
    (server.c processCommand): the plain reads of every record it still answers."""
    try:
        return _read(state)
    except redis.exceptions.OutOfMemoryError:
        return None


def _read(state: RedisState) -> Counter[Key] | None:
    counts_key, counted_key = state.prefix + COUNTS, state.prefix + COUNTED
    for _ in range(READ_ATTEMPTS):
        with state.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(counts_key)
            pipe.smembers(state.prefix + AGENTS_DIRTY)
            raw, dirty = pipe.execute()
        if not raw:
            return None
        raw = {_s(k): v for k, v in raw.items()}
        generation = raw.pop(_GEN, None)
        totals: Counter[Key] = Counter({_key(f): int(v) for f, v in raw.items()})
        keys = sorted(_s(k) for k in dirty)
        if not keys:
            return totals
        with state.redis.pipeline(transaction=True) as pipe:
            pipe.hget(counts_key, _GEN)
            pipe.hmget(counted_key, keys)
            for key in keys:
                pipe.hmget(state.prefix + "build:" + key, *FIELDS)
            again, before, *rows = pipe.execute()
        if again != generation:  # a recount ran between the two: its counts hold these
            continue
        for was, row in zip(before, rows):
            if was is not None:
                totals[_key(was)] -= 1
            now = agent_of(row)
            if now is not None:
                totals[now.template, now.phase, now.pull_retrying] += 1
        return +totals  # without the zeros (and a drift below 0, until the recount)
    return None
