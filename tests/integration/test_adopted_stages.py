"""A Pipeline whose stages each ask for an agent of a template's label (`agent none`, then
`agent { label 'maven' }` per stage; or two `node('maven')` blocks): each block is adopted
(workers.engine.adoption) and its agent goes once that block is done (workers.engine.adopted_done), not
when the run ends: taken offline after its block, it could take nothing more, and idled
through every later stage; the run's COMPLETED then released only the last stage's agent.
Real parts as in test_adoption (web app, redis-server, RQ worker, kmock, the Jenkins fake)."""

import threading
import time

import pytest

from tests.integration.test_adoption import (  # noqa: F401 (the fixtures)
    adopted_agent, adopted_block_running, agents, notify, world)
from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_reruns import pods
from tests.support.app import work
from workers import runtime
from workers.engine import adopted_done, reconcile, repairs
from workers.adapters import run_bound


def test_each_stage_s_agent_goes_when_its_stage_is_done(world, kube, jenkins_fake):
    client, rt = world.test_client(), runtime.current()
    first, agent = adopted_block_running(world, jenkins_fake)
    result = reconcile.reconcile_once(rt)
    assert result["adopted_agents_taken"] == 1 and result["adopted_agents_done"] == 0
    assert reconcile.reconcile_once(rt)["adopted_agents_done"] == 0  # its block still runs

    jenkins_fake.finish_node_block(first)  # stage one done; the run goes on
    second = jenkins_fake.next_node_block(first.run, "maven")  # stage two
    result = reconcile.reconcile_once(rt)
    assert result["queue_items_adopted"] == 1 and result["adopted_agents_done"] == 1
    assert agent not in jenkins_fake.nodes and agent not in pods(kube)
    assert first.run.state == "running" and jenkins_fake.stopped_builds == []

    work(world)  # stage two's own agent
    (other,) = agents(jenkins_fake)
    jenkins_fake.connect_agent(other)
    assert jenkins_fake.dispatch() == [(second.queue_id, other)]
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1
    jenkins_fake.finish_node_block(second)
    jenkins_fake.finish_build(first.run.queue_id)
    assert notify(client, first.run).status_code == 202  # released by it, or just before
    work(world)
    assert pods(kube) == [] and agents(jenkins_fake) == []


def test_an_agent_whose_run_jenkins_may_resume_after_a_restart_stays(
        world, kube, jenkins_fake):
    """After a restart Jenkins resumes a block on the very agent that has its workspace, and
    waits for it by name, its executor idle meanwhile: an agent that took its run in an
    earlier session of Jenkins is left to the run's end, as before."""
    rt = runtime.current()
    first, agent = adopted_block_running(world, jenkins_fake)
    reconcile.reconcile_once(rt)  # taken offline, its run and Jenkins' session recorded
    jenkins_fake.session = "0badcafe"  # a restart, between two passes
    jenkins_fake.finish_node_block(first)

    assert reconcile.reconcile_once(rt)["adopted_agents_done"] == 0
    assert agent in jenkins_fake.nodes and agent in pods(kube)


def test_a_pass_ending_before_an_adopted_agent_s_check_leaves_it_to_the_next_pass(
        world, kube, jenkins_fake):
    """The release of adopted agents asks Jenkins about each one (a GET of its computer, up to
    its timeout on a slow controller) and did not look at the pass's stop or lease between
    them (workers.adapters.run_bound): after a SIGTERM, or with its lease another's, the pass
    went on asking and releasing. Now it ends before the next one; the next pass releases it."""
    rt = runtime.current()
    first, agent = adopted_block_running(world, jenkins_fake)
    reconcile.reconcile_once(rt)  # taken offline, its run recorded
    jenkins_fake.finish_node_block(first)
    jenkins_fake.next_node_block(first.run, "maven")
    stop = threading.Event()
    stop.set()  # a SIGTERM came

    def stopped() -> None:
        raise reconcile.Stopped()
    now = time.time()
    with pytest.raises(reconcile.Stopped), run_bound.bounded(stopped, stop):
        adopted_done.release_done(rt, repairs.open_builds(rt, now), now)
    assert agent in jenkins_fake.nodes and agent in pods(kube)
    assert reconcile.reconcile_once(rt)["adopted_agents_done"] == 1
    assert agent not in jenkins_fake.nodes


def test_a_restart_during_the_pass_keeps_the_agent_its_resumed_block_waits_for(
        world, kube, jenkins_fake):
    """Jenkins' session is read once a pass, before the agents: a controller restarted after
    that read, before the agent's (a long pass), had the agent judged in the session it took
    its run in, and released under the block Jenkins resumes on it."""
    rt = runtime.current()
    first, agent = adopted_block_running(world, jenkins_fake)
    reconcile.reconcile_once(rt)  # taken offline, its run and Jenkins' session recorded
    jenkins_fake.finish_node_block(first)  # idle, as a block waiting to resume leaves it
    arrived, go_on = jenkins_fake.hold_next(f"/computer/{agent}/api/json")
    passed: dict = {}
    pass_ = threading.Thread(target=lambda: passed.update(reconcile.reconcile_once(rt)))
    pass_.start()
    try:
        assert arrived.wait(30)
        jenkins_fake.session = "0badcafe"  # the restart, as the pass reads the agent
    finally:
        go_on.set()
        pass_.join(60)

    assert passed["adopted_agents_done"] == 0
    assert agent in jenkins_fake.nodes and agent in pods(kube)
