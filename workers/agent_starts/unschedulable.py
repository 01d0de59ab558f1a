"""Pods kube-scheduler refuses: it has the last word, and a build never loops.

An agent pod may go to any of its candidate nodes (required node affinity, ours preferred;
workers.core.pods.candidate_affinity). When the scheduler finds none of them fits (PodScheduled
False, reason Unschedulable) for UNSCHEDULABLE_REPLACE_SECONDS, its message is kept, every
candidate is left out for this build, and the build waits in its turn to be placed again on
other nodes: never on a node it was refused on. After `placement_candidates` refused pods (or
when no other node is left) the build waits as `unschedulable` with the scheduler's message,
on /metrics and in the logs; its last pod is then left Pending to the scheduler, which binds
it when one of its candidates frees up. So a build makes at most that many pods.
"""

import logging

from workers import runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import scheduling, tasks
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.core.placement import WaitReason
from workers.core.pods import BUILD_KEY_LABEL
from workers.core.ports import PodInfo, PodPhase

log = logging.getLogger("ci_autoscaler.unschedulable")
UNSCHEDULABLE_REPLACE_SECONDS = 60
REFUSED = "unschedulable"  # why the agent was deleted (agents_deleted_total{reason})


def handle(rt: runtime.Runtime, now: float, pods: list[PodInfo]) -> int:
    """One pass over our pods: each refused long enough is placed again elsewhere, or its build
    waits as unschedulable; the builds that waited so and whose pod was bound since (or is
    gone) wait no longer. Returns how many pods were deleted to be placed again."""
    by_key = {p.labels.get(BUILD_KEY_LABEL, ""): p for p in pods}
    replaced, again = 0, set()
    nodes: set[str] | None = None
    for key in rt.capacity.unschedulable():
        pod = by_key.get(key)
        if pod is None or pod.node or pod.phase != PodPhase.PENDING:
            rt.capacity.remove_waiting(key)  # bound at last, or gone
            if pod is not None:
                rt.state.update_build(key, wait_reason=None, wait_detail=None)
            continue
        if nodes is None:
            nodes = {n.name for n in rt.view.snapshot()}
        if not pod.deleting and not _candidates(rt.state.get_build(key)) & nodes \
                and _refused(rt, key, pod, nodes_gone=True):
            replaced += 1
            again.add(key)
    held = set(rt.capacity.unschedulable()) | again
    for pod in pods:
        run_bound.checkpoint()  # the pass may end before this build
        if pod.phase != PodPhase.PENDING or pod.unschedulable_since is None or pod.deleting \
                or pod.node:
            continue
        key = pod.labels.get(BUILD_KEY_LABEL, "")
        if key in held or now - pod.unschedulable_since < UNSCHEDULABLE_REPLACE_SECONDS:
            continue
        replaced += _refused(rt, key, pod)
    return replaced


def _candidates(state: dict) -> set[str]:
    """The nodes the build's pod may go to (its required node affinity), as placed."""
    return set(filter(None, (state.get("candidates") or state.get("node") or "").split(",")))


def _refused(rt: runtime.Runtime, key: str, pod: PodInfo, *, nodes_gone: bool = False) -> int:
    """The pod refused on its candidates: placed again on others, or its build held as
    unschedulable after `placement_candidates` tries. `nodes_gone`: a held build whose pod's
    candidates have all left the cluster (a node autoscaler removed them): no scheduler can
    bind it now, so it is placed again on nodes not tried, as a try that does not count
    (only new nodes take it, so this cannot loop)."""
    state = rt.state.get_build(key)
    if not state.get("received_at"):
        return 0
    lease = tasks.provision_lease(rt, key)
    if not lease.acquire():
        return 0  # a provision holds the build: next pass
    try:
        tries = int(state.get("unschedulable_tries") or 0) + (0 if nodes_gone else 1)
        tried = _candidates(state)
        left_out = ",".join(sorted(scheduling.excluded(state) | tried))
        message = state.get("scheduler_message") if nodes_gone else None
        message = message or pod.scheduling_message or "Unschedulable"
        ctx = {"build_key": key, "agent": pod.name, "scheduler_message": message,
               "tried": sorted(tried), "try": tries}
        rt.capacity.release(key)  # its pod is on none of the nodes it was reserved on
        if not nodes_gone and tries >= rt.settings.placement_candidates:
            rt.state.update_build(key, unschedulable_tries=tries, excluded_nodes=left_out,
                                  scheduler_message=message,
                                  wait_reason=WaitReason.UNSCHEDULABLE, wait_detail=message)
            rt.capacity.hold_unschedulable(key)
            log.warning("build waits as unschedulable: kube-scheduler refused its pod on "
                        "every candidate, every try; the pod is left to it", extra=ctx)
            return 0
        if rt.cluster.delete_pod(pod.name):
            tasks.engine_metrics(rt).agent_deleted(state.get("template", "unknown"), REFUSED)
        if nodes_gone:
            rt.capacity.remove_waiting(key)  # held no more: it waits in its turn below
        # Back in the waiting set with its first arrival time: it keeps its turn.
        rt.capacity.add_waiting(key, float(state["received_at"]))
        rt.state.update_build(key, status=BuildStatus.WAITING, unschedulable_tries=tries,
                              excluded_nodes=left_out, scheduler_message=message,
                              wait_reason=WaitReason.UNSCHEDULABLE, wait_detail=message)
        log.warning("pod unschedulable: placing it again, not on the nodes tried"
                    if not nodes_gone else "pod unschedulable and every node it may go to is "
                    "gone from the cluster: placing it again, not on the nodes tried",
                    extra=ctx)
        return 1
    finally:  # once Redis answers: a raise replaced the pass's count
        let_go(lease, what=f"unschedulable {key}")
