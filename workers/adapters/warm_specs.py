"""Which pod spec of a template the warm pools make agents of, when processes disagree.

During a rolling upgrade, or a chart change of a template's image, processes on the old file
and on the new one run pool passes side by side (the reconcile leader's pass, and each
worker's pass after a claim). Each took the other's agents for stale (made under another pod
fingerprint, workers.core.warm_pool.pod_spec_of), retired them and made its own: the pool
churned, pods and Jenkins nodes made and deleted on every pass, until the last old process
ended. So each pass announces the fingerprint its file gives the template (NO_POOL: its file
keeps no pool of it) with the time its process read its file, and the newest of those still
announced wins: the one whose first live announcer started last, among those announced within
LIVE_SECONDS (by start time, not by first announcement: a process of the old file that keeps
no pool announces only once there are agents to retire, after the new one made them). A
process whose file is not the winner leaves the winner's agents alone and starts none of its
own; the winner's passes retire the others'. A release rolled back is announced anew by its
fresh processes (the other's entry lapses LIVE_SECONDS after the last pass of its
processes), so it wins in turn.

The pool's sizes (its `warm` min and max, the template's sizes: workers.core.warm_pool.
pool_sizes_of) are announced the same way, under keys of their own (KIND_SIZES): a file that
changes them only makes pods as before, so the pod fingerprints agreed, and the old and the new
files' passes each brought the pool to its own target, one retiring what the other made.
(Under keys of their own, not in the pod fingerprint: a process of a release before, which
compares its agents' pod fingerprints with the announced one, retired every agent as made
under another pod spec.) The sizes are weighed only among the processes whose file gives the
pods the same fingerprint (keys of their own for each): weighed among all, the newest pods
and the newest sizes could be two files' (a third file, the old image back and a bigger
pool, on top of a rollout), each file's processes left the pool to the other's, and no one
filled it until the older of them had lapsed.

Keys (under the prefix), per template, both sorted sets of fingerprints:
  ``warm-<kind>-since:<template>``  score: when its first announcer (while it stayed live) started
  ``warm-<kind>-seen:<template>``   score: when it was last announced
where kind is ``spec`` (the pods), or ``sizes`` (the pool's sizes) with ``:<pod fingerprint>``
after the template; each expires a day after its last announcement.
"""

import redis

from workers.adapters.redis_script import retryable

# An announcement lapses this long after the last pass that made it: a leader's takeover at
# the longest reconcile interval (its lease lasts 3 intervals, `--interval` at most 120 s:
# service.cli), and a minute of the new leader's pass before its warm pools. Shorter, a file's
# announcement lapsed between two passes of its leader, and an older file's worker pass in
# between took the pool back (the churn again). The price: after a rollback, the pools wait
# this long after the newer file's last pass before the older file's processes fill them.
LIVE_SECONDS = 420.0
NO_POOL = "-"  # the announcement of a file that keeps no pool of the template
KIND_SPEC, KIND_SIZES = "spec", "sizes"  # what is announced: the pods, the pool's sizes
_TTL_SECONDS = 24 * 3600

# KEYS: since, seen. ARGV: fingerprint, now, cutoff, ttl, since. Forget the lapsed, announce this
# one (its first time kept), and answer the newest: the highest `since` (this one on a tie).
_ANNOUNCE = """
for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])) do
  redis.call('ZREM', KEYS[1], old)
  redis.call('ZREM', KEYS[2], old)
end
redis.call('ZADD', KEYS[1], 'NX', ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local mine = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if tonumber(top[2]) > mine then return top[1] end
return ARGV[1]
"""


class WarmSpecs:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.prefix = prefix
        self._announce = connection.register_script(_ANNOUNCE)

    def announce(self, template: str, spec: str, *, since: float, now: float,
                 kind: str = KIND_SPEC, among: str | None = None) -> str:
        """Announce `spec` as the template's in the file of a process started at `since`; the
        fingerprint the pools follow now (this one, unless a newer one is announced). `among`:
        weighed only against those announced with the same (the pod fingerprint, for sizes)."""
        where = template if among is None else f"{template}:{among}"
        keys = [f"{self.prefix}warm-{kind}-since:{where}",
                f"{self.prefix}warm-{kind}-seen:{where}"]
        with retryable():
            current = self._announce(keys=keys, args=[spec, now, now - LIVE_SECONDS,
                                                      _TTL_SECONDS, since])
        return current.decode() if isinstance(current, bytes) else str(current)
