"""Node memory as the scheduler would count it (core.usage): a node's reserved system memory
and its page cache never make placement think it has less free memory than kube-scheduler's
own fit (allocatable - requests), except by what pods use beyond their own requests."""

from hypothesis import given, settings, strategies as st

from workers.core.cluster import NodeState, Resources
from workers.core.placement import DEFAULT_TARGET_UTILISATION, decide, free
from workers.core.models import PodTemplate
from workers.core.usage import memory_over_requests, node_memory_fallback

GI, MI = 2**30, 2**20


@st.composite
def nodes_with_pods(draw):
    """A node (capacity, reserved for the system), its pods (request, working set, some not
    sampled yet), what its system daemons use and its active page cache; the working set
    metrics-server reports for the whole node is the sum of all of it."""
    capacity = draw(st.integers(2, 64)) * GI
    reserved = draw(st.integers(0, capacity // 4))
    allocatable = capacity - reserved
    pods, left = [], allocatable
    for _ in range(draw(st.integers(0, 12))):
        request = draw(st.integers(0, max(0, left)))
        left -= request
        use = draw(st.none() | st.integers(0, 2 * request + 64 * MI))
        pods.append((request, use))
    system = draw(st.integers(0, 2 * reserved + GI))
    page_cache = draw(st.integers(0, capacity))
    return capacity, allocatable, pods, system, page_cache


def node(allocatable: int, requested: int, over_requests: int) -> NodeState:
    return NodeState("n", Resources(8000, allocatable), requested=Resources(0, requested),
                     usage=Resources(0, over_requests))


@settings(max_examples=300, deadline=None)
@given(nodes_with_pods(), st.sampled_from([0.5, 0.8, 1.0]))
def test_system_memory_and_page_cache_never_make_free_memory_lower_than_the_schedulers_fit(
        case, target):
    capacity, allocatable, pods, system, page_cache = case
    requested = sum(r for r, _ in pods)
    scheduler_free = allocatable - requested  # NodeResourcesFit: allocatable - requests
    over = sum(max(0, (u or 0) - r) for r, u in pods)  # pods beyond their own requests
    ours = free(node(allocatable, requested, memory_over_requests(pods)), target).memory_bytes
    assert ours == max(0, scheduler_free - over)
    if not over:
        assert ours == scheduler_free
    # and what the node reports besides (system daemons, page cache) plays no part
    working_set = sum(u or 0 for _, u in pods) + system + page_cache
    assert working_set >= 0 and ours >= scheduler_free - over


@settings(max_examples=200, deadline=None)
@given(nodes_with_pods())
def test_without_pod_metrics_the_reserved_part_is_not_counted_twice(case):
    """The fallback (node working set less capacity - allocatable): with system daemons within
    their reservation and no page cache, free memory is at least the scheduler's fit less
    what pods use beyond their requests."""
    capacity, allocatable, pods, system, _ = case
    system = min(system, capacity - allocatable)
    requested = sum(r for r, _ in pods)
    used = sum(u or 0 for _, u in pods)
    over = node_memory_fallback(used + system, capacity, allocatable, requested)
    ours = free(node(allocatable, requested, over)).memory_bytes
    assert ours >= max(0, allocatable - requested - max(0, used - requested))


def test_a_node_doing_much_io_is_not_taken_for_full():
    """The case of issue 18: 16Gi, 1Gi reserved, pods requesting 8Gi use 6Gi, 6Gi of active
    page cache. The whole node's working set (13Gi) divided by the 0.8 target was more than
    allocatable: the build waited as insufficient_memory where kube-scheduler fits it."""
    capacity, allocatable = 16 * GI, 15 * GI
    pods = [(4 * GI, 3 * GI), (4 * GI, 3 * GI)]
    working_set = 6 * GI + 1 * GI + 6 * GI
    assert working_set / DEFAULT_TARGET_UTILISATION > allocatable  # the old count: full
    state = node(allocatable, 8 * GI, memory_over_requests(pods))
    assert free(state).memory_bytes == 7 * GI
    template = PodTemplate(memory={"min": "6Gi", "default": "6Gi", "max": "6Gi"},
                           cpu={"min": "1", "default": "1", "max": "1"})
    assert decide(template, [state]).node == "n"
