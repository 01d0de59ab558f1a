"""The builds whose provision Jenkins refuses (a token, Agent/Create or Agent/Connect, a
proxy's sign-in page) or leaves unanswered (restarting: no connection, its 503 while it loads;
overloaded: read timeouts, 429: workers.engine.tasks), for the status page; "refused" below
covers both. Such a build stays `queued`
and has no agent, so neither the in-flight table (live agents) nor the waiting one (waiting
for capacity) listed it: the page counted it "not decided yet" with no word of why.

A sorted set ``refused-builds``, build key by the time of its last refusal. Each refusal
notes it again; entries not noted for RECENT_SECONDS are dropped by the next note (a
refused provision is tried again within minutes: RQ's retries, then the reconcile loop's),
and the page shows only builds whose record still carries the refusal. The set itself expires
RECENT_SECONDS after the last refusal."""

from typing import Any

import redis

from workers.adapters.redis_state import RedisState
from workers.core.errors import RetryableError

KEY = "refused-builds"
RECENT_SECONDS = 900.0
SHOWN = 50


def note(state: RedisState, build_key: str, now: float) -> None:
    try:
        with state.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(state.prefix + KEY, {build_key: now})
            pipe.zremrangebyscore(state.prefix + KEY, "-inf", now - RECENT_SECONDS)
            pipe.expire(state.prefix + KEY, int(RECENT_SECONDS))  # no refusal since: all stale
            pipe.execute()
    except redis.RedisError as err:
        raise RetryableError(f"redis unavailable: {type(err).__name__}") from err


def recent(state: RedisState, now: float, limit: int = SHOWN) -> list[str]:
    """The builds refused within RECENT_SECONDS, oldest first, at most `limit`."""
    try:
        found = state.redis.zrangebyscore(state.prefix + KEY, now - RECENT_SECONDS, "+inf",
                                          start=0, num=limit)
    except redis.RedisError as err:
        raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
    return [_s(k) for k in found]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
