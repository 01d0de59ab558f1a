"""What pods really use, from metrics.k8s.io: what agents of a template use (the estimate
placement spreads by, see placement.decide's expected_use), and the memory a node's pods hold
(what placement counts against allocatable, see placement.busy)."""

from collections.abc import Iterable, Sequence

from workers.core.cluster import Resources

EXPECTED_USE_QUANTILE = 0.5  # the median: what a typical agent of the template uses
MIN_SAMPLES = 5
USAGE_HISTORY = 200  # the latest samples of a template's agents that the estimate uses


def expected_use(samples: Sequence[tuple[float, int]]) -> Resources | None:
    """The median (cores, memory bytes) over recent samples of running agents;
    None until there are enough samples to say."""
    if len(samples) < MIN_SAMPLES:
        return None
    cores = sorted(s[0] for s in samples)
    memory = sorted(s[1] for s in samples)
    at = min(len(samples) - 1, int(EXPECTED_USE_QUANTILE * len(samples)))
    return Resources(int(cores[at] * 1000), memory[at])


# -- node memory in use, as the scheduler would see it --------------------------------------
# metrics.k8s.io node memory is the working set of the whole node: its pods, and also the
# system daemons that allocatable already leaves out (capacity - allocatable) and the active
# page cache. Set against allocatable, that counts the reserved part twice and makes a node
# that does much I/O look full (issue 18). So node memory is built from pod metrics instead:
# the node's pods hold sum(max(request, working set)) = their requests (known at once, from
# the watch) + what they use beyond their requests (known at each metrics poll). Placement
# keeps the second part as the node's memory usage (placement.busy adds the requests).

def memory_over_requests(pods: Iterable[tuple[int, int | None]]) -> int:
    """What a node's pods use beyond their own requests: over its pods (memory request,
    working set or None when not sampled), the sum of max(0, use - request)."""
    return sum(use - request for request, use in pods if use is not None and use > request)


def node_memory_fallback(working_set: int, capacity: int, allocatable: int,
                         requested: int) -> int:
    """Without pod metrics, the same from the node's working set: less what allocatable
    already excludes (system daemons, kubelet, eviction threshold) and the requests; page
    cache stays counted."""
    return max(0, working_set - max(0, capacity - allocatable) - requested)
