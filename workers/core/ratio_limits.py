"""The limits a pod's containers name, lowered to what the agent namespace's LimitRange
maxLimitRequestRatio admits, per container and per pod. Pure.

The build container names a CPU limit of its request x cpuLimitFactor (core.pods); a
namespace whose ratio is below the factor refused every pod of the template (kubernetes
plugin/pkg/admission/limitranger/admission.go limitRequestRatioConstraint: 403 "cpu max limit
to request ratio per Container is 2, but provided ratio is 3.000000.", and the same "per Pod"
on the pod's sums), and its builds failed as pod_refused. The limit is lowered to the most the
ratio admits, as the API server checks it (core.limit_ratio); the request, which placement
counted, is kept.
"""

from collections.abc import Iterable
from typing import Any

from workers.core.limit_ranges import (
    CONTAINER, POD, POD_SUMMED, items_of, limit_ratios, with_limits_added)
from workers.core.limit_ratio import from_milli, milli_value, most_within, ratio_met


def _over_ratio(requests: dict[str, str], limits: dict[str, str], ratios: dict[str, str]
                ) -> dict[str, str]:
    """The limits a container names above what a ratio admits for its request, each lowered
    to the most it admits (core.limit_ratio)."""
    out = {}
    for resource, ratio in sorted(ratios.items()):
        if resource not in requests or resource not in limits:
            continue
        request = milli_value(requests[resource])
        if request > 0 and not ratio_met(request, milli_value(limits[resource]), ratio):
            out[resource] = from_milli(resource, most_within(request, ratio))
    return out


def limits_over_ratio(manifest: dict[str, Any], ratios: dict[str, str]
                      ) -> list[tuple[str, str, str, str]]:
    """(container, resource, its limit, the most the ratio admits) for every container and
    init container naming a limit that the namespace's maxLimitRequestRatio refuses for its
    request (with_limits_within_ratios lowers them)."""
    spec = manifest.get("spec") or {}
    return [(c.get("name", ""), r, ((c.get("resources") or {}).get("limits") or {})[r], most)
            for field in ("initContainers", "containers") for c in spec.get(field) or []
            for r, most in _over_ratio((c.get("resources") or {}).get("requests") or {},
                                       (c.get("resources") or {}).get("limits") or {},
                                       ratios).items()]


def with_limits_within_ratios(manifest: dict[str, Any], ratios: dict[str, str]
                              ) -> dict[str, Any]:
    """The pod manifest with every limit a container names above the namespace's
    maxLimitRequestRatio times its request lowered to the most the ratio admits: the build
    container's CPU limit is its request x cpuLimitFactor (core.pods), and a factor above the
    namespace's ratio had every pod refused, 403 "cpu max limit to request ratio per
    Container is 2, but provided ratio is 3.000000." (limitRequestRatioConstraint), its
    build failed. The request is kept (it is the size placement counted); the limit is the
    most the namespace allows. The manifest itself when no limit is above a ratio."""
    if not ratios:
        return manifest
    return with_limits_added(manifest, lambda requests, limits: _over_ratio(
        requests, limits, ratios))


def _cpu_milli(container: dict[str, Any], kind: str) -> int | None:
    value = (((container.get("resources") or {}).get(kind)) or {}).get("cpu")
    return None if value is None else milli_value(value)


def with_pod_cpu_within_ratio(manifest: dict[str, Any], ratio: str | None) -> dict[str, Any]:
    """The pod manifest with the CPU limits its containers name lowered, largest excess over
    the request first and never below it, until their sum meets a Pod item's CPU
    maxLimitRequestRatio: the pod's limits over its request (the containers' sum, or an init
    container's when larger), as PodLimitFunc's Pod branch checks them
    (limitRequestRatioConstraint on podRequests/podLimits, milli-values, float64). The build
    container's limit is its request x cpuLimitFactor, the others' their requests
    (core.limit_ranges.with_pod_limits), so a factor above a Pod ratio had every pod
    refused, 403 "cpu max limit to request ratio per Pod is 2, but provided ratio is
    2.500000.". A sidecar's
    (restartPolicy Always) limit is summed with them (1.28+ podLimits) and kept. The
    manifest itself when some container names no CPU limit or request (summed unlike by
    Kubernetes versions, left to the API server) or the sum meets the ratio."""
    spec = manifest.get("spec") or {}
    containers = spec.get("containers") or []
    if ratio is None or not containers:
        return manifest
    requests = [_cpu_milli(c, "requests") for c in containers]
    limits = [_cpu_milli(c, "limits") for c in containers]
    if any(v is None for v in requests + limits):
        return manifest
    asked = [r for r in requests if r is not None]
    named = [v for v in limits if v is not None]
    inits = spec.get("initContainers") or []
    pod_request = max([sum(asked)] + [r for c in inits
                                      if (r := _cpu_milli(c, "requests")) is not None])
    sidecars = sum(v for c in inits if c.get("restartPolicy") == "Always"
                   and (v := _cpu_milli(c, "limits")) is not None)
    over = sum(named) + sidecars - most_within(pod_request, ratio)
    if over <= 0:
        return manifest
    lowered = list(named)
    for i in sorted(range(len(named)), key=lambda i: (asked[i] - named[i], i)):
        cut = min(over, max(0, named[i] - asked[i]))
        lowered[i] -= cut
        over -= cut
    out = []
    for container, was, now in zip(containers, named, lowered):
        if now != was:
            res = container["resources"]
            container = {**container, "resources": {**res, "limits": {
                **res["limits"], "cpu": from_milli("cpu", now)}}}
        out.append(container)
    return {**manifest, "spec": {**spec, "containers": out}}


def unrequested_ratios(manifest: dict[str, Any], limit_ranges: Iterable[dict[str, Any]]
                       ) -> list[str]:
    """The Container maxLimitRequestRatios the pod cannot meet, as "RESOURCE
    maxLimitRequestRatio Q (none asked by NAME, ...)": a ratio refuses a container asking
    none of its resource, 403 "ephemeral-storage max limit to request ratio per Container is
    2, but no request is specified or request is 0." (limitRequestRatioConstraint), and no
    limit named helps. The LimitRanger gives a container asking none the `defaultRequest` of
    a Container item first (stored by the API server from the item's default, max or min:
    SetDefaults_LimitRangeItem), and the item's `default` limit; a defaultRequest alone (one
    stored from a `min`, no `default` or `max`) leaves it with a request and no limit, 403
    "..., but no limit is specified or limit is 0.", and nothing of ours names that limit
    (core.limit_ranges.with_explicit_limits names limits of what a container asks). So only
    a resource some item gives both a default request and a default limit is left out. Our
    containers all ask cpu and memory; ephemeral-storage and extended resources only the
    build container asks, when its template says so."""
    items = items_of(limit_ranges, CONTAINER)
    defaulted = {r for item in items for r in (item.get("defaultRequest") or {})} & {
        r for item in items for r in (item.get("default") or {})}
    spec = manifest.get("spec") or {}
    found = []
    for resource, ratio in sorted(limit_ratios(limit_ranges).items()):
        if resource in defaulted:
            continue
        names = [c.get("name", "") for field in ("initContainers", "containers")
                 for c in spec.get(field) or []
                 if milli_value(((c.get("resources") or {}).get("requests") or {}).get(
                     resource, 0)) == 0]
        if names:
            found.append(f"{resource} maxLimitRequestRatio {ratio} (none asked by "
                         f"{', '.join(names)})")
    return found


def unsummed_pod_bounds(manifest: dict[str, Any], limit_ranges: Iterable[dict[str, Any]]
                        ) -> list[str]:
    """The Pod max, min and maxLimitRequestRatio on a resource other than cpu and memory
    (core.limit_ranges.with_pod_limits names those on every container) that the pod's sums
    lack, as "RESOURCE max Q (...)": PodLimitFunc's Pod branch checks podLimits and
    podRequests, and a missing one is refused, 403 "maximum ephemeral-storage usage per Pod is
    10Gi.  No limit is specified." (maxConstraint; minConstraint "No request is specified.",
    limitRequestRatioConstraint "no request/limit is specified"). Kubernetes 1.28 and later
    sum what any container or init container names (podLimits, addResourceList); 1.27 and
    before only what every container names, or an init container (`sum`: "if a key is not in
    each input, then the output resource list will omit the key"). A container's own
    resources count, and what a Container item's default or defaultRequest gives it. Our
    containers name no ephemeral-storage limit, and only the build container asks it or an
    extended resource, so such a bound refuses every pod, its build failed (pod_refused)."""
    items = items_of(limit_ranges, CONTAINER)
    given = {"limits": {r for item in items for r in (item.get("default") or {})},
             "requests": {r for item in items for r in (item.get("defaultRequest") or {})}}
    spec = manifest.get("spec") or {}

    def names(container: dict[str, Any], kind: str, resource: str) -> bool:
        own = ((container.get("resources") or {}).get(kind)) or {}
        return resource in own or resource in given[kind]

    def lacking(kind: str, resource: str) -> str | None:
        containers, inits = spec.get("containers") or [], spec.get("initContainers") or []
        if any(names(c, kind, resource) for c in inits) or containers and all(
                names(c, kind, resource) for c in containers):
            return None
        what = "request" if kind == "requests" else "limit"
        if any(names(c, kind, resource) for c in containers):
            return f"not every container names a {what} of it: Kubernetes 1.27 and before " \
                   "sum none"
        return f"no container names a {what} of it"

    found = []
    for item in items_of(limit_ranges, POD):
        for bound, kinds in (("max", ("limits",)), ("min", ("requests",)),
                             ("maxLimitRequestRatio", ("requests", "limits"))):
            for resource, value in sorted((item.get(bound) or {}).items()):
                if resource in POD_SUMMED:
                    continue
                why = [w for kind in kinds if (w := lacking(kind, resource)) is not None]
                if why:
                    found.append(f"{resource} {bound} {value} ({'; '.join(why)})")
    return found
