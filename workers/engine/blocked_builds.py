"""Builds that Jenkins itself holds back give their pod up until Jenkins lets them go.

A job that does not allow concurrent builds (a Pipeline's `disableConcurrentBuilds()`, a
freestyle job without "Execute concurrent builds if necessary") keeps every build after the
running one in the queue as a BlockedItem: `blocked` true, `why` "Build #5 is already in
progress (ETA: 4 min 10 sec)" (jenkins.model.BlockedBecauseOfBuildInProgress); other causes
of blockage (an upstream build in progress, a throttling plugin) look the same. Meanwhile our
agent, made beside the trigger, would sit connected and idle, holding its node's room and its
template's slot, while its pod's activeDeadlineSeconds runs down: the build it finally gets
could be killed half-way. Ten pushes to such a job made ten idle pods. The same holds while
Jenkins prepares for shutdown ("quiet down", before an upgrade or restart, for as long as the
operator takes): no queued build starts, whatever the job (hudson.model.Queue
isBlockedByShutdown: a Pipeline's item is a BlockedItem, a freestyle job's a BuildableItem that
gets no executor; `why` "Jenkins is about to shut down" for both). Jenkins' `quietingDown`
flag is read for that, and only in a pass with a build that could be parked or resumed; what
the pass read is kept a moment (workers.engine.jenkins_quiet), and a build provisioned while Jenkins
quiets down is parked at once, triggered with no pod (`park_unplaced`).

So a triggered build whose queue item is blocked and whose pod is PARK_AFTER_SECONDS old is
parked: its pod is deleted (``ci_autoscaler_agents_deleted_total{reason="parked"}``), its
reservation and slot freed, and `parked_at` plus Jenkins' reason (`wait_detail`) recorded,
which the build's GitLab commit status shows ("waiting in Jenkins: ..."). Its Jenkins node and
queue item stay. Once the item is no longer blocked (and Jenkins no longer quiets down), the
build is provisioned again: a new pod under the same agent name, as for a provision that
stopped half-way (it is not triggered again). Builds on a warm agent or adopted from the queue
are left as they are.
"""

import json
import logging

from workers import commit_statuses, runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import caps, jenkins_quiet, redrive, tasks
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.core.models import BuildRequest
from workers.core.ports import PodInfo, QueueItem

log = logging.getLogger("ci_autoscaler.blocked_builds")
PARK_AFTER_SECONDS = 120  # short blockages (a build about to end) keep their pod
PARKED = "parked"  # why the pod was deleted (agents_deleted_total{reason})
FIELD = "parked_at"
# What the build waits for while Jenkins quiets down, when its item's `why` says nothing
QUIETING_DOWN = "Jenkins is preparing for shutdown (quiet down)"


def park_and_resume(rt: runtime.Runtime, builds: dict[str, dict[str, str]],
                    pods: list[PodInfo], queue: list[QueueItem], now: float) -> dict[str, int]:
    """One pass: park the triggered builds Jenkins blocks, resume those it no longer does.
    `pods`: our pods, and `queue`: Jenkins' queue, as the pass read them."""
    pod_of = {pod.name: pod for pod in pods if not pod.deleting}
    items = {item.id: item for item in queue}
    result = {"builds_parked": 0, "builds_resumed": 0}
    quieting: list[bool] = []  # Jenkins' flag, read at most once, when a build needs it

    def held(item: QueueItem) -> bool:
        if item.blocked:
            return True
        if not quieting:
            quieting.append(jenkins_quiet.read(rt))
        return quieting[0]

    for key, build in builds.items():
        run_bound.checkpoint()  # the pass may end before this build
        if not _candidate(build, pod_of, now):
            continue
        item = items.get(int(build["queue_item"]))
        if item is None:
            continue  # gone: finish_lost_builds asks Jenkins what became of it
        if build.get(FIELD):
            if not held(item):
                result["builds_resumed"] += _resume(rt, key, build)
        elif held(item):
            why = item.why if item.blocked else (item.why or QUIETING_DOWN)
            result["builds_parked"] += _park(rt, key, build, why, now)
    return result


def _candidate(build: dict[str, str], pod_of: dict[str, PodInfo], now: float) -> bool:
    if build.get("status") != BuildStatus.TRIGGERED or not build.get("queue_item") \
            or build.get("warm_agent") or build.get("node_label") or not build.get("request"):
        return False
    if build.get(FIELD):
        return True
    pod = pod_of.get(build.get("agent", ""))
    created = (pod.created_at if pod is not None else None) \
        or float(build.get("pod_created_at") or now)
    return pod is not None and now - created >= PARK_AFTER_SECONDS


def _park(rt: runtime.Runtime, key: str, build: dict[str, str], why: str,
          now: float) -> int:
    lease = tasks.provision_lease(rt, key)
    if not lease.acquire():
        return 0  # a provision or release holds it: the next pass
    try:
        if rt.state.get_build(key).get("status") != BuildStatus.TRIGGERED:
            return 0  # it started (or ended) since the pass listed it
        agent = build.get("agent", "")
        if rt.cluster.delete_pod(agent):
            tasks.engine_metrics(rt).agent_deleted(build.get("template", "unknown"), PARKED)
        rt.capacity.release(key)
        caps.free(rt, key)
        # its next pod's agent is a new start: measured, and held to agentConnectTimeout
        rt.state.update_build(key, **{FIELD: now, "wait_detail": why, "agent_online_at": None})
    finally:  # once Redis answers: a raise lost the park's commit status and log
        let_go(lease, what=f"park {key}")
    commit_statuses.touch(rt.state, key)
    log.warning("Jenkins holds the build back: its agent pod is given up until it lets it go",
                extra={"build_key": key, "agent": agent, "jenkins": why})
    redrive.request_redrive(rt)  # its room and slot are free
    return 1


def park_unplaced(rt: runtime.Runtime, key: str, why: str, now: float) -> bool:
    """A build triggered while Jenkins holds it back, parked before any pod was made (the
    provision, under the build's lease: workers.engine.tasks): the pass resumes it like any parked
    build. False if the build ended meanwhile."""
    rt.capacity.remove_waiting(key)  # a waiting build re-driven now waits in Jenkins instead
    if not rt.state.advance_build(key, status=BuildStatus.TRIGGERED, wait_reason=None,
                                  **{FIELD: now, "wait_detail": why}):
        return False
    # One provisioned again (its pod gone: drained, re-placed after a connect timeout) holds
    # the reservation and slot of its first pod: given back, as _park does, for the whole
    # quiet down (workers.engine.caps: no slot is held by a build with no pod)
    rt.capacity.release(key)
    caps.free(rt, key)
    commit_statuses.touch(rt.state, key)
    log.warning("Jenkins holds the build back: it is triggered, its agent pod made once it "
                "lets it go", extra={"build_key": key, "jenkins": why})
    return True


def _resume(rt: runtime.Runtime, key: str, build: dict[str, str]) -> int:
    rt.state.update_build(key, **{FIELD: None, "wait_detail": None})
    tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(build["request"])))
    commit_statuses.touch(rt.state, key)
    log.info("Jenkins lets the build go: its agent pod is made again",
             extra={"build_key": key, "agent": build.get("agent", "")})
    return 1
