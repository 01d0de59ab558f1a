"""A Pipeline run left to decide after its agent was lost (workers.engine.lost_runs), through a
Jenkins restart that comes after we deleted the agent's node and before Jenkins cancelled its
block.

Jenkins' cancel of a deleted node's block is a jenkins.util.Timer task of the process that
heard the deletion (ExecutorStepExecution.RemovedNodeListener), lost with it. The restarted
Jenkins resumes the block as any: its PlaceholderTask is scheduled again on the gone node's own
label, and the resume gives up on it TIMEOUT_WAITING_FOR_NODE_MILLIS (5 minutes) later with a
RemovedNodeCause, which `retry(conditions: [agent()])` retries, its new block on the step's
label (ExecutorStepDynamicContext.resume). Before, a block waiting on the label after a restart
since the hand-over was never taken for the retry's (the restart's resumed block waits so too),
and the run was aborted at our 10-minute bound from the hand-over, its retry defeated. Now the
run's time to decide counts from the restart when one came since the hand-over, and a block
waiting on the label once the resumed one has had its 5 minutes is the retry's: the build is
placed again. Before then, the resumed block gets no new agent (its workspace was on the lost
one).

Real redis-server, kmock over HTTP, the Jenkins fake (its restart resumes a deleted node's
block; removed_node_timeout gives up on it); the set-up of test_lost_pipeline_runs."""

from tests.integration import test_start_failures as starts
from tests.integration.test_disrupted_agents import disrupt
from tests.integration.test_jenkins_restart import away_for
from tests.integration.test_lost_pipeline_runs import evicted, pipeline_on_its_agent, shown
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.agent_starts import jenkins_away
from workers.engine import lost_runs, reconcile

app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching


def test_a_retry_after_a_restart_that_came_after_the_hand_over_gets_a_new_agent(
        app, kube, jenkins_fake):
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    run = block.run
    evicted(app, kube, jenkins_fake, agent)  # handed over: its node deleted, the run decides
    handed = float(starts.state_of(app).get_build(key)[lost_runs.LOST_RUN_AT_FIELD])
    rt = runtime.current()
    # Jenkins restarts 4 minutes on, before its own cancel: down and loading for 30 s
    back = away_for(rt, jenkins_fake, handed + 240, 30)
    away = jenkins_away.last(rt.state)
    assert away >= handed + 240
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.run is run and resumed.label == agent  # on the gone node's own label

    reconcile.reconcile_once(rt, now=back + 1)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=back + 90)  # the resumed block waits: no new agent
    starts.work(app)
    assert starts.state_of(app).get_build(key)["agent"] == agent
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == []

    (again,) = jenkins_fake.removed_node_timeout()  # the resume gives up: the retry's block
    assert resumed.state == "cancelled" and again.run is run and again.label == agent
    # 10 minutes from the hand-over, not from the restart: the run has not had its time
    reconcile.reconcile_once(rt, now=handed + lost_runs.RUN_DECIDES_SECONDS + 1)
    assert jenkins_fake.stopped_builds == [] and run.state == "running"
    reconcile.reconcile_once(rt, now=away + lost_runs.RESUMED_BLOCK_SECONDS + 1)
    starts.work(app)

    build = starts.state_of(app).get_build(key)
    new = build["agent"]
    assert new != agent and build["status"] == "running", build  # placed again
    assert not build.get(lost_runs.LOST_RUN_FIELD) and shown(app, key).state == "running"
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new]
    kube.kubelet_status(NAMESPACE, new, phase="Running", node="node-b")
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(again.queue_id, new)]
    assert jenkins_fake.stopped_builds == [] and run.state == "running"


def test_a_restart_before_the_node_s_late_delete_keeps_the_resumed_block_off_a_new_agent(
        app, kube, jenkins_fake):
    """The hand-over's node delete failed (a 500, a timeout) and Jenkins restarted before a
    pass deleted the node: the restarted Jenkins resumed the block on the node's own label,
    and gives up on it 5 minutes after the resume (ExecutorStepDynamicContext.resume, the
    node there or not); the late delete starts no cancel of its own (RemovedNodeListener
    cancels a block on the deleted computer's executors: the resumed one waits in the
    queue). Counted from that delete as from a hand-over with no restart since, the resumed
    block was taken for the retry's at once: a new agent carrying the label (the build's
    first agent's name) was made for it, and the block's rest ran there without its
    workspace."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    jenkins_fake.fail_next(500, times=1000, path_prefix=f"/computer/{agent}/doDelete")
    disrupt(kube, jenkins_fake, agent, "evicted")  # handed over, its node left
    starts.until(app, lambda: kube.pod(NAMESPACE, agent) is None)
    build = starts.state_of(app).get_build(key)
    assert build.get(lost_runs.LOST_RUN_NODE_LEFT_FIELD) and agent in jenkins_fake.nodes
    handed = float(build[lost_runs.LOST_RUN_AT_FIELD])
    jenkins_fake.clear_failures()
    rt = runtime.current()
    # Jenkins restarts at once (the late delete stamps the time it is done, time.time())
    back = away_for(rt, jenkins_fake, handed, 0)
    away = jenkins_away.last(rt.state)
    assert away == handed
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.run is block.run and resumed.label == agent

    reconcile.reconcile_once(rt, now=back + 1)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=back + 62)  # the node deleted at last
    assert agent not in jenkins_fake.nodes
    for later in (63, 64, 150):  # the resumed block still waits on the label
        reconcile.reconcile_once(rt, now=back + later)
    starts.work(app)

    build = starts.state_of(app).get_build(key)
    assert build["agent"] == agent and build.get(lost_runs.LOST_RUN_FIELD), build
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == []
    assert resumed.state == "queued" and jenkins_fake.stopped_builds == []
    assert away + lost_runs.RESUMED_BLOCK_SECONDS > back + 150

    (again,) = jenkins_fake.removed_node_timeout()  # the resume gives up: the retry's block
    assert resumed.state == "cancelled" and again.run is block.run
    reconcile.reconcile_once(rt, now=away + lost_runs.RESUMED_BLOCK_SECONDS + 1)
    starts.work(app)
    new = starts.state_of(app).get_build(key)["agent"]
    assert new != agent and [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new]
    kube.kubelet_status(NAMESPACE, new, phase="Running", node="node-b")
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(again.queue_id, new)]
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"
