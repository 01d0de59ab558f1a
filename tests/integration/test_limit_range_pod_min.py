"""A LimitRange's Pod `min` meets the sum of the limits the pod's containers name, not only of
its requests: since Kubernetes 1.28 (PR #116429) the LimitRanger sums a resource's limits over
the containers that name one (admission.go podLimits, addResourceList), so a pod whose only
CPU limit is the build container's (cpuLimitFactor) has that limit alone checked against the
min: 403 "minimum cpu usage per Pod is 3, but limit is 1650m.", every build failing as
pod_refused, though its requests (the build's, the agent's and the service's) meet the min.
Real redis-server, kmock over HTTP with the API server's LimitRanger
(tests.support.limit_ranger), the Jenkins fake; the push goes through the webhook and the
worker's queue as in production."""

import pytest

from tests.integration.test_limit_range_max import settled
from tests.integration.test_limit_range_pod import sums
from tests.integration.test_push_to_pod import NAMESPACE

CONFIG = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: big
templates:
  big:
    cpu: {min: 500m, default: "1", max: "1"}
    memory: {min: 1Gi, default: 2Gi, max: 2Gi}
    cpuLimitFactor: 1.5
    containers:
      - {name: db, image: postgres, cpu: "2", memory: 1Gi}
"""


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(("node-a", "16", "64Gi"),))


def test_a_pod_min_is_met_by_the_limits_the_pod_names_too(app, kube):
    """1 CPU and the agent's 100m in the build container, limited at 1.5 times that; the
    service asks 2 CPU and names no CPU limit of its own."""
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "min": {"cpu": "3"}}])
    build = settled(app)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    total = sums(pod)
    assert total["requests", "cpu"] == 3100, total
    assert total["limits", "cpu"] >= 3000, total
