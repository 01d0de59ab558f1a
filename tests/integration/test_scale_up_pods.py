"""Builds that wait for room get a Pending pause pod each, which a cluster autoscaler adds a
node for (it never does for work without a Pending pod: REALITY.md, "Autoscalers"); once the
scheduler binds one, it is deleted and the builds are placed on the new node
(workers.engine.scale_up). Real redis-server, kmock over HTTP (the scheduler's binding played through
the API), the Jenkins fake."""

import threading

import kubernetes
import pytest

from tests.integration.test_lost_agents import exported
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import state_of
from tests.support.app import one_template_config, production_env, work
from tests.support.fault_proxy import FaultProxy
from tests.support.kmock_cluster import _write_kubeconfig
from tests.support.monitoring import wait_until
from service.app import create_app
from workers import runtime
from workers.engine import reconcile, redrive, scale_up
from workers.core.pods import BUILD_KEY_LABEL, MANAGED_BY_LABEL
from workers.core.quantity import cpu_millis, memory_bytes
from workers.core.scale_up import SCALE_UP_VALUE

CONFIG = one_template_config("""
    cpu: {min: "1", default: "2", max: "2"}
    memory: {min: 1Gi, default: 2Gi, max: 2Gi}
    nodeSelector: {pool: ci}
    tolerations: [{key: dedicated, operator: Equal, value: ci, effect: NoSchedule}]
""")
CI_POOL = {"labels": {"pool": "ci"},
           "taints": [{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}]}


def make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, text=CONFIG, **env):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, **env)
    kube.add_node("node-a", cpu="2", memory="8Gi", **CI_POOL)
    # Pod Security `restricted` enforced, as the chart can (agents.podSecurity.enforce): a
    # scale-up pod not hardened to it would be refused by kmock as by the API server
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    runtime.install(None)
    return create_app()


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    yield make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake)  # on by default
    runtime.install(None)


def scale_up_pods(kube):
    return {p["metadata"]["labels"][BUILD_KEY_LABEL]: p for p in kube.pods(NAMESPACE)
            if p["metadata"]["labels"].get(MANAGED_BY_LABEL) == SCALE_UP_VALUE}


def waiting_for_room(app, keys):
    return [k for k in keys if state_of(app).get_build(k).get("wait_reason", "")
            .startswith("insufficient_")]


def test_builds_waiting_for_room_get_a_pending_pod_an_autoscaler_adds_a_node_for(
        app, kube, jenkins_fake):
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert len(waiting) >= 2, [state_of(app).get_build(k) for k in keys]
    rt = runtime.current()

    first = reconcile.reconcile_once(rt)
    again = reconcile.reconcile_once(rt)

    pods = scale_up_pods(kube)
    assert sorted(pods) == sorted(waiting)
    assert (first["scale_up_pods_created"], again["scale_up_pods_created"]) == (len(waiting), 0)
    assert exported(app, "ci_autoscaler_scale_up_pods ") == len(waiting)
    spec = next(iter(pods.values()))["spec"]
    (pause,) = spec["containers"]
    # what the build's pod asks at the template's minimum (its agent's share on top)
    assert float(pause["resources"]["requests"]["cpu"].rstrip("m")) >= 1000
    assert spec["nodeSelector"] == {"pool": "ci"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ci",
                                    "effect": "NoSchedule"}]
    assert "nodeName" not in spec and "affinity" not in spec
    # never taken for an agent: not in the agents' listing, no Jenkins node, no build of it
    assert not {p.name for p in rt.cluster.list_pods()} & {
        p["metadata"]["name"] for p in pods.values()}

    # The autoscaler adds a node; the scheduler binds one scale-up pod to it.
    kube.create_node("node-b", cpu="8", memory="32Gi", **CI_POOL)
    bound_for = waiting[0]
    kube.bind_pod(NAMESPACE, pods[bound_for]["metadata"]["name"], "node-b")
    # The scale-up pass sees it bound before any re-drive has placed a build there (a pass's
    # own re-drive, before it, places them, each deleting its own scale-up pod: the last test).
    bound = scale_up.sync(rt)
    work(app)  # the re-drive it asked for

    assert bound["scale_up_pods_bound"] == 1
    assert all(state_of(app).get_build(k)["status"] == "triggered" for k in waiting)
    assert {state_of(app).get_build(k)["node"] for k in waiting} == {"node-b"}
    reconcile.reconcile_once(rt)  # nobody waits now: the rest go
    assert scale_up_pods(kube) == {}
    assert exported(app, "ci_autoscaler_scale_up_pods ") == 0


def test_a_template_whose_node_group_is_at_zero_gets_one(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """No node matches the template (its node group scaled to zero, as GPU pools often are):
    nodes_needed and the status page ask for a node, so a Pending pod must, or no autoscaler
    ever adds one and the build waits for good."""
    app = make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake,
                   text=CONFIG.replace("pool: ci", "pool: zero"))
    try:
        key = push(app.test_client(), 0)
        work(app)
        assert state_of(app).get_build(key)["wait_reason"] == "no_matching_node"
        rt = runtime.current()
        reconcile.reconcile_once(rt)
        pods = scale_up_pods(kube)
        assert list(pods) == [key] and pods[key]["spec"]["nodeSelector"] == {"pool": "zero"}
        kube.create_node("zero-1", cpu="8", memory="32Gi", labels={"pool": "zero"},
                         taints=CI_POOL["taints"])
        kube.bind_pod(NAMESPACE, pods[key]["metadata"]["name"], "zero-1")
        assert scale_up.sync(rt)["scale_up_pods_bound"] == 1
        work(app)
        assert state_of(app).get_build(key)["node"] == "zero-1"
    finally:
        runtime.install(None)


def test_none_is_made_while_a_node_it_would_be_bound_on_in_vain_is_there(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The template tolerates every taint, and its only node is cordoned: the build matches
    no node, but kube-scheduler binds a pause pod there (NodeUnschedulable reads a cordon as
    a taint it tolerates). Made, it was bound, deleted, the build re-driven to match no node,
    and made again, pass after pass, while no node was ever added. Once that node is gone,
    only a new node can take it: then it is made."""
    text = CONFIG.replace("pool: ci", "pool: zero").replace(
        "tolerations: [{key: dedicated, operator: Equal, value: ci, effect: NoSchedule}]",
        "tolerations: [{operator: Exists}]")
    app = make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, text=text)
    try:
        kube.create_node("zero-0", cpu="8", memory="32Gi", labels={"pool": "zero"},
                         unschedulable=True)
        rt = runtime.current()
        wait_until(lambda: "zero-0" in {n.name for n in rt.view.snapshot()}, timeout=10,
                   what="the watch seeing the cordoned node")
        key = push(app.test_client(), 0)
        work(app)
        assert state_of(app).get_build(key)["wait_reason"] == "no_matching_node"
        for _ in range(2):
            assert reconcile.reconcile_once(rt)["scale_up_pods_created"] == 0
        assert scale_up_pods(kube) == {}
        kubernetes.client.CoreV1Api(kube.api_client()).delete_node("zero-0",
                                                                   _request_timeout=10)
        wait_until(lambda: "zero-0" not in {n.name for n in rt.view.snapshot()}, timeout=10,
                   what="the watch seeing the node go")
        reconcile.reconcile_once(rt)
        assert list(scale_up_pods(kube)) == [key]
    finally:
        runtime.install(None)


def test_turned_off_no_scale_up_pod_is_made(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    app = make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake,
                   CI_AUTOSCALER_SCALE_UP_PODS="false")
    try:
        keys = [push(app.test_client(), i) for i in range(4)]
        work(app)
        assert waiting_for_room(app, keys)
        result = reconcile.reconcile_once(runtime.current())
        assert "scale_up_pods_created" not in result and scale_up_pods(kube) == {}
    finally:
        runtime.install(None)


def test_an_api_server_refusing_one_costs_the_pass_nothing_else(app, kube, jenkins_fake):
    """An admission webhook refusing a pause pod (403) is logged and counted as a reconcile
    error; the other builds still get theirs in that pass (one template's pod refused for
    good, by a LimitRange's max say, kept every later build's node from being asked for,
    pass after pass). (A full quota's 403 is a wait: the next test.)"""
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert len(waiting) >= 2
    kube.fail("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", status=403, reason="Forbidden",
              times=1, message='admission webhook "policy.example.com" denied the request')

    refused = reconcile.reconcile_once(runtime.current())

    assert refused["scale_up_pods_created"] == len(waiting) - 1 and "nodes_needed" in refused
    assert exported(app, 'ci_autoscaler_errors_total{component="reconcile",'
                         'kind="permanent"}') == 1
    # (kmock stores a create it answers with an injected error: the refused one is listed
    # as made, and the next pass makes nothing.)
    assert reconcile.reconcile_once(runtime.current())["scale_up_pods_created"] == 0
    assert sorted(scale_up_pods(kube)) == sorted(waiting)


def test_a_full_quota_holds_scale_up_pods_back_without_failing_the_pass(app, kube, jenkins_fake):
    """The agent namespace's ResourceQuota is full (real admission: tests.support.
    resource_quota): a pause pod is refused as the builds' pods are, and none is made (a
    node added would not start a build the quota holds back). QuotaFull went up out of the
    sync, every pass: a reconcile error counted and logged for as long as the quota stayed
    full, and the re-drive for the scale-up pods bound in that pass never asked for."""
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert len(waiting) >= 2
    kube.add_resource_quota(NAMESPACE, "ci", {"pods": str(len(kube.pods(NAMESPACE)))})

    held = reconcile.reconcile_once(runtime.current())

    assert held["scale_up_pods_created"] == 0 and scale_up_pods(kube) == {}
    assert not any(s for s in ("retryable", "permanent") if exported(
        app, f'ci_autoscaler_errors_total{{component="reconcile",kind="{s}"}}'))
    kube.add_resource_quota(NAMESPACE, "ci", {"pods": "20"})  # room again: the pods are made
    assert reconcile.reconcile_once(runtime.current())["scale_up_pods_created"] == len(waiting)


def test_a_namespace_default_cpu_limit_below_the_pods_requests_does_not_refuse_them(
        app, kube, jenkins_fake):
    """A LimitRange's default CPU limit (1 here) is put by the API server on the pause
    container, which names none, and its request (the whole agent pod's, above 1) is then
    refused (422): no scale-up pod was ever made, so no node was added and the builds waited
    for good. It is met as for agent pods (workers.adapters.kube_limit_ranges)."""
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert waiting
    kube.add_limit_range(NAMESPACE, "defaults", [
        {"type": "Container", "default": {"cpu": "1"}, "defaultRequest": {"cpu": "100m"}}])

    result = reconcile.reconcile_once(runtime.current())

    pods = scale_up_pods(kube)
    assert sorted(pods) == sorted(waiting), result
    (pause,) = next(iter(pods.values()))["spec"]["containers"]
    assert pause["resources"]["limits"]["cpu"] == pause["resources"]["requests"]["cpu"]


WITH_SERVICE = CONFIG.replace("    nodeSelector:", """    containers:
      - {name: postgres, image: "postgres:16", cpu: 500m, memory: 256Mi}
    nodeSelector:""")


def test_a_per_container_max_below_the_pods_sum_refuses_neither_pod(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """A LimitRange's per-container max (1500m) above each of the agent pod's containers
    (the build's 1100m at its minimum, postgres' 500m) but below their sum: the scale-up
    pod, one container asking the sum, was refused for good (403) while the agent pod it
    stands for would be admitted, so no node ever came. It now asks container by container
    (podsize.container_requests)."""
    app = make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, text=WITH_SERVICE)
    try:
        keys = [push(app.test_client(), i) for i in range(4)]
        work(app)
        waiting = waiting_for_room(app, keys)
        assert waiting, [state_of(app).get_build(k) for k in keys]
        kube.add_limit_range(NAMESPACE, "caps", [{"type": "Container", "max": {"cpu": "1500m"}}])

        result = reconcile.reconcile_once(runtime.current())

        pods = scale_up_pods(kube)
        assert sorted(pods) == sorted(waiting), result
        asked = sorted(cpu_millis(c["resources"]["requests"]["cpu"])
                       for c in next(iter(pods.values()))["spec"]["containers"])
        assert asked == [500, 1100]
    finally:
        runtime.install(None)


def test_a_builds_own_scale_up_pod_does_not_hold_its_agent_out_of_the_quota(
        app, kube, jenkins_fake):
    """The ResourceQuota counts every pod of the namespace that has not ended, scale-up pods
    too (pkg/quota/v1/evaluator/core/pods.go). With room in it for every build's agent and no
    more, the waiting builds' scale-up pods fill it. A node comes: the pass's re-drive placed
    the builds on it, and each agent pod was refused for the room its own build's scale-up
    pod held. They waited on the quota (so their developers read), the node idle, until the
    scale-up pass deleted those pods and a later re-drive came. A build's own scale-up pod
    now goes before its agent pod is made: the pass that sees the node places them."""
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert len(waiting) >= 2
    kube.add_resource_quota(NAMESPACE, "ci", {"pods": str(len(keys))})
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    pods = scale_up_pods(kube)
    assert sorted(pods) == sorted(waiting)  # the quota is full: agents and scale-up pods

    # A deleted pod counts against the quota until the quota controller has seen it go.
    kube.quota_counts_deletions_late(0.5)
    # The autoscaler adds a node for them; the scheduler binds one scale-up pod to it.
    kube.create_node("node-b", cpu="8", memory="32Gi", **CI_POOL)
    kube.bind_pod(NAMESPACE, pods[waiting[0]]["metadata"]["name"], "node-b")
    reconcile.reconcile_once(rt)

    builds = [state_of(app).get_build(k) for k in waiting]
    assert [(b["status"], b.get("wait_reason", "")) for b in builds] == \
        [("triggered", "")] * len(waiting), builds
    assert scale_up_pods(kube) == {} and len(kube.pods(NAMESPACE)) == len(keys)


def test_a_scale_up_pod_whose_delete_is_refused_costs_its_build_nothing(app, kube, jenkins_fake):
    """A placed build deletes its own scale-up pod before its agent pod is made (give_way),
    best effort. An admission webhook refusing that DELETE (403, not RBAC's: kube_errors
    makes it Refused, a PermanentError) went up out of the create: the build was failed as if
    its agent pod had been refused ("pod refused"), though no agent pod was ever asked for.
    Now the agent pod is made all the same, and the scale-up pod is left to the sync."""
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert len(waiting) >= 2
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    assert sorted(scale_up_pods(kube)) == sorted(waiting)
    # A policy engine's webhook refusing deletes of these pods (Gatekeeper, Kyverno: 403 with
    # the webhook's message; k8s.io/apiserver/pkg/admission/plugin/webhook/errors).
    kube.fail("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/scale-up-*", status=403,
              reason="Forbidden", message='admission webhook "policy.example.com" denied the '
                                          'request: deletes are reviewed')

    kube.create_node("node-b", cpu="8", memory="32Gi", **CI_POOL)
    reconcile.reconcile_once(rt)
    work(app)

    builds = [state_of(app).get_build(k) for k in waiting]
    assert [b["status"] for b in builds] == ["triggered"] * len(waiting), builds


def agent_creates(kube):
    return sum(1 for r in kube.requests() if r == f"POST /api/v1/namespaces/{NAMESPACE}/pods")


@pytest.mark.parametrize("hard,counted,reason", [
    ({"pods": "0"}, True, "paused"), ({"requests.cpu": "2200m"}, True, "quota"),
    ({"pods": "20"}, False, "quota")])
def test_a_quota_its_scale_up_pod_going_would_not_free_is_not_waited_on(
        app, kube, jenkins_fake, hard, counted, reason):
    """give_way tries a placed build's pod again for some 3 s after deleting its scale-up pod,
    for the quota controller to count that pod out. An admin's pause (`pods: 0`), a quota
    the pod would exceed with the scale-up pod gone (2.2 cores, the other scale-up pods
    holding 1.1 each, 2.1 asked), or one not counted yet ("status unknown for quota": no
    pod's use refused it) admits it no sooner for that pod: each build's pod was asked for
    5 times, 3 s slept, the re-drive's turn held, before it waited on the quota as it would
    have at once. Now one refusal, and it waits."""
    keys = [push(app.test_client(), i) for i in range(4)]
    work(app)
    waiting = waiting_for_room(app, keys)
    assert len(waiting) >= 2
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    pods = scale_up_pods(kube)
    assert sorted(pods) == sorted(waiting)
    kube.add_resource_quota(NAMESPACE, "ci", hard, counted=counted)
    kube.quota_counts_deletions_late(0.5)
    kube.create_node("node-b", cpu="8", memory="32Gi", **CI_POOL)
    kube.bind_pod(NAMESPACE, pods[waiting[0]]["metadata"]["name"], "node-b")
    before = agent_creates(kube)

    reconcile.reconcile_once(rt)

    builds = [state_of(app).get_build(k) for k in waiting]
    held = [b for b in builds if b.get("wait_reason") == reason]
    assert held, builds
    # one create per build that met the quota (the scale-up sync's are refused once, too)
    assert agent_creates(kube) - before <= len(held) + 1, kube.requests()[-30:]


WITH_SETUP_STEP = CONFIG.replace("    nodeSelector:", """    podSpecPatch:
      initContainers:
        - {name: proxy, image: "envoyproxy/envoy:v1.31", restartPolicy: Always,
           resources: {requests: {cpu: 100m, memory: 1Gi}}}
        - {name: setup, image: "alpine/git:2.45", resources: {requests: {cpu: 100m, memory: 8Gi}}}
    nodeSelector:""")


def scheduler_count(spec: dict) -> int:
    """A pod's memory as kube-scheduler counts it (k8s.io/component-helpers/resource
    PodRequests): max(the containers' sum plus the native sidecars, each init container plus
    the sidecars started before it)."""
    def memory(c: dict) -> int:
        return memory_bytes(c["resources"]["requests"].get("memory", 0))
    total = sum(memory(c) for c in spec["containers"])
    sidecars = floor = 0
    for c in spec.get("initContainers") or []:
        if c.get("restartPolicy") == "Always":
            sidecars += memory(c)
        else:
            floor = max(floor, sidecars + memory(c))
    return max(total + sidecars, floor)


def test_a_setup_step_bigger_than_the_pod_is_in_its_scale_up_pod(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """A podSpecPatch init container (an 8Gi setup step after a 1Gi sidecar) asks more than
    the pod's containers: kube-scheduler counts the agent pod at 9Gi, so the build waits on
    node-a's 8Gi. Its scale-up pod asked the containers' 2.25Gi alone: bound on node-a at once
    (deleted, the build re-driven, still waiting, made again, pass after pass), and no
    autoscaler ever added a node that would take the build. It now asks what the build's pod
    is counted at."""
    app = make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, text=WITH_SETUP_STEP)
    try:
        key = push(app.test_client(), 0)
        work(app)
        assert state_of(app).get_build(key)["wait_reason"] == "insufficient_memory"
        reconcile.reconcile_once(runtime.current())
        pods = scale_up_pods(kube)
        assert list(pods) == [key]
        assert scheduler_count(pods[key]["spec"]) >= 9 * 1024 ** 3, pods[key]["spec"]
    finally:
        runtime.install(None)


def test_a_build_placed_while_its_scale_up_pod_is_made_is_left_no_pause_pod(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The sync reads the builds that wait, then makes their pods: a build a worker placed
    between the two (its give_way finding no scale-up pod yet to delete) got a pause pod after
    its agent's, Pending until the next pass: time enough for a cluster autoscaler to add a
    node for nothing (it scans every 10 s; REALITY.md, "Autoscalers"). Seen in a burst under
    load (test_issue19_operator: a scale-up pod made after every build had ended)."""
    proxy = FaultProxy(kube.url, ratio=0.0, seed=0, kubernetes=True).start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        _write_kubeconfig(kubeconfig, proxy.url)
        app = make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake,
                       KUBECONFIG=str(kubeconfig))
        keys = [push(app.test_client(), i) for i in range(4)]
        work(app)
        waiting = waiting_for_room(app, keys)
        assert len(waiting) >= 2
        rt = runtime.current()
        # the sync's first create held on its way to the API server, the builds placed meanwhile
        arrived, release = proxy.hold_next("POST", f"/api/v1/namespaces/{NAMESPACE}/pods")
        made: dict = {}
        sync = threading.Thread(target=lambda: made.update(scale_up.sync(rt)))
        sync.start()
        try:
            assert arrived.wait(30)
            kube.create_node("node-b", cpu="8", memory="32Gi", **CI_POOL)
            assert redrive.request_redrive(rt)
            work(app)
            placed = [k for k in waiting if state_of(app).get_build(k)["status"] == "triggered"]
            assert placed == waiting, [state_of(app).get_build(k) for k in waiting]
        finally:
            release.set()
            sync.join(120)
        # the held create reached the API server (or, under load, its client gave up waiting
        # and a retry found the pod made: deleted all the same)
        assert made["scale_up_pods_created"] + made["scale_up_pods_deleted"] >= 1, made
        assert scale_up_pods(kube) == {}
        assert exported(app, "ci_autoscaler_scale_up_pods ") == 0
    finally:
        runtime.install(None)
        proxy.stop()
