"""A build's default size from its job's history (workers.core.usage_history).

Once a job has `min_builds` builds on record, its default memory is the p95 of their peaks
times a safety margin, and its default CPU the p90 of their CPU use, but never more than the
template's default (CPU from history only goes down); both rounded up to steps a person reads
easily and clamped into the template's min..max. CPU is compressible: a build that uses more
than it asked for slows when its node is busy, it is not killed, while a request above the
default holds cores that admission by requests (placement.decide, under pressure) counts, so
fewer builds start: in the simulator's burst the p90 up to max (2 cores where the default is
1) gave a paired mean turnaround 7-13% above c's (issue 21). Memory is not compressible, so
it follows the job's peaks both ways. An OOM kill sets a
floor (twice the killed size, up to max) that holds until `min_builds` clean builds have been
seen. Beside `min_builds` builds ever, the histogram must hold two builds' weight
(recent_builds, HISTORY_WEIGHT): after a quiet week the old builds have halved seven times,
and the first build back, alone the p95, gets its template's default instead; one build a
day holds about two (1 + 1/2 + 1/4 ...), so a nightly job is still sized from its history. Sizing and placement then treat this default as they treat
the template's (headroom, pressure), and a size hint still wins. Pure.
"""

import math
from dataclasses import dataclass
from enum import StrEnum

from workers.core.models import PodTemplate
from workers.core.usage_history import UsageHistory

DEFAULT_MIN_BUILDS = 5
DEFAULT_MEMORY_MARGIN = 1.15
# The largest margin a setting may give: any above the ratio of the template's max to a
# job's peak sizes every job at max, and one near 1e300 overflowed the float to infinity,
# which no rounding can make an integer (every sized build's provision then failed)
MAX_MEMORY_MARGIN = 10.0
MEMORY_PERCENTILE = 0.95
CPU_PERCENTILE = 0.90
MEMORY_STEP_BYTES = 32 * 2**20
CPU_STEP_MILLIS = 50
# The weight the histogram must hold, beside `min_builds` builds ever, so that no one build is
# the p95 alone: two builds, less half a build's slack (builds an hour apart weigh a little
# under one each, half-life a day). Five builds' weight (`min_builds`) was tried: every job
# building less than about three times a day (a nightly job holds about two) stayed at its
# template's default for good.
HISTORY_WEIGHT = 1.5


class SizeSource(StrEnum):
    """Where a build's default size came from (logged, and shown on the status page)."""

    TEMPLATE = "template"
    HISTORY = "history"
    OOM = "oom"


@dataclass(frozen=True)
class Recommendation:
    cpu_millis: int
    memory_bytes: int
    source: SizeSource
    builds: int


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step - 1e-9)) * step


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def recommend(template: PodTemplate, history: UsageHistory, *,
              min_builds: int = DEFAULT_MIN_BUILDS,
              memory_margin: float = DEFAULT_MEMORY_MARGIN) -> Recommendation:
    """The default size for the next build of a job with this history."""
    cpu, memory = template.cpu.default, template.memory.default
    source = SizeSource.TEMPLATE
    if history.builds >= min_builds and recent_builds(history) >= min(
            HISTORY_WEIGHT, min_builds):
        peak = history.memory.percentile(MEMORY_PERCENTILE)
        memory = _clamp(_round_up(peak * memory_margin, MEMORY_STEP_BYTES),
                        template.memory.min, template.memory.max)
        cpu = min(template.cpu.default, cpu_use(template, history))
        source = SizeSource.HISTORY
    floor = history.oom_floor_bytes
    if floor and history.builds_since_oom < min_builds and floor > memory:
        memory = _clamp(floor, template.memory.min, template.memory.max)
        source = SizeSource.OOM
    return Recommendation(cpu, memory, source, history.builds)


# Jenkins results (hudson.model.Result) of runs Jenkins ended before their steps ran through:
# FAILURE (a compile error, a failing step), ABORTED (a user's cancel, a timeout), NOT_BUILT.
# SUCCESS and UNSTABLE (tests failed, the build ran through) teach; so does a run whose
# result is unknown (released without one), as before.
ENDED_EARLY = frozenset({"FAILURE", "ABORTED", "NOT_BUILT"})


def teaches(history: UsageHistory, *, peak_memory_bytes: int, result: str) -> bool:
    """Whether a finished run (not OOM-killed) goes into its job's history. One that Jenkins
    ended early may have stopped before the steps that use the memory: its low peak taught a
    new job with broken pushes a tenth of its size (its first good build OOM-killed), and
    after an OOM kill counted as a clean build, lifting the kill's floor. It teaches only when
    it peaked above the job's p95 (it may have failed of that memory)."""
    if (result or "").upper() not in ENDED_EARLY:
        return True
    return history.builds > 0 and peak_memory_bytes > history.memory.percentile(
        MEMORY_PERCENTILE)


def recent_builds(history: UsageHistory) -> float:
    """How many builds the job's histogram holds, each weighing as the histogram weighs it
    (1 at its end, halving every half-life before the job's latest build): the lifetime
    count said "enough history" for ever, so after a quiet week the first build back held
    nearly all the weight and was the p95 alone."""
    return history.memory.total()


def cpu_use(template: PodTemplate, history: UsageHistory) -> int:
    """The p90 of the job's CPU use, rounded up and clamped into the template's min..max:
    what its builds use, which the recommendation takes only up to the template's default."""
    return _clamp(_round_up(history.cpu.percentile(CPU_PERCENTILE), CPU_STEP_MILLIS),
                  template.cpu.min, template.cpu.max)


def with_default(template: PodTemplate, recommendation: Recommendation) -> PodTemplate:
    """The template as one build sizes from: the recommendation as its default, CPU free to
    grow with headroom up to the template's max, memory not: more memory than the job peaks
    at does not make it faster, and the recommendation has its margin already (growing it
    would bring back the slack the history took away). Pressure may still shrink either."""
    return template.model_copy(update={
        "cpu": template.cpu.model_copy(update={"default": recommendation.cpu_millis}),
        "memory": template.memory.model_copy(update={"default": recommendation.memory_bytes,
                                                     "max": recommendation.memory_bytes})})
