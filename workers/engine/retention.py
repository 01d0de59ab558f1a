"""Pods of failed builds kept for debugging (a template's `podRetention: onFailure`).

When Jenkins reports such a build finished with a failing result (its COMPLETED, or Jenkins'
API when the reconcile pass finds the build ended unnotified), release_agent deletes its
Jenkins node but keeps its pod (status `retained`; only a pod there, on a node: _on_a_node)
for the template's podRetentionSeconds, labelled RETAINED_LABEL (by the reconcile pass if
not then: label_kept); the reconcile pass deletes it once that time is over. The pod stays a
real pod meanwhile, so its requests keep counting against its node; it holds no agent slot
(caps), since its build is over.

Key (under the prefix): ``retained``  sorted set: build key by the time its pod goes.
"""

import logging
import time

from workers import runtime
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.core.errors import CIAutoscalerError
from workers.core.pods import RETAINED, RETAINED_LABEL
from workers.core.ports import PodInfo
from workers.core.stages import Stage
from workers.telemetry.metrics import EngineMetrics
from workers.stage_timings import ledger

log = logging.getLogger("ci_autoscaler.retention")
# Jenkins results that count as a failed build (not SUCCESS, and known).
FAILED_RESULTS = frozenset({"FAILURE", "UNSTABLE", "ABORTED"})
# Releases of a build Jenkins ended: told by its COMPLETED, or found by the reconcile pass
# when that notification was lost (workers.engine.repairs.finish_lost_builds, which records
# the run's result first: workers.engine.lost_runs.record_end)
ENDED_REASONS = frozenset({"build_completed", "build_finished"})
RETENTION_EXPIRED = "retention_expired"


def _key(rt: runtime.Runtime) -> str:
    return rt.state.prefix + "retained"


def keep(rt: runtime.Runtime, build_key: str, reason: str, now: float | None = None, *,
         agent: str | None = None) -> bool:
    """Whether this build's pod (`agent`, by default the build's) is to be kept now that its
    build ended; if so it is put on the retention list, until its template's
    podRetentionSeconds from now."""
    state = rt.state.get_build(build_key)
    template = rt.config.templates.get(state.get("template", ""))
    if template is None or template.pod_retention != "onFailure" \
            or reason not in ENDED_REASONS or state.get("result") not in FAILED_RESULTS \
            or state.get("fail_reason"):  # its agent never started: the pod is gone already
        return False
    if not _on_a_node(rt, agent or state.get("agent", "")):
        return False
    until = (time.time() if now is None else now) + template.pod_retention_seconds
    rt.state.redis.zadd(_key(rt), {build_key: until})
    rt.state.update_build(build_key, retained_until=until)
    _label(rt, build_key, agent or state.get("agent", ""))
    log.info("keeping the pod of a failed build for debugging",
             extra={"build_key": build_key, "agent": state.get("agent"),
                    "result": state.get("result"), "seconds": template.pod_retention_seconds})
    return True


def _label(rt: runtime.Runtime, build_key: str, agent: str) -> bool:
    """The kept pod labelled so (RETAINED_LABEL): it runs no build, and is no sample of what
    its template's builds use (workers.adapters.kube_objects.agent_usage); its agent's JVM
    waits to reconnect to a Jenkins node deleted, using next to nothing. A patch that fails
    is logged: the pod is kept all the same, and the reconcile pass tries again
    (label_kept). Whether it was labelled."""
    try:
        return rt.cluster.patch_pod_metadata(agent, labels={RETAINED_LABEL: RETAINED},
                                             annotations={})
    except CIAutoscalerError as err:
        log.warning("kept pod not labelled retained", extra={
            "build_key": build_key, "agent": agent, "error": str(err)})
        return False


def label_kept(rt: runtime.Runtime, pods: list[PodInfo]) -> int:
    """The kept pods of this listing without RETAINED_LABEL labelled (reconcile pass): those
    a release before the label kept (an upgrade within their podRetentionSeconds), and any
    whose patch failed when kept; until their time was over, each was read as a sample of
    what its template's builds use, every metrics-server scrape a new one. How many."""
    retained = sorted(kept(rt))
    if not retained:
        return 0
    # by its build's agent: a claimed warm agent's pod is labelled with its own name
    keys = {agent: key for key, (agent,) in zip(retained, rt.state.build_fields(retained,
                                                                               "agent"))
            if agent}
    return sum(_label(rt, keys[pod.name], pod.name) for pod in pods
               if pod.name in keys and not pod.deleting
               and pod.labels.get(RETAINED_LABEL) != RETAINED)


def _on_a_node(rt: runtime.Runtime, agent: str) -> bool:
    """Whether the agent's pod is there to keep (one read): not gone, nor being deleted (a
    drained pod: the reconcile pass releases its build as `build_finished` when Jenkins
    ended it, and shown `retained` for the retention time, an operator looked for a pod that
    was not there), and taken by a node (a build aborted while its pod waited for one: nothing
    ran there, and kept Pending, a cluster autoscaler would add a node for it)."""
    pod = rt.cluster.get_pod(agent) if agent else None
    return pod is not None and not pod.deleting and bool(pod.node)


def kept(rt: runtime.Runtime) -> set[str]:
    """The build keys whose pod is kept now (one read)."""
    return {k.decode() if isinstance(k, bytes) else k
            for k in rt.state.redis.zrange(_key(rt), 0, -1)}


def delete_expired(rt: runtime.Runtime, now: float) -> int:
    """Delete the retained pods whose time is over (reconcile pass)."""
    due = [k.decode() if isinstance(k, bytes) else k
           for k in rt.state.redis.zrangebyscore(_key(rt), "-inf", now)]
    for key in due:
        run_bound.checkpoint()  # the pass may end before this build
        state = rt.state.get_build(key)
        if state.get("agent") and rt.cluster.delete_pod(state["agent"]):
            EngineMetrics(rt.state.redis, prefix=rt.state.prefix).agent_deleted(
                state.get("template", "unknown"), RETENTION_EXPIRED)
            ledger.record(rt.state, key, Stage.DELETED)  # in the record; not observed (kept)
        rt.state.update_build(key, status=BuildStatus.RELEASED, released_at=now)
        rt.state.redis.zrem(_key(rt), key)
        log.info("retained pod deleted", extra={"build_key": key, "agent": state.get("agent")})
    return len(due)
