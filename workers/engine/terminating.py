"""A build's previous pod stuck Terminating on a node that cannot be reached is force-deleted
(workers.core.terminating says when) before the build is placed again. Every path that places
a build again ends in its provision (a retry, warm.lost, restart_stalled, the unschedulable
repair's re-drive), which calls this. Counted in
agents_deleted_total{reason="stuck_terminating"}.

A pod whose agent runs a build in Jenkins is left: its node, cut off from the API server,
still reaches Jenkins, and the build runs there. The agent is taken offline before it is read
(workers.engine.agent_names.busy), as the build's old node is before it is deleted: read first, a
process connecting between the read and the force delete was handed the build's queue item
at once (it waits on that node's label), and the build ran on a pod the API no longer had,
taken for lost. Offline, it is handed nothing; one found running a build is brought back
online and its pod left. (Jenkins refusing the offline, 403 without Agent/Disconnect: an
agent it shows connected, or temporarily offline, is left, as before.)

The old pod's agent process runs on until its node comes back and its kubelet, finding the
pod gone from the API, kills its containers. Until then it may try to connect again, with
the name and secret it has (remoting retries every 10 s). Jenkins' inbound secret is an HMAC
of the agent's name (SlaveComputer.getJnlpMac): a node registered again under that name would
take that process, which would run the build on a node we took for gone while the new pod's
agent is refused ("already connected"). So the build's next agent has a new name and the old
name's node is deleted first (workers.engine.agent_names): the old process is an unknown client.
"""

import logging
import time

from workers import runtime
from workers.engine import agent_names
from workers.core.ports import PodInfo
from workers.core.terminating import stuck
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.terminating")
DELETED = "stuck_terminating"  # agents_deleted_total{reason}


def force_if_stuck(rt: runtime.Runtime, pod: PodInfo, *, build_key: str, template: str,
                   now: float | None = None) -> bool:
    """Force-delete `pod` (ours, being deleted) if it is stuck Terminating; True if it was."""
    now = time.time() if now is None else now
    nodes = {node.name: node for node in rt.view.snapshot()}
    why = stuck(pod, nodes, now)
    if why is None:
        return False
    # Cut off from the control plane, a node may still reach Jenkins: a build its agent runs
    # there runs on. Offline first, then read (module docstring): nothing is handed to a
    # process that connects before the force delete.
    if agent_names.busy(rt, pod.name, context={"build_key": build_key}):
        log.warning("a pod stuck Terminating is left: its agent may still run a build in "
                    "Jenkins", extra={"build_key": build_key, "agent": pod.name,
                                      "node": pod.node, "node_state": str(why)})
        return False
    if not rt.cluster.force_delete_pod(pod.name):
        return False
    EngineMetrics(rt.state.redis, prefix=rt.state.prefix).agent_deleted(template, DELETED)
    log.warning("force-deleted a pod stuck Terminating: its node cannot confirm the deletion",
                extra={"build_key": build_key, "agent": pod.name, "node": pod.node,
                       "node_state": str(why),
                       "overdue_seconds": round(now - (pod.deletion_due or now))})
    return True
