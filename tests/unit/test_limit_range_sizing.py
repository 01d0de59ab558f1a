"""core.limit_range_sizing: the build container's requests and limits kept within a
namespace's per-container max and min, whatever the pod's shape; the pod itself is checked
against kmock's LimitRanger in tests/integration/test_limit_range_max.py."""

from workers.core import podsize
from workers.core.cluster import Resources
from workers.core.limit_range_sizing import within
from workers.core.models import PodTemplate
from workers.core.quantity import cpu_millis, times_factor

BIG = {"cpu": {"min": "1", "default": "4", "max": "8"},
       "memory": {"min": "1Gi", "default": "4Gi", "max": "8Gi"}}


def template(**fields):
    return PodTemplate.model_validate({**BIG, **fields})


def test_a_max_below_the_default_caps_default_and_max_leaving_the_min():
    narrowed = within(template(), {"cpu": "2"}, {})
    assert (narrowed.cpu.min, narrowed.cpu.default, narrowed.cpu.max) == (1000, 1900, 1900)
    assert narrowed.memory == template().memory


def test_the_cpu_limit_factor_keeps_the_limit_within_the_max():
    """core.pods._resources names a CPU limit of ceil(request x cpuLimitFactor), in exact
    decimal (quantity.times_factor)."""
    for factor, most in ((1.5, 3000), (2.9, 5999), (1.1, 2500)):
        narrowed = within(template(cpuLimitFactor=factor), {"cpu": f"{most}m"}, {})
        request = narrowed.cpu.max + narrowed.agent_cpu
        assert times_factor(request, factor) <= most < times_factor(request + 1, factor)


def test_a_bound_the_range_cannot_meet_leaves_the_template_for_the_api_server_to_refuse():
    assert within(template(), {"cpu": "900m"}, {}) == template()  # below min + agent
    assert within(template(), {}, {"memory": "9Gi"}) == template()  # above max + agent


def test_a_min_raises_the_range_and_a_build_container_beside_jnlp_gets_no_agent_share():
    t = template(agentInjection=False, containers=[{"name": "build", "image": "b",
                                                     "build": True}])
    narrowed = within(t, {"cpu": "6"}, {"cpu": "5"})
    assert (narrowed.cpu.min, narrowed.cpu.default, narrowed.cpu.max) == (5000, 5000, 6000)
    [_, build] = podsize.container_requests(narrowed, Resources(narrowed.cpu.max, 0))
    assert build.cpu_millis == cpu_millis("6")


def test_unmet_names_the_bounds_within_leaves_for_the_api_server_to_refuse():
    from workers.core.limit_range_sizing import unmet
    assert unmet(template(), {"cpu": "900m"}, {}) == ["cpu max 900m"]  # min 1 + agent 100m
    assert unmet(template(), {"cpu": "1100m", "memory": "2Gi"}, {}) == []  # narrowed instead
    assert unmet(template(), {}, {"memory": "9Gi"}) == ["memory min 9Gi"]
    # a CPU limit of ceil(1100m x 1.5) = 1650m is over a max of 1600m
    assert unmet(template(cpuLimitFactor=1.5), {"cpu": "1600m"}, {}) == ["cpu max 1600m"]
    for most in ({"cpu": "900m"}, {"cpu": "1100m"}, {"cpu": "1600m"}):
        for t in (template(), template(cpuLimitFactor=1.5)):
            assert bool(unmet(t, most, {})) == (within(t, most, {}) == t)


def test_a_tmpfs_sizelimit_on_the_build_container_stays_within_the_max():
    """core.pods._add_extras adds a memory-backed emptyDir's sizeLimit to the (first) build
    container's memory request and limit: a per-container max must leave room for it, or
    LimitRanger refuses every pod ("maximum memory usage per Container is 4Gi, but limit
    is 5Gi..."; plugin/pkg/admission/limitranger maxConstraint)."""
    from workers.core.limit_range_sizing import unmet
    t = template(workspaceVolume={"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    narrowed = within(t, {"memory": "4Gi"}, {})
    [build] = podsize.container_requests(narrowed, Resources(0, narrowed.memory.max))
    assert build.memory_bytes == 4 * 2**30
    assert unmet(t, {"memory": "1Gi"}, {}) == ["memory max 1Gi"]  # min 1Gi + agent + 1Gi
    # a min is met by the first build container with its tmpfs, not by a second without it
    two = template(agentInjection=False, workspaceVolume=t.workspace_source,
                   containers=[{"name": "a", "image": "a", "build": True},
                               {"name": "b", "image": "b", "build": True}])
    narrowed = within(two, {}, {"memory": "2Gi"})
    assert narrowed.memory.min == 2 * 2**30
