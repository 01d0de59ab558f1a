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
