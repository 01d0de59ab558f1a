"""The live agents counted by template, phase and image pull, kept in Redis so that a /metrics
scrape costs a few commands whatever the number of builds (pull_reads.live_agents, the
reference kept beside it, reads every live build's record: 10,000 HMGETs a scrape).

Keys (under the prefix):
  ``agent-counts``   hash: "phase|pulling|template" -> how many live builds, as the last
                     recount found them; ``_gen`` the recount's number
  ``agent-counted``  hash: build key -> the field it was counted under by that recount
  ``agents-dirty``   set: builds whose status, template, agent or pull error was written
                     since (RedisState._write_build adds them in the write's own MULTI)

A scrape reads the counts and the dirty builds, then only the dirty builds' records and what
each was counted as, and moves each from the one to the other (`read`): commands in the
number of states and of builds changed since the recount, not of builds. The reconcile pass
recounts every build in one script (`recount`), which empties the dirty set: whatever the
counts may have drifted by (a write from a version that marked nothing, a failover that lost
a write) is corrected there. Plain reads for the scrape (MULTI, HGETALL, SMEMBERS, HMGET,
HGET): the web's Redis user may run no script (the chart's ci-autoscaler.redisWebAcl).
"""

from collections import Counter
from collections.abc import Iterable

from workers.adapters.pull_reads import FIELDS, LiveAgent, agent_of
from workers.adapters.redis_state import AGENT_PHASE_OF, AGENTS_DIRTY, RedisState

COUNTS = "agent-counts"
COUNTED = "agent-counted"
_GEN = "_gen"
# a recount between a scrape's two reads: read again, at most this often, then every record
READ_ATTEMPTS = 3
_SET_CHUNK = 500  # HSET arguments pairs per call in the recount (Lua's unpack has a limit)

# KEYS: live-agents, agents-dirty, agent-counts, agent-counted. ARGV[1] the build hashes'
# prefix, then status/phase pairs (AGENT_PHASE_OF). The same rule as pull_reads.agent_of: a
# build counts under its status's phase, template ("unknown" if none) and whether its own
# pod's image pull is retried (an error, phase pending, the error's agent its agent).
_RECOUNT = """
local unpack = table.unpack or unpack
local phases = {}
for i = 2, #ARGV, 2 do phases[ARGV[i]] = ARGV[i + 1] end
local gen = tonumber(redis.call('HGET', KEYS[3], '_gen') or '0') + 1
local counts, counted, n = {}, {}, 0
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = redis.call('HMGET', ARGV[1] .. key, 'template', 'status', 'pull_error',
                      'pull_error_agent', 'agent')
  local phase = r[2] and phases[r[2]]
  if phase then
    local pulling = (r[3] and r[3] ~= '' and phase == 'pending' and r[4] == r[5]) and '1' or '0'
    local field = phase .. '|' .. pulling .. '|' .. (r[1] or 'unknown')
    counts[field] = (counts[field] or 0) + 1
    counted[#counted + 1] = key
    counted[#counted + 1] = field
    n = n + 1
  end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local flat = {'_gen', gen}
for field, count in pairs(counts) do
  flat[#flat + 1] = field
  flat[#flat + 1] = count
end
redis.call('HSET', KEYS[3], unpack(flat))
local chunk = 2 * CHUNK
for i = 1, #counted, chunk do
  redis.call('HSET', KEYS[4], unpack(counted, i, math.min(i + chunk - 1, #counted)))
end
return n
""".replace("CHUNK", str(_SET_CHUNK))

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


def recount(state: RedisState) -> int:
    """Count every live build afresh, atomically (one script: no write is lost between the
    read and the count), and start a new generation; how many were counted. The engine's
    (the reconcile pass): the web may run no script."""
    args = [state.prefix + "build:"]
    for status, phase in AGENT_PHASE_OF.items():
        args += [str(status), phase]
    keys = [state.prefix + k for k in ("live-agents", AGENTS_DIRTY, COUNTS, COUNTED)]
    return int(state.redis.eval(_RECOUNT, len(keys), *keys, *args))


def read(state: RedisState) -> Counter[Key] | None:
    """The live agents by (template, phase, pulling): the last recount's counts, with the
    builds written since counted as they are now; None before any recount (or when recounts
    kept coming between the two reads): the caller reads every record then."""
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
