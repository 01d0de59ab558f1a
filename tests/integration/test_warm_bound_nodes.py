"""A claim judges an idle warm agent by the node its pod is bound to, on real parts:
redis-server, kmock over HTTP (the worker's own watch sees nodes change), the Jenkins fake, the
worker's own provision, pool pass and leader poll.

Placement names up to three candidate nodes and kube-scheduler binds the pod to one of them
(workers.core.placement.alternates), so an agent may run elsewhere than the node its entry was
placed on; here the test plays kube-scheduler and binds it to the other node:
- a build never takes an agent whose pod runs on a cordoned node, though its chosen node is
  fine; and takes one running on a fine node, though its chosen node is cordoned;
- the node is recorded when the agent turns idle, by the leader's poll as by a pool pass;
- an entry of the previous release (no bound node recorded) is still claimed, by its chosen
  node, and the next pool pass records where its pod runs;
- an idle agent whose pod is being deleted (Terminating) is never taken, and the pool's pass
  retires it; nor is one whose agent container ended while a service container keeps its
  pod Running;
- a node NotReady for a moment (a missed heartbeat) keeps its idle agent, which no build takes
  meanwhile; NotReady for NOT_READY_GRACE_SECONDS, the pool retires it and makes one elsewhere.
"""

import json
import time

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import CONFIG, WATCH_SECONDS, hits, pool_of, record
from tests.integration.test_warm_autoscalers import provision_one
from tests.integration.test_warm_claim_nodes import CORDONED, change_node
from tests.support.kmock_cluster import terminated
from tests.support.monitoring import wait_until
from workers import runtime
from workers.core.warm_claim import NOT_READY_GRACE_SECONDS
from workers.core.warm_pool import WarmState
from workers.warm import agents, pool


@pytest.fixture
def app(app_on_cluster, kube):
    made = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())
    for node in ("node-a", "node-b"):  # before the worker's runtime lists them
        kube.add_node(node, cpu="8", memory="32Gi")
    return made


def idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, *, by_poll: bool):
    """One warm agent whose pod kube-scheduler bound to the node placement did not choose,
    connected and marked idle (by the leader's poll, or by a pool pass); (chosen, bound)."""
    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        pool.run(rt)
        [entry] = pool_of(rt)
        bound = ({"node-a", "node-b"} - {entry.node}).pop()
        kube.set_pod_phase(NAMESPACE, entry.name, "Running", node=bound)
        jenkins_fake.connect_agent(entry.name)
        if by_poll:
            pool.notice_online(rt)
        else:
            pool.run(rt)
    [idle] = pool_of(rt)
    assert idle.state == WarmState.IDLE and idle.bound == bound and idle.where == bound
    return idle, entry.node, bound


@pytest.mark.parametrize("by_poll", [True, False], ids=["leader-poll", "pool-pass"])
def test_no_build_takes_an_idle_agent_whose_pod_runs_on_a_cordoned_node(
        app, kube, jenkins_fake, monkeypatch, by_poll):
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=by_poll)
    change_node(rt, kube, bound, CORDONED)

    key = provision_one(app, 0)
    rec = record(app, key)
    assert not rec.get("warm_agent") and rec["node"] == chosen  # a pod of its own
    assert {e.name: e.state for e in pool_of(rt)} == {idle.name: WarmState.IDLE}
    assert hits(app) == {"hit": 0, "miss": 1}


def test_a_build_takes_an_idle_agent_running_on_a_fine_node_though_its_chosen_node_is_cordoned(
        app, kube, jenkins_fake, monkeypatch):
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=True)
    change_node(rt, kube, chosen, CORDONED)

    key = provision_one(app, 0)
    rec = record(app, key)
    assert rec["warm_agent"] == idle.name and rec["node"] == bound
    assert hits(app) == {"hit": 1, "miss": 0}


def test_an_entry_of_the_previous_release_is_claimed_and_its_bound_node_recorded(
        app, kube, jenkins_fake, monkeypatch):
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=True)
    warm = agents.store(rt)
    field = warm.redis.hget(warm._k("small"), idle.name)
    old = {k: v for k, v in json.loads(field).items() if k != "bound"}  # as it wrote them
    warm.redis.hset(warm._k("small"), idle.name, json.dumps(old))
    [entry] = pool_of(rt)
    assert entry.bound == "" and entry.where == chosen

    with monkeypatch.context() as m:  # the next pass records where its pod runs
        m.setattr(pool, "target", lambda *a, **k: 1)
        assert pool.run(rt)["warm_retired"] == 0
    [entry] = pool_of(rt)
    assert entry.state == WarmState.IDLE and entry.bound == bound

    warm.redis.hset(warm._k("small"), idle.name, json.dumps(old))  # not recorded yet
    key = provision_one(app, 0)
    rec = record(app, key)
    assert rec["warm_agent"] == idle.name and rec["node"] == chosen


def not_ready(rt, kube, node: str, *, since: float) -> None:
    """The node lifecycle controller finds the node's kubelet silent: Ready Unknown since
    `since` (lastTransitionTime: tryUpdateNodeHealth sets it when the status changes) and the
    unreachable taints, NoSchedule and NoExecute (pkg/controller/nodelifecycle); awaited in
    the worker's watched cache."""
    kube.patch_node(node, {
        "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": effect}
                            for effect in ("NoSchedule", "NoExecute")]},
        "status": {"conditions": [{
            "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))}]}})

    def seen() -> bool:
        state = {n.name: n for n in rt.view.snapshot()}[node]
        return not state.ready and state.not_ready_since == int(since)

    wait_until(seen, timeout=WATCH_SECONDS, what=f"{node} NotReady in the worker's cache")


def test_an_idle_agent_outlives_a_not_ready_blip_of_its_node_but_not_a_lasting_one(
        app, kube, jenkins_fake, monkeypatch):
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=True)
    not_ready(rt, kube, bound, since=time.time())

    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        done = pool.run(rt)
    assert done["warm_retired"] == 0 and done["warm_started"] == 0
    assert {e.name: e.state for e in pool_of(rt)} == {idle.name: WarmState.IDLE}
    key = provision_one(app, 0)  # no build takes it meanwhile
    rec = record(app, key)
    assert not rec.get("warm_agent") and rec["node"] == chosen

    not_ready(rt, kube, bound, since=time.time() - NOT_READY_GRACE_SECONDS)
    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        done = pool.run(rt)
    assert done["warm_started"] == 1
    [fresh] = pool_of(rt)
    assert fresh.name != idle.name and fresh.node == chosen
    assert idle.name not in {p["metadata"]["name"] for p in kube.pods(NAMESPACE)}


def test_no_build_takes_an_idle_agent_whose_pod_is_being_deleted_and_the_pool_retires_it(
        app, kube, jenkins_fake, monkeypatch):
    """`kubectl delete pod`, an eviction: the pod is Terminating (deletionTimestamp set) for its
    grace period, its agent maybe still connected; a build on it would be lost with it."""
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=True)
    kube.hold_deletions(bound)  # its kubelet still stops the containers: Terminating
    kube.delete_pod(NAMESPACE, idle.name)
    wait_until(lambda: rt.view.deleting(NAMESPACE, [idle.name]), timeout=WATCH_SECONDS,
               what="the pod's deletion in the worker's cache")
    assert {e.name: e.state for e in pool_of(rt)} == {idle.name: WarmState.IDLE}

    key = provision_one(app, 0)
    rec = record(app, key)
    assert not rec.get("warm_agent") and rec["agent"] != idle.name
    assert hits(app) == {"hit": 0, "miss": 1}

    with monkeypatch.context() as m:  # the pool's pass retires it, as it did
        m.setattr(pool, "target", lambda *a, **k: 1)
        assert pool.run(rt)["warm_started"] == 1
    assert idle.name not in {e.name for e in pool_of(rt)}
    assert idle.name not in jenkins_fake.nodes


@pytest.mark.parametrize("end", ["deleted", "evicted"])
def test_no_build_takes_an_idle_agent_whose_pod_is_gone_or_ended_before_the_pool_saw_it(
        app, kube, jenkins_fake, monkeypatch, end):
    """`kubectl delete pod`, a drain: the inbound agent's java exits on the SIGTERM and the
    kubelet confirms the deletion within seconds (kmock removes the pod at once); an eviction
    under node pressure leaves the pod Failed (pkg/kubelet/eviction). Either way its agent is
    gone before the pool's next pass retires the entry, and a build that took it waited for
    the lost-agent repair (workers.warm.lost) and a fresh pod after it: slower than a miss."""
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=True)
    # the pod bound through the API (a watch event), as kube-scheduler and the kubelet do
    kube.bind_pod(NAMESPACE, idle.name, bound)
    kube.kubelet_status(NAMESPACE, idle.name, phase="Running", node=bound)
    wait_until(lambda: rt.view.pods_on(bound) == 1, timeout=WATCH_SECONDS,
               what="the running pod in the worker's cache")
    if end == "deleted":
        kube.delete_pod(NAMESPACE, idle.name)
    else:
        kube.evict(NAMESPACE, idle.name)
    wait_until(lambda: rt.view.pods_on(bound) == 0, timeout=WATCH_SECONDS,
               what=f"the pod {end} in the worker's cache")
    assert {e.name: e.state for e in pool_of(rt)} == {idle.name: WarmState.IDLE}

    key = provision_one(app, 0)
    rec = record(app, key)
    assert not rec.get("warm_agent") and rec["agent"] != idle.name
    assert hits(app) == {"hit": 0, "miss": 1}


def test_no_build_takes_an_idle_agent_whose_agent_ended_beside_a_running_service(
        app_on_cluster, kube, jenkins_fake, monkeypatch):
    """A template with a service container: the agent's container ends (its JVM OOM-killed
    while idle, say) and the service runs on, so the pod stays Running (a pod is Failed only
    once all its containers have ended: kubelet_pods.go getPhase) while its agent never runs
    again (restartPolicy Never). Taken for idle till the pool's next pass, a build claimed it
    and waited on a dead agent's label for the lost-agent repair (workers.warm.lost)."""
    app = app_on_cluster(CONFIG.replace("    warm:", '    containers: [{name: db, image: '
                                        '"postgres:16", cpu: 100m, memory: 128Mi}]\n    warm:'),
                         namespace=NAMESPACE, nodes=())
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    idle, chosen, bound = idle_elsewhere(rt, kube, jenkins_fake, monkeypatch, by_poll=True)
    kube.bind_pod(NAMESPACE, idle.name, bound)
    kube.kubelet_status(NAMESPACE, idle.name, phase="Running", node=bound,
                        states={"jnlp": terminated("OOMKilled", 137)})
    jenkins_fake.disconnect_agent(idle.name)  # its channel closed with the JVM
    # another pod's event after it on the same watch: once the cache has that one, it has ours
    kube.create_pod("team-b", "someone-elses-build", node=bound,
                    requests=[{"cpu": "100m", "memory": "64Mi"}])
    wait_until(lambda: rt.view.pods_on(bound) == 2, timeout=WATCH_SECONDS,
               what="the pod events in the worker's cache")
    assert {e.name: e.state for e in pool_of(rt)} == {idle.name: WarmState.IDLE}

    key = provision_one(app, 0)
    rec = record(app, key)
    assert not rec.get("warm_agent") and rec["agent"] != idle.name
    assert hits(app) == {"hit": 0, "miss": 1}

    with monkeypatch.context() as m:  # the pool's pass retires it by its pod's state, not
        m.setattr(pool, "target", lambda *a, **k: 1)  # only once Jenkins shows it offline
        pool.run(rt)
    assert idle.name not in {e.name for e in pool_of(rt)}
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert ('ci_autoscaler_agents_deleted_total{reason="pod_ended",template="small"} 1.0'
            in text), [line for line in text.splitlines() if "agents_deleted_total{" in line]
