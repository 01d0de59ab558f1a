"""Which scale-up pods to make and delete (workers.core.scale_up), and which waits a node
would end."""

from dataclasses import replace

import pytest

from workers.core.cluster import NodeState, Resources, Taint
from workers.core.keys import AGENT_PREFIX, agent_name
from workers.core.models import PodTemplate
from workers.core import runtime_class
from workers.core.scale_up import (Existing, binds_pause_pod, manifest, plan, pod_name,
                                   wants_node)

BIG = Resources(8000, 32 * 2**30)


def existing(key, bound=False):
    return Existing(pod_name(key), key, bound)


def test_each_waiting_build_gets_one_and_those_no_longer_waiting_lose_theirs():
    decided = plan(["a", "b", "c"], [existing("a"), existing("gone")], limit=10)
    assert decided.create == ("b", "c")
    assert decided.delete == (pod_name("gone"),)
    assert decided.bound == 0


def test_a_bound_one_is_deleted_and_not_made_again_in_the_same_pass():
    decided = plan(["a", "b"], [existing("a", bound=True), existing("b")], limit=10)
    assert decided.delete == (pod_name("a"),) and decided.create == ()
    assert decided.bound == 1


def test_at_most_the_limit_for_the_builds_waiting_longest():
    decided = plan(["a", "b", "c", "d"], [existing("d")], limit=2)
    assert decided.create == ("a", "b")
    assert decided.delete == (pod_name("d"),)  # beyond the limit: the longest waiting first


@pytest.mark.parametrize("reason, node_helps", [
    ("insufficient_cpu", True), ("insufficient_memory", True), ("insufficient_pods", True),
    ("insufficient_nvidia.com/gpu", True), ("host_ports", True),
    ("no_matching_node", True),  # its node group at zero: a node of it is what it needs
    ("unschedulable", True),  # waiting: refused, and no node is left (its group at zero)
    ("cap", False), ("", False),
])
def test_only_waits_a_node_would_end_ask_for_one(reason, node_helps):
    assert wants_node(reason) is node_helps
    # a node its pause pod would be bound on, which does not take the build
    assert wants_node("no_matching_node", in_vain=True) is False
    assert wants_node("unschedulable", in_vain=True) is False


def test_a_pause_pod_is_bound_where_the_scheduler_lets_it_not_where_placement_would():
    """The scheduler binds it on a node placement refuses the build (cordoned, NotReady or
    left out, when the template tolerates every taint): a no_matching_node build's pause pod
    would be bound there, deleted and made again each pass, and no node ever added."""
    ci = PodTemplate.model_validate({"nodeSelector": {"pool": "ci"},
                                     "tolerations": [{"operator": "Exists"}]})
    picky = ci.model_copy(update={"tolerations": []})
    node = NodeState("n", BIG, labels={"pool": "ci"})
    assert binds_pause_pod(node, ci) and binds_pause_pod(node, picky)
    assert not binds_pause_pod(NodeState("n", BIG, labels={"pool": "gpu"}), ci)
    for state in ({"unschedulable": True}, {"ready": False},
                  {"taints": (Taint("ToBeDeletedByClusterAutoscaler", "NoSchedule", "1"),)}):
        gone_bad = replace(node, **state)
        assert binds_pause_pod(gone_bad, ci) and not binds_pause_pod(gone_bad, picky)
    gpu = ci.model_copy(update={"resources": {"nvidia.com/gpu": 1}})
    assert not binds_pause_pod(node, gpu)


def test_their_names_are_never_an_agents():
    """Even the agent of a job called scale-up, of the same build."""
    key = "0123456789abcdef0123"
    assert pod_name(key) != agent_name("scale-up", key)
    assert not pod_name(key).startswith(AGENT_PREFIX + "-")


def test_a_runtime_class_template_s_pause_pod_names_it_so_admission_adds_its_overhead():
    """The build's pod names the RuntimeClass, and the API server adds its overhead to it
    (core.runtime_class): the pause pod standing in for it names it too, else it asked less
    than the build's pod and an autoscaler could add a node without room for the build."""
    template = PodTemplate.model_validate({"podSpecPatch": {"runtimeClassName": "kata"}})
    admitted = runtime_class.applied(template, {
        "overhead": {"podFixed": {"cpu": "250m", "memory": "160Mi"}},
        "scheduling": {"nodeSelector": {"sandbox": "kata"}}})
    spec = manifest(build_key="k", template_name="t", template=admitted,
                    requests=[Resources(1000, 2**30)])["spec"]
    assert spec["runtimeClassName"] == "kata"
    assert spec["nodeSelector"] == {"sandbox": "kata"}
    assert "overhead" not in spec  # admission sets it; a pod naming it must match exactly
