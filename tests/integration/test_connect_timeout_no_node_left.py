"""An agent that never comes online is re-placed once on another node, its node left out
(workers.agent_starts.online); a second timeout fails the build. With no other node the
build may use (a one-node cluster, a template whose nodeSelector matches one node: a GPU
pool of one), the re-placement found no matching node and the build waited for good, as
"no matching node", its queue item in Jenkins, nothing paging (no node is short: nodes
needed 0). It fails now as its second timeout would have: agent_connect_timeout, its queue
item cancelled. Real redis-server, kmock over HTTP (one node), the Jenkins fake."""

import time

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import app, pod_names, state_of  # noqa: F401
from tests.support.app import work
from workers import runtime
from workers.engine import reconcile

CONNECT_TIMEOUT = 300  # the template's agentConnectTimeoutSeconds (the default)


def test_an_agent_that_never_connects_with_no_other_node_left_fails_its_build(
        app, kube, jenkins_fake):  # noqa: F811 (the fixture)
    key = push(app.test_client(), 1)
    work(app)
    state = state_of(app).get_build(key)
    agent, item = state["agent"], int(state["queue_item"])
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")  # never connects
    rt = runtime.current()
    later = time.time() + CONNECT_TIMEOUT + 1

    assert reconcile.reconcile_once(rt, now=later)["agents_replaced"] == 1
    work(app)  # its provision again, node-a left out: no other node

    state = state_of(app).get_build(key)
    assert state["status"] == "failed", state  # waiting, no_matching_node, before
    assert state["fail_reason"] == "agent_connect_timeout"
    assert "node-a" in state["error"]
    (build,) = jenkins_fake.builds
    assert build.queue_id == item and build.state == "cancelled"
    assert pod_names(kube) == [] and not jenkins_fake.nodes
    assert rt.capacity.waiting() == []
    again = reconcile.reconcile_once(rt, now=later + 60)  # nothing more: no loop
    work(app)
    assert again["pods_deleted"] == 0 and pod_names(kube) == []
