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
  milli-values), every error of the pod at once
  (utilerrors.NewAggregate), refused as 403 Forbidden (admission.NewForbidden: 'pods "NAME"
  is forbidden: ...').
- pkg/apis/core/validation/validation.go ValidateResourceRequirements, after admission: a
  request above its limit is 422 Invalid, 'Pod "NAME" is invalid:
  spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu
  limit of 500m' (the Kubernetes docs, "Limit Ranges", show this very case).
Pod-type items (a pod's sum) are not modelled.
"""

import copy
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
    """What breaks a maxLimitRequestRatio (limitRequestRatioConstraint), None when met."""
    if request is None or parse_quantity(request) == 0:
        return "no request is specified or request is 0"
    if limit is None or parse_quantity(limit) == 0:
        return "no limit is specified or limit is 0"
    ratio = parse_quantity(limit) / parse_quantity(request)
    if ratio > parse_quantity(most):
        return f"provided ratio is {float(ratio):f}"  # Go %f
    return None


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
