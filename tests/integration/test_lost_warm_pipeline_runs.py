"""A Pipeline run on a claimed warm agent lost after the agent connected decides itself, as
one on an agent of its own does (workers.engine.lost_runs).

The run's node block runs on the warm agent it claimed; Kubernetes takes the pod away (the
kubelet evicts it, or a drain deletes it). Before, such a build was aborted in Jenkins and
failed `pod_lost` (a drain), or released as a pod that ended (an eviction): either way a
Pipeline's ``retry(conditions: [agent()])`` was defeated. Now its Jenkins node is deleted, the
run left to decide: with the retry, its new block gets a normal agent pod under a new name on
the warm agent's label (not a second warm claim), and the build ends SUCCESS, GitLab never
showing it failed; without, the run ends ABORTED by itself and GitLab says failed, with why.
A freestyle build on an evicted warm agent is aborted and failed at once, as on its own agent.

Real redis-server, kmock over HTTP, the Jenkins fake (RemovedNodeListener and retry(agent()):
JenkinsFake.removed_node_timeout); the set-up of test_warm_lost."""

import time

import pytest

from tests.integration.test_disrupted_agents import LOST, disrupt
from tests.integration.test_jenkins_restart import notify
from tests.integration.test_lost_pipeline_runs import assert_ended_by_itself
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported
from tests.integration.test_warm_agents import pool_of, record
from tests.integration.test_warm_lost import CONFIG, claimed, lost_counted, queue_item
from tests.support.app import work
from tests.support.jenkins_fake import FREESTYLE_JOB
from workers import runtime
from workers.agent_starts import jenkins_away, online as agent_start
from workers.core import commit_status
from workers.core.errors import Overloaded, Unavailable
from workers.engine import lost_runs, reconcile, tasks
from workers.warm import agents

JOB = "build"  # the route's job (test_warm_lost.CONFIG)
LOST_EVENT_SECONDS = 60  # the setting's default


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE,
                          nodes=(("node-a", "8", "32Gi"), ("node-b", "8", "32Gi")))


def shown(app, key: str) -> commit_status.Wanted:
    """What GitLab is told of the build's push now."""
    status = commit_status.wanted(record(app, key))
    assert status is not None
    return status


def pipeline_on_warm_agent(app, kube, jenkins_fake, *, agent_retry_count: int):
    """A Pipeline build that claimed a warm agent, its `node` block running there, STARTED
    notified: (key, agent, the block)."""
    jenkins_fake.add_job(JOB, agent_retry_count=agent_retry_count)
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    block = jenkins_fake.start_pipeline(queue_item(jenkins_fake, agent))
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    notify(app, jenkins_fake, block.run, "STARTED")
    assert record(app, key)["status"] == "running"
    return key, agent, block


def freestyle_on_warm_agent(app, kube, jenkins_fake):
    """A freestyle build that claimed a warm agent, running there, STARTED: (build key,
    agent, run)."""
    jenkins_fake.add_job(JOB, kind=FREESTYLE_JOB)
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    item = queue_item(jenkins_fake, agent)
    assert jenkins_fake.dispatch() == [(item, agent)]
    run = next(b for b in jenkins_fake.builds if b.queue_id == item)
    notify(app, jenkins_fake, run, "STARTED")
    return key, agent, run


def taken_away(app, kube, jenkins_fake, agent: str, how: str) -> None:
    """The kubelet evicts the warm agent's pod (Failed, Evicted), or a drain deletes it; a
    reconcile pass looks at it (a claimed warm pod's build-key label is its own name: the
    worker's watch finds no build of it)."""
    if how == "evicted":
        disrupt(kube, jenkins_fake, agent, "evicted")
    else:
        kube.delete_pod(NAMESPACE, agent)
        jenkins_fake.disconnect_agent(agent)
    work(app)  # what the worker's pod watch queued, if anything
    rt, now = runtime.current(), time.time()
    reconcile.reconcile_once(rt, now=now)  # an eviction handed over; a missing pod noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)  # ... and its loss judged


def assert_left_to_decide(app, kube, jenkins_fake, key: str, agent: str, run) -> None:
    """Not failed nor aborted; the warm agent's pod and Jenkins node deleted (what makes
    Jenkins end the block), the warm pool counting it no more, the build no longer on it."""
    build = record(app, key)
    assert build["status"] == "running" and not build.get("fail_reason"), build
    assert build.get(lost_runs.LOST_RUN_FIELD), build
    assert "warm_agent" not in build, build
    assert jenkins_fake.stopped_builds == [] and run.state == "running"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert agent not in {e.name for e in pool_of(runtime.current())}
    assert shown(app, key).state == "running"
    assert exported(app, LOST) == 1


@pytest.mark.parametrize("how", ["evicted", "drained"])
def test_a_pipeline_on_a_lost_warm_agent_with_retry_agent_runs_its_block_again_on_a_new_agent(
        app, kube, jenkins_fake, how):
    key, agent, block = pipeline_on_warm_agent(app, kube, jenkins_fake, agent_retry_count=2)
    run = block.run

    taken_away(app, kube, jenkins_fake, agent, how)

    assert_left_to_decide(app, kube, jenkins_fake, key, agent, run)
    if how == "evicted":
        assert "Evicted" in record(app, key)[lost_runs.LOST_RUN_FIELD]
    # Jenkins cancels the block of the deleted node; the retry queues it again, same run,
    # on the warm agent's label
    (again,) = jenkins_fake.removed_node_timeout()
    assert again.run is run and again.label == agent
    rt, now = runtime.current(), time.time()
    reconcile.reconcile_once(rt, now=now)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)  # placed again
    work(app)
    build = record(app, key)
    new = build["agent"]
    assert new != agent and build["status"] == "running", build
    assert not build.get(lost_runs.LOST_RUN_FIELD) and shown(app, key).state == "running"
    pod = kube.pod(NAMESPACE, new)  # a pod of its own, not a second warm claim
    assert pod is not None and agents.WARM_LABEL not in pod["metadata"]["labels"]
    assert "warm_agent" not in record(app, key)
    assert jenkins_fake.nodes[new].label == agent  # the label the block waits on

    kube.kubelet_status(NAMESPACE, new, phase="Running", node="node-b")
    jenkins_fake.connect_agent(new)
    agent_start.notice_online(rt)
    assert (again.queue_id, new) in jenkins_fake.dispatch()
    jenkins_fake.finish_node_block(again)
    jenkins_fake.finish_build(run.queue_id, "SUCCESS")
    notify(app, jenkins_fake, run, "COMPLETED")

    build = record(app, key)
    assert not build.get("fail_reason") and build["result"] == "SUCCESS", build
    assert shown(app, key).state == "success"
    assert jenkins_fake.stopped_builds == [] and len(jenkins_fake.builds) == 1
    assert kube.pod(NAMESPACE, new) is None and new not in jenkins_fake.nodes
    assert exported(app, LOST) == 1
    assert lost_counted(app, "pod_gone") == 0  # no claim lost before its build started


def test_a_pipeline_on_an_evicted_warm_agent_without_retry_ends_by_itself_and_says_why(
        app, kube, jenkins_fake):
    key, agent, block = pipeline_on_warm_agent(app, kube, jenkins_fake, agent_retry_count=1)
    run = block.run

    taken_away(app, kube, jenkins_fake, agent, "evicted")

    assert_left_to_decide(app, kube, jenkins_fake, key, agent, run)
    assert jenkins_fake.removed_node_timeout() == []  # no retry: the run ends
    assert (run.state, run.result) == ("finished", "ABORTED")
    notify(app, jenkins_fake, run, "COMPLETED")

    assert_ended_by_itself(record(app, key), shown(app, key), jenkins_fake,
                           lost=exported(app, LOST))


def test_a_freestyle_build_on_an_evicted_warm_agent_is_aborted_and_failed_at_once(
        app, kube, jenkins_fake):
    """As on an agent of its own (test_lost_pipeline_runs): its steps fail with the agent's
    channel closed, nothing to retry. Before, it was released as a pod that ended, its run
    left going on in Jenkins with no agent and the build shown released."""
    key, agent, run = freestyle_on_warm_agent(app, kube, jenkins_fake)

    disrupt(kube, jenkins_fake, agent, "evicted")
    reconcile.reconcile_once(runtime.current())

    build = record(app, key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert "Evicted" in build["error"], build
    assert jenkins_fake.stopped_builds == [(JOB, run.number)]
    assert shown(app, key).state == "failed"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert exported(app, LOST) == 1


def test_an_evicted_warm_agent_that_a_pass_could_not_judge_is_left_to_the_next_pass(
        app, kube, jenkins_fake):
    """A task holds the build's provision lease while the pass looks at its evicted warm
    agent (or Jenkins fails the read): the pass's repairs must not release it as a pod that
    ended meanwhile, the old way that left its run to wait for an agent that never comes
    back, as a claimed warm pod's build-key label is its own name: the start-failure sweep,
    which guards a build's own pod so, finds no build of it."""
    key, agent, block = pipeline_on_warm_agent(app, kube, jenkins_fake, agent_retry_count=2)
    disrupt(kube, jenkins_fake, agent, "evicted")
    work(app)
    rt = runtime.current()
    lease = tasks.provision_lease(rt, key)
    assert lease.acquire()
    try:
        reconcile.reconcile_once(rt)
    finally:
        lease.release()
    build = record(app, key)
    assert build["status"] == "running" and not build.get(lost_runs.LOST_RUN_FIELD), build

    reconcile.reconcile_once(rt)

    assert_left_to_decide(app, kube, jenkins_fake, key, agent, block.run)


def test_a_fail_of_a_warm_build_that_stopped_half_way_is_finished_by_the_next_pass(
        app, kube, jenkins_fake):
    """Jenkins struggles (429) as the fail of a freestyle build on an evicted warm agent
    aborts its run: the build is failed, its run not aborted yet, and the pass stops. As the
    start-failure sweep does for a build's own pod (agent_starts.watch.unfinished), the next
    pass finishes that fail: its run aborted, and its warm pod, Jenkins node and pool entry
    gone. Before, no pass looked at it again (the sweep finds no build of a warm pod, the
    lost warm agents' look only builds on their way or running), and the stray pods repair
    left its pod to the sweep: the evicted pod stood, claimed, until the build's record
    expired."""
    key, agent, run = freestyle_on_warm_agent(app, kube, jenkins_fake)
    disrupt(kube, jenkins_fake, agent, "evicted")
    jenkins_fake.fail_next(429, path_prefix=f"/job/{JOB}/{run.number}/stop",
                           headers={"Retry-After": "120"})
    rt, now = runtime.current(), time.time()

    passed, error = reconcile.reconcile_pass(rt, now=now)

    assert isinstance(error, Overloaded), error
    build = record(app, key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [] and run.state == "running"
    assert kube.pod(NAMESPACE, agent) is not None  # left to a pass that can finish it

    passed, error = reconcile.reconcile_pass(rt, now=now + 1)

    assert error is None, error
    assert jenkins_fake.stopped_builds == [(JOB, run.number)]
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert agent not in {e.name for e in pool_of(rt)}
    assert record(app, key)["fail_reason"] == "pod_lost"
    assert shown(app, key).state == "failed"
    assert exported(app, LOST) == 1


def test_an_evicted_warm_agent_left_by_a_pass_without_jenkins_is_judged_by_the_next(
        app, kube, jenkins_fake, monkeypatch):
    """Jenkins cannot be reached as the pass looks at the evicted warm agent (an outage: the
    controller runs on, its session the same after it). The look at Jenkins' session that
    tells a restart from it fails too: the pass's repairs must not release the build as a
    pod that ended meanwhile (its run would wait on a gone agent's label for ever)."""
    # The pass comes 15 s after the last: no answer is fresh enough to show the session
    # (jenkins_away.NOTICE_MAX_AGE_SECONDS), and the look asks Jenkins
    monkeypatch.setattr(jenkins_away, "NOTICE_MAX_AGE_SECONDS", 0.0)
    key, agent, block = pipeline_on_warm_agent(app, kube, jenkins_fake, agent_retry_count=2)
    disrupt(kube, jenkins_fake, agent, "evicted")
    work(app)
    rt = runtime.current()
    jenkins_fake.cut_off()
    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)
    build = record(app, key)
    assert build["status"] == "running" and not build.get(lost_runs.LOST_RUN_FIELD), build
    assert kube.pod(NAMESPACE, agent) is not None

    jenkins_fake.reachable()
    reconcile.reconcile_once(rt)

    assert_left_to_decide(app, kube, jenkins_fake, key, agent, block.run)
