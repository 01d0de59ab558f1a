"""The API server's ResourceQuota admission for pod creates, for the kmock API server
(tests.support.kmock_cluster): a pod that would take a namespace's use past a quota's hard
limit is refused, 403 Forbidden.

Sources (kubernetes/kubernetes):
- staging/src/k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go checkRequest:
  the pod's usage masked to the quota's hard resources, added to the quota's used; past hard,
  admission.NewForbidden with "exceeded quota: NAME, requested: R, used: U, limited: L", each
  a prettyPrint of the exceeded resources only ("key=value" sorted by key, joined by ",").
  The plugin runs last, after the mutating ones (LimitRanger's defaults are counted).
- pkg/quota/v1/evaluator/core/pods.go podComputeUsageHelper: a pod counts `pods`, and
  `requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory` from its
  requests and limits (resourcehelper.PodRequests/PodLimits: the containers' sum, or an init
  container's when larger); a pod in phase Succeeded or Failed is not counted (QuotaV1Pod).
- same file, PodUsageFunc: `count/pods` (the object count) counts every stored pod, a
  terminal one too; `pods` only those not terminal.
Used is counted from the namespace's stored pods here (the quota controller's status.used in
steady state). "failed quota: must specify ..." (a quota on limits with a container naming
none) and scopes are not modelled.
"""

from decimal import Decimal
from typing import Any

from workers.core.quantity import parse_quantity


def _pod_totals(pod: dict[str, Any], kind: str) -> dict[str, Decimal]:
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for key, value in ((container.get("resources") or {}).get(kind) or {}).items():
            total[key] = total.get(key, Decimal(0)) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        for key, value in ((container.get("resources") or {}).get(kind) or {}).items():
            total[key] = max(total.get(key, Decimal(0)), parse_quantity(value))
    return total


def usage(pod: dict[str, Any]) -> dict[str, Decimal]:
    """What the pod counts against a quota (PodUsageFunc): only `count/pods` when terminal."""
    out = {"count/pods": Decimal(1)}
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return out
    requests, limits = _pod_totals(pod, "requests"), _pod_totals(pod, "limits")
    out["pods"] = Decimal(1)
    for resource in ("cpu", "memory"):
        if resource in requests:
            out[resource] = out[f"requests.{resource}"] = requests[resource]
        if resource in limits:
            out[f"limits.{resource}"] = limits[resource]
    return out


def _show(resource: str, value: Decimal) -> str:
    """A quantity as Kubernetes prints it, near enough: cpu in millicores, the rest plain."""
    if resource.endswith("cpu") and value != value.to_integral_value():
        return f"{int(value * 1000)}m"
    return str(int(value)) if value == value.to_integral_value() else str(value)


def _pretty(values: dict[str, Decimal]) -> str:
    return ",".join(f"{key}={_show(key, values[key])}" for key in sorted(values))


def admit(pod: dict[str, Any], quotas: list[dict[str, Any]], pods: list[dict[str, Any]]
          ) -> tuple[int, str, str] | None:
    """None when every quota lets the pod in, else (403, "Forbidden", message); `pods`: the
    namespace's stored pods."""
    asked = usage(pod)
    used: dict[str, Decimal] = {}
    for other in pods:
        for key, value in usage(other).items():
            used[key] = used.get(key, Decimal(0)) + value
    for quota in quotas:
        hard = {k: parse_quantity(v) for k, v in ((quota.get("spec") or {}).get("hard")
                                                   or {}).items()}
        exceeded = [k for k in hard if k in asked and used.get(k, Decimal(0)) + asked[k] > hard[k]]
        if exceeded:
            name = (pod.get("metadata") or {}).get("name", "")
            quota_name = (quota.get("metadata") or {}).get("name", "")
            return 403, "Forbidden", (
                f'pods "{name}" is forbidden: exceeded quota: {quota_name}, '
                f"requested: {_pretty({k: asked[k] for k in exceeded})}, "
                f"used: {_pretty({k: used.get(k, Decimal(0)) for k in exceeded})}, "
                f"limited: {_pretty({k: hard[k] for k in exceeded})}")
    return None
