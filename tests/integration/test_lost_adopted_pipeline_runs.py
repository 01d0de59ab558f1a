"""An adopted Pipeline block whose agent is lost after it took the block: the run decides
(workers.engine.lost_runs), as for a build's own agent.

A Pipeline Jenkins started by itself (a timer, by hand) asks for `node('maven')`; the
adoption gives that block an agent of ours (workers.engine.adoption). Before, when a drain
took that agent's pod, the adopted build was failed `pod_lost` and the whole run aborted in
Jenkins: a user's interruption, which its `retry(conditions: [agent()])` never retries. Now
the agent's node is deleted and the run left to decide: Jenkins ends the block with a
RemovedNodeCause, the retry queues it again on 'maven', the lost agent's build is released
and the adoption serves the new item as any on the label (its label is shared: an agent made
for the build could take another run's item). Without a retry the run ends ABORTED by
itself; a run that decides nothing is aborted and failed as before.

Real parts as in test_adoption (web app, redis-server, RQ worker, kmock, the Jenkins fake:
JenkinsFake.removed_node_timeout plays RemovedNodeListener and retry(agent()))."""

import time

from tests.integration.test_adoption import (  # noqa: F401 (the fixtures)
    LOST_EVENT_SECONDS, adopted_agent, adopted_block_running, agents, notify, world)
from tests.integration import test_start_failures as starts
from tests.integration.test_disrupted_agents import disrupt
from tests.integration.test_jenkins_restart import away_for
from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reruns import pods
from tests.support.app import work
from workers import runtime
from workers.agent_starts import jenkins_away
from workers.engine import lost_runs, reconcile

__all__ = ["make_world", "world"]  # the fixtures, from the modules that define them
JOB = "nightly"  # a Pipeline job no route names: its runs are Jenkins' own


def adopted_and_drained(world, kube, jenkins_fake, *, agent_retry_count: int):
    """An adopted block running on its agent, its run recorded; then a drain deletes the
    agent's pod and passes judge it lost: (the block, the agent, its build key, the time)."""
    jenkins_fake.add_job(JOB, agent_retry_count=agent_retry_count)
    block, agent = adopted_block_running(world, jenkins_fake)
    rt = runtime.current()
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1  # its run recorded
    key = rt.state.build_for_agent(agent)
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.disconnect_agent(agent)
    now = time.time()
    reconcile.reconcile_once(rt, now=now)  # its pod missing: noticed
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)  # lost: handed over
    return block, agent, key, now


def test_an_adopted_block_lost_with_retry_agent_runs_again_on_an_agent_the_adoption_makes(
        world, kube, jenkins_fake):
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=2)
    rt, client = runtime.current(), world.test_client()
    build = rt.state.get_build(key)
    assert build["status"] == "running" and build.get(lost_runs.LOST_RUN_FIELD), build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"  # not aborted
    assert agent not in jenkins_fake.nodes  # what tells the run

    (again,) = jenkins_fake.removed_node_timeout()  # the retry's block, same run, same label
    assert again.run is block.run and again.label == "maven"
    later = now + 2 * (LOST_EVENT_SECONDS + 1)
    for n in range(3):  # released; the label probe (no node has 'maven'); adopted
        reconcile.reconcile_once(rt, now=later + n)
        work(world)
    build = rt.state.get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build

    (new,) = agents(jenkins_fake)
    assert new != agent and new == adopted_agent(jenkins_fake, again)
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(again.queue_id, new)]
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1  # the run is its now
    jenkins_fake.finish_node_block(again)
    jenkins_fake.finish_build(block.run.queue_id)
    assert block.run.result == "SUCCESS"
    assert notify(client, block.run).status_code == 202
    work(world)
    assert pods(kube) == [] and agents(jenkins_fake) == []
    assert jenkins_fake.stopped_builds == []


def test_a_retried_block_taken_by_an_agent_made_for_another_item_releases_the_lost_one(
        world, kube, jenkins_fake):
    """Jenkins hands the oldest item on a label to whichever agent with it is free: the
    retried block may leave the queue between two passes, on an agent the adoption made for
    another run's block (that run ended meanwhile). The run is that agent's build's now (its
    notifications name it): it decided, and the lost agent's build is released, not failed
    and the run aborted 10 minutes on for a run that never asked again."""
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=2)
    rt = runtime.current()
    other = jenkins_fake.queue_node_block(JOB, label="maven")  # another run's block
    later = now + 2 * (LOST_EVENT_SECONDS + 1)
    for n in range(2):  # the label probe (no node has 'maven'), then adopted
        reconcile.reconcile_once(rt, now=later + n)
        work(world)
    (made,) = agents(jenkins_fake)
    jenkins_fake.finish_build(other.run.queue_id, "ABORTED")  # that run ends: its item goes
    (again,) = jenkins_fake.removed_node_timeout()
    jenkins_fake.connect_agent(made)
    assert jenkins_fake.dispatch() == [(again.queue_id, made)]

    reconcile.reconcile_once(rt, now=later + 2)

    build = rt.state.get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    made_for = rt.state.build_for_agent(made)
    assert rt.state.get_build(made_for)["jenkins_build"] == str(block.run.number)
    reconcile.reconcile_once(rt, now=now + lost_runs.RUN_DECIDES_SECONDS + 1)
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"


def test_an_adopted_block_lost_without_retry_ends_its_run_by_itself(world, kube, jenkins_fake):
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=1)
    rt = runtime.current()
    assert jenkins_fake.removed_node_timeout() == []  # no retry: the run ends
    assert (block.run.state, block.run.result) == ("finished", "ABORTED")

    reconcile.reconcile_once(rt, now=now + 2 * (LOST_EVENT_SECONDS + 1))

    build = rt.state.get_build(key)
    assert build["status"] == "released" and build["result"] == "ABORTED", build
    assert jenkins_fake.stopped_builds == []  # it ended by itself, not by our abort


def test_an_adopted_run_that_never_decides_is_aborted_and_failed_as_before(
        world, kube, jenkins_fake):
    """Node removal detection off, or a plugin without it: nothing ends the block."""
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=2)
    rt = runtime.current()
    # from the hand-over's own time (real time: past `now` by the passes' time, seconds
    # on a loaded machine)
    handed = float(rt.state.get_build(key)[lost_runs.LOST_RUN_AT_FIELD])
    reconcile.reconcile_once(rt, now=handed + lost_runs.RUN_DECIDES_SECONDS + 1)

    build = rt.state.get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [(JOB, block.run.number)]


def adopted_beside_a_branch_and_drained(world, kube, jenkins_fake):
    """As adopted_and_drained, in a run whose other parallel branch asks for `node('maven')`
    too (each branch's block a PlaceholderTask of its own, of the same run) and still waits
    when the drain comes: (the block, the other branch's, the lost build's key, the time)."""
    jenkins_fake.add_job(JOB, agent_retry_count=2)
    block, agent = adopted_block_running(world, jenkins_fake)
    rt = runtime.current()
    branch = jenkins_fake.next_node_block(block.run, "maven")
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1  # adopts the branch too
    key = rt.state.build_for_agent(agent)
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.disconnect_agent(agent)
    now = time.time()
    reconcile.reconcile_once(rt, now=now)
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)
    assert rt.state.get_build(key).get(lost_runs.LOST_RUN_FIELD)  # handed over
    return block, branch, key, now


def test_another_branch_waiting_is_no_retry_of_the_lost_block(world, kube, jenkins_fake):
    """The other branch's block, waiting since before the loss, then taken by the agent
    adopted for it, is not the lost block asked again: released for it, the lost block's
    build left a run that never decides (node removal detection off) running for ever."""
    block, branch, key, now = adopted_beside_a_branch_and_drained(world, kube, jenkins_fake)
    rt = runtime.current()
    later = now + 2 * (LOST_EVENT_SECONDS + 1)
    reconcile.reconcile_once(rt, now=later)  # the branch still waits
    assert rt.state.get_build(key)["status"] == "running"
    work(world)
    (made,) = agents(jenkins_fake)  # the branch's agent
    jenkins_fake.connect_agent(made)
    assert jenkins_fake.dispatch() == [(branch.queue_id, made)]
    reconcile.reconcile_once(rt, now=later + 1)  # its agent takes the run's record
    assert rt.state.build_for_notification(job=JOB, number=block.run.number, agent=None,
                                           queue_id=None) not in (None, key)
    assert rt.state.get_build(key)["status"] == "running"

    # from the hand-over's own time (real time: past `now` by the passes' time, seconds
    # on a loaded machine)
    handed = float(rt.state.get_build(key)[lost_runs.LOST_RUN_AT_FIELD])
    reconcile.reconcile_once(rt, now=handed + lost_runs.RUN_DECIDES_SECONDS + 1)

    build = rt.state.get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [(JOB, block.run.number)]


def test_the_lost_block_asked_again_beside_a_waiting_branch_releases_its_build(
        world, kube, jenkins_fake):
    block, branch, key, now = adopted_beside_a_branch_and_drained(world, kube, jenkins_fake)
    rt = runtime.current()
    (again,) = jenkins_fake.removed_node_timeout()  # the retry's block, a new item

    reconcile.reconcile_once(rt, now=now + 2 * (LOST_EVENT_SECONDS + 1))

    build = rt.state.get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"


def test_an_adopted_block_whose_pod_the_kubelet_evicts_is_left_to_its_run_from_the_watch(
        world, kube, jenkins_fake):
    """The worker's own watch's way (the pod Failed, Evicted: no pass needed to notice)."""
    jenkins_fake.add_job(JOB, agent_retry_count=2)
    block, agent = adopted_block_running(world, jenkins_fake)
    rt = runtime.current()
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1
    key = rt.state.build_for_agent(agent)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")

    disrupt(kube, jenkins_fake, agent, "evicted")
    starts.until(world, starts.cleaned_up(kube, jenkins_fake, agent))

    build = rt.state.get_build(key)
    assert build["status"] == "running" and "Evicted" in build[lost_runs.LOST_RUN_FIELD], build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"
    (again,) = jenkins_fake.removed_node_timeout()
    now = time.time()
    for n in range(4):  # missing; lost: released; the label probe; adopted
        reconcile.reconcile_once(rt, now=now + n * (LOST_EVENT_SECONDS + 1))
        work(world)
    assert rt.state.get_build(key)["status"] == "released"
    (new,) = agents(jenkins_fake)
    assert new == adopted_agent(jenkins_fake, again)


def test_an_adopted_run_through_a_restart_after_its_hand_over_is_left_to_its_resume(
        world, kube, jenkins_fake):
    """Jenkins restarts after the hand-over, before its own cancel: the restarted Jenkins
    resumes the block on the gone agent's own label and gives up on it 5 minutes after the
    resume (ExecutorStepDynamicContext.resume). The run's time counts from the restart (not
    aborted at RUN_DECIDES_SECONDS from the hand-over), and the lost agent's build is
    released only once the resumed block has had its RESUMED_BLOCK_SECONDS and the retry's
    block asks, on 'maven', where an agent of ours runs it."""
    block, agent, key, now = adopted_and_drained(world, kube, jenkins_fake,
                                                 agent_retry_count=2)
    rt = runtime.current()
    handed = float(rt.state.get_build(key)[lost_runs.LOST_RUN_AT_FIELD])
    back = away_for(rt, jenkins_fake, handed + 280, 30)  # before Jenkins' own cancel
    away = jenkins_away.last(rt.state)
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.run is block.run and resumed.label == agent
    assert away + lost_runs.RESUMED_BLOCK_SECONDS > handed + lost_runs.RUN_DECIDES_SECONDS
    for at in (back + 1, handed + lost_runs.RUN_DECIDES_SECONDS + 1):
        reconcile.reconcile_once(rt, now=at)
        work(world)
    build = rt.state.get_build(key)
    assert build["status"] == "running" and build.get(lost_runs.LOST_RUN_FIELD), build
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"

    (again,) = jenkins_fake.removed_node_timeout()  # the resume gives up: the retry's block
    assert resumed.state == "cancelled" and again.run is block.run and again.label == "maven"
    for n in range(3):  # released; the label probe (no node has 'maven'); adopted
        reconcile.reconcile_once(rt, now=away + lost_runs.RESUMED_BLOCK_SECONDS + 1 + n)
        work(world)
    build = rt.state.get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    new = adopted_agent(jenkins_fake, again)
    assert new != agent
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(again.queue_id, new)]
    assert jenkins_fake.stopped_builds == [] and block.run.state == "running"
