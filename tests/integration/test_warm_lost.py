"""A build that claimed a warm agent which is lost before the build starts is placed again
(workers.warm.lost), on real parts: redis-server, kmock over HTTP, the Jenkins fake.

The build was triggered on the warm agent's label at the claim, so its queue item waits for
that label: it gets a fresh pod under the same agent name (its Jenkins node registered again),
and Jenkins hands that item to the new agent; no second Jenkins build is made.

- the claimed agent's pod is deleted (a node drained, a pod deleted by hand) before the build
  starts;
- its pod stays, its agent is offline past the template's agentConnectTimeoutSeconds;
- after a Jenkins restart, claimed agents get their connect time from when Jenkins was last
  seen away: the one that reconnects in time is left alone, the other is placed again;
- a Pipeline, running on the controller, whose agent block waits for the lost agent: the
  block goes to the new agent; one that left the queue, or a block resumed after a restart
  (it ran on the agent before), is not placed again.
"""

import time

import pytest

from tests.integration.test_jenkins_restart import away_for, notify
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported
from tests.integration.test_warm_agents import pod_names, pool_of, record, warm_up
from tests.support.app import cluster_app, production_env, work
from tests.support.kmock_cluster import PODS, terminated
from service.app import create_app
from workers import runtime
from workers.engine import reconcile
from workers.agent_starts import online as agent_start
from workers.core.pods import AGENT_CONTAINER
from workers.core.installation_pods import INSTALLATION_ANNOTATION, INSTALLATION_LABEL
from workers.core.warm_pool import WarmState
from workers.warm import agents, lost as warm_lost

CONNECT_TIMEOUT_SECONDS = 60
CONFIG = f"""
routes:
  - {{project: "*", ref: "refs/*", job: build, template: small}}
templates:
  small:
    cpu: {{min: 900m, default: 900m, max: 900m}}
    memory: {{min: 512Mi, default: 768Mi, max: 768Mi}}
    agentConnectTimeoutSeconds: {CONNECT_TIMEOUT_SECONDS}
    warm: {{min: 2, max: 2, idleSeconds: 600}}
"""


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        yield app


def claimed(app, kube, jenkins_fake, pushes: int = 1) -> list[tuple[str, str]]:
    """Idle warm agents, then `pushes` builds that each take one: (build key, agent)."""
    rt = runtime.current()
    idle = warm_up(rt, kube, jenkins_fake, "node-a")
    assert len(idle) == 2
    out = []
    for n in range(pushes):
        key = push(app.test_client(), n)
        work(app)  # its provision takes an idle agent; the replenish starts another
        rec = record(app, key)
        assert rec["status"] == "triggered" and rec["warm_agent"] in idle, rec
        out.append((key, rec["warm_agent"]))
    return out


def claimed_at(app, key: str) -> float:
    return float(record(app, key)["warm_claimed_at"])


def lost_counted(app, reason: str) -> float:
    return exported(app, f'ci_autoscaler_warm_lost_total{{reason="{reason}",template="small"}}')


def deleted_counted(app) -> float:
    return exported(app, 'ci_autoscaler_agents_deleted_total{reason="warm_lost",'
                         'template="small"}')


def queue_item(jenkins_fake, agent: str) -> int:
    """The queue item of the one build triggered on this agent (it waits for the agent)."""
    [build] = [b for b in jenkins_fake.builds if b.parameters["CI_AUTOSCALER_AGENT"] == agent]
    return build.queue_id


def assert_placed_again(app, kube, jenkins_fake, key: str, agent: str,
                        waiting: int | None = None, status: str = "triggered") -> str:
    """The build (in `status`) has a fresh pod of its own (no warm label) under a new agent
    name (workers.engine.agent_names), whose Jenkins node carries the lost warm agent's name as its
    label, the warm agent's node deleted (its process, if it runs on, cannot connect again);
    what waits in Jenkins' queue for that label (`waiting`; by default the build's own queue
    item) is handed to the new agent once it connects; the warm pool no longer counts the
    agent. The new agent's name."""
    rt = runtime.current()
    rec = record(app, key)
    new = rec["agent"]
    assert rec["status"] == status and new != agent, rec
    assert "warm_agent" not in rec and "agent_online_at" not in rec
    assert kube.pod(NAMESPACE, agent) is None
    pod = kube.pod(NAMESPACE, new)
    assert pod is not None and agents.WARM_LABEL not in pod["metadata"]["labels"]
    assert agent not in {e.name for e in pool_of(rt)}
    assert agent not in jenkins_fake.nodes and jenkins_fake.nodes[new].label == agent
    waiting = queue_item(jenkins_fake, agent) if waiting is None else waiting
    kube.set_pod_phase(NAMESPACE, new, "Running", node="node-a")
    jenkins_fake.connect_agent(new)
    assert agent_start.notice_online(rt) == 1  # its start is watched as any agent's
    assert (waiting, new) in jenkins_fake.dispatch()
    passed = reconcile.reconcile_once(rt)  # a later pass takes the new pod for no orphan
    assert passed["pods_deleted"] == 0 and new in pod_names(kube)
    return new


@pytest.mark.parametrize("how", ["deleted", "evicted"])
def test_a_claimed_warm_agent_whose_pod_goes_before_the_build_starts_is_replaced(
        app, kube, jenkins_fake, how):
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    warm_node = jenkins_fake.nodes[agent]
    # Drained or deleted by hand, or evicted by the kubelet (Failed); Jenkins has not noticed
    # yet (its ping takes minutes): the computer still looks online, and its build still
    # waits in the queue.
    if how == "deleted":
        kube.delete_pod(NAMESPACE, agent)
    else:
        kube.evict(NAMESPACE, agent)
        work(app)  # what the worker's pod watch queued, if anything

    passed = reconcile.reconcile_once(runtime.current())

    assert passed.get("warm_claims_lost", 0) == 1
    assert passed["stalled_builds_restarted"] == 0 and passed["lost_agents_failed"] == 0
    assert passed["start_failures"] == 0
    assert lost_counted(app, "pod_gone") == 1
    assert deleted_counted(app) == (1 if how == "evicted" else 0)  # a pod was there to delete
    work(app)  # the provision the pass queued
    new = assert_placed_again(app, kube, jenkins_fake, key, agent)
    # Its node is another's, with a secret of its own (Jenkins derives it from the name): the
    # warm pod's process, were it still running, cannot take the build.
    assert jenkins_fake.nodes[new].secret != warm_node.secret
    assert jenkins_fake.agent_connects(agent, warm_node.secret, "warm-pod") == \
        f"Unknown client name: {agent}"
    assert len(jenkins_fake.builds) == 1  # triggered once, at the claim


def test_a_claimed_warm_agent_oom_killed_before_its_build_reached_it_is_replaced(
        app, kube, jenkins_fake):
    """The claimed agent is online (agent_online_at, marked with the claim), then its JVM is
    OOM-killed before Jenkins handed it the build: placed again by this repair, as any lost
    claim, not failed as a start failure by the fail an ended pod now asks for (workers.
    failures: the warm pod's build-key label is its own, no build's), nor released as the
    build's own end."""
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    rt = runtime.current()
    assert record(app, key).get("agent_online_at")  # marked with the claim: online already
    jenkins_fake.disconnect_agent(agent)
    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    work(app)  # what the worker's pod watch queued, if anything

    passed = reconcile.reconcile_once(rt)

    assert passed.get("warm_claims_lost", 0) == 1, passed
    assert passed["start_failures"] == 0 and passed["lost_agents_failed"] == 0
    assert lost_counted(app, "pod_gone") == 1
    work(app)  # the provision the pass queued
    assert_placed_again(app, kube, jenkins_fake, key, agent)
    assert len(jenkins_fake.builds) == 1 and jenkins_fake.cancelled_items == []


def test_a_claimed_warm_agent_offline_past_the_connect_timeout_is_replaced(
        app, kube, jenkins_fake):
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    jenkins_fake.disconnect_agent(agent)  # its agent process died; its pod runs on
    rt = runtime.current()
    at = claimed_at(app, key)

    early = reconcile.reconcile_once(rt, now=at + CONNECT_TIMEOUT_SECONDS - 5)
    assert early.get("warm_claims_lost", 0) == 0 and record(app, key)["warm_agent"] == agent
    passed = reconcile.reconcile_once(rt, now=at + CONNECT_TIMEOUT_SECONDS + 1)

    assert passed.get("warm_claims_lost", 0) == 1
    assert lost_counted(app, "offline") == 1 and deleted_counted(app) == 1
    assert kube.pod(NAMESPACE, agent) is None  # the warm pod went
    work(app)
    assert len(jenkins_fake.builds) == 1
    assert_placed_again(app, kube, jenkins_fake, key, agent)


def test_after_a_restart_the_claimed_agent_that_reconnects_in_time_is_left_alone(
        app, kube, jenkins_fake):
    """Two builds on two warm agents, both offline after a Jenkins restart that ended more
    than the connect timeout after the claims: each gets its connect time from when Jenkins
    was last seen away. The one whose agent reconnects keeps it and runs there; the other's
    is placed again once that time is over."""
    (back_key, back), (gone_key, gone) = claimed(app, kube, jenkins_fake, pushes=2)
    rt = runtime.current()
    start = max(claimed_at(app, back_key), claimed_at(app, gone_key)) + 50
    returned = away_for(rt, jenkins_fake, start, 20)  # every agent offline from then on

    during = reconcile.reconcile_once(rt, now=returned + 10)  # 80 s after the claims
    assert during.get("warm_claims_lost", 0) == 0
    jenkins_fake.connect_agent(back)
    passed = reconcile.reconcile_once(rt, now=returned + CONNECT_TIMEOUT_SECONDS + 1)

    assert passed.get("warm_claims_lost", 0) == 1
    rec = record(app, back_key)
    assert rec["warm_agent"] == back and rec["status"] == "triggered"
    assert kube.pod(NAMESPACE, back)["metadata"]["labels"][agents.WARM_LABEL] == "claimed"
    assert [(e.state, e.build) for e in pool_of(rt) if e.name == back] == [
        (WarmState.CLAIMED, back_key)]
    assert (queue_item(jenkins_fake, back), back) in jenkins_fake.dispatch()
    assert lost_counted(app, "offline") == 1
    work(app)
    assert len(jenkins_fake.builds) == 2
    assert_placed_again(app, kube, jenkins_fake, gone_key, gone)


def test_a_build_that_left_the_queue_is_not_placed_again(app, kube, jenkins_fake):
    """Jenkins handed the build to the agent (its STARTED not heard yet) before the pod
    went: it started, and is the lost-agent repair's, never given a second agent."""
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    assert jenkins_fake.dispatch() == [(jenkins_fake.builds[0].queue_id, agent)]
    kube.delete_pod(NAMESPACE, agent)

    passed = reconcile.reconcile_once(runtime.current(), now=time.time())

    assert passed.get("warm_claims_lost", 0) == 0
    assert record(app, key)["warm_agent"] == agent and agent not in pod_names(kube)
    assert lost_counted(app, "pod_gone") == 0


def test_a_pipeline_whose_agent_block_waits_for_a_lost_warm_agent_is_replaced(
        app, kube, jenkins_fake):
    """A Pipeline's run starts on the controller at once (its STARTED comes: the build is
    running) while its agent block waits in the queue on the warm agent's label; the agent's
    pod goes before the block got it. The block, not a second build, goes to the new agent."""
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    jenkins_fake.disconnect_agent(agent)  # its agent went first: the block waits
    block = jenkins_fake.start_pipeline(queue_item(jenkins_fake, agent))
    notify(app, jenkins_fake, block.run, "STARTED")
    assert record(app, key)["status"] == "running"
    kube.delete_pod(NAMESPACE, agent)

    passed = reconcile.reconcile_once(runtime.current())

    assert passed.get("warm_claims_lost", 0) == 1 and passed["lost_agents_failed"] == 0
    work(app)
    assert len(jenkins_fake.builds) == 1 and jenkins_fake.stopped_builds == []
    # Still running, as its run is: the provision's `triggered` moves no build back (it
    # did, and the build showed waiting for its agent until a repair asked Jenkins again).
    assert_placed_again(app, kube, jenkins_fake, key, agent, waiting=block.queue_id,
                        status="running")


def test_a_pipeline_block_resumed_after_a_restart_is_not_given_a_fresh_agent(
        app, kube, jenkins_fake):
    """The block ran on the warm agent before Jenkins restarted; resumed, it waits in the
    queue on the agent's label again, as a block that never ran does. Its workspace is on
    that agent: a fresh pod would run the rest of it in an empty one. Once the pod goes, the
    build is the lost-agent repair's (workers.engine.lost_agents), not placed again."""
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    block = jenkins_fake.start_pipeline(queue_item(jenkins_fake, agent))
    notify(app, jenkins_fake, block.run, "STARTED")
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]  # it runs there
    rt = runtime.current()
    returned = away_for(rt, jenkins_fake, time.time() + 1, 5)
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.label == agent
    kube.delete_pod(NAMESPACE, agent)

    passed = reconcile.reconcile_once(rt, now=returned + CONNECT_TIMEOUT_SECONDS + 1)

    assert passed.get("warm_claims_lost", 0) == 0
    assert record(app, key)["warm_agent"] == agent and agent not in pod_names(kube)


def test_a_started_build_whose_warm_pods_all_went_is_not_provisioned_as_stalled(
        app, kube, jenkins_fake):
    """Jenkins handed the build to its warm agent, then every warm pod of the template went
    (a node drained): the build has no pod of its own to make again. Its lost agent is the
    lost-agent repair's and finish_lost_builds'; restart_stalled would only claim the same gone
    agent again, pass after pass."""
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    assert jenkins_fake.dispatch() == [(jenkins_fake.builds[0].queue_id, agent)]
    for name in pod_names(kube):
        kube.delete_pod(NAMESPACE, name)
    rt = runtime.current()

    later = reconcile.reconcile_once(rt, now=time.time() + rt.settings.provision_lease_seconds
                                     + 1)

    assert later["stalled_builds_restarted"] == 0
    assert record(app, key)["warm_agent"] == agent


def test_a_claimed_warm_agent_from_before_installation_labels_is_replaced_too(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """An installation with an identity upgraded while a build held a warm agent: that
    agent's pod has no installation label, and is its own while its warm store knows it
    (workers.adapters.legacy_pods). Lost, its pod (evicted) is deleted before the store
    forgets it; deleted after, it was no longer known, so it stayed, and the build's new pod
    of the same name was refused as another's: the build failed instead of being placed."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE,
                   CI_AUTOSCALER_INSTALLATION="prod/ci-autoscaler")
    kube.add_node("node-a", cpu="8", memory="32Gi")
    runtime.install(None)
    app = create_app()
    try:
        [(key, agent)] = claimed(app, kube, jenkins_fake)
        pod = kube.pod(NAMESPACE, agent)
        del pod["metadata"]["labels"][INSTALLATION_LABEL]  # made by the version before
        del pod["metadata"]["annotations"][INSTALLATION_ANNOTATION]
        kube._put(PODS, NAMESPACE, agent, pod)
        kube.evict(NAMESPACE, agent)
        work(app)

        passed = reconcile.reconcile_once(runtime.current())

        assert passed.get("warm_claims_lost", 0) == 1 and deleted_counted(app) == 1
        work(app)  # the provision the pass queued
        new = assert_placed_again(app, kube, jenkins_fake, key, agent)
        labels = kube.pod(NAMESPACE, new)["metadata"]["labels"]
        assert labels[INSTALLATION_LABEL] == "prod.ci-autoscaler"
    finally:
        runtime.current().close()
        runtime.install(None)


@pytest.mark.parametrize("how", ["evicted", "offline"])
def test_the_new_pod_made_while_the_pass_goes_on_is_not_taken_for_an_orphan(
        app, kube, jenkins_fake, monkeypatch, how):
    """A worker takes the provision the lost pass queued at once, and makes the build's new
    pod (and Jenkins node) under the agent's name while the same pass goes on to its repairs.
    Their listing still holds the lost warm pod of that name, which no store knows now: it is
    not theirs to judge, or they took it for an orphan and deleted, by its name, the new pod
    and its Jenkins node."""
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    if how == "evicted":
        kube.evict(NAMESPACE, agent)
        work(app)
    else:
        kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
        jenkins_fake.disconnect_agent(agent)
    placing = warm_lost.replace_lost

    def and_provision(*args):
        done = placing(*args)
        work(app)  # an idle worker runs the provision queued, before the repairs
        return done

    monkeypatch.setattr(warm_lost, "replace_lost", and_provision)
    at = claimed_at(app, key) + (CONNECT_TIMEOUT_SECONDS + 1 if how == "offline" else 0)
    passed = reconcile.reconcile_once(runtime.current(), now=at)

    new = record(app, key)["agent"]
    assert kube.pod(NAMESPACE, new) is not None and new in jenkins_fake.nodes
    assert passed.get("warm_claims_lost", 0) == 1 and passed["pods_deleted"] == 0
    assert_placed_again(app, kube, jenkins_fake, key, agent)
