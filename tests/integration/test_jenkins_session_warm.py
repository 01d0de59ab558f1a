"""Builds on a claimed warm agent (workers.warm.lost): a Jenkins restart, told from an outage by
Jenkins' session (workers.agent_starts.jenkins_away), is what makes a block waiting on the
agent's label possibly one that ran there (resumed on its node's label, its workspace on the
agent); an outage resumes no block. Before, any failed call since the claim kept a Pipeline
whose `agent` block never reached its lost warm agent from a new agent (the block waited on a
gone agent's label), and a restart with no call of ours failing was not noticed: the resumed
block was given a fresh agent, its rest run in an empty workspace.

Real redis-server, kmock over HTTP, the Jenkins fake; the set-up of test_warm_lost."""

import time

import pytest

from tests.integration.test_jenkins_restart import notify
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import pod_names, record
from tests.integration import test_warm_lost as warm_lost
from tests.integration.test_warm_lost import CONNECT_TIMEOUT_SECONDS, assert_placed_again, \
    claimed, queue_item
from tests.support.app import work
from workers import runtime
from workers.agent_starts import jenkins_away
from workers.core.errors import Unavailable
from workers.engine import reconcile

app = warm_lost.app  # a template with a warm pool of 2, two nodes


def test_after_an_outage_a_block_that_never_reached_its_lost_warm_agent_gets_a_new_one(
        app, kube, jenkins_fake):
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    jenkins_fake.disconnect_agent(agent)  # its agent went first: the block waits
    block = jenkins_fake.start_pipeline(queue_item(jenkins_fake, agent))
    notify(app, jenkins_fake, block.run, "STARTED")
    rt = runtime.current()
    jenkins_fake.cut_off()  # Jenkins cannot be reached for a pass, and runs on
    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt, now=time.time() + 1)
    jenkins_fake.reachable()
    kube.delete_pod(NAMESPACE, agent)

    passed = reconcile.reconcile_once(rt, now=time.time() + 2)

    assert passed.get("warm_claims_lost", 0) == 1 and passed["lost_agents_failed"] == 0
    work(app)
    assert len(jenkins_fake.builds) == 1 and jenkins_fake.stopped_builds == []
    assert_placed_again(app, kube, jenkins_fake, key, agent, waiting=block.queue_id,
                        status="running")


def test_a_block_resumed_by_a_restart_with_no_call_failing_is_not_given_a_fresh_agent(
        app, kube, jenkins_fake, monkeypatch):
    # A real restart takes 20-60 s, far longer than a look at the session may lean on an
    # earlier answer (NOTICE_MAX_AGE_SECONDS): the fake's is instant, so here every look
    # reads the session anew, as it would after a real one.
    monkeypatch.setattr(jenkins_away, "NOTICE_MAX_AGE_SECONDS", 0.0)
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    block = jenkins_fake.start_pipeline(queue_item(jenkins_fake, agent))
    notify(app, jenkins_fake, block.run, "STARTED")
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]  # it runs there
    rt = runtime.current()
    reconcile.reconcile_once(rt, now=time.time() + 1)
    jenkins_fake.restart()  # between two passes: no call of ours fails
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.label == agent
    kube.delete_pod(NAMESPACE, agent)

    passed = reconcile.reconcile_once(rt, now=time.time() + CONNECT_TIMEOUT_SECONDS + 2)

    assert passed.get("warm_claims_lost", 0) == 0
    assert record(app, key)["warm_agent"] == agent and agent not in pod_names(kube)
