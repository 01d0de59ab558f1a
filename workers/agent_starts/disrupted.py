"""A pod Kubernetes stopped before its agent connected is placed again once, not failed.

The kubelet evicting a pod under node pressure, stopping it for a graceful node shutdown (a
spot node's interruption notice) or to admit a critical pod (core.start_failures:
`disrupted`) is no fault of the build, and before its agent connected nothing of the build
ran there: as for a pod drained before its agent connected (workers.engine.repairs.restart_stalled),
it is provisioned again, under a new agent name on the label its queue item waits on
(workers.engine.agent_names), with that node excluded (the node was short of memory, or is going).
Once only: a second stop of the build's pod fails it as a start failure, as every stop did
before (a job whose start alone drives its node into memory pressure would be evicted on
every node, and its push is better failed, visibly, than placed for ever). Runs under the
build's provision lease (workers.engine.failures.fail_build).
"""

import logging

from workers import runtime
from workers.adapters.redis_state import START_FAILURE
from workers.engine import agent_names, tasks
from workers.core.start_failures import StartFailure

log = logging.getLogger("ci_autoscaler.agent_starts.disrupted")
REPLACEMENTS = 1  # placements again after a disruption before the build fails
FIELD = "disruption_replacements"
DELETED = "disrupted"  # why the pod was deleted (ci_autoscaler_agents_deleted_total)
# the agent whose stopped pod was placed again: a later sight of that same pod is no new stop
AGENT_FIELD = "disruption_replaced_agent"


def replaced(state: dict[str, str], agent: str) -> bool:
    """Whether this agent's pod is one already placed again (its next provision, which gives
    the build a new agent name, may not have run yet). The reconcile pass's listing, taken
    before, still shows it Failed; a worker's watch that lagged, or a fail queued before, is
    still to act on it: taken for a second stop, it failed the build; released by the pass's
    stray pods repair as a pod that ended, the build was marked released, so its next
    provision made no pod and its Jenkins queue item waited for ever."""
    return bool(agent) and state.get(AGENT_FIELD) == agent


def place_again(rt: runtime.Runtime, key: str, agent: str, state: dict[str, str],
                failure: StartFailure) -> bool:
    """Delete the stopped pod and its Jenkins node and mark the build for its next provision
    (which the caller queues once the lease is released); False when it is not to be placed
    again: not a disruption, placed again once already, no request kept, a claimed warm
    agent, or its agent runs a build after all."""
    done = int(state.get(FIELD) or 0)
    if not failure.disrupted or done >= REPLACEMENTS or not state.get("request") \
            or state.get("warm_agent"):  # a claimed warm agent's: workers.warm.lost's rules
        return False
    if agent_names.busy(rt, agent, context={"build_key": key}):
        return False  # connected and took work since: not before its agent connected
    # The node that stopped it is the one its pod is bound to (spec.nodeName): kube-scheduler
    # may have bound it to another of the placement's candidates than the record's `node`
    # (workers.core.placement.alternates), and with that one left out instead, the build
    # went back to the node that had refused it, and its second stop failed it.
    pod = rt.cluster.get_pod(agent)
    node = (pod.node if pod is not None else None) or state.get("node") or ""
    rt.jenkins.delete_node(agent)
    if rt.cluster.delete_pod(agent):
        tasks.engine_metrics(rt).agent_deleted(state.get("template", "unknown"), DELETED)
    rt.capacity.release(key)
    excluded = {n for n in (state.get("excluded_nodes") or "").split(",") if n} | {node}
    rt.state.update_build(key, **{FIELD: done + 1, AGENT_FIELD: agent},
                          excluded_nodes=",".join(sorted(n for n in excluded if n)),
                          decision=f"agent pod {agent} stopped by Kubernetes before its agent "
                                   f"connected ({failure.detail}): placed again")
    # the build's next pod may be stopped too: its event must queue a fail of its own
    rt.state.redis.delete(rt.state.prefix + START_FAILURE + key)
    log.warning("agent pod stopped by Kubernetes before its agent connected: placed again",
                extra={"build_key": key, "agent": agent, "node": node,
                       "reason": failure.reason, "detail": failure.detail})
    return True
