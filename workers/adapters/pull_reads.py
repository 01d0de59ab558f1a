"""Read at scrape time: the live builds whose agent pod's image pull the kubelet retries now
(workers.agent_starts.pulls keeps the error in the build's record while it does, and forgets
it once the pod runs). Plain reads only (SMEMBERS, HMGET): /metrics runs this under the
web's Redis user, whose ACL allows no script (the chart's ci-autoscaler.redisWebAcl)."""

from workers.adapters.redis_state import AGENT_PHASE_OF, RedisState
from workers.core.image_pulls import PULL_ERROR_FIELD


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def retrying_templates(state: RedisState) -> list[str]:
    """The template of each build whose pod is pulling again after an error, in two round
    trips. Only a build whose agent has not started (phase pending): a failed build's
    record keeps its last pull error, and its retained pod pulls nothing."""
    keys = [_s(k) for k in state.redis.smembers(state.prefix + "live-agents")]
    if not keys:
        return []
    with state.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(state.prefix + "build:" + key, "template", "status", PULL_ERROR_FIELD)
        rows = pipe.execute()
    return [_s(template) if template is not None else "unknown"
            for template, status, error in rows
            if error and status is not None and AGENT_PHASE_OF.get(_s(status)) == "pending"]
