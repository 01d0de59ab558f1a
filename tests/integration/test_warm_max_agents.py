"""maxAgents is a cap of agent pods, warm ones among them (README, "Caps"): "at most 50 agent
pods at once, all templates together". Idle and starting warm agents took no agent slot, so
the pools' agents and the builds' together went past it: a pool refilled beside builds that
held every slot, and a build went the normal way beside idle agents that held the rest.
Now each warm agent holds a slot of maxAgents (not of its template's maxConcurrent) from its
start, handed to the build that claims it; a build that finds maxAgents full while idle
warm agents hold slots has one give way, as for room on nodes (builds always win).

Through the web app's webhook, the worker's tasks and the reconcile pass's warm pool, on kmock
with the Jenkins fake."""

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import (  # noqa: F401 (the fixture)
    CONFIG, app, hinted_push, pod_names, pool_of, reconfigured, record, warm_up)
from tests.integration.test_placement_on_cluster import push
from tests.support.app import work
from workers import runtime
from workers.engine import caps, reconcile, scheduling
from workers.warm import agents, pool
from workers.core.warm_pool import WarmState

POOL_OF_TWO = CONFIG.replace("warm: {min: 1, max: 2, idleSeconds: 600}",
                             "warm: {min: 2, max: 2, idleSeconds: 600}")


def agent_pods(kube) -> set[str]:
    return {n for n in pod_names(kube) if n.startswith("cia-")}


def test_a_claimed_agents_replacement_waits_while_max_agents_is_full(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """maxAgents 2, a pool of 2: a build takes one; the replacement its claim queued made a
    third agent pod beside the build's and the other idle one."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + POOL_OF_TWO)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    idle = warm_up(rt, kube, jenkins_fake, "node-a")
    assert len(idle) == 2
    key = push(app.test_client(), 0)
    work(app)  # its provision, then the replacement its claim queued
    assert record(app, key)["warm_agent"] in idle
    assert len(agent_pods(kube)) == 2, agent_pods(kube)
    assert sorted(e.state for e in pool_of(rt)) == [WarmState.CLAIMED, WarmState.IDLE]

    second = push(app.test_client(), 1)  # takes the other: the slot is the agent's
    work(app)
    assert record(app, second)["warm_agent"] in idle
    assert len(agent_pods(kube)) == 2, agent_pods(kube)


def test_a_build_no_warm_agent_covers_has_one_give_way_when_max_agents_is_full(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """maxAgents 2, two idle agents of 900m: a build whose hint wants 2 cores goes the normal
    way, and its pod made a third agent pod. Now one idle agent gives way first."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + POOL_OF_TWO.replace(
        "cpu: {min: 900m, default: 900m, max: 900m}", "cpu: {min: 900m, default: 900m, max: 2}"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    assert len(warm_up(rt, kube, jenkins_fake, "node-a")) == 2
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_CPU=2")
    work(app)
    rec = record(app, key)
    assert rec["status"] == "triggered" and not rec.get("warm_agent"), rec
    assert rec["agent"] in agent_pods(kube)
    assert len(agent_pods(kube)) == 2, agent_pods(kube)
    assert [e.state for e in pool_of(rt)] == [WarmState.IDLE]


def test_warm_slots_outlast_the_reconcile_pass_and_an_older_releases_agents_get_one(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The reconcile pass frees the slots of builds with no agent coming: a warm agent has no
    build record, and its slot is kept while it is starting or idle. Agents an older release
    started hold none: the next pool pass gives them one, and a build then finds maxAgents
    full and has one give way."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + POOL_OF_TWO.replace(
        "cpu: {min: 900m, default: 900m, max: 900m}", "cpu: {min: 900m, default: 900m, max: 2}"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    idle = warm_up(rt, kube, jenkins_fake, "node-a")
    reconcile.reconcile_once(rt)
    assert sorted(rt.capacity.slots()) == sorted(idle)
    # its stale-slot repair alone (the pool's pass after it in the same reconcile pass holds
    # them again, but a build may take one in between)
    assert caps.release_stale(rt) == 0
    assert sorted(rt.capacity.slots()) == sorted(idle)

    rt.state.redis.delete(rt.state.prefix + "slots")  # as an older release left them
    pool.run(rt)
    assert sorted(rt.capacity.slots()) == sorted(idle)
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_CPU=2")
    work(app)
    assert record(app, key)["status"] == "triggered"
    assert len(agent_pods(kube)) == 2, agent_pods(kube)


def test_a_claim_given_back_for_want_of_a_slot_leaves_the_agent_no_builds(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """An agent an older release started holds no slot; with maxAgents full, the build that
    claims it cannot keep it (workers.warm.claim) and gives it back idle. The claim had
    written the build's key into the agent's entry and the give-back kept it: to the repairs
    (pool.known) the idle agent was that build's, released with it as `build_finished` when
    it ended (workers.engine.repairs.delete_stray_pods), and to the lost-claim repair a
    build to read."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + CONFIG.replace(
        "cpu: {min: 900m, default: 900m, max: 900m}", "cpu: {min: 900m, default: 900m, max: 2}"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    (agent,) = warm_up(rt, kube, jenkins_fake, "node-a")
    rt.state.redis.delete(rt.state.prefix + "slots")  # as an older release left it
    client = app.test_client()
    big = [hinted_push(client, n, "CI_AUTOSCALER_CPU=2") for n in range(2)]
    key = push(client, 2)  # one the idle agent covers
    work(app)
    assert all(record(app, b)["status"] == "triggered" for b in big)
    assert sorted(rt.capacity.slots()) == sorted(big)  # maxAgents full: no slot for it
    assert not record(app, key).get("warm_agent"), record(app, key)
    (entry,) = pool_of(rt)
    assert (entry.name, entry.state) == (agent, WarmState.IDLE)
    assert entry.build == ""
    assert pool.known(rt, rt.cluster.list_pods())[agent] == ""


def test_a_pool_pass_that_read_the_pool_before_a_claim_gives_the_claimed_agent_no_slot(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The pool pass reads every pool first, then per pool tidies (asking Jenkins which agents
    are online) and holds a slot for each starting or idle agent it read, for an older
    release's. A build in another worker that claimed one meanwhile had its slot handed over
    (the agent's deleted), and the pass's HSETNX gave the claimed agent a slot again: one
    agent counted twice against maxAgents until the next pass's stale-slot repair (a build
    waiting on `cap`, or an idle agent given way for nothing). So does one retired or given
    way meanwhile. The slot is held only for an agent still starting or idle."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 3\n" + POOL_OF_TWO)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    idle = warm_up(rt, kube, jenkins_fake, "node-a")
    read_before = {e.name: e for e in pool_of(rt)}  # the pass's read of the pool
    key = push(app.test_client(), 0)
    work(app)  # its provision claims an agent (and the replacement is started)
    claimed = record(app, key)["warm_agent"]
    assert claimed in idle and read_before[claimed].state == WarmState.IDLE
    other = next(n for n in idle if n != claimed)
    given = next(e for e in pool_of(rt) if e.name == other)
    assert agents.retire(rt, given, "warm_gave_way")  # another process's give-way
    before = rt.capacity.slots()
    assert claimed not in before and other not in before and key in before, before

    rt.capacity.hold_warm_slots("small", list(read_before), agents.store(rt).key("small"))
    assert rt.capacity.slots() == before


def test_no_agent_gives_way_to_a_build_its_templates_cap_holds_back(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """maxAgents full and the build's template at its maxConcurrent too: the slot script
    answered "maxAgents full" (it checked that first), so the build had an idle agent give
    way, then found its template's cap full and waited all the same. The agent was lost for
    nothing, and the pool's next pass made another into the slot, which the build's next
    re-drive (every reconcile pass) gave up again: a pod and a Jenkins node made and deleted
    every pass for as long as the build waited on its template's cap."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + CONFIG.replace(
        "cpu: {min: 900m, default: 900m, max: 900m}",
        "cpu: {min: 900m, default: 900m, max: 2}\n    maxConcurrent: 1"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    (agent,) = warm_up(rt, kube, jenkins_fake, "node-a")
    client = app.test_client()
    first = hinted_push(client, 0, "CI_AUTOSCALER_CPU=2")  # no idle agent covers either
    work(app)
    assert record(app, first)["status"] == "triggered"
    second = hinted_push(client, 1, "CI_AUTOSCALER_CPU=2")
    work(app)
    rec = record(app, second)
    assert (rec["status"], rec["wait_reason"]) == ("waiting", "cap"), rec
    assert "maxConcurrent 1 of template small" in rec["wait_detail"], rec
    assert [(e.name, e.state) for e in pool_of(rt)] == [(agent, WarmState.IDLE)]
    assert sorted(rt.capacity.slots()) == sorted([agent, first])


def test_a_starting_agent_whose_start_is_under_way_does_not_give_way(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A build over maxAgents has a starting agent give way when no idle one can. A start
    registers its agent (starting) before it makes the pod, under the agent's provision
    lease: given up in between, the agent's pod was deleted before it existed, then made by
    the start, a pod of no pool, holding no slot (past maxAgents) and no Jenkins node, until
    the repairs found it. A starting agent is given up once its start is done (its lease let
    go); the build waits for the next re-drive meanwhile."""
    from workers.engine.tasks import provision_lease
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + CONFIG.replace(
        "cpu: {min: 900m, default: 900m, max: 900m}", "cpu: {min: 900m, default: 900m, max: 2}"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    client = app.test_client()
    first = hinted_push(client, 0, "CI_AUTOSCALER_CPU=2")
    work(app)
    assert record(app, first)["status"] == "triggered"
    pool.run(rt)
    (entry,) = pool_of(rt)
    assert entry.state == WarmState.STARTING
    assert sorted(rt.capacity.slots()) == sorted([first, entry.name])
    start = provision_lease(rt, entry.name)
    assert start.acquire()  # as a start in another worker holds it until its pod is made

    second = hinted_push(client, 1, "CI_AUTOSCALER_CPU=2")
    work(app)
    assert record(app, second)["status"] == "waiting"
    assert [e.name for e in pool_of(rt)] == [entry.name]

    start.release()  # its start done: it gives way at the build's next re-drive
    reconcile.reconcile_once(rt)
    work(app)
    assert record(app, second)["status"] == "triggered"
    assert entry.name not in {e.name for e in pool_of(rt)}
    assert len(agent_pods(kube)) == 2, agent_pods(kube)


def test_a_pool_below_its_min_that_max_agents_holds_back_asks_for_no_node(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """nodes_needed counts the room of the agents a pool lacks to reach its min. A warm agent
    now needs a slot of maxAgents: with builds holding every slot the pool starts none, and
    a node added for its room would stay empty (README, "Caps": cap waits are no shortfall,
    more nodes would not start them). Only the agents free slots could start are counted."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 1\n" + CONFIG)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent
    rt = runtime.current()
    key = push(app.test_client(), 0)
    work(app)
    assert record(app, key)["status"] == "triggered"
    assert pool.run(rt)["warm_started"] == 0 and pool_of(rt) == []
    state = scheduling.refresh_capacity(rt)
    assert (state.waiting, state.nodes_needed) == (0, 0)

    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + CONFIG)  # a slot free
    assert scheduling.refresh_capacity(runtime.current()).nodes_needed == 1


def test_a_pools_missing_min_counts_only_slots_the_waiting_builds_leave(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A build waiting for room on nodes holds no slot of maxAgents (caps: it gave its slot
    back), but takes one as soon as a node makes room: builds always win, a warm agent started
    in that slot gives way to it (giving_way.for_slot). So the free slots the pool's missing
    min may count in nodes_needed are those the waiting builds leave: with maxAgents 2, one
    build running and one waiting, the node added holds that build and no warm agent ever,
    but nodes_needed asked room for both."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + CONFIG)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent
    rt = runtime.current()
    client = app.test_client()
    first = push(client, 0)
    work(app)
    assert record(app, first)["status"] == "triggered"
    second = push(client, 1)
    work(app)
    rec = record(app, second)
    assert (rec["status"], rec["wait_reason"]) == ("waiting", "insufficient_cpu"), rec
    assert pool.run(rt)["warm_started"] == 0 and pool_of(rt) == []
    assert sorted(rt.capacity.slots()) == [first]  # one free slot, the waiting build's
    state = scheduling.refresh_capacity(rt)
    assert (state.waiting, state.nodes_needed) == (1, 1), state


def test_an_agent_given_way_for_a_slot_while_jenkins_fails_its_delete_frees_the_slot(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A build over maxAgents has an idle agent give way: given up in the store, its pod and
    Jenkins node deleted, then its slot freed. Jenkins refusing the node's delete (a restart,
    a 503 through every retry) raised out of the delete before the slot went: the build's
    provision failed with the agent already gone from its pool, its slot (and reservation)
    held by no agent until a reconcile pass found them stale. A build's release leaves such a
    node to delete_agentless_nodes (tasks.delete_node_or_leave); a warm agent's delete does
    the same, and frees what its agent held."""
    app = reconfigured(monkeypatch, tmp_path, "maxAgents: 2\n" + CONFIG.replace(
        "cpu: {min: 900m, default: 900m, max: 900m}", "cpu: {min: 900m, default: 900m, max: 2}"))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    (agent,) = warm_up(rt, kube, jenkins_fake, "node-a")
    client = app.test_client()
    first = hinted_push(client, 0, "CI_AUTOSCALER_CPU=2")  # no idle agent covers either
    work(app)
    assert record(app, first)["status"] == "triggered"
    assert sorted(rt.capacity.slots()) == sorted([agent, first])  # maxAgents full

    jenkins_fake.fail_next(503, times=1000, path_prefix=f"/computer/{agent}/doDelete")
    second = hinted_push(client, 1, "CI_AUTOSCALER_CPU=2")
    work(app)
    jenkins_fake.clear_failures()
    assert agent not in {e.name for e in pool_of(rt)}
    assert agent not in rt.capacity.slots() and agent not in rt.capacity.reservations()
    assert record(app, second)["status"] == "triggered", record(app, second)
    assert agent in jenkins_fake.nodes  # left to the reconcile pass, which deletes it now
    reconcile.reconcile_once(rt)
    assert agent not in jenkins_fake.nodes
