"""core.limit_ratio and the limits it sets: a maxLimitRequestRatio met as the API server checks
it (plugin/pkg/admission/limitranger/admission.go limitRequestRatioConstraint: milli-values,
compared in float64), the build container's limit from cpuLimitFactor in exact decimal, and a
named limit above a ratio lowered to it. The pods themselves meet kmock's LimitRanger in
tests/integration/test_limit_range_ratio.py."""

from decimal import Decimal

from hypothesis import given, strategies as st

from tests.support import limit_ranger
from workers.core.cluster import Resources
from workers.core.limit_range_sizing import within
from workers.core.limit_ranges import with_explicit_limits
from workers.core.limit_ratio import most_within
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import agent_pod_manifest
from workers.core.quantity import cpu_millis, times_factor
from workers.core.ratio_limits import (
    limits_over_ratio, unsummed_pod_bounds, with_limits_within_ratios, with_pod_cpu_within_ratio)

BUILD = BuildRequest(build_key="k" * 20, agent_name="ci-agent-1", source="gitlab",
                     project="g/p", ref="refs/heads/main", sha="a" * 40, user="u", job="build",
                     template="t")


def api_server_admits(request_milli: int, limit_milli: int, ratio_milli: int) -> bool:
    """limitRequestRatioConstraint, line by line: observedRatio := float64(lim) /
    float64(req); observedRatio * 1000 > float64(enforced.MilliValue()) refuses."""
    observed = float(limit_milli) / float(request_milli)
    return not observed * 1000 > float(ratio_milli)


def ratio_text(ratio_milli: int) -> str:
    return f"{ratio_milli}m" if ratio_milli % 1000 else str(ratio_milli // 1000)


@given(st.integers(1, 10**6), st.integers(1000, 20_000))
def test_the_most_within_a_ratio_is_what_the_api_server_admits_and_no_more(request, ratio):
    most = most_within(request, ratio_text(ratio))
    assert request <= most <= Decimal(request) * ratio / 1000  # never above the exact product
    assert api_server_admits(request, most, ratio)
    assert not api_server_admits(request, most + 1, ratio) or most == request * ratio // 1000


def test_a_ratio_the_exact_product_meets_but_float64_does_not_gets_the_limit_below():
    """1000m x 2.007 is 2007m exactly, but the API server's 2007 / 1000 x 1000 in float64 is
    2007.0000000000002 > 2007: refused. The limit given is 2006m (it was 2007m)."""
    assert not api_server_admits(1000, 2007, 2007)
    manifest = {"spec": {"containers": [{"name": "build", "resources": {
        "requests": {"cpu": "1"}, "limits": {}}}]}}
    [container] = with_explicit_limits(manifest, {}, {"cpu": "2.007"})["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "2006m"}
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [container]}}
    ranges = [limit_ranger.defaulted({"spec": {"limits": [
        {"type": "Container", "maxLimitRequestRatio": {"cpu": "2.007"}}]}})]
    assert limit_ranger.admit(pod, ranges)[1] is None
    container["resources"]["limits"]["cpu"] = "2007m"
    assert "provided ratio is 2.007000" in limit_ranger.admit(pod, ranges)[1][2]


@given(st.integers(1, 64_000), st.integers(1000, 10_000))
def test_the_cpu_limit_factor_is_applied_in_exact_decimal(millis, factor_milli):
    factor = factor_milli / 1000  # as YAML gives it: a float
    assert times_factor(millis, factor) == -(-millis * factor_milli // 1000)


def test_a_100m_request_with_a_factor_of_1_1_gets_110m_not_111m():
    """100 x 1.1 is 110.00000000000001 in binary floating point: the pod named 111m, which a
    namespace's maxLimitRequestRatio of 1.1 refuses (1.110000)."""
    template = PodTemplate.model_validate({
        "cpu": {"min": "100m", "default": "100m", "max": "100m"},
        "memory": {"min": "1Gi", "default": "1Gi", "max": "1Gi"},
        "cpuLimitFactor": 1.1, "agentInjection": False})
    pod = agent_pod_manifest(build=BUILD, template=template, size=Resources(100, 2**30),
                             namespace="ci", jenkins_url="https://j")
    [jnlp] = pod["spec"]["containers"]
    assert jnlp["resources"]["limits"]["cpu"] == "110m"


@given(st.integers(100, 64_000), st.integers(1000, 10_000))
def test_sizing_under_a_max_takes_the_largest_request_whose_limit_fits(most, factor_milli):
    template = PodTemplate.model_validate({
        "cpu": {"min": "1m", "default": "64", "max": "64"},
        "memory": {"min": "1Gi", "default": "1Gi", "max": "1Gi"},
        "cpuLimitFactor": factor_milli / 1000, "agentInjection": False})
    narrowed = within(template, {"cpu": f"{most}m"}, {})
    factor = template.cpu_limit_factor
    assert times_factor(narrowed.cpu.max, factor) <= most < times_factor(
        narrowed.cpu.max + 1, factor)


def test_a_named_limit_above_the_ratio_is_lowered_to_it_and_one_within_is_kept():
    manifest = {"spec": {
        "initContainers": [{"name": "init", "resources": {
            "requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}}],
        "containers": [
            {"name": "build", "resources": {"requests": {"cpu": "1200m", "memory": "1Gi"},
                                            "limits": {"cpu": "3600m", "memory": "1Gi"}}},
            {"name": "db", "resources": {"requests": {"cpu": "500m"},
                                         "limits": {"cpu": "1"}}}]}}
    ratios = {"cpu": "2"}
    assert limits_over_ratio(manifest, ratios) == [("init", "cpu", "1", "200m"),
                                                   ("build", "cpu", "3600m", "2400m")]
    out = with_limits_within_ratios(manifest, ratios)
    limits = {c["name"]: c["resources"]["limits"]
              for f in ("initContainers", "containers") for c in out["spec"][f]}
    assert limits == {"init": {"cpu": "200m"}, "build": {"cpu": "2400m", "memory": "1Gi"},
                      "db": {"cpu": "1"}}
    assert with_limits_within_ratios(manifest, {"cpu": "10"}) is manifest
    assert cpu_millis(limits["build"]["cpu"]) == 2 * 1200


def test_named_cpu_limits_above_a_pod_ratio_are_lowered_until_the_pod_meets_it():
    """PodLimitFunc's Pod branch: the pod's summed CPU limits over its request; the build
    container's (request x cpuLimitFactor) gives way, the others stay at their requests."""
    def pod(*inits):
        return {"metadata": {"name": "p"}, "spec": {"initContainers": list(inits), "containers": [
            {"name": "build", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "3"}}},
            {"name": "db", "resources": {"requests": {"cpu": "500m"},
                                         "limits": {"cpu": "500m"}}}]}}
    ranges = [limit_ranger.defaulted({"spec": {"limits": [
        {"type": "Pod", "maxLimitRequestRatio": {"cpu": "2"}}]}})]
    sidecar = {"name": "proxy", "restartPolicy": "Always",
               "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "200m"}}}
    for before, build_limit in ((pod(), "2500m"), (pod(sidecar), "2300m")):
        assert "per Pod is 2, but provided ratio" in limit_ranger.admit(before, ranges)[1][2]
        after = with_pod_cpu_within_ratio(before, "2")
        assert after["spec"]["containers"][0]["resources"]["limits"] == {"cpu": build_limit}
        assert after["spec"]["containers"][1] == before["spec"]["containers"][1]
        assert limit_ranger.admit(after, ranges)[1] is None
        assert with_pod_cpu_within_ratio(after, "2") is after
    assert with_pod_cpu_within_ratio(pod(), None)["spec"] == pod()["spec"]
    unnamed = pod()
    del unnamed["spec"]["containers"][1]["resources"]["limits"]
    assert with_pod_cpu_within_ratio(unnamed, "2") is unnamed


@given(st.lists(st.tuples(st.integers(1, 8000), st.integers(0, 16000)), min_size=1,
                max_size=4),
       st.one_of(st.none(), st.integers(1, 8000)), st.integers(1000, 5000))
def test_any_pod_lowered_to_a_pod_ratio_is_admitted_and_no_limit_goes_below_its_request(
        sizes, init, ratio):
    containers = [{"name": f"c{i}", "resources": {"requests": {"cpu": f"{r}m"},
                                                   "limits": {"cpu": f"{r + more}m"}}}
                  for i, (r, more) in enumerate(sizes)]
    spec = {"containers": containers}
    if init is not None:
        spec["initContainers"] = [{"name": "init", "resources": {
            "requests": {"cpu": f"{init}m"}, "limits": {"cpu": f"{init}m"}}}]
    before = {"metadata": {"name": "p"}, "spec": spec}
    after = with_pod_cpu_within_ratio(before, ratio_text(ratio))
    ranges = [limit_ranger.defaulted({"spec": {"limits": [
        {"type": "Pod", "maxLimitRequestRatio": {"cpu": ratio_text(ratio)}}]}})]
    assert limit_ranger.admit(after, ranges)[1] is None
    for was, now in zip(before["spec"]["containers"], after["spec"]["containers"]):
        request = cpu_millis(now["resources"]["requests"]["cpu"])
        assert request <= cpu_millis(now["resources"]["limits"]["cpu"]) <= cpu_millis(
            was["resources"]["limits"]["cpu"])


def test_a_pod_bound_on_what_only_the_build_container_names_is_named_with_its_versions():
    """A Pod max of an extended resource: the build container names its limit, a service
    beside it none. 1.28 and later sum the limits named (podLimits), 1.27 and before only a
    resource every container names (`sum`), refusing the pod: "maximum nvidia.com/gpu usage
    per Pod is 2.  No limit is specified." The fake LimitRanger refuses it so too."""
    gpu = {"requests": {"cpu": "1", "nvidia.com/gpu": "1"},
           "limits": {"cpu": "1", "nvidia.com/gpu": "1"}}
    manifest = {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "build", "resources": gpu},
        {"name": "db", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}]}}
    ranges = [{"spec": {"limits": [{"type": "Pod", "max": {"nvidia.com/gpu": "2", "cpu": "4"}}]}}]
    assert unsummed_pod_bounds(manifest, ranges) == [
        "nvidia.com/gpu max 2 (not every container names a limit of it: Kubernetes 1.27 and "
        "before sum none)"]
    assert limit_ranger.admit(manifest, ranges)[1] is not None
    alone = {**manifest, "spec": {"containers": manifest["spec"]["containers"][:1]}}
    assert unsummed_pod_bounds(alone, ranges) == []
    assert limit_ranger.admit(alone, ranges)[1] is None
