"""The CPU room a LimitRange's Pod `max` leaves, spread over the limits this project names only
because the Pod item needs them. Pure.

Under a Pod CPU `max` (or `maxLimitRequestRatio`) every container must name a CPU limit, and
core.limit_ranges.with_pod_limits names its request where it names none (the LimitRanger
refuses the pod otherwise: 403 "maximum cpu usage per Pod is 2.  No limit is specified."). So
a service container asking 100m, and the build container without cpuLimitFactor, were
throttled at their requests though the Pod max left room: a 2 CPU Pod max over a pod asking
1.1 CPU left 900m unusable, and a postgres beside the build ran at 100m for good.

`with_cpu_headroom` raises those limits (never one the template named) so that the containers'
summed limits reach the Pod max, each in proportion to its request, within every other bound
of kubernetes plugin/pkg/admission/limitranger/admission.go PodLimitFunc:
- a Container `max` (maxConstraint) and `maxLimitRequestRatio` (limitRequestRatioConstraint:
  limit / request) per container;
- a Pod `maxLimitRequestRatio`: podLimits / podRequests, each the containers' sum raised to
  any init container's own (max(sum_containers, any_init_container)); init containers are
  left as they are (they run before the others, and their limit is not summed), but for
  a sidecar's (restartPolicy Always: it runs beside them, and 1.28's podLimits adds its
  limit to theirs), which the containers' limits leave room for;
- all compared in milli-values (requestLimitEnforcedValues), so limits are whole millicores,
  the max taken down to one.
Kubernetes 1.27 and before sum a limit only when every container names it, 1.28 and later sum
the limits named (podLimits/addResourceList): with every container naming one both sums are
the same, and a pod where some container names none is left as it is (what the plugin would
sum, after its Container default, is not known here).

Memory is left at its request: the product's rule, memory limit = request (core.pods).
Without a Pod max or ratio (a Pod min only: since Kubernetes 1.28 it needs every container
naming no limit to name one where another does, with_pod_limits) nothing bounds the sum; each
such container's limit is raised to what it would have had, had it named none: the
namespace's Container `default` (the API server's SetDefaults_LimitRangeItem makes it the
`max` where only that is given), or what core.limit_ranges.with_explicit_limits names. Where
it would have had no limit at all, it stays at its request: no bound of the namespace says
how far it could go.
"""

import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from workers.core.limit_ranges import (
    container_extremes, default_limits, limit_ratios, limit_without, pod_extremes, pod_ratios)
from workers.core.limit_ratio import most_within
from workers.core.quantity import cpu_millis, format_cpu, parse_quantity

CPU = "cpu"


class CpuBounds(NamedTuple):
    """The namespace's CPU bounds the spread meets (None: none); the smallest of several."""
    pod_max: str | None = None
    pod_ratio: str | None = None
    container_max: str | None = None
    container_ratio: str | None = None
    container_default: str | None = None


def cpu_bounds(limit_ranges: Iterable[dict[str, Any]]) -> CpuBounds:
    """The CPU bounds of the namespace's LimitRanges (raw JSON objects)."""
    items = list(limit_ranges)
    return CpuBounds(pod_extremes(items)[0].get(CPU), pod_ratios(items).get(CPU),
                     container_extremes(items)[0].get(CPU), limit_ratios(items).get(CPU),
                     default_limits(items).get(CPU))


def _floor_millis(value: Decimal) -> int:
    return math.floor(value * 1000)


def _cpu(container: dict[str, Any], kind: str) -> str | None:
    return (((container.get("resources") or {}).get(kind)) or {}).get(CPU)


def _target(spec: dict[str, Any], requests: int, bounds: CpuBounds) -> int | None:
    """The most the containers' summed CPU limits may reach: the Pod max, and the Pod ratio
    times the pod's request (the containers' sum or an init container's, the larger)."""
    most = []
    if bounds.pod_max is not None:
        most.append(_floor_millis(parse_quantity(bounds.pod_max)))
    if bounds.pod_ratio is not None:
        inits = [cpu_millis(r) for c in spec.get("initContainers") or []
                 if (r := _cpu(c, "requests")) is not None]
        pod_requests = max([requests, *inits])
        most.append(most_within(pod_requests, bounds.pod_ratio))
    return min(most) if most else None


def _cap(request: int, bounds: CpuBounds) -> int | None:
    """The most one container's limit may be: the Container max and ratio (None: no bound)."""
    most = [] if bounds.container_max is None else [
        _floor_millis(parse_quantity(bounds.container_max))]
    if bounds.container_ratio is not None:
        most.append(most_within(request, bounds.container_ratio))
    return min(most) if most else None


def spread(room: int, requests: dict[int, int], caps: dict[int, int]) -> dict[int, int]:
    """`room` millicores spread over the containers (by index) in proportion to their
    `requests`, none given more than its `caps` (the most it may get on top); in whole
    millicores, all of `room` given unless every container is at its cap. Water filling:
    a container the proportion would take above its cap gets its cap, and the rest is shared
    again among the others; the millicores rounding leaves go one each, largest remainder
    first."""
    given = {i: 0 for i in requests}
    open_ = {i for i in requests if caps[i] > 0 and requests[i] > 0}
    left = room
    while open_ and left > 0:
        total = sum(requests[i] for i in open_)
        capped = {i for i in open_ if Decimal(left) * requests[i] / total >= caps[i]}
        if capped:
            for i in capped:
                given[i] = caps[i]
                left -= caps[i]
            open_ -= capped
            continue
        shares = {i: Decimal(left) * requests[i] / total for i in open_}
        for i in open_:
            given[i] = math.floor(shares[i])
        rest = left - sum(given[i] for i in open_)
        for i in sorted(open_, key=lambda i: (given[i] - shares[i], i))[:rest]:
            given[i] += 1  # below its cap: its share was, and not whole
        break
    return given


def with_cpu_headroom(before: dict[str, Any], limited: dict[str, Any], bounds: CpuBounds
                      ) -> dict[str, Any]:
    """`limited` (with_pod_limits of `before`) with the CPU limits with_pod_limits named on
    containers (those `before` names none of) raised: so that the containers' summed CPU
    limits reach the Pod max, within `bounds` (the module's docstring); with no Pod max or
    ratio (a Pod min), each to what the namespace gives a container naming none.
    `limited` itself when there is nothing to raise."""
    spec, old = limited.get("spec") or {}, (before.get("spec") or {}).get("containers") or []
    containers = spec.get("containers") or []
    if len(old) != len(containers) or not containers:
        return limited
    if bounds.pod_max is None and bounds.pod_ratio is None:
        raised = _to_defaults(old, containers, bounds)
    else:
        raised = _to_pod_max(spec, old, containers, bounds)
    if not raised:
        return limited
    out = []
    for i, container in enumerate(containers):
        if i in raised:
            res = container["resources"]
            container = {**container, "resources": {**res, "limits": {
                **res["limits"], CPU: format_cpu(raised[i])}}}
        out.append(container)
    return {**limited, "spec": {**spec, "containers": out}}


def _to_pod_max(spec: dict[str, Any], old: list[dict[str, Any]],
                containers: list[dict[str, Any]], bounds: CpuBounds) -> dict[int, int]:
    """The raised limits (millicores, by container index) that reach the Pod max."""
    requests, limits = [], []
    for container in containers:
        request, limit = _cpu(container, "requests"), _cpu(container, "limits")
        if request is None or limit is None:
            return {}  # not summed alike by every Kubernetes: left as it is
        requests.append(cpu_millis(request))
        limits.append(cpu_millis(limit))
    target = _target(spec, sum(requests), bounds)
    if target is not None:  # a sidecar's limit is summed with them (1.28+ podLimits)
        target -= sum(cpu_millis(limit) for c in spec.get("initContainers") or []
                      if c.get("restartPolicy") == "Always"
                      and (limit := _cpu(c, "limits")) is not None)
    if target is None or target <= sum(limits):
        return {}
    room = target - sum(limits)
    raisable = [i for i, c in enumerate(old) if _cpu(c, "limits") is None]
    caps = {i: room if (cap := _cap(requests[i], bounds)) is None else max(0, cap - limits[i])
            for i in raisable}
    given = spread(room, {i: requests[i] for i in raisable}, caps)
    return {i: limits[i] + more for i, more in given.items() if more}


def _to_defaults(old: list[dict[str, Any]], containers: list[dict[str, Any]],
                 bounds: CpuBounds) -> dict[int, int]:
    """The raised limits (millicores, by container index) under a Pod min alone: what the
    container would have had, had no limit been named for the Pod min (the namespace's
    Container default, or what with_explicit_limits names for it), within the Container max
    and ratio; none where it would have had no limit at all."""
    out = {}
    for i, (was, container) in enumerate(zip(old, containers)):
        request, limit = _cpu(container, "requests"), _cpu(container, "limits")
        if _cpu(was, "limits") is not None or request is None or limit is None:
            continue
        given = limit_without(CPU, request, bounds.container_default, bounds.container_ratio)
        if given is None:
            continue
        most = _floor_millis(parse_quantity(given))
        if (cap := _cap(cpu_millis(request), bounds)) is not None:
            most = min(most, cap)
        if most > cpu_millis(limit):
            out[i] = most
    return out
