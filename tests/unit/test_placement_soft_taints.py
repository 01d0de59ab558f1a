"""A node tainted PreferNoSchedule (kubectl taint ... :PreferNoSchedule, Cluster Autoscaler's
DeletionCandidateOfClusterAutoscaler) is used only when no other node takes the build, as
kube-scheduler's TaintToleration score does (placement.avoided): the reference and the index
alike."""

from hypothesis import given, settings, strategies as st

from tests.unit.test_placement_properties import clusters, templates
from workers.core.cluster import NodeState, Resources, Taint
from workers.core.models import PodTemplate
from workers.core.placement import Placement, Wait, alternates, avoided, decide
from workers.core.placement_index import PlacementIndex

GI = 2**30
SHAPE = Resources(4000, 16 * GI)
TEMPLATE = PodTemplate(cpu={"min": "1", "default": "1", "max": "1"},
                       memory={"min": "1Gi", "default": "1Gi", "max": "1Gi"})
# Cluster Autoscaler's soft taint on a node it found unneeded (utils/taints/taints.go: the
# value is when it tainted it)
CANDIDATE = Taint("DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule", "1765000000")


def both(template, nodes, count=0):
    reference = decide(template, nodes)
    index = PlacementIndex()
    index.replace_all(nodes)
    assert index.decide(template) == reference
    if isinstance(reference, Placement) and count:
        reference = alternates(template, nodes, reference, count)
        assert index.alternates(template, index.decide(template), count) == reference
    return reference


def test_an_idle_node_tainted_prefer_no_schedule_is_passed_over_while_another_has_room():
    nodes = [NodeState("a-idle-candidate", SHAPE, taints=(CANDIDATE,)),
             NodeState("b-busy", SHAPE, requested=Resources(2500, 8 * GI)),
             NodeState("c-busier", SHAPE, requested=Resources(2800, 8 * GI))]
    decision = both(TEMPLATE, nodes, count=2)
    assert decision.node == "b-busy"
    # the avoided node comes last among the other candidates too
    assert [name for name, _ in decision.others] == ["c-busier", "a-idle-candidate"]


def test_a_node_tainted_prefer_no_schedule_takes_the_build_when_no_other_can():
    nodes = [NodeState("a-idle-candidate", SHAPE, taints=(CANDIDATE,)),
             NodeState("b-full", SHAPE, requested=Resources(4000, 8 * GI))]
    decision = both(TEMPLATE, nodes)
    assert isinstance(decision, Placement) and decision.node == "a-idle-candidate"
    assert "PreferNoSchedule" in decision.reason
    full = both(TEMPLATE, [nodes[1]])
    assert isinstance(full, Wait)


def test_a_template_tolerating_the_taint_spreads_onto_it_as_before():
    tolerant = PodTemplate(cpu=TEMPLATE.cpu, memory=TEMPLATE.memory, tolerations=[
        {"key": "DeletionCandidateOfClusterAutoscaler", "operator": "Exists",
         "effect": "PreferNoSchedule"}])
    nodes = [NodeState("a-idle-candidate", SHAPE, taints=(CANDIDATE,)),
             NodeState("b-busy", SHAPE, requested=Resources(2500, 8 * GI))]
    assert both(tolerant, nodes).node == "a-idle-candidate"


@settings(max_examples=150, deadline=None)
@given(clusters(), templates(extras_too=True), st.integers(0, 20))
def test_an_avoided_node_is_chosen_only_when_no_other_node_takes_the_build(cluster, template,
                                                                           ahead):
    decision = decide(template, cluster, waiting_ahead=ahead)
    if not isinstance(decision, Placement):
        return
    node = next(n for n in cluster if n.name == decision.node)
    if avoided(node, template):
        others = [n for n in cluster if not avoided(n, template)]
        assert isinstance(decide(template, others, waiting_ahead=ahead), Wait)
        assert "PreferNoSchedule" in decision.reason
    else:  # its other candidates: every one it need not avoid before any it should
        more = alternates(template, cluster, decision, 4)
        flags = [avoided(next(n for n in cluster if n.name == name), template)
                 for name, _ in more.others]
        assert flags == sorted(flags)


def test_many_nodes_to_avoid_are_not_read_one_by_one():
    """Cluster Autoscaler soft-taints every node it finds unneeded, 10 a loop: a third of
    3,000 nodes so tainted, a decision and its candidates read a few nodes, as without them.
    Left out one by one, every decision read each tainted node (1,500 of 5,000: 117 ms)."""
    import random

    from tests.unit.test_placement_index import CountingList
    rng = random.Random(7)
    shapes = [Resources(4000, 16 * GI), Resources(8000, 32 * GI), Resources(16000, 64 * GI)]
    cluster = []
    for i in range(3000):
        alloc = rng.choice(shapes)
        cluster.append(NodeState(
            f"n{i:05d}", alloc, taints=(CANDIDATE,) if i % 3 == 0 else (),
            requested=Resources(rng.randrange(alloc.cpu_millis),
                                rng.randrange(alloc.memory_bytes)),
            usage=Resources(rng.randrange(alloc.cpu_millis), rng.randrange(alloc.memory_bytes))))
    index = PlacementIndex()
    index.replace_all(cluster)
    index.alternates(TEMPLATE, index.decide(TEMPLATE), 2)  # (its classes built)
    index._fc, index._fm = CountingList(index._fc), CountingList(index._fm)
    CountingList.reads = 0
    fast = index.alternates(TEMPLATE, index.decide(TEMPLATE), 2)
    assert CountingList.reads < 150, CountingList.reads  # of ~2,000 nodes to prefer
    reference = decide(TEMPLATE, cluster)
    assert fast == alternates(TEMPLATE, cluster, reference, 2)
    assert not avoided(next(n for n in cluster if n.name == fast.node), TEMPLATE)
