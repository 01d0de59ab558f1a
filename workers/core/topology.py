"""Where a template's claims let its pods run: a bound PersistentVolume's required node
affinity (a zonal disk: topology.kubernetes.io/zone In [eu-west-1a]; a local volume: one
hostname), which kube-scheduler's VolumeBinding filter enforces. Nodes that do not match are
left out of the build's placement, as if they did not match its nodeSelector. Pure: claim
names from a template, and node selector terms evaluated on a node."""

from collections.abc import Mapping, Sequence

from workers.core.cluster import NodeState
from workers.core.models import PodTemplate
from workers.core.node_affinity import Terms, matches
from workers.core.volumes import CLAIM_SOURCE


def claim_names(template: PodTemplate) -> tuple[str, ...]:
    """Every claim the template's pods mount: workspace, volumes, podSpecPatch volumes."""
    sources = [template.workspace_source.get(CLAIM_SOURCE)]
    sources += [v.source.get(CLAIM_SOURCE) for v in template.volumes]
    sources += [v.get(CLAIM_SOURCE) for v in template.pod_spec_patch.get("volumes") or []
                if isinstance(v, Mapping)]
    return tuple(sorted({s["claimName"] for s in sources
                         if isinstance(s, Mapping) and s.get("claimName")}))


def off_volume_nodes(nodes: Sequence[NodeState], constraints: Sequence[Terms]) -> frozenset[str]:
    """The nodes that fail any claim's node affinity: where the build's pod cannot go."""
    if not constraints:
        return frozenset()
    return frozenset(n.name for n in nodes if not all(matches(n, t) for t in constraints))
