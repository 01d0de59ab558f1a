"""A Jenkins controller killed without its shutdown loses the queue items it took since its last
save of queue.xml, and gives their ids again: a build of ours whose item it lost is triggered
again, once, on the same agent; a build whose item someone cancelled is not. Real
redis-server, kmock over HTTP, the Jenkins fake (tests/support/jenkins_fake.py, "a controller
restart": `go_down(hard=True)`, `save_queue`, X-Jenkins-Session)."""

import dataclasses
import time

import pytest

from tests.integration.test_jenkins_restart import (  # noqa: F401 (the fixture)
    LOST_EVENT_SECONDS, app, notify)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported, one_build, state_of
from tests.support.fault_proxy import FaultProxy
from tests.support.app import work
from tests.support.kmock_cluster import running
from workers import runtime
from workers.engine import failures, jenkins_sessions, lost_triggers, reconcile, repairs
from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.errors import CIAutoscalerError, RetryableError
from workers.core.ports import BuildState
from workers.core.start_failures import StartFailure

AGENT = "CI_AUTOSCALER_AGENT"


def restart(rt, jenkins_fake, at: float, *, hard: bool) -> None:
    """Jenkins stops (killed when `hard`) and comes back; a reconcile pass in each phase away
    fails at its first call to Jenkins."""
    jenkins_fake.go_down(hard=hard)
    with pytest.raises(CIAutoscalerError):
        reconcile.reconcile_once(rt, now=at)
    jenkins_fake.come_up()
    with pytest.raises(CIAutoscalerError):
        reconcile.reconcile_once(rt, now=at + 5)
    jenkins_fake.finish_loading()


def pod_running(app, kube, key: str, agent: str) -> None:
    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        node=state_of(app).get_build(key)["node"],
                        states={"jnlp": running(time.time())})


def test_a_build_whose_queue_item_a_crash_lost_is_triggered_again_on_its_agent_and_runs(
        app, kube, jenkins_fake):
    """Killed before it saved its queue: Jenkins comes back without the item (404, no run) and
    gives its id to the next item. The pass that sees the new session triggers the build again
    on the same agent, whose pod was kept; the next passes do not; it runs and ends as any."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    pod_running(app, kube, key, agent)
    triggered = state.get_build(key)
    assert triggered[lost_triggers.FIELD] == jenkins_fake.session

    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    assert [b.queue_id for b in jenkins_fake.lost_items] == [item]
    assert jenkins_fake.builds == []
    jenkins_fake.connect_agent(agent)  # it reconnects, and waits for work
    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 1 and passed["lost_builds_released"] == 0
    [again] = jenkins_fake.build_with(AGENT, agent)
    assert again.parameters == jenkins_fake.lost_items[0].parameters
    assert again.queue_id == item  # the counter of no save: the same id, another item
    build = state.get_build(key)
    assert build["status"] == "triggered" and int(build["queue_item"]) == again.queue_id
    assert build[lost_triggers.FIELD] == jenkins_fake.session != triggered[lost_triggers.FIELD]
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
    assert exported(app, 'ci_autoscaler_builds_retriggered_total{template="small"}') == 1

    later = reconcile.reconcile_once(rt, now=time.time() + 3 * LOST_EVENT_SECONDS)
    assert later["lost_builds_retriggered"] == 0 and later["lost_builds_released"] == 0
    assert len(jenkins_fake.build_with(AGENT, agent)) == 1
    assert jenkins_fake.dispatch() == [(again.queue_id, agent)]
    notify(app, jenkins_fake, again, "STARTED")
    jenkins_fake.finish_build(again.queue_id)
    notify(app, jenkins_fake, again, "COMPLETED")
    assert state.get_build(key)["status"] == "released"
    assert kube.pod(NAMESPACE, agent) is None


def test_a_build_jenkins_saved_before_it_was_killed_is_found_again_not_triggered_twice(
        app, kube, jenkins_fake):
    """Its queue saved (Queue.Saver) before the kill: the item is back with its id, and the
    build is only recorded under the new session."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    jenkins_fake.save_queue()
    restart(rt, jenkins_fake, time.time() + 5, hard=True)

    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 0 and jenkins_fake.lost_items == []
    assert [b.queue_id for b in jenkins_fake.build_with(AGENT, agent)] == [item]
    assert state.get_build(key)[lost_triggers.FIELD] == jenkins_fake.session


def test_a_lost_build_whose_job_was_disabled_meanwhile_fails_and_stops_no_pass(
        app, kube, jenkins_fake):
    """Jenkins refuses the new trigger for good (409, not buildable): the build fails as a
    provision's would, its pod and Jenkins node deleted; the passes go on."""
    key, agent, _item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    jenkins_fake.add_job("build", disabled=True)

    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 0
    assert state.get_build(key)["status"] == "failed"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert jenkins_fake.build_with(AGENT, agent) == []
    assert reconcile.reconcile_once(rt, now=time.time() + 20)["lost_builds_retriggered"] == 0


def cancel_by_hand(jenkins_fake, item: int) -> None:
    adapter = JenkinsAdapter(url=jenkins_fake.url, user=jenkins_fake.user or "",
                             token=jenkins_fake.token, timeout=5)
    adapter.cancel_queue_item(item)  # what the queue's "cancel" button posts
    assert jenkins_fake.cancelled_items == [item]


def test_a_build_cancelled_by_hand_and_forgotten_is_not_triggered_again(
        app, kube, jenkins_fake):
    """Cancelled in Jenkins, its left item forgotten 5 minutes later: it is gone as a lost item
    is, but under the session it was triggered in, so it was not lost by a restart."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    cancel_by_hand(jenkins_fake, item)
    jenkins_fake.forget_left_items()

    for later in (1, 2, 3):
        passed = reconcile.reconcile_once(rt, now=time.time() + later * LOST_EVENT_SECONDS)
        assert passed["lost_builds_retriggered"] == 0

    assert len(jenkins_fake.build_with(AGENT, agent)) == 1  # the cancelled one
    assert state.get_build(key).get("retriggered_at") is None


def test_a_build_cancelled_by_hand_before_a_restart_is_not_triggered_again(
        app, kube, jenkins_fake):
    """Cancelled a while after its trigger, then Jenkins restarts (its left items forgotten):
    Jenkins was seen in the trigger's session after it had saved the item (Queue.Saver), so
    its absence is a cancel, not a loss."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    triggered_at = float(state.get_build(key)["triggered_at"])
    saved = triggered_at + lost_triggers.QUEUE_SAVE_SECONDS + lost_triggers.SAVE_MARGIN_SECONDS
    reconcile.reconcile_once(rt, now=saved + 1)  # a pass sees Jenkins up, after its save
    cancel_by_hand(jenkins_fake, item)
    restart(rt, jenkins_fake, saved + 10, hard=False)

    passed = reconcile.reconcile_once(rt, now=saved + 20)

    assert passed["lost_builds_retriggered"] == 0
    assert len(jenkins_fake.build_with(AGENT, agent)) == 1
    assert state.get_build(key)[lost_triggers.FIELD] == jenkins_fake.session  # judged once


@pytest.fixture
def jenkins_proxy(jenkins_fake):
    proxy = FaultProxy(jenkins_fake.url, ratio=0.0, seed=1, kubernetes=False).start()
    yield proxy
    proxy.stop()


def test_a_retrigger_that_stopped_half_way_makes_no_second_build(
        app, kube, jenkins_fake, jenkins_proxy):
    """Jenkins took the new request but its answer was lost (a proxy's 502) and the pass
    stopped there, with no retry left: the next pass finds the build by its agent, and
    records it; no second build, however many passes."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    through_proxy = dataclasses.replace(rt, jenkins=JenkinsAdapter(
        url=jenkins_proxy.url, user=jenkins_fake.user or "", token=jenkins_fake.token,
        timeout=5, backoff=Backoff(attempts=1, base_seconds=0)))
    jenkins_proxy.fail_next("POST", "/job/build/buildWithParameters", status=502, after=True)

    with pytest.raises(RetryableError):
        reconcile.reconcile_once(through_proxy, now=time.time() + 10)
    [taken] = jenkins_fake.build_with(AGENT, agent)  # Jenkins has it; we do not know its id
    assert state.get_build(key).get("retrigger_attempted_at") is not None

    for later in (20, 20 + 3 * LOST_EVENT_SECONDS):
        passed = reconcile.reconcile_once(through_proxy, now=time.time() + later)
        assert passed["lost_builds_retriggered"] == 0

    assert jenkins_fake.build_with(AGENT, agent) == [taken]
    build = state.get_build(key)
    assert int(build["queue_item"]) == taken.queue_id
    assert build[lost_triggers.FIELD] == jenkins_fake.session


def test_a_retrigger_whose_answer_was_lost_is_not_cancelled_as_a_late_second_trigger(
        app, kube, jenkins_fake, jenkins_proxy):
    """As above, but another item took the lost item's id first (a build started by hand
    after the restart), so the retrigger's item has an id the record does not name yet. The
    pass goes on after the retrigger's 502 (a step's own error) to the queue: that item, our
    API user's with the build's key on its agent's label, is the build's only one, its record
    still naming the item the crash lost, not a late duplicate of a build that ran. It is
    found by the next pass, not cancelled and triggered again."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    other = jenkins_fake.queue_build("build", label="", parameters={AGENT: "someone-else"})
    assert other.queue_id == item
    jenkins_fake.begin_start(other.queue_id)
    through_proxy = dataclasses.replace(rt, jenkins=JenkinsAdapter(
        url=jenkins_proxy.url, user=jenkins_fake.user or "", token=jenkins_fake.token,
        timeout=5, backoff=Backoff(attempts=1, base_seconds=0)))
    jenkins_proxy.fail_next("POST", "/job/build/buildWithParameters", status=502, after=True)

    with pytest.raises(RetryableError):
        reconcile.reconcile_once(through_proxy, now=time.time() + 10)
    [taken] = jenkins_fake.build_with(AGENT, agent)
    assert taken.queue_id != item and taken.state == "queued"
    assert jenkins_fake.cancelled_items == []

    passed = reconcile.reconcile_once(through_proxy, now=time.time() + 20)
    assert passed["lost_builds_retriggered"] == 0
    assert jenkins_fake.build_with(AGENT, agent) == [taken] and taken.state == "queued"
    assert int(state.get_build(key)["queue_item"]) == taken.queue_id


def test_the_fake_loses_on_a_kill_what_it_had_not_saved_and_gives_those_ids_again(
        jenkins_fake):
    """The adapter reads X-Jenkins-Session (every API page has it, a new one on every start;
    a 404 has none). A clean stop saves the queue; a kill keeps what the last save held (ids
    and counter): the items queued since are gone, their pages 404, their ids taken again."""
    jenkins = JenkinsAdapter(url=jenkins_fake.url, user=jenkins_fake.user or "",
                             token=jenkins_fake.token, timeout=5,
                             backoff=Backoff(attempts=2, base_seconds=0))
    first = jenkins.session()
    assert first == jenkins_fake.session and len(first) == 8
    saved = jenkins.trigger_build("build", {AGENT: "cia-saved"})
    jenkins_fake.save_queue()
    unsaved = jenkins.trigger_build("build", {AGENT: "cia-unsaved"})
    block = jenkins_fake.queue_node_block("build", label="cia-pipeline")  # a run, its block
    jenkins_fake.finish_node_block(block)  # left the queue

    jenkins_fake.restart(hard=True)

    assert jenkins.session() not in ("", first)
    assert [b.queue_id for b in jenkins_fake.lost_items] == [unsaved]
    assert jenkins.find_queue_item("build", AGENT, "cia-saved") == saved
    assert jenkins.find_queue_item("build", AGENT, "cia-unsaved") is None
    assert jenkins.build_state("build", unsaved) == (BuildState.UNKNOWN, None)  # 404, no run
    assert jenkins.trigger_build("build", {AGENT: "cia-next"}) == unsaved  # its id, again
    assert jenkins.trigger_build("build", {AGENT: "cia-3"}) == block.run.queue_id
    assert jenkins.trigger_build("build", {AGENT: "cia-4"}) == block.queue_id
    assert jenkins.build_state("build", block.queue_id) == (BuildState.QUEUED, None)
    clean = jenkins.session()
    jenkins_fake.restart()
    assert jenkins.session() != clean
    assert {b.queue_id for b in jenkins_fake.builds if b.state == "queued"} == \
        {saved, unsaved, block.run.queue_id, block.queue_id}  # all kept


def test_a_lost_build_failed_while_the_pass_looks_at_others_is_not_triggered_again(
        app, kube, jenkins_fake):
    """The pass reads the open builds once, then looks at each lost one in turn (a few Jenkins
    round trips each); a worker's fail_start (its pod could not start: it holds the build's
    provision lease, not the pass) may fail a build meanwhile, deleting its pod and Jenkins
    node. The pass, its lease taken after, must not trigger it again: that queue item would
    wait for ever for an agent no one makes."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    now = time.time() + 10
    builds = repairs.open_builds(rt, now)  # read by the pass before the failure
    assert builds[key]["status"] == "triggered"
    failures.fail_build(rt, key, agent, StartFailure("ErrImagePull", "jnlp: ErrImagePull"))
    assert state.get_build(key)["status"] == "failed"

    assert lost_triggers.retrigger_lost(rt, builds, now) == 0

    assert jenkins_fake.build_with(AGENT, agent) == []
    assert state.get_build(key)["status"] == "failed"


def test_a_build_triggered_again_late_in_a_long_pass_is_triggered_again_after_a_second_crash(
        app, kube, jenkins_fake):
    """A pass looks at the lost builds one after the other (a few Jenkins round trips each):
    one triggered again half a minute into the pass was triggered then, not when the pass
    began. Jenkins killed again 50 s after that trigger (a controller crash-looping), before
    its queue save: the item is lost again, and the build is triggered again again, not taken
    for one cancelled by hand because Jenkins was seen 75 s after the pass began."""
    key, agent, _item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    began = time.time() - 30  # the pass began half a minute before it reached this build
    assert lost_triggers.retrigger_lost(rt, repairs.open_builds(rt, began), began) == 1
    jenkins_sessions.seen(state, jenkins_fake.session, time.time() + 50)  # a trigger saw it
    restart(rt, jenkins_fake, time.time() + 55, hard=True)  # killed before its queue save

    passed = reconcile.reconcile_once(rt, now=time.time() + 60)

    assert passed["lost_builds_retriggered"] == 1
    assert len(jenkins_fake.build_with(AGENT, agent)) == 1  # the third item; two were lost
    assert state.get_build(key)[lost_triggers.FIELD] == jenkins_fake.session


def test_after_a_restart_the_pass_reads_the_queue_once_for_all_its_triggered_builds(
        app, kube, jenkins_fake):
    """Every triggered build is looked for by its agent after a restart: one read of the
    queue serves them all (it was one each: at scale, N reads of an N-item queue)."""
    pushed = [push(app.test_client(), i) for i in range(4)]
    work(app)
    state = state_of(app)
    assert [state.get_build(key)["status"] for key in pushed] == ["triggered"] * 4
    rt = runtime.current()
    restart(rt, jenkins_fake, time.time() + 5, hard=False)  # saved: all found again
    before = len(jenkins_fake.requests)

    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 0
    assert all(state.get_build(key)[lost_triggers.FIELD] == jenkins_fake.session
               for key in pushed)
    reads = [r for r in jenkins_fake.requests[before:] if r.path == "/queue/api/json"]
    assert len(reads) == 2  # this repair's, and the blocked builds' and adoption's


def test_a_restored_item_taken_by_its_agent_before_its_run_is_made_is_not_triggered_twice(
        app, kube, jenkins_fake):
    """Saved before the kill, the item is back; its agent reconnects and an executor takes it
    just as the pass looks: it has left the queue (a LeftItem) and its Run is not made yet
    (Executor.run makes it after Queue.onStartExecuting), so neither the queue nor the job's
    runs have it. Taken for lost, it was triggered a second time (fails without the fix:
    lost_builds_retriggered 1, two items with the agent). The item the build recorded still
    names it (queue/item/ID: its parameters): the build is found there."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    jenkins_fake.save_queue()
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    jenkins_fake.connect_agent(agent)
    jenkins_fake.begin_start(item)

    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 0
    assert [b.queue_id for b in jenkins_fake.build_with(AGENT, agent)] == [item]
    build = state.get_build(key)
    assert int(build["queue_item"]) == item
    assert build[lost_triggers.FIELD] == jenkins_fake.session


def test_a_recorded_id_a_crash_gave_to_another_item_is_not_taken_for_the_build(
        app, kube, jenkins_fake):
    """Killed before it saved its queue, Jenkins gives the lost item's id to the next item,
    another's (a build started by hand): that item does not carry the build's agent, so the
    build is still taken for lost and triggered again."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    other = jenkins_fake.queue_build("build", label="", parameters={AGENT: "someone-else"})
    assert other.queue_id == item
    jenkins_fake.begin_start(other.queue_id)

    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 1
    [again] = jenkins_fake.build_with(AGENT, agent)
    assert int(state.get_build(key)["queue_item"]) == again.queue_id != item


def test_a_lost_build_never_takes_the_result_of_the_run_that_took_its_queue_id(
        app, kube, jenkins_fake):
    """Behind a proxy that strips X-Jenkins-Session no restart is told, and nothing triggers
    the build again: killed before it saved its queue, Jenkins gives the build's item id to
    the next item (Queue.load: WaitingItem.COUNTER as last saved; jenkins_fake come_up), a
    person's build, which passes. The lost-event check finds that run by the id (its
    queueId is the build's item): it is not the build's (its CI_AUTOSCALER_BUILD_KEY is
    not the build's key), so the build is released without a result, never marked passed
    on GitLab for a commit nothing built."""
    jenkins_fake.session_header = False
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    restart(rt, jenkins_fake, time.time() + 5, hard=True)
    defaults = {name: "" for name in jenkins_fake.job("build").parameters}
    human = jenkins_fake.queue_build("build", label="linux", parameters=defaults)
    assert human.queue_id == item and [b.queue_id for b in jenkins_fake.lost_items] == [item]
    jenkins_fake.start_build(human.queue_id)
    jenkins_fake.finish_build(human.queue_id, "SUCCESS")

    passed = reconcile.reconcile_once(rt, now=time.time() + LOST_EVENT_SECONDS + 10)

    assert passed["lost_builds_retriggered"] == 0 and passed["lost_builds_released"] == 1
    build = state.get_build(key)
    assert build["status"] == "released" and "result" not in build, build
    assert build.get("build_url") != f"{jenkins_fake.url}/job/build/{human.number}/", build
