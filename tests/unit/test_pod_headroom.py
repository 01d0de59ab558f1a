"""core.pod_headroom: under a Pod CPU max the limits with_pod_limits names (a service's, the
build container's without cpuLimitFactor) are raised so that the pod's summed limits reach the
max, within every other LimitRange bound. Each pod is sent as adapters.kube_limit_ranges sends
it and put through the LimitRanger of tests.support.limit_ranger (Kubernetes <= 1.27 and
>= 1.28 sums both), as strict as the API server's."""

from decimal import Decimal

from hypothesis import HealthCheck, assume, given, settings, strategies as st

from tests.support import limit_ranger
from workers.adapters.kube_limit_ranges import LimitRangeDefaults
from workers.core.cluster import Resources
from workers.core.limit_range_sizing import unmet, unmet_pod, within, within_pod
from workers.core.limit_ranges import (
    container_extremes, default_limits, limit_ratios, pod_extremes, pod_ratios,
    limit_without, with_explicit_limits, with_init_containers_at_least, with_pod_limits)
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pod_headroom import spread
from workers.core.pods import agent_pod_manifest
from workers.core.quantity import cpu_millis

BUILD = BuildRequest(build_key="k" * 20, agent_name="ci-agent-1", source="gitlab",
                     project="g/p", ref="refs/heads/main", sha="a" * 40, user="u", job="build",
                     template="big")
BIG = {"cpu": {"min": "500m", "default": "2", "max": "8"},
       "memory": {"min": "1Gi", "default": "2Gi", "max": "8Gi"}}
POSTGRES = {"name": "db", "image": "postgres", "cpu": "100m", "memory": "256Mi"}
CACHE = {"name": "cache", "image": "redis", "cpu": "300m", "memory": "128Mi"}
SHAPES = [
    {},
    {"containers": [POSTGRES]},
    {"containers": [POSTGRES, CACHE]},
    {"cpuLimitFactor": 1.5, "containers": [POSTGRES]},
    {"agentInjection": False, "containers": [POSTGRES]},
    {"agentInjection": False, "containers": [{"name": "a", "image": "a", "build": True},
                                             {"name": "b", "image": "b", "build": True},
                                             CACHE]},
]


def template(**fields):
    return PodTemplate.model_validate({**BIG, **fields})


def limit_range(*items):
    return limit_ranger.defaulted({"spec": {"limits": [i for i in items if i]}})


def rendered(t, cpu, memory=2**30):
    return agent_pod_manifest(build=BUILD, template=t, size=Resources(cpu, memory),
                              namespace="ci", jenkins_url="https://j")


def sent(pod, ranges):
    """The pod as adapters.kube_limit_ranges sends it (LimitRanges listed, create echoing)."""
    return LimitRangeDefaults(lambda: {"items": ranges}, "ci", lambda: 0.0).create(
        lambda manifest: manifest, pod)


def before(pod, ranges):
    """The pod as it was sent before the headroom: every added CPU limit at its request."""
    (most, least), ratios = pod_extremes(ranges), pod_ratios(ranges)
    raised = with_init_containers_at_least(pod, container_extremes(ranges)[1])
    return with_explicit_limits(with_pod_limits(raised, set(most) | set(ratios), set(least)),
                                default_limits(ranges), limit_ratios(ranges))


def cpu(container, kind):
    return cpu_millis(container["resources"][kind]["cpu"])


def test_a_service_and_the_build_share_the_room_of_the_pod_max_by_their_requests():
    """1.1 CPU asked (build 900m + agent 100m in one container, postgres 100m) under a 2 CPU
    Pod max: at their requests 900m were unusable; now the limits sum to the max, 10 : 1."""
    ranges = [limit_range({"type": "Pod", "max": {"cpu": "2"}})]
    pod = rendered(template(containers=[POSTGRES]), 900)
    old, new = before(pod, ranges), sent(pod, ranges)
    assert [cpu(c, "limits") for c in old["spec"]["containers"]] == [1000, 100]
    assert [cpu(c, "limits") for c in new["spec"]["containers"]] == [1818, 182]
    assert [c["resources"]["limits"]["memory"] for c in new["spec"]["containers"]] == [
        c["resources"]["requests"]["memory"] for c in new["spec"]["containers"]]
    assert limit_ranger.admit(new, ranges)[1] is None
    # a millicore more on either is refused: the sum is at the max
    over = sent(pod, ranges)
    over["spec"]["containers"][1]["resources"]["limits"]["cpu"] = "183m"
    assert "maximum cpu usage per Pod is 2, but limit is 2001m." in \
        limit_ranger.admit(over, ranges)[1][2]


def test_a_named_limit_is_kept_and_the_others_stop_at_the_container_max_and_ratio():
    ranges = [limit_range({"type": "Container", "max": {"cpu": "3"},
                           "maxLimitRequestRatio": {"cpu": "4"}},
                          {"type": "Pod", "max": {"cpu": "6"}})]
    pod = rendered(template(cpuLimitFactor=1.5, containers=[POSTGRES, CACHE]), 1000)
    new = sent(pod, ranges)
    # build 1100m named 1650m by its factor; postgres at 4 x 100m, the cache takes the rest
    # up to the Container max, not the 6 CPU the Pod max would leave
    assert [cpu(c, "limits") for c in new["spec"]["containers"]] == [1650, 400, 1200]
    assert limit_ranger.admit(new, ranges)[1] is None


def test_a_pod_ratio_bounds_the_sum():
    ranges = [limit_range({"type": "Pod", "max": {"cpu": "4"},
                           "maxLimitRequestRatio": {"cpu": "1.5"}})]
    pod = rendered(template(containers=[POSTGRES]), 900)
    new = sent(pod, ranges)
    assert sum(cpu(c, "limits") for c in new["spec"]["containers"]) == 1650
    assert limit_ranger.admit(new, ranges)[1] is None


def test_under_a_pod_min_alone_a_service_gets_the_namespaces_default_not_its_request():
    """Kubernetes 1.28 sums the limits named against a Pod min, so beside the build's
    (cpuLimitFactor) postgres must name one; before the Pod min it had the Container
    default, 500m (or the 2 x 100m its ratio allows), and has it again. With no default it
    would have had no limit: nothing says how far, it stays at its request."""
    pod = rendered(template(cpuLimitFactor=1.5, containers=[POSTGRES]), 900)

    def service_limit(*items):
        ranges = [limit_range(*items)]
        new = sent(pod, ranges)
        assert limit_ranger.admit(new, ranges)[1] is None
        return cpu(new["spec"]["containers"][1], "limits")
    least = {"type": "Pod", "min": {"cpu": "1"}}
    assert service_limit(least, {"type": "Container", "default": {"cpu": "500m"}}) == 500
    assert service_limit(least, {"type": "Container", "max": {"cpu": "3"}}) == 3000
    assert service_limit(least, {"type": "Container", "default": {"cpu": "500m"},
                                 "maxLimitRequestRatio": {"cpu": "2"}}) == 200
    assert service_limit(least, {"type": "Container", "default": {"cpu": "50m"}}) == 100
    assert service_limit(least) == 100


def test_spread_gives_all_the_room_by_request_within_caps_in_whole_millicores():
    assert spread(900, {0: 1000, 1: 100}, {0: 900, 1: 900}) == {0: 818, 1: 82}
    assert spread(900, {0: 1000, 1: 100}, {0: 500, 1: 900}) == {0: 500, 1: 400}
    assert spread(900, {0: 1000, 1: 100}, {0: 500, 1: 100}) == {0: 500, 1: 100}
    assert spread(10, {0: 1, 1: 1, 2: 1}, {0: 10, 1: 10, 2: 10}) == {0: 4, 1: 3, 2: 3}
    assert spread(5, {0: 0, 1: 7}, {0: 5, 1: 5}) == {0: 0, 1: 5}


def _cpu_values(draw, low, high):
    return f"{draw(st.integers(low, high)) * 100}m"


@st.composite
def cases(draw):
    shape = draw(st.sampled_from(SHAPES))
    container = {"type": "Container"}
    if draw(st.booleans()):
        container["max"] = {"cpu": _cpu_values(draw, 10, 80)}
    if draw(st.booleans()):
        container["maxLimitRequestRatio"] = {"cpu": draw(st.sampled_from(["1", "1.5", "2",
                                                                          "4", "10"]))}
    if draw(st.booleans()):
        container["min"] = {"cpu": draw(st.sampled_from(["50m", "100m", "200m"]))}
    if draw(st.booleans()):
        container["default"] = {"cpu": _cpu_values(draw, 1, 40)}
    pod = {"type": "Pod", "max": {}}
    if draw(st.booleans()):
        pod["max"]["cpu"] = _cpu_values(draw, 10, 120)
    if draw(st.booleans()):
        pod["maxLimitRequestRatio"] = {"cpu": draw(st.sampled_from(["1", "1.2", "2", "3"]))}
    if draw(st.booleans()):
        pod["min"] = {"cpu": _cpu_values(draw, 5, 30)}
    if draw(st.booleans()):
        pod["max"]["memory"] = draw(st.sampled_from(["3Gi", "6Gi", "12Gi"]))
    second = draw(st.sampled_from([None, {"type": "Pod", "max": {"cpu": "5"}},
                                   {"type": "Container", "max": {"cpu": "2500m"}}]))
    ranges = [limit_range(container if len(container) > 1 else None, pod),
              *([limit_range(second)] if second else [])]
    t = within_pod(within(template(**shape), *container_extremes(ranges)), *pod_extremes(ranges))
    assume(not unmet(t, *container_extremes(ranges)) and not unmet_pod(t, *pod_extremes(ranges)))
    size = draw(st.integers(t.cpu.min, t.cpu.max))
    return t, size, ranges


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(cases())
def test_random_limit_ranges_still_accept_the_pod_and_the_limits_reach_the_pod_max(case):
    t, size, ranges = case
    pod = rendered(t, size, min(t.memory.default, t.memory.max))
    old, new = before(pod, ranges), sent(pod, ranges)
    assume(limit_ranger.admit(old, ranges)[1] is None)  # refused for a bound not ours
    assert limit_ranger.admit(new, ranges)[1] is None, (new["spec"], ranges)
    named = {c["name"]: c["resources"].get("limits", {}) for c in pod["spec"]["containers"]}
    olds = {c["name"]: c["resources"]["limits"] for c in old["spec"]["containers"]}
    for c in new["spec"]["containers"]:
        limits = c["resources"]["limits"]
        assert limits["memory"] == olds[c["name"]]["memory"]  # memory limit = request
        if "cpu" in named[c["name"]]:
            assert limits["cpu"] == named[c["name"]]["cpu"]  # the template's is kept
        assert ("cpu" in limits) == ("cpu" in olds[c["name"]])  # none named where none was
        if "cpu" in limits:
            assert cpu_millis(limits["cpu"]) >= cpu_millis(olds[c["name"]]["cpu"])
    raisable = [c for c in new["spec"]["containers"] if "cpu" not in named[c["name"]]
                and "cpu" in c["resources"]["limits"]]
    if "cpu" not in pod_extremes(ranges)[0] and "cpu" not in pod_ratios(ranges):
        for c in raisable:  # a Pod min alone: what it would have had naming none
            would = limit_without("cpu", c["resources"]["requests"]["cpu"],
                                  default_limits(ranges).get("cpu"),
                                  limit_ratios(ranges).get("cpu"))
            assert cpu(c, "limits") == max(cpu(c, "requests"), min(
                cpu_millis(would or c["resources"]["requests"]["cpu"]),
                _cap(c, ranges) or 10**9)), (c, ranges)
        return
    total = sum(cpu(c, "limits") for c in new["spec"]["containers"])
    most = cpu_millis(pod_extremes(ranges)[0].get("cpu", "1000"))
    assert total <= most
    bounded = container_extremes(ranges)[0] or limit_ratios(ranges) or pod_ratios(ranges)
    if not bounded and raisable:
        assert total == most, (new["spec"]["containers"], ranges)
    # else it reaches the most the Pod ratio allows, or each raised one is at its own bound
    requests = max([sum(cpu(c, "requests") for c in new["spec"]["containers"]),
                    *(cpu(c, "requests") for c in new["spec"].get("initContainers") or [])])
    if "cpu" in pod_ratios(ranges):
        most = min(most, int(requests * Decimal(pod_ratios(ranges)["cpu"])))
    assert total == most or all(cpu(c, "limits") == _cap(c, ranges) for c in raisable), (
        new["spec"]["containers"], ranges)


def _cap(container, ranges):
    """The most a Container max and maxLimitRequestRatio let the container's limit be."""
    caps = [cpu_millis(v) for v in [container_extremes(ranges)[0].get("cpu")] if v]
    if "cpu" in limit_ratios(ranges):
        caps.append(int(cpu(container, "requests") * Decimal(limit_ratios(ranges)["cpu"])))
    return min(caps, default=None)


def test_a_sidecar_init_containers_limit_is_left_room_under_the_pod_max():
    """A podSpecPatch's native sidecar (an init container with restartPolicy Always) runs
    beside the containers, and Kubernetes 1.28+ adds its limit to the pod's (limitranger
    podLimits): spread to the full 2 CPU without it, the pod asked 2300m and was refused
    ("maximum cpu usage per Pod is 2, but limit is 2300m"). The containers now leave its
    300m: their limits sum to 1700m."""
    side = {"cpu": "300m", "memory": "64Mi"}
    t = template(containers=[POSTGRES], podSpecPatch={"initContainers": [
        {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
         "resources": {"requests": side, "limits": side}}]})
    ranges = [limit_range({"type": "Pod", "max": {"cpu": "2"}})]
    pod = sent(rendered(t, 900), ranges)
    assert sum(cpu(c, "limits") for c in pod["spec"]["containers"]) == 1700
    assert limit_ranger.admit(pod, ranges)[1] is None
