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
  `requests.cpu`/`cpu`, `requests.memory`/`memory`, `limits.cpu`, `limits.memory`,
  `requests.ephemeral-storage`/`ephemeral-storage`, `limits.ephemeral-storage` from its
  requests and limits, and `requests.NAME` for an extended resource (quota.
  IsExtendedResourceName: a domain-prefixed name) or hugepages-SIZE it requests (resourcehelper.PodRequests/PodLimits: the containers' sum, or an init
  container's when larger, plus the pod's spec.overhead); a pod in phase Succeeded or Failed is not counted (QuotaV1Pod).
- same file, PodUsageFunc: `count/pods` (the object count) counts every stored pod, a
  terminal one too; `pods` only those not terminal.
- pods.go podEvaluator.Constraints (enforcePodContainerConstraints): a quota whose hard names
  cpu, memory, requests.cpu, requests.memory, limits.cpu or limits.memory (validationSet)
  needs every container and init container to name that request or limit, else
  checkRequest refuses the pod before counting anything, for the first such quota:
  "failed quota: NAME: must specify limits.cpu for: build,jnlp; requests.memory for: x"
  (resources sorted, each with its containers' names sorted and joined by ",").
- same checkRequest, hasUsageStats: a quota whose status.hard names a resource the pod
  counts that its status.used does not yet (the quota controller, pkg/controller/
  resourcequota, has not synced it since the quota was made or its hard limits changed:
  asynchronous) refuses every such pod, 403 Forbidden, "status unknown for quota: NAME,
  resources: R" (R: the quota's resources the evaluator matches, sorted, joined by ",").
Used is counted from the namespace's stored pods here (the quota controller's status.used in
steady state), unless the quota carries a `status` (a test playing the controller not synced
yet). Scopes are not modelled.
"""

from decimal import Decimal
from typing import Any

from workers.core.quantity import parse_quantity


# pods.go validationSet: the resources a quota makes every container name.
_MUST_NAME = ("cpu", "limits.cpu", "limits.memory", "memory", "requests.cpu", "requests.memory")


def _unnamed(pod: dict[str, Any], hard: dict[str, Any]) -> str | None:
    """Constraints' "must specify ..." for the quota's hard resources, None when every
    container names them."""
    required = [r for r in _MUST_NAME if r in hard]
    missing: dict[str, set[str]] = {}
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        named = {"pods"}  # podComputeUsageHelper: what this container's usage holds
        for resource in ("cpu", "memory"):
            if resource in requests:
                named |= {resource, f"requests.{resource}"}
            if resource in limits:
                named.add(f"limits.{resource}")
        for resource in required:
            if resource not in named:
                missing.setdefault(resource, set()).add(container.get("name", ""))
    if not missing:
        return None
    return "must specify " + "; ".join(f"{r} for: {','.join(sorted(missing[r]))}"
                                       for r in sorted(missing))


def _pod_totals(pod: dict[str, Any], kind: str) -> dict[str, Decimal]:
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for key, value in ((container.get("resources") or {}).get(kind) or {}).items():
            total[key] = total.get(key, Decimal(0)) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        for key, value in ((container.get("resources") or {}).get(kind) or {}).items():
            total[key] = max(total.get(key, Decimal(0)), parse_quantity(value))
    # PodRequests adds spec.overhead (set by the RuntimeClass admission, which runs before)
    # to the requests, PodLimits to the limits the containers set (component-helpers
    # resource/helpers.go; PodUsageFunc leaves ExcludeOverhead unset)
    for key, value in (spec.get("overhead") or {}).items():
        if kind == "requests" or key in total:
            total[key] = total.get(key, Decimal(0)) + parse_quantity(value)
    return total


def usage(pod: dict[str, Any]) -> dict[str, Decimal]:
    """What the pod counts against a quota (PodUsageFunc): only `count/pods` when terminal."""
    out = {"count/pods": Decimal(1)}
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return out
    requests, limits = _pod_totals(pod, "requests"), _pod_totals(pod, "limits")
    out["pods"] = Decimal(1)
    for resource in ("cpu", "memory", "ephemeral-storage"):
        if resource in requests:
            out[resource] = out[f"requests.{resource}"] = requests[resource]
        if resource in limits:
            out[f"limits.{resource}"] = limits[resource]
    for resource, value in requests.items():  # extended resources and hugepages: requests
        if "/" in resource and "kubernetes.io/" not in resource or resource.startswith(
                "hugepages-"):
            out[f"requests.{resource}"] = value
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
    name = (pod.get("metadata") or {}).get("name", "")
    for quota in quotas:  # checkRequest: every quota's Constraints before any counting
        if (unnamed := _unnamed(pod, (quota.get("spec") or {}).get("hard") or {})) is not None:
            return 403, "Forbidden", (f'pods "{name}" is forbidden: failed quota: '
                                      f'{(quota.get("metadata") or {}).get("name", "")}: '
                                      f"{unnamed}")
    for quota in quotas:  # checkRequest: hasUsageStats, after Constraints
        status = quota.get("status")
        if status is not None and any(r not in (status.get("used") or {})
                                      for r in status.get("hard") or {}):
            return 403, "Forbidden", (
                f'pods "{name}" is forbidden: status unknown for quota: '
                f'{(quota.get("metadata") or {}).get("name", "")}, resources: '
                f'{",".join(sorted(status.get("hard") or {}))}')
    used: dict[str, Decimal] = {}
    for other in pods:
        for key, value in usage(other).items():
            used[key] = used.get(key, Decimal(0)) + value
    for quota in quotas:
        hard = {k: parse_quantity(v) for k, v in ((quota.get("spec") or {}).get("hard")
                                                   or {}).items()}
        exceeded = [k for k in hard if k in asked and used.get(k, Decimal(0)) + asked[k] > hard[k]]
        if exceeded:
            quota_name = (quota.get("metadata") or {}).get("name", "")
            return 403, "Forbidden", (
                f'pods "{name}" is forbidden: exceeded quota: {quota_name}, '
                f"requested: {_pretty({k: asked[k] for k in exceeded})}, "
                f"used: {_pretty({k: used.get(k, Decimal(0)) for k in exceeded})}, "
                f"limited: {_pretty({k: hard[k] for k in exceeded})}")
    return None
