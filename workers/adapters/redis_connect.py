"""Every Redis connection of the service is made here: from REDIS_URL, or, with REDIS_SENTINELS,
through redis-py's Sentinel client, which asks the sentinels for the current master's address
on each new connection and so follows a failover.

Web, worker (RQ and the intake mover), reconcile (and its lease) and the catch-up all call
`connect` (through Settings.redis_client), so none of them can miss the Sentinel setting. With
Sentinel, REDIS_URL still gives the database, user and password (its host and port are not
used).
"""

from collections.abc import Callable
import time
from threading import Event
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

# A sentinel that does not answer within this long is skipped for the next one: asked once
# (SENTINEL_RETRY). redis-py's default retry asked it 11 times with backoff (about 7 s for a
# hung one, 3 s for one refusing), every process's first connect waited that long per
# sentinel, and gunicorn's master, whose start-up check connects before it listens, held the
# web's start 28 s with three hung sentinels. Sentinel.discover_master goes on to the next
# sentinel itself, and a master not found is a ConnectionError the caller's own retry covers.
SENTINEL_TIMEOUT_SECONDS = 0.5
SENTINEL_RETRY = Retry(NoBackoff(), 0)


class SentinelConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the sentinels for the master on every connect.
    redis-py 8.1's send_packed_command connects a closed connection through
    connect_check_health, which skips SentinelManagedConnection.connect and goes to the
    host and port as they stand (localhost:6379 for a new one): the connections our scripts
    hold (workers.adapters.redis_script) send that way, and wrote to whatever Redis answered
    there (tests/integration/test_sentinel_failover.py)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # the master's address, from the sentinels
        super().send_packed_command(command, check_health=check_health)


def connect(*, url: str, sentinels: tuple[tuple[str, int], ...] = (), master: str = "",
            sentinel_password: str | None = None, sentinel_username: str | None = None,
            **options: Any) -> redis.Redis:
    """A client for the service's Redis; `options` are redis.Redis's (socket_timeout,
    retry, ...)."""
    if not sentinels:
        return redis.Redis.from_url(url, **options)
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                                       "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
                                       "retry": SENTINEL_RETRY}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
        if sentinel_username:
            sentinel_kwargs["username"] = sentinel_username
    sentinel = Sentinel(list(sentinels), sentinel_kwargs=sentinel_kwargs)
    auth = {k: unquote(v) for k, v in (("username", parts.username),
                                        ("password", parts.password)) if v}
    return sentinel.master_for(master, redis_class=redis.Redis,
                               connection_class=SentinelConnection,
                               db=int(db) if db.isdigit() else 0, **auth, **options)



# Between two tries at a Redis that does not answer yet: doubled from the first, up to the
# last (a Redis restarting is back within seconds; one being installed takes longer).
AWAIT_FIRST_SECONDS, AWAIT_MOST_SECONDS = 0.5, 5.0
# The wait has no bound (a Redis being installed may take long), so one that lasts is told
# again this often: a log read over the last hour still shows why nothing is built.
AWAIT_REMIND_SECONDS = 60.0
# A Redis that answers and refuses our user or password (WRONGPASS; NOAUTH for a URL without
# one): the process's own settings are wrong and stay so however long it waits, so these are
# not waited for. redis-py makes them ConnectionErrors, as it does a Redis that is down.
REFUSED = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)


class SettingRefused(redis.exceptions.RedisError):
    """A Redis that answers and refuses what REDIS_URL asks of it for good, other than its user
    or password: a database it does not have (`ERR DB index is out of range`, as for
    /16 with the default `databases 16`; `SELECT is not allowed in cluster mode`), or an ACL
    user that may not run PING (NOPERM). The message is Redis' own, which quotes no
    password."""


def settings_refused(err: redis.exceptions.RedisError) -> bool:
    """Redis' answer is a plain error reply (not LOADING, MASTERDOWN, TRYAGAIN and the like,
    which pass) or NOPERM: no wait mends it."""
    return type(err) is redis.exceptions.ResponseError \
        or isinstance(err, redis.exceptions.NoPermissionError)


def await_redis(client: redis.Redis, stop: Event, *,
                waiting: Callable[[Exception, float], None] = lambda err, waited: None,
                remind_seconds: float = AWAIT_REMIND_SECONDS) -> bool:
    """Block until `client`'s Redis answers a PING (True), or `stop` is set (False; one try
    when it is set already). Calls `waiting` with the error and the seconds waited when the
    first try fails, then every `remind_seconds` while it lasts, never at every try. A REFUSED
    error goes up at once, and a reply that refuses REDIS_URL for good as SettingRefused."""
    pause = AWAIT_FIRST_SECONDS
    started, told_at = time.monotonic(), None
    while True:
        try:
            client.ping()
            return True
        except REFUSED:
            raise
        except redis.RedisError as err:
            if settings_refused(err):
                raise SettingRefused(str(err)) from err
            waited = time.monotonic() - started
            if told_at is None or waited - told_at >= remind_seconds:
                waiting(err, 0.0 if told_at is None else waited)
                told_at = waited
        if stop.wait(pause):
            return False
        pause = min(2 * pause, AWAIT_MOST_SECONDS)
