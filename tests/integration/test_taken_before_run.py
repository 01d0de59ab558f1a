"""A trigger whose answer was lost, retried while an executor of the build's agent has taken
its item and Jenkins has not made its Run yet (Executor.run: Queue.onStartExecuting, then
the Run): the item is in neither the queue nor the job's runs, and the retry has no id to
read its LeftItem by. It triggered the build a second time; now the agent's busy executor
with no run named holds the trigger back until the run shows."""

import json
import time

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration import test_reconcile_repairs as repairs
from tests.support.app import work
from tests.support.fault_proxy import FaultProxy
from workers.engine import tasks
from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.errors import RetryableError

JOB = "app/build"
AGENT = "CI_AUTOSCALER_AGENT"
NODE = "cia-agent-1"

app = repairs.app  # the fixture: the web app and its runtime, on kmock and the fake
state_of = repairs.state_of


def test_a_lost_trigger_answer_is_not_retried_while_the_agent_makes_the_run(jenkins_fake):
    jenkins_fake.add_node(NODE, label=NODE)
    jenkins_fake.connect_agent(NODE)
    jenkins_fake.taken_on_arrival = NODE  # its executor takes the item at once
    since = time.time()
    proxy = FaultProxy(jenkins_fake.url, ratio=0, seed=1, kubernetes=False).start()
    try:
        proxy.fail_next("POST", "/job/app/job/build/buildWithParameters", status=502,
                        after=True)
        adapter = JenkinsAdapter(url=proxy.url, user=jenkins_fake.user or "",
                                 token=jenkins_fake.token, timeout=5,
                                 backoff=Backoff(attempts=3, base_seconds=0))
        with pytest.raises(RetryableError, match="not made yet"):
            adapter.trigger_build(JOB, {AGENT: NODE}, find_by=(AGENT, NODE), agent=NODE)
    finally:
        proxy.stop()

    [taken] = jenkins_fake.builds  # before: a second item, queued behind the first
    jenkins_fake.start_build(taken.queue_id)  # the Run is made
    direct = JenkinsAdapter(url=jenkins_fake.url, user=jenkins_fake.user or "",
                            token=jenkins_fake.token, backoff=Backoff(attempts=1))
    assert direct.find_queue_item(JOB, AGENT, NODE, since=since, agent=NODE) == taken.queue_id


def test_an_idle_agent_holds_no_trigger_back(jenkins_fake):
    """Nothing taken, nothing found: the lookup says so, and the build is triggered."""
    jenkins_fake.add_node(NODE, label=NODE)
    jenkins_fake.connect_agent(NODE)
    adapter = JenkinsAdapter(url=jenkins_fake.url, user=jenkins_fake.user or "",
                             token=jenkins_fake.token, backoff=Backoff(attempts=1))

    assert adapter.find_queue_item(JOB, AGENT, NODE, since=time.time(), agent=NODE) is None


def test_a_provision_retried_while_the_agent_makes_the_run_triggers_nothing(
        app, kube, jenkins_fake):
    """The provision's worker died after Jenkins took the trigger (trigger_attempted_at, no
    queue_item), and the build's online agent has taken the item, its Run not made yet:
    the provision run again does not trigger a second build, and once the run is made it
    finds and records it."""
    key = push(app.test_client(), 1)
    work(app)
    (build,) = jenkins_fake.builds
    state = state_of(app)
    agent = state.get_build(key)["agent"]
    jenkins_fake.connect_agent(agent)
    jenkins_fake.begin_start(build.queue_id, agent)
    state.redis.hdel(f"{state.prefix}build:{key}", "queue_item")
    state.update_build(key, status="pod_created")
    request = json.loads(state.get_build(key)["request"])

    with pytest.raises(RetryableError, match="not made yet"):  # RQ retries it
        tasks.provision_agent(request)
    assert len(jenkins_fake.builds) == 1  # before: a second item, for the same agent

    jenkins_fake.start_build(build.queue_id)
    tasks.provision_agent(request)

    assert len(jenkins_fake.builds) == 1
    assert state.get_build(key)["queue_item"] == str(build.queue_id)
