"""An agent that never came online is re-placed with its node left out; with no other node
the template may use at all, its build fails (workers.agent_starts.no_node_left). A node of
the template's own that is closed for now is not "no node": cordoned for a node upgrade
(kubectl drain), NotReady for a kubelet restart, under DiskPressure until the kubelet's image
GC frees room (the kubelet's eviction manager sets and clears it: pkg/kubelet/eviction). The
build waits for it, and is placed there once it opens (placement.closed). Failed, it was lost
to a drain that takes minutes. Real redis-server, kmock over HTTP, the Jenkins fake."""

import time

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import CONFIG, LEASE_SECONDS, \
    LOST_EVENT_SECONDS, state_of
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile, redrive

CONNECT_TIMEOUT = 300  # the template's agentConnectTimeoutSeconds (the default)


@pytest.fixture
def app(app_on_cluster, kube):
    kube.add_node("node-b", cpu="8", memory="32Gi", unschedulable=True)  # cordoned: drained
    return app_on_cluster(CONFIG, namespace=NAMESPACE,
                          CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS),
                          CI_AUTOSCALER_PROVISION_LEASE_SECONDS=str(LEASE_SECONDS))


def test_a_build_whose_other_node_is_cordoned_for_now_waits_for_it(app, kube, jenkins_fake):
    key = push(app.test_client(), 1)
    work(app)
    state = state_of(app).get_build(key)
    assert state["node"] == "node-a"  # node-b is cordoned
    kube.kubelet_status(NAMESPACE, state["agent"], phase="Running", node="node-a")
    rt = runtime.current()
    later = time.time() + CONNECT_TIMEOUT + 1

    assert reconcile.reconcile_once(rt, now=later)["agents_replaced"] == 1
    work(app)  # its provision again, node-a left out, node-b cordoned

    state = state_of(app).get_build(key)
    assert state["status"] == "waiting", state  # failed, agent_connect_timeout, before
    assert state["wait_reason"] == "no_matching_node"
    assert rt.capacity.waiting() == [key]
    (build,) = jenkins_fake.builds
    assert build.state != "cancelled"

    kube.patch_node("node-b", {"spec": {"unschedulable": False}})  # the upgrade is done
    wait_until(lambda: any(n.name == "node-b" and not n.unschedulable
                           for n in rt.view.snapshot()), timeout=10,
               what="the node watch seeing node-b uncordoned")
    redrive.redrive(rt)
    work(app)
    state = state_of(app).get_build(key)
    assert state["status"] != "failed" and state["node"] == "node-b", state
