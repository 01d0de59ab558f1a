"""The API server's LimitRanger admission plugin and the pod validation after it, for the kmock
API server (tests.support.kmock_cluster): a pod created in a namespace with LimitRanges gets
their defaults, and is refused as the real API server refuses it.

Sources (kubernetes/kubernetes):
- pkg/apis/core/v1/defaults.go SetDefaults_LimitRangeItem: a Container item's `default` limit
  is its `max` when not given, its `defaultRequest` the `default`, else the `min`; the stored
  LimitRange carries them.
- plugin/pkg/admission/limitranger/admission.go: defaultContainerResourceRequirements and
  mergeContainerResources give every container and init container the `default` limit and
  `defaultRequest` of each resource it names none of (annotating the pod
  kubernetes.io/limit-ranger); PodLimitFunc then checks each container's min and max (maxConstraint:
  "maximum cpu usage per Container is 2, but limit is 4.") and maxLimitRequestRatio
  (limitRequestRatioConstraint: "cpu max limit to request ratio per Container is 4, but no
  limit is specified or limit is 0." / "..., but provided ratio is 8.000000.", compared in
  milli-values and float64), every error of the pod at once
  (utilerrors.NewAggregate), refused as 403 Forbidden (admission.NewForbidden: 'pods "NAME"
  is forbidden: ...').
- pkg/apis/core/validation/validation.go ValidateResourceRequirements, after admission: a
  request above its limit is 422 Invalid, 'Pod "NAME" is invalid:
  spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu
  limit of 500m' (the Kubernetes docs, "Limit Ranges", show this very case).
- The same PodLimitFunc, its `limitType == api.LimitTypePod` branch: a Pod item's min, max
  and maxLimitRequestRatio are checked (the same minConstraint, maxConstraint and
  limitRequestRatioConstraint, "per Pod") against the pod's requests and limits: each the
  sum over its containers (`sum`: a resource some container names none of is left out of the
  sum, so "maximum cpu usage per Pod is 2.  No limit is specified."), then raised to any init
  container's own (max(sum_containers, any_init_container), which also gives a resource the
  sum left out the init container's value). The sum is formatted as a new DecimalSI quantity
  (resource.NewMilliQuantity for cpu, NewQuantity else: "6442450944", not "6Gi"); an init
  container's value keeps its own. A Pod item has no `default` (ValidateLimitRange refuses
  one), so it sets nothing.
  That `sum` is Kubernetes 1.27's and before. Since 1.28 (PR #116429, SidecarContainers) the
  Pod branch sums with podRequests/podLimits and addResourceList instead: a container naming
  no limit of a resource is left out of the sum, not the resource, so the sum of the limits
  the other containers name is checked: "minimum cpu usage per Pod is 2, but limit is
  1800m." for a pod whose requests meet the min. Those podRequests/podLimits also add a
  restartable init container's (restartPolicy Always, a sidecar, KEP-753) to the sum. A pod is refused here when either refuses it
  (the newer's words first), as strict as the clusters of both.
"""

import copy
import math
from decimal import Decimal
from typing import Any

from workers.core.quantity import parse_quantity

ANNOTATION = "kubernetes.io/limit-ranger"


def defaulted(limit_range: dict[str, Any]) -> dict[str, Any]:
    """The LimitRange as the API server stores it (SetDefaults_LimitRangeItem)."""
    out = copy.deepcopy(limit_range)
    for item in (out.get("spec") or {}).get("limits") or []:
        if item.get("type") != "Container":
            continue
        default = item.setdefault("default", {})
        request = item.setdefault("defaultRequest", {})
        for key, value in (item.get("max") or {}).items():
            default.setdefault(key, value)
        for key, value in default.items():
            request.setdefault(key, value)
        for key, value in (item.get("min") or {}).items():
            request.setdefault(key, value)
    return out


def _ratio(request: str | None, limit: str | None, most: str) -> str | None:
    """What breaks a maxLimitRequestRatio (limitRequestRatioConstraint), None when met: the
    request, limit and ratio as milli-values (requestLimitEnforcedValues, MilliValue rounds
    up), the limit over the request in float64, times 1000, above the ratio's milli-value
    refuses. The float64 division is the API server's: 2007m over 1000m is
    2007.0000000000002 > 2007, so a ratio of 2.007 refuses the limit its exact value meets."""
    def milli(text: str) -> int:
        return math.ceil(parse_quantity(text) * 1000)
    if request is None or milli(request) == 0:
        return "no request is specified or request is 0"
    if limit is None or milli(limit) == 0:
        return "no limit is specified or limit is 0"
    observed = float(milli(limit)) / float(milli(request))
    if observed * 1000 > float(milli(most)):
        return f"provided ratio is {observed:f}"  # Go %f
    return None


_SI = {-3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}


def _decimal_si(resource: str, value: Decimal) -> str:
    """A sum as resource.NewMilliQuantity(total, DecimalSI) / NewQuantity(total, DecimalSI)
    prints it (canonical form: the largest power of 1000 that divides it; cpu summed in
    whole millis, any other in whole units)."""
    units = int(value * 1000) if resource == "cpu" else int(value) * 1000
    if units == 0:
        return "0"
    exponent = -3
    while units % 1000 == 0 and exponent < 18:
        units, exponent = units // 1000, exponent + 3
    return f"{units}{_SI[exponent]}"


def _pod_values(spec: dict[str, Any], kind: str, every: bool = True) -> dict[str, str]:
    """The pod's requests or limits (`kind`) as PodLimitFunc's Pod branch computes them:
    `every`, 1.27's `sum` (a key some container lacks left out); else 1.28's addResourceList
    (summed over the containers naming it; printed alike here, Quantity.Add keeping the first
    one's format on the real server)."""
    containers = spec.get("containers") or []
    lists = [((c.get("resources") or {}).get(kind) or {}) for c in containers]
    out: dict[str, str] = {}
    for key in {k for values in lists for k in values}:
        if not every or all(key in values for values in lists):
            lists_of_key = [values for values in lists if key in values]
            # summed as MilliValue for cpu, Value (whole units, rounded up) for the others
            scale = 1000 if key == "cpu" else 1
            total = sum((Decimal(math.ceil(parse_quantity(values[key]) * scale))
                         for values in lists_of_key), Decimal(0)) / scale
            out[key] = _decimal_si(key, total)
    if not every:
        return _with_sidecars(spec, kind, out)
    for init in spec.get("initContainers") or []:
        for key, value in (((init.get("resources") or {}).get(kind)) or {}).items():
            if key not in out or parse_quantity(value) > parse_quantity(out[key]):
                out[key] = value
    return out


def _with_sidecars(spec: dict[str, Any], kind: str, summed: dict[str, str]) -> dict[str, str]:
    """1.28's podRequests/podLimits over the init containers: a restartable one
    (restartPolicy Always, a sidecar: it runs beside the containers) is added to the sum, and
    to the sidecars before each later init container, whose own value counts with them
    (maxResourceList of the init containers' values, then of the sum). A value no sidecar
    was added to is printed as written, a sum as a new DecimalSI quantity."""
    out = dict(summed)
    sidecars: dict[str, Decimal] = {}
    inits: dict[str, str] = {}
    for init in spec.get("initContainers") or []:
        values = dict((((init.get("resources") or {}).get(kind)) or {}))
        if init.get("restartPolicy") == "Always":
            for key, value in values.items():
                had = parse_quantity(out[key]) if key in out else Decimal(0)
                out[key] = _decimal_si(key, had + parse_quantity(value))
                sidecars[key] = sidecars.get(key, Decimal(0)) + parse_quantity(value)
            values = {key: _decimal_si(key, value) for key, value in sidecars.items()}
        else:
            for key, value in sidecars.items():
                values[key] = _decimal_si(key, parse_quantity(values.get(key, "0")) + value)
        for key, value in values.items():
            if key not in inits or parse_quantity(value) > parse_quantity(inits[key]):
                inits[key] = value
    for key, value in inits.items():
        if key not in out or parse_quantity(value) > parse_quantity(out[key]):
            out[key] = value
    return out


def _pod_checks(item: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """What a Pod item refuses of the pod (minConstraint, maxConstraint,
    limitRequestRatioConstraint on the pod's sums): as 1.28 and later sum them, else as 1.27
    and before did (the module's docstring)."""
    return (_pod_checks_of(item, _pod_values(spec, "requests", every=False),
                           _pod_values(spec, "limits", every=False))
            or _pod_checks_of(item, _pod_values(spec, "requests"), _pod_values(spec, "limits")))


def _pod_checks_of(item: dict[str, Any], requests: dict[str, str], limits: dict[str, str]
                   ) -> list[str]:
    out = []
    for key, value in (item.get("min") or {}).items():
        if key not in requests:
            out.append(f"minimum {key} usage per Pod is {value}.  No request is specified.")
        elif parse_quantity(requests[key]) < parse_quantity(value):
            out.append(f"minimum {key} usage per Pod is {value}, but request is "
                       f"{requests[key]}.")
        elif key in limits and parse_quantity(limits[key]) < parse_quantity(value):
            out.append(f"minimum {key} usage per Pod is {value}, but limit is {limits[key]}.")
    for key, value in (item.get("max") or {}).items():
        if key not in limits:
            out.append(f"maximum {key} usage per Pod is {value}.  No limit is specified.")
        elif parse_quantity(limits[key]) > parse_quantity(value):
            out.append(f"maximum {key} usage per Pod is {value}, but limit is {limits[key]}.")
        elif key in requests and parse_quantity(requests[key]) > parse_quantity(value):
            out.append(f"maximum {key} usage per Pod is {value}, but request is "
                       f"{requests[key]}.")
    for key, value in (item.get("maxLimitRequestRatio") or {}).items():
        if problem := _ratio(requests.get(key), limits.get(key), value):
            out.append(f"{key} max limit to request ratio per Pod is {value}, but {problem}.")
    return out


def admit(pod: dict[str, Any], limit_ranges: list[dict[str, Any]]
          ) -> tuple[dict[str, Any], tuple[int, str, str] | None]:
    """(the pod with the defaults set, None) or (the pod, (status, reason, message)) when the
    API server refuses it."""
    pod = copy.deepcopy(pod)
    name = (pod.get("metadata") or {}).get("name", "")
    spec = pod.get("spec") or {}
    fields = [(f, c) for f in ("containers", "initContainers") for c in spec.get(f) or []]
    set_by: list[str] = []
    forbidden: list[str] = []
    for limit_range in limit_ranges:  # each applied in turn (limitranger Admit's loop)
        items = [i for i in (limit_range.get("spec") or {}).get("limits") or []
                 if i.get("type") == "Container"]
        for field, container in fields:
            resources = container.setdefault("resources", {})
            limits, requests = resources.setdefault("limits", {}), resources.setdefault(
                "requests", {})
            kind = "container" if field == "containers" else "init container"
            for item in items:
                for key, value in (item.get("default") or {}).items():
                    if key not in limits:
                        limits[key] = value
                        set_by.append(f"{key} limit for {kind} {container['name']}")
                for key, value in (item.get("defaultRequest") or {}).items():
                    if key not in requests:
                        requests[key] = value
                        set_by.append(f"{key} request for {kind} {container['name']}")
            for item in items:
                for key, value in (item.get("max") or {}).items():
                    if key not in limits:
                        forbidden.append(f"maximum {key} usage per Container is {value}.  "
                                         "No limit is specified.")
                    elif parse_quantity(limits[key]) > parse_quantity(value):
                        forbidden.append(f"maximum {key} usage per Container is {value}, but "
                                         f"limit is {limits[key]}.")
                    elif key in requests and parse_quantity(requests[key]) > parse_quantity(value):
                        forbidden.append(f"maximum {key} usage per Container is {value}, but "
                                         f"request is {requests[key]}.")
                for key, value in (item.get("min") or {}).items():
                    if key in requests and parse_quantity(requests[key]) < parse_quantity(value):
                        forbidden.append(f"minimum {key} usage per Container is {value}, but "
                                         f"request is {requests[key]}.")
                for key, value in (item.get("maxLimitRequestRatio") or {}).items():
                    if problem := _ratio(requests.get(key), limits.get(key), value):
                        forbidden.append(f"{key} max limit to request ratio per Container is "
                                         f"{value}, but {problem}.")
        for item in (limit_range.get("spec") or {}).get("limits") or []:
            if item.get("type") == "Pod":  # after this LimitRange's defaults are set
                forbidden.extend(_pod_checks(item, spec))
    if set_by:
        pod.setdefault("metadata", {}).setdefault("annotations", {})[ANNOTATION] = \
            "LimitRanger plugin set: " + "; ".join(set_by)
    if forbidden:  # utilerrors.NewAggregate: one error as it is, more as "[a, b]"
        text = forbidden[0] if len(forbidden) == 1 else "[" + ", ".join(forbidden) + "]"
        return pod, (403, "Forbidden", f'pods "{name}" is forbidden: {text}')
    invalid = []
    for field in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(field) or []):
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            for key, value in (resources.get("requests") or {}).items():
                if key in limits and parse_quantity(value) > parse_quantity(limits[key]):
                    invalid.append(f"spec.{field}[{i}].resources.requests: Invalid value: "
                                   f'"{value}": must be less than or equal to {key} limit of '
                                   f"{limits[key]}")
    if invalid:
        return pod, (422, "Invalid", f'Pod "{name}" is invalid: ' + ", ".join(invalid))
    return pod, None
