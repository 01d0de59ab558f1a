"""Jenkins' sessions: which one each build was triggered under, and when each was last seen.

Jenkins sends its session (Jenkins.SESSION_HASH, new on every start of the controller) as the
X-Jenkins-Session header of every API page (hudson.model.Api). The provision's trigger
records it with the build (`FIELD`), and both the trigger and the reconcile pass record when
they saw it (`seen`): workers.engine.lost_triggers tells by them a queue item a controller crash
lost from one someone cancelled.
"""

from workers.adapters.redis_state import RedisState

FIELD = "jenkins_session"  # the build's field: Jenkins' session when it was triggered
KEY = "jenkins-sessions"  # session -> when it was last seen (a sorted set)
# Sessions not seen for this long are forgotten (no open build can have been triggered then).
KEEP_SECONDS = 2 * 24 * 3600


def seen(state: RedisState, session: str, at: float) -> None:
    """Jenkins answered under `session` at `at` (a later time kept if one was recorded)."""
    if not session:
        return
    with state.redis.pipeline() as pipe:
        pipe.zadd(state.prefix + KEY, {session: at}, gt=True)
        pipe.zremrangebyscore(state.prefix + KEY, "-inf", at - KEEP_SECONDS)
        pipe.execute()


def last_seen(state: RedisState, session: str) -> float:
    """When Jenkins was last seen under `session`; 0 if never."""
    return float(state.redis.zscore(state.prefix + KEY, session) or 0)
