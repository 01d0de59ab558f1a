"""An adopted agent whose own queue item was cancelled and forgotten is released once no item
waits on its label (workers.engine.forgotten_items). It is online and idle then: the very agent
Jenkins hands the label's next item to, at once (Queue.schedule -> scheduleMaintenance;
Queue.maintain gives a buildable item to any parked executor whose JobOffer has no
CauseOfBlockage). Such an item arriving between the pass's read of the agent and its read of
the queue is in neither (it left the queue for the agent's executor after the agent was read),
and the release killed the node block that had just started on it. Real redis-server, kmock
over HTTP, the Jenkins fake."""

import threading
import time

from tests.integration.test_adoption import adopted_agent
from tests.integration.test_cancelled_queue_items import LOST_EVENT_SECONDS, adopting  # noqa: F401
from tests.integration.test_pod_templates import make_world  # noqa: F401 (the fixture)
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from workers import runtime
from workers.engine import reconcile


def test_a_block_handed_to_the_adopted_agent_during_the_check_is_not_killed(
        adopting, kube, jenkins_fake):
    rt = runtime.current()
    item = jenkins_fake.queue_build("hand-started", label="maven")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(adopting)
    agent = adopted_agent(jenkins_fake, item)
    jenkins_fake.connect_agent(agent)
    jenkins_fake.cancel_by_hand(item.queue_id)
    jenkins_fake.forget_left_items()
    # The pass's queue read arrives after its read of the agent (idle, online): Jenkins takes
    # that moment to hand the agent another run's node('maven') block
    arrived, go_on = jenkins_fake.hold_next("/queue/api/json")
    passed: dict = {}
    now = time.time()
    pass_ = threading.Thread(target=lambda: passed.update(
        reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)))
    pass_.start()
    try:
        assert arrived.wait(30)
        block = jenkins_fake.queue_node_block("nightly", label="maven")
        assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    finally:
        go_on.set()
        pass_.join(60)

    assert passed["lost_builds_released"] == 0
    assert agent in jenkins_fake.nodes and block.state == "running"
    assert agent in [p["metadata"]["name"] for p in kube.pods(NAMESPACE)]
    # left offline with its block: the next pass records that run as the agent's
    assert reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 2)[
        "adopted_agents_taken"] == 1
    assert agent in jenkins_fake.nodes and block.state == "running"
