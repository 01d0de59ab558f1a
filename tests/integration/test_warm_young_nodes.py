"""A warm agent being started keeps its Jenkins node through a reconcile pass (real
redis-server, kmock over HTTP, the Jenkins fake). Its start registers the node, then writes
the agent to the pool's store, then makes its pod (workers.warm.agents.start); the pass's
delete_agentless_nodes took the node of an agent whose pod its listing, read at the pass's
start, lacked for one with no build (a warm agent has none until a build claims it), and
deleted it. The agent then never connected (its pod asked for a node Jenkins no longer had),
the pool one short until the connect timeout retired it. Seen in a full run beside other
suites: a claimed agent's replacement, started while the reconcile process's pass ran, its
Jenkins node gone 30 s later (test_procfile_features)."""

import threading

from tests.integration.test_warm_agents import app, pool_of  # noqa: F401 (fixture)
from tests.support.kmock_cluster import PODS
from workers import runtime
from workers.core.warm_pool import WarmState
from workers.engine import repairs
from workers.engine.reconcile import release_settled_reservations
from workers.warm import agents


def test_a_warm_agent_written_to_the_store_before_its_pod_keeps_its_jenkins_node(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    listed = rt.cluster.list_pods()  # the pass's listing, before the agent's pod
    deleted: list[int] = []
    # the pass's step as the agent's pod is created: its node made, its store entry written
    kube.before_next("create", PODS,
                     lambda: deleted.append(repairs.delete_agentless_nodes(rt, listed)))
    started = agents.start(rt, "small", rt.config.templates["small"])
    assert deleted == [0]
    assert started.name in jenkins_fake.nodes
    assert [(e.name, e.state) for e in pool_of(rt)] == [(started.name, WarmState.STARTING)]


def test_a_warm_agent_whose_node_is_made_but_not_yet_in_the_store_keeps_it(
        app, kube, jenkins_fake):
    """Between its node's registration and its store entry (its secret read from Jenkins),
    the agent holds its reservation (its key is its name: workers.warm.agents.own_request)."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    listed = rt.cluster.list_pods()
    arrived, release = jenkins_fake.hold_next("/computer/cia-warm-")  # its secret's read
    starting = threading.Thread(
        target=lambda: agents.start(rt, "small", rt.config.templates["small"]))
    starting.start()
    try:
        assert arrived.wait(30), "the agent's secret read"
        [name] = [n for n in jenkins_fake.nodes if n.startswith("cia-warm-")]
        assert pool_of(rt) == []
        assert repairs.delete_agentless_nodes(rt, listed) == 0
    finally:
        release.set()
        starting.join(30)
    assert name in jenkins_fake.nodes
    assert [e.name for e in pool_of(rt)] == [name]


def test_a_warm_agents_node_left_by_the_store_and_its_pod_is_deleted(app, kube, jenkins_fake):
    """What the repair is for still holds: a warm agent's node with no pod, no store entry and
    no reservation (its start gave up half-way, or a worker died in it) goes."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    started = agents.start(rt, "small", rt.config.templates["small"])
    agents.store(rt).forget("small", started.name)
    rt.capacity.release(started.name)
    kube.delete_pod(rt.settings.agent_namespace, started.name)
    assert repairs.delete_agentless_nodes(rt, rt.cluster.list_pods()) == 1
    assert started.name not in jenkins_fake.nodes


def test_a_warm_agent_whose_secret_read_outlasts_a_pass_keeps_its_reservation_and_node(
        app, kube, jenkins_fake):
    """A whole pass while its secret is read (Jenkins slow): the pass's reservation step
    (release_settled_reservations) let go the reservation of an agent with no pod, no build
    and no provision lease, and the next pass's repair deleted the node made for it."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    arrived, release = jenkins_fake.hold_next("/computer/cia-warm-")  # its secret's read
    starting = threading.Thread(
        target=lambda: agents.start(rt, "small", rt.config.templates["small"]))
    starting.start()
    try:
        assert arrived.wait(30), "the agent's secret read"
        [name] = [n for n in jenkins_fake.nodes if n.startswith("cia-warm-")]
        release_settled_reservations(rt)  # a pass's step, then the next pass's repair
        assert name in rt.capacity.reservations()
        assert repairs.delete_agentless_nodes(rt, rt.cluster.list_pods()) == 0
    finally:
        release.set()
        starting.join(30)
    assert name in jenkins_fake.nodes
    assert [e.name for e in pool_of(rt)] == [name]
