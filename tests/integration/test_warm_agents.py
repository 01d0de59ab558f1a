"""Warm agents on real parts (issue 22): real redis-server, kmock over HTTP (the worker's own
watch sees the pods), the Jenkins fake; the worker's parts run as in production
(runtime.current(), the mover, RQ's SimpleWorker or the shipped `worker --burst` command, the
reconcile pass's warm pool).

- with one idle warm agent, a push's build is triggered on that agent's label within a second
  of the webhook, before any pod is made; then a replacement warm agent appears;
- two pushes race for one idle warm agent: one takes it, the other gets a pod of its own;
  never two builds on one agent;
- a build takes an agent with at least the memory it wants (its hint, or its job's history),
  never a smaller one: a build that wants more goes the normal way; new agents are made at
  the most memory a recent build wanted;
- a full cluster: a waiting build makes the idle warm agent give way, and is then placed.
- a pool never holds more agents than builds could take at once (maxConcurrent, maxAgents).
"""

import logging
import os
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker

from tests.integration.test_placement_on_cluster import metric, push
from tests.integration.test_push_to_pod import NAMESPACE, completed
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, production_env, work
from tests.support.kmock_cluster import validate_manifest
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from service.app import create_app
from workers import runtime
from workers.engine import reconcile, redrive, scheduling, tasks
from workers.adapters.redis_state import SERIALIZER
from workers.adapters.rq_retries import queue_due_retries
from workers.adapters.usage_store import UsageStore
from workers.adapters.warm_store import WarmEntry
from workers.core.cluster import Resources
from workers.core.errors import RetryableError
from workers.core.keys import agent_name
from workers.core.pods import agent_secret_name
from workers.core.routing import AGENT_PARAMETER
from workers.core.warm_pool import WARM_BACKOFF_SECONDS, WARM_MAX_AGE_SECONDS, WarmState
from workers.engine.intake import Mover
from workers.telemetry.metrics import EngineMetrics
from workers.warm import agents, pool

# One agent of `small` is 900m + the injected agent's 100m = 1 core, 768Mi + 256Mi = 1Gi.
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 512Mi, default: 768Mi, max: 768Mi}
    warm: {min: 1, max: 2, idleSeconds: 600}
"""
# The same template with room to grow: agents start at the default (768Mi), and a build may
# want up to 1Gi (a hint, its history, or with neither the max that headroom would give it).
ROOMY = CONFIG.replace("memory: {min: 512Mi, default: 768Mi, max: 768Mi}",
                       "memory: {min: 512Mi, default: 768Mi, max: 1Gi}")
assert ROOMY != CONFIG
WATCH_SECONDS = 10  # the worker's watch sees a pod event well within this
TRIGGER_BUDGET_SECONDS = 1.0
MI, GI = 2**20, 2**30  # the "in under 1 s", webhook received -> triggered


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    # Pod Security `restricted` enforced, as the chart can (agents.podSecurity.enforce): a
    # warm agent's pod not hardened to it would be refused by kmock as by the API server
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    runtime.install(None)
    yield create_app()
    runtime.install(None)


def reconfigured(monkeypatch, tmp_path, text: str):
    """The web process and the worker's runtime on another config file: a new app."""
    config = tmp_path / "other-config.yaml"
    config.write_text(text)
    monkeypatch.setenv("CI_AUTOSCALER_CONFIG", str(config))
    runtime.install(None)
    return create_app()


def build_agent_name(key: str) -> str:
    return agent_name("build", key)


def record_state(app):
    return app.extensions["ci_autoscaler"].state


def record(app, key: str) -> dict[str, str]:
    return record_state(app).get_build(key)


def pool_of(rt) -> list[WarmEntry]:
    return agents.store(rt).agents("small")


def pod_names(kube) -> set[str]:
    return {p["metadata"]["name"] for p in kube.pods(NAMESPACE)}


def pod_creations(kube) -> int:
    made = f"POST /api/v1/namespaces/{NAMESPACE}/pods"
    return sum(1 for r in kube.requests() if r.startswith(made))


def warm_up(rt, kube, jenkins_fake, node: str) -> list[str]:
    """The pool's pass starts what it lacks; the kubelet runs the pods and their agents
    connect; the leader's poll marks them idle. The idle agents' names."""
    pool.run(rt)
    for entry in pool_of(rt):
        if entry.state == WarmState.STARTING:
            kube.set_pod_phase(NAMESPACE, entry.name, "Running", node=node)
            jenkins_fake.connect_agent(entry.name)
    pool.notice_online(rt)
    return [e.name for e in pool_of(rt) if e.state == WarmState.IDLE]


def warm_up_at(rt, kube, jenkins_fake, node: str, memory: int) -> list[str]:
    """warm_up, the pool's agent made at `memory`, as a pass makes them after builds that
    wanted that much (with none seen, it makes them at the template's max)."""
    agents.start(rt, "small", rt.config.templates["small"], size=Resources(900, memory))
    return warm_up(rt, kube, jenkins_fake, node)


def make_busy(rt, kube, busy: str, other: str) -> None:
    """Another team's pod on `busy`, in its own namespace (ours enforces `restricted`, which
    this plain pod would not meet): kube-scheduler and our snapshot count pods of every
    namespace. Awaited until the capacity rows show `busy` with less room than `other`."""
    kube.create_pod("team-b", "someone-elses-build", node=busy,
                    requests=[{"cpu": "6", "memory": "8Gi"}])

    def seen_busy() -> bool:
        scheduling.refresh_capacity(rt)
        free = {n: row["free"][0] for n, row in rt.capacity.read_state()[1].items()}
        return free[busy] < free[other]

    wait_until(seen_busy, timeout=WATCH_SECONDS, what="the busy node in the capacity rows")


def hits(app) -> dict[str, float]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "ci_autoscaler_warm_hits")
    return {s.labels["result"]: s.value for s in family.samples
            if s.name.endswith("_total") and s.labels["template"] == "small"}


def warm_gauge(app) -> dict[str, float]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "ci_autoscaler_warm_agents")
    return {s.labels["state"]: s.value for s in family.samples if s.labels["template"] == "small"}


def test_a_push_takes_the_idle_warm_agent_at_once_and_a_replacement_appears(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    assert jenkins_fake.nodes[warm].label == warm  # a label of its own
    pod = kube.pod(NAMESPACE, warm)
    validate_manifest(pod)
    assert pod["metadata"]["labels"][agents.WARM_LABEL] == "true"
    # the build that takes it still has the template's whole deadline (3600 s by default)
    assert pod["spec"]["activeDeadlineSeconds"] == 3600 + WARM_MAX_AGE_SECONDS
    assert warm_gauge(app) == {"starting": 0, "idle": 1, "claimed": 0}
    usage = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)
    usage.sample(warm, stamp="idle-1", cpu_millis=5, memory_bytes=300 * 2**20)  # while idle
    made = pod_creations(kube)

    key = push(app.test_client(), 0)
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()  # the provision job only: the replacement is queued after it
    SimpleWorker([state.queue], connection=state.redis,
                 serializer=SERIALIZER).work(burst=True, max_jobs=1)

    rec = record(app, key)
    assert rec["status"] == "triggered" and rec["agent"] == warm and rec["warm_agent"] == warm
    took = float(rec["triggered_at"]) - float(rec["received_at"])
    print(f"webhook received -> triggered on the warm agent: {took:.3f} s")
    assert took < TRIGGER_BUDGET_SECONDS
    assert pod_creations(kube) == made  # no pod was made before the trigger
    [build] = jenkins_fake.builds
    assert build.parameters[AGENT_PARAMETER] == warm
    assert jenkins_fake.dispatch() == [(build.queue_id, warm)]  # Jenkins runs it there
    assert hits(app) == {"hit": 1, "miss": 0}
    assert state.build_for_agent(warm) == key  # the notifications find the build by it
    assert usage.take_run(warm) is None  # its idle samples are not the build's usage
    assert state.build_for_agent(build_agent_name(key)) is None
    assert {e.name: (e.state, e.build) for e in pool_of(rt)} == {
        warm: (WarmState.CLAIMED, key)}

    work(app)  # the replacement task queued by the claim
    entries = {e.name: e for e in pool_of(rt)}
    [fresh] = [n for n in entries if n != warm]
    assert entries[fresh].state == WarmState.STARTING
    assert pod_names(kube) == {warm, fresh}
    assert warm_gauge(app) == {"starting": 1, "idle": 0, "claimed": 1}

    # The build ends (Jenkins' notification names the warm agent): its release deletes the
    # warm agent's pod and node, never reused; the next pass forgets it.
    note = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                  json=completed(jenkins_fake, warm))
    assert note.status_code == 202 and note.json["build_key"] == key
    work(app)
    assert record(app, key)["status"] == "released"
    assert warm not in pod_names(kube) and warm not in jenkins_fake.nodes
    pool.run(rt)
    assert [e.name for e in pool_of(rt)] == [fresh]


def test_a_pass_of_the_repairs_leaves_warm_agents_alone(app, kube, jenkins_fake):
    """The reconcile pass's stray-pod repair would take a warm pod (no build of its key) for
    an orphan; the pool's own agents stay, a warm pod the store does not know goes."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    result = reconcile.reconcile_once(rt)
    assert result["pods_deleted"] == 0 and warm in pod_names(kube)
    agents.store(rt).forget("small", warm)  # the store lost it: an orphan now
    reconcile.reconcile_once(rt)
    assert warm not in pod_names(kube)


def test_a_hint_bigger_than_the_agent_goes_the_normal_way_a_smaller_one_takes_it(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    assert pool_of(rt)[0].size == Resources(900, 768 * MI)
    client = app.test_client()

    big = hinted_push(client, 0, "CI_AUTOSCALER_MEMORY=1Gi")  # more than the agent has
    work(app)
    rec = record(app, big)
    assert rec["status"] == "triggered" and rec["agent"] != warm and "warm_agent" not in rec
    assert rec["agent"] in pod_names(kube)
    assert [(e.name, e.state) for e in pool_of(rt)] == [(warm, WarmState.IDLE)]
    assert hits(app) == {"hit": 0, "miss": 1}

    small = hinted_push(client, 1, "CI_AUTOSCALER_MEMORY=512Mi")  # less: the bigger is right
    work(app)  # its provision, then the replacement its claim queued
    rec = record(app, small)
    assert rec["status"] == "triggered" and rec["agent"] == warm and rec["warm_agent"] == warm
    assert rec["memory_bytes"] == str(768 * MI)  # the agent's size, not less
    assert hits(app) == {"hit": 1, "miss": 1}
    # the replacement is made at the most a recent build wanted: the 1Gi of the first
    [fresh] = [e for e in pool_of(rt) if e.name != warm]
    assert fresh.state == WarmState.STARTING and fresh.size == Resources(900, GI)
    [container] = kube.pod(NAMESPACE, fresh.name)["spec"]["containers"]
    assert container["resources"]["requests"]["memory"] == "1280Mi"  # + the agent's 256Mi


def hinted_push(client, n: int, hint: str) -> str:
    body = fixture("gitlab_push_real_lrz.json")
    body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
    body["push_options"] = {"ci": {"variable": {hint: 1}}}
    response = client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": f"hinted-{n}"})
    assert response.status_code == 202
    return response.json["build_key"]


def test_two_pushes_racing_for_one_warm_agent_never_share_it(app, kube, jenkins_fake,
                                                             monkeypatch):
    """Two `ci-autoscaler worker --burst` processes, as in production (they mostly take one
    provision each; the race made tight at a barrier is the next test)."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    monkeypatch.setattr(pool, "target", lambda *a, **k: 1)  # exactly one warm agent
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    client = app.test_client()
    keys = [push(client, 0), push(client, 1)]
    workers = [subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--burst",
                                 "--log-level", "WARNING"], env=dict(os.environ),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err[-2000:]

    recs = [record(app, k) for k in keys]
    assert all(r["status"] == "triggered" for r in recs), recs
    on_warm = [r for r in recs if r.get("warm_agent")]
    assert len(on_warm) == 1 and on_warm[0]["agent"] == warm
    other = next(r for r in recs if not r.get("warm_agent"))
    assert other["agent"] != warm and other["agent"] in pod_names(kube)
    # never a second build on one agent: each Jenkins build names its own agent
    assert sorted(b.parameters[AGENT_PARAMETER] for b in jenkins_fake.builds) == \
        sorted(r["agent"] for r in recs)
    claimed = [e for e in pool_of(rt) if e.state == WarmState.CLAIMED]
    assert [(e.name, e.build) for e in claimed] == [(warm, keys[recs.index(on_warm[0])])]
    assert hits(app) == {"hit": 1, "miss": 1}


def test_a_full_cluster_makes_the_warm_agent_give_way_to_a_waiting_build(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    # A build the warm agent is too small for (it wants 1Gi) finds no room: it waits, and
    # the idle warm agent gives way (the task its wait queued), then the build is re-driven.
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    work(app)
    assert warm not in pod_names(kube) and warm not in jenkins_fake.nodes
    assert pool_of(rt) == []

    def placed() -> bool:
        if record(app, key)["status"] != "triggered":
            redrive.redrive(rt)  # the reconcile loop's re-drive, once the watch saw the delete
        return record(app, key)["status"] == "triggered"

    wait_until(placed, timeout=WATCH_SECONDS, what="the waiting build placed")
    assert record(app, key)["first_wait_reason"] == "insufficient_cpu"
    assert record(app, key)["agent"] in pod_names(kube)
    # No room for the pool's min while the build runs: the pass starts nothing, and the
    # room for its min (1 agent; not its max, 2) is what nodes_needed asks for.
    assert pool.run(rt)["warm_started"] == 0 and pool_of(rt) == []
    state = scheduling.refresh_capacity(rt)
    assert (state.waiting, state.nodes_needed) == (0, 1)
    assert metric(app, "ci_autoscaler_nodes_needed") == 1
    assert metric(app, "ci_autoscaler_builds_waiting_for_capacity") == 0


def test_a_warm_agent_gives_way_to_a_build_kept_off_the_node_that_has_room(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A build the scheduler refused on one node (or whose agent never connected there: its
    record's excluded_nodes) may use the other only; the first's room places it nowhere, so
    the idle agent on the other gives way to it rather than leave it waiting for ever."""
    reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent each
    kube.add_node("node-b", cpu="1", memory="2Gi")
    rt = runtime.current()
    started = agents.start(rt, "small", rt.config.templates["small"],
                           size=Resources(900, 768 * MI))
    [warm] = warm_up(rt, kube, jenkins_fake, started.node)
    [other] = {"node-a", "node-b"} - {started.node}  # empty, but not for this build
    key = "refused-on-the-other"
    rt.state.update_build(key, template="small", wait_reason="insufficient_cpu",
                          excluded_nodes=other, received_at=time.time())
    rt.capacity.add_waiting(key, time.time())
    scheduling.refresh_capacity(rt)
    assert pool.give_way(rt) == 1
    assert warm not in pod_names(kube) and pool_of(rt) == []


def test_nodes_needed_counts_a_pool_min_at_the_size_its_agents_are_made_at_now(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The room for a pool's min is counted at the size a pool pass last made agents at (from
    demand), not at the template's default: a node with room for an agent of 768Mi (1Gi in
    all) but not for one of 1Gi (1.25Gi in all, the max a pool starts at) asks for a node
    until builds want 768Mi."""
    reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="2", memory="1152Mi")
    kube.add_node("node-b", cpu="2", memory="4Gi")  # a node of the shape to add, full
    kube.add_pod("team-b", "filler", node="node-b", requests=[{"cpu": "1", "memory": "3584Mi"}])
    rt = runtime.current()
    assert scheduling.refresh_capacity(rt).nodes_needed == 1  # no pass yet: at its max, 1Gi
    agents.store(rt).set_sizes({"small": Resources(900, 768 * MI)})  # after builds of 768Mi
    assert scheduling.refresh_capacity(rt).nodes_needed == 0
    pool.run(rt)  # no build arrived lately: the pass makes agents at the max again
    assert agents.store(rt).sizes() == {"small": Resources(900, GI)}


def test_a_pool_whose_max_no_node_holds_makes_its_agents_at_the_most_a_node_holds(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A template's max memory bigger than any node's allocatable (8Gi on 4Gi nodes): an
    agent made at the max would fit nowhere, so the pool would stay empty for ever and its
    min be counted as an unplaceable build. A build placed the normal way gets at most what
    the node holds beside what is not ours (a DaemonSet's 128Mi on every node), so the pool
    makes its agents at that (4Gi less 128Mi and the injected agent's 256Mi), and nothing is
    counted as unplaceable."""
    reconfigured(monkeypatch, tmp_path, ROOMY.replace("max: 1Gi}", "max: 8Gi}"))
    kube.add_node("node-a", cpu="4", memory="4Gi")
    kube.add_pod("kube-system", "node-agent-a", node="node-a",
                 requests=[{"cpu": "100m", "memory": "128Mi"}])
    rt = runtime.current()
    state = scheduling.refresh_capacity(rt)  # no pass yet
    assert (state.nodes_needed, state.unplaceable) == (0, 0)
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    assert pool_of(rt)[0].size == Resources(900, 3712 * MI)
    assert agents.store(rt).sizes() == {"small": Resources(900, 3712 * MI)}
    state = scheduling.refresh_capacity(rt)
    assert (state.nodes_needed, state.unplaceable) == (0, 0)


def test_a_build_of_a_template_whose_max_no_node_holds_takes_the_warm_agent_made_at_that(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A build with neither a hint nor a history wants what placement could give it, which is
    the template's max only where a node holds that: on 4Gi nodes, the agent made at the most
    a node holds (3712Mi) is all it could get the normal way. Wanting the 8Gi max, no push
    ever took a warm agent of such a pool (a max at the nodes' size does it: allocatable is
    below capacity), and every one missed until its job had a history."""
    reconfigured(monkeypatch, tmp_path, ROOMY.replace("max: 1Gi}", "max: 8Gi}"))
    kube.add_node("node-a", cpu="4", memory="4Gi")
    kube.add_pod("kube-system", "node-agent-a", node="node-a",
                 requests=[{"cpu": "100m", "memory": "128Mi"}])
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    assert pool_of(rt)[0].size == Resources(900, 3712 * MI)
    key = push(app.test_client(), 0)
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()  # the provision job only: the replacement is queued after it
    SimpleWorker([state.queue], connection=state.redis,
                 serializer=SERIALIZER).work(burst=True, max_jobs=1)
    rec = record(app, key)
    assert rec["warm_agent"] == warm and rec["agent"] == warm, rec
    assert hits(app) == {"hit": 1, "miss": 0}


def test_a_build_takes_the_warm_agent_whose_node_has_the_most_room(app, kube, jenkins_fake,
                                                                   monkeypatch):
    """Two idle agents on two nodes; the node of the one idle the longest (the one the claim
    took before) turned busy since: the build takes the other."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    monkeypatch.setattr(pool, "target", lambda *a, **k: 2)
    pool.run(rt)
    for entry in pool_of(rt):
        kube.set_pod_phase(NAMESPACE, entry.name, "Running", node=entry.node)
        jenkins_fake.connect_agent(entry.name)
    pool.notice_online(rt)
    idle = sorted((e for e in pool_of(rt) if e.state == WarmState.IDLE),
                  key=lambda e: (e.since, e.name))
    assert len(idle) == 2 and idle[0].node != idle[1].node
    oldest, other = idle
    make_busy(rt, kube, oldest.node, other.node)
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert rec["warm_agent"] == other.name and rec["node"] == other.node
    assert {e.name: e.state for e in pool_of(rt)}[oldest.name] == WarmState.IDLE


def test_eight_provisions_at_the_same_instant_give_the_one_warm_agent_to_one_build(
        app, kube, jenkins_fake, monkeypatch):
    """The race made tight: eight threads start their provision task together (a barrier),
    on the production runtime; exactly one build runs on the warm agent."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="16", memory="64Gi")
    rt = runtime.current()
    monkeypatch.setattr(pool, "target", lambda *a, **k: 1)
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    client = app.test_client()
    keys = [push(client, n) for n in range(8)]
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()
    builds = [job.kwargs["build"] for job in state.queue.get_jobs()
              if job.func_name == tasks.PROVISION_TASK]
    assert sorted(b["build_key"] for b in builds) == sorted(keys)
    barrier, errors = threading.Barrier(len(builds)), []

    def provision(build: dict) -> None:
        barrier.wait(timeout=30)
        try:
            tasks.provision_agent(build)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=provision, args=(b,)) for b in builds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    recs = [record(app, k) for k in keys]
    assert all(r["status"] == "triggered" for r in recs), [r["status"] for r in recs]
    assert [r["agent"] for r in recs].count(warm) == 1
    assert sum(1 for r in recs if r.get("warm_agent")) == 1
    agents_of_builds = [b.parameters[AGENT_PARAMETER] for b in jenkins_fake.builds]
    assert len(agents_of_builds) == 8 and len(set(agents_of_builds)) == 8
    assert hits(app) == {"hit": 1, "miss": 7}


def test_the_status_page_shows_each_pool_by_state_and_its_hits(app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    push(app.test_client(), 0)
    work(app)  # the build takes the warm agent; a replacement starts

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.inside = [], False

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.inside = dict(attrs).get("id") == "warm-pools"
            elif tag == "tr" and self.inside:
                self.rows.append([])

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False

        def handle_data(self, data):
            if self.inside and self.rows and data.strip():
                self.rows[-1].append(data.strip())

    page = app.test_client().get("/status")
    assert page.status_code == 200
    cells = Cells()
    cells.feed(page.get_data(as_text=True))
    assert cells.rows[1] == ["small", "1–2", "1", "0", "1", "—", "1 of 1"]


def test_the_pool_follows_arrivals_times_start_time_and_falls_back_to_min_when_idle(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """min 0, max 3: 60 builds in the last 15 minutes and agents that took 60 s to come
    online make a mean of 4 arrivals per start, whose 95% quantile (8) is capped at 3; ten
    minutes (idleSeconds) after the last arrival the pool is back to min, 0."""
    reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        "warm: {min: 1, max: 2, idleSeconds: 600}", "warm: {min: 0, max: 3, idleSeconds: 600}"))
    kube.add_node("node-a", cpu="16", memory="64Gi")
    rt = runtime.current()
    assert pool.run(rt)["warm_started"] == 0  # no arrival ever: min, 0

    now = time.time()
    for i in range(60):
        rt.state.add_build(f"b{i}", {"received_at": now - 890 + i * 14, "template": "small",
                                     "agent": f"a{i}"})
    engine = EngineMetrics(rt.state.redis, prefix=rt.state.prefix)
    for _ in range(5):
        engine.agent_online("small", pod_created_at=now - 60, now=now)
    assert pool.online_seconds(rt.state, "small") == pytest.approx(60)
    idle = warm_up(rt, kube, jenkins_fake, "node-a")
    assert len(idle) == 3 and len(pod_names(kube)) == 3
    assert pool.run(rt)["warm_started"] == 0  # at its target

    last = now - 890 + 59 * 14
    result = pool.run(rt, now=last + 601)
    assert result["warm_retired"] == 3
    assert pool_of(rt) == [] and pod_names(kube) == set()
    assert not set(idle) & set(jenkins_fake.nodes)


def test_builds_queued_in_jenkins_on_the_templates_label_grow_no_pool(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """Builds Jenkins queued by itself on the template's label (a timer, "Build Now", a
    Pipeline's `node('small')` block) are adopted: their agents carry that label, and they
    never take a warm agent (Jenkins hands the item to an agent with its label, and a warm
    agent has its own name's only: workers.warm.claim). Counted as arrivals, 60 of them in 15
    minutes kept 3 idle agents started for builds that could take none."""
    reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        "warm: {min: 1, max: 2, idleSeconds: 600}", "warm: {min: 0, max: 3, idleSeconds: 600}"))
    kube.add_node("node-a", cpu="16", memory="64Gi")
    rt = runtime.current()
    now = time.time()
    for i in range(60):
        rt.state.add_build(f"b{i}", {"received_at": now - 890 + i * 14, "template": "small",
                                     "agent": f"a{i}", "node_label": "small-label",
                                     "queue_item": str(i)})
    assert pool.run(rt)["warm_started"] == 0
    assert pool_of(rt) == [] and pod_names(kube) == set()


def test_the_start_time_is_a_moving_average_of_the_recent_starts(app):
    state = app.extensions["ci_autoscaler"].state
    engine = EngineMetrics(state.redis, prefix=state.prefix)
    assert pool.online_seconds(state, "small") == pool.DEFAULT_ONLINE_SECONDS  # none seen
    engine.agent_online("small", pod_created_at=0, now=10)
    assert pool.online_seconds(state, "small") == pytest.approx(10)
    for _ in range(3):
        engine.agent_online("small", pod_created_at=0, now=30)
    # the three new starts' mean (30) weighs 0.3 against the average so far (10)
    assert pool.online_seconds(state, "small") == pytest.approx(0.3 * 30 + 0.7 * 10)
    assert pool.online_seconds(state, "small") == pytest.approx(16)  # nothing new: the same


def test_a_provision_run_again_after_the_claim_keeps_the_same_warm_agent(
        app, kube, jenkins_fake):
    """Jenkins failed the trigger once (a 500): the RQ retry runs the task again from its
    first arguments (the build's intake agent name); it triggers on the warm agent it took,
    makes no pod and takes no other agent."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    key = push(app.test_client(), 0)
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()
    [job] = [j for j in state.queue.get_jobs() if j.func_name == tasks.PROVISION_TASK]
    build = job.kwargs["build"]
    # every attempt of the adapter's own retries (workers.adapters.retry: 4 calls) fails
    jenkins_fake.fail_next(500, times=4, path_prefix="/job/build/buildWithParameters")
    with pytest.raises(RetryableError):
        tasks.provision_agent(build)
    assert record(app, key)["warm_agent"] == warm and not jenkins_fake.builds
    assert len(warm_up(rt, kube, jenkins_fake, "node-a")) == 1  # another, it must not take
    made = pod_creations(kube)
    tasks.provision_agent(build)
    rec = record(app, key)
    assert rec["status"] == "triggered" and rec["agent"] == warm
    assert [b.parameters[AGENT_PARAMETER] for b in jenkins_fake.builds] == [warm]
    assert pod_creations(kube) == made
    assert [e.name for e in pool_of(rt) if e.state == WarmState.CLAIMED] == [warm]


def test_a_push_while_jenkins_quiets_down_leaves_the_idle_warm_agent_idle(
        app, kube, jenkins_fake):
    """Before, the build took the warm agent, on which Jenkins started nothing until the quiet
    down ended (and the pass never parks a build on a warm agent), and the pool made a
    replacement beside it: two agents' room held for a build that could not run. Now it is
    parked at once, as a build with a pod of its own would be, and gets its pod once Jenkins
    lets it go; the warm agent stays for a push after that."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    jenkins_fake.quiet_down()  # Manage Jenkins > Prepare for Shutdown
    made = pod_creations(kube)

    key = push(app.test_client(), 0)
    work(app)

    rec = record(app, key)
    assert rec["status"] == "triggered" and rec["parked_at"] and "warm_agent" not in rec
    assert rec["agent"] == build_agent_name(key)
    assert [b.parameters[AGENT_PARAMETER] for b in jenkins_fake.builds] == [rec["agent"]]
    assert pod_creations(kube) == made  # no pod, and no replacement
    assert {e.name: e.state for e in pool_of(rt)} == {warm: WarmState.IDLE}

    jenkins_fake.cancel_quiet_down()
    assert reconcile.reconcile_once(rt)["builds_resumed"] == 1
    work(app)
    assert rec["agent"] in pod_names(kube)
    assert record(app, key)["status"] == "triggered" and not record(app, key).get("parked_at")
    assert {e.name: e.state for e in pool_of(rt)}[warm] == WarmState.IDLE


def test_an_agent_idle_too_long_is_replaced_and_a_claimed_one_keeps_its_whole_deadline(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [old] = warm_up(rt, kube, jenkins_fake, "node-a")
    made = pool_of(rt)[0].created
    result = pool.run(rt, now=made + WARM_MAX_AGE_SECONDS + 1)
    assert (result["warm_retired"], result["warm_started"]) == (0, 1)  # tidied, then filled
    [fresh] = pool_of(rt)
    assert fresh.name != old and old not in pod_names(kube)

    [fresh_name] = warm_up(rt, kube, jenkins_fake, "node-a")
    key = push(app.test_client(), 0)
    work(app)
    assert record(app, key)["agent"] == fresh_name
    created = next(e.created for e in pool_of(rt) if e.name == fresh_name)
    # The deadline repair: a plain agent's pod past 3600 s + grace would go; the warm one
    # has its idle life more.
    result = reconcile.reconcile_once(rt, now=created + 3600 + 121)
    assert result["pods_deleted"] == 0
    assert result["stalled_builds_restarted"] == 0  # its pod is the warm agent's
    assert fresh_name in pod_names(kube)
    assert reconcile.reconcile_once(
        rt, now=created + 3600 + WARM_MAX_AGE_SECONDS + 121)["pods_deleted"] >= 1
    assert fresh_name not in pod_names(kube)
    assert record(app, key)["status"] == "released"


def test_a_warm_agent_never_lets_a_template_exceed_its_cap(app, kube, jenkins_fake,
                                                          monkeypatch, tmp_path):
    """maxConcurrent 1: with one build running, the next one waits with the reason cap
    although an idle warm agent is there."""
    app = reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        "warm: {min: 1, max: 2, idleSeconds: 600}",
        "warm: {min: 1, max: 2, idleSeconds: 600}\n    maxConcurrent: 1"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    first = push(app.test_client(), 0)
    work(app)
    assert record(app, first)["agent"] == warm
    [fresh] = warm_up(rt, kube, jenkins_fake, "node-a")  # the replacement, online
    second = push(app.test_client(), 1)
    work(app)
    rec = record(app, second)
    assert rec["status"] == "waiting" and rec["wait_reason"] == "cap"
    assert [(e.name, e.state) for e in pool_of(rt) if e.name == fresh] == [(fresh,
                                                                           WarmState.IDLE)]
    assert len(jenkins_fake.builds) == 1


def test_a_pool_never_targets_more_agents_than_max_agents(app, kube, jenkins_fake,
                                                         monkeypatch, tmp_path):
    """maxAgents 1 (over all templates) and `warm: {min: 2}`: one build at a time may take a
    warm agent (each takes its slot first), so a second idle agent could never be taken; it
    was made all the same, an idle pod that only cost its node's room."""
    reconfigured(monkeypatch, tmp_path, "maxAgents: 1\n" + CONFIG.replace(
        "warm: {min: 1, max: 2, idleSeconds: 600}", "warm: {min: 2, max: 2, idleSeconds: 600}"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    assert len(warm_up(rt, kube, jenkins_fake, "node-a")) == 1
    assert len(pool_of(rt)) == 1


def test_a_build_whose_job_history_wants_less_memory_takes_the_bigger_warm_agent(
        app, kube, jenkins_fake):
    """The job `build` was seen (5 builds, the default minimum) to peak at 400Mi (its whole
    pod): its pod would ask about 460Mi (x 1.15), the build's share of that (less the
    agent's 256Mi) clamped to the template's 512Mi min; the warm agent's 768Mi covers it,
    and a bigger agent is right (only the difference idles)."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    job_history(rt, peak_memory_bytes=400 * MI)
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert rec["size_source"] == "history" and rec["warm_want_memory"] == str(512 * MI)
    assert rec["agent"] == warm and rec["warm_agent"] == warm
    assert rec["memory_bytes"] == str(768 * MI)
    assert hits(app) == {"hit": 1, "miss": 0}


def test_a_build_whose_job_history_wants_more_memory_goes_the_normal_way(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """Peaks of 1100Mi (the whole pod's): its pod asks 1280Mi (x 1.15, rounded up), the
    build's share 1Gi (the agent's 256Mi aside), the template's max; the warm agent has
    768Mi, too little (the build could be OOM-killed on it)."""
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    job_history(rt, peak_memory_bytes=1100 * MI)
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert rec["size_source"] == "history" and rec["warm_want_memory"] == str(GI)
    assert rec["status"] == "triggered" and rec["agent"] != warm and "warm_agent" not in rec
    assert rec["memory_bytes"] == str(GI) and rec["agent"] in pod_names(kube)
    assert [(e.name, e.state) for e in pool_of(rt)] == [(warm, WarmState.IDLE)]
    assert hits(app) == {"hit": 0, "miss": 1}


def test_an_idle_agent_smaller_than_every_recent_build_wanted_is_made_again_bigger(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The 768Mi agent covers none of the builds that came (each wants 1Gi, its job's
    history): kept, it held the pool's one place and every build missed until its idle life
    ended, half an hour; the pool pass makes it again at 1Gi, which the next build takes."""
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [small] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    job_history(rt, peak_memory_bytes=1100 * MI)
    push(app.test_client(), 0)
    work(app)
    [bigger] = warm_up(rt, kube, jenkins_fake, "node-a")
    assert bigger != small and small not in pod_names(kube)
    assert [e.size.memory_bytes for e in pool_of(rt)] == [GI]
    key = push(app.test_client(), 1)
    work(app)
    assert record(app, key)["warm_agent"] == bigger
    assert hits(app) == {"hit": 1, "miss": 1}


def test_an_idle_agent_made_before_its_templates_image_changed_is_not_taken_but_made_again(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The operator changes the template's image and restarts the processes: the idle agent
    runs the old one. Taken, the next build ran on the image the file no longer names, for
    up to the agent's idle life (half an hour)."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    [old] = warm_up(runtime.current(), kube, jenkins_fake, "node-a")
    image = "maven:3.9-eclipse-temurin-21"
    app = reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        "  small:\n", f"  small:\n    image: {image}\n"))
    rt = runtime.current()
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert rec["agent"] != old and "warm_agent" not in rec
    assert image in [c["image"] for c in kube.pod(NAMESPACE, rec["agent"])["spec"]["containers"]]
    [fresh] = warm_up(rt, kube, jenkins_fake, "node-a")  # the pass retires it, makes another
    assert fresh != old and old not in pod_names(kube) and old not in jenkins_fake.nodes
    assert image in [c["image"] for c in kube.pod(NAMESPACE, fresh)["spec"]["containers"]]


def job_history(rt, *, peak_memory_bytes: int) -> None:
    """Five builds of the job `build` on record, each peaking at this much memory."""
    usage = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)
    for _ in range(5):
        usage.update_history("build", "small", lambda h: h.add_build(
            peak_memory_bytes=peak_memory_bytes, cpu_p90_millis=900, now=time.time()))


def test_a_build_no_node_could_hold_costs_no_warm_agent(app, kube, jenkins_fake, monkeypatch,
                                                       tmp_path):
    """A build of a template bigger than every node waits for ever (the nodes to add): the
    idle warm agents stay, and the pool still fills."""
    app = reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        '  - {project: "*", ref: "refs/*", job: build, template: small}',
        '  - {project: "*", ref: "refs/heads/huge", job: build, template: huge}\n'
        '  - {project: "*", ref: "refs/*", job: build, template: small}') +
        "  huge:\n    cpu: {min: 4, default: 4, max: 4}\n")
    kube.add_node("node-a", cpu="2", memory="8Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    body = fixture("gitlab_push_real_lrz.json")
    body["ref"] = "refs/heads/huge"
    response = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": "huge-1"})
    assert response.status_code == 202
    work(app)
    rec = record(app, response.json["build_key"])
    assert rec["status"] == "waiting" and rec["wait_reason"] == "insufficient_cpu", rec
    assert [(e.name, e.state) for e in pool_of(rt)] == [(warm, WarmState.IDLE)]
    assert pool.give_way(rt) == 0
    assert warm in pod_names(kube)


def test_a_warm_agent_whose_image_cannot_be_pulled_is_retired_and_replaced(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    pool.run(rt)
    [broken] = pool_of(rt)
    kube.image_pull_backoff(NAMESPACE, broken.name)
    now = time.time()
    pool.run(rt, now=now)
    # replaced once the pool's back-off is over (test_warm_backoff), not in the same pass
    assert pool_of(rt) == []
    assert broken.name not in pod_names(kube) and broken.name not in jenkins_fake.nodes
    pool.run(rt, now=now + WARM_BACKOFF_SECONDS + 1)
    [fresh] = pool_of(rt)
    assert fresh.name != broken.name and fresh.state == WarmState.STARTING


def test_an_idle_warm_agent_that_lost_its_connection_is_replaced(app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [lost] = warm_up(rt, kube, jenkins_fake, "node-a")
    jenkins_fake.disconnect_agent(lost)
    pool.run(rt)
    [fresh] = pool_of(rt)
    assert fresh.name != lost and lost not in pod_names(kube)
    key = push(app.test_client(), 0)
    work(app)
    assert record(app, key)["agent"] != lost


def test_a_full_quota_keeps_the_pool_waiting_without_failing_its_pass_or_leaving_secrets(
        app, kube, jenkins_fake):
    """An admin pausing CI in the agent namespace (`pods: 0`): the pool's agent is refused by
    the quota (real ResourceQuota admission, tests.support.resource_quota) and waits for room
    as it does for room on nodes. QuotaFull went up and failed the whole warm pass, every
    pass, and each try left its agent's Secret behind (a new name each try: one more Secret,
    holding a secret of a node deleted, per pass, for as long as the pause lasted)."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    kube.add_resource_quota(NAMESPACE, "pause", {"pods": "0"})
    rt = runtime.current()
    for _ in range(2):
        assert pool.run(rt)["warm_started"] == 0
    assert pod_creations(kube) == 2 and pod_names(kube) == set()  # one try a pass
    assert kube.secrets(NAMESPACE) == {} and jenkins_fake.nodes == {} and pool_of(rt) == []

    kube.add_resource_quota(NAMESPACE, "pause", {"pods": "10"})  # the pause lifted
    assert pool.run(rt)["warm_started"] == 1
    [entry] = pool_of(rt)
    assert pod_names(kube) == {entry.name} and set(kube.secrets(NAMESPACE)) == {
        agent_secret_name(entry.name)}


def test_a_build_a_namespace_min_makes_too_big_for_every_node_costs_no_warm_agent(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A LimitRange min raises a build's size (workers.engine.namespace_sizes), here above every
    node: the build waits for ever, as one whose template is that big. The idle warm agent
    stays: giving way to the template's own min (which the node could hold once the agent
    left) gave the agent up for a build that still fits nowhere."""
    app = reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        '  - {project: "*", ref: "refs/*", job: build, template: small}',
        '  - {project: "*", ref: "refs/heads/huge", job: build, template: big}\n'
        '  - {project: "*", ref: "refs/*", job: build, template: small}') +
        "  big:\n    cpu: {min: 1500m, default: 1500m, max: 4}\n    agentInjection: false\n")
    kube.add_node("node-a", cpu="2", memory="8Gi")
    [warm] = warm_up(runtime.current(), kube, jenkins_fake, "node-a")
    kube.add_limit_range(NAMESPACE, "floor", [{"type": "Container", "min": {"cpu": "3"}}])
    runtime.install(None)  # a worker started now: it reads the namespace's LimitRanges anew
    rt = runtime.current()
    body = fixture("gitlab_push_real_lrz.json")
    body["ref"] = "refs/heads/huge"
    response = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": "huge-1"})
    assert response.status_code == 202
    work(app)  # the provision, and the give-way task its wait queues
    rec = record(app, response.json["build_key"])
    assert rec["status"] == "waiting" and rec["wait_reason"] == "insufficient_cpu", rec
    assert [(e.name, e.state) for e in pool_of(rt)] == [(warm, WarmState.IDLE)]
    assert pool.give_way(rt) == 0
    assert warm in pod_names(kube)


@pytest.mark.parametrize("change", ["warm taken out", "template renamed"])
def test_a_template_whose_pool_was_taken_out_has_its_idle_agents_retired(
        app, kube, jenkins_fake, monkeypatch, tmp_path, change):
    """An operator takes `warm` out of the template (or renames the template) and restarts
    the processes: the pool pass, which looks at pools only, left its idle agents idle for
    ever, their pods holding their room and their Jenkins nodes online."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    [idle] = warm_up(runtime.current(), kube, jenkins_fake, "node-a")
    text = CONFIG.replace("    warm: {min: 1, max: 2, idleSeconds: 600}\n", "")
    if change == "template renamed":
        text = text.replace("small", "smaller")
    assert "warm" not in text
    reconfigured(monkeypatch, tmp_path, text)
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    assert idle not in pod_names(kube) and idle not in jenkins_fake.nodes
    assert pool_of(rt) == []


def test_a_claimed_agent_made_after_the_passs_listing_stays_its_builds_without_a_pool(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A worker still on the file with the pool (a rolling restart) made the agent after this
    pass listed the pods, and a build took it: forgotten for a pod the listing lacked, the pod
    was a stray to the next repairs, deleted under the build running on it."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    before = time.time()
    listed = runtime.current().cluster.list_pods()
    [warm] = warm_up(runtime.current(), kube, jenkins_fake, "node-a")
    key = push(app.test_client(), 0)
    work(app)
    assert record(app, key)["warm_agent"] == warm
    reconfigured(monkeypatch, tmp_path,
                 CONFIG.replace("    warm: {min: 1, max: 2, idleSeconds: 600}\n", ""))
    rt = runtime.current()
    pool.retire_unpooled(rt, listed, before)  # (the replacement the claim queued goes)
    assert [(e.name, e.state) for e in pool_of(rt)] == [(warm, WarmState.CLAIMED)]
    assert warm in pod_names(kube)
    # a later pass's listing without its pod: its build's release deleted it
    assert pool.retire_unpooled(rt, [], time.time() + pool.LISTING_GRACE_SECONDS + 1) == 0
    assert pool_of(rt) == []


def test_a_build_on_a_bigger_warm_agent_says_what_moved_its_size_until_placed_again(
        app, kube, jenkins_fake, monkeypatch, tmp_path, caplog):
    """Issue 21: "the status page and the logs say which size came from where". A build takes
    an idle agent with at least the memory it wants, so it runs with more than its default
    (README: "as with headroom"): its record said nothing moved it, and the status page
    showed 1 GiB beside its 512Mi hint with "Moved by —". Placed again at its default (its
    claimed agent lost), what moved the first size is not the new pod's: a placement at the
    default records nothing, and the old `headroom` (or `pressure`) stayed beside it."""
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")  # at the template's max: 1Gi
    small = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=512Mi")
    caplog.set_level(logging.INFO)
    work(app)
    rec = record(app, small)
    assert rec["warm_agent"] == warm and rec["memory_bytes"] == str(GI)
    assert (rec["size_source"], rec.get("size_moved")) == ("hint", "headroom")
    [line] = [r for r in caplog.records if r.getMessage() == "build size moved from its default"
              and getattr(r, "build_key", None) == small]
    assert (line.size_moved, line.agent, line.default_memory_bytes, line.memory_bytes) == \
        ("headroom", warm, 512 * MI, GI)
    page = app.test_client().get("/status").get_data(as_text=True)
    assert '<td class="size-moved">headroom</td>' in page
    # Lost before its build started (workers.warm.lost), the build is placed again the
    # normal way, on a node that now has no room beyond its hint (1Gi free once the lost
    # agent's pod is gone, beside its replacement's 768Mi): the agent's headroom is not what
    # its new pod runs with
    kube.create_pod("team-b", "someone-elses-build", node="node-a",
                    requests=[{"cpu": "1", "memory": "30976Mi"}])
    wait_until(lambda: rt.view.snapshot()[0].requested.memory_bytes >= 30976 * MI,
               timeout=WATCH_SECONDS, what="the other team's pod in the snapshot")
    kube.delete_pod(NAMESPACE, warm)
    assert reconcile.reconcile_once(rt).get("warm_claims_lost") == 1
    wait_until(lambda: rt.view.gone(NAMESPACE, [warm]), timeout=WATCH_SECONDS,
               what="the warm pod gone from the snapshot")
    work(app)
    rec = record(app, small)
    assert rec["agent"] != warm and rec["memory_bytes"] == str(512 * MI)
    assert "size_moved" not in rec, rec


def test_a_build_placed_again_under_its_name_at_its_default_forgets_the_pressure_before(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A placement records what moved its size only when something did (scheduling.place).
    A build placed under pressure whose provision then failed before its pod (Jenkins
    answering 500 to the node's creation: the task raises, RQ retries it) is placed again
    under the same name, no pod having been tried (workers.engine.agent_names renames only
    then): at its default the second time, it kept the first placement's `pressure`, shown
    on the status page beside a pod at its default size."""
    app = reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        "    warm: {min: 1, max: 2, idleSeconds: 600}\n", ""))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    # another team's pod leaves 768Mi: the build's pod at its min, 512Mi + the agent's 256Mi
    kube.create_pod("team-b", "someone-elses-build", node="node-a",
                    requests=[{"cpu": "1", "memory": "32000Mi"}])
    rt = runtime.current()
    wait_until(lambda: rt.view.snapshot()[0].requested.memory_bytes >= 32000 * MI,
               timeout=WATCH_SECONDS, what="the other team's pod in the snapshot")
    jenkins_fake.fail_next(500, times=10, path_prefix="/computer/doCreateItem")
    key = push(app.test_client(), 0)
    work(app)  # placed under pressure; the node's creation fails: retried by RQ
    rec = record(app, key)
    assert rec.get("size_moved") == "pressure" and "pod_created_at" not in rec, rec
    assert not kube.pods(NAMESPACE)

    jenkins_fake.clear_failures()
    kube.delete_pod("team-b", "someone-elses-build")
    wait_until(lambda: rt.view.snapshot()[0].requested.memory_bytes < GI,
               timeout=WATCH_SECONDS, what="the other team's pod gone from the snapshot")
    assert queue_due_retries(record_state(app).queue, time.time() + 3600) == 1
    work(app)
    rec = record(app, key)
    assert rec["memory_bytes"] == str(768 * MI) and rec.get("pod_created_at"), rec
    assert "size_moved" not in rec, rec
