"""A NoExecute taint a template tolerates with tolerationSeconds shorter than its
activeDeadlineSeconds keeps its builds off the node (placement.why_not), the reference and
the index alike: kube-scheduler binds the pod there, and the taint eviction controller evicts
it once the seconds of the first toleration in the pod's list that tolerates the taint are
up (pkg/controller/tainteviction GetMatchingTolerations, getMinTolerationTime: 0 or less is
at once; Kubernetes docs, "Taints and Tolerations", NoExecute)."""

from workers.core.cluster import NodeState, Resources, Taint
from workers.core.models import PodTemplate, Toleration
from workers.core.placement import Placement, Wait, decide, why_not
from workers.core.placement_index import PlacementIndex
from workers.core.tolerations import evicted_after

GI = 2**30
SHAPE = Resources(4000, 16 * GI)
DRAIN = Taint("ci.example.com/draining", "NoExecute", "true")


def template(*tolerations: Toleration, deadline: int = 3600) -> PodTemplate:
    return PodTemplate(cpu={"min": "1", "default": "1", "max": "1"},
                       memory={"min": "1Gi", "default": "1Gi", "max": "1Gi"},
                       tolerations=tolerations, active_deadline_seconds=deadline)


def seconds(n: int | None, key: str | None = DRAIN.key) -> Toleration:
    return Toleration(key=key, operator="Exists", effect="NoExecute", toleration_seconds=n)


NODES = [NodeState("a-draining", SHAPE, taints=(DRAIN,)),
         NodeState("b-busy", SHAPE, requested=Resources(2500, 8 * GI))]


def both(t: PodTemplate, nodes=NODES):
    reference = decide(t, nodes)
    index = PlacementIndex()
    index.replace_all(nodes)
    assert index.decide(t) == reference
    return reference


def test_a_toleration_for_fewer_seconds_than_the_deadline_keeps_builds_off_the_node():
    t = template(seconds(600))
    assert "tolerated for 600s only" in why_not(NODES[0], t)
    assert both(t).node == "b-busy"
    # with no other node, the build waits rather than be evicted mid-run
    assert isinstance(both(t, NODES[:1]), Wait)


def test_a_deadline_the_eviction_cannot_come_before_and_a_toleration_without_seconds_go():
    assert both(template(seconds(3600), deadline=1800)).node == "a-draining"
    assert both(template(seconds(None))).node == "a-draining"


def test_the_first_toleration_that_tolerates_the_taint_sets_the_seconds():
    # an Exists-everything toleration after it does not keep the pod there for good
    first = template(seconds(60), Toleration(operator="Exists"))
    assert evicted_after(first.tolerations, DRAIN.key, DRAIN.value) == 60
    assert isinstance(both(first), Placement) and both(first).node == "b-busy"
    # one for another key is passed over; the empty key's, first, keeps it for good
    later = template(seconds(60, key="other"), Toleration(operator="Exists"), seconds(60))
    assert evicted_after(later.tolerations, DRAIN.key, DRAIN.value) is None
    assert both(later).node == "a-draining"
    # negative seconds: evicted at once
    assert evicted_after((seconds(-5),), DRAIN.key, DRAIN.value) == 0


def test_templates_alike_but_for_their_deadline_are_judged_each_by_its_own():
    index = PlacementIndex()
    index.replace_all(NODES)
    short, long = template(seconds(600), deadline=300), template(seconds(600))
    assert index.decide(short).node == "a-draining"
    assert index.decide(long).node == "b-busy"
    assert index.decide(short).node == "a-draining"


def test_a_scale_up_pod_tolerates_no_taint_its_builds_first_toleration_holds_for_short():
    """Its pause pod stands in for the build's pod (core.scale_up): kube-scheduler binds a pod
    where any of its tolerations tolerates each taint. With the short toleration left out
    but the `operator: Exists` after it kept, the pause pod still tolerated the draining
    taint, was bound on the draining node the build may not use (in vain: no node added),
    and the build waited until the old nodes were gone."""
    from workers.core import scale_up
    for t in (template(seconds(60), Toleration(operator="Exists")),
              template(seconds(60), Toleration(key=DRAIN.key, operator="Exists"))):
        assert why_not(NODES[0], t) is not None
        assert not scale_up.binds_pause_pod(NODES[0], t)
        pod = scale_up.manifest(build_key="k" * 20, template_name="small", template=t,
                                requests=[Resources(1000, GI)])
        assert pod["spec"].get("tolerations") is None
    # a toleration for good that no short one comes before still goes with it
    later = template(Toleration(key="gpu", operator="Exists"), seconds(60))
    assert [x.key for x in scale_up.lasting(later)] == ["gpu"]
    # ... and one that follows a short one of another key alone
    other = template(seconds(60), Toleration(key="gpu", operator="Exists"))
    assert [x.key for x in scale_up.lasting(other)] == ["gpu"]
