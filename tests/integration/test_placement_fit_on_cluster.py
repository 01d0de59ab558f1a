"""What kube-scheduler counts beside cpu and memory, over the Kubernetes API mock: a node at its
pod limit (allocatable `pods`) is never chosen, and a template that asks for nvidia.com/gpu
lands only on a node whose allocatable has it free, else waits as insufficient_nvidia.com/gpu.
Driven through real RQ jobs, the watched snapshot and Redis, as in production."""

import time

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import GITLAB_TOKEN, work
from tests.support.payloads import fixture
from service.app import create_app
from workers import runtime

GPU = "nvidia.com/gpu"
CONFIG = """
routes:
  - project: "*"
    ref: "refs/heads/gpu-*"
    job: build
    template: gpu
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
  gpu:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    resources: {nvidia.com/gpu: 1}
"""


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(),
                          CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2")


def push(app, n: int, ref: str = "refs/heads/main") -> str:
    body = fixture("gitlab_push_real_lrz.json")
    body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
    body["ref"] = ref
    response = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": f"push-{n}"})
    assert response.status_code == 202
    return response.json["build_key"]


def build(app, key: str) -> dict:
    return app.extensions["ci_autoscaler"].state.get_build(key)


def waiting_metric(app, reason: str) -> float | None:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    prefix = f'ci_autoscaler_builds_waiting{{reason="{reason}"}} '
    values = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else None


def seen(predicate, what: str, timeout: float = 10.0) -> None:
    """Until the watch has delivered what the predicate looks for (events arrive on their
    own thread); fails naming it."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"the watch never showed {what}"
        time.sleep(0.02)


def test_a_node_at_its_pod_limit_is_never_chosen(app, kube):
    # The idlest node is full by pod count (an EKS node's max-pods, say): 4 pods of 4.
    kube.add_node("a-idle-full", cpu="16", memory="64Gi", pods="4")
    for i in range(4):
        kube.add_pod("team-b", f"tiny-{i}", node="a-idle-full",
                     requests=[{"cpu": "10m", "memory": "16Mi"}])
    kube.add_node("b-busy", cpu="4", memory="16Gi")
    kube.add_pod("team-b", "filler", node="b-busy", requests=[{"cpu": "1", "memory": "4Gi"}])
    keys = [push(app, i) for i in range(4)]
    work(app)
    nodes = [build(app, k).get("node") for k in keys]
    assert "a-idle-full" not in nodes
    assert nodes.count("b-busy") == 3  # 3 of its 4 cores free; the fourth build waits
    [waiting] = [k for k, n in zip(keys, nodes) if not n]
    assert build(app, waiting)["wait_reason"] == "insufficient_cpu"


def test_a_gpu_build_lands_only_on_a_gpu_node_and_waits_when_none_is_free(app, kube):
    kube.add_node("a-plain", cpu="16", memory="64Gi")  # the idlest, and no GPU
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1"})
    kube.add_pod("team-b", "filler", node="gpu-1", requests=[{"cpu": "2", "memory": "4Gi"}])
    first = push(app, 1, ref="refs/heads/gpu-train")
    plain = push(app, 2)
    work(app)
    assert build(app, first)["node"] == "gpu-1"
    assert build(app, plain)["node"] == "a-plain"
    agent = build(app, first)["agent"]
    [container] = kube.pod(NAMESPACE, agent)["spec"]["containers"]
    assert container["resources"]["requests"][GPU] == "1"
    assert container["resources"]["limits"][GPU] == "1"

    # kube-scheduler binds it: the watch now counts the GPU as taken.
    kube.bind_pod(NAMESPACE, agent, "gpu-1")
    rt = runtime.current()
    seen(lambda: dict(next(n for n in rt.view.snapshot() if n.name == "gpu-1").held.extended)
         .get(GPU) == 1, "the bound pod's GPU")
    second = push(app, 3, ref="refs/heads/gpu-eval")
    work(app)
    state = build(app, second)
    assert state["status"] == "waiting" and not state.get("node")
    assert state["wait_reason"] == "insufficient_nvidia.com/gpu"
    assert "1 insufficient_nvidia.com/gpu" in state["wait_detail"]
    assert waiting_metric(app, "insufficient_nvidia.com/gpu") == 1


ZONAL = CONFIG + """
  zonal:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    workspaceVolume: {persistentVolumeClaim: {claimName: build-cache}}
"""


def test_a_template_whose_claim_is_bound_in_one_zone_is_placed_in_that_zone(
        monkeypatch, tmp_path, kube, app):
    config = tmp_path / "config.yaml"
    config.write_text(ZONAL.replace("template: gpu", "template: zonal"))
    runtime.install(None)
    zone = "topology.kubernetes.io/zone"
    kube.add_node("a-idle", cpu="16", memory="64Gi", labels={zone: "eu-1a"})
    kube.add_node("b-busy", cpu="4", memory="16Gi", labels={zone: "eu-1b"})
    kube.add_bound_claim(NAMESPACE, "build-cache", zone="eu-1b")
    app = create_app()
    key = push(app, 1, ref="refs/heads/gpu-zonal")
    work(app)
    assert build(app, key)["node"] == "b-busy"
    requests = kube.requests()
    assert f"GET /api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/build-cache" in requests
    assert "GET /api/v1/persistentvolumes/pvc-build-cache" in requests


SANDBOXED = CONFIG.replace("template: gpu", "template: sandboxed") + """
  sandboxed:
    cpu: {min: 300m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    podSpecPatch: {runtimeClassName: kata}
"""


def test_a_runtime_class_overhead_and_node_selector_are_counted_as_the_scheduler_counts(
        monkeypatch, tmp_path, kube, app):
    """A template whose pods name a RuntimeClass: the API server's RuntimeClass admission puts
    the class's overhead on the pod (spec.overhead, which kube-scheduler adds to its requests)
    and its scheduling nodeSelector and tolerations (tests.support.runtime_class_admission).
    Placement ignored all three: the build went to the idlest node, which the class does not
    run on (its pod Unschedulable on every candidate), and with it gone, to a node with room
    for its containers but not for the overhead. A LimitRange's Pod max, which sums the
    containers without the overhead, narrows the build by none of it."""
    config = tmp_path / "config.yaml"
    config.write_text(SANDBOXED)
    runtime.install(None)
    kata = {"katacontainers.io/kata-runtime": "true"}
    taint = {"key": "sandbox", "value": "kata", "effect": "NoSchedule"}
    kube.add_runtime_class("kata", "kata-qemu", overhead={"cpu": "500m", "memory": "512Mi"},
                           node_selector=kata, tolerations=[
                               {"key": "sandbox", "operator": "Equal", "value": "kata",
                                "effect": "NoSchedule"}])
    kube.add_node("a-idle", cpu="16", memory="64Gi")  # the idlest: no kata there
    # room for the pod's containers (at most 1 core), not with the overhead on top
    kube.add_node("b-kata-tight", cpu="16", memory="64Gi", labels=kata, taints=[taint])
    kube.add_pod("team-b", "filler-b", node="b-kata-tight",
                 requests=[{"cpu": "14800m", "memory": "1Gi"}])
    kube.add_node("c-kata-roomy", cpu="4", memory="16Gi", labels=kata, taints=[taint])
    kube.add_pod("team-b", "filler-c", node="c-kata-roomy",
                 requests=[{"cpu": "2400m", "memory": "1Gi"}])
    # the LimitRanger sums the containers without the overhead (limitranger podRequests):
    # a Pod max of exactly the pod's containers takes it
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "max": {"cpu": "1"}}])
    app = create_app()
    key = push(app, 1, ref="refs/heads/gpu-sandboxed")
    work(app)
    state = build(app, key)
    assert state.get("node") == "c-kata-roomy", state
    pod = kube.pod(NAMESPACE, state["agent"])
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    hosts = {v for t in terms for e in t.get("matchExpressions", [])
             if e["key"] == "kubernetes.io/hostname" for v in e["values"]}
    assert hosts == {"c-kata-roomy"}, hosts
    assert pod["spec"]["overhead"] == {"cpu": "500m", "memory": "512Mi"}  # as admitted
    # the overhead is the pod's, not the build's: its one container asks the template's size
    # and the agent's (100m, 256Mi) as without a RuntimeClass
    [container] = pod["spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}, container
