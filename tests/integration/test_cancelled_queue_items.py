"""A build whose Jenkins queue item someone cancelled (the queue's "x", or the item aborted
from the queue) after its agent came online: nothing notifies it (the Notification plugin
sends nothing for an item that never ran), and once Jenkins forgets the cancelled item (a left
item is kept about 5 minutes, and none survives a restart: REALITY.md "The queue") its page
answers 404 as for an id Jenkins never had. The reconcile pass released it only if it asked
within those minutes; after that (the reconcile leader down a while, a Jenkins restart) the
agent idled, online, until its pod's deadline. Now the pass releases it once Jenkins has
neither the item nor a run of it, and the agent runs nothing. Real redis-server, kmock over
HTTP, the Jenkins fake."""

import time

import pytest

from tests.integration import test_jenkins_restart
from tests.integration.test_adoption import CONFIG as ADOPTION_CONFIG, adopted_agent
from tests.integration.test_pod_templates import make_world  # noqa: F401 (the fixture)
from tests.integration.test_lost_queue_items import cancel_by_hand, pod_running, restart
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import one_build, state_of
from tests.support.app import work
from workers import runtime
from workers.engine import lost_triggers, reconcile, repairs
from workers.adapters.jenkins import RUNS_MAX_PAGES, RUNS_PAGE
from workers.agent_starts import online as agent_start

app = test_jenkins_restart.app  # two nodes, lost_event_seconds 30, connect timeout 30 s
LOST_EVENT_SECONDS = test_jenkins_restart.LOST_EVENT_SECONDS
AGENT = "CI_AUTOSCALER_AGENT"


def online_and_idle(app, kube, jenkins_fake):
    """A triggered build whose agent connected and was seen online; its item still queued
    (Jenkins has not handed it over yet: a quiet period, a blocked item, a busy queue)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    pod_running(app, kube, key, agent)
    jenkins_fake.connect_agent(agent)
    assert agent_start.notice_online(runtime.current()) == 1
    return key, agent, item


def released(app, kube, jenkins_fake, key: str, agent: str) -> None:
    build = state_of(app).get_build(key)
    assert build["status"] == "released", build
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert len(jenkins_fake.build_with(AGENT, agent)) == 1  # not triggered again
    assert jenkins_fake.stopped_builds == []


def test_a_cancelled_item_jenkins_has_forgotten_releases_its_online_agent(
        app, kube, jenkins_fake):
    key, agent, item = online_and_idle(app, kube, jenkins_fake)
    cancel_by_hand(jenkins_fake, item)
    jenkins_fake.forget_left_items()  # no pass asked within Jenkins' 5 minutes
    rt, now = runtime.current(), time.time()

    passed = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert passed["lost_builds_released"] == 1
    released(app, kube, jenkins_fake, key, agent)


def test_a_pass_reads_the_queue_once_for_all_its_forgotten_items(app, kube, jenkins_fake):
    """Each candidate read the whole queue (thousands of items on a big Jenkins): a pass with
    many candidates made as many full reads. One read serves them all now."""
    agents = {}
    for index in range(3):
        key = push(app.test_client(), index)
        work(app)
        build = state_of(app).get_build(key)
        assert build["status"] == "triggered", build
        pod_running(app, kube, key, build["agent"])
        jenkins_fake.connect_agent(build["agent"])
        agents[key] = build["agent"]
    rt = runtime.current()
    assert agent_start.notice_online(rt) == 3
    for key in agents:
        jenkins_fake.cancel_by_hand(int(state_of(app).get_build(key)["queue_item"]))
    jenkins_fake.forget_left_items()
    later = time.time() + LOST_EVENT_SECONDS + 1
    reads = len(jenkins_fake.requests_to("/queue/api/json"))

    assert repairs.finish_lost_builds(rt, repairs.open_builds(rt, later), later) == 3

    assert len(jenkins_fake.requests_to("/queue/api/json")) == reads + 1
    for key, agent in agents.items():
        assert state_of(app).get_build(key)["status"] == "released"
        assert agent not in jenkins_fake.nodes


def test_a_cancel_before_a_restart_releases_the_online_agent(app, kube, jenkins_fake):
    """Judged a cancel, not a loss, after the restart (workers.engine.lost_triggers): not triggered
    again, and its agent released, not left waiting for an item that will never come."""
    key, agent, item = online_and_idle(app, kube, jenkins_fake)
    rt = runtime.current()
    triggered_at = float(state_of(app).get_build(key)["triggered_at"])
    saved = triggered_at + lost_triggers.QUEUE_SAVE_SECONDS + lost_triggers.SAVE_MARGIN_SECONDS
    reconcile.reconcile_once(rt, now=saved + 1)  # a pass sees Jenkins up, after its save
    cancel_by_hand(jenkins_fake, item)
    restart(rt, jenkins_fake, saved + 10, hard=False)
    jenkins_fake.connect_agent(agent)  # it reconnects after the restart

    passed = reconcile.reconcile_once(rt, now=saved + 20)

    assert passed["lost_builds_retriggered"] == 0
    if not passed["lost_builds_released"]:
        passed = reconcile.reconcile_once(rt, now=saved + 20 + LOST_EVENT_SECONDS + 1)
        assert passed["lost_builds_released"] == 1
    released(app, kube, jenkins_fake, key, agent)


def test_a_run_on_the_agent_that_jenkins_no_longer_ties_to_the_item_keeps_it(
        app, kube, jenkins_fake):
    """Its run started (its STARTED lost), its left item forgotten, and 30 newer runs of the
    job since: its agent's executor runs the build (and the job's runs since its trigger have
    its run: workers.adapters.jenkins._runs). Not a cancel: the agent stays."""
    key, agent, item = online_and_idle(app, kube, jenkins_fake)
    assert jenkins_fake.dispatch() == [(item, agent)]  # a freestyle run on its agent
    for _ in range(30):
        other = jenkins_fake.queue_build("build", label="nightly", parameters={"N": "1"})
        jenkins_fake.finish_build(other.queue_id)
    jenkins_fake.forget_left_items()
    rt, now = runtime.current(), time.time()

    for later in (1, 2):
        passed = reconcile.reconcile_once(rt, now=now + later * (LOST_EVENT_SECONDS + 1))
        assert passed["lost_builds_released"] == 0

    assert state_of(app).get_build(key)["status"] in ("triggered", "running")
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes


def test_a_pipeline_on_the_controller_older_than_the_runs_read_keeps_its_agent(
        app, kube, jenkins_fake):
    """A Pipeline run of the build on the controller (an `input` before its first node
    block: its agent runs nothing), its STARTED lost, its left item forgotten, and 30 newer
    runs of the job since: neither its agent nor the job's 30 most recent runs show it. The
    runs read do not reach back to its trigger, so Jenkins cannot say it was cancelled: its
    agent stays (released, the block it waits for would wait for a deleted agent)."""
    key, agent, item = online_and_idle(app, kube, jenkins_fake)
    run = jenkins_fake.start_pipeline_on_controller(item)
    for _ in range(30):
        other = jenkins_fake.queue_build("build", label="nightly", parameters={"N": "1"})
        jenkins_fake.finish_build(other.queue_id)
    jenkins_fake.forget_left_items()
    rt, now = runtime.current(), time.time()

    for later in (1, 2):
        passed = reconcile.reconcile_once(rt, now=now + later * (LOST_EVENT_SECONDS + 1))
        assert passed["lost_builds_released"] == 0

    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    block = jenkins_fake.next_node_block(run)  # the input answered: its block has its agent
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]


@pytest.fixture
def adopting(make_world):
    return make_world(ADOPTION_CONFIG,
                      CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS))


@pytest.mark.parametrize("another_waits", [False, True], ids=["none", "another waits"])
def test_an_adopted_agent_whose_item_was_cancelled_goes_unless_its_label_has_work(
        adopting, kube, jenkins_fake, another_waits):
    """A build started in Jenkins on a template's label, adopted, cancelled by hand once its
    agent was up: Jenkins hands that agent the oldest item of the label, so it stays while
    one waits there, and goes once none does."""
    rt = runtime.current()
    item = jenkins_fake.queue_build("hand-started", label="maven")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(adopting)
    agent = adopted_agent(jenkins_fake, item)
    jenkins_fake.connect_agent(agent)
    jenkins_fake.cancel_by_hand(item.queue_id)
    jenkins_fake.forget_left_items()
    if another_waits:
        jenkins_fake.queue_build("nightly", label="maven")  # its agent is the adopted one
    now = time.time()

    passed = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert passed["lost_builds_released"] == (0 if another_waits else 1)
    assert (agent in jenkins_fake.nodes) is another_waits
    assert (agent in [p["metadata"]["name"] for p in kube.pods(NAMESPACE)]) is another_waits


def newer_runs(jenkins_fake, count: int) -> None:
    """`count` runs of the job by other builds since, started and finished."""
    for n in range(count):
        other = jenkins_fake.queue_build("build", label="nightly", parameters={"N": str(n)})
        jenkins_fake.finish_build(other.queue_id)


def pipeline_on_the_controller(app, kube, jenkins_fake):
    """A Pipeline run of the build on the controller (an `input` before its first node
    block: its agent runs nothing), its STARTED lost; (key, agent, run)."""
    key, agent, item = online_and_idle(app, kube, jenkins_fake)
    return key, agent, jenkins_fake.start_pipeline_on_controller(item)


def kept_for_its_block(app, kube, jenkins_fake, agent: str, run) -> None:
    """No pass releases the build; its agent is there for its block once the input is
    answered."""
    rt, now = runtime.current(), time.time()
    for later in (1, 2):
        passed = reconcile.reconcile_once(rt, now=now + later * (LOST_EVENT_SECONDS + 1))
        assert passed["lost_builds_released"] == 0
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    block = jenkins_fake.next_node_block(run)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]


def test_a_pipeline_behind_more_runs_than_the_lookup_reads_keeps_its_agent(
        app, kube, jenkins_fake):
    """More runs of the job since its trigger than the lookup pages through (RUNS_PAGE *
    RUNS_MAX_PAGES): the runs read do not reach back to the trigger, so their lacking the
    build says nothing. Before: released as cancelled, and the block, once the input was
    answered, waited for a deleted agent."""
    key, agent, run = pipeline_on_the_controller(app, kube, jenkins_fake)
    newer_runs(jenkins_fake, RUNS_PAGE * RUNS_MAX_PAGES + 1)
    jenkins_fake.forget_left_items()

    kept_for_its_block(app, kube, jenkins_fake, agent, run)


def test_a_pipeline_whose_record_has_no_trigger_time_behind_100_runs_keeps_its_agent(
        app, kube, jenkins_fake):
    """A record without the time of its trigger (written by an older version, or partly):
    the lookup reads the newest page of runs only, which holds 100 newer runs, not the
    build's. Before: released as cancelled (the old check kept it: its runs did not reach
    back to a trigger time of 0)."""
    key, agent, run = pipeline_on_the_controller(app, kube, jenkins_fake)
    state = state_of(app)
    state.redis.hdel(f"{state.prefix}build:{key}", "triggered_at", "trigger_attempted_at")
    newer_runs(jenkins_fake, RUNS_PAGE)
    jenkins_fake.forget_left_items()

    kept_for_its_block(app, kube, jenkins_fake, agent, run)


def test_a_cancel_behind_more_than_100_runs_read_back_to_its_trigger_releases_it(
        app, kube, jenkins_fake):
    """The runs since the trigger, more than one page, are all read: none is the build's, so
    it was cancelled (as with few runs), and its agent goes."""
    key, agent, item = online_and_idle(app, kube, jenkins_fake)
    cancel_by_hand(jenkins_fake, item)
    newer_runs(jenkins_fake, RUNS_PAGE + 50)
    jenkins_fake.forget_left_items()
    rt, now = runtime.current(), time.time()

    passed = reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)

    assert passed["lost_builds_released"] == 1
    released(app, kube, jenkins_fake, key, agent)


def test_a_pipeline_found_by_a_late_retry_of_its_provision_keeps_its_agent(
        app, kube, jenkins_fake):
    """A provision that ran again long after its trigger (its worker killed once Jenkins had
    the request; RQ's retries, then the restart of stalled builds) finds the build and
    writes triggered_at then, long after its run was made; trigger_attempted_at holds the
    first attempt. The repairs look for the run since the first attempt: before, the pass
    read only triggered_at (its fields), stopped paging at runs older than that, never
    reached the build's run behind 100 newer ones, and released it as cancelled."""
    key, agent, run = pipeline_on_the_controller(app, kube, jenkins_fake)
    state = state_of(app)
    first = float(state.get_build(key)["triggered_at"])
    state.update_build(key, trigger_attempted_at=first, triggered_at=first + 1800)
    newer_runs(jenkins_fake, RUNS_PAGE)
    jenkins_fake.forget_left_items()

    kept_for_its_block(app, kube, jenkins_fake, agent, run)
