"""Whether an orphan pod (ours, its build unknown to Redis) may be deleted: only once Jenkins
says its agent runs nothing.

A pod's build is unknown when its record was never written or expired, and also when Redis
lost its data: a Redis without persistence restarted, a FLUSHALL, a failover to a replica
that had not caught up, keys evicted at maxmemory (README, Redis memory). Then every agent
pod is an orphan while Jenkins still runs its build: deleted, its build was killed in the
middle (the pod gone, its Jenkins node deleted under the running executor). So an orphan is
deleted only when Jenkins answers that its agent's executors are idle (computer/api/json,
every agent in one read: Executor.isIdle; a run of a job we may not read counts too), or
that it has no such agent; while Jenkins cannot be asked, it is kept. A kept pod is deleted
in the first pass after its build ends (the kubelet's activeDeadlineSeconds still bounds it).

Jenkins is not asked about a pod whose agent runs nothing and never will: one that ended
(Failed or Succeeded), or whose agent's container did (restartPolicy Never), or one no kubelet
took yet (Pending without status.startTime: no container of it ever ran). Kept, such a pod
stayed while Jenkins was away (a Pending one asking the cluster autoscaler for a node), and,
Jenkins up, for ever: a Pipeline's node block stays on the executor of an agent whose process
died, waiting for it to come back (workers.engine.lost_agents), so its agent "ran a build"
that could never end, and the run hung with it.
"""

import logging

from workers import runtime
from workers.core.ports import AgentActivity, PodInfo, PodPhase
from workers.engine.jenkins_steps import JenkinsSteps

log = logging.getLogger("ci_autoscaler.repairs")

# The agents kept and said so, so that each is logged once while kept, not every pass.
_told: set[str] = set()


class Orphans:
    """The orphans of one pass: Jenkins is asked what every agent runs once, at the first
    orphan that needs it (computer/api/json), not once per pod (after a data loss every pod
    is an orphan till its build ends: a GET each, every pass)."""

    def __init__(self, rt: runtime.Runtime, jenkins: JenkinsSteps | None):
        self._rt, self._jenkins = rt, jenkins
        self._agents: dict[str, AgentActivity] | object | None = None  # read: by name

    def deletable(self, pod: PodInfo) -> bool:
        """Whether the orphan pod runs nothing in Jenkins (or has no Jenkins agent)."""
        agent = pod.name
        if never_runs(pod):
            _told.discard(agent)
            return True
        if self._jenkins is None:  # no Jenkins to ask: a running build is never risked
            return False
        if self._agents is None:
            self._agents = self._jenkins.run(self._rt.jenkins.agents_activity,
                                             skipped=_UNREAD)
        if not isinstance(self._agents, dict):  # Jenkins away, or the read failed
            return False  # asked again next pass
        activity = self._agents.get(agent)
        if activity is None or not (activity.runs or activity.hidden_runs):
            _told.discard(agent)
            return True
        if agent not in _told:
            _told.add(agent)
            log.warning("agent pod's build is unknown to Redis (its data lost?) and its agent "
                        "runs a build in Jenkins: kept until that build ends",
                        extra={"agent": agent})
        return False


_UNREAD = object()


def never_runs(pod: PodInfo) -> bool:
    """Whether no agent process runs in the pod, nor ever will: it ended, its agent's
    container ended, or no kubelet has taken it (no container started)."""
    return pod.phase in (PodPhase.SUCCEEDED, PodPhase.FAILED) or pod.agent_ended or \
        (pod.phase == PodPhase.PENDING and pod.start_time is None)
