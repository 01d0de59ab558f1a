"""nodes_needed when builds of a CPU pool and of a smaller GPU pool wait together, over kmock
through the worker and the reconcile pass. The reference shape is the CPU pool's (the
commonest among the nodes the waiting builds may use), and a node of it has no GPU: more of
them never start a GPU build (placement.why_not), so the GPU build is counted on a node of
its own pool's shape, not planned onto a CPU node by its cpu, nor left out (a full GPU pool
then paged no one)."""

import json

import pytest

from tests.integration.test_placement_fit_on_cluster import GPU, build, push
from tests.integration.test_placement_on_cluster import metric
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from workers import runtime
from workers.engine import reconcile

CONFIG = """
routes:
  - project: "*"
    ref: "refs/heads/gpu-*"
    job: build
    template: gpu
  - project: "*"
    ref: "refs/*"
    job: build
    template: cpu
templates:
  cpu:
    cpu: {min: 1900m, default: 1900m, max: 1900m}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
  gpu:
    cpu: {min: 2900m, default: 2900m, max: 2900m}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    resources: {nvidia.com/gpu: 1}
    tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
"""


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())


def test_a_gpu_build_is_not_counted_on_nodes_of_the_cpu_pools_shape(app, kube):
    """Three 4-core CPU nodes, full; one GPU node (tainted, as GPU pools are), its GPU taken.
    Two CPU builds (2 cores each with the agent) and one GPU build (3 cores) wait. A CPU node
    added takes both CPU builds, a GPU node the GPU build: 2 nodes, the GPU build on no CPU
    node's room (first-fit put it on a fresh CPU node by its cpu, beside a CPU build)."""
    disk = {"ephemeral-storage": "100Gi"}
    for i in (1, 2, 3):
        kube.add_node(f"cpu-{i}", cpu="4", memory="16Gi", extended=disk)
        kube.add_pod("shop", f"cart-{i}", node=f"cpu-{i}",
                     requests=[{"cpu": "3500m", "memory": "1Gi"}])
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1", **disk},
                  taints=[{"key": GPU, "value": "present", "effect": "NoSchedule"}])
    first = push(app, 1, ref="refs/heads/gpu-train")
    work(app)
    assert build(app, first)["node"] == "gpu-1"
    gpu = push(app, 2, ref="refs/heads/gpu-eval")
    cpu = [push(app, n, ref=f"refs/heads/main-{n}") for n in (3, 4)]
    work(app)
    assert build(app, gpu)["wait_reason"] == f"insufficient_{GPU}"
    assert {build(app, k)["status"] for k in cpu} == {"waiting"}

    reconcile.reconcile_once(runtime.current())

    assert metric(app, "ci_autoscaler_reference_node_cores") == 4
    assert metric(app, "ci_autoscaler_nodes_needed") == 2
    assert metric(app, "ci_autoscaler_builds_unplaceable") == 0
    state, _ = runtime.current().capacity.read_state()
    assert json.loads(state["too_big"]) == {}
