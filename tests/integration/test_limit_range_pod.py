"""A LimitRange's Pod item (a max on the SUM of a pod's containers, which many multi-tenant
clusters set) in the agent namespace sizes the build's pod within it: a template whose
default pod is above the Pod max gets a pod at the max, not a refused one (403 "maximum cpu
usage per Pod is 2.  No limit is specified." and "maximum memory usage per Pod is 4Gi, but
limit is ...": every build failed as pod_refused); a Pod max below what the template needs at
least still fails the build, naming the bound; the room a Pod CPU max leaves above the pod's
requests is spread over the CPU limits the pod names only for the Pod item (a service's, the
build container's without cpuLimitFactor), not left unusable. Real redis-server, kmock over HTTP with the API
server's LimitRanger (tests.support.limit_ranger, its Pod branch), the Jenkins fake; the push
goes through the webhook and the worker's queue as in production."""

import pytest
from kubernetes.client import CoreV1Api

from tests.integration.test_limit_range_defaults import build_container
from tests.integration import test_limit_range_max
from tests.integration.test_limit_range_max import settled
from tests.integration.test_push_to_pod import NAMESPACE
from workers.core.quantity import cpu_millis, memory_bytes

make_app = test_limit_range_max.make_app  # the fixture


WITH_SERVICE = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: big
templates:
  big:
    cpu: {min: 500m, default: "1", max: "1"}
    memory: {min: 1Gi, default: 2Gi, max: 2Gi}
    containers:
      - {name: db, image: postgres, cpu: 100m, memory: 256Mi}
"""


@pytest.fixture
def app_with_service(app_on_cluster):
    return app_on_cluster(WITH_SERVICE, namespace=NAMESPACE, nodes=(("node-a", "16", "64Gi"),))


def sums(pod):
    """The pod's summed requests and limits (cpu millis, memory bytes)."""
    total = {}
    for kind in ("requests", "limits"):
        for resource, parse in (("cpu", cpu_millis), ("memory", memory_bytes)):
            total[kind, resource] = sum(parse(c["resources"][kind][resource])
                                        for c in pod["spec"]["containers"])
    return total


def test_a_pod_max_below_the_templates_default_sizes_the_pods_sum_to_it(make_app, kube):
    """The template's default pod asks 4 CPU and 4Gi for the build plus the agent's 100m and
    256Mi in the same container, and names no CPU limit (no cpuLimitFactor)."""
    app = make_app()
    kube.add_limit_range(NAMESPACE, "per-pod", [
        {"type": "Pod", "max": {"cpu": "2", "memory": "3Gi"}}])
    build = settled(app)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    total = sums(pod)
    assert total["limits", "cpu"] == total["requests", "cpu"] == 2000, total
    assert total["limits", "memory"] == total["requests", "memory"] == 3 * 2**30, total
    # The size the build records (and placement counted) is the one the pod asks.
    assert (build["cpu_millis"], build["memory_bytes"]) == ("1900", str(3 * 2**30 - 2**28))
    [init] = pod["spec"]["initContainers"]  # named a limit too: within the build's
    assert init["resources"]["limits"]["cpu"] == init["resources"]["requests"]["cpu"]
    assert cpu_millis(build_container(pod)["resources"]["limits"]["cpu"]) == 2000


def test_a_pod_max_below_the_templates_min_fails_naming_the_bound(make_app, kube):
    app = make_app(memory_min="3Gi")
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "max": {"memory": "3Gi"}}])
    build = settled(app)
    assert build["status"] == "failed"
    assert build["fail_reason"] == "pod_refused"
    assert "(LimitRange: maximum memory usage per Pod is 3Gi, but limit is " in build["error"], \
        build["error"]


def test_the_room_a_pod_max_leaves_goes_to_the_service_and_the_build_by_their_requests(
        app_with_service, kube):
    """The build container asks 1 CPU and the agent's 100m, the postgres service 100m, and
    neither names a CPU limit: at their requests (as before) 800m of the 2 CPU Pod max were
    unusable and postgres ran throttled at 100m. Their limits now sum to the max, 11 : 1."""
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "max": {"cpu": "2"}}])
    build = settled(app_with_service)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    service = next(c for c in pod["spec"]["containers"] if c["name"] == "db")
    assert cpu_millis(service["resources"]["requests"]["cpu"]) == 100
    assert cpu_millis(service["resources"]["limits"]["cpu"]) == 167
    assert cpu_millis(build_container(pod)["resources"]["limits"]["cpu"]) == 1833
    total = sums(pod)
    assert (total["requests", "cpu"], total["limits", "cpu"]) == (1200, 2000), total
    assert total["limits", "memory"] == total["requests", "memory"], total
    [init] = pod["spec"]["initContainers"]  # runs before them, alone: left at its request
    assert init["resources"]["limits"]["cpu"] == init["resources"]["requests"]["cpu"]


def test_a_limits_cpu_quota_the_spread_pod_exceeds_gets_the_pod_at_its_requests(
        app_with_service, kube):
    """A ResourceQuota on limits.cpu counts the spread limits: the 2 CPU Pod max's spread pod
    asks limits.cpu=2 of a quota allowing 1500m in all, which the quota plugin refuses for
    good (every build failed pod_refused), though the pod at its requests (1200m, as before
    the spread) fits. The spread gives way: the pod goes with its limits at its requests."""
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "max": {"cpu": "2"}}])
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "1500m"})
    build = settled(app_with_service)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    total = sums(pod)
    assert (total["requests", "cpu"], total["limits", "cpu"]) == (1200, 1200), total


def test_a_limits_cpu_quota_with_no_room_for_the_spread_pod_gets_the_pod_at_its_requests(
        app_with_service, kube):
    """Another pod holds 2 of the quota's 3500m limits.cpu: the spread pod (2 CPU) finds no
    room (403 exceeded quota) and its build waited on the quota, though the pod at its
    requests (1200m) fits in the 1500m left, as it did before the spread."""
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "max": {"cpu": "2"}}])
    other = {"cpu": "2", "memory": "128Mi"}
    CoreV1Api(kube.api_client()).create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other"},
        "spec": {"containers": [{"name": "main", "image": "busybox",
                                 "resources": {"requests": other, "limits": other}}]}})
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "3500m"})
    build = settled(app_with_service)
    assert build["status"] == "triggered", build.get("error")
    [pod] = [p for p in kube.pods(NAMESPACE) if p["metadata"]["name"] != "other"]
    total = sums(pod)
    assert (total["requests", "cpu"], total["limits", "cpu"]) == (1200, 1200), total
