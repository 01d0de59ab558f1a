"""When Jenkins was last seen away (no connection, or its 503 while it restarts and loads),
so that an agent's connect clock starts no earlier than that.

An inbound agent cannot connect to a Jenkins that is down or loading; it retries, and connects
some seconds after Jenkins serves again (jenkins/inbound-agent retries unless -noReconnect).
A pod that ran through a Jenkins restart longer than its template's
agentConnectTimeoutSeconds has nothing wrong with it, and an idle warm agent offline just
after one is reconnecting: each gets its full connect time from the last moment Jenkins was
seen away. The reconcile leader sees it: a pass that fails with `Unavailable`
(workers.engine.reconcile), and its questions "which agents are online?" (every couple of seconds
while some agent is on its way up, workers.agent_starts.online; the warm pools,
workers.warm.pool) record the time here, in Redis, so that a new leader knows it too.
"""

from typing import TYPE_CHECKING

from workers.adapters.redis_state import RedisState
from workers.core.errors import Unavailable

if TYPE_CHECKING:
    from workers.runtime import Runtime

KEY = "jenkins-away-at"


def record(state: RedisState, at: float) -> None:
    """Jenkins was away at `at` (a later time kept if one was recorded already)."""
    state.redis.zadd(state.prefix + KEY, {"at": at}, gt=True)


def last(state: RedisState) -> float:
    """When Jenkins was last seen away; 0 if never."""
    return float(state.redis.zscore(state.prefix + KEY, "at") or 0)


def online_agents(rt: "Runtime", now: float) -> set[str]:
    """Jenkins' online agents (one call); when Jenkins is away, that is recorded at `now`
    before the error goes on: no agent can connect to it either."""
    try:
        return rt.jenkins.online_agents()
    except Unavailable:
        record(rt.state, now)
        raise
