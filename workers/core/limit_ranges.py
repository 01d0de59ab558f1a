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

A `maxLimitRequestRatio` is met the same way (limitRequestRatioConstraint: a container naming
no limit of the resource is refused, 403 "cpu max limit to request ratio per Container is 4,
but no limit is specified or limit is 0", and so is one whose limit, the default put on it,
is more than the ratio times its request): a container naming no limit gets the default when
the ratio allows it, else its request times the ratio (the most the namespace allows; not its
request, which would throttle a small container such as the agent's to its request).
A limit a container names itself (the build container's, request x cpuLimitFactor) above the
ratio is lowered to that most (core.ratio_limits). The ratio is checked as the API server
checks it, in milli-values and float64 (core.limit_ratio).
"""

from collections.abc import Callable, Iterable
from typing import Any

from workers.core.limit_ratio import from_milli, milli_value, most_within, ratio_met
from workers.core.quantity import parse_quantity

CONTAINER = "Container"  # a LimitRangeItem's type whose `default` applies per container
POD = "Pod"  # a LimitRangeItem's type whose min, max and ratio bound the sum of a pod's
# containers (admission.go PodLimitFunc, its `limitType == api.LimitTypePod` branch)
# The resources every container asks for (core.pods): the only ones a Pod item's sum can meet.
POD_SUMMED = ("cpu", "memory")


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


def limit_ratios(limit_ranges: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The `maxLimitRequestRatio` per resource of the namespace's LimitRanges, items of type
    Container; with several, the smallest (the plugin checks each LimitRange in turn, so the
    pod must meet them all)."""
    out: dict[str, str] = {}
    for limit_range in limit_ranges:
        for item in ((limit_range.get("spec") or {}).get("limits") or []):
            if item.get("type") != CONTAINER:
                continue
            for resource, value in (item.get("maxLimitRequestRatio") or {}).items():
                if resource not in out or parse_quantity(value) < parse_quantity(out[resource]):
                    out[resource] = str(value)
    return out


def _limit(resource: str, request: str, default: str | None, ratio: str | None) -> str | None:
    """The limit a container asking `request` and naming none is to name, None when what the
    API server puts there (the default, or nothing) is accepted."""
    asked = parse_quantity(request)
    if default is not None and parse_quantity(default) < asked:
        return request  # the least accepted: request = limit (ratio 1 meets any ratio)
    if ratio is None or asked == 0:
        return None  # a request of 0 fails a ratio whatever the limit: left to the API server
    if default is not None and ratio_met(milli_value(request), milli_value(default), ratio):
        return None
    return from_milli(resource, most_within(milli_value(request), ratio))


def limit_without(resource: str, request: str, default: str | None, ratio: str | None
                  ) -> str | None:
    """The limit a container asking `request` ends with when it names none: the one
    with_explicit_limits names, else the namespace's default the API server puts there;
    None: no limit at all."""
    return _limit(resource, request, default, ratio) or default


def with_explicit_limits(manifest: dict[str, Any], defaults: dict[str, str],
                         ratios: dict[str, str] | None = None) -> dict[str, Any]:
    """The pod manifest with a limit on every container and init container that names none
    for a resource it requests where the API server's would be refused: its request, where
    the namespace's default limit is below it; its request times the namespace's
    maxLimitRequestRatio, where there is no default or the default is above that. The
    manifest itself when none is refused so (it is not changed)."""
    ratios = ratios or {}
    if not defaults and not ratios:
        return manifest
    return with_limits_added(manifest, lambda requests, limits: {
        r: limit for r in sorted({*defaults, *ratios}) if r in requests and r not in limits
        and (limit := _limit(r, requests[r], defaults.get(r), ratios.get(r))) is not None})


def container_extremes(limit_ranges: Iterable[dict[str, Any]]
                       ) -> tuple[dict[str, str], dict[str, str]]:
    """(the `max`, the `min`) per resource of the namespace's LimitRanges, items of type
    Container: the smallest max and the largest min of several (the plugin checks each
    LimitRange in turn, so a container must meet them all: PodLimitFunc's maxConstraint and
    minConstraint)."""
    return _extremes(limit_ranges, CONTAINER)


def pod_extremes(limit_ranges: Iterable[dict[str, Any]]
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """(the `max`, the `min`) per resource of the namespace's LimitRanges, items of type Pod,
    which bound the sum of a pod's containers (PodLimitFunc's Pod branch: the same
    maxConstraint and minConstraint on podRequests and podLimits, the containers' sums, each
    raised to any init container's own; 403 "maximum memory usage per Pod is 4Gi, but limit
    is 6442450944."): the smallest max and the largest min of several."""
    return _extremes(limit_ranges, POD)


def pod_ratios(limit_ranges: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The `maxLimitRequestRatio` per resource of the namespace's Pod items (the pod's summed
    limit over its summed request); with several, the smallest."""
    out: dict[str, str] = {}
    for item in items_of(limit_ranges, POD):
        for resource, value in (item.get("maxLimitRequestRatio") or {}).items():
            if resource not in out or parse_quantity(value) < parse_quantity(out[resource]):
                out[resource] = str(value)
    return out


def default_requests(limit_ranges: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The request the LimitRanger gives a container asking none of a resource, per resource:
    a Container item's `defaultRequest`, which the API server stores from its `default`, else
    its `max`, else its `min` (pkg/apis/core/v1/defaults.go SetDefaults_LimitRangeItem: a max
    alone sets both); read here the same way, whether stored so or not. With several, the
    first in the plugin's informer order sets it (mergeContainerResources sets only a request
    not set yet), which is not known here: the largest is taken (placement counts no less
    than the pod asks)."""
    out: dict[str, str] = {}
    for item in items_of(limit_ranges, CONTAINER):
        mine: dict[str, str] = {}
        for key in ("min", "max", "default", "defaultRequest"):  # each later one wins
            mine.update({r: str(v) for r, v in (item.get(key) or {}).items()})
        for resource, value in mine.items():
            if resource not in out or parse_quantity(value) > parse_quantity(out[resource]):
                out[resource] = value
    return out


def items_of(limit_ranges: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The LimitRanges' items of one type (CONTAINER, POD), in the order listed."""
    return [item for limit_range in limit_ranges
            for item in ((limit_range.get("spec") or {}).get("limits") or [])
            if item.get("type") == kind]


def _extremes(limit_ranges: Iterable[dict[str, Any]], kind: str
              ) -> tuple[dict[str, str], dict[str, str]]:
    most: dict[str, str] = {}
    least: dict[str, str] = {}
    for item in items_of(limit_ranges, kind):
        for resource, value in (item.get("max") or {}).items():
            if resource not in most or parse_quantity(value) < parse_quantity(most[resource]):
                most[resource] = str(value)
        for resource, value in (item.get("min") or {}).items():
            if resource not in least or parse_quantity(value) > parse_quantity(
                    least[resource]):
                least[resource] = str(value)
    return most, least


def with_pod_limits(manifest: dict[str, Any], resources: Iterable[str],
                    least: Iterable[str] = ()) -> dict[str, Any]:
    """The pod manifest with a limit equal to its request on every container and init
    container that requests one of `resources` (those a Pod item's max or
    maxLimitRequestRatio bounds: pod_extremes, pod_ratios) and names no limit of it. The
    plugin sums a resource's limits over the containers only when every one names it
    (admission.go `sum`: "if a key is not in each input, then the output resource list will
    omit the key"), and a Pod max with no summed limit is refused, 403 "maximum cpu usage
    per Pod is 2.  No limit is specified." (maxConstraint); core.pods names a CPU limit only
    on the build container, and only with cpuLimitFactor. Its request is the limit that
    sizing can count (core.limit_range_sizing.within_pod): the namespace's Container default
    (which the plugin would put there instead) may sum beyond the Pod max, and limit = request
    meets any Container default, max or ratio the request meets (core.pod_headroom then
    raises the CPU ones into the room a Pod max leaves). Run before with_explicit_limits,
    which then leaves these containers be. The manifest itself when none is changed.

    `least`: the resources a Pod `min` bounds, named so too where some container already
    names a limit of it (the build container's CPU limit, with cpuLimitFactor). Since
    Kubernetes 1.28 (PR #116429) the plugin sums a resource's limits over the containers
    naming one (podLimits, addResourceList), and minConstraint refuses that sum below the
    min, 403 "minimum cpu usage per Pod is 3, but limit is 1650m.", though the pod's
    requests meet it; with every limit at least its request, their sum meets it too."""
    spec = manifest.get("spec") or {}
    named = {r for field in ("initContainers", "containers") for c in spec.get(field) or []
             for r in ((c.get("resources") or {}).get("limits") or {})}
    wanted = [r for r in POD_SUMMED if r in set(resources) or r in set(least) and r in named]
    if not wanted:
        return manifest
    return with_limits_added(manifest, lambda requests, limits: {
        r: requests[r] for r in wanted if r in requests and r not in limits})


def with_limits_added(manifest: dict[str, Any],
                      added: Callable[[dict[str, str], dict[str, str]], dict[str, str]]
                      ) -> dict[str, Any]:
    """The manifest with the limits `added(requests, limits)` names merged into every
    container's and init container's limits; the manifest itself when none names any."""
    spec = manifest.get("spec") or {}
    changed = False
    lists: dict[str, list[dict[str, Any]]] = {}
    for field in ("initContainers", "containers"):
        containers = []
        for container in spec.get(field) or []:
            resources = container.get("resources") or {}
            limits = resources.get("limits") or {}
            raised = added(resources.get("requests") or {}, limits)
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


def with_init_containers_at_least(manifest: dict[str, Any], least: dict[str, str]
                                  ) -> dict[str, Any]:
    """The pod manifest with every init container's request (and limit, where one is named
    below it) raised to the namespace's per-container `min` (container_extremes): the
    LimitRanger checks init containers against a Container min as it checks containers
    (admission.go PodLimitFunc, its loop over pod.Spec.InitContainers: "minimum cpu usage per
    Container is 200m, but request is 100m"), and the agent's init container asks only the
    agent's share. Raised, it asks no more than the containers beside it, each at least the
    min too (core.limit_range_sizing) or refused anyway, so the pod's effective request (the
    larger of the containers' sum and any init container's) is unchanged. Containers are left:
    their requests are the pod's size, which placement decided. The manifest itself when no
    init container is raised."""
    spec = manifest.get("spec") or {}
    if not least or not spec.get("initContainers"):
        return manifest
    changed = False
    containers = []
    for container in spec["initContainers"]:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        raised = {r: v for r, v in least.items() if r in requests
                  and parse_quantity(requests[r]) < parse_quantity(v)}
        if raised:
            changed = True
            new_limits = {**limits, **{r: v for r, v in raised.items() if r in limits
                                       and parse_quantity(limits[r]) < parse_quantity(v)}}
            container = {**container, "resources": {**resources,
                                                    "requests": {**requests, **raised},
                                                    "limits": new_limits}}
        containers.append(container)
    if not changed:
        return manifest
    return {**manifest, "spec": {**spec, "initContainers": containers}}
