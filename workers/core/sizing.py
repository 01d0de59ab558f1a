"""How big an agent gets: between the template's min and max, from the free capacity of the
nodes it may run on and the builds already waiting for it.

With headroom a build gets more than its default, up to max, so it finishes sooner. Under
pressure it keeps its default: a smaller CPU request would only let more builds onto nodes that
their real use then saturates (a build without a CPU limit uses what its parallelism takes,
whatever it asked for), and starts none of them sooner than admitting at the default does
(issue 18: in a burst that cost turnaround). Memory is not compressible either: a build below
its need is OOM-killed, not slowed. Both go below the default (never below min) only when
placement finds no node with the default free (see placement.decide). Pure arithmetic.
"""

from workers.core.cluster import Resources
from workers.core.models import PodTemplate

# Free capacity of at least this many times the demand (waiting builds + this one, at their
# default) counts as headroom; the size grows with the headroom beyond it.
HEADROOM_FACTOR = 2.0


def template_min(template: PodTemplate) -> Resources:
    return Resources(template.cpu.min, template.memory.min)


def template_default(template: PodTemplate) -> Resources:
    return Resources(template.cpu.default, template.memory.default)


def template_max(template: PodTemplate) -> Resources:
    return Resources(template.cpu.max, template.memory.max)


def _scale(default: int, low: int, high: int, free: int, demand: int,
           shrink: bool = True, grow: bool = True) -> int:
    if demand <= 0:
        return default
    ratio = free / demand
    if ratio >= HEADROOM_FACTOR and grow:
        value = int(default * ratio / HEADROOM_FACTOR)
    elif ratio < 1 and shrink:
        value = int(default * ratio)
    else:
        value = default
    return max(low, min(high, value))


def choose_size(template: PodTemplate, *, free_total: Resources,
                waiting_ahead: int = 0) -> Resources:
    """The size to ask for, given the free capacity summed over the nodes the build may use
    and how many builds wait before it. Always min <= size <= max, and deterministic."""
    default, waiting = template_default(template), max(0, waiting_ahead) + 1
    return Resources(
        _scale(default.cpu_millis, template.cpu.min, template.cpu.max,
               free_total.cpu_millis, default.cpu_millis * waiting, shrink=False,
               grow=template.cpu_limit_factor is not None),
        _scale(default.memory_bytes, template.memory.min, template.memory.max,
               free_total.memory_bytes, default.memory_bytes * waiting, shrink=False))


PRESSURE, HEADROOM = "pressure", "headroom"


def moved_by(default: Resources, size: Resources) -> str | None:
    """What moved a build's size from its default (the template's, its history's or its
    hint's): `pressure` when it got less CPU or memory (no node had the default free),
    `headroom` when it got more; None when it got its default. Shown on the status page and
    logged beside where the default came from (issue 21)."""
    if size.cpu_millis < default.cpu_millis or size.memory_bytes < default.memory_bytes:
        return PRESSURE
    if size.cpu_millis > default.cpu_millis or size.memory_bytes > default.memory_bytes:
        return HEADROOM
    return None
