"""Which scale-up pods to make and delete (workers.core.scale_up), and which waits a node
would end."""

import pytest

from workers.core.keys import AGENT_PREFIX, agent_name
from workers.core.scale_up import Existing, plan, pod_name, wants_node


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
    ("cap", False), ("unschedulable", False), ("", False),
])
def test_only_waits_a_node_would_end_ask_for_one(reason, node_helps):
    assert wants_node(reason) is node_helps
    # nodes left out for the build (refused, never connected): its pause pod would be bound
    # on one of them, which does not take it
    assert wants_node("no_matching_node", excluded=True) is False


def test_their_names_are_never_an_agents():
    """Even the agent of a job called scale-up, of the same build."""
    key = "0123456789abcdef0123"
    assert pod_name(key) != agent_name("scale-up", key)
    assert not pod_name(key).startswith(AGENT_PREFIX + "-")
