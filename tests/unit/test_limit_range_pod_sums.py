"""Pod-type LimitRange items (a max, min or maxLimitRequestRatio on the SUM of a pod's
containers, kubernetes plugin/pkg/admission/limitranger/admission.go PodLimitFunc's
`limitType == api.LimitTypePod` branch): core.limit_range_sizing.within_pod sizes the build so
that the pod's sum meets them, and core.limit_ranges.with_pod_limits names the limits the sum
needs. Each rendered pod (core.pods) is put through the LimitRanger of tests.support
.limit_ranger, as strict as the API server's; the kmock push is in
tests/integration/test_limit_range_pod.py."""

import pytest

from tests.support import limit_ranger
from workers.core.cluster import Resources
from workers.core.limit_range_sizing import unmet_pod, within, within_pod
from workers.core.limit_ranges import pod_extremes, pod_ratios, with_pod_limits
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import agent_pod_manifest

BUILD = BuildRequest(build_key="k" * 20, agent_name="ci-agent-1", source="gitlab",
                     project="g/p", ref="refs/heads/main", sha="a" * 40, user="u", job="build",
                     template="big")
BIG = {"cpu": {"min": "1", "default": "4", "max": "8"},
       "memory": {"min": "1Gi", "default": "4Gi", "max": "8Gi"}}
SERVICE = {"name": "db", "image": "postgres", "cpu": "500m", "memory": "1Gi"}
SHAPES = {
    "injected": {},
    "injected with a service": {"containers": [SERVICE]},
    "injected, cpu limit factor": {"cpuLimitFactor": 1.5, "containers": [SERVICE]},
    "own agent": {"agentInjection": False},
    "own agent, two build containers": {
        "agentInjection": False,
        "containers": [{"name": "a", "image": "a", "build": True},
                       {"name": "b", "image": "b", "build": True}, SERVICE]},
}


def template(**fields):
    return PodTemplate.model_validate({**BIG, **fields})


def limit_range(*items):
    return limit_ranger.defaulted({"spec": {"limits": list(items)}})


def refusal(t, size, ranges):
    """The LimitRanger's refusal of the pod of `t` at `size`, as this project sends it."""
    pod = agent_pod_manifest(build=BUILD, template=t, size=size, namespace="ci",
                             jenkins_url="https://j")
    (most, least), ratios = pod_extremes(ranges), pod_ratios(ranges)
    # as adapters.kube_limit_ranges sends it
    return limit_ranger.admit(with_pod_limits(pod, set(most) | set(ratios), set(least)),
                              ranges)[1]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
@pytest.mark.parametrize("most", [{"cpu": "3"}, {"memory": "3584Mi"},
                                  {"cpu": "3500m", "memory": "3584Mi"}])
def test_a_pod_max_below_the_default_sizes_the_pods_sum_to_it_exactly(shape, most):
    t = template(**shape)
    ranges = [limit_range({"type": "Pod", "max": most})]
    fitted = within_pod(t, *pod_extremes(ranges))
    assert fitted != t and not unmet_pod(t, *pod_extremes(ranges))
    top = Resources(fitted.cpu.max, fitted.memory.max)
    assert fitted.cpu.default <= top.cpu_millis and fitted.memory.default <= top.memory_bytes
    assert refusal(fitted, top, ranges) is None
    # a millicore or a byte more breaks the Pod max: the narrowing is the tightest
    if "cpu" in most:
        over = refusal(t, Resources(top.cpu_millis + 1, top.memory_bytes), ranges)
        assert over is not None and "maximum cpu usage per Pod is" in over[2], over
    if "memory" in most:
        over = refusal(t, Resources(top.cpu_millis, top.memory_bytes + 1), ranges)
        assert over is not None and "maximum memory usage per Pod is" in over[2], over


def test_without_the_limits_a_pod_max_needs_the_pod_is_refused_as_the_api_server_does():
    """core.pods names no CPU limit without cpuLimitFactor, and the plugin sums a limit only
    when every container names it: "No limit is specified"."""
    ranges = [limit_range({"type": "Pod", "max": {"cpu": "2", "memory": "4Gi"}})]
    pod = agent_pod_manifest(build=BUILD, template=template(), size=Resources(1000, 2**30),
                             namespace="ci", jenkins_url="https://j")
    assert limit_ranger.admit(pod, ranges)[1] == (
        403, "Forbidden", 'pods "ci-agent-1" is forbidden: maximum cpu usage per Pod is 2.  '
        "No limit is specified.")
    assert limit_ranger.admit(with_pod_limits(pod, {"cpu"}), ranges)[1] is None


def test_a_pod_min_raises_the_size_and_a_bound_the_range_cannot_meet_is_unmet():
    t = template(agentInjection=False, containers=[SERVICE])  # jnlp + 500m/1Gi service
    ranges = [limit_range({"type": "Pod", "min": {"cpu": "6"}})]
    fitted = within_pod(t, *pod_extremes(ranges))
    assert (fitted.cpu.min, fitted.cpu.default, fitted.cpu.max) == (5500, 5500, 8000)
    assert refusal(fitted, Resources(5500, 2**30), ranges) is None
    assert "minimum cpu usage per Pod is 6, but request is 5999m." in refusal(
        t, Resources(5499, 2**30), ranges)[2]
    # a max below the min (1 CPU + the agent's 100m) and a min above the max + service
    assert unmet_pod(template(), {"cpu": "1000m"}, {"memory": "9Gi"}) == [
        "cpu max 1000m", "memory min 9Gi"]
    assert within_pod(template(), {"cpu": "1000m"}, {}) == template()
    assert unmet_pod(template(), {"cpu": "1100m"}, {}) == []


def test_pod_bounds_apply_after_the_container_ones_the_smallest_max_of_several():
    ranges = [limit_range({"type": "Container", "max": {"cpu": "3"}},
                          {"type": "Pod", "max": {"cpu": "4", "memory": "6Gi"}}),
              limit_range({"type": "Pod", "max": {"cpu": "2"}, "min": {"memory": "2Gi"},
                           "maxLimitRequestRatio": {"cpu": "2"}})]
    assert pod_extremes(ranges) == ({"cpu": "2", "memory": "6Gi"}, {"memory": "2Gi"})
    assert pod_ratios(ranges) == {"cpu": "2"}
    t = template(containers=[SERVICE])
    fitted = within_pod(within(t, {"cpu": "3"}, {}), *pod_extremes(ranges))
    # 2 CPU less the 500m service and the agent's 100m beside the build in its container
    assert (fitted.cpu.max, fitted.memory.min) == (1400, 2**30)
    assert refusal(fitted, Resources(1400, 2**30), ranges) is None


def test_with_pod_limits_names_each_missing_limit_and_leaves_a_named_one():
    pod = {"spec": {"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
                    "containers": [{"name": "c", "resources": {
                        "requests": {"cpu": "2", "memory": "1Gi"},
                        "limits": {"cpu": "3", "memory": "1Gi"}}}]}}
    assert with_pod_limits(pod, {"cpu", "memory"})["spec"]["initContainers"][0][
        "resources"]["limits"] == {"cpu": "1"}
    assert with_pod_limits(pod, {"memory"}) is pod
    assert with_pod_limits(pod, {"ephemeral-storage"}) is pod


def test_the_fakes_pod_sum_takes_init_containers_and_prints_as_the_api_server_does():
    """admission.go PodLimitFunc's Pod branch: max(sum_containers, any_init_container), an
    init container's value kept as written, a sum printed as a new DecimalSI quantity; an
    init container's limit stands in for a sum a container left out."""
    def pod(init, *containers):
        return {"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "i", "resources": init}],
            "containers": [{"name": f"c{i}", "resources": r}
                           for i, r in enumerate(containers)]}}
    ranges = [limit_range({"type": "Pod", "max": {"cpu": "1", "memory": "1G"}})]
    small = {"requests": {"cpu": "300m", "memory": "300M"},
             "limits": {"cpu": "300m", "memory": "300M"}}
    assert limit_ranger.admit(pod(small, small, small), ranges)[1] is None
    over = limit_ranger.admit(pod(small, small, small, small, small), ranges)[1]
    assert over[2] == ('pods "p" is forbidden: [maximum cpu usage per Pod is 1, but limit is '
                       "1200m., maximum memory usage per Pod is 1G, but limit is 1200M.]")
    big_init = {"requests": {"cpu": "1500m"}, "limits": {"cpu": "1.5", "memory": "1Gi"}}
    assert limit_ranger.admit(pod(big_init, small), ranges)[1][2] == (
        'pods "p" is forbidden: [maximum cpu usage per Pod is 1, but limit is 1.5., '
        "maximum memory usage per Pod is 1G, but limit is 1Gi.]")
    no_limit = {"requests": {"cpu": "100m", "memory": "1M"}}
    assert "maximum cpu usage per Pod is 1.  No limit is specified." in limit_ranger.admit(
        pod(no_limit, small, no_limit), ranges)[1][2]
    assert limit_ranger.admit(pod(small, small, no_limit), ranges)[1] is None  # the init's


def test_a_pod_min_names_limits_only_where_the_pod_names_one_and_the_fake_sums_them_as_1_28():
    """Since Kubernetes 1.28 (PR #116429, admission.go podLimits/addResourceList) a Pod item
    checks the sum of the limits the containers name, so a min is broken by the build
    container's CPU limit alone (cpuLimitFactor) beside a service naming none; with every
    limit named the sum meets it. A pod naming no CPU limit at all is not checked, and left."""
    ranges = [limit_range({"type": "Pod", "min": {"cpu": "3"}})]
    t = template(cpuLimitFactor=1.5, containers=[{**SERVICE, "cpu": "2"}])
    pod = agent_pod_manifest(build=BUILD, template=t, size=Resources(1000, 2**30),
                             namespace="ci", jenkins_url="https://j")
    assert limit_ranger.admit(pod, ranges)[1][2] == (
        'pods "ci-agent-1" is forbidden: minimum cpu usage per Pod is 3, but limit is 1650m.')
    assert limit_ranger.admit(with_pod_limits(pod, (), least={"cpu"}), ranges)[1] is None
    unlimited = agent_pod_manifest(build=BUILD, template=template(containers=[SERVICE]),
                                   size=Resources(3000, 2**30), namespace="ci",
                                   jenkins_url="https://j")
    assert with_pod_limits(unlimited, (), least={"cpu"}) is unlimited
    assert limit_ranger.admit(unlimited, ranges)[1] is None


def test_the_fakes_pod_sum_adds_a_sidecars_as_1_28_does():
    """1.28+ admission.go podLimits: a restartable init container (restartPolicy Always)
    runs beside the containers, its limit added to their sum (and to a later init
    container's own)."""
    ranges = [limit_range({"type": "Pod", "max": {"cpu": "2"}})]
    half = {"requests": {"cpu": "900m"}, "limits": {"cpu": "900m"}}
    side = {"requests": {"cpu": "300m"}, "limits": {"cpu": "300m"}}
    spec = {"containers": [{"name": "a", "resources": half}, {"name": "b", "resources": half}],
            "initContainers": [{"name": "s", "restartPolicy": "Always", "resources": side}]}
    assert limit_ranger.admit({"metadata": {"name": "p"}, "spec": spec}, ranges)[1][2] == (
        'pods "p" is forbidden: maximum cpu usage per Pod is 2, but limit is 2100m.')
    spec["initContainers"][0].pop("restartPolicy")  # a plain init container: max, not sum
    assert limit_ranger.admit({"metadata": {"name": "p"}, "spec": spec}, ranges)[1] is None
