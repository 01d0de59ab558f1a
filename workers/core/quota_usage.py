"""What a pod counts against a ResourceQuota, and whether one pod going could make room for a
refused one. Pure.

Sources (kubernetes/kubernetes):
- pkg/quota/v1/evaluator/core/pods.go podComputeUsageHelper: a pod not terminal counts 1 of
  `pods`; `cpu` and `requests.cpu` (`memory`, `ephemeral-storage` alike) from its requests,
  `limits.cpu` (...) from its limits, `requests.NAME` for an extended resource it requests;
  PodUsageFunc adds `count/pods` (1). Requests and limits are the containers' sum, or an init
  container's when larger, and the pod's overhead (its RuntimeClass's, set by admission) on
  the requests and on the limits the containers set (resourcehelper.PodRequests, PodLimits).
- staging/src/k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go checkRequest:
  a pod is refused when, for a resource of a quota, used + asked > hard; `used` is the quota's
  status.used, which the quota controller lowers only once it has seen a deleted pod go.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workers.core.quantity import parse_quantity

_COMPUTE = ("cpu", "memory", "ephemeral-storage")


@dataclass(frozen=True)
class Exceeded:
    """One resource a quota refused a pod for, as the refusal gave it."""
    quota: str
    resource: str
    asked: Decimal
    used: Decimal
    hard: Decimal


def pod_usage(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """What the (raw) pod counts against a quota; a quantity that cannot be read counts 0."""
    spec = pod.get("spec") or {}
    requests, limits = _totals(spec, "requests"), _totals(spec, "limits")
    out = {"count/pods": Decimal(1)}
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return out
    out["pods"] = Decimal(1)
    for name, value in requests.items():
        if name in _COMPUTE:
            out[name] = value
        out[f"requests.{name}"] = value
    for name, value in limits.items():
        if name in _COMPUTE:
            out[f"limits.{name}"] = value
    return out


def _totals(spec: Mapping[str, Any], kind: str) -> dict[str, Decimal]:
    total: dict[str, Decimal] = {}
    for init, containers in ((False, spec.get("containers")), (True, spec.get("initContainers"))):
        for container in containers or []:
            for name, text in ((container.get("resources") or {}).get(kind) or {}).items():
                try:
                    value = parse_quantity(text)
                except ValueError:
                    continue
                had = total.get(name, Decimal(0))
                total[name] = max(had, value) if init else had + value
    # The RuntimeClass admission's spec.overhead (a Kata or gVisor pod's): PodRequests adds it
    # to the requests, PodLimits to each limit the containers set (ExcludeOverhead unset)
    for name, text in (spec.get("overhead") or {}).items():
        if kind == "limits" and name not in total:
            continue
        try:
            total[name] = total.get(name, Decimal(0)) + parse_quantity(text)
        except ValueError:
            continue
    return total


def room_if_gone(exceeded: Iterable[Exceeded], gone: Mapping[str, Decimal]) -> bool:
    """Whether a pod counting `gone` (pod_usage), once counted out, would let in the pod
    refused for `exceeded`: every exceeded resource back within its hard limit. Never for a
    pod count of 0 (an admin's `pods: 0`): nothing going makes room there."""
    exceeded = list(exceeded)
    return bool(exceeded) and all(
        e.used - min(e.used, gone.get(e.resource, Decimal(0))) + e.asked <= e.hard
        for e in exceeded)
