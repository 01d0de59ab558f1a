"""One waiting build makes exactly one warm agent give way, however many callers see it wait
(issue 22: "a waiting build makes a warm agent give way, and then gets placed"). The worker's
give-way task (workers.warm.tasks.give_way) and the reconcile pass's pool pass
(workers.warm.pool.run) run at the same moment, on threads of one process as a worker's
threads do, through the real parts: a real redis-server, kmock over HTTP (the process's own
watch sees the pods), the Jenkins fake.

An operator's black-box check (merge 8eddee9, bb22) saw one build waiting with two idle agents
beside it: the worker gave one up and the reconcile pass, 13 ms later, another. Each decided
from capacity rows that did not show the first one's room: written by an earlier refresh, and
a deleted pod holds its node's room until its kubelet confirms it stopped (here: the kubelet
of node-a confirms nothing until the test says so, `hold_deletions`, as for a pod in its grace
period). And once the room is free and the re-drive has placed the build there (its
reservation holds the room), the build stays in the waiting set until its pod is made: a
give-way then gave up one more agent for it.
"""

import threading
import time

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import scheduling
from workers.core.cluster import Resources
from workers.core.placement import Wait
from workers.core.warm_pool import WarmState
from workers.warm import agents, pool, tasks

# One agent of `small` is 900m + the injected agent's 100m = 1 core, 768Mi + 256Mi = 1Gi; a
# build's min (900m + 100m, 512Mi + 256Mi) fits in the room of one agent, not in less.
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 512Mi, default: 768Mi, max: 768Mi}
    warm: {min: 3, max: 4, idleSeconds: 600}
"""
BUILD = Resources(1000, 768 * 2**20)  # the waiting build's pod at its min
GI = 2**30
IDLE = 3  # the pool's min: no pass retires one as beyond its target
ROUNDS = 8
WATCH_SECONDS = 10  # the process's watch sees a pod event well within this


@pytest.fixture
def worker_env(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The worker's environment; its runtime is made by the test (runtime.current()) once
    the cluster has its nodes."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    kube.add_namespace(NAMESPACE)
    runtime.install(None)
    yield
    runtime.install(None)


def idle_agents(rt) -> set[str]:
    return {e.name for e in agents.store(rt).agents("small") if e.state == WarmState.IDLE}


def fill_pool(rt, kube, jenkins_fake) -> set[str]:
    """Start agents until the pool has IDLE idle ones: the kubelet runs each pod, its agent
    connects, the reconcile leader's poll marks it idle."""
    template = rt.config.templates["small"]
    while len(idle_agents(rt)) < IDLE:
        started = agents.start(rt, "small", template)
        assert not isinstance(started, Wait), started
        kube.set_pod_phase(NAMESPACE, started.name, "Running", node=started.node)
        jenkins_fake.connect_agent(started.name)
        pool.notice_online(rt)
    return idle_agents(rt)


def gone_from_view(rt, names: set[str]) -> bool:
    return rt.view.gone(NAMESPACE, list(names)) == frozenset(names)


def test_one_waiting_build_makes_one_agent_give_way_with_the_task_and_the_pass_at_once(
        worker_env, kube, jenkins_fake):
    kube.add_node("node-a", cpu="16", memory="64Gi")
    kube.hold_deletions("node-a")  # a deleted agent's pod stays Terminating until confirmed
    rt = runtime.current()
    fill_pool(rt, kube, jenkins_fake)
    # Another team's pod takes the rest of node-a: a build fits only where an agent leaves.
    scheduling.refresh_capacity(rt)
    cpu, memory = rt.capacity.read_state()[1]["node-a"]["free"]
    kube.create_pod("team-b", "filler", node="node-a",
                    requests=[{"cpu": f"{cpu}m", "memory": str(memory)}])

    def full() -> bool:
        scheduling.refresh_capacity(rt)
        return rt.capacity.read_state()[1]["node-a"]["free"] == [0, 0]

    wait_until(full, timeout=WATCH_SECONDS, what="node-a full in the capacity rows")

    for round_ in range(ROUNDS):
        before = fill_pool(rt, kube, jenkins_fake)
        key = f"waits-for-room-{round_}"
        now = time.time()
        rt.state.update_build(key, template="small", status="waiting",
                              wait_reason="insufficient_cpu", received_at=now)
        rt.capacity.add_waiting(key, now)
        scheduling.refresh_capacity(rt)  # as the build's provision does once it waits
        start = threading.Barrier(2)
        results: dict[str, dict] = {}

        def worker_task() -> None:
            start.wait(timeout=10)
            results["task"] = tasks.give_way()

        def reconcile_pool_pass() -> None:
            start.wait(timeout=10)
            scheduling.refresh_capacity(rt)  # a reconcile pass refreshes, then its pools
            results["pass"] = pool.run(rt)

        threads = [threading.Thread(target=worker_task),
                   threading.Thread(target=reconcile_pool_pass)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        given = before - idle_agents(rt)
        assert len(given) == 1, (round_, given, results)
        assert results["task"]["warm_gave_way"] + results["pass"]["warm_gave_way"] == 1, results
        # the next caller (a pass, or the task of another wait) while the pod still holds the
        # room: the build has that room, and no other agent goes for it
        scheduling.refresh_capacity(rt)
        assert pool.give_way(rt) == 0, round_
        assert before - idle_agents(rt) == given
        [agent] = given
        assert kube.pod(NAMESPACE, agent)["metadata"].get("deletionTimestamp")
        assert agent not in jenkins_fake.nodes

        # The kubelet confirms the deletion: the view has the room. The re-drive places the
        # build in it: its reservation holds the room while its pod is made, and only then
        # does it leave the waiting set. A give-way meanwhile gives up nothing for it.
        kube.kubelet_confirms_deletion(NAMESPACE, agent)
        wait_until(lambda: gone_from_view(rt, given), timeout=WATCH_SECONDS,
                   what=f"{agent} gone from the view")
        assert rt.capacity.reserve(node="node-a", build_key=key, size=BUILD,
                                   capacity=Resources(16_000, 64 * GI))
        assert pool.give_way(rt) == 0, round_
        assert idle_agents(rt) == before - given
        # its pod made, it waits no more; it ends
        rt.capacity.remove_waiting(key)
        rt.capacity.release(key)
        rt.state.update_build(key, status="ended", wait_reason=None)
