"""A running build whose agent pod goes away (a node drained, a spot node reclaimed, a pod
deleted by hand) is aborted in Jenkins and failed once the reconcile loop has seen the pod gone
for `lost_event_seconds`; one that Jenkins says finished is released instead (workers.
lost_agents). Real redis-server, kmock over HTTP, the Jenkins fake.

A drain evicts through the Eviction API: the pod is deleted (Terminating, then gone), never
phase Failed (kubectl drain; REALITY.md "Container states" has the kubelet's own eviction,
phase Failed: test_disrupted_agents). Jenkins is told nothing: the
agent's computer goes offline and a Pipeline waits for it to come back."""

import time

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import (exported, failures_counted, one_build,
                                                   state_of)
from tests.support.app import JENKINS_TOKEN, mover, production_env, work
from tests.support.kmock_cluster import PODS
from service.app import create_app
from workers import runtime
from workers.engine import jenkins_quiet, reconcile, tasks
from workers.agent_starts import online as agent_start
from workers.core.errors import Unavailable
from workers.core import commit_status
from workers.core.pods import agent_secret_name
from workers.core.start_failures import LOST_RUN_FIELD

LOST_EVENT_SECONDS = 30
CONFIG = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
templates:
  small:
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    maxConcurrent: 1
"""
LOST = 'ci_autoscaler_agents_lost_total{template="small"}'


@pytest.fixture
def config_text():
    return CONFIG


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, config_text):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE,
                   CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS))
    kube.add_node("node-a", cpu="8", memory="32Gi")
    runtime.install(None)
    yield create_app()
    runtime.install(None)


def running_build(app, kube, jenkins_fake, *, connected: bool = True):
    """One build whose STARTED notification was taken, and whose agent connected (a Pipeline
    sends STARTED before any agent connects: `connected=False`)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    if connected:
        jenkins_fake.connect_agent(agent)
        assert agent_start.notice_online(runtime.current()) == 1
    build = jenkins_fake.start_build(item)
    started = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                     json=jenkins_fake.notification(build, "STARTED"))
    assert started.status_code == 200, started.get_json()
    mover(app).drain()  # the worker's intake mover applies it (workers.engine.started)
    assert state_of(app).get_build(key)["status"] == "running"
    return key, agent, build


def test_a_running_build_whose_pod_was_drained_is_aborted_and_failed_once(
        app, kube, jenkins_fake):
    key, agent, build = running_build(app, kube, jenkins_fake)
    waiting = push(app.test_client(), 1)  # waits for the only slot (maxConcurrent: 1)
    work(app)
    assert state_of(app).get_build(waiting)["wait_reason"] == "cap"
    rt = runtime.current()

    kube.delete_pod(NAMESPACE, agent)  # kubectl drain: evicted through the API, deleted
    now = time.time()
    assert reconcile.reconcile_once(rt, now=now)["lost_agents_failed"] == 0  # noticed only
    assert state_of(app).get_build(key)["status"] == "running"
    assert agent in jenkins_fake.nodes  # a lagging listing gets its time
    assert reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS - 1)[
        "lost_agents_failed"] == 0

    result = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert result["lost_agents_failed"] == 1
    assert jenkins_fake.stopped_builds == [("build", build.number)]
    assert agent not in jenkins_fake.nodes
    state = state_of(app).get_build(key)
    assert (state["status"], state["fail_reason"]) == ("failed", "pod_lost")
    assert agent in state["error"] and "while its build ran" in state["error"]
    assert exported(app, LOST) == 1
    assert failures_counted(app, "ImagePullBackOff") == 0  # not counted as a start failure
    # Its slot is free: the waiting build gets an agent.
    work(app)
    assert state_of(app).get_build(waiting)["status"] == "triggered"
    # Once: the abort's COMPLETED notification and later passes change nothing.
    aborted = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                     json=jenkins_fake.notification(build, "COMPLETED"))
    assert aborted.status_code in (200, 202)
    work(app)
    later = reconcile.reconcile_once(rt, now=now + 3 * LOST_EVENT_SECONDS)
    assert later["lost_agents_failed"] == 0
    assert state_of(app).get_build(key)["status"] == "failed"
    assert jenkins_fake.stopped_builds == [("build", build.number)]
    assert exported(app, LOST) == 1


def test_a_pod_that_is_back_in_the_next_listing_is_not_lost(app, kube, jenkins_fake):
    """A listing that lagged (or a pod deleted and its name made again) clears the mark."""
    key, agent, _ = running_build(app, kube, jenkins_fake)
    rt, now = runtime.current(), time.time()
    pod = kube.pod(NAMESPACE, agent)
    kube.delete_pod(NAMESPACE, agent)
    reconcile.reconcile_once(rt, now=now)
    assert state_of(app).get_build(key)["pod_missing_at"]
    kube.create_pod(NAMESPACE, agent, labels=pod["metadata"]["labels"])

    reconcile.reconcile_once(rt, now=now + 1)
    result = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert result["lost_agents_failed"] == 0
    assert state_of(app).get_build(key)["status"] == "running"
    assert jenkins_fake.stopped_builds == [] and agent in jenkins_fake.nodes


def test_a_build_that_ended_in_jenkins_after_its_pod_went_is_released_not_failed(
        app, kube, jenkins_fake):
    key, agent, build = running_build(app, kube, jenkins_fake)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)
    reconcile.reconcile_once(rt, now=now)
    jenkins_fake.finish_build(build.queue_id, "SUCCESS")  # and its COMPLETED was lost

    result = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert result["lost_agents_failed"] + result["lost_builds_released"] == 1
    assert state_of(app).get_build(key)["status"] == "released"
    assert jenkins_fake.stopped_builds == [] and agent not in jenkins_fake.nodes
    assert exported(app, LOST) == 0


def test_a_pipeline_whose_pod_was_drained_before_its_agent_connected_gets_a_new_pod(
        app, kube, jenkins_fake):
    """Nothing is lost yet (the Pipeline waits for its node block's agent): the pod is made
    again, as for a provision that stopped half-way; the build is not failed."""
    key, agent, build = running_build(app, kube, jenkins_fake, connected=False)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)

    first = reconcile.reconcile_once(rt, now=now)
    later = reconcile.reconcile_once(rt, now=now + 3 * LOST_EVENT_SECONDS)
    work(app)

    assert first["stalled_builds_restarted"] == 0  # not quiet for a lease period yet
    assert later["stalled_builds_restarted"] == 1 and later["lost_agents_failed"] == 0
    new = state_of(app).get_build(key)["agent"]  # a name of its own (workers.engine.agent_names)
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new] and new != agent
    # running still, as its run is: not moved back to triggered by the new pod's provision
    assert state_of(app).get_build(key)["status"] == "running"
    assert jenkins_fake.stopped_builds == [] and len(jenkins_fake.builds) == 1
    assert exported(app, LOST) == 0



def test_a_pipeline_whose_agent_ran_its_block_unseen_by_the_poll_and_was_drained_is_lost(
        app, kube, jenkins_fake):
    """The agent connected and took the Pipeline's agent block, but no poll saw it online
    (the reconcile leader down or busy the while): its pod drained, the build is lost as any
    whose agent the poll saw, once Jenkins shows its run on the agent's executor. Taken for
    one never connected, it was left to restart_stalled, whose new name was refused pass after
    pass (agent_names.busy: the old agent runs the build, taken offline and back each time),
    and the Pipeline waited for its gone agent for ever, holding its slot. Lost, its node is
    deleted and its run decides (workers.engine.lost_runs: test_lost_pipeline_runs): with no
    retry(agent()) in its script, Jenkins ends it ABORTED, and the build ends with it."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    block = jenkins_fake.start_pipeline(item)  # the run on the controller, its block queued
    assert app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=jenkins_fake
                                  .notification(block.run, "STARTED")).status_code == 200
    mover(app).drain()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]  # it took the block
    assert not state_of(app).get_build(key).get("agent_online_at")  # no poll since
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)  # kubectl drain
    jenkins_fake.disconnect_agent(agent)  # its process gone: the block waits for it

    reconcile.reconcile_once(rt, now=now)
    result = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert result["lost_agents_failed"] == 0, result  # left to its run, not failed
    state = state_of(app).get_build(key)
    assert state["status"] == "running" and state["agent"] == agent, state  # no new name
    assert agent in state[LOST_RUN_FIELD] and not state.get("fail_reason"), state
    assert agent not in jenkins_fake.nodes and jenkins_fake.stopped_builds == []
    assert exported(app, LOST) == 1
    # Jenkins ends the block of the deleted node; no retry: the run ends, ABORTED. Its
    # COMPLETED lost, the next pass reads its end; GitLab says why.
    assert jenkins_fake.removed_node_timeout() == [] and block.run.result == "ABORTED"
    reconcile.reconcile_once(rt, now=now + 2 * LOST_EVENT_SECONDS + 2)
    state = state_of(app).get_build(key)
    assert (state["status"], state["result"]) == ("released", "ABORTED"), state
    status = commit_status.wanted(state)
    assert status.state == "failed" and "agent lost" in status.description, status
    assert jenkins_fake.stopped_builds == [] and exported(app, LOST) == 1


def test_the_pod_made_again_for_a_drained_pipeline_keeps_its_secret_through_the_collector(
        app, kube, jenkins_fake):
    """The new pod had the drained one's name, and so its Secret, still owned by the drained
    pod until the garbage collector comes: a collector coming while the new pod is made
    deleted the Secret (its owners all gone), the new pod's container could not start
    (CreateContainerConfigError), and the provision failed on owning a Secret no longer
    there. Now it has a name of its own (workers.engine.agent_names), and a Secret of its own,
    owned by it only; the collector takes the drained pod's."""
    kube.assign_uids()
    key, agent, build = running_build(app, kube, jenkins_fake, connected=False)
    rt, now = runtime.current(), time.time()
    old = kube.pod(NAMESPACE, agent)["metadata"]["uid"]
    kube.delete_pod(NAMESPACE, agent)  # the pod only: its Secret waits for the collector
    kube.collect_garbage_before("create", PODS)

    reconcile.reconcile_once(rt, now=now)
    assert reconcile.reconcile_once(rt, now=now + 3 * LOST_EVENT_SECONDS)[
        "stalled_builds_restarted"] == 1
    work(app)

    [pod] = kube.pods(NAMESPACE)
    assert pod["metadata"]["name"] != agent
    secret = kube.secrets(NAMESPACE).get(agent_secret_name(pod["metadata"]["name"]))
    assert secret is not None, "the new pod's Secret was collected"
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [
        pod["metadata"]["uid"]] and pod["metadata"]["uid"] != old
    assert state_of(app).get_build(key)["status"] != "failed"


def test_a_build_a_provision_holds_is_left_for_the_next_pass(app, kube, jenkins_fake):
    """fail_build waits for the build's provision lease (a provision or release under way);
    the pass goes on with the rest and the next one decides."""
    key, agent, build = running_build(app, kube, jenkins_fake)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)
    reconcile.reconcile_once(rt, now=now)
    lease = tasks.provision_lease(rt, key)
    assert lease.acquire()

    held = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert held["lost_agents_failed"] == 0
    assert state_of(app).get_build(key)["status"] == "running"
    lease.release()
    freed = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 2)
    assert freed["lost_agents_failed"] == 1
    assert state_of(app).get_build(key)["fail_reason"] == "pod_lost"
    assert jenkins_fake.stopped_builds == [("build", build.number)]


def test_a_pipeline_whose_pod_was_drained_while_jenkins_quiets_down_gets_a_new_pod(
        app, kube, jenkins_fake):
    """The provision parks what Jenkins will not start while it quiets down, but only builds
    not started yet: parked, this one would wait for ever (the pass resumes a parked build
    when its queue item is no longer held, and this one's left the queue when its run
    started); it gets its pod again as before."""
    key, agent, build = running_build(app, kube, jenkins_fake, connected=False)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.quiet_down()
    rt.state.redis.delete(rt.state.prefix + jenkins_quiet.KEY)  # its push's reading expired

    later = reconcile.reconcile_once(rt, now=now + 3 * LOST_EVENT_SECONDS)
    work(app)

    assert later["stalled_builds_restarted"] == 1
    new = state_of(app).get_build(key)["agent"]
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new] and new != agent
    assert not state_of(app).get_build(key).get("parked_at")


def test_a_jenkins_that_is_away_when_a_lost_agent_is_judged_stops_the_pass_jenkins_steps(
        app, kube, jenkins_fake):
    """Jenkins away (503) when the lost build's state is asked: the pass's Jenkins steps stop
    there and wait for the next pass (workers.engine.jenkins_steps), and the build is judged once
    Jenkins answers. (The lost-builds check asks for the same build before fail_lost does, so
    this holds whichever step meets the 503 first; fail_lost itself lets Unavailable through
    since the commit of this test, where it took it for "a provision holds it".)"""
    key, agent, _build = running_build(app, kube, jenkins_fake)
    rt = runtime.current()
    kube.delete_pod(NAMESPACE, agent)
    now = time.time()
    reconcile.reconcile_once(rt, now=now)  # noticed
    # Jenkins restarting by the time the lost build is asked after (every URL 503 while it
    # loads: HudsonIsLoading); the steps before asked it other things in time
    jenkins_fake.fail_next(503, times=1000, path_prefix=f"/job/build/{_build.number}/")

    result, error = reconcile.reconcile_pass(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert isinstance(error, Unavailable), error
    assert result["lost_agents_failed"] == 0 and result["jenkins_steps_skipped"] > 0
    assert state_of(app).get_build(key)["status"] == "running"  # judged once Jenkins is back


@pytest.mark.parametrize("taken_by", ["EvictionByEvictionAPI", "PreemptionByScheduler",
                                      "DeletionByTaintManager"])
def test_a_lost_build_says_who_took_its_pod_away(app, kube, jenkins_fake, taken_by):
    """A drain (the Eviction API, once the PodDisruptionBudgets allow it), kube-scheduler's
    preemption for a pod of a higher PriorityClass, or the taint manager (a NoExecute taint)
    writes the DisruptionTarget condition before deleting the pod (Kubernetes 1.26 and
    later): the pass that finds the pod being deleted keeps its reason, and the failed
    build's error (so its commit status) names it, though the pod is gone by the time the
    build is failed."""
    key, agent, build = running_build(app, kube, jenkins_fake)
    kube.hold_deletions("node-a")  # Terminating through its grace period
    rt, now = runtime.current(), time.time()

    kube.disrupt_through_api(NAMESPACE, agent, taken_by)
    reconcile.reconcile_once(rt, now=now)
    kube.kubelet_confirms_deletion(NAMESPACE, agent)
    result = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert result["lost_agents_failed"] == 1, result
    state = state_of(app).get_build(key)
    assert state["fail_reason"] == "pod_lost" and f"({taken_by}: " in state["error"], state
    # with the condition's message, not its reason alone
    assert {"EvictionByEvictionAPI": "Eviction API: evicting",
            "PreemptionByScheduler": "preempting to accommodate a higher priority pod",
            "DeletionByTaintManager": "deleting due to NoExecute taint"}[taken_by] \
        in state["error"], state
    assert jenkins_fake.stopped_builds == [("build", build.number)]


RETAINED = CONFIG + """\
    podRetention: onFailure
    podRetentionSeconds: 600
"""


@pytest.mark.parametrize("config_text", [RETAINED])
def test_a_failed_build_whose_pod_was_drained_is_released_not_shown_retained(
        app, kube, jenkins_fake):
    """Its template keeps failed builds' pods, but its pod is gone: shown `retained` for the
    retention time, an operator looked for a pod that was not there, and /metrics counted
    it kept."""
    key, agent, build = running_build(app, kube, jenkins_fake)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)  # kubectl drain
    reconcile.reconcile_once(rt, now=now)
    jenkins_fake.finish_build(build.queue_id, "FAILURE")  # its agent lost; COMPLETED lost too

    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    state = state_of(app).get_build(key)
    assert (state["status"], state.get("result")) == ("released", "FAILURE")
    assert not state.get("retained_until")
    assert agent not in jenkins_fake.nodes
