"""A template's size range narrowed to what the agent namespace's LimitRanges let a container
ask for, before sizing and placement. Pure: the LimitRanges' per-container max and min come in
as plain data (core.limit_ranges.container_extremes, read by adapters.kube_limit_ranges).

The API server's LimitRanger refuses a container whose request or limit is above a
Container item's `max`, or whose request is below its `min` (kubernetes
plugin/pkg/admission/limitranger/admission.go PodLimitFunc: maxConstraint, minConstraint;
403 "maximum cpu usage per Container is 2, but limit is 4."). Sizing picks every build's size
within the template's min..max from live metrics anyway, so a template whose default (or max)
is above a namespace's max is sized down to it rather than refused, and one below a min is
sized up to it, within the template's range. Only a bound the template's range cannot meet (a
max below what the build needs at least, its min; a min above its max) leaves the template as
it is: the pod is refused as before, and the build fails naming the bound (pod_refused).

The build container is what is narrowed: with agent injection it runs the agent too and asks
the agent's requests on top of the build's size (core.pods._injected); its memory limit is its
request and its CPU limit the request times cpuLimitFactor, when set (core.pods._resources);
with no CPU limit of its own it gets the LimitRange's default, which the API server keeps at
most its max (pkg/apis/core/validation ValidateLimitRange: default <= max). The agent's own
container and service containers ask fixed amounts, not narrowed here.
Pod-type items (a pod's sum) are not met.
"""

import math
from typing import Any

from workers.core.models import CpuRange, MemoryRange, PodTemplate
from workers.core.quantity import cpu_millis, memory_bytes


def _cpu_ceiling(most: int, factor: float | None) -> int:
    """The largest CPU request (millicores) whose container's limit stays within `most`."""
    if factor is None:
        return most
    asked = math.floor(most / factor)
    while asked > 0 and math.ceil(asked * factor) > most:  # float rounding at the edge
        asked -= 1
    return asked


def _narrowed(low: int, default: int, high: int, floor: int | None, ceiling: int | None
              ) -> tuple[int, int, int] | None:
    """(min, default, max) within floor..ceiling, None when the range cannot meet them (or
    already does, unchanged)."""
    new_low = max(low, floor) if floor is not None else low
    new_high = min(high, ceiling) if ceiling is not None else high
    if new_low > new_high or (new_low, new_high) == (low, high):
        return None
    return new_low, min(max(default, new_low), new_high), new_high


def within(template: PodTemplate, most: dict[str, str], least: dict[str, str]) -> PodTemplate:
    """The template with its cpu and memory ranges narrowed so that its build container's
    requests and limits meet the per-container `most` (max) and `least` (min) per resource
    (Kubernetes quantities); the template itself when nothing changes or it cannot be met."""
    if not most and not least:
        return template
    extra_cpu = template.agent_cpu if template.agent_injection else 0
    extra_memory = template.agent_memory if template.agent_injection else 0
    update: dict[str, Any] = {}
    cpu = _narrowed(
        template.cpu.min, template.cpu.default, template.cpu.max,
        cpu_millis(least["cpu"]) - extra_cpu if "cpu" in least else None,
        _cpu_ceiling(cpu_millis(most["cpu"]), template.cpu_limit_factor) - extra_cpu
        if "cpu" in most else None)
    if cpu is not None:
        update["cpu"] = CpuRange.model_construct(min=cpu[0], default=cpu[1], max=cpu[2])
    memory = _narrowed(
        template.memory.min, template.memory.default, template.memory.max,
        memory_bytes(least["memory"]) - extra_memory if "memory" in least else None,
        memory_bytes(most["memory"]) - extra_memory if "memory" in most else None)
    if memory is not None:
        update["memory"] = MemoryRange.model_construct(min=memory[0], default=memory[1],
                                                       max=memory[2])
    return template.model_copy(update=update) if update else template


def unmet(template: PodTemplate, most: dict[str, str], least: dict[str, str]) -> list[str]:
    """The per-container bounds (`most`: max, `least`: min) the template's range cannot meet,
    each as "RESOURCE max Q" / "RESOURCE min Q": every pod of it is refused naming that
    bound, which `within` leaves for the API server to refuse (check-config --live names it
    before the first build fails so)."""
    extra_cpu = template.agent_cpu if template.agent_injection else 0
    extra_memory = template.agent_memory if template.agent_injection else 0
    found = []
    if "cpu" in most and template.cpu.min > _cpu_ceiling(
            cpu_millis(most["cpu"]), template.cpu_limit_factor) - extra_cpu:
        found.append(f"cpu max {most['cpu']}")
    if "cpu" in least and template.cpu.max < cpu_millis(least["cpu"]) - extra_cpu:
        found.append(f"cpu min {least['cpu']}")
    if "memory" in most and template.memory.min > memory_bytes(most["memory"]) - extra_memory:
        found.append(f"memory max {most['memory']}")
    if "memory" in least and template.memory.max < memory_bytes(least["memory"]) - extra_memory:
        found.append(f"memory min {least['memory']}")
    return found
