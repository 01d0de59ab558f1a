"""workers.core.quota_usage: what a pod counts against a ResourceQuota (pkg/quota/v1/evaluator/
core/pods.go podComputeUsageHelper) and whether its going makes room for a refused pod."""

from decimal import Decimal as D

from workers.core.quota_usage import Exceeded, pod_usage, room_if_gone

SCALE_UP = {"spec": {
    "containers": [{"resources": {"requests": {"cpu": "1100m", "memory": "1Gi"},
                                  "limits": {"memory": "1Gi"}}},
                   {"resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": "1"}}}],
    "initContainers": [{"resources": {"requests": {"cpu": "2"}}}]}}


def test_a_pod_counts_its_requests_and_limits_summed_or_its_largest_init_container():
    usage = pod_usage(SCALE_UP)
    assert usage["pods"] == usage["count/pods"] == 1
    assert usage["cpu"] == usage["requests.cpu"] == D(2)  # the init container's 2 > 1.6
    assert usage["requests.memory"] == usage["limits.memory"] == 2**30
    assert usage["requests.nvidia.com/gpu"] == 1 and "limits.cpu" not in usage
    assert pod_usage({"status": {"phase": "Succeeded"}}) == {"count/pods": 1}


def test_room_only_when_every_exceeded_resource_fits_with_the_pod_gone():
    gone = pod_usage(SCALE_UP)
    assert room_if_gone([Exceeded("ci", "pods", D(1), D(4), D(4))], gone)
    assert room_if_gone([Exceeded("ci", "requests.cpu", D("2.1"), D(3), D("3.1"))], gone)
    # an admin's pause: nothing going ever admits a pod
    assert not room_if_gone([Exceeded("pause", "pods", D(1), D(0), D(0))], gone)
    assert not room_if_gone([Exceeded("pause", "pods", D(1), D(1), D(0))], gone)
    # the pod would still exceed it: the others hold the room
    assert not room_if_gone([Exceeded("ci", "requests.cpu", D("2.1"), D("3.3"), D("2.2"))], gone)
    assert not room_if_gone([Exceeded("ci", "pods", D(1), D(4), D(4)),
                             Exceeded("ci", "limits.cpu", D(1), D(1), D(1))], gone)
    assert not room_if_gone([], gone)


def test_a_pods_runtime_class_overhead_counts_as_the_quota_counts_it():
    """A pod naming a RuntimeClass with an overhead (a scale-up pod of a Kata template: the
    admission sets spec.overhead) counts it against a quota: PodRequests adds it to the
    requests, PodLimits to the limits the containers set (memory here, not cpu). Left out, a
    deleted pod freed less than it did, and a build its quota refused was not tried again."""
    pod = {"spec": {"overhead": {"cpu": "250m", "memory": "160Mi"}, "containers": [
        {"name": "pause", "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                        "limits": {"memory": "1Gi"}}}]}}
    usage = pod_usage(pod)
    assert usage["requests.cpu"] == usage["cpu"] == D("1.25")
    assert usage["requests.memory"] == usage["limits.memory"] == 2**30 + 160 * 2**20
    assert "limits.cpu" not in usage
    assert room_if_gone([Exceeded("ci", "requests.cpu", D("1.25"), D("2.25"), D("2.25"))], usage)
