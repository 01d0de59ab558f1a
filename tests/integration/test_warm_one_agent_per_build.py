"""One waiting build costs one warm agent, whatever the view of the agent given up says
(issue 22: "builds always win"; the full-cluster operator test, test_warm_operator.py, saw
both idle agents go once for one build, 0.1 s after the push).

Reserved: a warm agent is placed with a reservation like any agent (workers.engine.
scheduling.place_warm), which the reconcile pass lets go once it sees the pod Running, up to
a pass (15 s) later. A young idle agent given up has its pod deleted first, then its Jenkins
node, and only then its reservation let go (workers.warm.agents.delete). Between the pod's
DELETED and that release (a Jenkins call: milliseconds, or seconds of retries while Jenkins is
slow) the capacity rows still count the reservation in flight on its node; a give-way then
(the re-drive's, queued by the worker's watch at the DELETED, workers.warm.gone_watch; or
the reconcile pass's) took the agent for gone, its room free in the rows, and gave up a
second agent for the build the first one gave way to.

Two processes: each has its own watch, and one sees the DELETED before the other. A
give-way in the first marked the agent's given-way record gone, in Redis; the other's
give-way then counted the agent's room nowhere while its own rows still counted the pod.

The pool pass: it read whether builds wait at its start, and refilled the pool by what it
found after; an agent given way meanwhile for a build that began to wait was replaced in the
room the build was to have.

Real parts: redis-server, kmock over HTTP (each runtime's own watch sees the pods), the
Jenkins fake, which holds a request (the agent's doDelete, the online agents' listing) as a
slow Jenkins would.
"""

import threading
import time

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile, scheduling
from workers.core.placement import Wait
from workers.core.warm_pool import WarmState
from workers.warm import agents, pool, tasks

# An agent of `small` asks 1 core and 1Gi with the injected agent's share; a build's min
# (1 core, 768Mi) fits in the room of one agent, not in less.
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 512Mi, default: 768Mi, max: 768Mi}
    warm: {min: 3, max: 4, idleSeconds: 600}
"""
IDLE = 3
GI = 2**30
WATCH_SECONDS = 10  # the process's watch sees a pod event well within this


@pytest.fixture
def worker_env(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    kube.add_namespace(NAMESPACE)
    runtime.install(None)
    yield
    runtime.install(None)


def idle_agents(rt) -> dict[str, float]:
    """The idle agents, each with when it became idle (the oldest gives way first)."""
    return {e.name: e.since for e in agents.store(rt).agents("small")
            if e.state == WarmState.IDLE}


def pool_on_a_full_node(rt, kube, jenkins_fake, *, settled: bool, waits: bool = True
                        ) -> dict[str, float]:
    """IDLE idle agents on node-a (16 cores, 64Gi), bound and Running in the view (the
    kubelet's status through the API), their reservations let go by a reconcile pass when
    `settled` (else young: held still); another team's pod takes the rest of node-a, so that
    a build fits only where an agent leaves; one build waits for room (with `waits`). The
    idle agents."""
    template = rt.config.templates["small"]
    while len(idle_agents(rt)) < IDLE:
        started = agents.start(rt, "small", template)
        assert not isinstance(started, Wait), started
        kube.kubelet_status(NAMESPACE, started.name, phase="Running", node=started.node)
        jenkins_fake.connect_agent(started.name)
        pool.notice_online(rt)
    before = idle_agents(rt)

    def counted() -> bool:  # the pods bound in the view, the reservations let go or not
        if settled:
            reconcile.release_settled_reservations(rt)
        scheduling.refresh_capacity(rt)
        bound = rt.capacity.read_state()[1]["node-a"]["requested"] == [IDLE * 1000, IDLE * GI]
        return bound and rt.capacity.reservations().keys().isdisjoint(before) == settled

    wait_until(counted, timeout=WATCH_SECONDS, what="the agents' pods in the view")
    cpu, memory = rt.capacity.read_state()[1]["node-a"]["free"]
    kube.create_pod("team-b", "filler", node="node-a",
                    requests=[{"cpu": f"{cpu}m", "memory": str(memory)}])

    def full() -> bool:
        scheduling.refresh_capacity(rt)
        return rt.capacity.read_state()[1]["node-a"]["free"] == [0, 0]

    wait_until(full, timeout=WATCH_SECONDS, what="node-a full in the capacity rows")
    if waits:
        build_waits(rt)
    return before


def build_waits(rt) -> None:
    """A build waits for room, as its provision records it."""
    key, now = "waits-for-room", time.time()
    rt.state.update_build(key, template="small", status="waiting",
                          wait_reason="insufficient_memory", received_at=now)
    rt.capacity.add_waiting(key, now)
    scheduling.refresh_capacity(rt)  # as the build's provision does once it waits


def test_a_given_up_agent_still_reserved_costs_no_second_agent(worker_env, kube, jenkins_fake):
    kube.add_node("node-a", cpu="16", memory="64Gi")
    rt = runtime.current()
    before = pool_on_a_full_node(rt, kube, jenkins_fake, settled=False)
    # Jenkins is slow to delete the given-up agent's node (whichever gives way)
    holds = {name: jenkins_fake.hold_next(f"/computer/{name}/doDelete") for name in before}
    results: dict[str, dict] = {}
    task = threading.Thread(target=lambda: results.update(task=tasks.give_way()))
    task.start()
    try:
        [oldest] = wait_until(lambda: [n for n, (arrived, _) in holds.items() if arrived.is_set()],
                              timeout=WATCH_SECONDS, what="a given-up agent's node deleted")
        assert oldest == min(before, key=before.get)
        wait_until(lambda: rt.view.gone(NAMESPACE, [oldest]) == {oldest},
                   timeout=WATCH_SECONDS, what=f"{oldest}'s pod gone from the view")
        # its pod gone, its reservation not yet let go: the rows count its room in flight
        assert oldest in rt.capacity.reservations()
        assert set(before) - set(idle_agents(rt)) == {oldest}
        # The next caller, now: the re-drive's give-way (the watch saw the DELETED) or the
        # reconcile pass. The build has the room of the agent that gave way for it.
        assert pool.give_way(rt) == 0
        assert set(before) - set(idle_agents(rt)) == {oldest}
    finally:
        for _, release in holds.values():
            release.set()
        task.join(30)
    assert results["task"] == {"warm_gave_way": 1}, results
    assert oldest not in rt.capacity.reservations()
    assert set(before) - set(idle_agents(rt)) == {oldest}
    # the reservation let go, the pod gone: the room is free in the rows, nothing more goes
    assert pool.give_way(rt) == 0
    assert set(before) - set(idle_agents(rt)) == {oldest}


def test_a_process_whose_watch_lags_counts_the_given_up_agent_on_its_node(
        worker_env, kube, jenkins_fake):
    """Each process decides from its own view: the worker's watch saw the given-up agent's
    pod gone, the reconcile process's has not delivered that DELETED yet (a busy process, a
    watch resuming from its bookmark). The worker's give-way had marked the agent gone in its
    given-way record, in Redis, for every process; the reconcile pass's give-way then
    counted its room nowhere, while its own rows still counted the pod, and gave up a second
    agent for the build."""
    kube.add_node("node-a", cpu="16", memory="64Gi")
    rt = runtime.current()
    before = pool_on_a_full_node(rt, kube, jenkins_fake, settled=True)
    # the reconcile process, with a view of its own; its watch delivers nothing from here on
    other = runtime.from_environment()
    try:
        wait_until(lambda: [row for row in other.view.node_rows(reserved={})
                            if row[0] == "node-a" and list(row[7:]) == [0, 0]],
                   timeout=WATCH_SECONDS, what="the other process's view: node-a full")
        other.view.stop()
        assert tasks.give_way() == {"warm_gave_way": 1}
        [given] = set(before) - set(idle_agents(rt))
        wait_until(lambda: rt.view.gone(NAMESPACE, [given]) == {given}, timeout=WATCH_SECONDS,
                   what=f"{given}'s pod gone from the worker's view")
        assert pool.give_way(rt) == 0  # the re-drive's give-way, in the worker
        assert other.view.gone(NAMESPACE, [given]) == frozenset()
        assert pool.give_way(other) == 0  # the reconcile pass's, in the other process
        assert set(before) - set(idle_agents(rt)) == {given}
    finally:
        other.close()


def test_the_pool_pass_starts_no_agent_in_the_room_one_gave_way_for(
        worker_env, kube, jenkins_fake):
    """The reconcile pass's pool pass found no build waiting at its start, then (its Jenkins
    call for the online agents on its way) a build waited, an agent gave way for it and its
    Jenkins node went: the pass found that agent offline, its pool one short of its target,
    and started another in the room the build was to have; the build's next give-way gave
    up a second agent."""
    kube.add_node("node-a", cpu="16", memory="64Gi")
    rt = runtime.current()
    before = pool_on_a_full_node(rt, kube, jenkins_fake, settled=True, waits=False)
    arrived, release = jenkins_fake.hold_next("/computer/api/json")
    results: dict[str, dict] = {}
    reconcile_pass = threading.Thread(target=lambda: results.update(run=pool.run(rt)))
    reconcile_pass.start()
    try:
        assert arrived.wait(WATCH_SECONDS), "the pool pass asked Jenkins for no online agents"
        build_waits(rt)
        assert tasks.give_way() == {"warm_gave_way": 1}  # the worker's, queued at the wait
        [given] = set(before) - set(idle_agents(rt))
        assert given not in jenkins_fake.nodes
        wait_until(lambda: rt.view.gone(NAMESPACE, [given]) == {given}, timeout=WATCH_SECONDS,
                   what=f"{given}'s pod gone from the view")
    finally:
        release.set()
        reconcile_pass.join(30)
    assert results["run"] == {"warm_started": 0, "warm_retired": 0, "warm_gave_way": 0}
    assert pool.give_way(rt) == 0  # the build has the room its agent gave
    assert set(before) - set(idle_agents(rt)) == {given}
