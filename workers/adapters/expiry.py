"""Expiry of ended builds: a build's state, and its entries in the indexes that name it, are
deleted a set time after the build ended, so Redis does not grow with every build ever run.

Redis 7.0 has no TTL per hash field, so the entries in the ``agents``, ``queue-items`` and
``jenkins-runs`` hashes and the ``builds``, ``ended``, ``live-agents`` and ``failures`` sets are
pruned here,
together with the build hash, by the reconcile pass: from the ``ended`` sorted set (build key
by the time it ended, written by RedisState.update_build), oldest first, in bounded batches.
An index entry, and the commit's run mark, is removed only while it still names that build;
a build placed again under new agent names (workers.engine.agent_names) has an ``agents`` entry for
each name it had (its ``previous_agents``).
A failed build's start-failure mark goes with it. Delivery marks, leases and RQ's jobs expire by
their own TTLs (the run mark too, as a backstop).
"""

import redis

from workers.adapters import leftover_store
from workers.adapters.redis_state import START_FAILURE, BuildStatus, RedisState, run_ref
from workers.core.errors import RetryableError
from workers.core.keys import PREVIOUS_AGENTS as PREVIOUS

EXPIRY_BATCH_BUILDS = 500  # builds read and deleted per round trip
EXPIRY_MAX_BATCHES = 4  # per reconcile pass: at most 2,000 builds, ~8,000 a minute
# Only these are deleted; an ended build found in another status (retained: its pod is still
# kept) is looked at again a TTL later, or as soon as it ends again (retention's release); one
# whose fail has still to stop its queue item or run in Jenkins (adapters.leftover_store: its
# item, left, would be adopted once its record is gone) is looked at again as often as that
# stop is tried.
_GONE = frozenset({BuildStatus.RELEASED, BuildStatus.FAILED})
_FIELDS = ("status", "agent", "queue_item", "job", "jenkins_build", "commit", PREVIOUS)
_INDEXES = ("agents", "queue-items", "jenkins-runs", "builds", "ended", "live-agents",
            "failures")

# KEYS[1..7] the indexes above, then three per build: its hash, its commit's run mark (the
# hash again when it has no commit) and its start failure's dedupe mark (workers.agent_starts.
# watch: an hour's TTL, which outlived a shorter build TTL); ARGV six per build: its key, its
# agent, its queue item, its Jenkins run ("job#number"), "1" if it has a commit, and its
# previous agents (comma-separated), "" where there is none.
_DELETE = """
local n = 0
for i = 1, #ARGV, 6 do
  local key = ARGV[i]
  for j, field in ipairs({ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]}) do
    if field ~= '' and redis.call('HGET', KEYS[j], field) == key then
      redis.call('HDEL', KEYS[j], field)
    end
  end
  for agent in string.gmatch(ARGV[i + 5], '[^,]+') do
    if redis.call('HGET', KEYS[1], agent) == key then redis.call('HDEL', KEYS[1], agent) end
  end
  local mark = KEYS[9 + 3 * n]
  if ARGV[i + 4] ~= '' and redis.call('GET', mark) == key then redis.call('DEL', mark) end
  redis.call('DEL', KEYS[8 + 3 * n], KEYS[10 + 3 * n])
  redis.call('ZREM', KEYS[4], key)
  redis.call('ZREM', KEYS[5], key)
  redis.call('SREM', KEYS[6], key)
  redis.call('ZREM', KEYS[7], key)
  n = n + 1
end
return n
"""


def expire_ended(state: RedisState, *, now: float, ttl_seconds: float,
                 batch: int = EXPIRY_BATCH_BUILDS, max_batches: int = EXPIRY_MAX_BATCHES) -> int:
    """Delete the builds that ended `ttl_seconds` or more before `now`; how many."""
    ended = state.prefix + "ended"
    delete = state.redis.register_script(_DELETE)
    expired = 0
    try:
        for _ in range(max_batches):
            raw = state.redis.zrangebyscore(ended, "-inf", now - ttl_seconds, start=0, num=batch)
            if not raw:
                break
            keys = [k.decode() if isinstance(k, bytes) else k for k in raw]
            rows = state.build_fields(keys, *_FIELDS)
            left = state.redis.zmscore(state.prefix + leftover_store.INDEX, keys)
            gone, args = [], []
            later = {}
            for key, (status, agent, item, job, number, commit, previous), noted in zip(
                    keys, rows, left):
                if status is not None and status not in _GONE:
                    later[key] = now
                    continue
                if noted is not None:  # as soon as its stop may be done
                    later[key] = now - ttl_seconds + leftover_store.RETRY_SECONDS
                    continue
                build_hash = state.prefix + "build:" + key
                gone += [build_hash, state.prefix + "commit:" + commit if commit else build_hash,
                         state.prefix + START_FAILURE + key]
                args += [key, agent or "", item or "",
                         run_ref(job, number) if job and number else "", "1" if commit else "",
                         previous or ""]
            if later:
                state.redis.zadd(ended, later)
            if gone:
                expired += int(delete(keys=[state.prefix + i for i in _INDEXES] + gone,
                                      args=args))
            if len(keys) < batch:
                break
    except redis.RedisError as err:
        raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
    return expired
