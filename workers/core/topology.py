"""Where a template's claims let its pods run: a bound PersistentVolume's required node
affinity (a zonal disk: topology.kubernetes.io/zone In [eu-west-1a]; a local volume: one
hostname), which kube-scheduler's VolumeBinding filter enforces. Nodes that do not match are
left out of the build's placement, as if they did not match its nodeSelector. Pure: claim
names from a template, and node selector terms evaluated on a node."""

from collections.abc import Mapping, Sequence
from typing import Any

from workers.core.cluster import NodeState
from workers.core.models import PodTemplate
from workers.core.volumes import CLAIM_SOURCE

Terms = Sequence[Mapping[str, Any]]  # nodeSelectorTerms, as in a PersistentVolume


def claim_names(template: PodTemplate) -> tuple[str, ...]:
    """Every claim the template's pods mount: workspace, volumes, podSpecPatch volumes."""
    sources = [template.workspace_source.get(CLAIM_SOURCE)]
    sources += [v.source.get(CLAIM_SOURCE) for v in template.volumes]
    sources += [v.get(CLAIM_SOURCE) for v in template.pod_spec_patch.get("volumes") or []
                if isinstance(v, Mapping)]
    return tuple(sorted({s["claimName"] for s in sources
                         if isinstance(s, Mapping) and s.get("claimName")}))


def _requirement(node: NodeState, req: Mapping[str, Any], field: bool) -> bool:
    """One matchExpressions (or matchFields, on metadata.name) requirement (k8s.io/component-
    helpers/scheduling/corev1/nodeaffinity: In, NotIn, Exists, DoesNotExist, Gt, Lt)."""
    key, op, values = req.get("key", ""), req.get("operator", ""), req.get("values") or []
    if field:
        value = node.name if key == "metadata.name" else None
    else:
        value = node.labels.get(key)
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and values:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def matches(node: NodeState, terms: Terms) -> bool:
    """Whether the node matches nodeSelectorTerms: any one term, all of its requirements; a
    term with no requirement matches nothing (as the API server reads it)."""
    for term in terms:
        exprs, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
        if (exprs or fields) and all(_requirement(node, r, False) for r in exprs) \
                and all(_requirement(node, r, True) for r in fields):
            return True
    return False


def off_volume_nodes(nodes: Sequence[NodeState], constraints: Sequence[Terms]) -> frozenset[str]:
    """The nodes that fail any claim's node affinity: where the build's pod cannot go."""
    if not constraints:
        return frozenset()
    return frozenset(n.name for n in nodes if not all(matches(n, t) for t in constraints))
