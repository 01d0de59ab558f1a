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

A Pod item bounds the pod's sum instead (PodLimitFunc's `limitType == api.LimitTypePod`
branch: the containers' requests and limits summed, each raised to any init container's own;
403 "maximum memory usage per Pod is 4Gi, but limit is 6442450944."). `within_pod` narrows
the build's size so that the sum meets it: the build containers' requests and limits (core.
podsize: one with injection, else each one marked build) beside the fixed requests of the
others, every one of which is given a limit equal to its request where it names none
(core.limit_ranges.with_pod_limits). The init container asks the agent's share, within the
build container's, so it never raises the pod's sum.
"""

import math
from decimal import Decimal
from typing import Any

from workers.core import podsize
from workers.core.models import CpuRange, MemoryRange, PodTemplate
from workers.core.quantity import cpu_millis, memory_bytes, parse_quantity


def _cpu_ceiling(most: int, factor: float | None) -> int:
    """The largest CPU request (millicores) whose container's limit, request x factor rounded
    up in exact decimal (core.pods, quantity.times_factor), stays within `most`."""
    if factor is None:
        return most
    return math.floor(Decimal(most) / Decimal(str(factor)))


def _narrowed(low: int, default: int, high: int, floor: int | None, ceiling: int | None
              ) -> tuple[int, int, int] | None:
    """(min, default, max) within floor..ceiling, None when the range cannot meet them (or
    already does, unchanged)."""
    new_low = max(low, floor) if floor is not None else low
    new_high = min(high, ceiling) if ceiling is not None else high
    if new_low > new_high or (new_low, new_high) == (low, high):
        return None
    return new_low, min(max(default, new_low), new_high), new_high


def _extra_memory(template: PodTemplate) -> tuple[int, int]:
    """What the build container asks beside its size, for a max and for a min: the agent's
    memory (with injection) and the memory-backed volumes' sizeLimits, which go to the first
    build container alone (core.pods._add_extras): a max binds that one, a min a second build
    container without them (when there is one)."""
    agent = template.agent_memory if template.agent_injection else 0
    tmpfs = podsize.memory_volumes(template)
    return agent + tmpfs, agent + (tmpfs if len(template.build_containers) <= 1 else 0)


def within(template: PodTemplate, most: dict[str, str], least: dict[str, str]) -> PodTemplate:
    """The template with its cpu and memory ranges narrowed so that its build container's
    requests and limits meet the per-container `most` (max) and `least` (min) per resource
    (Kubernetes quantities); the template itself when nothing changes or it cannot be met."""
    if not most and not least:
        return template
    extra_cpu = template.agent_cpu if template.agent_injection else 0
    extra_memory, extra_memory_least = _extra_memory(template)
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
        memory_bytes(least["memory"]) - extra_memory_least if "memory" in least else None,
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
    extra_memory, extra_memory_least = _extra_memory(template)
    found = []
    if "cpu" in most and template.cpu.min > _cpu_ceiling(
            cpu_millis(most["cpu"]), template.cpu_limit_factor) - extra_cpu:
        found.append(f"cpu max {most['cpu']}")
    if "cpu" in least and template.cpu.max < cpu_millis(least["cpu"]) - extra_cpu:
        found.append(f"cpu min {least['cpu']}")
    if "memory" in most and template.memory.min > memory_bytes(most["memory"]) - extra_memory:
        found.append(f"memory max {most['memory']}")
    if "memory" in least and (template.memory.max
                              < memory_bytes(least["memory"]) - extra_memory_least):
        found.append(f"memory min {least['memory']}")
    return found


def _pod_ceilings(template: PodTemplate, most: dict[str, str]
                  ) -> tuple[int | None, int | None]:
    """The largest build size (cpu millis, memory bytes) whose pod's summed limits stay
    within the Pod `most`: per build container at most (max - the others) / their number,
    its CPU limit its request times cpuLimitFactor when set (core.pods._resources)."""
    n, fixed = max(1, len(template.build_containers)), podsize.fixed(template)
    extra_cpu = template.agent_cpu if template.agent_injection else 0
    cpu = memory = None
    if "cpu" in most:
        per = (cpu_millis(most["cpu"]) - fixed.cpu_millis + n * extra_cpu) // n
        cpu = _cpu_ceiling(max(per, 0), template.cpu_limit_factor) - extra_cpu
    if "memory" in most:
        memory = (memory_bytes(most["memory"]) - fixed.memory_bytes) // n
    return cpu, memory


def _pod_floors(template: PodTemplate, least: dict[str, str]
                ) -> tuple[int | None, int | None]:
    """The least build size whose pod's summed requests meet the Pod `least`."""
    n, fixed = max(1, len(template.build_containers)), podsize.fixed(template)
    cpu = -((fixed.cpu_millis - cpu_millis(least["cpu"])) // n) if "cpu" in least else None
    memory = (-((fixed.memory_bytes - memory_bytes(least["memory"])) // n)
              if "memory" in least else None)
    return cpu, memory


def within_pod(template: PodTemplate, most: dict[str, str], least: dict[str, str]
               ) -> PodTemplate:
    """The template with its cpu and memory ranges narrowed so that its pod's summed requests
    and limits meet the Pod-type `most` (max) and `least` (min) per resource; the template
    itself when nothing changes or it cannot be met (the API server refuses it then)."""
    if not most and not least:
        return template
    (cpu_high, memory_high), (cpu_low, memory_low) = (_pod_ceilings(template, most),
                                                      _pod_floors(template, least))
    update: dict[str, Any] = {}
    cpu = _narrowed(template.cpu.min, template.cpu.default, template.cpu.max, cpu_low, cpu_high)
    if cpu is not None:
        update["cpu"] = CpuRange.model_construct(min=cpu[0], default=cpu[1], max=cpu[2])
    memory = _narrowed(template.memory.min, template.memory.default, template.memory.max,
                       memory_low, memory_high)
    if memory is not None:
        update["memory"] = MemoryRange.model_construct(min=memory[0], default=memory[1],
                                                       max=memory[2])
    return template.model_copy(update=update) if update else template


def unmet_pod(template: PodTemplate, most: dict[str, str], least: dict[str, str]
              ) -> list[str]:
    """The Pod-type bounds the template's range cannot meet, as "RESOURCE max Q" /
    "RESOURCE min Q" (as `unmet` names the per-container ones)."""
    (cpu_high, memory_high), (cpu_low, memory_low) = (_pod_ceilings(template, most),
                                                      _pod_floors(template, least))
    found = []
    if cpu_high is not None and template.cpu.min > cpu_high:
        found.append(f"cpu max {most['cpu']}")
    if cpu_low is not None and template.cpu.max < cpu_low:
        found.append(f"cpu min {least['cpu']}")
    if memory_high is not None and template.memory.min > memory_high:
        found.append(f"memory max {most['memory']}")
    if memory_low is not None and template.memory.max < memory_low:
        found.append(f"memory min {least['memory']}")
    return found


def _fixed(template: PodTemplate) -> dict[str, int]:
    """What the build container asks that no sizing changes: its ephemeral-storage request
    (bytes) and its extended resources (requested and limited alike; core.pods._add_extras)."""
    out = dict(template.resources)
    if template.ephemeral_storage:
        out["ephemeral-storage"] = template.ephemeral_storage
    return out


def unmet_fixed(template: PodTemplate, most: dict[str, str], least: dict[str, str]
                ) -> list[str]:
    """The bounds (`most`: max, `least`: min, per container or per pod) that the template's
    ephemeralStorage or extended resources break, as "RESOURCE max Q" / "RESOURCE min Q":
    one build container asks them, and no other container of ours does, so the pod's sum is
    that container's own (maxConstraint: "maximum ephemeral-storage usage per Container is
    1Gi, but request is 2Gi."; minConstraint alike). Nothing narrows them: the template asks
    what its builds need, and every pod of it is refused, its build failed (pod_refused)."""
    found = []
    for resource, asked in sorted(_fixed(template).items()):
        if resource in most and asked > parse_quantity(most[resource]):
            found.append(f"{resource} max {most[resource]}")
        if resource in least and asked < parse_quantity(least[resource]):
            found.append(f"{resource} min {least[resource]}")
    return found
