"""A Pipeline run left to decide after its agent was lost (workers.engine.lost_runs) asks for
a node again only once its lost block has ended: a block that another of its parallel
branches queues after the loss, while the lost block is still on the deleted agent's
executor, is that branch's next block, not the lost one's retry.

Jenkins shows the difference: it keeps a deleted node's computer, its executors and the
block on one, until Jenkins cancels the block (AbstractCIBase.updateComputerList: "when all
executors exit, it will be removed from the computers map"). A retry, or the run's next block
in sequence (a `node` after a `catchError`, a `finally`), comes only after the lost block
ended: the same ask, served the same way. Before, any new block of the run was taken for
the retry: an adopted build was released at once, and a build of ours placed again, its
loss forgotten, though the lost block had not ended; a run that never decides (node removal
detection off) then hung with nothing to abort it.

Real parts as in test_lost_adopted_pipeline_runs and test_lost_pipeline_runs (the Jenkins
fake keeps a deleted node's computer while its block runs: JenkinsFake._dying_computer)."""

import time

from tests.integration.test_adoption import (  # noqa: F401 (the fixtures)
    LOST_EVENT_SECONDS, world)
from tests.integration import test_start_failures as starts
from tests.integration.test_lost_adopted_pipeline_runs import JOB, adopted_and_drained
from tests.integration.test_lost_pipeline_runs import evicted, pipeline_on_its_agent
from tests.integration.test_pod_templates import make_world  # noqa: F401
from workers import runtime
from workers.engine import lost_runs, reconcile

__all__ = ["make_world", "world"]  # the fixtures, from the modules that define them
app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching

def test_a_branch_s_next_block_while_the_lost_one_runs_is_no_retry_of_it(
        world, kube, jenkins_fake):
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=2)
    rt = runtime.current()
    assert rt.state.get_build(key).get(lost_runs.LOST_RUN_FIELD)  # handed over
    activity = rt.jenkins.agent_activity(agent)  # the deleted node's computer, still busy
    assert activity is not None and activity.blocks
    # another parallel branch, its block queued after the loss (none waited at it)
    jenkins_fake.next_node_block(block.run, "maven")

    reconcile.reconcile_once(rt, now=now + 2 * (LOST_EVENT_SECONDS + 1))

    build = rt.state.get_build(key)
    assert build["status"] == "running" and build.get(lost_runs.LOST_RUN_FIELD), build
    # node removal detection off: nothing ends the block; aborted at our bound, as before
    reconcile.reconcile_once(rt, now=now + lost_runs.RUN_DECIDES_SECONDS + 1)
    build = rt.state.get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [(JOB, block.run.number)]

def test_the_lost_block_asked_again_once_jenkins_ended_it_releases_the_adopted_build(
        world, kube, jenkins_fake):
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=2)
    rt = runtime.current()
    (again,) = jenkins_fake.removed_node_timeout()  # cancelled, and its retry queued
    assert rt.jenkins.agent_activity(agent) is None  # the computer gone with its executor

    reconcile.reconcile_once(rt, now=now + 2 * (LOST_EVENT_SECONDS + 1))

    build = rt.state.get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"


def test_a_branch_s_next_block_on_the_build_s_label_while_the_lost_one_runs_gets_no_agent(
        app, kube, jenkins_fake):
    """A build of ours: its blocks all ask its agent's label. Placed again for the other
    branch's next block, its loss was forgotten (no longer left to decide): a lost block
    Jenkins never ends hung the run with nothing to abort it."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    evicted(app, kube, jenkins_fake, agent)  # handed over: its node deleted, the run decides
    rt = runtime.current()
    assert rt.jenkins.agent_activity(agent) is not None  # still busy with the lost block
    jenkins_fake.next_node_block(block.run)  # another branch's next block, on the label
    now = time.time()

    reconcile.reconcile_once(rt, now=now)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)
    starts.work(app)

    build = rt.state.get_build(key)
    assert build["agent"] == agent and build.get(lost_runs.LOST_RUN_FIELD), build
    reconcile.reconcile_once(rt, now=now + lost_runs.RUN_DECIDES_SECONDS + 1)
    build = rt.state.get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [("build", block.run.number)]
