"""No pod of ours goes to a node a node autoscaler is removing (workers.core.placement.why_not),
whatever it tolerates: the reference and the index alike."""

import pytest

from workers.core.cluster import NodeState, Resources, Taint
from workers.core.models import PodTemplate
from workers.core.placement import Placement, Wait, decide, why_not
from workers.core.placement_index import PlacementIndex
from workers.core.warm_claim import claimable_on

GI = 2**30
BIG = Resources(16000, 64 * GI)
TOLERATES_ALL = PodTemplate(cpu={"min": "500m", "default": "500m", "max": "500m"},
                            memory={"min": "512Mi", "default": "512Mi", "max": "512Mi"},
                            tolerations=[{"operator": "Exists"}])
# Cluster Autoscaler's ToBeDeletedTaint (utils/taints/taints.go: value the time it tainted),
# Karpenter v1's DisruptedTaint (pkg/apis/v1/taints.go: no value), and the one Karpenter
# v0.32-v0.37 puts (v1beta1 DisruptionNoScheduleTaint, pkg/apis/v1beta1/taints.go:
# karpenter.sh/disruption=disrupting); all NoSchedule.
REMOVING = [Taint("ToBeDeletedByClusterAutoscaler", "NoSchedule", "1765000000"),
            Taint("karpenter.sh/disrupted", "NoSchedule"),
            Taint("karpenter.sh/disruption", "NoSchedule", "disrupting")]


def both(template, nodes):
    reference = decide(template, nodes)
    index = PlacementIndex()
    index.replace_all(nodes)
    assert index.decide(template) == reference
    return reference


@pytest.mark.parametrize("taint", REMOVING, ids=lambda t: t.key)
def test_a_template_that_tolerates_every_taint_is_not_placed_on_a_node_being_removed(taint):
    removed = NodeState("a-removed", BIG, taints=(taint,))  # the idlest
    busy = NodeState("b-busy", BIG, requested=Resources(8000, 16 * GI))
    assert why_not(removed, TOLERATES_ALL) == "being removed by a node autoscaler"
    assert not claimable_on(removed, TOLERATES_ALL)
    decision = both(TOLERATES_ALL, [removed, busy])
    assert isinstance(decision, Placement) and decision.node == "b-busy"
    assert decision.others == ()
    alone = both(TOLERATES_ALL, [removed])
    assert isinstance(alone, Wait) and alone.reason == "no_matching_node"


def test_a_node_cluster_autoscaler_may_remove_later_still_takes_pods():
    """DeletionCandidateOfClusterAutoscaler is PreferNoSchedule: nothing is evicted yet."""
    later = NodeState("a", BIG, taints=(Taint("DeletionCandidateOfClusterAutoscaler",
                                              "PreferNoSchedule", "1765000000"),))
    assert why_not(later, TOLERATES_ALL) is None
    assert both(TOLERATES_ALL, [later]).node == "a"
