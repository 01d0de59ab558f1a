"""A GPU build that waits for a GPU (insufficient_nvidia.com/gpu) gets a scale-up pod that
asks for one: Cluster Autoscaler and Karpenter add a node only for a Pending pod that fits on
no node (REALITY.md, "Autoscalers"), and size the node for the pod's requests; a pause pod
asking cpu and memory alone fits on a node without a GPU (here a-plain), so no GPU node was
ever added for the build, and kube-scheduler, binding it there, made the pass re-drive the
build, in vain, pass after pass. Real redis-server, kmock over HTTP, the Jenkins fake."""

import json

import pytest

from tests.integration.test_placement_fit_on_cluster import GPU, build, push
from tests.integration.test_lost_agents import exported
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_scale_up_pods import scale_up_pods
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
    ref: "refs/heads/pair-*"
    job: build
    template: gpu-pair
templates:
  gpu:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    ephemeralStorage: 2Gi
    resources: {nvidia.com/gpu: 1}
  gpu-pair:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    resources: {nvidia.com/gpu: 2}
"""


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())


def test_a_build_waiting_for_a_gpu_gets_a_scale_up_pod_asking_for_one(app, kube):
    disk = {"ephemeral-storage": "100Gi"}  # as every kubelet reports it
    kube.add_node("a-plain", cpu="16", memory="64Gi", extended=disk)  # room, but no GPU
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1", **disk})
    first = push(app, 1, ref="refs/heads/gpu-train")
    work(app)
    assert build(app, first)["node"] == "gpu-1"
    second = push(app, 2, ref="refs/heads/gpu-eval")
    work(app)
    assert build(app, second)["wait_reason"] == f"insufficient_{GPU}", build(app, second)

    reconcile.reconcile_once(runtime.current())

    (pod,) = scale_up_pods(kube).values()
    requests = [c["resources"].get("requests", {}) for c in pod["spec"]["containers"]]
    limits = [c["resources"].get("limits", {}) for c in pod["spec"]["containers"]]
    # as the build's pod asks them (core.pods._add_extras): an extended resource's limit equal
    # to its request, as the API server requires (Kubernetes docs, "Manage extended
    # resources for a node")
    assert sum(int(r.get(GPU, 0)) for r in requests) == 1, requests
    assert sum(int(r.get(GPU, 0)) for r in limits) == 1, limits
    assert [r["ephemeral-storage"] for r in requests if "ephemeral-storage" in r] == ["2Gi"]


def test_a_build_waiting_for_a_gpu_counts_in_nodes_needed(app, kube):
    """gpu-1 has cpu and memory for the second build, not its GPU: first-fit put it there,
    and nodes_needed said 0 (CIClusterShortOfCapacity never fired) while it waited."""
    disk = {"ephemeral-storage": "100Gi"}
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1", **disk})
    first = push(app, 1, ref="refs/heads/gpu-train")
    work(app)
    assert build(app, first)["node"] == "gpu-1"
    second = push(app, 2, ref="refs/heads/gpu-eval")
    work(app)
    assert build(app, second)["wait_reason"] == f"insufficient_{GPU}", build(app, second)

    reconcile.reconcile_once(runtime.current())

    assert exported(app, "ci_autoscaler_nodes_needed ") == 1


def test_builds_waiting_for_a_gpu_count_a_node_each_of_one_gpu(app, kube):
    """The GPU pool's nodes have one GPU each (a g4dn.2xlarge: 8 cores, 1 nvidia.com/gpu),
    the one there taken. Three more GPU builds of 900m wait: a node added holds one of them,
    whatever cpu it has left (kube-scheduler's NodeResourcesFit counts the GPU; Cluster
    Autoscaler's estimator binpacks the template node with the scheduler's filters), so 3
    nodes; nodes_needed said 1, the three fitting one node by cpu."""
    disk = {"ephemeral-storage": "100Gi"}
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1", **disk})
    first = push(app, 1, ref="refs/heads/gpu-train")
    work(app)
    assert build(app, first)["node"] == "gpu-1"
    waiting = [push(app, n, ref=f"refs/heads/gpu-eval-{n}") for n in (2, 3, 4)]
    work(app)
    assert {build(app, key)["wait_reason"] for key in waiting} == {f"insufficient_{GPU}"}

    reconcile.reconcile_once(runtime.current())

    assert exported(app, "ci_autoscaler_nodes_needed ") == 3
    assert exported(app, "ci_autoscaler_builds_unplaceable ") == 0


def test_a_build_asking_more_gpus_than_a_node_has_is_told_so_not_bigger_by_cpu(app, kube):
    """A build asking two GPUs where the pool's nodes have one each: no node added places it
    (kube-scheduler's NodeResourcesFit counts the GPUs on a new node as on any), so it is
    left out of nodes_needed as unplaceable. Its wait (the status page, the commit status the
    developer reads) named cpu and memory: "bigger than a node of the reference shape (it
    asks 900m cpu, 768 MiB ...; such a node has 8 cpu, 32 GiB)", which it is not; it lacks
    the node's GPUs."""
    disk = {"ephemeral-storage": "100Gi"}
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1", **disk})
    pair = push(app, 1, ref="refs/heads/pair-train")
    work(app)
    assert build(app, pair)["wait_reason"] == f"insufficient_{GPU}", build(app, pair)

    reconcile.reconcile_once(runtime.current())

    assert exported(app, "ci_autoscaler_builds_unplaceable ") == 1
    text = json.loads(runtime.current().capacity.read_state()[0]["too_big"])[pair]
    assert GPU in text and "bigger than" not in text, text
