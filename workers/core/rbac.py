"""The Kubernetes rights the worker and the reconcile loop use, as data: the same list as the
chart's Role (in the agent namespace) and ClusterRole (helm/ci-autoscaler/templates/role.yaml
and clusterrole.yaml; a test holds the two equal), so `check-config --live` asks the API
server about exactly what the chart grants. Pure.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Right:
    """A verb on a resource ("pods", "pods/log") of an API group ("" for the core group):
    in the agent namespace (`namespaced`), or cluster-wide; `agent_namespace_only` for a
    cluster-scoped right granted on the agent namespace object alone (resourceNames)."""

    group: str
    resource: str
    verb: str
    namespaced: bool = False
    agent_namespace_only: bool = False

    def __str__(self) -> str:
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{self.verb} {resource}"


def _rights(group: str, resources: tuple[str, ...], verbs: tuple[str, ...],
            **scope: bool) -> tuple[Right, ...]:
    return tuple(Right(group, r, v, **scope) for r in resources for v in verbs)


# role.yaml: the agent pods (create, read, watch, delete; a claimed warm agent's labels and
# annotations patched, workers.warm.protect; a kept failed build's label, workers.engine.
# retention), their logs, each agent's own
# Secret (its JENKINS_SECRET; patched to be owned by its pod; never listed or watched), and
# the claims templates mount (read for their volume's node affinity), and the namespace's
# LimitRanges (listed for their default limits, core.limit_ranges).
AGENT_NAMESPACE_RIGHTS = (
    *_rights("", ("pods",), ("create", "get", "list", "watch", "patch", "delete"),
             namespaced=True),
    *_rights("", ("pods/log",), ("get",), namespaced=True),
    *_rights("", ("secrets",), ("create", "get", "patch", "delete"), namespaced=True),
    *_rights("", ("persistentvolumeclaims",), ("get",), namespaced=True),
    *_rights("", ("limitranges",), ("list",), namespaced=True),
)
# clusterrole.yaml: nodes and their usage, every pod's requests (placement counts pods that
# are not ours), the agent namespace itself (its Pod Security level), and persistent volumes
# (read: the node affinity of the volumes bound to templates' claims), and RuntimeClasses (read:
# what a template's runtimeClassName adds to its pods, core.runtime_class).
CLUSTER_RIGHTS = (
    *_rights("", ("nodes",), ("get", "list", "watch")),
    *_rights("metrics.k8s.io", ("nodes", "pods"), ("get", "list")),
    *_rights("", ("pods",), ("get", "list", "watch")),
    *_rights("", ("namespaces",), ("get",), agent_namespace_only=True),
    *_rights("", ("persistentvolumes",), ("get",)),
    *_rights("node.k8s.io", ("runtimeclasses",), ("get",)),
)
RIGHTS = AGENT_NAMESPACE_RIGHTS + CLUSTER_RIGHTS
