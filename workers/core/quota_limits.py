"""The limits a pod's containers name, lowered to what a ResourceQuota on `limits.cpu` or
`limits.memory` allows in all. Pure.

The build container names a CPU limit of its request x cpuLimitFactor (core.pods). A quota
whose hard `limits.cpu` is below the pod's limits (the containers' sum: pkg/quota/v1/evaluator/
core/pods.go podComputeUsageHelper, resourcehelper.PodLimits) refuses the pod whatever else
runs (k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go checkRequest: 403
"exceeded quota: NAME, requested: limits.cpu=6, used: limits.cpu=0, limited: limits.cpu=4"),
and the build failed as never fitting, where a lower limit, down to the request, fits. The
limits are lowered, largest excess over its request first and never below it, as the
LimitRange ratio's are (core.ratio_limits); the requests, which placement counted, are kept.
"""

from collections.abc import Iterable, Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from workers.core.limit_ratio import from_milli, milli_value
from workers.core.quota_usage import Exceeded

# The quota resources a lower limit can meet (a request or a count cannot be lowered here).
LIMIT_RESOURCES = {"limits.cpu": "cpu", "limits.memory": "memory"}


def limit_caps(exceeded: Iterable[Exceeded] | None) -> dict[str, Decimal]:
    """The hard limits (by container resource: cpu, memory) of a quota the pod alone asks more
    of than it allows, when every such resource is a limit; {} when any is not (a request
    over the quota never fits, whatever the limits) or nothing is known."""
    over = [e for e in exceeded or () if e.asked > e.hard]
    if not over or any(e.resource not in LIMIT_RESOURCES for e in over):
        return {}
    caps: dict[str, Decimal] = {}
    for e in over:
        resource = LIMIT_RESOURCES[e.resource]
        caps[resource] = min(e.hard, caps.get(resource, e.hard))
    return caps


def _milli(container: Mapping[str, Any], kind: str, resource: str) -> int | None:
    value = (((container.get("resources") or {}).get(kind)) or {}).get(resource)
    return None if value is None else milli_value(value)


def with_limits_within_quota(manifest: dict[str, Any], caps: Mapping[str, Decimal]
                             ) -> dict[str, Any]:
    """The pod manifest with its containers' limits of each capped resource lowered, largest
    excess over the request first and never below it, until their sum is within the cap. The
    manifest itself when it is within already, or when it cannot be: a container naming a
    limit but no request, the requests' sum over the cap, or an init container's limit over
    it (the pod's limit is the larger of the containers' sum and each init container's)."""
    spec = manifest.get("spec") or {}
    containers = list(spec.get("containers") or [])
    inits = spec.get("initContainers") or []
    changed = False
    for resource, cap in sorted(caps.items()):
        most = int((cap * 1000).to_integral_value(rounding=ROUND_FLOOR))
        limits = [_milli(c, "limits", resource) for c in containers]
        requests = [_milli(c, "requests", resource) or 0 for c in containers]
        sidecars = sum(v for c in inits if c.get("restartPolicy") == "Always"
                       and (v := _milli(c, "limits", resource)) is not None)
        over = sum(v for v in limits if v is not None) + sidecars - most
        if over <= 0:
            continue
        if any(v is not None and r == 0 for v, r in zip(limits, requests)) \
                or sum(min(v, r) for v, r in zip(limits, requests) if v is not None) \
                + sidecars > most \
                or any((v := _milli(c, "limits", resource)) is not None and v > most
                       for c in inits):
            return manifest
        order = sorted((i for i, v in enumerate(limits) if v is not None),
                       key=lambda i: (requests[i] - (limits[i] or 0), i))
        for i in order:
            limit = limits[i]
            assert limit is not None
            cut = min(over, max(0, limit - requests[i]))
            if cut:
                res = containers[i]["resources"]
                containers[i] = {**containers[i], "resources": {**res, "limits": {
                    **res["limits"], resource: from_milli(resource, limit - cut)}}}
                over -= cut
        changed = True
    if not changed:
        return manifest
    return {**manifest, "spec": {**spec, "containers": containers}}
