"""Every Redis connection of the service is made here: from REDIS_URL, or, with REDIS_SENTINELS,
through redis-py's Sentinel client, which asks the sentinels for the current master's address
on each new connection and so follows a failover.

Web, worker (RQ and the intake mover), reconcile (and its lease) and the catch-up all call
`connect` (through Settings.redis_client), so none of them can miss the Sentinel setting. With
Sentinel, REDIS_URL still gives the database, user and password (its host and port are not
used).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
import threading
import time
from threading import Event
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.connection import parse_url
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

# A sentinel that does not answer within this long is skipped for the next one: asked once
# (SENTINEL_RETRY). redis-py's default retry asked it 11 times with backoff (about 7 s for a
# hung one, 3 s for one refusing), every process's first connect waited that long per
# sentinel, and gunicorn's master, whose start-up check connects before it listens, held the
# web's start 28 s with three hung sentinels. Sentinel.discover_master goes on to the next
# sentinel itself, and a master not found is a ConnectionError the caller's own retry covers.
SENTINEL_TIMEOUT_SECONDS = 0.5
SENTINEL_RETRY = Retry(NoBackoff(), 0)


_budget = threading.local()  # this thread's deadline (time.monotonic) for its Redis calls


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """The Redis calls this thread makes inside give up asking the sentinels once `seconds`
    have passed (a sentinel being asked may take SENTINEL_TIMEOUT_SECONDS more): the web's
    store attempt before it spools (CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS). Each connect asks
    every sentinel in turn until one names the master, and a connect is retried (the
    client's retry, then the script call's own): with every sentinel hung or its host gone,
    a push waited 0.5 s per sentinel four times, 6 s with three sentinels and 10 s with five,
    and GitLab counts a delivery it waited 10 s for as failed (REALITY.md)."""
    previous = getattr(_budget, "deadline", None)
    _budget.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _budget.deadline = previous


def out_of_time() -> bool:
    """Whether this thread's budget (`within`) is spent."""
    deadline = getattr(_budget, "deadline", None)
    return deadline is not None and time.monotonic() >= deadline


class NoMasterFromSentinels(MasterNotFoundError):
    """No sentinel named the master; the text says why for each (refused our credentials, did
    not answer, names no master up), by address and error type, never a password. redis-py's
    own says "No master found" and the sentinels' client reprs, and the processes log errors
    by type alone: a wrong REDIS_SENTINEL_PASSWORD read as sentinels down."""


class SentinelsRefused(redis.exceptions.AuthenticationError, NoMasterFromSentinels):
    """Every sentinel refused REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD (WRONGPASS),
    asked for one not given (NOAUTH), or denied that user SENTINEL MASTERS (NOPERM): the
    process's own setting, which no wait mends; one of REFUSED, as a Redis refusing
    REDIS_URL's password is."""


def shown(err: BaseException) -> str:
    """What may be shown of a Redis error: its type (redis-py's texts may name a URL), and for
    the sentinels' refusals and silences their reasons (addresses and types only)."""
    if isinstance(err, NoMasterFromSentinels):
        return f"{type(err).__name__}: {err}"
    return type(err).__name__


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


class _Sentinel(Sentinel):
    """redis-py's Sentinel whose failure to find the master names each sentinel's reason."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        # redis-py 8.1's Sentinel.discover_master (redis/sentinel.py), each sentinel's error
        # kept as a value: its MasterNotFoundError holds them only as one text of reprs.
        refused, denied, unanswered, unknowing = [], [], [], []
        for n, sentinel in enumerate(self.sentinels):
            if out_of_time():  # the caller's budget (`within`) is spent: not asked
                unanswered += [f"{_address(s)} (not asked in time)" for s in self.sentinels[n:]]
                break
            try:
                masters = sentinel.sentinel_masters()
            except redis.exceptions.NoPermissionError:  # an ACL user without the command:
                denied.append(_address(sentinel))  # redis-py raised it at the first sentinel
                continue
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
                (refused if isinstance(err, REFUSED) else unanswered).append(
                    f"{_address(sentinel)} ({type(err).__name__})")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[n] = sentinel, self.sentinels[0]
                forced = getattr(self, "_force_master_ip", None)
                return (state["ip"] if forced is None else forced), state["port"]
            unknowing.append(_address(sentinel))
        given = self.sentinel_kwargs.get("password")
        settings = ("REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD"
                    if self.sentinel_kwargs.get("username") else "REDIS_SENTINEL_PASSWORD")
        why = [f"refused {settings}: {', '.join(refused)}" if given else
               f"require a password, and REDIS_SENTINEL_PASSWORD is not set: "
               f"{', '.join(refused)}"] if refused else []
        why += [f"deny REDIS_SENTINEL_USERNAME the command SENTINEL MASTERS (its ACL needs "
                f"+sentinel|masters): {', '.join(denied)}"] if denied else []
        why += [f"did not answer: {', '.join(unanswered)}"] if unanswered else []
        why += [f"name no master {service_name!r} up: {', '.join(unknowing)}"] \
            if unknowing else []
        text = f"no master {service_name!r} from the sentinels; they {'; '.join(why)}"
        if (refused or denied) and not unanswered and not unknowing:
            raise SentinelsRefused(text)
        raise NoMasterFromSentinels(text)


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
    # The database as redis-py reads the URL without sentinels (and Settings.redis_target):
    # ?db=3 first, then the path. The path alone was read here: ?db=3, /+1 or /%33 was 0.
    db = parse_url(url).get("db", 0)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_SECONDS,
                                       "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
                                       "retry": SENTINEL_RETRY}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
        if sentinel_username:
            sentinel_kwargs["username"] = sentinel_username
    sentinel = _Sentinel(list(sentinels), sentinel_kwargs=sentinel_kwargs)
    auth = {k: unquote(v) for k, v in (("username", parts.username),
                                        ("password", parts.password)) if v}
    return sentinel.master_for(master, redis_class=redis.Redis,
                               connection_class=SentinelConnection,
                               db=db, **auth, **options)



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
# Every sentinel refusing our sentinel credentials is waited for this long before it is taken
# for the process's own setting: while the sentinels' passwords or users change, the pods with
# the new ones start beside sentinels that all have the old (an upgrade from before the sentinel
# user: README, "Upgrading a release from before the password"), and a StatefulSet replaces its
# pods one at a time, so the first sentinel that accepts comes a pod's restart later. Exiting at
# once put worker and reconcile in CrashLoopBackOff for that window, then idle for the
# back-off (up to 5 minutes) after the sentinels were right.
SENTINELS_REFUSED_GRACE_SECONDS = 120.0


class SettingRefused(redis.exceptions.RedisError):
    """A Redis that answers and refuses what REDIS_URL asks of it for good, other than its user
    or password: a database it does not have (`ERR DB index is out of range`, as for
    /16 with the default `databases 16`; `SELECT is not allowed in cluster mode`), or an ACL
    user that may not run PING (NOPERM). The message is Redis' own, which quotes no
    password."""


def settings_refused(err: redis.exceptions.RedisError) -> bool:
    """Redis' answer is a generic `-ERR` reply (to SELECT or PING) or NOPERM: no wait mends it.
    Redis gives its passing states codes of their own, and redis-py makes the codes it does not
    know a plain ResponseError too: `-BUSY` (a script or function running past
    busy-reply-threshold: PING is refused until it ends or SCRIPT KILL) and `-MISCONF` (the
    last RDB save failed, a full disk: PING is refused until a save succeeds; Redis'
    processCommand) pass, as LOADING, MASTERDOWN and TRYAGAIN do. Taken for a setting, they
    ended worker and reconcile with exit 2, a crash loop while a script ran or the disk was
    full. redis-py sets `status_code` "ERR" for `-ERR` replies alone (_parsers/base.py)."""
    return type(err) is redis.exceptions.ResponseError and err.status_code == "ERR" \
        or isinstance(err, redis.exceptions.NoPermissionError)


def passing_reply(err: BaseException) -> bool:
    """A plain error reply that is waited out (not settings_refused): BUSY, MISCONF, a code
    redis-py has no class for. Its text is Redis' own, which quotes no password, and tells
    which: the type alone (ResponseError) does not."""
    return type(err) is redis.exceptions.ResponseError and not settings_refused(err)


def await_redis(client: redis.Redis, stop: Event, *,
                waiting: Callable[[Exception, float], None] = lambda err, waited: None,
                remind_seconds: float = AWAIT_REMIND_SECONDS,
                refused_grace_seconds: float | None = None) -> bool:
    """Block until `client`'s Redis answers a PING (True), or `stop` is set (False; one try
    when it is set already). Calls `waiting` with the error and the seconds waited when the
    first try fails, then every `remind_seconds` while it lasts, never at every try. A REFUSED
    error goes up at once, and a reply that refuses REDIS_URL for good as SettingRefused;
    sentinels all refusing (SentinelsRefused) once they have for
    `refused_grace_seconds` (SENTINELS_REFUSED_GRACE_SECONDS), or at once when `stop` is set
    already (one try)."""
    grace = SENTINELS_REFUSED_GRACE_SECONDS if refused_grace_seconds is None \
        else refused_grace_seconds
    pause = AWAIT_FIRST_SECONDS
    started, told_at = time.monotonic(), None
    while True:
        try:
            client.ping()
            return True
        except REFUSED as err:
            waited = time.monotonic() - started
            if not isinstance(err, SentinelsRefused) or stop.is_set() \
                    or waited >= grace:
                raise
            failed: redis.RedisError = err
        except redis.RedisError as err:
            if settings_refused(err):
                raise SettingRefused(str(err)) from err
            waited, failed = time.monotonic() - started, err
        if told_at is None or waited - told_at >= remind_seconds:
            waiting(failed, 0.0 if told_at is None else waited)
            told_at = waited
        if stop.wait(pause):
            return False
        pause = min(2 * pause, AWAIT_MOST_SECONDS)
