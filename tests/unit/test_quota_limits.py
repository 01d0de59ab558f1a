"""Limits lowered to a ResourceQuota's hard limits.cpu/limits.memory (core.quota_limits): the
pod's limits are the containers' sum, or an init container's when larger (pkg/quota/v1/
evaluator/core/pods.go podComputeUsageHelper, resourcehelper.PodLimits)."""

from decimal import Decimal

from workers.core.quota_limits import limit_caps, with_limits_within_quota
from workers.core.quota_usage import Exceeded


def container(name, cpu_request, cpu_limit, memory="1Gi"):
    return {"name": name, "resources": {"requests": {"cpu": cpu_request, "memory": memory},
                                        "limits": {"cpu": cpu_limit, "memory": memory}}}


def pod(*containers, inits=()):
    return {"spec": {"containers": list(containers), "initContainers": list(inits)}}


def limits(manifest):
    return [c["resources"]["limits"]["cpu"] for c in manifest["spec"]["containers"]]


def test_only_a_quota_on_limits_the_pod_alone_passes_is_met_by_lower_limits():
    cpu = Exceeded("compute", "limits.cpu", Decimal("6.3"), Decimal(0), Decimal(5))
    assert limit_caps([cpu]) == {"cpu": Decimal(5)}
    # a request over the quota never fits, whatever the limits
    assert limit_caps([cpu, Exceeded("compute", "requests.cpu", Decimal(6), Decimal(0),
                                     Decimal(5))]) == {}
    # full for now (used + asked over), not the pod alone: no cap
    assert limit_caps([Exceeded("compute", "limits.cpu", Decimal(3), Decimal(4),
                                Decimal(5))]) == {}
    assert limit_caps(None) == {}


def test_the_largest_excess_is_lowered_first_never_below_a_request():
    manifest = pod(container("jnlp", "2100m", "6300m"), container("db", "500m", "1"))
    lowered = with_limits_within_quota(manifest, {"cpu": Decimal(5)})
    assert limits(lowered) == ["4000m", "1"]  # 6300m + 1 over 5: 2300m off the build's
    assert limits(with_limits_within_quota(manifest, {"cpu": Decimal("2.6")})) == [
        "2100m", "500m"]  # both at their requests
    assert with_limits_within_quota(manifest, {"cpu": Decimal(8)}) is manifest  # within


def test_a_cap_no_limit_meets_leaves_the_pod_as_it_is():
    manifest = pod(container("jnlp", "2100m", "6300m"))
    assert with_limits_within_quota(manifest, {"cpu": Decimal(2)}) is manifest  # request 2.1
    inits = pod(container("jnlp", "2100m", "6300m"), inits=[container("agent", "1", "6")])
    assert with_limits_within_quota(inits, {"cpu": Decimal(5)}) is inits  # an init's 6 over


def test_memory_limits_are_lowered_in_bytes():
    manifest = pod(container("jnlp", "1", "1", memory="1Gi"))
    manifest["spec"]["containers"][0]["resources"]["limits"]["memory"] = "2Gi"
    lowered = with_limits_within_quota(manifest, {"memory": Decimal(1536 * 2**20)})
    assert lowered["spec"]["containers"][0]["resources"]["limits"]["memory"] == str(
        1536 * 2**20)
