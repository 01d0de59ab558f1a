"""A pod of ours stuck Terminating, and when it may be force-deleted. Pure.

A DELETE of a running pod only marks it: the API server sets its deletionTimestamp to the
time of the request plus its grace period (terminationGracePeriodSeconds, 30 s by default)
and keeps the object until the kubelet of its node confirms the containers stopped (apiserver
pkg/registry/rest/delete.go BeforeDelete; Kubernetes docs, "Pod Lifecycle", Termination of
Pods). A node that cannot be reached (kubelet down, network partition, a VM gone while its
Node object stays) never confirms: the pod stays Terminating for ever, and the pod GC deletes
it only once the Node object goes, or once an operator taints the node
node.kubernetes.io/out-of-service (Kubernetes docs, "Nodes", Non-graceful node shutdown). The
node lifecycle controller's evictions from such a node (after tolerationSeconds, 300 s) end
the same way. Meanwhile the build's next pod, which takes the same name, cannot be made.

Such a pod of ours is force-deleted (gracePeriodSeconds=0, what `kubectl delete pod --force
--grace-period=0` sends) once its grace period ended STUCK_MARGIN_SECONDS ago and its node is
gone or not Ready: its containers cannot be reached anyway. On a Ready node the kubelet is
stopping it, so it is waited for, however long that takes.
"""

from enum import StrEnum

from workers.core.cluster import NodeState
from workers.core.ports import PodInfo

# After the grace period has ended; more than the node controller needs to mark a node that
# stopped posting its status NotReady (node-monitor-grace-period: 40 s, 50 s since 1.32), and
# room for clock skew (the deletionTimestamp is the API server's clock).
STUCK_MARGIN_SECONDS = 60.0


class Stuck(StrEnum):
    """Why a Terminating pod is stuck: its node."""

    NODE_NOT_READY = "node_not_ready"
    NODE_GONE = "node_gone"


def stuck(pod: PodInfo, nodes: dict[str, NodeState], now: float,
          margin: float = STUCK_MARGIN_SECONDS) -> Stuck | None:
    """Whether `pod` (ours, as read from the API) is stuck Terminating and may be force-deleted;
    `nodes`: the cluster's nodes by name."""
    if not pod.deleting or pod.deletion_due is None or not pod.node \
            or now < pod.deletion_due + margin:
        return None
    node = nodes.get(pod.node)
    if node is None:
        return Stuck.NODE_GONE
    return None if node.ready else Stuck.NODE_NOT_READY
