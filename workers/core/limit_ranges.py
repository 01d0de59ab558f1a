"""A namespace's LimitRange defaults, met before the API server's LimitRanger meets them. Pure.

The LimitRanger admission plugin gives every container (and init container) that names no
limit for a resource the LimitRange's `default` limit for it (kubernetes
plugin/pkg/admission/limitranger/admission.go: defaultContainerResourceRequirements and
mergeContainerResources), and only then does the API server validate the pod: a request above
its limit is refused, 422 "spec.containers[0].resources.requests: Invalid value: "2": must be
less than or equal to cpu limit of 500m" (pkg/apis/core/validation ValidateResourceRequirements;
the Kubernetes docs, "Limit Ranges", show this very conflict). An agent sized above a
namespace's default CPU limit, with no CPU limit of its own (the default: templates set one
only with cpuLimitFactor), was refused every time, and its build failed as pod_refused.

So a container that asks for more than the namespace's default limit and names no limit of
its own gets, before the pod is sent, a limit equal to its request: the least the API server
accepts, and the nearest to what the namespace's administrator asked for (a limit).
"""

from collections.abc import Iterable
from typing import Any

from workers.core.quantity import parse_quantity

CONTAINER = "Container"  # a LimitRangeItem's type whose `default` applies per container


def default_limits(limit_ranges: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The `default` limit per resource of the namespace's LimitRanges (raw JSON objects),
    items of type Container. With several, the plugin applies them one after the other and
    the first to default a resource sets its limit, in its informer's order, which is not
    known here: the smallest is taken (a limit set where none was needed is harmless)."""
    out: dict[str, str] = {}
    for limit_range in limit_ranges:
        for item in ((limit_range.get("spec") or {}).get("limits") or []):
            if item.get("type") != CONTAINER:
                continue
            for resource, value in (item.get("default") or {}).items():
                if resource not in out or parse_quantity(value) < parse_quantity(out[resource]):
                    out[resource] = str(value)
    return out


def with_explicit_limits(manifest: dict[str, Any], defaults: dict[str, str]
                         ) -> dict[str, Any]:
    """The pod manifest with a limit equal to the request on every container and init
    container that requests more of a resource than the namespace's default limit for it and
    names no limit for it; the manifest itself when none does (it is not changed)."""
    if not defaults:
        return manifest
    spec = manifest.get("spec") or {}
    changed = False
    lists: dict[str, list[dict[str, Any]]] = {}
    for field in ("initContainers", "containers"):
        containers = []
        for container in spec.get(field) or []:
            resources = container.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            raised = {r: requests[r] for r, default in defaults.items()
                      if r in requests and r not in limits
                      and parse_quantity(requests[r]) > parse_quantity(default)}
            if raised:
                changed = True
                container = {**container, "resources": {**resources,
                                                        "limits": {**limits, **raised}}}
            containers.append(container)
        if field in spec:
            lists[field] = containers
    if not changed:
        return manifest
    return {**manifest, "spec": {**spec, **lists}}
