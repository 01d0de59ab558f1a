"""Leases in Redis: a named lock with a time to live, held by one owner at a time.

A holder that dies (SIGKILL, a lost node) holds it no longer than its TTL. Renew and release
compare the owner token in a Lua script, so a holder whose lease expired and was taken by
another never extends or deletes the new holder's lease.

A Redis at its maxmemory under noeviction (the chart's policy) refuses SET with an OOM error,
while PEXPIRE and DEL still go through: its holder kept a lease, but a new one (a reconcile
pod restarted, or a second taking over from a dead one) could never take it, so no reconcile
pass ran, and with it the expiry of ended builds, the one thing that frees our memory; Redis
stayed full until someone raised its maxmemory. A lease refused so is taken by a script flagged
`allow-oom` (Redis 7 "Script flags": https://redis.io/docs/latest/develop/programmability/
lua-api/#script-flags), which may write one small key past the limit. Only then: fakeredis
(the demo) knows no script flags, and never reaches a maxmemory.
"""

import logging
import threading
import time
import uuid

import redis

from workers.adapters.run_bound import RunEnded

log = logging.getLogger("ci_autoscaler.lease")

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_ACQUIRE_PAST_MAXMEMORY = """#!lua flags=allow-oom
return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
RENEWED = "renewed-"  # the token's head of a lease its holder renews (Lease `renewed`)
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, connection: redis.Redis, key: str, seconds: float, *,
                 renewed: bool = False):
        """`renewed`: its holder renews it for as long as it holds it (a Heartbeat), so it may
        be taken for its dead holder's once it is not renewed (`free_if_stale`); one held
        through a short step without renewals is left to lapse."""
        self.connection = connection
        self.key = key
        self.millis = max(1, int(seconds * 1000))
        self.token = (RENEWED if renewed else "") + uuid.uuid4().hex
        self.renewed = renewed
        # time.monotonic() when the last acquire was sent: Redis counts the TTL from a moment
        # after it (workers.concurrency.heartbeat counts its holder's time from it)
        self.sent_at = time.monotonic()

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this owner holds it now."""
        self.sent_at = time.monotonic()
        try:
            return bool(self.connection.set(self.key, self.token, nx=True, px=self.millis))
        except redis.exceptions.OutOfMemoryError:  # Redis full: see the module's docstring
            return bool(self.connection.eval(_ACQUIRE_PAST_MAXMEMORY, 1, self.key, self.token,
                                             self.millis))

    def renew(self) -> bool:
        """Extend the lease by its full TTL; False if this owner no longer holds it."""
        return bool(self.connection.eval(_RENEW, 1, self.key, self.token, self.millis))

    def hold(self) -> bool:
        """Renew if held, else take it if free: the step of a leader that runs every period."""
        return self.renew() or self.acquire()

    def release(self) -> None:
        self.connection.eval(_RELEASE, 1, self.key, self.token)


def held(connection: redis.Redis, key: str) -> bool:
    return bool(connection.exists(key))


# A task's lease is renewed this often at most (workers.concurrency.heartbeat: every third of
# its time to live, 20 s for the provision lease's 60), so that its holder's death is seen
# long before the lease lapses (`free_if_stale`).
RENEW_MOST_SECONDS = 5.0
# A lease not renewed for this many of its renewals is its dead holder's: a renewal may fail
# twice (Redis busy) and a loaded machine may hold the renewing thread a while.
STALE_RENEWALS = 4
_FREE_STALE = """
local holder = redis.call('get', KEYS[1])
if not holder or string.sub(holder, 1, #ARGV[2]) ~= ARGV[2] then
  return 0
end
local left = redis.call('pttl', KEYS[1])
if left >= 0 and left <= tonumber(ARGV[1]) then
  return redis.call('del', KEYS[1])
end
return 0
"""


def renew_seconds(seconds: float) -> float:
    """How often the holder of a lease of `seconds` renews it."""
    return min(seconds / 3, RENEW_MOST_SECONDS)


def stale_seconds(seconds: float) -> float:
    """How long a renewed lease of `seconds` goes unrenewed before `free_if_stale` may free it
    (`seconds` when it never does: too short to tell)."""
    stale = STALE_RENEWALS * renew_seconds(seconds)
    return stale if stale < seconds else seconds


def holder_seconds(lease: Lease) -> float:
    """How long the living holder of `lease` may go without a renewal before it must take the
    lease for lost: a renewal sooner than `free_if_stale` may free it (it was cut off from
    Redis, or frozen: SIGSTOP, a node starved of CPU), so that its next step never runs beside
    the provision the reconcile loop started again meanwhile; the whole time to live for a
    lease nobody frees early."""
    seconds = lease.millis / 1000
    if not lease.renewed or stale_seconds(seconds) >= seconds:
        return seconds
    return stale_seconds(seconds) - renew_seconds(seconds)


def free_if_stale(connection: redis.Redis, keys: list[str], seconds: float) -> list[str]:
    """Delete those of the task leases `keys` (of `seconds` to live) their holder has not renewed
    for STALE_RENEWALS renewals: it died (SIGKILL, an OOM kill, a node lost) and its lease
    would hold its build for up to `seconds` more (a minute by default), then a lease period
    more for the reconcile loop to see it quiet. Only a lease taken `renewed` (one held through
    a short step, never renewed, is left to lapse); none too short to tell (its renewals come
    every third of it, so it lapses first). The ones deleted."""
    left = int((seconds - stale_seconds(seconds)) * 1000)
    if left <= 0 or not keys:
        return []
    script = connection.register_script(_FREE_STALE)
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            script(keys=[key], args=[left, RENEWED], client=pipe)
        return [key for key, freed in zip(keys, pipe.execute()) if freed]


class LeaseLost(RunEnded):
    """The lease a pass runs under is no longer this owner's: the pass stops (at its next
    step, or at the next build of a step: workers.adapters.run_bound)."""


class Kept:
    """`lease`, held by its owner, kept while one pass runs under it (a context manager).

    A pass can outlast the lease's TTL (a slow Jenkins, each call up to its timeout, over many
    builds; a big cluster's lists): renewed only between passes, the lease expired under a
    pass still running, another instance took it, and two leaders acted at once. A thread
    renews it every `every` seconds while the pass runs, and `check()`, called between the
    pass's steps, renews it too and raises LeaseLost once it is not this owner's any more
    (taken by another after Redis was away longer than the TTL, or let go below), so that a
    pass that lost its lease stops before its next step. A pass still running after
    `most_seconds` (something hangs) is let go: the thread renews no more, and another instance
    takes over once the lease expires.

    `held_at` is when the `hold()` that took or renewed the lease was sent (time.monotonic()):
    Redis counts its TTL from then, not from when the answer came back nor from when the pass
    began. With Redis away, the lease is taken for lost once less than `margin` seconds of its
    TTL are left, not at its very end: a check passed just before expiry let the next step
    (maybe a long one) run on past it, beside the instance that took the lease over."""

    def __init__(self, lease: Lease, every: float, most_seconds: float,
                 held_at: float | None = None, margin: float = 0.0):
        self.lease, self.every, self.most_seconds = lease, every, most_seconds
        self.margin_millis = max(0, int(margin * 1000))
        self._started = time.monotonic()
        self._renewed = self._started if held_at is None else held_at
        self._lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True, name="lease-keeper")

    def __enter__(self) -> "Kept":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        """Renew once: lost if not this owner's, or not renewed for a whole TTL."""
        if self._lost:
            return
        if time.monotonic() - self._started >= self.most_seconds:
            log.error("reconcile pass still running: its lease is let go",
                      extra={"seconds": round(time.monotonic() - self._started)})
            self._lost = True
            return
        sent = time.monotonic()
        try:
            if self.lease.renew():
                # Redis counts the TTL from when it ran the renew, before its answer came back
                # (late when Redis or the network is slow): counted from the answer, the lease
                # was still "held" here after it expired there and another instance took it.
                self._renewed = sent
                return
            self._lost = True
        except redis.exceptions.RedisError:  # Redis away: held until its TTL less the margin
            if (time.monotonic() - self._renewed) * 1000 >= \
                    self.lease.millis - self.margin_millis:
                self._lost = True

    def _keep(self) -> None:
        while not self._done.wait(self.every) and not self._lost:
            self._renew()

    def check(self) -> None:
        """Renew, and raise LeaseLost if the lease is no longer this owner's."""
        self._renew()
        if self._lost:
            raise LeaseLost(self.lease.key)

    def lost(self) -> bool:
        """Whether the lease is known lost (by the thread's renew), or was not renewed for its
        TTL less the margin (the thread's renew may hang on a Redis gone silent); no call to
        Redis: asked before each build of a step and by retry waits (workers.adapters
        .run_bound), where a renew each was one Redis round trip more."""
        if not self._lost and (time.monotonic() - self._renewed) * 1000 >= \
                self.lease.millis - self.margin_millis:
            self._lost = True
        return self._lost

    def check_held(self) -> None:
        """Raise LeaseLost if lost() (no call to Redis)."""
        if self.lost():
            raise LeaseLost(self.lease.key)
