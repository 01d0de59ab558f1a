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

import uuid

import redis

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_ACQUIRE_PAST_MAXMEMORY = """#!lua flags=allow-oom
return redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, connection: redis.Redis, key: str, seconds: float):
        self.connection = connection
        self.key = key
        self.millis = max(1, int(seconds * 1000))
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this owner holds it now."""
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
