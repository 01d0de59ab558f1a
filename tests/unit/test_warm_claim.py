"""Which warm agent a build may take, and the size agents are made at (issue 22's parity with
the simulator's strategy e): pure rules of workers.core.warm_claim."""

from hypothesis import given
from hypothesis import strategies as st

from workers.core.cluster import NodeState, Taint
from workers.core.cluster import Resources as R
from workers.core.models import PodTemplate, Toleration
from workers.core.recommend import Recommendation, SizeSource, with_default
from workers.core.warm_claim import (Candidate, Want, agent_size, claim_order, claimable_on,
                                     covers, load_after, wanted)

GI, MI = 2**30, 2**20


def _template() -> PodTemplate:
    return PodTemplate.model_validate({"cpu": {"min": "500m", "default": "1", "max": "2"},
                                       "memory": {"min": "512Mi", "default": "1Gi",
                                                  "max": "4Gi"}})


def test_a_build_with_no_history_or_hint_wants_the_templates_max_memory():
    template = _template()
    assert wanted(template, template) == Want(R(1000, 4 * GI), cpu=False)


@given(st.integers(min_value=1 * GI, max_value=8 * GI))
def test_an_agent_made_at_what_the_biggest_node_holds_covers_a_build_with_no_history(node):
    """The pool makes its agents at the template's max, no more than a node holds
    (agent_size); a build with neither a hint nor a history wants the same, so it takes one.
    Wanting the max that no node holds, it missed every such agent."""
    template = _template()
    largest = R(4000, node)
    agent = agent_size(template, [], largest)
    want = wanted(template, template, largest=largest)
    assert covers(agent, want)
    assert want.size.memory_bytes == min(4 * GI, max(512 * MI, node - 256 * MI))


def test_a_build_sized_from_history_wants_its_history_size_and_a_hint_its_cpu_too():
    template = _template()
    history = with_default(template, Recommendation(1500, 768 * MI, SizeSource.HISTORY, 5))
    assert wanted(template, history) == Want(R(1500, 768 * MI), cpu=False)
    assert wanted(template, history, hinted=True) == Want(R(1500, 768 * MI), cpu=True)


def test_a_bigger_agent_is_taken_a_smaller_one_is_not():
    want = Want(R(1000, 2 * GI))
    assert covers(R(1000, 2 * GI), want)
    assert covers(R(1000, 4 * GI), want)  # bigger: the build runs as with headroom
    assert not covers(R(1000, 2 * GI - 1), want)  # too small: it could be OOM-killed
    # CPU is compressible: a history build on an agent with fewer cores runs, slower
    assert covers(R(500, 2 * GI), want)


def test_a_hint_takes_only_an_agent_that_covers_its_cpu_and_memory():
    want = Want(R(2000, 2 * GI), cpu=True)
    assert covers(R(2000, 2 * GI), want) and covers(R(4000, 8 * GI), want)
    assert not covers(R(1000, 8 * GI), want)
    assert not covers(R(4000, GI), want)


def test_a_build_takes_the_covering_agent_whose_node_has_most_room_then_the_oldest():
    idle = [Candidate("old-busy", R(1000, 4 * GI), since=1.0, load=0.9),
            Candidate("small", R(1000, GI), since=0.0, load=0.1),  # does not cover
            Candidate("new-free", R(1000, 4 * GI), since=3.0, load=0.2),
            Candidate("mid-free", R(1000, 4 * GI), since=2.0, load=0.2)]
    assert claim_order(idle, Want(R(1000, 2 * GI))) == ("mid-free", "new-free", "old-busy")
    # no load known: the oldest first
    unknown = [Candidate(c.name, c.size, c.since) for c in idle]
    assert claim_order(unknown, Want(R(1000, 2 * GI))) == ("old-busy", "mid-free", "new-free")
    # nothing covers it: it goes the normal way
    assert claim_order(idle, Want(R(1000, 8 * GI))) == ()


@given(st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8), st.floats(0, 2)), max_size=8),
       st.integers(1, 8), st.integers(1, 8), st.booleans())
def test_a_claim_never_offers_an_agent_too_small_for_the_build(agents, cpu, memory, hinted):
    idle = [Candidate(f"a{i}", R(c * 500, m * GI), float(i), load)
            for i, (c, m, load) in enumerate(agents)]
    want = Want(R(cpu * 500, memory * GI), cpu=hinted)
    order = claim_order(idle, want)
    by_name = {c.name: c for c in idle}
    assert all(by_name[n].size.memory_bytes >= want.size.memory_bytes for n in order)
    assert all(by_name[n].size.cpu_millis >= want.size.cpu_millis for n in order) or not hinted
    assert set(order) == {c.name for c in idle if covers(c.size, want)}


def test_no_agent_is_claimed_on_a_node_cordoned_or_being_removed_by_an_autoscaler():
    template = _template()
    node = NodeState("node-a", R(8000, 32 * GI))
    assert claimable_on(node, template)
    # Cluster Autoscaler removing it (the value: when it tainted it), Karpenter disrupting it
    for taint in (Taint("ToBeDeletedByClusterAutoscaler", "NoSchedule", "1765000000"),
                  Taint("karpenter.sh/disrupted", "NoSchedule")):
        assert not claimable_on(NodeState("node-a", R(8000, 32 * GI), taints=(taint,)),
                                template)
    # a drain or a node upgrade cordons it first; a NotReady node neither
    assert not claimable_on(NodeState("node-a", R(8000, 32 * GI), unschedulable=True), template)
    assert not claimable_on(NodeState("node-a", R(8000, 32 * GI), ready=False), template)
    # a taint the template does not tolerate keeps its builds off as placement does
    assert not claimable_on(NodeState("node-a", R(8000, 32 * GI),
                                      taints=(Taint("dedicated", "NoSchedule", "gpu"),)), template)
    # a node Cluster Autoscaler may remove later: PreferNoSchedule, nothing evicted yet
    soft = Taint("DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule", "1765000000")
    assert claimable_on(NodeState("node-a", R(8000, 32 * GI), taints=(soft,)), template)
    # the node goes whatever the agent tolerates: a template tolerating every taint too
    tolerant = template.model_copy(update={"tolerations": (Toleration(operator="Exists"),)})
    removed = NodeState("node-a", R(8000, 32 * GI),
                        taints=(Taint("ToBeDeletedByClusterAutoscaler", "NoSchedule", "1"),))
    assert not claimable_on(removed, tolerant)


def _template_fixed(template):
    from workers.core.podsize import fixed
    return fixed(template)


def test_agents_are_made_at_the_most_memory_a_recent_build_wanted():
    template = _template()
    # none arrived lately: what a build with no hint and no history wants, the max memory
    assert agent_size(template, []) == R(1000, 4 * GI)
    assert agent_size(template, [R(1500, 768 * MI), R(500, 3 * GI), R(1000, 2 * GI)]) == \
        R(1000, 3 * GI)  # CPU stays the template's default
    assert agent_size(template, [R(1000, 600 * MI)]) == R(1000, 600 * MI)  # smaller is fine
    assert agent_size(template, [R(1000, 64 * GI)]) == R(1000, 4 * GI)  # within max
    # never more than the pod may have on the biggest node it may use (here 3Gi of 4Gi
    # allocatable once the injected agent's requests are counted, if any): bigger fits nowhere
    room = R(4000, 3 * GI) + _template_fixed(template)
    assert agent_size(template, [], room) == R(1000, 3 * GI)
    assert agent_size(template, [R(1000, 2 * GI)], room) == R(1000, 2 * GI)


def test_load_after_is_the_larger_share_by_use_of_cpu_and_memory():
    assert load_after(R(4000, 16 * GI), R(2000, 4 * GI), R(1000, 0)) == 0.75
    assert load_after(R(4000, 16 * GI), R(4000, 16 * GI), R()) == 0.0
