"""Read at scrape time: every live agent's template and phase, and whether its pod's image
pull is one the kubelet retries now (workers.agent_starts.pulls keeps the error in the build's
record while it does, and forgets it once the pod runs). One read gives both
ci_autoscaler_agents and ci_autoscaler_image_pull_retrying: each scrape reads a live build
once, not once per gauge. Plain reads only (SMEMBERS, HMGET): /metrics runs this under the
web's Redis user, whose ACL allows no script (the chart's ci-autoscaler.redisWebAcl)."""

from typing import NamedTuple

from workers.adapters.redis_state import AGENT_PHASE_OF, COUNTED_FIELDS, RedisState


class LiveAgent(NamedTuple):
    template: str
    phase: str
    # its pod pulls again after an error: only while its agent has not started (phase
    # pending); a failed build's record keeps its last pull error, its retained pod pulls
    # none; and only its own pod's (a build placed again keeps its former pod's error until
    # the new pod runs or fails to pull)
    pull_retrying: bool


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# A build's fields that say whether, and how, it counts (agent_counts keeps the counts;
# redis_state marks a build whose write names one).
FIELDS = COUNTED_FIELDS


def agent_of(row: list) -> LiveAgent | None:
    """The live agent a build's FIELDS (as read, bytes or None) make, None if it has none."""
    template, status, error, pull_agent, agent = row
    phase = AGENT_PHASE_OF.get(_s(status)) if status is not None else None
    if phase is None:
        return None
    return LiveAgent(_s(template) if template is not None else "unknown", phase,
                     bool(error) and phase == "pending" and pull_agent == agent)


def live_agents(state: RedisState) -> list[LiveAgent]:
    """Every live agent (the live-agents set) with a known phase, in two round trips: the
    reference for agent_counts, and what /metrics reads before the first recount."""
    keys = [_s(k) for k in state.redis.smembers(state.prefix + "live-agents")]
    if not keys:
        return []
    with state.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(state.prefix + "build:" + key, *FIELDS)
        rows = pipe.execute()
    return [a for a in map(agent_of, rows) if a is not None]
