"""A LimitRange default request for a resource our containers do not ask (ephemeral-storage,
an extended resource; a Container max alone sets it, SetDefaults_LimitRangeItem) is put on
every container by the API server's LimitRanger (tests.support.limit_ranger: admission.go
mergeContainerResources), and kube-scheduler counts it (NodeResourcesFit). Placement did not:
a build was placed on a node whose ephemeral-storage was taken, its pod left Pending. Real
redis-server, kmock over HTTP with the LimitRanger, the watched snapshot, RQ jobs."""

import pytest

from tests.integration.test_placement_fit_on_cluster import (
    CONFIG, build, push, seen, waiting_metric)
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from workers import runtime

STORAGE = "ephemeral-storage"


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(),
                          CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2")


def test_a_default_ephemeral_storage_request_is_counted_by_placement(app, kube):
    kube.add_limit_range(NAMESPACE, "storage", [
        {"type": "Container", "defaultRequest": {STORAGE: "4Gi"}}])
    kube.add_node("node-a", cpu="8", memory="32Gi", extended={STORAGE: "6Gi"})
    first = push(app, 1)
    work(app)
    assert build(app, first)["node"] == "node-a"
    agent = build(app, first)["agent"]
    [container] = kube.pod(NAMESPACE, agent)["spec"]["containers"]
    assert container["resources"]["requests"][STORAGE] == "4Gi"  # the LimitRanger's
    kube.bind_pod(NAMESPACE, agent, "node-a")
    rt = runtime.current()
    seen(lambda: next(n for n in rt.view.snapshot() if n.name == "node-a").held
         .ephemeral_bytes == 4 * 2**30, "the bound pod's ephemeral-storage")

    second = push(app, 2)  # 4Gi more on a node with 2Gi left: not placed there
    work(app)
    state = build(app, second)
    assert state["status"] == "waiting" and not state.get("node"), state
    assert state["wait_reason"] == "insufficient_ephemeral-storage"
    assert waiting_metric(app, "insufficient_ephemeral-storage") == 1


def test_a_container_max_alone_is_the_default_request_counted(app, kube):
    """A Container max and nothing else: the API server stores it as the default limit and
    the default request (SetDefaults_LimitRangeItem)."""
    kube.add_limit_range(NAMESPACE, "storage", [{"type": "Container", "max": {STORAGE: "8Gi"}}])
    kube.add_node("node-a", cpu="8", memory="32Gi", extended={STORAGE: "6Gi"})
    key = push(app, 1)
    work(app)
    state = build(app, key)
    assert state["status"] == "waiting" and state["wait_reason"] == \
        "insufficient_ephemeral-storage", state
