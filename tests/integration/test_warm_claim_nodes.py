"""A build and an idle warm agent on a node being taken away (workers.core.warm_claim.
claimable_on), on real parts: redis-server, kmock over HTTP (the node's taint or cordon reaches
the worker through its own watch), the Jenkins fake, the worker's own provision.

An idle warm agent's pod is evictable (workers.core.warm_pods), so a node autoscaler removing
its node evicts it moments later; a drain or a node upgrade cordons first, then evicts:
- an idle agent on a node Cluster Autoscaler is removing (ToBeDeletedByClusterAutoscaler,
  NoSchedule), Karpenter is disrupting (karpenter.sh/disrupted, NoSchedule), or that is
  cordoned is left idle: the build gets a pod of its own on another node;
- with two idle agents, the build takes the one on the other node, even when the node being
  removed has the most room;
- Cluster Autoscaler's DeletionCandidateOfClusterAutoscaler (PreferNoSchedule: a node it may
  remove later, nothing evicted yet) does not stop the claim;
- the pool's pass retires an idle agent on such a node and makes one elsewhere.
"""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import (CONFIG, WATCH_SECONDS, hits, make_busy,
                                                 pool_of, record)
from tests.integration.test_warm_autoscalers import provision_one
from tests.support.monitoring import wait_until
from workers import runtime
from workers.adapters.warm_store import WarmEntry
from workers.core.warm_pool import WarmState
from workers.warm import pool

# What each puts on the node (the taint values: Cluster Autoscaler writes when it tainted it,
# cluster-autoscaler utils/taints/taints.go; Karpenter's disrupted taint has none,
# karpenter pkg/apis/v1/taints.go)
REMOVED_BY_CLUSTER_AUTOSCALER = {"spec": {"taints": [
    {"key": "ToBeDeletedByClusterAutoscaler", "value": "1765000000", "effect": "NoSchedule"}]}}
DISRUPTED_BY_KARPENTER = {"spec": {"taints": [
    {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]}}
CORDONED = {"spec": {"unschedulable": True}}  # kubectl cordon / drain
CANDIDATE_OF_CLUSTER_AUTOSCALER = {"spec": {"taints": [
    {"key": "DeletionCandidateOfClusterAutoscaler", "value": "1765000000",
     "effect": "PreferNoSchedule"}]}}


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())


def idle_agents(rt, kube, jenkins_fake, monkeypatch, count: int) -> list[WarmEntry]:
    """`count` warm agents, each running where its pod was placed and connected: idle."""
    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: count)
        pool.run(rt)
    for entry in pool_of(rt):
        kube.set_pod_phase(NAMESPACE, entry.name, "Running", node=entry.node)
        jenkins_fake.connect_agent(entry.name)
    pool.notice_online(rt)
    idle = [e for e in pool_of(rt) if e.state == WarmState.IDLE]
    assert len(idle) == count
    return idle


def change_node(rt, kube, node: str, patch: dict) -> None:
    """Patch the node through the API and wait until the worker's watched cache has it."""
    def seen():
        return {n.name: (n.taints, n.unschedulable) for n in rt.view.snapshot()}[node]

    before = seen()
    kube.patch_node(node, patch)
    wait_until(lambda: seen() != before, timeout=WATCH_SECONDS,
               what=f"the change of {node} in the worker's cache")


@pytest.mark.parametrize("patch", [REMOVED_BY_CLUSTER_AUTOSCALER, DISRUPTED_BY_KARPENTER,
                                   CORDONED], ids=["cluster-autoscaler", "karpenter", "cordon"])
def test_an_idle_agent_on_a_node_being_taken_away_is_left_and_the_build_placed_elsewhere(
        app, kube, jenkins_fake, monkeypatch, patch):
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = idle_agents(rt, kube, jenkins_fake, monkeypatch, 1)
    other = ({"node-a", "node-b"} - {warm.node}).pop()
    change_node(rt, kube, warm.node, patch)

    key = provision_one(app, 0)
    rec = record(app, key)
    assert not rec.get("warm_agent") and rec["agent"] != warm.name
    assert rec["node"] == other  # a pod of its own, where placement puts it
    assert rec["agent"] in {p["metadata"]["name"] for p in kube.pods(NAMESPACE)}
    assert {e.name: e.state for e in pool_of(rt)} == {warm.name: WarmState.IDLE}
    assert hits(app) == {"hit": 0, "miss": 1}


def test_of_two_idle_agents_the_build_takes_the_one_not_on_a_node_being_removed(
        app, kube, jenkins_fake, monkeypatch):
    """The node being removed has the most room (the other is busy): by room alone, the
    claim took its agent."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    first, second = idle_agents(rt, kube, jenkins_fake, monkeypatch, 2)
    assert first.node != second.node
    by_node = {first.node: first, second.node: second}
    removed, kept = by_node["node-a"], by_node["node-b"]
    make_busy(rt, kube, kept.node, removed.node)
    change_node(rt, kube, removed.node, REMOVED_BY_CLUSTER_AUTOSCALER)

    key = provision_one(app, 0)
    rec = record(app, key)
    assert rec["warm_agent"] == kept.name and rec["node"] == kept.node
    assert {e.name: e.state for e in pool_of(rt)}[removed.name] == WarmState.IDLE


def test_a_node_cluster_autoscaler_may_remove_later_does_not_stop_the_claim(
        app, kube, jenkins_fake, monkeypatch):
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = idle_agents(rt, kube, jenkins_fake, monkeypatch, 1)
    change_node(rt, kube, warm.node, CANDIDATE_OF_CLUSTER_AUTOSCALER)

    key = provision_one(app, 0)
    rec = record(app, key)
    assert rec["warm_agent"] == warm.name and rec["node"] == warm.node
    assert hits(app) == {"hit": 1, "miss": 0}


def test_the_pool_retires_an_idle_agent_on_a_cordoned_node_and_makes_one_elsewhere(
        app, kube, jenkins_fake, monkeypatch):
    """Kept, it would count toward the pool's target while no build could take it."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = idle_agents(rt, kube, jenkins_fake, monkeypatch, 1)
    other = ({"node-a", "node-b"} - {warm.node}).pop()
    change_node(rt, kube, warm.node, CORDONED)

    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        done = pool.run(rt)
    assert done["warm_started"] == 1
    [fresh] = pool_of(rt)
    assert fresh.name != warm.name and fresh.node == other
    assert fresh.state == WarmState.STARTING
    assert warm.name not in {p["metadata"]["name"] for p in kube.pods(NAMESPACE)}
    assert warm.name not in jenkins_fake.nodes
    assert deleted(app, "warm_node_closed") == 1


def deleted(app, reason: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "ci_autoscaler_agents_deleted")
    return sum(s.value for s in family.samples if s.name.endswith("_total")
               and s.labels["template"] == "small" and s.labels["reason"] == reason)


def test_the_pool_judges_an_idle_agent_by_the_node_its_pod_is_bound_to(
        app, kube, jenkins_fake, monkeypatch):
    """The pod may go to any of the placement's candidates (required node affinity, ours
    only preferred: workers.core.placement.alternates), and kube-scheduler has the last word:
    the entry names the node placement chose, the pod is where the scheduler bound it."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        pool.run(rt)
    [warm] = pool_of(rt)
    bound = ({"node-a", "node-b"} - {warm.node}).pop()  # the scheduler's other choice
    kube.set_pod_phase(NAMESPACE, warm.name, "Running", node=bound)
    jenkins_fake.connect_agent(warm.name)
    pool.notice_online(rt)

    change_node(rt, kube, warm.node, CORDONED)  # the node it is not on: it stays
    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        pool.run(rt)
    assert [(e.name, e.state) for e in pool_of(rt)] == [(warm.name, WarmState.IDLE)]
    assert deleted(app, "warm_node_closed") == 0

    change_node(rt, kube, bound, CORDONED)  # the node it is on: retired
    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        pool.run(rt)
    assert warm.name not in {e.name for e in pool_of(rt)}
    assert deleted(app, "warm_node_closed") == 1
