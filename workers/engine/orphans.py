"""Whether an orphan pod (ours, its build unknown to Redis) may be deleted: only once Jenkins
says its agent runs nothing.

A pod's build is unknown when its record was never written or expired, and also when Redis
lost its data: a Redis without persistence restarted, a FLUSHALL, a failover to a replica
that had not caught up, keys evicted at maxmemory (README, Redis memory). Then every agent
pod is an orphan while Jenkins still runs its build: deleted, its build was killed in the
middle (the pod gone, its Jenkins node deleted under the running executor). So an orphan is
deleted only when Jenkins answers that its agent's executors are idle
(computer/NAME/api/json: Executor.isIdle; a run of a job we may not read counts too), or
that it has no such agent; while Jenkins cannot be asked, it is kept. A kept pod is deleted
in the first pass after its build ends (the kubelet's activeDeadlineSeconds still bounds it).
"""

import logging

from workers import runtime
from workers.engine.jenkins_steps import JenkinsSteps

log = logging.getLogger("ci_autoscaler.repairs")

# The agents kept and said so, so that each is logged once while kept, not every pass.
_told: set[str] = set()


def deletable(rt: runtime.Runtime, agent: str, jenkins: JenkinsSteps | None) -> bool:
    """Whether the orphan pod `agent` runs nothing in Jenkins (or has no Jenkins agent)."""
    if jenkins is None:  # no Jenkins to ask: a running build is never risked
        return False
    missing = object()
    activity = jenkins.run(rt.jenkins.agent_activity, agent, skipped=missing)
    if activity is missing:  # Jenkins away, or this read failed: asked again next pass
        return False
    if activity is None or not (activity.runs or activity.hidden_runs):
        _told.discard(agent)
        return True
    if agent not in _told:
        _told.add(agent)
        log.warning("agent pod's build is unknown to Redis (its data lost?) and its agent "
                    "runs a build in Jenkins: kept until that build ends",
                    extra={"agent": agent})
    return False
