"""A Pipeline's agent stays for the whole run, not for its first node block: between two
sequential `node(params.CI_AUTOSCALER_AGENT) {}` blocks (or declarative stages with an agent
each under `agent none`) the agent is online and idle while the run goes on on the controller,
and a run may spend a long time on the controller (an `input`, a `sleep`) before its first
block. Neither is the build's end, a lost agent or an agent that never got its work: the
reconcile passes of those hours leave the pod and the Jenkins node, and the next block runs on
the same agent. Real redis-server, kmock over HTTP, the Jenkins fake (its queue hands each
block to the agent as Jenkins' does)."""

import time

import pytest

from tests.integration import test_lost_agents
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import one_build, state_of
from tests.support.app import JENKINS_TOKEN, work
from workers import runtime
from workers.engine import reconcile
from workers.agent_starts import online as agent_start

app = test_lost_agents.app  # one template, one node, lost_event_seconds 30
config_text = test_lost_agents.config_text  # its config, which app takes as a fixture
HOUR = 3600


def passes(app, jenkins_fake, start: float, *, until: float, step: float = 300):
    """Reconcile passes every `step` seconds from `start` to `until` (the pod's own deadline
    not reached), the worker's jobs run after each, Jenkins' left items forgotten as the
    minutes go by (REALITY.md "The queue")."""
    rt, now = runtime.current(), start
    while now <= until:
        reconcile.reconcile_once(rt, now=now)
        agent_start.poll(rt, now)
        work(app)
        jenkins_fake.forget_left_items()
        now += step


def still_there(app, kube, jenkins_fake, key: str, agent: str) -> None:
    build = state_of(app).get_build(key)
    assert build["status"] == "running", build
    assert not build.get("fail_reason"), build
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
    assert agent in jenkins_fake.nodes and not jenkins_fake.nodes[agent].temporarily_offline
    assert jenkins_fake.stopped_builds == [] and jenkins_fake.cancelled_items == []


def completed(app, jenkins_fake, run) -> None:
    answer = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                    json=jenkins_fake.notification(run, "COMPLETED"))
    assert answer.status_code == 202, answer.get_json()
    work(app)


@pytest.mark.parametrize("started_notified", [True, False], ids=["STARTED", "STARTED lost"])
def test_the_agent_stays_between_two_node_blocks_of_one_run(
        app, kube, jenkins_fake, started_notified):
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    first = jenkins_fake.start_pipeline(item)
    if started_notified:
        answer = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                        json=jenkins_fake.notification(first.run, "STARTED"))
        assert answer.status_code == 200
    assert jenkins_fake.dispatch() == [(first.queue_id, agent)]
    now = time.time()
    passes(app, jenkins_fake, now, until=now + 60, step=15)
    jenkins_fake.finish_node_block(first)  # the run goes on on the controller

    passes(app, jenkins_fake, now + 75, until=now + HOUR)  # an hour of stages with no agent
    still_there(app, kube, jenkins_fake, key, agent)

    second = jenkins_fake.next_node_block(first.run)
    assert jenkins_fake.dispatch() == [(second.queue_id, agent)]
    passes(app, jenkins_fake, now + HOUR + 15, until=now + HOUR + 30, step=15)
    still_there(app, kube, jenkins_fake, key, agent)

    jenkins_fake.finish_node_block(second)
    run = jenkins_fake.finish_build(first.run.queue_id)
    completed(app, jenkins_fake, run)
    assert state_of(app).get_build(key)["status"] == "released"
    assert kube.pods(NAMESPACE) == [] and agent not in jenkins_fake.nodes


def test_the_agent_waits_for_a_first_node_block_after_a_long_input_on_the_controller(
        app, kube, jenkins_fake):
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    run = jenkins_fake.start_pipeline_on_controller(item)  # `input` first: no block yet
    answer = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                    json=jenkins_fake.notification(run, "STARTED"))
    assert answer.status_code == 200
    now = time.time()

    passes(app, jenkins_fake, now, until=now + HOUR)  # someone approves an hour later
    still_there(app, kube, jenkins_fake, key, agent)

    block = jenkins_fake.next_node_block(run)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    jenkins_fake.finish_node_block(block)
    completed(app, jenkins_fake, jenkins_fake.finish_build(run.queue_id))
    assert state_of(app).get_build(key)["status"] == "released"
