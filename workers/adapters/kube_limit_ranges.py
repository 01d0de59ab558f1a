"""The agent namespace's LimitRange default limits and limit-to-request ratios, read for every
pod this project creates there (agent pods: workers.adapters.kube; scale-up pods:
workers.adapters.kube_scale_up), so that a default below a request, or a ratio that no limit
or the default meets, is met before the API server's LimitRanger refuses the pod
(core.limit_ranges has the sources); and the per-container and per-pod max and min, which
sizing keeps builds within (core.limit_range_sizing).

Read again at most once a LIMIT_RANGES_TTL_SECONDS, and at once after a pod is refused: a
LimitRange made since the last read would otherwise fail every build placed within the minute,
for good (pod_refused), though the next read would have met it.
"""

import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

from kubernetes.client import CoreV1Api

from workers.adapters.kube_errors import QuotaFull, Refused
from workers.core.errors import PermanentError, RetryableError
from workers.core.limit_ranges import (
    container_extremes, default_limits, default_requests, limit_ratios, pod_extremes, pod_ratios,
    with_explicit_limits, with_init_containers_at_least, with_pod_limits)
from workers.core.pod_headroom import CpuBounds, cpu_bounds, with_cpu_headroom
from workers.core.quota_limits import limit_caps, with_limits_within_quota
from workers.core.ratio_limits import (
    limits_over_ratio, with_limits_within_ratios, with_pod_cpu_within_ratio)

# An administrator's change is met within a minute, and a burst of creates costs one list.
LIMIT_RANGES_TTL_SECONDS = 60.0
# Sends of one pod at most: a read of the LimitRanges again, and a lower limit per quota on
# limits a refusal names (each lowers them, never below the requests).
QUOTA_SENDS = 4
log = logging.getLogger("ci_autoscaler.kube")
T = TypeVar("T")

Bounds = tuple[dict[str, str], dict[str, str]]  # default limits, maxLimitRequestRatios
Extremes = tuple[dict[str, str], dict[str, str]]  # max, min (per container, or per pod)
# Lists the namespace's LimitRanges: the raw JSON body (a caller's retried api_call).
ListRaw = Callable[[], dict[str, Any]]


class _Read(NamedTuple):
    at: float
    bounds: Bounds
    container: Extremes
    pod: Extremes
    pod_limited: frozenset[str]  # the resources a Pod max or ratio needs every limit of
    pod_least: frozenset[str]  # the resources a Pod min bounds (with_pod_limits' `least`)
    cpu: CpuBounds  # what the CPU limits with_pod_limits names may be raised to
    requests: dict[str, str]  # the default request per resource (core.limit_ranges)


class LimitRangeDefaults:
    def __init__(self, list_raw: ListRaw, namespace: str, clock: Callable[[], float]):
        self._list_raw, self._namespace, self._clock = list_raw, namespace, clock
        self._read: _Read | None = None
        self._said: set[tuple[str, str, str]] = set()  # (container, resource, ratio) logged
        # A ResourceQuota's hard limits.cpu/limits.memory a pod alone went over (learnt from
        # its refusal: no right to read quotas is asked), by resource, and when: the limits
        # are kept within them for LIMIT_RANGES_TTL_SECONDS, then a refusal says it again.
        self._caps: dict[str, Decimal] = {}
        self._caps_at = 0.0

    def create(self, create: Callable[[dict[str, Any]], T], manifest: dict[str, Any]) -> T:
        """create(the manifest with the LimitRanges met, core.limit_ranges). Refused, it is
        sent once more when the LimitRanges read now change it (one made since the last read:
        422 for a default below a request, 403 for a ratio), or with lower limits for each
        quota on limits a refusal names (core.quota_limits); else the refusal stands. A
        refusal costs one list more, nothing else does.

        The CPU limits core.pod_headroom raised give way when the pod is refused or a quota
        has no room for it: the pod is sent once more with them at what they were before
        (what a ResourceQuota on limits.cpu counts: a quota allowing less than the Pod max
        refused every such pod for good, a full one held builds back that fit as before)."""
        sent, read_again = self._met(manifest), False
        for _ in range(QUOTA_SENDS):
            try:
                return self._giving_way(create, sent, manifest)
            except Refused as err:
                if caps := limit_caps(err.exceeded):
                    # a quota on limits the pod alone goes over: lower limits (down to the
                    # requests, which placement counted) fit it, as the ratio's are lowered.
                    # Kept with those learnt before: the plugin names only the first quota a
                    # pod goes over (checkRequest), the next may refuse the lowered pod.
                    kept = self._caps if self._clock() - self._caps_at < \
                        LIMIT_RANGES_TTL_SECONDS else {}
                    self._caps = {r: min(c, kept.get(r, c)) for r, c in caps.items()} \
                        | {r: c for r, c in kept.items() if r not in caps}
                    self._caps_at = self._clock()
                    self._say_capped(caps)
                elif read_again:
                    raise
                else:
                    self._read, read_again = None, True
                again = self._met(manifest)
                if again == sent:
                    raise
                sent = again
        return self._giving_way(create, sent, manifest)

    def _say_capped(self, caps: dict[str, Decimal]) -> None:
        """The limits lowered to a quota's: said once per resource and hard limit."""
        for resource, cap in sorted(caps.items()):
            key = ("", f"limits.{resource}", str(cap))
            if key in self._said:
                continue
            self._said.add(key)
            log.warning("%s limits lowered to a ResourceQuota's limits.%s of %s in %s (down to "
                        "the requests; the template's cpuLimitFactor above it had every pod "
                        "refused)", resource, resource, cap, self._namespace)

    def _giving_way(self, create: Callable[[dict[str, Any]], T], sent: dict[str, Any],
                    manifest: dict[str, Any]) -> T:
        """create(sent); refused or held by a quota, create(it without the headroom) where
        that differs, else the refusal stands."""
        try:
            return create(sent)
        except (Refused, QuotaFull):
            plain = self._met(manifest, headroom=False)
            if plain == sent:
                raise
        return create(plain)

    def _met(self, manifest: dict[str, Any], headroom: bool = True) -> dict[str, Any]:
        """The manifest with the defaults met, its init containers at the namespace's
        per-container min, and a limit on every container where a Pod max, ratio or min
        needs it (core.limit_ranges.with_pod_limits), the CPU ones raised into the room a
        Pod max leaves (core.pod_headroom) unless not `headroom`."""
        bounds = self._bounds()
        read = self._read
        assert read is not None
        self._say_lowered(manifest, bounds[1])
        manifest = with_limits_within_ratios(manifest, bounds[1])
        raised = with_init_containers_at_least(manifest, read.container[1])
        summed = with_pod_limits(raised, read.pod_limited, read.pod_least)
        limited = with_pod_cpu_within_ratio(summed, read.cpu.pod_ratio)
        if limited is not summed and (key := ("", "cpu", str(read.cpu.pod_ratio))) not in \
                self._said:
            self._said.add(key)
            log.warning("cpu limits lowered to the LimitRange Pod maxLimitRequestRatio of cpu "
                        "in %s, %s (a template's cpuLimitFactor above it had every pod "
                        "refused)", self._namespace, read.cpu.pod_ratio)
        if headroom:
            limited = with_cpu_headroom(raised, limited, read.cpu)
        explicit = with_explicit_limits(limited, *bounds)
        if self._caps and self._clock() - self._caps_at >= LIMIT_RANGES_TTL_SECONDS:
            self._caps = {}  # a quota raised since is met again in full
        return with_limits_within_quota(explicit, self._caps) if self._caps else explicit

    def _say_lowered(self, manifest: dict[str, Any], ratios: dict[str, str]) -> None:
        """A limit the template names (cpuLimitFactor) lowered to the namespace's ratio: said
        once per container, resource and ratio, not once per pod."""
        for container, resource, limit, most in limits_over_ratio(manifest, ratios):
            key = (container, resource, ratios[resource])
            if key in self._said:
                continue
            self._said.add(key)
            log.warning("%s limit of container %s lowered from %s to %s: the LimitRange "
                        "maxLimitRequestRatio of %s in %s is %s (a template's cpuLimitFactor "
                        "above it had every pod refused)", resource, container, limit, most,
                        resource, self._namespace, ratios[resource])

    def extremes(self) -> Extremes:
        """The per-container max and min of the namespace's LimitRanges, which sizing keeps
        the build container within (core.limit_range_sizing); read as the defaults are."""
        self._bounds()
        assert self._read is not None
        return self._read.container

    def default_requests(self) -> dict[str, str]:
        """The request a container asking none gets per resource (core.limit_ranges
        .default_requests), which placement counts (core.limit_range_requests)."""
        self._bounds()
        assert self._read is not None
        return self._read.requests

    def pod_extremes(self) -> Extremes:
        """The per-pod max and min of the namespace's LimitRanges (their Pod items), which
        sizing keeps the pod's sum within (core.limit_range_sizing.within_pod)."""
        self._bounds()
        assert self._read is not None
        return self._read.pod

    def _bounds(self) -> Bounds:
        """Unreadable (no right to list them: a Role from before, the API away): none, the
        pod goes as it is, and a refusal still fails its build."""
        now = self._clock()
        if self._read is not None and now - self._read.at < LIMIT_RANGES_TTL_SECONDS:
            return self._read.bounds
        try:
            items = self._list_raw().get("items") or []
        except (PermanentError, RetryableError) as err:
            log.warning("limit ranges of %s unknown, pods sent without their defaults met: %s",
                        self._namespace, err)
            items = []
        bounds = default_limits(items), limit_ratios(items)
        pod = pod_extremes(items)
        self._read = _Read(now, bounds, container_extremes(items), pod,
                           frozenset(pod[0]) | frozenset(pod_ratios(items)), frozenset(pod[1]),
                           cpu_bounds(items), default_requests(items))
        return bounds


def list_raw(call: Callable[..., Any], api: CoreV1Api, namespace: str) -> ListRaw:
    """The namespace's LimitRanges listed through `call` (an adapter's retried api_call) as
    raw JSON: the client's models are not needed for a few fields."""
    def read() -> dict[str, Any]:
        response = call(f"limit ranges in {namespace}: list", api.list_namespaced_limit_range,
                        namespace, _preload_content=False)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()
    return read
