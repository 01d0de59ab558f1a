"""What a failed build leaves in Jenkins when its fail stops half-way, and the reconcile pass
cleaning it up (workers.engine.jenkins_leftovers): a queue item Jenkins refused to cancel (422, our
user lacks Job/Cancel), a queue item or a run whose stop failed and whose pod then went, so
that no sweep (which goes by pods) ever came back to it. Queue items of humans and of other
installations are never touched. Real redis-server, kmock over HTTP, the Jenkins fake."""

import json
import threading
import time

import pytest

from tests.integration.test_lost_agents import running_build
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import cluster_app, work
from tests.support.kmock_cluster import waiting
from tests.integration.test_pass_without_jenkins import placed
from workers import runtime
from workers.engine import failures, jenkins_leftovers, reconcile, tasks
from workers.adapters import leftover_store
from workers.engine.blocked_builds import PARK_AFTER_SECONDS
from workers.core.errors import PermanentError
from workers.core.keys import agent_name, build_key
from workers.core.models import BuildRequest

LOST_EVENT_SECONDS = 30
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    label: small
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    maxConcurrent: 4
"""
REFUSED = "ci-autoscaler is missing the Job/Cancel permission"
# Without Job/Cancel, Jenkins refuses a run's abort with 403 (Executor.doStop:
# checkAbortPermission throws AccessDeniedException) and a queue item's cancel with 422
# (Queue.doCancelItem: "Item for id (N) is not cancellable" when !item.hasCancelPermission()).
NOT_CANCELLABLE = 422


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE,
                     CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS)) as app:
        yield app


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def cannot_start(kube, agent: str) -> None:
    kube.kubelet_status(NAMESPACE, agent, phase="Pending", node="node-a",
                        states={"jnlp": waiting("ErrImagePull")})


def leftovers(app) -> float:
    """ci_autoscaler_jenkins_leftovers as the web's /metrics exports it (alert
    CIJenkinsLeftovers)."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return float(next(line for line in text.splitlines()
                      if line.startswith("ci_autoscaler_jenkins_leftovers ")).rsplit(" ", 1)[1])


def retry_due() -> float:
    """A pass's time at which a stop refused in an earlier pass is asked again: the failed
    build's path stamps the retry with its real time (workers.engine.failures), which on a
    loaded machine is seconds after the `now` the test gave that pass."""
    return time.time() + jenkins_leftovers.RETRY_SECONDS + 1


def cancels(jenkins_fake) -> int:
    return len(jenkins_fake.requests_to("/queue/cancelItem", "POST"))


def test_an_item_jenkins_refused_to_cancel_outlives_no_record_and_is_cancelled_once_allowed(
        app, kube, jenkins_fake):
    """The fail of a build whose pod cannot start cleans up although Jenkins refuses the
    cancel of its queue item (422: our user lacks Job/Cancel). The item stayed in Jenkins'
    queue for ever, waiting on the label of an agent gone; once the build's record expired
    (CI_AUTOSCALER_BUILD_TTL_SECONDS, 7 days) the adoption took it for a Replay and made an
    agent for it: the failed build ran after all. Now the record is kept while the item
    waits, the cancel is asked again every RETRY_SECONDS (not every pass), and once Jenkins
    allows it the item is cancelled and the record expires as any other. A human's item and
    another installation's, waiting on labels of their own, are never touched."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    human = jenkins_fake.queue_build("nightly", label="windows")
    theirs = agent_name("build", build_key("x"), "staging")
    other = jenkins_fake.queue_build("build", label=theirs,
                                     parameters={"CI_AUTOSCALER_AGENT": theirs})
    cannot_start(kube, agent)
    jenkins_fake.fail_next(NOT_CANCELLABLE, times=1000, path_prefix="/queue/cancelItem",
                           body=REFUSED)
    now = time.time()

    assert leftovers(app) == 0
    first = reconcile.reconcile_once(rt, now=now)

    assert state.get_build(key)["status"] == "failed" and first["start_failures"] == 1
    assert leftovers(app) == 1  # what only an error log said: the alert's figure
    assert kube.pods(NAMESPACE) == [] and agent not in jenkins_fake.nodes
    assert cancels(jenkins_fake) == 1 and jenkins_fake.cancelled_items == []
    soon = reconcile.reconcile_once(rt, now=now + 1)
    assert cancels(jenkins_fake) == 1 and soon["jenkins_leftovers_stopped"] == 0
    week = now + rt.settings.build_ttl_seconds + 1
    later = reconcile.reconcile_once(rt, now=week)
    assert later["builds_expired"] == 0 and state.get_build(key)["status"] == "failed"
    assert later["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []
    assert cancels(jenkins_fake) == 2 and leftovers(app) == 1  # asked again, refused again
    again = reconcile.reconcile_once(rt, now=week + 1)
    assert again["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []

    jenkins_fake.clear_failures()  # Job/Cancel granted
    allowed = reconcile.reconcile_once(rt, now=week + jenkins_leftovers.RETRY_SECONDS + 1)

    assert allowed["jenkins_leftovers_stopped"] == 1 and leftovers(app) == 0
    assert jenkins_fake.cancelled_items == [item]
    assert allowed["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []
    assert human.state == "queued" and other.state == "queued"
    assert allowed["builds_expired"] == 1 and state.get_build(key) == {}  # nothing left
    reconcile.reconcile_once(rt, now=week + jenkins_leftovers.RETRY_SECONDS + 2)
    assert jenkins_fake.cancelled_items == [item] and cancels(jenkins_fake) == 3


def test_an_item_refused_then_cancelled_by_hand_is_asked_about_no_more(
        app, kube, jenkins_fake):
    """A person cancels the item Jenkins would not let us cancel: it is no longer in the
    queue, so nothing is asked of Jenkins for it again and the record expires."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    cannot_start(kube, agent)
    jenkins_fake.fail_next(NOT_CANCELLABLE, times=1000, path_prefix="/queue/cancelItem",
                           body=REFUSED)
    now = time.time()
    reconcile.reconcile_once(rt, now=now)
    jenkins_fake.clear_failures()
    jenkins_fake.cancel_by_hand(item)
    jenkins_fake.forget_left_items()

    later = reconcile.reconcile_once(rt, now=retry_due())

    assert later["jenkins_leftovers_stopped"] == 1 and cancels(jenkins_fake) == 1
    # a week after the build ended, which the fail stamped with its real time: on a loaded
    # machine seconds after `now` (with `now + TTL + 1`, a pass found nothing to expire)
    gone = reconcile.reconcile_once(rt, now=time.time() + rt.settings.build_ttl_seconds + 1)
    assert gone["builds_expired"] == 1 and cancels(jenkins_fake) == 1


def test_a_fail_stopped_half_way_whose_pod_then_went_still_cancels_its_item(
        app, kube, jenkins_fake):
    """A pod that cannot start; its build is failed, but Jenkins fails the cancel through
    every retry (500), so its pod is kept for the next pass's sweep to finish the fail. The
    pod goes before that (deleted by hand, its node reclaimed): the sweep, which goes by
    pods, never came back, and the item waited in Jenkins for ever (adopted, the failed
    build run, once its record expired)."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    cannot_start(kube, agent)
    jenkins_fake.fail_next(500, times=4, path_prefix="/queue/cancelItem")  # every retry
    reconcile.reconcile_once(rt)
    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    assert jenkins_fake.cancelled_items == [] and kube.pod(NAMESPACE, agent) is not None
    kube.delete_pod(NAMESPACE, agent)

    second = reconcile.reconcile_once(rt)

    assert second["jenkins_leftovers_stopped"] == 1 and jenkins_fake.cancelled_items == [item]
    assert agent not in jenkins_fake.nodes and state.get_build(key)["status"] == "failed"
    assert reconcile.reconcile_once(rt)["jenkins_leftovers_stopped"] == 0
    assert jenkins_fake.cancelled_items == [item]


@pytest.mark.parametrize("status", [500, 403])
def test_a_lost_agents_run_whose_abort_failed_is_aborted_by_a_later_pass(
        app, kube, jenkins_fake, status):
    """A running build whose pod was drained is failed (pod_lost) and its run aborted. The
    abort fails (500 through every retry, or 403 until Job/Cancel is granted) after the build
    was marked failed: the build was no longer running for workers.engine.lost_agents, its pod gone
    for the sweep, and the Pipeline waited for its agent in Jenkins for ever, holding an
    executor slot of its job (a job without concurrent builds, blocked for good)."""
    key, agent, build = running_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    kube.delete_pod(NAMESPACE, agent)
    now = time.time()
    reconcile.reconcile_once(rt, now=now)  # noticed
    jenkins_fake.fail_next(status, times=1000, path_prefix=f"/job/build/{build.number}/stop")
    reconcile.reconcile_once(rt, now=now + LOST_EVENT_SECONDS + 1)
    assert state.get_build(key)["fail_reason"] == "pod_lost"
    assert jenkins_fake.stopped_builds == [] and build.state == "running"
    jenkins_fake.clear_failures()

    later = reconcile.reconcile_once(
        rt, now=now + LOST_EVENT_SECONDS + 2 + jenkins_leftovers.RETRY_SECONDS)

    assert later["jenkins_leftovers_stopped"] == 1
    assert jenkins_fake.stopped_builds == [("build", build.number)]
    assert build.state == "finished" and build.result == "ABORTED"
    assert state.get_build(key)["status"] == "failed"


@pytest.mark.parametrize("human_started", [False, True], ids=["queued", "running"])
def test_a_fail_finished_after_a_hard_restart_never_stops_the_item_that_took_its_id(
        app, kube, jenkins_fake, human_started):
    """A fail stops half-way (500 on the cancel through every retry), then the controller is
    killed without its shutdown before it saved its queue: our item is lost and its id given
    again (Queue.load: WaitingItem.COUNTER as last saved; tests/support/jenkins_fake.py
    come_up), to a build a person starts (its parameters the job's defaults, as Jenkins
    fills them in). The next pass finishes the fail by that id: it cancelled the person's
    item, or, once it had started, aborted the person's run. An item or a run is stopped only
    if it carries the failed build's agent."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    cannot_start(kube, agent)
    jenkins_fake.fail_next(500, times=4, path_prefix="/queue/cancelItem")
    reconcile.reconcile_once(rt)
    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    jenkins_fake.restart(hard=True)
    defaults = {name: "" for name in jenkins_fake.job("build").parameters}
    human = jenkins_fake.queue_build("build", label="linux", parameters=defaults)
    assert human.queue_id == item and [b.queue_id for b in jenkins_fake.lost_items] == [item]
    if human_started:
        jenkins_fake.start_build(human.queue_id)

    reconcile.reconcile_once(rt)

    assert jenkins_fake.cancelled_items == [] and jenkins_fake.stopped_builds == []
    assert human.state == ("running" if human_started else "queued")
    assert kube.pods(NAMESPACE) == [] and state.get_build(key)["status"] == "failed"
    assert reconcile.reconcile_once(rt)["jenkins_leftovers_stopped"] == 0
    assert jenkins_fake.cancelled_items == [] and jenkins_fake.stopped_builds == []


def test_a_pipeline_run_jenkins_refused_to_abort_gets_no_agent_for_its_node_block(
        app, kube, jenkins_fake):
    """A Pipeline's item leaves the queue at once (a flyweight task) and its `agent { label
    params.CI_AUTOSCALER_AGENT }` block waits as an item of its own, on our agent's label
    (ExecutorStepExecution.PlaceholderTask). Its agent pod cannot start: the fail aborts the
    run, which Jenkins refuses (403). The node block's item, not the build's own, waited on
    the label of an agent gone: the adoption made an agent for it in the next pass, and the
    failed build ran after all. It is left alone while the abort is not done, then goes with
    the run once Jenkins allows the abort."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    block = jenkins_fake.start_pipeline(item)
    cannot_start(kube, agent)
    jenkins_fake.fail_next(403, times=1000, path_prefix=f"/job/build/{block.run.number}/stop",
                           body=REFUSED)
    now = time.time()

    first = reconcile.reconcile_once(rt, now=now)

    assert state.get_build(key)["fail_reason"] == "ErrImagePull" and first["start_failures"] == 1
    assert block.state == "queued" and block.run.state == "running"
    later = reconcile.reconcile_once(rt, now=now + 1)
    work(app)
    assert first["queue_items_adopted"] == later["queue_items_adopted"] == 0
    assert kube.pods(NAMESPACE) == []

    jenkins_fake.clear_failures()
    allowed = reconcile.reconcile_once(rt, now=retry_due())

    assert allowed["jenkins_leftovers_stopped"] == 1
    assert jenkins_fake.stopped_builds == [("build", block.run.number)]
    assert block.state == "cancelled" and allowed["queue_items_adopted"] == 0
    work(app)
    assert kube.pods(NAMESPACE) == []


def test_a_build_parked_through_a_long_quiet_down_is_resumed_when_it_ends(
        app, kube, jenkins_fake):
    """Jenkins prepares for shutdown on a Friday and the operator cancels it on Monday: the
    build parked meanwhile was received more than BUILD_WINDOW_SECONDS (2 days) before, and
    the repairs looked only at builds received within it. Never resumed, it kept its Jenkins
    node (no pod) and its queue item, waiting on that agent's label, for ever, and its record
    (never ended, never expired). The builds that have an agent, pod or not, are looked at
    whatever their age."""
    key = push(app.test_client(), 1)
    work(app)
    state, rt = state_of(app), runtime.current()
    agent = state.get_build(key)["agent"]
    queued = jenkins_fake.build_with("CI_AUTOSCALER_AGENT", agent)[0]
    jenkins_fake.quiet_down()
    now = time.time()
    assert reconcile.reconcile_once(rt, now=now + PARK_AFTER_SECONDS + 1)["builds_parked"] == 1
    assert kube.pods(NAMESPACE) == [] and agent in jenkins_fake.nodes

    jenkins_fake.cancel_quiet_down()
    monday = now + 3 * 24 * 3600
    resumed = reconcile.reconcile_once(rt, now=monday)
    work(app)

    assert resumed["builds_resumed"] == 1
    new = state.get_build(key)["agent"]  # placed again: a new name (workers.engine.agent_names)
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [new] != [agent]
    assert len(jenkins_fake.builds) == 1  # not triggered again
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(queued.queue_id, new)]


def test_a_fail_finished_after_a_hard_restart_never_cancels_a_persons_node_block(
        app, kube, jenkins_fake):
    """A fail stops half-way (500 on the cancel through every retry), then the controller is
    killed without its shutdown: our item is lost and its id given again (Queue.load). The
    first item made as it comes up is the node block of a person's Pipeline run of the same
    job, which ran on a static agent (workflow-durable-task-step queues an interrupted node
    block again once the controller is back; tests/support/jenkins_fake.py come_up). A node
    block's item carries no parameters (the run has them) and its task's URL is the run's,
    so it is an item of the same job with no agent parameter: the next pass took it for the
    failed build's own and cancelled it, failing the person's build. An item with no agent
    parameter is never a triggered build's (its job declares the parameter: workers.checks.
    jobs refuses one that does not)."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    jenkins_fake.add_node("static-linux", label="linux", offline=False)
    defaults = {name: "" for name in jenkins_fake.job("build").parameters}
    persons = jenkins_fake.queue_node_block("build", label="linux", parameters=defaults)
    assert jenkins_fake.dispatch() == [(persons.queue_id, "static-linux")]
    cannot_start(kube, agent)
    jenkins_fake.fail_next(500, times=4, path_prefix="/queue/cancelItem")
    reconcile.reconcile_once(rt)
    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    jenkins_fake.restart(hard=True)
    [again] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert again.queue_id == item and again.run is persons.run

    reconcile.reconcile_once(rt)

    assert jenkins_fake.cancelled_items == [] and again.state == "queued"
    assert persons.run.state == "running"
    assert reconcile.reconcile_once(rt)["jenkins_leftovers_stopped"] == 0
    assert jenkins_fake.cancelled_items == []


def test_a_waiting_build_whose_pod_a_re_drive_has_refused_cancels_its_queue_item(
        app, kube, jenkins_fake):
    """The template's cap (4) holds the fifth build back; a release frees a slot and the
    re-drive places it: its pod's create is refused for good (Pod Security admission) while
    its trigger, beside it, queued its Jenkins build. The provision queued the build's fail
    (pod_refused), but the re-drive marked the build failed first, with no fail_reason, so
    that fail found a build 'already failed' and did nothing: the item waited on the agent's
    label, and the adoption took it for a Replay and made an agent for it."""
    keys = [push(app.test_client(), n) for n in range(5)]
    work(app)
    rt, state = runtime.current(), state_of(app)
    assert state.get_build(keys[4])["status"] == "waiting"
    kube.fail("post", f"/api/v1/namespaces/{NAMESPACE}/pods", status=403, reason="Forbidden",
              message='pods "x" is forbidden: violates PodSecurity "restricted:latest"')
    tasks.release_agent(keys[0], state.get_build(keys[0])["agent"])
    work(app)  # the re-drive the release queued, and the fail that one queued

    build = state.get_build(keys[4])
    assert build["status"] == "failed" and build["fail_reason"] == "pod_refused", build
    [queued] = jenkins_fake.build_with("CI_AUTOSCALER_AGENT", build["agent"])
    assert queued.state == "cancelled" and jenkins_fake.cancelled_items == [queued.queue_id]
    assert build["agent"] not in jenkins_fake.nodes
    reconcile.reconcile_once(rt)
    work(app)  # nothing waits on the failed build's agent: no agent is made for it
    assert [n for n in jenkins_fake.nodes.values() if n.label == build["agent"]] == []


def test_a_pass_asks_jenkins_about_a_bounded_number_of_leftovers(app, kube, jenkins_fake):
    """Our Jenkins user never gets Job/Cancel: every failed build's item is left in Jenkins,
    its record kept, and asked about again every RETRY_SECONDS. Their number grows with
    every such fail, and a pass asked about all those due at once (each a lease, a read of
    the item and a refused cancel): a week of them made one pass thousands of Jenkins calls
    long, stalling every other repair. A pass stops at most MAX_BUILDS_PER_PASS; the rest are
    due still, for the next passes, oldest first."""
    rt, state = runtime.current(), state_of(app)
    many = jenkins_leftovers.MAX_BUILDS_PER_PASS + 5
    now = time.time()
    for n in range(many):
        key = build_key(f"left-{n}")
        agent = agent_name("build", key, rt.settings.installation)
        item = jenkins_fake.queue_build("build", label=agent,
                                        parameters={"CI_AUTOSCALER_AGENT": agent})
        state.add_build(key, {"status": "failed", "fail_reason": "ErrImagePull",
                              "agent": agent, "job": "build", "queue_item": item.queue_id,
                              "template": "small", "received_at": now})
        leftover_store.note(state, key, now - many + n)  # the oldest first
    jenkins_fake.fail_next(NOT_CANCELLABLE, times=10_000, path_prefix="/queue/cancelItem",
                           body=REFUSED)

    reconcile.reconcile_once(rt, now=now)

    assert cancels(jenkins_fake) == jenkins_leftovers.MAX_BUILDS_PER_PASS
    jenkins_fake.clear_failures()
    reconcile.reconcile_once(rt, now=now + 1)  # the 5 left, not those refused a moment ago
    assert jenkins_fake.cancelled_items == [
        b.queue_id for b in jenkins_fake.builds][jenkins_leftovers.MAX_BUILDS_PER_PASS:]
    assert cancels(jenkins_fake) == many


def test_an_item_queued_after_the_pass_read_the_queue_is_not_taken_for_the_failed_builds(
        app, kube, jenkins_fake):
    """A fail stops half-way and its pod goes; the controller is killed without its shutdown,
    our item lost with it (Queue.load). The pass reads Jenkins' queue; a person's build of
    the same job is queued right after, taking our item's id again; then the pass asks for
    that id: queued, but not in the queue it read, so nothing said whose it was, and it was
    cancelled. The queue is read again before such an item is cancelled."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    cannot_start(kube, agent)
    jenkins_fake.fail_next(500, times=4, path_prefix="/queue/cancelItem")
    reconcile.reconcile_once(rt)
    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    kube.delete_pod(NAMESPACE, agent)
    jenkins_fake.restart(hard=True)
    arrived, release = jenkins_fake.hold_next(f"/queue/item/{item}/api/json")
    passed = {}
    pass_ = threading.Thread(target=lambda: passed.update(reconcile.reconcile_once(rt)))
    pass_.start()
    try:
        assert arrived.wait(10)
        defaults = {name: "" for name in jenkins_fake.job("build").parameters}
        human = jenkins_fake.queue_build("build", label="linux", parameters=defaults)
    finally:
        release.set()
        pass_.join(10)
    assert human.queue_id == item and not pass_.is_alive()

    assert jenkins_fake.cancelled_items == [] and human.state == "queued" and passed
    assert reconcile.reconcile_once(rt)["jenkins_leftovers_stopped"] == 0
    assert jenkins_fake.cancelled_items == [] and human.state == "queued"


def test_a_replay_of_a_failed_build_whose_abort_is_refused_waits_till_that_run_is_stopped(
        app, kube, jenkins_fake):
    """A Pipeline build whose pod cannot start is failed; Jenkins refuses the abort of its
    run (403), whose node block waits on the failed build's agent label. A person replays
    the failed build: the Replay's node block waits on the same label (ReplayAction copies
    CI_AUTOSCALER_AGENT). No agent is made for it while the failed run's block waits there
    too: Jenkins hands the oldest item on a label to the agent (Queue.maintain, FIFO), so the
    agent made for the Replay would run the failed build after all. Once the failed run is
    aborted, its block goes with it and the Replay gets its agent."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    block = jenkins_fake.start_pipeline(item)
    cannot_start(kube, agent)
    jenkins_fake.fail_next(403, times=1000, path_prefix=f"/job/build/{block.run.number}/stop",
                           body=REFUSED)
    now = time.time()
    reconcile.reconcile_once(rt, now=now)
    assert state.get_build(key)["fail_reason"] == "ErrImagePull" and block.state == "queued"
    replayed = jenkins_fake.replay(item)

    refused = reconcile.reconcile_once(rt, now=now + 1)
    work(app)

    assert refused["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []
    jenkins_fake.clear_failures()
    allowed = reconcile.reconcile_once(rt, now=retry_due())
    assert allowed["jenkins_leftovers_stopped"] == 1 and block.state == "cancelled"
    served = reconcile.reconcile_once(rt, now=retry_due() + 1)
    work(app)
    assert served["queue_items_adopted"] == 1
    [adopted] = [k for k in state.live_builds() if k != key]
    jenkins_fake.connect_agent(state.get_build(adopted)["agent"])
    assert jenkins_fake.dispatch() == [(replayed.queue_id, state.get_build(adopted)["agent"])]


def test_a_cancel_jenkins_answered_without_doing_it_is_asked_again(app, kube, jenkins_fake):
    """A core before the JENKINS-21311 rework (Queue.doCancelItem as in 2.1xx) answers every
    cancel with a redirect to the Referer (HttpResponses.forwardToPreviousPage), and without
    Job/Cancel cancels nothing: the item was read back still queued, which the fail took for
    done ('queued'): no later pass asked again, the record expired, and the adoption took
    the item for a Replay, running the failed build after all. An item still queued after
    its cancel is not stopped."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    cannot_start(kube, agent)
    jenkins_fake.fail_next(302, times=1000, path_prefix="/queue/cancelItem",
                           headers={"Location": f"{jenkins_fake.url}/"})
    now = time.time()

    reconcile.reconcile_once(rt, now=now)

    assert state.get_build(key)["fail_reason"] == "ErrImagePull" and cancels(jenkins_fake) == 1
    assert leftover_store.noted(state, [key]) == {key}
    week = reconcile.reconcile_once(rt, now=now + rt.settings.build_ttl_seconds + 1)
    work(app)
    assert week["builds_expired"] == 0 and week["queue_items_adopted"] == 0
    assert kube.pods(NAMESPACE) == [] and cancels(jenkins_fake) > 1  # asked again


def test_leftovers_a_pass_passes_over_do_not_hold_back_the_others(app, kube, jenkins_fake):
    """A pass passes over a leftover whose build a task holds (its lease) or whose pod still
    stands (the sweep's): it stayed first in line, due longest, so with MAX_BUILDS_PER_PASS of
    those no other leftover was ever looked at. One passed over goes to the back of the line."""
    rt, state = runtime.current(), state_of(app)
    many = jenkins_leftovers.MAX_BUILDS_PER_PASS + 1
    now = time.time()
    leases, items = [], []
    for n in range(many):
        key = build_key(f"left-{n}")
        agent = agent_name("build", key, rt.settings.installation)
        items.append(jenkins_fake.queue_build("build", label=agent,
                                              parameters={"CI_AUTOSCALER_AGENT": agent}))
        state.add_build(key, {"status": "failed", "fail_reason": "ErrImagePull",
                              "agent": agent, "job": "build", "queue_item": items[-1].queue_id,
                              "template": "small", "received_at": now})
        leftover_store.note(state, key, now - many + n)  # the oldest first
        if n < jenkins_leftovers.MAX_BUILDS_PER_PASS:  # a fail of it runs, say
            leases.append(tasks.provision_lease(rt, key))
            assert leases[-1].acquire()

    reconcile.reconcile_once(rt, now=now)
    assert jenkins_fake.cancelled_items == []
    reconcile.reconcile_once(rt, now=now + 1)

    assert jenkins_fake.cancelled_items == [items[-1].queue_id]
    for lease in leases:
        lease.release()


def test_a_build_whose_trigger_was_not_written_down_still_has_its_item_cancelled(
        app, kube, jenkins_fake):
    """The worker is killed after Jenkins took the build's trigger and before the queue item
    was written on the build (the record has trigger_attempted_at, no queue_item); its pod
    cannot start and the build is failed before any restart finds the item by its agent
    parameter. The fail took the build for 'not triggered': its item waited on the agent's
    label, and the adoption took it for a Replay of the failed build. It is found by its
    agent parameter, as the provision's retry finds it, and cancelled."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    [queued] = jenkins_fake.build_with("CI_AUTOSCALER_AGENT", agent)
    assert state.get_build(key)["trigger_attempted_at"]
    state.redis.hdel(state.prefix + "build:" + key, "queue_item")  # never written
    cannot_start(kube, agent)

    first = reconcile.reconcile_once(rt)
    work(app)

    assert state.get_build(key)["fail_reason"] == "ErrImagePull" and first["start_failures"] == 1
    assert jenkins_fake.cancelled_items == [queued.queue_id] and queued.state == "cancelled"
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 0


def test_a_fail_that_meets_its_run_not_numbered_yet_aborts_it_once_it_is(
        app, kube, jenkins_fake):
    """The fail reads the build's item just as it has left the queue, its Run not made yet
    (a LeftItem with no executable): 'running', with no number to abort. The fail took that
    for done: nothing asked again, and the run went on without its agent (a Pipeline's node
    block then waited on the failed build's label, for the adoption to take as a Replay).
    It is asked again until the run has its number, and aborted."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    [queued] = jenkins_fake.build_with("CI_AUTOSCALER_AGENT", agent)
    jenkins_fake.begin_start(queued.queue_id)
    cannot_start(kube, agent)
    reconcile.reconcile_once(rt)
    work(app)
    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    jenkins_fake.start_build(queued.queue_id)

    reconcile.reconcile_once(rt)
    work(app)

    assert jenkins_fake.stopped_builds == [("build", queued.number)]
    assert queued.state == "finished" and queued.result == "ABORTED"
    assert leftover_store.noted(state, [key]) == set()


def test_a_build_that_cannot_be_provisioned_whose_trigger_was_not_written_down_is_stopped(
        app, kube, jenkins_fake):
    """A re-drive finds a build that cannot be provisioned for good (not a refused pod: its
    template gone, say) whose trigger Jenkins took but whose queue item was never written on
    it (its worker killed in between: trigger_attempted_at, no queue_item). It was marked
    failed with no fail_reason and nothing stopped: its item waited on the agent's label and
    the adoption took it for a Replay of the failed build, which ran after all. It is failed
    as one whose agent cannot start: its item, found by its agent parameter, is cancelled."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    [queued] = jenkins_fake.build_with("CI_AUTOSCALER_AGENT", agent)
    assert state.get_build(key)["trigger_attempted_at"]
    state.redis.hdel(state.prefix + "build:" + key, "queue_item")  # never written
    request = BuildRequest.from_dict(json.loads(state.get_build(key)["request"]))

    failures.fail_unprovisionable(rt, request, PermanentError("template 'small' is gone"))

    build = state.get_build(key)
    assert build["status"] == "failed" and build["fail_reason"] == "provision_failed", build
    assert jenkins_fake.cancelled_items == [queued.queue_id] and queued.state == "cancelled"
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 0
