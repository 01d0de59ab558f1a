"""A template that tolerates every taint (`tolerations: [{operator: Exists}]`) and a node a node
autoscaler is removing, on real parts: redis-server, kmock over HTTP (the taint reaches the
worker through its own watch), the Jenkins fake, the worker's own provision and pool pass.

Neither a warm agent nor a build's pod is placed there, nor given it as a candidate node:
kube-scheduler would bind it there (it tolerates the taint), and the autoscaler's drain would
evict it moments later; the pool then made one there again, pass after pass.
"""

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import CONFIG, pool_of, record
from tests.integration.test_warm_autoscalers import provision_one
from tests.integration.test_warm_claim_nodes import (REMOVED_BY_CLUSTER_AUTOSCALER,
                                                     change_node)
from workers import runtime
from workers.warm import pool

TOLERANT = CONFIG.replace("    warm: {min: 1, max: 2, idleSeconds: 600}",
                          "    warm: {min: 1, max: 2, idleSeconds: 600}\n"
                          "    tolerations: [{operator: Exists}]")
assert TOLERANT != CONFIG


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(TOLERANT, namespace=NAMESPACE, nodes=())


def candidate_hosts(kube, pod: str) -> set[str]:
    """The hostnames the pod's required node affinity allows (workers.core.pods)."""
    spec = kube.pod(NAMESPACE, pod)["spec"]
    terms = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return {v for term in terms for e in term["matchExpressions"] for v in e["values"]}


def test_no_pod_of_a_template_tolerating_everything_goes_to_a_node_being_removed(
        app, kube, jenkins_fake, monkeypatch):
    # node-a: the first by name, as idle as node-b: the one placement chose before
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
    rt = runtime.current()
    change_node(rt, kube, "node-a", REMOVED_BY_CLUSTER_AUTOSCALER)

    with monkeypatch.context() as m:
        m.setattr(pool, "target", lambda *a, **k: 1)
        assert pool.run(rt)["warm_started"] == 1
    [warm] = pool_of(rt)
    assert warm.node == "node-b"
    assert candidate_hosts(kube, warm.name) == {"node-b"}

    # the warm agent is starting: the build gets a pod of its own, kept off node-a too
    key = provision_one(app, 0)
    rec = record(app, key)
    assert rec["node"] == "node-b" and not rec.get("warm_agent")
    assert candidate_hosts(kube, rec["agent"]) == {"node-b"}
