"""Through the worker's own provision over kmock: a node Cluster Autoscaler marked as one it
may remove (DeletionCandidateOfClusterAutoscaler, PreferNoSchedule) gets no build while
another node has room, as kube-scheduler's TaintToleration score would have it
(workers.core.placement.avoided); the pod names it last among its candidates."""

import pytest

from tests.integration.test_placement_on_cluster import CONFIG, node_of, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env, work
from service.app import create_app
from workers import runtime

# Cluster Autoscaler taints a node it found unneeded so (cluster-autoscaler
# utils/taints/taints.go DeletionCandidateTaintKey, the value when it tainted it)
CANDIDATE = {"key": "DeletionCandidateOfClusterAutoscaler", "value": "1765000000",
             "effect": "PreferNoSchedule"}


@pytest.fixture
def cluster(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """An idle node Cluster Autoscaler may remove, and two busy ones with room."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE,
                   CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                   CI_AUTOSCALER_PLACEMENT_CANDIDATES="3")
    for name, used, taints in (("a-candidate", "0", [CANDIDATE]), ("b-busy", "1.6", []),
                               ("c-busier", "2", [])):
        kube.add_node(name, cpu="4", memory="16Gi", taints=taints)
        kube.set_node_usage(name, cpu=used, memory="1Gi")
    runtime.install(None)
    app = create_app()
    yield app
    runtime.install(None)


def candidates(kube, app, key) -> list[str]:
    """The hostnames of the agent pod's required node affinity, in order of its preferred
    weights (ours first)."""
    agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
    spec = kube.pod(NAMESPACE, agent)["spec"]["affinity"]["nodeAffinity"]
    preferred = spec["preferredDuringSchedulingIgnoredDuringExecution"]
    ranked = sorted(preferred, key=lambda p: -p["weight"])
    return [p["preference"]["matchExpressions"][0]["values"][0] for p in ranked]


def test_a_node_cluster_autoscaler_may_remove_gets_builds_only_when_no_other_has_room(
        cluster, kube):
    client = cluster.test_client()
    first = push(client, 0)
    work(cluster)
    # free at target 0.8: a-candidate 4 cores, b-busy 2, c-busier 1.5: spread alone chose
    # the candidate, and the agent there kept Cluster Autoscaler from removing it
    assert node_of(cluster, first) == "b-busy"
    assert candidates(kube, cluster, first)[-1] == "a-candidate"
    keys = [push(client, i) for i in range(1, 9)]
    for _ in keys:
        work(cluster)
    nodes = [node_of(cluster, k) for k in keys]
    # with no room by use left, the untainted nodes still take builds by cpu requests, as
    # kube-scheduler would (4 one-core pods each); only the ninth build, which neither can
    # take, goes to the candidate, and its decision says why
    assert nodes.count("b-busy") == 3 and nodes.count("c-busier") == 4, nodes
    assert nodes[-1] == "a-candidate"
    decision = cluster.extensions["ci_autoscaler"].state.get_build(keys[-1])["decision"]
    assert "PreferNoSchedule" in decision
