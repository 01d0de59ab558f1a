"""A Pipeline run whose agent is lost after it connected decides itself (workers.engine.lost_runs).

Pipelines written for ephemeral agents wrap their work in
``retry(count: 2, conditions: [agent()]) { node(label) { ... } }``. Jenkins ends the block of a
deleted agent with a RemovedNodeCause, which `agent()` (AgentErrorCondition) retries; our
abort was a user's interruption, which no retry retries: the build failed, its user's
recovery defeated. Now the run's node is deleted, not the run aborted: with the retry, its
new block gets a new agent and the build goes on (GitLab never shows it failed); without,
the run ends ABORTED by itself and GitLab says failed, with the eviction's reason. A
freestyle build has no such recovery and is aborted and failed at once, as before.

Real redis-server, kmock over HTTP (the kubelet's eviction written through the API and seen
by the worker's own watch), the Jenkins fake (RemovedNodeListener and retry(agent()):
JenkinsFake.removed_node_timeout); the set-up of test_disrupted_agents."""

import time

from tests.integration import test_start_failures as starts
from tests.integration.test_disrupted_agents import LOST, disrupt
from tests.integration.test_jenkins_restart import away_for
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import JENKINS_TOKEN, mover
from tests.support.jenkins_fake import FREESTYLE_JOB
from workers import runtime
from workers.engine import lost_runs, reconcile
from workers.agent_starts import online as agent_start
from workers.core import commit_status

app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching
JOB = "build"  # the route's job (test_start_failures.CONFIG)
LOST_EVENT_SECONDS = 60  # the setting's default


def post(app, body) -> None:
    """A notification posted, and taken by the worker's intake mover (a STARTED applied, an
    end made a release job)."""
    answer = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=body)
    assert answer.status_code in (200, 202), answer.get_json()
    mover(app).drain()


def shown(app, key: str) -> commit_status.Wanted:
    """What GitLab is told of the build's push now."""
    status = commit_status.wanted(starts.state_of(app).get_build(key))
    assert status is not None
    return status


def pipeline_on_its_agent(app, kube, jenkins_fake, *, agent_retry_count: int):
    """A Pipeline build whose agent connected and runs its `node` block, STARTED notified:
    (key, agent, the block)."""
    jenkins_fake.add_job(JOB, agent_retry_count=agent_retry_count)
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert agent_start.notice_online(runtime.current()) == 1
    block = jenkins_fake.start_pipeline(item)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    post(app, jenkins_fake.notification(block.run, "STARTED"))
    assert starts.state_of(app).get_build(key)["status"] == "running"
    return key, agent, block


def evicted(app, kube, jenkins_fake, agent: str) -> None:
    """The kubelet evicts the agent's pod; the worker's watch acts on it."""
    disrupt(kube, jenkins_fake, agent, "evicted")
    starts.until(app, starts.cleaned_up(kube, jenkins_fake, agent))


def test_an_evicted_pipeline_with_retry_agent_runs_its_block_again_on_a_new_agent(
        app, kube, jenkins_fake):
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    run = block.run

    evicted(app, kube, jenkins_fake, agent)

    build = starts.state_of(app).get_build(key)
    assert build["status"] == "running" and not build.get("fail_reason"), build
    assert "Evicted" in build[lost_runs.LOST_RUN_FIELD], build
    assert jenkins_fake.stopped_builds == [] and run.state == "running"  # not aborted
    assert shown(app, key).state == "running"
    assert starts.exported(app, LOST) == 1

    # Jenkins cancels the block of the deleted node; the retry queues it again, same run
    (again,) = jenkins_fake.removed_node_timeout()
    assert again.run is run and again.label == agent
    rt, now = runtime.current(), time.time()
    reconcile.reconcile_once(rt, now=now)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)  # placed again
    starts.work(app)
    build = starts.state_of(app).get_build(key)
    new = build["agent"]
    assert new != agent and build["status"] == "running", build
    assert not build.get(lost_runs.LOST_RUN_FIELD) and shown(app, key).state == "running"
    assert agent in jenkins_fake.nodes[new].label.split()  # the label the block waits on

    kube.kubelet_status(NAMESPACE, new, phase="Running", node="node-b")
    jenkins_fake.connect_agent(new)
    agent_start.notice_online(rt)
    assert jenkins_fake.dispatch() == [(again.queue_id, new)]
    jenkins_fake.finish_node_block(again)
    jenkins_fake.finish_build(run.queue_id, "SUCCESS")
    post(app, jenkins_fake.notification(run, "COMPLETED"))
    starts.work(app)

    build = starts.state_of(app).get_build(key)
    assert not build.get("fail_reason") and build["result"] == "SUCCESS", build
    status = shown(app, key)
    assert status.state == "success", status
    assert jenkins_fake.stopped_builds == []
    assert starts.until(app, starts.cleaned_up(kube, jenkins_fake, new)) >= 0
    assert starts.exported(app, LOST) == 1


def assert_ended_by_itself(build: dict, status, jenkins_fake, *, lost: float) -> None:
    """A run whose agent was evicted and that did not retry: it ended ABORTED by itself (not
    by our abort), GitLab is told failed with why, and the loss is counted once."""
    assert build["result"] == "ABORTED", build
    assert status.state == "failed", status
    assert "agent lost while the build ran" in status.description
    assert "Evicted" in status.description, status
    assert jenkins_fake.stopped_builds == []  # it ended by itself, not by our abort
    assert lost == 1


def test_an_evicted_pipeline_without_retry_ends_by_itself_and_says_why(
        app, kube, jenkins_fake):
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=1)
    run = block.run

    evicted(app, kube, jenkins_fake, agent)
    assert shown(app, key).state == "running"
    assert jenkins_fake.removed_node_timeout() == []  # no retry: the run ends
    assert (run.state, run.result) == ("finished", "ABORTED")
    post(app, jenkins_fake.notification(run, "COMPLETED"))
    starts.work(app)

    assert_ended_by_itself(starts.state_of(app).get_build(key), shown(app, key), jenkins_fake,
                           lost=starts.exported(app, LOST))


def test_a_pipeline_run_that_never_decides_is_aborted_and_failed_as_before(
        app, kube, jenkins_fake):
    """Node removal detection off (-D...ExecutorStepExecution.REMOVED_NODE_DETECTION=false),
    or a plugin without it: nothing ends the block, and the build is not held for ever."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    evicted(app, kube, jenkins_fake, agent)
    rt, now = runtime.current(), time.time()
    reconcile.reconcile_once(rt, now=now)
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)
    assert starts.state_of(app).get_build(key)["status"] == "running"

    # from the hand-over's own time (real time: past `now` by the passes' time, seconds
    # on a loaded machine)
    handed = float(starts.state_of(app).get_build(key)[lost_runs.LOST_RUN_AT_FIELD])
    reconcile.reconcile_once(rt, now=handed + lost_runs.RUN_DECIDES_SECONDS + 1)

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert "Evicted" in build["error"], build
    assert jenkins_fake.stopped_builds == [(JOB, block.run.number)]
    assert shown(app, key).state == "failed"
    assert starts.exported(app, LOST) == 1  # one agent lost, counted once


def test_an_evicted_freestyle_build_is_still_aborted_and_failed_at_once(
        app, kube, jenkins_fake):
    """A freestyle build has no retry of its agent: its steps fail with the agent's channel
    closed (ChannelClosedException), so it is aborted and failed at once, as before."""
    jenkins_fake.add_job(JOB, kind=FREESTYLE_JOB)
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert agent_start.notice_online(runtime.current()) == 1
    assert jenkins_fake.dispatch() == [(item, agent)]
    run = next(b for b in jenkins_fake.builds if b.queue_id == item)
    post(app, jenkins_fake.notification(run, "STARTED"))

    evicted(app, kube, jenkins_fake, agent)

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [(JOB, run.number)]
    assert shown(app, key).state == "failed"


def test_a_drained_pipeline_with_retry_agent_runs_its_block_again_on_a_new_agent(
        app, kube, jenkins_fake):
    """The reconcile pass's way (kubectl drain: the pod deleted, no Failed phase to watch)."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    rt, now = runtime.current(), time.time()
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.disconnect_agent(agent)
    reconcile.reconcile_once(rt, now=now)
    result = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)
    assert result["lost_agents_failed"] == 0, result
    assert agent not in jenkins_fake.nodes and jenkins_fake.stopped_builds == []
    assert shown(app, key).state == "running"

    (again,) = jenkins_fake.removed_node_timeout()
    # Jenkins has no agent left, so the block's item names no label ("Waiting for next
    # available executor"): a pass makes the label probe (workers.engine.label_probe), and the
    # item names its label again
    for later in (2, 3):
        reconcile.reconcile_once(rt, now=now + later * (LOST_EVENT_SECONDS + 1))
    starts.work(app)

    build = starts.state_of(app).get_build(key)
    assert build["agent"] != agent and build["status"] == "running", build
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent"]]
    assert again.state == "queued" and block.run.state == "running"
    assert shown(app, key).state == "running" and jenkins_fake.stopped_builds == []


def test_a_pipeline_that_lived_through_a_jenkins_restart_retries_its_lost_block_on_a_new_agent(
        app, kube, jenkins_fake):
    """Jenkins restarted while the block ran (a pass saw it away; the block resumed on its
    agent once that reconnected), then the agent was evicted. The block its retry queued
    after we deleted the node is the retry's, whatever Jenkins did before: taken for a block
    resumed by that restart (unreached: Jenkins away since the pod was made), it got no
    agent, and 10 minutes on the run was aborted, its retry defeated."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    rt = runtime.current()
    away_for(rt, jenkins_fake, time.time(), 0.0)  # a restart, seen by a pass
    jenkins_fake.connect_agent(agent)
    ((resumed, on),) = jenkins_fake.dispatch()  # its block, scheduled again on the agent
    assert on == agent and resumed != block.queue_id

    evicted(app, kube, jenkins_fake, agent)
    (again,) = jenkins_fake.removed_node_timeout()
    assert again.run is block.run
    now = time.time()
    reconcile.reconcile_once(rt, now=now)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)
    starts.work(app)

    build = starts.state_of(app).get_build(key)
    assert build["agent"] != agent and build["status"] == "running", build  # placed again
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent"]]
    reconcile.reconcile_once(rt, now=now + lost_runs.RUN_DECIDES_SECONDS + 1)
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"
    assert shown(app, key).state == "running"


def test_a_lost_agents_node_that_jenkins_failed_to_delete_is_deleted_by_the_next_pass(
        app, kube, jenkins_fake):
    """The hand-over's node delete answered 500 through every retry: RemovedNodeListener
    fires only on the deletion, so until the node goes nothing ends the run's block, and
    the run was aborted at RUN_DECIDES_SECONDS. A reconcile pass deletes it again."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    jenkins_fake.fail_next(500, times=1000, path_prefix=f"/computer/{agent}/doDelete")
    disrupt(kube, jenkins_fake, agent, "evicted")
    starts.until(app, lambda: kube.pod(NAMESPACE, agent) is None)
    build = starts.state_of(app).get_build(key)
    assert build["status"] == "running" and build.get(lost_runs.LOST_RUN_FIELD), build
    assert agent in jenkins_fake.nodes and jenkins_fake.removed_node_timeout() == []

    jenkins_fake.clear_failures()  # Jenkins answers again
    rt, now = runtime.current(), time.time()
    reconcile.reconcile_once(rt, now=now)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)  # left to decide: node deleted

    assert agent not in jenkins_fake.nodes
    (again,) = jenkins_fake.removed_node_timeout()  # the run's retry(agent()) asks anew
    assert again.run is block.run and again.label == agent
    for later in (2, 3):  # the label probe made (Jenkins names the label), then placed again
        reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + later)
    starts.work(app)
    build = starts.state_of(app).get_build(key)
    assert build["agent"] != agent and build["status"] == "running", build
    assert jenkins_fake.stopped_builds == []
