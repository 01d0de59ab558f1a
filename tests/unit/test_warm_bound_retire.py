"""When the pool retires an idle warm agent for its node (workers.core.warm_claim.retire_on):
at once when the node is cordoned, tainted against the template or being removed; for NotReady
only once it has lasted NOT_READY_GRACE_SECONDS (a missed heartbeat comes back). No build
claims one on a NotReady node meanwhile (claimable_on)."""

import pytest

from workers.core.cluster import NodeState, Resources, Taint
from workers.core.models import PodTemplate
from workers.core.warm_claim import NOT_READY_GRACE_SECONDS, claimable_on, retire_on

GI = 2**30
NOW = 1_765_000_000.0
SMALL = PodTemplate(cpu={"min": "500m", "default": "500m", "max": "500m"},
                    memory={"min": "512Mi", "default": "512Mi", "max": "512Mi"})
# What the node lifecycle controller puts on a node it finds not Ready or unreachable
# (pkg/controller/nodelifecycle/node_lifecycle_controller.go)
UNREACHABLE = (Taint("node.kubernetes.io/unreachable", "NoSchedule"),
               Taint("node.kubernetes.io/unreachable", "NoExecute"))


def node(**kw) -> NodeState:
    return NodeState("a", Resources(8000, 32 * GI), **kw)


@pytest.mark.parametrize("seconds, retired", [
    (0, False), (NOT_READY_GRACE_SECONDS - 1, False), (NOT_READY_GRACE_SECONDS, True),
    (600, True)])
def test_a_not_ready_node_keeps_its_agents_for_the_grace_and_takes_no_claim(seconds, retired):
    blip = node(ready=False, not_ready_since=NOW - seconds, taints=UNREACHABLE)
    assert not claimable_on(blip, SMALL)
    assert retire_on(blip, SMALL, NOW) is retired


@pytest.mark.parametrize("other", [
    {"unschedulable": True},
    {"taints": UNREACHABLE + (Taint("dedicated", "NoSchedule", "gpu"),)},
    {"taints": UNREACHABLE + (Taint("ToBeDeletedByClusterAutoscaler", "NoSchedule", "1"),)},
], ids=["cordoned", "tainted", "being-removed"])
def test_a_not_ready_node_closed_for_another_reason_retires_at_once(other):
    closed = node(ready=False, not_ready_since=NOW, **{"taints": UNREACHABLE, **other})
    assert retire_on(closed, SMALL, NOW)


def test_not_ready_since_a_time_not_told_retires_at_once_as_before():
    assert retire_on(node(ready=False), SMALL, NOW)


def test_a_fine_node_retires_nothing():
    assert not retire_on(node(), SMALL, NOW)
