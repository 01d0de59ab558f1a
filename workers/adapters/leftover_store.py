"""The builds whose fail has still to stop something in Jenkins (their queue item, or their
run), for workers.engine.jenkins_leftovers; a failed build's record does not expire while it is here
(workers.adapters.expiry).

Key (under the prefix):
  ``jenkins-leftovers``  sorted set: build key by when a reconcile pass is to look at it next
"""

from workers.adapters.redis_state import RedisState

INDEX = "jenkins-leftovers"
# A stop Jenkins refused for good (422, 403: no Job/Cancel) is asked again this long after:
# once a person grants the permission, or cancels the item by hand, it is done within this
# time.
RETRY_SECONDS = 600.0


def note(state: RedisState, key: str, now: float) -> None:
    """The build's stop in Jenkins is to be done (kept at its time if noted already)."""
    state.redis.zadd(state.prefix + INDEX, {key: now}, nx=True)


def done(state: RedisState, key: str) -> None:
    """Nothing of the build is left in Jenkins."""
    state.redis.zrem(state.prefix + INDEX, key)


def later(state: RedisState, key: str, when: float) -> None:
    """Look at it again at `when`, if it is still to be done (a fail that was done with it
    meanwhile dropped it: not noted again)."""
    state.redis.zadd(state.prefix + INDEX, {key: when}, xx=True)


def due(state: RedisState, now: float, limit: int) -> list[str]:
    """The builds to look at now, at most `limit`, due longest first."""
    return [k.decode() if isinstance(k, bytes) else k
            for k in state.redis.zrangebyscore(state.prefix + INDEX, "-inf", now,
                                               start=0, num=limit)]


def noted(state: RedisState, keys: list[str]) -> set[str]:
    """Those of these builds whose stop in Jenkins is still to be done, in one round trip."""
    if not keys:
        return set()
    scores = state.redis.zmscore(state.prefix + INDEX, keys)
    return {key for key, score in zip(keys, scores) if score is not None}


def count(state: RedisState) -> int:
    """How many builds still have something of theirs to stop in Jenkins (the metric
    ci_autoscaler_jenkins_leftovers, read at scrape time)."""
    return int(state.redis.zcard(state.prefix + INDEX))
