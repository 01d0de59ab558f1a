"""A pod that cannot start fails its build fast and visibly; an agent start is measured to
its computer online. Real redis-server, kmock over HTTP (the kubelet's container states
written through the API, so the decision comes from the worker's watch), the Jenkins fake.

The worker's ClusterWatch (runtime.current(), as in production) sees the MODIFIED event and
queues the failure; the test runs the queue like a worker, polling against a deadline."""

import threading
import time

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import JENKINS_TOKEN, mover, work
from tests.support.kmock_cluster import RATE_LIMITED, running, terminated, waiting
from tests.support.payloads import fixture
from workers import runtime
from workers.engine import reconcile
from workers.agent_starts import online as agent_start
from workers.core.routing import AGENT_PARAMETER
from workers.agent_starts.watch import StartWatch
from workers.core import commit_status

CONNECT_TIMEOUT_SECONDS = 30
CONFIG = f"""
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
templates:
  small:
    cpu: {{min: "1", default: "1", max: "1"}}
    memory: {{min: 1Gi, default: 1Gi, max: 1Gi}}
    agentConnectTimeoutSeconds: {CONNECT_TIMEOUT_SECONDS}
"""
FAIL_FAST_SECONDS = 10  # the bound, from the kubelet's write to everything cleaned up


@pytest.fixture
def app(app_on_cluster):
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(
        ("node-a", "8", "32Gi"), ("node-b", "8", "32Gi")))
    runtime.current()  # the worker's runtime: its ClusterWatch is listed and watching
    return app


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def one_build(app, kube, jenkins_fake):
    """A push made into one pod, one Jenkins node and one queued build; (key, agent, item)."""
    key = push(app.test_client(), 0)
    work(app)
    build = state_of(app).get_build(key)
    assert build["status"] == "triggered", build
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent"]]
    return key, build["agent"], int(build["queue_item"])


def until(app, done, timeout: float = FAIL_FAST_SECONDS) -> float:
    """Run the queue as a worker does until done() holds; the seconds it took."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < timeout, "not done in time"
        work(app)
        time.sleep(0.02)
    return time.monotonic() - started


def exported(app, line_start: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    assert len(values) == 1, (line_start, values)
    return values[0]


def failures_counted(app, reason: str) -> float:
    return exported(app, "ci_autoscaler_agent_start_failures_total{"
                         f'reason="{reason}",template="small"}}')


def pod_creates(kube) -> int:
    return sum(1 for r in kube.requests()
               if r.startswith(f"POST /api/v1/namespaces/{NAMESPACE}/pods"))


def cleaned_up(kube, jenkins_fake, agent):
    return lambda: kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


def test_image_pull_backoff_fails_the_build_within_10s_and_nothing_provisions_it_again(
        app, kube, jenkins_fake):
    key, agent, item = one_build(app, kube, jenkins_fake)
    assert failures_counted(app, "ImagePullBackOff") == 0

    image = kube.pod(NAMESPACE, agent)["spec"]["containers"][0]["image"]
    kube.image_pull_backoff(NAMESPACE, agent)
    took = until(app, cleaned_up(kube, jenkins_fake, agent))

    assert took < FAIL_FAST_SECONDS
    assert jenkins_fake.cancelled_items == [item]
    assert jenkins_fake.builds[0].state == "cancelled"
    build = state_of(app).get_build(key)
    assert build["status"] == "failed" and build["fail_reason"] == "ImagePullBackOff"
    assert build["error"].startswith(  # the kubelet's words, the last pull's error with them
        f'container jnlp: ImagePullBackOff: Back-off pulling image "{image}": ErrImagePull: '
        f'{image}: not found')  # the runtime's wrapping cut (image_pulls.short)
    assert failures_counted(app, "ImagePullBackOff") == 1
    assert exported(app, 'ci_autoscaler_agents_deleted_total{reason="start_failed",'
                         'template="small"}') == 1
    # Nothing provisions it again: not the worker, not a reconcile pass, not a second event.
    reconcile.reconcile_once(runtime.current())
    work(app)
    assert kube.pods(NAMESPACE) == [] and pod_creates(kube) == 1
    assert len(jenkins_fake.builds) == 1 and jenkins_fake.nodes == {}
    assert state_of(app).get_build(key)["status"] == "failed"
    assert failures_counted(app, "ImagePullBackOff") == 1


def test_several_workers_seeing_the_event_queue_one_failure(app, kube, jenkins_fake):
    """Every worker process watches every pod: the failure job is deduped in Redis."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent)
    state = state_of(app)
    settings = runtime.current().settings
    deadline = time.monotonic() + FAIL_FAST_SECONDS
    while not state.queue.count and time.monotonic() < deadline:  # our own watch queued it
        time.sleep(0.02)
    other_worker = StartWatch(state=state, namespace=NAMESPACE,
                              fatal_waiting_reasons=settings.fatal_waiting_reasons)
    other_worker("MODIFIED", kube.pod(NAMESPACE, agent))
    other_worker("LISTED", kube.pod(NAMESPACE, agent))
    assert [j.func_name for j in state.queue.get_jobs()] == ["workers.failures.fail_start"]
    until(app, cleaned_up(kube, jenkins_fake, agent))
    assert failures_counted(app, "ImagePullBackOff") == 1


def test_a_pod_evicted_before_its_agent_connected_is_placed_again_once_then_fails(
        app, kube, jenkins_fake):
    """No fault of the build, and nothing of it ran there: placed again on another node under
    a new agent name (its queue item kept), as a pod drained before its agent connected. A
    second eviction fails it as a start failure (workers.agent_starts.disrupted)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")

    kube.evict(NAMESPACE, agent)
    until(app, lambda: [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] not in ([agent], []))

    build = state_of(app).get_build(key)
    again = build["agent"]
    assert again != agent and build["status"] == "triggered" and not build.get("fail_reason")
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [again]
    assert kube.pod(NAMESPACE, again)["spec"]["affinity"] != {}  # placed anew
    assert "node-a" in build["excluded_nodes"] and agent not in jenkins_fake.nodes
    assert jenkins_fake.cancelled_items == [] and failures_counted(app, "Evicted") == 0
    assert exported(app, 'ci_autoscaler_agents_deleted_total{reason="disrupted",'
                         'template="small"}') == 1

    kube.kubelet_status(NAMESPACE, again, phase="Running", node="node-b")
    kube.evict(NAMESPACE, again)
    until(app, cleaned_up(kube, jenkins_fake, again))

    assert jenkins_fake.cancelled_items == [item]
    build = state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "Evicted")
    assert "The node was low on resource: memory" in build["error"]
    assert failures_counted(app, "Evicted") == 1


@pytest.mark.parametrize("reason", ["OutOfcpu", "OutOfpods", "UnexpectedAdmissionError"])
def test_a_pod_the_kubelet_rejected_at_admission_is_placed_again_not_failed(
        app, kube, jenkins_fake, reason):
    """The kubelet of the node the scheduler bound the pod to refuses it at admission (its
    own fit check found the node short, or the GPU's device plugin failed the allocation:
    pkg/kubelet/lifecycle/predicate.go): phase Failed, reason OutOfcpu (OutOfpods,
    UnexpectedAdmissionError), nothing of the build ever ran. No fault of the build: placed
    again on another node, as an eviction before its agent connected is, not failed as
    `pod_failed` with the push's developer told its build failed."""
    key, agent, item = one_build(app, kube, jenkins_fake)

    kube.kubelet_rejects(NAMESPACE, agent, node="node-a", reason=reason)
    until(app, lambda: [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] not in ([agent], []))

    build = state_of(app).get_build(key)
    assert build["agent"] != agent and build["status"] == "triggered", build
    assert not build.get("fail_reason")
    assert "node-a" in build["excluded_nodes"] and agent not in jenkins_fake.nodes
    assert jenkins_fake.cancelled_items == [] and failures_counted(app, "pod_failed") == 0


def test_a_pod_rejected_on_another_candidate_than_the_placements_is_kept_off_that_node(
        app, kube, jenkins_fake):
    """kube-scheduler has the last word among the placement's candidates (required node
    affinity, ours preferred: workers.core.placement.alternates): it bound the pod to node-b,
    the build's record naming node-a, and node-b's kubelet refused it (OutOfcpu). The node
    left out is the one that refused it, the pod's spec.nodeName: node-a left out instead,
    the build went back to node-b, whose kubelet refused it again, and the second refusal
    failed it (workers.agent_starts.disrupted: once)."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    build = state_of(app).get_build(key)
    assert build["node"] == "node-a" and "node-b" in build["candidates"].split(","), build

    kube.kubelet_rejects(NAMESPACE, agent, node="node-b")
    until(app, lambda: [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] not in ([agent], []))

    build = state_of(app).get_build(key)
    again = build["agent"]
    assert again != agent and not build.get("fail_reason"), build
    assert build["excluded_nodes"].split(",") == ["node-b"]
    terms = kube.pod(NAMESPACE, again)["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    allowed = {v for t in terms for e in t["matchExpressions"] for v in e["values"]}
    assert "node-b" not in allowed and "node-a" in allowed, terms


def test_a_build_that_started_is_aborted_when_its_agent_is_killed_before_connecting(
        app, kube, jenkins_fake):
    """A Pipeline runs on the controller before any agent connects: its build is aborted."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    started = jenkins_fake.start_build(item)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a",
                        states={"jnlp": terminated("OOMKilled", 137)})
    until(app, cleaned_up(kube, jenkins_fake, agent))

    assert jenkins_fake.stopped_builds == [("build", started.number)]
    assert jenkins_fake.cancelled_items == []
    assert (started.state, started.result) == ("finished", "ABORTED")
    build = state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "OOMKilled")
    # The abort's COMPLETED notification releases the build; it stays failed.
    note = jenkins_fake.notification(started, "COMPLETED")
    assert note["build"]["status"] == "ABORTED"
    app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=note)
    work(app)
    assert state_of(app).get_build(key)["status"] == "failed"


def test_a_started_notification_taken_after_the_build_failed_leaves_it_failed(
        app, kube, jenkins_fake):
    """The Pipeline's STARTED, sent as its run started, is taken only after its agent's
    start failure failed the build (it waited in the web's spool while Redis was away, or
    its delivery was slow): it made the failed build running again, on the status page and
    in the agent metrics, with no pod, for the stalled-build repair to provision again."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    started = jenkins_fake.start_build(item)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a",
                        states={"jnlp": terminated("OOMKilled", 137)})
    until(app, cleaned_up(kube, jenkins_fake, agent))
    assert state_of(app).get_build(key)["status"] == "failed"

    late = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                  json=jenkins_fake.notification(started, "STARTED"))

    assert late.status_code == 200, late.get_json()
    mover(app).drain()  # the worker's intake mover takes it (workers.engine.started)
    build = state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "OOMKilled")
    assert state_of(app).live_agents() == []


def test_a_pod_that_ends_after_its_agent_connected_is_not_a_start_failure(
        app, kube, jenkins_fake):
    """Its agent connected and took its build: the end is the build's own. (One whose build
    never reached it is a start failure: test_seen_online_killed_before_its_build.)"""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert agent_start.poll(runtime.current())["agents_online"] == 1
    run = jenkins_fake.start_build(item)  # its agent took it

    # Listeners run in order in the watch thread: once this one saw the event, the worker's
    # StartWatch (added before) has decided on it (a fail that asks Jenkins, and drops it).
    seen = threading.Event()
    runtime.current().view.add_pod_listener(
        lambda kind, obj: (obj.get("status") or {}).get("phase") == "Failed" and seen.set())
    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={"jnlp": terminated("Error", 1)})
    assert seen.wait(FAIL_FAST_SECONDS)
    work(app)

    assert state_of(app).get_build(key)["status"] == "triggered"
    assert failures_counted(app, "container_exited") == 0
    assert jenkins_fake.cancelled_items == [] and agent in jenkins_fake.nodes
    assert jenkins_fake.stopped_builds == [] and run.state == "running"


def test_an_agent_that_never_connects_is_replaced_once_on_another_node_then_failed(
        app, kube, jenkins_fake):
    key, agent, item = one_build(app, kube, jenkins_fake)
    state, rt = state_of(app), runtime.current()
    first_node = state.get_build(key)["node"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=first_node,
                        states={"jnlp": running(time.time())})

    early = agent_start.poll(rt, time.time() + CONNECT_TIMEOUT_SECONDS - 5)
    assert early["agents_replaced"] == 0 and kube.pod(NAMESPACE, agent) is not None
    assert agent_start.poll(rt, time.time() + CONNECT_TIMEOUT_SECONDS + 1)[
        "agents_replaced"] == 1
    assert kube.pod(NAMESPACE, agent) is None
    assert agent not in jenkins_fake.nodes  # a late connect of the old pod's is refused
    work(app)  # the provision, with the first node excluded, under a new agent name

    first, agent = agent, state.get_build(key)["agent"]
    assert agent != first
    pod = kube.pod(NAMESPACE, agent)
    second_node = state.get_build(key)["node"]
    assert second_node != first_node
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [second_node]
    assert len(jenkins_fake.builds) == 1  # its queue item kept, not triggered again
    assert jenkins_fake.builds[0].state == "queued"
    assert jenkins_fake.nodes[agent].label == first  # the label the item waits on
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=second_node,
                        states={"jnlp": running(time.time())})

    late = agent_start.poll(rt, time.time() + CONNECT_TIMEOUT_SECONDS + 1)

    assert late["agents_timed_out"] == 1
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert jenkins_fake.cancelled_items == [item]
    build = state.get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "agent_connect_timeout")
    assert failures_counted(app, "agent_connect_timeout") == 1
    assert exported(app, 'ci_autoscaler_agents_deleted_total{reason="agent_connect_timeout",'
                         'template="small"}') == 1
    reconcile.reconcile_once(rt)
    work(app)
    assert pod_creates(kube) == 2 and kube.pods(NAMESPACE) == []


def test_an_agent_that_never_connects_on_another_candidate_leaves_out_that_node(
        app, kube, jenkins_fake):
    """kube-scheduler bound the pod to node-b, another of the placement's candidates than the
    record's node-a (workers.core.placement.alternates), and its agent never connected there:
    the node left out is node-b, where it ran. node-a left out instead, the build went back
    to node-b and timed out there again, failed."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    state, rt = state_of(app), runtime.current()
    build = state.get_build(key)
    assert build["node"] == "node-a" and "node-b" in build["candidates"].split(","), build
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-b",
                        states={"jnlp": running(time.time())})

    assert agent_start.poll(rt, time.time() + CONNECT_TIMEOUT_SECONDS + 1)[
        "agents_replaced"] == 1

    assert state.get_build(key)["excluded_nodes"].split(",") == ["node-b"]


def test_agent_start_is_measured_when_the_computer_comes_online_not_at_started(
        app, kube, jenkins_fake):
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt = runtime.current()
    count = 'ci_autoscaler_agent_start_duration_seconds_count{template="small"}'
    note = fixture("jenkins_notification_started.json")
    note.update(name="build", url="job/build/")  # the build's job: another's is ignored
    note["build"].update(phase="STARTED", number=1)
    note["build"]["parameters"] = {AGENT_PARAMETER: agent}
    assert app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                  json=note).status_code == 200
    mover(app).drain()  # the worker's intake mover applies it (workers.engine.started)
    assert state_of(app).get_build(key)["status"] == "running"  # STARTED still marks it
    assert agent_start.poll(rt)["agents_online"] == 0
    assert exported(app, count) == 0

    jenkins_fake.connect_agent(agent)
    assert agent_start.poll(rt)["agents_online"] == 1
    assert exported(app, count) == 1
    assert agent_start.poll(rt)["agents_online"] == 0  # measured once
    # Nothing on its way up any more: Jenkins is not asked.
    asked = len(jenkins_fake.requests_to("/computer/api/json"))
    agent_start.poll(rt)
    assert len(jenkins_fake.requests_to("/computer/api/json")) == asked
    assert exported(app, count) == 1


def test_the_reconcile_leader_notices_an_agent_online_within_seconds_between_passes(
        app, kube, jenkins_fake):
    key, agent, _ = one_build(app, kube, jenkins_fake)
    state, rt, stop = state_of(app), runtime.current(), threading.Event()
    loop = threading.Thread(target=reconcile.run_forever, args=(rt, stop),
                            kwargs={"interval": 60}, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + FAIL_FAST_SECONDS
        while not state.redis.exists(state.prefix + "reconcile-last"):  # the first pass ran
            assert time.monotonic() < deadline
            time.sleep(0.02)
        jenkins_fake.connect_agent(agent)
        connected = time.monotonic()
        while not state.get_build(key).get("agent_online_at"):
            assert time.monotonic() - connected < FAIL_FAST_SECONDS
            time.sleep(0.02)
        # seen by the poll between passes (the next pass is a minute away)
        assert time.monotonic() - connected < agent_start.AGENT_POLL_INTERVAL_SECONDS + 1.5
    finally:
        stop.set()
        loop.join(FAIL_FAST_SECONDS)
    assert not loop.is_alive()
    assert exported(app, 'ci_autoscaler_agent_start_duration_seconds_count{template="small"}') == 1


def test_a_pod_the_api_refuses_for_good_fails_its_build_once_and_is_never_made_again(
        app, kube, jenkins_fake):
    """Pod Security admission refuses the agent pod (403, the same pod every time): the build
    fails with the reason, its queued Jenkins build is cancelled, its Jenkins node goes; no
    retry and no reconcile pass, however late, asks for the pod again. (Before, the build stayed
    queued, the reconcile loop provisioned it again every lease period, and its Jenkins build
    waited for an agent that never came.)"""
    kube.fail("post", f"/api/v1/namespaces/{NAMESPACE}/pods", status=403, reason="Forbidden",
              message='pods "x" is forbidden: violates PodSecurity "restricted:latest": '
                      'runAsNonRoot != true (pod or container "jnlp" must set '
                      'securityContext.runAsNonRoot=true)')
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "failed")
    build = state.get_build(key)
    assert build["fail_reason"] == "pod_refused"
    assert build["error"].endswith("failed: HTTP 403 Forbidden"), build["error"]
    assert "PodSecurity" not in build["error"]  # the server's words are never repeated
    until(app, lambda: jenkins_fake.nodes == {} and kube.pods(NAMESPACE) == [])
    assert [b.state for b in jenkins_fake.builds] == ["cancelled"]
    assert failures_counted(app, "pod_refused") == 1
    creates = pod_creates(kube)
    # A reconcile pass long after (past any lease period) provisions nothing again.
    later = time.time() + 10 * runtime.current().settings.provision_lease_seconds
    reconcile.reconcile_once(runtime.current(), now=later)
    work(app)
    assert pod_creates(kube) == creates == 1
    assert state.get_build(key)["status"] == "failed" and len(jenkins_fake.builds) == 1




def test_a_registry_rate_limit_is_left_to_the_kubelet_and_shown_while_it_retries(
        app, kube, jenkins_fake):
    """Docker Hub's 429 ("toomanyrequests: You have reached your pull rate limit") passes on
    one of the kubelet's next tries: the first ErrImagePull failed the build at once, for a
    pull that would have passed a minute later. Now the pod is left to the kubelet, and the
    build's record and commit status say why it waits; once the pod runs, they forget it."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=RATE_LIMITED)
    until(app, lambda: state_of(app).get_build(key).get("pull_error"))  # the watch's note

    reconcile.reconcile_once(runtime.current())  # nor does the pass fail it
    work(app)
    build = state_of(app).get_build(key)
    assert build["status"] == "triggered" and not build.get("fail_reason"), build
    assert build["pull_error"].startswith("ErrImagePull: failed to copy: ") \
        and "429 Too Many Requests" in build["pull_error"]
    assert kube.pod(NAMESPACE, agent) is not None and jenkins_fake.cancelled_items == []
    assert failures_counted(app, "ErrImagePull") == 0
    shown = commit_status.wanted(build)
    assert shown.state == "pending" and "image pull failing, the kubelet retries: ErrImagePull" \
        in shown.description, shown
    retrying = 'ci_autoscaler_image_pull_retrying{template="small"}'
    assert exported(app, retrying) == 1

    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")  # it passed
    until(app, lambda: not state_of(app).get_build(key).get("pull_error"))
    assert "image pull" not in commit_status.wanted(state_of(app).get_build(key)).description
    assert exported(app, retrying) == 0


def test_the_kubelet_s_tries_of_one_failing_pull_are_noted_once(app, kube, jenkins_fake, caplog):
    """From Kubernetes 1.32 each try writes ErrImagePull with the runtime's error, then
    ImagePullBackOff with 'Back-off pulling image "X": ErrImagePull: <the same error>'. Both
    are one error: noted once (one write, one warning from each worker), not twice per try
    (ten times in the bound's 5 minutes, from every worker's watch)."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    for _ in range(3):  # three tries, each with its back-off
        kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=RATE_LIMITED)
        kube.image_pull_backoff(NAMESPACE, agent, error=RATE_LIMITED)
    unavailable = RATE_LIMITED.replace("429 Too Many Requests", "503 Service Unavailable")
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=unavailable)
    # the watch takes the events in order: once the last one is noted, all were
    until(app, lambda: "503" in state_of(app).get_build(key).get("pull_error", ""))
    noted = [r for r in caplog.records
             if r.getMessage() == "agent image pull failing; the kubelet retries it"]
    assert ["429" in r.detail for r in noted] == [True, False], [r.detail for r in noted]
    assert state_of(app).get_build(key)["pull_error"].startswith("ErrImagePull: failed to copy")


def test_a_pull_that_first_fails_long_after_the_kubelet_took_the_pod_gets_its_retries(
        app, kube, jenkins_fake):
    """The kubelet took the pod 400s ago, but its image pull came late (init containers that
    ran for minutes, or the kubelet pulling other pods' images first: serializeImagePulls) and
    its first try meets a 429. Counted from status.startTime, the bound was spent before the
    first failure, and the build failed at once, as with no bound at all; counted from the
    first failure seen, the kubelet gets its retries."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    taken = float(int(time.time()) - 400)  # the API server's times are whole seconds
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=RATE_LIMITED,
                            started=taken)
    until(app, lambda: state_of(app).get_build(key).get("pull_error"))
    work(app)
    reconcile.reconcile_once(runtime.current())
    work(app)
    build = state_of(app).get_build(key)
    assert build["status"] == "triggered" and not build.get("fail_reason"), build
    assert jenkins_fake.cancelled_items == [] and kube.pod(NAMESPACE, agent) is not None
    assert failures_counted(app, "ErrImagePull") == 0


def test_a_pull_failing_for_now_fails_its_build_after_the_bound_with_the_last_error(
        app, kube, jenkins_fake):
    """Still failing CI_AUTOSCALER_IMAGE_PULL_RETRY_SECONDS (300 by default) after a watch
    first saw it fail, the build fails, told with the registry's last error even when the
    kubelet's back-off message names none (before Kubernetes 1.32). The reconcile pass's
    sweep does it: no event comes when the time is up."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=RATE_LIMITED)
    until(app, lambda: state_of(app).get_build(key).get("pull_error"))
    seen = float(state_of(app).get_build(key)["pull_error_since"])
    kube.image_pull_backoff(NAMESPACE, agent, error=None)  # 'Back-off pulling image "..."'
    until(app, lambda: kube.pod(NAMESPACE, agent)["status"]["containerStatuses"][0]["state"]
          ["waiting"]["reason"] == "ImagePullBackOff")
    work(app)
    assert state_of(app).get_build(key)["status"] == "triggered"
    reconcile.reconcile_once(runtime.current(), now=seen + 299)
    work(app)
    assert state_of(app).get_build(key)["status"] == "triggered"  # 299s: not yet

    reconcile.reconcile_once(runtime.current(), now=seen + 301)
    until(app, cleaned_up(kube, jenkins_fake, agent))

    build = state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "ImagePullBackOff"), build
    assert build["error"].startswith(
        "container jnlp: ImagePullBackOff: pull failing for 301s: ErrImagePull: failed to "
        "copy: "), build["error"]
    assert "429 Too Many Requests" in build["error"]
    shown = commit_status.wanted(build)  # what GitLab shows: the registry's answer in it
    assert shown.state == "failed" and "429 Too Many Requests" in shown.description, shown
    assert jenkins_fake.cancelled_items == [item]
    assert failures_counted(app, "ImagePullBackOff") == 1


def test_a_registry_mirror_s_password_in_a_pull_error_is_kept_out_of_the_failed_build(
        app, kube, jenkins_fake, caplog):
    """A permanent pull error fails the build at once with the kubelet's message, which
    names the registry as configured: a mirror given as https://user:password@host (containerd
    hosts.toml, a CRI-O registries.conf location) put its password in the build record (shown
    on the status page, read for GitLab's status) and in the worker's error log."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    leaked = ('unexpected status from HEAD request to https://ci-bot:Mirr0rPassw0rd@mirror'
              '.example.com/v2/maven/manifests/3.9: 404 Not Found (image "{image}")')
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=leaked)
    until(app, cleaned_up(kube, jenkins_fake, agent))

    build = state_of(app).get_build(key)
    assert build["status"] == "failed" and "mirror.example.com" in build["error"], build
    assert "Mirr0r" not in build["error"], build["error"]
    # the log's fields (the JSON log prints every `extra`), not only its messages:
    # caplog.text holds the messages alone, so a leak in a field passed unnoticed
    assert not [(r.name, r.getMessage()) for r in caplog.records if "Mirr0r" in str(vars(r))]


# containerd's error for a registry host the DNS does not know (core/remotes/docker
# resolver.go "failed to do request", Go net's "lookup <host> on <server>: no such host" for
# NXDOMAIN), as the kubelet writes it in waiting.message
NO_SUCH_HOST = ('rpc error: code = Unknown desc = failed to pull and unpack image "{image}": '
                'failed to resolve reference "{image}": failed to do request: Head '
                '"https://ci-bot:Typ0Passw0rd@regsitry.example.com/v2/ci/agent/manifests/1": '
                'dial tcp: lookup regsitry.example.com on 10.96.0.10:53: no such host')
# Docker Hub's token service refusing an anonymous token request (containerd
# core/remotes/docker/authorizer.go doBearerAuth, resolver.go "failed to authorize")
ANONYMOUS_401 = ('rpc error: code = Unknown desc = failed to pull and unpack image "{image}": '
                 'failed to resolve reference "{image}": failed to authorize: failed to fetch '
                 'anonymous token: unexpected status from GET request to https://auth.docker.io'
                 '/token?scope=repository%3Alibrary%2Fmaven%3Apull&service=registry.docker.io: '
                 '401 Unauthorized')


def test_a_registry_host_the_dns_does_not_know_fails_the_build_once_a_later_try_says_it(
        app, kube, jenkins_fake):
    """A typo in the image's registry host: the DNS answers "no such host", on every try the
    kubelet makes. But one such answer may be a private DNS zone failing for seconds (Go's
    resolver prefers the original name's NXDOMAIN over a search domain's SERVFAIL:
    net/dnsclient_unix.go), and failed at once, every build pulling meanwhile failed with it.
    So the first try leaves the pod to the kubelet; the same words from a try 30 s or more
    later (its back-off tries again after 10 s, then 20 s more) fail the build, not after the
    whole bound (300 s), GitLab's status naming the host (the URL's password kept out)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=NO_SUCH_HOST)
    until(app, lambda: state_of(app).get_build(key).get("pull_error"))
    seen = float(state_of(app).get_build(key)["pull_error_at"])
    kube.image_pull_backoff(NAMESPACE, agent, error=NO_SUCH_HOST)  # the back-off, 1.32's words
    until(app, lambda: kube.pod(NAMESPACE, agent)["status"]["containerStatuses"][0]["state"]
          ["waiting"]["reason"] == "ImagePullBackOff")
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=NO_SUCH_HOST)
    until(app, lambda: kube.pod(NAMESPACE, agent)["status"]["containerStatuses"][0]["state"]
          ["waiting"]["reason"] == "ErrImagePull")  # the try 10 s on: not yet
    reconcile.reconcile_once(runtime.current(), now=seen + 29)
    work(app)
    build = state_of(app).get_build(key)
    assert build["status"] == "triggered" and not build.get("fail_reason"), build
    assert "no such host" in build["pull_error"] and jenkins_fake.cancelled_items == []

    reconcile.reconcile_once(runtime.current(), now=seen + 31)  # the try 30 s on says it again
    until(app, cleaned_up(kube, jenkins_fake, agent))

    build = state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "ErrImagePull"), build
    shown = commit_status.wanted(build)
    assert shown.state == "failed" and "regsitry.example.com" in shown.description \
        and "no such host" in shown.description, shown
    assert "Typ0" not in build["error"] and "Typ0" not in shown.description
    assert jenkins_fake.cancelled_items == [item]
    assert failures_counted(app, "ErrImagePull") == 1


def test_a_token_service_s_401_to_an_anonymous_request_is_left_to_the_kubelet(
        app, kube, jenkins_fake):
    """Docker Hub's token service answering 401 to an anonymous token request (its outage;
    no credentials were offered, so none were refused) read as "unauthorized": the build
    failed at once, for good, for a pull that passes once the service is back. Now the pod
    is left to the kubelet, the record showing why it waits."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=ANONYMOUS_401)
    until(app, lambda: state_of(app).get_build(key).get("pull_error"))
    reconcile.reconcile_once(runtime.current())
    work(app)
    build = state_of(app).get_build(key)
    assert build["status"] == "triggered" and not build.get("fail_reason"), build
    assert "failed to fetch anonymous token" in build["pull_error"] \
        and "401 Unauthorized" in build["pull_error"], build
    assert kube.pod(NAMESPACE, agent) is not None and jenkins_fake.cancelled_items == []
    assert failures_counted(app, "ErrImagePull") == 0


# the kubelet's status of a pod it ended at its activeDeadlineSeconds
# (pkg/kubelet/active_deadline.go)
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


@pytest.mark.parametrize("kept", [True, False], ids=["waiting-kept", "waiting-reset"])
def test_a_pod_whose_deadline_ends_it_while_its_pull_fails_for_now_fails_with_the_pull_error(
        app, kube, jenkins_fake, kept):
    """A template whose activeDeadlineSeconds is shorter than the pull's bound (300 s): the
    kubelet ends the pod (Failed, DeadlineExceeded) while its pull is retried after a 429.
    The build failed "pod_failed: DeadlineExceeded", its pull error unnamed; now it fails
    with the pull's reason and the registry's answer, whether the kubelet's last status keeps
    the container waiting on its pull or not (then the record's last pull error tells)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.image_pull_backoff(NAMESPACE, agent, reason="ErrImagePull", error=RATE_LIMITED)
    until(app, lambda: state_of(app).get_build(key).get("pull_error"))
    image = kube.pod(NAMESPACE, agent)["spec"]["containers"][0]["image"]
    last = waiting("ImagePullBackOff", f'Back-off pulling image "{image}": ErrImagePull: '
                   + RATE_LIMITED.format(image=image)) if kept else waiting("ContainerCreating")
    kube.kubelet_status(NAMESPACE, agent, phase="Failed", reason="DeadlineExceeded",
                        message=DEADLINE_MESSAGE, states={"jnlp": last})
    until(app, cleaned_up(kube, jenkins_fake, agent))

    build = state_of(app).get_build(key)
    reason = "ImagePullBackOff" if kept else "ErrImagePull"
    assert (build["status"], build["fail_reason"]) == ("failed", reason), build
    assert "DeadlineExceeded" in build["error"] and "429 Too Many Requests" in build["error"]
    shown = commit_status.wanted(build)  # what GitLab shows
    assert shown.state == "failed" and "429 Too Many Requests" in shown.description, shown
    assert jenkins_fake.cancelled_items == [item]
    assert failures_counted(app, reason) == 1 and failures_counted(app, "pod_failed") == 0


@pytest.mark.parametrize("renamed", ["build-legacy", "Build"])
def test_a_start_failure_cancels_the_item_of_a_job_renamed_while_it_waited(
        app, kube, jenkins_fake, renamed):
    """A person renames the job while the build waits for its agent (Jenkins refuses a
    rename only while the job builds, Job.checkRename; "build" to "Build" too:
    AbstractItem.renameTo), and the agent's image cannot be pulled. The item, Jenkins' own
    (it holds the job itself, Queue.Item.task), names the job by its new name: taken for
    another's (its job not the build's as recorded), it was left in Jenkins' queue for good,
    waiting on the label of an agent deleted. It carries the build's agent: cancelled."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    jenkins_fake.rename_job("build", renamed)

    kube.image_pull_backoff(NAMESPACE, agent)
    until(app, cleaned_up(kube, jenkins_fake, agent))

    assert jenkins_fake.cancelled_items == [item]
    assert state_of(app).get_build(key)["status"] == "failed"
