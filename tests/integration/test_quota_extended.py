"""A ResourceQuota on a GPU or on ephemeral-storage holds the builds it has no room for: they
wait with its words, not fail and not start past it. kmock's quota admission now counts what
the API server counts of a pod (pkg/quota/v1/evaluator/core/pods.go podComputeUsageHelper:
`requests.ephemeral-storage`, `requests.NAME` of an extended resource); it counted cpu and
memory only, so it admitted every such pod a real cluster refuses. Real redis-server, kmock
over HTTP, the Jenkins fake; pushes through the webhook and the queue."""

import pytest

from tests.integration.test_limit_range_defaults import state_of
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import push, until
from tests.support.app import one_template_config

TEMPLATE = """
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    %s
"""


@pytest.mark.parametrize("ask, hard, words", [
    ("resources: {nvidia.com/gpu: 1}", {"requests.nvidia.com/gpu": "1"},
     "ResourceQuota scarce: requests.nvidia.com/gpu 1 of 1 used, the pod asks 1"),
    # (the fake prints byte sums plain, the API server as Quantity.String(): only the name)
    ("ephemeralStorage: 4Gi", {"requests.ephemeral-storage": "6Gi"},
     "ResourceQuota scarce: requests.ephemeral-storage "),
], ids=["gpu", "ephemeral-storage"])
def test_a_quota_on_a_gpu_or_ephemeral_storage_keeps_the_next_build_waiting(
        app_on_cluster, kube, ask, hard, words):
    app = app_on_cluster(one_template_config(TEMPLATE % ask), namespace=NAMESPACE)
    kube.add_node("node-g", cpu="16", memory="64Gi",
                  extended={"nvidia.com/gpu": "4", "ephemeral-storage": "100Gi"})
    kube.add_resource_quota(NAMESPACE, "scarce", hard)
    state = state_of(app)
    first = push(app.test_client(), 0)
    until(app, lambda: state.get_build(first).get("status") in ("triggered", "failed"))
    assert state.get_build(first)["status"] == "triggered", state.get_build(first)
    second = push(app.test_client(), 1)
    until(app, lambda: state.get_build(second).get("status") in (
        "triggered", "failed", "waiting"))
    build = state.get_build(second)
    assert build["status"] == "waiting" and build["wait_reason"] == "quota", build
    assert build["wait_detail"].startswith(words), build["wait_detail"]
    assert len(kube.pods(NAMESPACE)) == 1
