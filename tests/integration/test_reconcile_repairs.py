"""What one reconcile pass repairs, on real Redis, kmock over HTTP and the Jenkins fake:
orphan pods, pods that are not ours, builds Jenkins queued by itself, lost COMPLETED
notifications, Jenkins agents without a pod, and provisions that died half-way."""

import dataclasses
import json
import time

import pytest
from rq import SimpleWorker

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import JENKINS_TOKEN, one_template_config, work
from tests.support.kmock_cluster import terminated
from workers import runtime
from workers.engine import reconcile
from workers.agent_starts import online as agent_start
from workers.config.config_file import parse_file_config
from workers.adapters.jenkins import NODE_DESCRIPTION
from workers.core.pods import BUILD_KEY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from workers.core.routing import BUILD_KEY_PARAMETER
from workers.engine.intake import Mover
from workers.adapters.lease import stale_seconds

LOST_EVENT_SECONDS = 30
LEASE_SECONDS = 20
CONFIG = one_template_config("""
    label: maven
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    activeDeadlineSeconds: 600
""")
OURS = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE,
                          CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS),
                          CI_AUTOSCALER_PROVISION_LEASE_SECONDS=str(LEASE_SECONDS))


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def pod_names(kube):
    return sorted(p["metadata"]["name"] for p in kube.pods(NAMESPACE))


def container_names(pod):
    return [c["name"] for c in pod["spec"]["containers"]]


def deletes(kube, name):
    return [r for r in kube.requests() if r.startswith("DELETE") and r.endswith("/" + name)]


def running_on_its_agent(app, kube, jenkins_fake, *, pipeline: bool = False):
    """One push made into a pod whose agent connected and runs its build (or, `pipeline`,
    its Pipeline's node block): (the Jenkins build, its pod, its agent's name). The kubelet
    is played: an agent runs only in a pod a kubelet took (orphans.never_runs)."""
    push(app.test_client(), 1)
    work(app)
    (build,) = jenkins_fake.builds
    (pod,) = kube.pods(NAMESPACE)
    agent = pod["metadata"]["name"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    if pipeline:
        jenkins_fake.start_pipeline(build.queue_id)
    assert [node for _, node in jenkins_fake.dispatch()] == [agent]  # it runs there
    return build, pod, agent


def test_a_pod_with_our_label_whose_build_is_unknown_is_deleted_within_one_pass(
        app, kube, jenkins_fake):
    kube.add_pod(NAMESPACE, "cia-left-behind", node="node-a",
                 labels={**OURS, BUILD_KEY_LABEL: "no-such-build"})
    kube.add_pod(NAMESPACE, "cia-no-key", node="node-a", labels=OURS)
    jenkins_fake.add_node("cia-left-behind", label="cia-left-behind",
                          description=NODE_DESCRIPTION)

    result = reconcile.reconcile_once(runtime.current())

    assert result["pods_deleted"] == 2
    assert pod_names(kube) == []
    assert "cia-left-behind" not in jenkins_fake.nodes


def test_a_pod_whose_build_redis_lost_is_kept_while_its_agent_runs_the_build_in_jenkins(
        app, kube, jenkins_fake, redis_conn):
    """Redis lost every key (a Redis without persistence restarted, FLUSHALL, a failover to
    a replica that lagged): the pods' builds are unknown, but Jenkins still runs them on our
    agents. Deleting such a pod as an orphan killed a running build; it is kept while its
    agent's executor runs something (computer/NAME/api/json, Executor.isIdle), and deleted
    with its Jenkins node in the first pass after its build ended."""
    build, _, agent = running_on_its_agent(app, kube, jenkins_fake)
    redis_conn.flushdb()  # the data loss
    rt = runtime.current()

    for later in (0, 15, 10 * LOST_EVENT_SECONDS):
        assert reconcile.reconcile_once(rt, now=time.time() + later)["pods_deleted"] == 0
    assert pod_names(kube) == [agent] and deletes(kube, agent) == []
    assert agent in jenkins_fake.nodes

    jenkins_fake.finish_build(build.queue_id)
    assert reconcile.reconcile_once(rt)["pods_deleted"] == 1
    assert pod_names(kube) == [] and agent not in jenkins_fake.nodes


def test_an_orphan_pod_that_ended_is_deleted_though_jenkins_still_holds_its_block(
        app, kube, jenkins_fake, redis_conn):
    """Redis lost the build's record, and then its agent container was OOM-killed: the
    Pipeline's node block stays on the agent's executor, waiting for an agent that comes
    back (REALITY.md: a Pipeline waits for its agent; workers.engine.lost_agents), so
    Jenkins shows a run there for ever. Kept till "that build ends", the dead pod stayed
    for good and the run hung; an agent container that ended runs nothing, ever: deleted,
    with its Jenkins node (whose removal ends the block: RemovedNodeListener)."""
    _, pod, agent = running_on_its_agent(app, kube, jenkins_fake, pipeline=True)
    redis_conn.flushdb()  # the data loss
    kube.kubelet_status(NAMESPACE, agent, phase="Failed", states={
        name: terminated("OOMKilled", 137) for name in container_names(pod)})
    jenkins_fake.disconnect_agent(agent)  # its process died with the container
    assert jenkins_fake.nodes[agent].running is not None  # the block waits for it

    # fails without the fix: 0, the pod kept for a build that can never end
    assert reconcile.reconcile_once(runtime.current())["pods_deleted"] == 1
    assert pod_names(kube) == [] and agent not in jenkins_fake.nodes


def test_orphans_are_asked_about_in_one_read_of_jenkins_whatever_their_number(
        app, kube, jenkins_fake):
    """After a data loss every agent pod is an orphan until its build ends (workers.engine.
    orphans): Jenkins was asked about each one, one GET computer/NAME/api/json per pod per
    pass (500 builds, 500 GETs every pass for as long as they ran). One GET of the
    computers' list (computer/api/json, the same fields) answers for all of them."""
    names = [f"cia-orphan-{i}" for i in range(4)]
    for name in names:
        kube.add_pod(NAMESPACE, name, node="node-a",
                     labels={**OURS, BUILD_KEY_LABEL: "no-such-build"})
        kube.kubelet_status(NAMESPACE, name, phase="Running")
        jenkins_fake.add_node(name, label=name, description=NODE_DESCRIPTION)
        jenkins_fake.connect_agent(name)
    busy = jenkins_fake.queue_node_block("pipeline", label=names[0])
    assert jenkins_fake.dispatch() == [(busy.queue_id, names[0])]

    assert reconcile.reconcile_once(runtime.current())["pods_deleted"] == 3
    assert pod_names(kube) == [names[0]]  # the one whose agent runs a block is kept
    asked = [r.path for r in jenkins_fake.requests
             if r.path.startswith("/computer/cia-orphan-") and r.path.endswith("/api/json")
             and "executors" in r.query.get("tree", "")]  # what its agent runs
    assert asked == []  # fails without the fix: a GET for each of the four


def test_a_pod_without_our_label_is_never_touched_even_when_the_api_returns_it(app, kube):
    # kmock ignores label selectors, so our list returns these pods too.
    kube.add_foreign_pod(NAMESPACE, "someone-elses")
    kube.add_foreign_pod(NAMESPACE, "looks-like-ours",
                         labels={BUILD_KEY_LABEL: "no-such-build", "app": "x"})
    kube.add_foreign_pod(NAMESPACE, "wrong-value",
                         labels={MANAGED_BY_LABEL: "someone-else"})
    kube.set_pod_phase(NAMESPACE, "someone-elses", "Failed")

    reconcile.reconcile_once(runtime.current(), now=time.time() + 10 * 24 * 3600)

    assert pod_names(kube) == ["looks-like-ours", "someone-elses", "wrong-value"]
    for name in pod_names(kube):
        assert deletes(kube, name) == [], f"{name} was sent a DELETE"


def test_a_build_queued_in_jenkins_without_any_webhook_gets_an_agent_in_one_pass(
        app, kube, jenkins_fake):
    item = jenkins_fake.queue_build("nightly", label="maven")
    jenkins_fake.queue_build("other-team", label="windows")  # not one of our labels
    rt = runtime.current()

    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(app)

    (pod,) = kube.pods(NAMESPACE)
    agent = pod["metadata"]["name"]
    assert jenkins_fake.nodes[agent].label == "maven"  # the label the queued build waits on
    assert jenkins_fake.nodes[agent].exclusive
    assert len(jenkins_fake.builds) == 2  # nothing triggered: the build exists already
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 0  # once per item

    # The build runs on it and ends; no notification comes; the pass after asks Jenkins.
    jenkins_fake.start_build(item.queue_id)
    jenkins_fake.finish_build(item.queue_id)
    result = reconcile.reconcile_once(rt, now=time.time() + LOST_EVENT_SECONDS + 1)
    assert result["lost_builds_released"] == 1
    assert pod_names(kube) == [] and agent not in jenkins_fake.nodes


def test_a_template_with_several_labels_adopts_a_build_waiting_on_any_one_of_them(
        app_on_cluster, kube, jenkins_fake):
    """The Kubernetes plugin's podTemplate `label` is space-separated labels (README maps it
    to ours): "maven jdk17" was taken as one label no queue item ever names, so a build
    waiting on `jdk17` waited for ever."""
    app = app_on_cluster(CONFIG.replace("label: maven", "label: '  maven   jdk17 '"),
                         namespace=NAMESPACE)
    jenkins_fake.queue_build("nightly-jdk17", label="jdk17")
    rt = runtime.current()

    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(app)

    (pod,) = kube.pods(NAMESPACE)
    assert jenkins_fake.nodes[pod["metadata"]["name"]].label == "jdk17"


def test_a_lost_completed_notification_still_ends_with_the_pod_deleted(
        app, kube, jenkins_fake):
    key = push(app.test_client(), 1)
    work(app)
    (build,) = jenkins_fake.builds
    agent = state_of(app).get_build(key)["agent"]
    rt = runtime.current()
    jenkins_fake.start_build(build.queue_id)

    later = time.time() + LOST_EVENT_SECONDS + 1
    assert reconcile.reconcile_once(rt, now=later)["lost_builds_released"] == 0  # running
    assert pod_names(kube) == [agent]

    jenkins_fake.finish_build(build.queue_id, "FAILURE")  # and its COMPLETED is lost
    # Asked once per quiet period: the next question comes a period after the last.
    assert reconcile.reconcile_once(rt, now=later + 1)["lost_builds_released"] == 0
    result = reconcile.reconcile_once(rt, now=later + LOST_EVENT_SECONDS + 1)

    assert result["lost_builds_released"] == 1
    assert pod_names(kube) == []
    assert agent not in jenkins_fake.nodes
    state = state_of(app).get_build(key)
    assert state["status"] == "released"
    # Jenkins' API's result, for the commit status (not "ended without a result")
    assert state["result"] == "FAILURE"
    assert state["build_url"] == f"{jenkins_fake.url}/job/build/{build.number}/"


def test_a_lost_started_notification_is_made_up_from_jenkins_answer(app, kube, jenkins_fake):
    """The plugin ignores our answer (REALITY.md): a STARTED the web could not store is gone.
    The pass that asks Jenkins about a quiet build marks it running, as STARTED would have."""
    key = push(app.test_client(), 1)
    work(app)
    (build,) = jenkins_fake.builds
    jenkins_fake.start_build(build.queue_id)  # and its STARTED is lost
    rt = runtime.current()
    assert state_of(app).get_build(key)["status"] == "triggered"

    reconcile.reconcile_once(rt, now=time.time() + LOST_EVENT_SECONDS + 1)

    state = state_of(app).get_build(key)
    assert (state["status"], state["jenkins_build"]) == ("running", str(build.number))
    assert state["started_at"]


def test_a_build_whose_notifications_were_all_lost_is_released_after_jenkins_forgot_its_item(
        app, kube, jenkins_fake):
    """Jenkins keeps a left queue item about 5 minutes (REALITY.md): a reconcile loop that was
    down longer finds the item gone; the run is found by its queue id among the job's runs."""
    key = push(app.test_client(), 1)
    work(app)
    (build,) = jenkins_fake.builds
    agent = state_of(app).get_build(key)["agent"]
    jenkins_fake.start_build(build.queue_id)
    jenkins_fake.finish_build(build.queue_id)  # neither STARTED nor COMPLETED arrived
    assert jenkins_fake.forget_left_items() == {build.queue_id}

    result = reconcile.reconcile_once(runtime.current(),
                                      now=time.time() + LOST_EVENT_SECONDS + 1)
    assert result["lost_builds_released"] == 1
    assert pod_names(kube) == [] and agent not in jenkins_fake.nodes
    assert state_of(app).get_build(key)["status"] == "released"
    assert state_of(app).get_build(key)["result"] == "SUCCESS"


def test_a_lost_end_never_takes_the_result_of_a_run_a_started_named_that_is_not_its_own(
        app, kube, jenkins_fake):
    """A STARTED is anyone's with the shared token (issue 17): one naming another run of the
    job (a passed one) for a build whose queue item was then cancelled and forgotten leads
    the lost-event check to that run; its result is not the build's (its queueId is not the
    build's item), so the build is released without one, never marked passed."""
    other = jenkins_fake.queue_build("build", label="elsewhere")
    passed = jenkins_fake.finish_build(other.queue_id, "SUCCESS")
    key = push(app.test_client(), 1)
    work(app)
    build = next(b for b in jenkins_fake.builds if b.queue_id != other.queue_id)
    agent = state_of(app).get_build(key)["agent"]
    forged = {"name": "build", "url": "job/build/", "build": {
        "full_url": f"{jenkins_fake.url}/job/build/{passed.number}/", "number": passed.number,
        "queue_id": build.queue_id, "phase": "STARTED", "url": f"job/build/{passed.number}/",
        "parameters": dict(build.parameters)}}
    answer = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=forged)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    Mover(state_of(app), jenkins_url=jenkins_fake.url).drain()  # the worker applies a STARTED
    assert state_of(app).get_build(key)["jenkins_build"] == str(passed.number)
    jenkins_fake.cancel_by_hand(build.queue_id)
    jenkins_fake.forget_left_items()

    result = reconcile.reconcile_once(runtime.current(),
                                      now=time.time() + LOST_EVENT_SECONDS + 1)
    assert result["lost_builds_released"] == 1
    assert agent not in jenkins_fake.nodes
    state = state_of(app).get_build(key)
    assert state["status"] == "released" and "result" not in state, state


def test_pods_that_ended_or_outlived_their_deadline_are_deleted_with_their_agents(
        app, kube, jenkins_fake):
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    agents = [state_of(app).get_build(k)["agent"] for k in keys]
    rt = runtime.current()
    jenkins_fake.connect_agent(agents[1])
    agent_start.poll(rt)
    # it took its build (one that never reached it is a start failure too: workers.engine.failures)
    jenkins_fake.start_build(int(state_of(app).get_build(keys[1])["queue_item"]))
    kube.set_pod_phase(NAMESPACE, agents[0], "Failed")  # before its agent connected
    kube.set_pod_phase(NAMESPACE, agents[1], "Failed")  # after

    first = reconcile.reconcile_once(rt)

    # The first is a start failure (workers.agent_starts.watch), the second the build's own end.
    assert (first["start_failures"], first["pods_deleted"]) == (1, 1)
    assert state_of(app).get_build(keys[0])["fail_reason"] == "pod_failed"
    assert state_of(app).get_build(keys[1])["status"] == "released"
    assert pod_names(kube) == sorted(agents[2:])

    result = reconcile.reconcile_once(rt, now=time.time() + 600 + 121)  # deadline + grace

    assert result["pods_deleted"] == 2
    assert pod_names(kube) == []
    assert not set(agents) & set(jenkins_fake.nodes)


def test_a_running_build_outlives_a_deadline_lowered_after_its_pod_was_made(
        app, kube, jenkins_fake):
    """The pod's own activeDeadlineSeconds is its deadline: the operator lowered the template's
    (600 s to 60 s) and restarted the processes; the pass took the new one, and deleted the
    pods of builds running well within the deadline they were made with."""
    key = push(app.test_client(), 1)
    work(app)
    agent = state_of(app).get_build(key)["agent"]
    rt = runtime.current()
    jenkins_fake.connect_agent(agent)
    agent_start.poll(rt)
    jenkins_fake.start_build(int(state_of(app).get_build(key)["queue_item"]))
    lowered = dataclasses.replace(rt, config=parse_file_config(
        CONFIG.replace("activeDeadlineSeconds: 600", "activeDeadlineSeconds: 60")))
    assert lowered.config.templates["small"].active_deadline_seconds == 60

    kept = reconcile.reconcile_once(lowered, now=time.time() + 60 + 121)

    assert kept["pods_deleted"] == 0 and pod_names(kube) == [agent]
    gone = reconcile.reconcile_once(lowered, now=time.time() + 600 + 121)  # its own deadline
    assert gone["pods_deleted"] == 1 and pod_names(kube) == []


def test_a_pod_made_without_a_deadline_of_its_own_still_goes_at_its_templates(
        app_on_cluster, kube, jenkins_fake):
    """A podSpecPatch may remove activeDeadlineSeconds (null removes a key): the kubelet then
    never stops the pod, and the pass is the only bound left; judged by the pod's own
    deadline alone, a build stuck on it would keep its node for good."""
    app = app_on_cluster(CONFIG + "    podSpecPatch: {activeDeadlineSeconds: null}\n",
                         namespace=NAMESPACE)
    key = push(app.test_client(), 1)
    work(app)
    agent = state_of(app).get_build(key)["agent"]
    assert "activeDeadlineSeconds" not in kube.pod(NAMESPACE, agent)["spec"]
    rt = runtime.current()

    assert reconcile.reconcile_once(rt, now=time.time() + 600 + 60)["pods_deleted"] == 0
    assert reconcile.reconcile_once(rt, now=time.time() + 600 + 121)["pods_deleted"] == 1
    # never started: failed (test_a_build_whose_pod_stayed_pending_past_its_deadline_...)
    assert pod_names(kube) == [] and state_of(app).get_build(key)["status"] == "failed"


def test_a_build_whose_pod_stayed_pending_past_its_deadline_fails_and_leaves_no_queue_item(
        app, kube, jenkins_fake):
    """A pod no kubelet ever starts (bound to a node that went away with it, or made without
    a deadline of its own) is deleted at its template's deadline. Its build was released
    with no result nor reason, and its Jenkins queue item waited for good on the label of
    an agent that was gone. It is a start failure now: failed with its reason, its queue
    item cancelled, and nothing made again in the passes after."""
    key = push(app.test_client(), 1)
    work(app)
    state = state_of(app).get_build(key)
    agent, item = state["agent"], int(state["queue_item"])
    rt = runtime.current()
    later = time.time() + 600 + 121  # deadline + grace

    result = reconcile.reconcile_once(rt, now=later)

    assert result["pods_deleted"] == 1 and pod_names(kube) == []
    state = state_of(app).get_build(key)
    assert (state["status"], state["fail_reason"]) == ("failed", "pod_failed"), state
    assert "Pending" in state["error"] and "deadline" in state["error"]
    (build,) = jenkins_fake.builds
    assert build.queue_id == item and build.state == "cancelled"  # queued for good before
    assert agent not in jenkins_fake.nodes
    for offset in (60, 600):  # no loop: nothing made again, nothing more deleted
        again = reconcile.reconcile_once(rt, now=later + offset)
        work(app)
        assert again["pods_deleted"] == 0 and pod_names(kube) == []
    assert len(jenkins_fake.builds) == 1


def test_jenkins_agents_without_a_pod_go_when_their_build_is_unknown_or_over(
        app, kube, jenkins_fake):
    key = push(app.test_client(), 1)
    work(app)
    live = state_of(app).get_build(key)["agent"]
    jenkins_fake.add_node("cia-leaked", label="cia-leaked", description=NODE_DESCRIPTION)
    jenkins_fake.add_node("static-agent", label="linux", description="a hand-made agent")

    assert reconcile.reconcile_once(runtime.current())["jenkins_agents_deleted"] == 1

    assert sorted(jenkins_fake.nodes) == sorted([live, "static-agent"])


def test_a_provision_that_died_half_way_is_provisioned_again_once(app, kube, jenkins_fake):
    key = push(app.test_client(), 1)
    state = state_of(app)
    Mover(state).drain()
    state.queue.empty()  # the job went with a worker killed while running it
    rt = runtime.current()

    assert reconcile.reconcile_once(rt)["stalled_builds_restarted"] == 0  # not quiet yet
    later = time.time() + LEASE_SECONDS + 1
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 1
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 0  # queued
    # While jobs wait in the queue, a build counts as stalled only after ten lease periods.
    much_later = later + 10 * LEASE_SECONDS + 1
    assert reconcile.reconcile_once(rt, now=much_later)["stalled_builds_restarted"] == 1
    work(app)

    assert pod_names(kube) == [state.get_build(key)["agent"]]
    assert len(jenkins_fake.build_with(BUILD_KEY_PARAMETER, key)) == 1


def test_a_build_is_not_triggered_twice_when_the_first_answer_was_lost(
        app, kube, jenkins_fake):
    key = push(app.test_client(), 1)
    work(app)
    (build,) = jenkins_fake.builds
    jenkins_fake.start_build(build.queue_id)  # it left the queue: Jenkins folds nothing now
    state = state_of(app)
    # As if the worker died after Jenkins took the request and before writing its answer.
    state.redis.hdel(f"{state.prefix}build:{key}", "queue_item")
    state.update_build(key, status="pod_created")
    request = json.loads(state.get_build(key)["request"])

    state.queue.enqueue("workers.tasks.provision_agent", kwargs={"build": request})
    work(app)

    assert len(jenkins_fake.build_with(BUILD_KEY_PARAMETER, key)) == 1
    assert state.get_build(key)["queue_item"] == str(build.queue_id)
    assert state.get_build(key)["status"] == "triggered"


def test_a_provision_job_whose_worker_died_before_its_lease_is_redriven_not_left_queued(
        app, kube, jenkins_fake):
    """A worker SIGKILLed after it started a provision job and before the job took its build's
    lease: the job is in RQ's started registry, in no queue, and RQ gives it back only after
    its timeout plus 60 s and a worker's maintenance pass, every 10 minutes
    (StartedJobRegistry.cleanup, rq 3.0). While other builds' jobs waited in the queue, the
    build waited ten lease periods (10 minutes by default) for its restart, as if its job
    could still be in there."""
    key, state, worker, job = _taken_while_queue_busy(app)
    worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    assert state.queue.count == 1
    rt = runtime.current()

    assert reconcile.reconcile_once(rt)["stalled_builds_restarted"] == 0  # may still be alive
    later = time.time() + stale_seconds(LEASE_SECONDS) + 1
    restarted = reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"]
    # once per dead job: its build's new job waits in the queue as any other
    again = reconcile.reconcile_once(rt, now=later + 2 * LEASE_SECONDS)

    assert restarted == 1 and state.get_build(key)["restarted_at"]
    assert again["stalled_builds_restarted"] == 0


@pytest.mark.parametrize("retried", [False, True], ids=["first-attempt", "rq-retry"])
def test_a_provision_job_a_live_worker_took_and_is_starting_is_not_provisioned_twice(
        app, kube, jenkins_fake, retried):
    """A live worker holds each job it takes for a few round trips before it starts it: our
    PoolWorker's main thread writes its execution (rq/executions.py prepare_execution: the
    started registry) and the job thread then its start (Worker.prepare_job_execution:
    status "started", started_at). During a burst a build's job waited longer than a lease
    period in the queue, and a pass that read it in that moment queued a second provision of
    it; an RQ retry's job still carries the started_at of its earlier attempt there."""
    key, state, worker, job = _taken_while_queue_busy(app)
    if retried:  # its first attempt ended retryably: RQ's retry, then its scheduler's enqueue
        execution = worker.prepare_execution(job)
        worker.prepare_job_execution(job)
        with state.redis.pipeline() as pipe:
            job.retry(state.queue, pipe)
            worker.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.execute()
        state.queue.scheduled_job_registry.remove(job)
        state.queue.enqueue_job(job, at_front=True)
        job, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
        assert job.description == f"provision_agent {key}"
    worker.prepare_execution(job)  # the job thread has not started it yet
    rt = runtime.current()

    # the build waited in the queue since its last touch, longer than a lease period
    later = time.time() + LEASE_SECONDS + 1
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 0
    assert "restarted_at" not in state.get_build(key)


def _taken_while_queue_busy(app):
    """A build's provision job taken by a worker (RQ's own steps) while a second build's job
    waits in the queue: the workers are behind."""
    key = push(app.test_client(), 1)
    state = state_of(app)
    Mover(state).drain()
    push(app.test_client(), 2)
    Mover(state).drain()
    worker = SimpleWorker([state.queue], connection=state.redis,
                          serializer=state.queue.serializer)
    worker.register_birth()
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert job.description == f"provision_agent {key}"
    return key, state, worker, job
