"""An agent the poll saw online (agent_online_at) whose pod is killed before Jenkins handed it
the build is judged as one that never connected, as it is when no poll saw it (workers.
failures, test_killed_after_connect): its build never ran there, and must not be left waiting
in Jenkins' queue on the label of a dead agent.

- its pod ended (OOM-killed JVM, evicted, exited): a start failure (its queue item cancelled,
  or its Pipeline run aborted), as for a pod that ended before its agent connected;
- its pod deleted (a drain, a reclaimed node, by hand): made again under a new agent name on
  the label the work waits on, as for a pod deleted before its agent connected (workers.
  repairs.restart_stalled), not failed as a lost agent.

An agent that did take its build and is then killed still ends as the build's own end.
Real redis-server, kmock over HTTP, the Jenkins fake; the set-up of test_start_failures."""

import time

import pytest

from tests.integration import test_start_failures as starts
from tests.integration.test_build_stages import notify
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from tests.support.kmock_cluster import terminated
from workers import runtime
from workers.engine import reconcile
from workers.agent_starts import disrupted, online as agent_start
from workers.core.pods import AGENT_CONTAINER
from workers.core.start_failures import LOST_RUN_FIELD

app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching
KILLS = ["OOMKilled", "Evicted"]


def seen_online(app, kube, jenkins_fake, *, pipeline: bool = False):
    """A build whose agent connected and was seen online by the poll; for a `pipeline`, its
    run started on the controller (STARTED taken) and its agent block waits in the queue.
    (key, agent, the build's queue item, the Pipeline's block or None)."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    block = None
    if pipeline:
        block = jenkins_fake.start_pipeline(item)
        assert notify(app, agent, block.run, "STARTED") == 200
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert agent_start.notice_online(runtime.current()) == 1
    assert starts.state_of(app).get_build(key)["agent_online_at"]
    return key, agent, item, block


def killed(kube, jenkins_fake, agent: str, how: str) -> None:
    """The agent's JVM dies with its container (OOM kill) or its pod is evicted by the kubelet
    (node pressure): Jenkins' end of the channel closes, the kubelet reports the pod Failed.
    An eviction is taken as the build's second (its first placed the build again:
    workers.agent_starts.disrupted), which fails it."""
    if how == "Evicted":
        rt = runtime.current()
        key = rt.state.redis.hget(rt.state.prefix + "agents", agent)
        rt.state.update_build(key.decode() if isinstance(key, bytes) else key,
                              **{disrupted.FIELD: disrupted.REPLACEMENTS})
    jenkins_fake.disconnect_agent(agent)
    if how == "OOMKilled":
        kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                            states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    else:
        kube.evict(NAMESPACE, agent)


def a_pass_then_the_queue(app) -> None:
    """What the worker's watch queued (if anything), a reconcile pass (its start-failure sweep,
    its stray pods, its adoption), and what that queued."""
    work(app)
    reconcile.reconcile_once(runtime.current())
    work(app)


@pytest.mark.parametrize("how", KILLS)
def test_a_build_whose_seen_agent_died_before_taking_its_item_is_a_start_failure(
        app, kube, jenkins_fake, how):
    """Skipped as 'the agent had connected', the pod was released as pod_ended, the build
    marked released, and its queue item left waiting on the dead agent's label."""
    key, agent, item, _ = seen_online(app, kube, jenkins_fake)

    killed(kube, jenkins_fake, agent, how)
    a_pass_then_the_queue(app)

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build.get("fail_reason")) == ("failed", how), build
    assert jenkins_fake.cancelled_items == [item]
    assert starts.failures_counted(app, how) == 1
    assert starts.cleaned_up(kube, jenkins_fake, agent)()
    assert kube.pods(NAMESPACE) == []  # nothing adopted its item as a Replay


@pytest.mark.parametrize("how", KILLS)
def test_a_pipeline_whose_block_never_reached_its_seen_agent_is_a_start_failure(
        app, kube, jenkins_fake, how):
    """Skipped, the build was released while its run waited for ever on the dead agent's
    label (its agent block in Jenkins' queue), holding an executor-less run open."""
    key, agent, _, block = seen_online(app, kube, jenkins_fake, pipeline=True)

    killed(kube, jenkins_fake, agent, how)
    a_pass_then_the_queue(app)

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build.get("fail_reason")) == ("failed", how), build
    assert jenkins_fake.stopped_builds == [("build", block.run.number)]
    assert starts.failures_counted(app, how) == 1
    assert kube.pods(NAMESPACE) == []


def test_a_seen_agent_killed_after_taking_its_block_is_still_the_build_s_own_end(
        app, kube, jenkins_fake):
    """The control: the block ran there, so the kill is the build's (its OOM in the job's
    history, its run ended by Jenkins), not a start failure; the pod is released as ended."""
    key, agent, _, block = seen_online(app, kube, jenkins_fake, pipeline=True)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]

    killed(kube, jenkins_fake, agent, "OOMKilled")
    a_pass_then_the_queue(app)

    build = starts.state_of(app).get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"
    assert starts.failures_counted(app, "OOMKilled") == 0


def test_a_pipeline_whose_seen_agent_was_drained_before_its_block_reached_it_gets_a_new_pod(
        app, kube, jenkins_fake):
    """Failed as a lost agent (pod_lost, its run aborted) though nothing of it ran there; a
    drain is no fault of the build, and one drained before its agent connected is made again
    (restart_stalled): so is this one, under a new name on the label its block waits on."""
    key, agent, _, block = seen_online(app, kube, jenkins_fake, pipeline=True)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)  # kubectl drain: evicted through the API, deleted
    jenkins_fake.disconnect_agent(agent)

    reconcile.reconcile_once(rt, now=now)  # noticed
    result = reconcile.reconcile_once(rt, now=now + rt.settings.lost_event_seconds + 1)
    work(app)  # the provision it queued

    assert result["lost_agents_failed"] == 0, result
    build = starts.state_of(app).get_build(key)
    assert build["status"] == "running" and not build.get("fail_reason"), build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"
    new = build["agent"]
    assert new != agent and [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new]
    assert agent not in jenkins_fake.nodes and jenkins_fake.nodes[new].label == agent
    kube.kubelet_status(NAMESPACE, new, phase="Running", node="node-b")
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(block.queue_id, new)]  # the block runs after all
    assert len(jenkins_fake.builds) == 1


def drained(app, kube, jenkins_fake, agent: str) -> dict[str, int]:
    """The agent's pod deleted (kubectl drain), its process gone; two passes, the second once
    the lost-agent repair judges it; then the queue. The second pass's result."""
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.disconnect_agent(agent)
    reconcile.reconcile_once(rt, now=now)
    result = reconcile.reconcile_once(rt, now=now + rt.settings.lost_event_seconds + 1)
    work(app)
    return result


def test_a_pipeline_drained_twice_before_its_block_reached_an_agent_gets_a_third_pod(
        app, kube, jenkins_fake):
    """Its block waits on its first agent's name (the label every later name carries:
    workers.engine.agent_names), not on the second agent's: that name counts too."""
    key, first, _, block = seen_online(app, kube, jenkins_fake, pipeline=True)
    drained(app, kube, jenkins_fake, first)
    second = starts.state_of(app).get_build(key)["agent"]
    kube.kubelet_status(NAMESPACE, second, phase="Running", node="node-b")
    jenkins_fake.connect_agent(second)
    assert agent_start.notice_online(runtime.current()) == 1

    result = drained(app, kube, jenkins_fake, second)

    assert result["lost_agents_failed"] == 0, result
    build = starts.state_of(app).get_build(key)
    assert build["status"] == "running" and not build.get("fail_reason"), build
    third = build["agent"]
    assert third not in (first, second) and jenkins_fake.nodes[third].label == first
    assert jenkins_fake.stopped_builds == [] and block.state == "queued"


def test_a_build_whose_seen_agent_was_drained_before_taking_its_item_gets_a_new_pod(
        app, kube, jenkins_fake):
    """A freestyle build's item still queued (status triggered): restart_stalled makes its pod
    again under a new name, its item kept (this path was right already; held to it here)."""
    key, agent, item, _ = seen_online(app, kube, jenkins_fake)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.disconnect_agent(agent)

    reconcile.reconcile_once(rt, now=now)
    reconcile.reconcile_once(rt, now=now + rt.settings.provision_lease_seconds + 1)
    work(app)

    build = starts.state_of(app).get_build(key)
    assert build["status"] == "triggered" and not build.get("fail_reason"), build
    new = build["agent"]
    assert new != agent and [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new]
    assert jenkins_fake.cancelled_items == [] and jenkins_fake.nodes[new].label == agent
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(item, new)]


def replayed_after_its_block_ran(app, kube, jenkins_fake):
    """A Pipeline whose block ran on its seen agent, and a Replay of it (or a Rebuild) whose
    block now waits on that agent's label (ReplayAction copies CI_AUTOSCALER_AGENT): an item
    naming the agent that is not the build's own work. (key, agent, the block, the Replay's)"""
    key, agent, item, block = seen_online(app, kube, jenkins_fake, pipeline=True)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    replay = jenkins_fake.replay(item)
    assert replay.state == "queued" and replay.run.number != block.run.number
    return key, agent, block, replay


def test_a_seen_agent_oom_killed_running_its_block_is_the_build_s_end_though_a_replay_waits(
        app, kube, jenkins_fake):
    """The Replay's block waits on the dead agent's label; taken for the build's own work
    (any item naming the agent counted), the build's OOM in its block was made a start
    failure: its run aborted by us, counted in agent_start_failures_total, logged ERROR."""
    key, agent, block, _ = replayed_after_its_block_ran(app, kube, jenkins_fake)

    killed(kube, jenkins_fake, agent, "OOMKilled")
    a_pass_then_the_queue(app)

    build = starts.state_of(app).get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    assert ("build", block.run.number) not in jenkins_fake.stopped_builds
    assert starts.failures_counted(app, "OOMKilled") == 0


def test_a_drained_agent_that_ran_its_block_is_lost_though_a_replay_waits_on_its_label(
        app, kube, jenkins_fake):
    """Taken for the build's own block, the Replay's item had the build placed again: the
    build's run, whose block ran on the gone agent, was never ended (it waits for that
    agent for ever), and the new pod, counted as the build's, ran the Replay instead. Lost,
    its node is deleted and its run decides (workers.engine.lost_runs): Jenkins ends its block."""
    key, agent, block, replay = replayed_after_its_block_ran(app, kube, jenkins_fake)

    result = drained(app, kube, jenkins_fake, agent)

    assert result["lost_agents_failed"] == 0, result  # left to its run
    build = starts.state_of(app).get_build(key)
    assert build["status"] == "running" and build["agent"] == agent, build  # not placed again
    assert build[LOST_RUN_FIELD] and agent not in jenkins_fake.nodes, build
    assert jenkins_fake.removed_node_timeout() == []  # no retry: its run ends
    assert block.run.result == "ABORTED" and replay.state == "queued"


def test_a_drained_agent_running_its_freestyle_build_is_lost_though_a_rebuild_waits(
        app, kube, jenkins_fake):
    """A Rebuild of a running freestyle build waits as an item of its own on the agent's label
    (its parameters copied): that item is a run's own, never the build's block. Counted, the
    running build was placed again, its run never aborted, and its new pod took the Rebuild."""
    key, agent, item, _ = seen_online(app, kube, jenkins_fake)
    assert jenkins_fake.dispatch() == [(item, agent)]
    run = next(b for b in jenkins_fake.builds if b.queue_id == item)
    assert notify(app, agent, run, "STARTED") == 200
    rebuild = jenkins_fake.queue_build(run.job, label=agent, parameters=run.parameters)

    result = drained(app, kube, jenkins_fake, agent)

    assert result["lost_agents_failed"] == 1, result
    build = starts.state_of(app).get_build(key)
    assert (build["status"], build.get("fail_reason")) == ("failed", "pod_lost"), build
    assert build["agent"] == agent and ("build", run.number) in jenkins_fake.stopped_builds
    assert rebuild.state == "queued"


SERVICE_CONFIG = starts.CONFIG.replace("    agentConnectTimeoutSeconds:", """    containers:
      - {name: build, image: "maven:3.9", build: true}
      - {name: db, image: "postgres:16"}
    agentConnectTimeoutSeconds:""")


@pytest.fixture
def app_with_a_service(app_on_cluster):
    """The template with a service container beside the build's (the agent runs in `build`)."""
    made = app_on_cluster(SERVICE_CONFIG, namespace=NAMESPACE, nodes=(
        ("node-a", "8", "32Gi"), ("node-b", "8", "32Gi")))
    runtime.current()
    return made


def jenkins_requests_of_a_pass(jenkins_fake) -> int:
    before = len(jenkins_fake.requests)
    reconcile.reconcile_once(runtime.current())
    return len(jenkins_fake.requests) - before


def test_a_service_container_s_end_under_a_running_build_is_asked_about_once_not_every_pass(
        app_with_a_service, kube, jenkins_fake):
    """A service container killed (OOM) or exited non-zero while the agent runs the build:
    the pod stays Running, so nothing releases it, and the build's work ran on the agent. The
    start-failure sweep asked Jenkins about it again in every pass for the rest of the build
    (its run's page and the queue: 4 requests a pass instead of 2), for the same answer."""
    app = app_with_a_service
    key, agent, _, block = seen_online(app, kube, jenkins_fake, pipeline=True)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    work(app)
    healthy = [jenkins_requests_of_a_pass(jenkins_fake) for _ in range(2)][-1]  # steady

    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        states={"db": terminated("OOMKilled", 137)})
    a_pass_then_the_queue(app)  # judged: the build's work is on the agent
    build = starts.state_of(app).get_build(key)
    assert build["status"] == "running" and not build.get("fail_reason"), build

    later = [jenkins_requests_of_a_pass(jenkins_fake) for _ in range(2)]
    assert later == [healthy, healthy], (healthy, later)
    assert starts.failures_counted(app, "OOMKilled") == 0
