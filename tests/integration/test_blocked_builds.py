"""A job that runs one build at a time (disableConcurrentBuilds) keeps the next builds in the
Jenkins queue as blocked items; their agent pods are given up after PARK_AFTER_SECONDS and made
again once Jenkins lets the build go (workers.engine.blocked_builds). Real redis-server, kmock over
HTTP, the Jenkins fake (its blocked item as jenkins.model.BlockedBecauseOfBuildInProgress
words it)."""

import json
import time

import pytest

from tests.integration.test_lost_agents import exported
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import pod_names, state_of
from tests.support.app import cluster_app, one_template_config, work
from tests.support.jenkins_fake import FREESTYLE_JOB, WORKFLOW_JOB
from workers import runtime
from workers.engine import jenkins_quiet, reconcile, tasks
from workers.agent_starts import online as agent_start
from workers.engine.blocked_builds import PARK_AFTER_SECONDS, QUIETING_DOWN
from workers.core.models import BuildRequest

CONFIG = one_template_config("""
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
""")
PARKED = 'ci_autoscaler_agents_deleted_total{reason="parked",template="small"}'


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    jenkins_fake.add_job("build", concurrent=False)
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        yield app


def test_a_build_jenkins_blocks_gives_its_pod_up_and_gets_one_when_let_go(
        app, kube, jenkins_fake):
    first, second = push(app.test_client(), 1), push(app.test_client(), 2)
    work(app)
    state, rt = state_of(app), runtime.current()
    agents = [state.get_build(k)["agent"] for k in (first, second)]
    one, two = (jenkins_fake.build_with("CI_AUTOSCALER_AGENT", a)[0] for a in agents)
    jenkins_fake.connect_agent(agents[0])
    jenkins_fake.connect_agent(agents[1])
    agent_start.notice_online(rt)
    jenkins_fake.start_build(one.queue_id)  # the second is now held back by Jenkins
    with pytest.raises(AssertionError, match="blocked"):
        jenkins_fake.start_build(two.queue_id)
    now = time.time()

    young = reconcile.reconcile_once(rt, now=now)
    parked = reconcile.reconcile_once(rt, now=now + PARK_AFTER_SECONDS + 1)

    assert young["builds_parked"] == 0  # a short blockage keeps its pod
    assert parked["builds_parked"] == 1
    jenkins_fake.disconnect_agent(agents[1])  # its agent process ended with the pod
    assert pod_names(kube) == [agents[0]]
    assert agents[1] in jenkins_fake.nodes  # its Jenkins node and queue item stay
    build = state.get_build(second)
    assert build["status"] == "triggered" and build["parked_at"]
    assert "agent_online_at" not in build  # its next agent's start is a start of its own
    assert build["wait_detail"] == f"Build #{one.number} is already in progress (ETA: N/A)"
    assert exported(app, PARKED) == 1
    # Parked, not stalled: nothing makes its pod again while Jenkins holds it back.
    later = reconcile.reconcile_once(rt, now=now + 10 * PARK_AFTER_SECONDS)
    work(app)
    assert (later["builds_parked"], later["builds_resumed"],
            later["stalled_builds_restarted"]) == (0, 0, 0)
    assert pod_names(kube) == [agents[0]]

    jenkins_fake.finish_build(one.queue_id)  # Jenkins lets the second go
    resumed = reconcile.reconcile_once(rt, now=now + 11 * PARK_AFTER_SECONDS)
    work(app)

    assert resumed["builds_resumed"] == 1
    # Its pod under a new agent name, its old one's node deleted (workers.engine.agent_names).
    new = state.get_build(second)["agent"]
    assert new != agents[1] and new in pod_names(kube)
    assert agents[1] not in jenkins_fake.nodes and jenkins_fake.nodes[new].label == agents[1]
    assert not state.get_build(second).get("parked_at")
    assert len(jenkins_fake.builds) == 2  # not triggered again
    assert second in {p.build_key for p in agent_start.pending_agents(rt)}  # on its way up
    jenkins_fake.start_build(two.queue_id)


@pytest.mark.parametrize("kind", [WORKFLOW_JOB, FREESTYLE_JOB])
def test_builds_jenkins_keeps_queued_while_it_quiets_down_give_their_pods_up(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, kind):
    jenkins_fake.add_job("build", kind=kind)  # runs builds side by side: nothing blocks it
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        key = push(app.test_client(), 1)
        work(app)
        state, rt = state_of(app), runtime.current()
        agent = state.get_build(key)["agent"]
        queued = jenkins_fake.build_with("CI_AUTOSCALER_AGENT", agent)[0]
        jenkins_fake.connect_agent(agent)
        agent_start.notice_online(rt)
        jenkins_fake.quiet_down()  # Manage Jenkins > Prepare for Shutdown
        assert jenkins_fake.dispatch() == []  # its agent is online and idle: nothing starts
        now = time.time()

        parked = reconcile.reconcile_once(rt, now=now + PARK_AFTER_SECONDS + 1)

        assert parked["builds_parked"] == 1
        assert pod_names(kube) == []
        build = state.get_build(key)
        assert build["status"] == "triggered" and build["parked_at"]
        assert build["wait_detail"] == "Jenkins is about to shut down"
        jenkins_fake.disconnect_agent(agent)
        held = reconcile.reconcile_once(rt, now=now + 3 * PARK_AFTER_SECONDS)
        assert (held["builds_resumed"], held["stalled_builds_restarted"]) == (0, 0)

        jenkins_fake.cancel_quiet_down()
        resumed = reconcile.reconcile_once(rt, now=now + 4 * PARK_AFTER_SECONDS)
        work(app)

        assert resumed["builds_resumed"] == 1
        new = state.get_build(key)["agent"]  # a name of its own (workers.engine.agent_names)
        assert pod_names(kube) == [new] and new != agent
        assert len(jenkins_fake.builds) == 1  # not triggered again
        jenkins_fake.connect_agent(new)
        assert jenkins_fake.dispatch() == [(queued.queue_id, new)]


@pytest.mark.parametrize("kind", [WORKFLOW_JOB, FREESTYLE_JOB])
def test_pushes_while_jenkins_quiets_down_are_parked_at_once_and_get_pods_when_it_ends(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, kind):
    """Before, each got its pod, whose agent connected and idled on its node's room until
    the pass parked it two minutes later."""
    jenkins_fake.add_job("build", kind=kind)
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        jenkins_fake.quiet_down()  # Manage Jenkins > Prepare for Shutdown
        keys = [push(app.test_client(), n) for n in range(3)]
        work(app)
        state, rt = state_of(app), runtime.current()

        assert pod_names(kube) == []
        agents = [state.get_build(k)["agent"] for k in keys]
        for key, agent in zip(keys, agents):
            build = state.get_build(key)
            assert build["status"] == "triggered" and build["parked_at"]
            assert build["wait_detail"] == QUIETING_DOWN
            assert agent in jenkins_fake.nodes  # its node and queue item, as a parked one's
            assert len(jenkins_fake.build_with("CI_AUTOSCALER_AGENT", agent)) == 1
        # One reading of the flag served the burst (the other GET is the trigger's session).
        assert len(jenkins_fake.requests_to("/api/json", "GET")) <= 2
        now = time.time()
        held = reconcile.reconcile_once(rt, now=now + 3 * PARK_AFTER_SECONDS)
        work(app)
        assert (held["builds_parked"], held["builds_resumed"],
                held["stalled_builds_restarted"]) == (0, 0, 0)
        assert pod_names(kube) == []

        jenkins_fake.cancel_quiet_down()
        resumed = reconcile.reconcile_once(rt, now=now + 4 * PARK_AFTER_SECONDS)
        work(app)

        assert resumed["builds_resumed"] == 3
        assert pod_names(kube) == sorted(agents)
        assert len(jenkins_fake.builds) == 3  # not triggered again
        for agent in agents:
            jenkins_fake.connect_agent(agent)
        assert sorted(a for _, a in jenkins_fake.dispatch()) == sorted(agents)


def test_a_build_provisioned_again_while_jenkins_quiets_down_is_parked_without_its_slot(
        app, kube, jenkins_fake):
    """A triggered build whose pod went (a node drained) is provisioned again by the stalled
    builds repair while Jenkins quiets down: parked with no pod, as a push then is. It gives
    its agent slot back, as a build the pass parks does (blocked_builds._park; workers.engine.caps:
    a cap is never held by builds that have no pod). Parked at the provision, it kept the
    slot it took for its first pod for the whole quiet down (maxConcurrent and maxAgents
    counted it), where a running Pipeline's pod made again, which is not parked, needs one."""
    key = push(app.test_client(), 1)
    work(app)
    state, rt = state_of(app), runtime.current()
    agent = state.get_build(key)["agent"]
    assert key in rt.capacity.slots()
    jenkins_fake.quiet_down()
    kube.delete_pod(NAMESPACE, agent)  # drained
    # the push's reading of Jenkins' flag (not quieting) has expired: READING_SECONDS later
    state.redis.delete(state.prefix + jenkins_quiet.KEY)

    stalled = reconcile.reconcile_once(
        rt, now=time.time() + rt.settings.provision_lease_seconds + 1)
    work(app)

    assert stalled["stalled_builds_restarted"] == 1
    build = state.get_build(key)
    assert build["status"] == "triggered" and build["wait_detail"] == QUIETING_DOWN
    assert pod_names(kube) == []
    assert key not in rt.capacity.slots()
    jenkins_fake.cancel_quiet_down()
    resumed = reconcile.reconcile_once(rt, now=time.time() + 3 * PARK_AFTER_SECONDS)
    work(app)
    assert resumed["builds_resumed"] == 1
    assert pod_names(kube) == [state.get_build(key)["agent"]] != [agent]
    assert key in rt.capacity.slots()


def test_a_provision_job_left_from_before_the_park_does_not_make_its_pod_again(
        app, kube, jenkins_fake):
    """A job of the build that RQ still had (a retry scheduled before the park: one that
    lost the build's lease to the provision that made the pod, or met a 503, runs again up to
    120 s later, and later still behind a busy queue) finds the build parked: it leaves it
    so; the pass makes its pod once Jenkins lets it go."""
    first, second = push(app.test_client(), 1), push(app.test_client(), 2)
    work(app)
    state, rt = state_of(app), runtime.current()
    agents = [state.get_build(k)["agent"] for k in (first, second)]
    one, two = (jenkins_fake.build_with("CI_AUTOSCALER_AGENT", a)[0] for a in agents)
    jenkins_fake.start_build(one.queue_id)  # the second is now held back by Jenkins
    now = time.time()
    assert reconcile.reconcile_once(rt, now=now + PARK_AFTER_SECONDS + 1)["builds_parked"] == 1
    assert pod_names(kube) == [agents[0]]

    tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(
        state.get_build(second)["request"])))
    work(app)

    assert pod_names(kube) == [agents[0]]
    build = state.get_build(second)
    assert build["status"] == "triggered" and build["parked_at"]
    jenkins_fake.finish_build(one.queue_id)  # Jenkins lets the second go
    assert reconcile.reconcile_once(rt, now=now + 2 * PARK_AFTER_SECONDS)["builds_resumed"] == 1
    work(app)
    new = state.get_build(second)["agent"]  # placed again: a new name (workers.engine.agent_names)
    assert new in pod_names(kube) and new != agents[1]
    assert len(jenkins_fake.builds) == 2
    jenkins_fake.start_build(two.queue_id)
