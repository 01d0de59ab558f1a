"""Whether Jenkins quiets down ("Prepare for Shutdown"), as read a moment ago: kept in Redis
for READING_SECONDS, so that a provision knows it without a Jenkins call of its own.

While Jenkins quiets down it starts no queued build (hudson.model.Queue isBlockedByShutdown),
so a build provisioned then would get a pod whose agent idles until workers.engine.blocked_builds
parks it, two minutes later; a warm agent it claimed would idle the same way. The provision
parks such a build at once instead (workers.engine.tasks), and the reconcile pass, which reads the
flag afresh to resume parked builds, records what it read, so a provision after quiet down
was cancelled knows it too. A burst of pushes asks Jenkins once.
"""

from typing import TYPE_CHECKING

from workers.adapters.redis_state import RedisState
from workers.core.errors import RetryableError

if TYPE_CHECKING:
    from workers.runtime import Runtime

KEY = "jenkins-quieting-down"
# How long a reading serves: about a reconcile pass, so that a build parked just before a
# quiet down was cancelled waits one pass more at most.
READING_SECONDS = 15


def record(state: RedisState, quieting: bool) -> None:
    state.redis.set(state.prefix + KEY, "1" if quieting else "0", ex=READING_SECONDS)


def read(rt: "Runtime") -> bool:
    """Jenkins' flag, asked now (one call), and recorded."""
    quieting = rt.jenkins.quieting_down()
    record(rt.state, quieting)
    return quieting


def recent(rt: "Runtime") -> bool:
    """The reading of the last READING_SECONDS, else Jenkins asked now. A Jenkins that cannot
    answer is taken as not quieting down, for READING_SECONDS too (a provision does not spend
    the adapter's retries on it again, before its own calls that fail or wait the same way);
    a build Jenkins then holds back is parked by the pass."""
    value = rt.state.redis.get(rt.state.prefix + KEY)
    if value is not None:
        return value in (b"1", "1")
    try:
        return read(rt)
    except RetryableError:
        record(rt.state, False)
        return False
