"""What agents of a template really use, from the metrics of their pods: the estimate that
placement spreads by (see placement.decide's expected_use)."""

from collections.abc import Sequence

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
