"""What kube-scheduler counts beside CPU and memory, so that a node we choose is one it accepts:
the pod limit (allocatable `pods`), ephemeral-storage, extended resources (`nvidia.com/gpu`)
and hostPorts (its NodeResourcesFit and NodePorts filter plugins). A template's needs are read
once (`needs`); a node fits them or says why not, as the wait reason a build would get
(`insufficient_pods`, `insufficient_ephemeral-storage`, `insufficient_nvidia.com/gpu`,
`host_ports`). Pure values."""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.core import pod_anti_affinity
from workers.core.quantity import parse_quantity

if TYPE_CHECKING:
    from workers.core.cluster import NodeState
    from workers.core.models import PodTemplate

PODS = "pods"
EPHEMERAL_STORAGE = "ephemeral-storage"
HOST_PORTS = "host_ports"
# kube-scheduler's NodeResourcesFit counts these itself, apart from the extended resources.
STANDARD_RESOURCES = frozenset({"cpu", "memory", PODS, EPHEMERAL_STORAGE, "storage"})
HostPort = tuple[str, str, int]  # (protocol, hostIP or "", port)
Amounts = tuple[tuple[str, int], ...]  # (resource name, amount), sorted by name


def insufficient(resource: str) -> str:
    """The wait reason when no node has enough of `resource` (as kube-scheduler says
    "Insufficient nvidia.com/gpu")."""
    return f"insufficient_{resource}"


@dataclass(frozen=True)
class Limits:
    """What a node allows beside cpu and memory (its status.allocatable): pods (None: not
    given, no limit counted), ephemeral-storage bytes (None: not given, so none; a kubelet
    reports it unless local storage isolation is off) and extended resources; for a node
    joining (capacity._onto_fresh), the hostPorts its DaemonSets bind there already."""

    pods: int | None = None
    ephemeral_bytes: int | None = None
    extended: Amounts = ()
    bound_ports: frozenset[HostPort] = frozenset()


@dataclass(frozen=True)
class Held:
    """What the node's pods hold beside cpu and memory: how many there are, their
    ephemeral-storage and extended resource requests, and the hostPorts they bind."""

    pods: int = 0
    ephemeral_bytes: int = 0
    extended: Amounts = ()
    host_ports: frozenset[HostPort] = frozenset()

    def __add__(self, other: "Held") -> "Held":
        return Held(self.pods + other.pods, self.ephemeral_bytes + other.ephemeral_bytes,
                    add_amounts(self.extended, other.extended, 1),
                    self.host_ports | other.host_ports)

    def __sub__(self, other: "Held") -> "Held":
        return Held(self.pods - other.pods, self.ephemeral_bytes - other.ephemeral_bytes,
                    add_amounts(self.extended, other.extended, -1),
                    self.host_ports - other.host_ports)


NO_LIMITS, NOTHING_HELD = Limits(), Held()


def add_amounts(a: Amounts, b: Amounts, sign: int) -> Amounts:
    if not b:
        return a
    out = dict(a)
    for name, amount in b:
        out[name] = out.get(name, 0) + sign * amount
    return tuple(sorted((k, v) for k, v in out.items() if v))


@dataclass(frozen=True)
class Needs:
    """What one agent pod asks for beside cpu and memory (one pod, always)."""

    ephemeral_bytes: int = 0
    extended: Amounts = ()
    host_ports: frozenset[HostPort] = frozenset()

    @property
    def held(self) -> Held:
        return Held(1, self.ephemeral_bytes, self.extended, self.host_ports)


def needs(template: "PodTemplate") -> Needs:
    """The template's needs: its ephemeralStorage, its `resources` map, what its namespace's
    LimitRange defaults add to them (template.namespace_requests: core.limit_range_requests),
    and the hostPorts of the containers of its podSpecPatch."""
    added = dict(template.namespace_requests)
    extended = add_amounts(tuple(sorted(template.resources.items())), tuple(
        (name, amount) for name, amount in sorted(added.items())
        if name not in STANDARD_RESOURCES), 1)
    ephemeral = (template.ephemeral_storage or 0) + added.get(EPHEMERAL_STORAGE, 0)
    patch = template.pod_spec_patch
    if patch.get("initContainers"):  # the podSpecPatch's setup steps and sidecars
        total = with_init_containers(patch, {EPHEMERAL_STORAGE: ephemeral, **dict(extended)})
        ephemeral = total.pop(EPHEMERAL_STORAGE, 0)
        extended = tuple(sorted((k, v) for k, v in total.items() if v))
    return Needs(ephemeral, extended, frozenset(spec_host_ports(patch))
                 | pod_anti_affinity.tokens(patch, template.pod_labels))


def container_extras(container: dict[str, Any]) -> dict[str, int]:
    """The ephemeral-storage (bytes) and extended resources one container requests (a limit
    alone is its request, as the API server defaults it); an unreadable quantity counts 0
    (config load refuses it: workers.config.pod_schema)."""
    res = container.get("resources") or {}
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}
    out = {}
    for name, value in merged.items():
        if name == EPHEMERAL_STORAGE or (name not in STANDARD_RESOURCES and "/" in name):
            try:
                out[name] = int(math.ceil(parse_quantity(value)))
            except (TypeError, ValueError):
                continue
    return out


def with_init_containers(spec: dict[str, Any], containers: dict[str, int]) -> dict[str, int]:
    """What the pod's containers request beside cpu and memory (`containers`: their sum) as
    kube-scheduler counts the whole pod with the init containers of `spec`
    (k8s.io/component-helpers/resource PodRequests, for every resource alike): per resource,
    the larger of the containers' sum with the native sidecars (restartPolicy Always) and
    each init container with the sidecars started before it. A setup step asking 30Gi of
    ephemeral-storage beside a build of 2Gi holds 30Gi of its node while it runs."""
    total, before, floor = dict(containers), {}, {}
    for c in spec.get("initContainers") or []:
        asked = container_extras(c or {})
        if (c or {}).get("restartPolicy") == "Always":
            for name, amount in asked.items():
                before[name] = before.get(name, 0) + amount
        else:
            for name, amount in asked.items():
                floor[name] = max(floor.get(name, 0), before.get(name, 0) + amount)
    for name, amount in before.items():
        total[name] = total.get(name, 0) + amount
    for name, amount in floor.items():
        total[name] = max(total.get(name, 0), amount)
    return total


def spec_host_ports(spec: dict[str, Any]) -> list[HostPort]:
    """(protocol, hostIP, hostPort) of every container port of a pod spec that binds one."""
    out = []
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            for port in (container or {}).get("ports") or []:
                if port.get("hostPort"):
                    out.append((str(port.get("protocol") or "TCP"), str(port.get("hostIP") or ""),
                                int(port["hostPort"])))
    return out


def ports_conflict(want: HostPort, used: HostPort) -> bool:
    """The NodePorts filter: the same protocol and port, and the same hostIP or either one the
    wildcard ("" or 0.0.0.0) (kubernetes pkg/scheduler/framework/types.go, HostPortInfo)."""
    wild = ("", "0.0.0.0")
    return want[0] == used[0] and want[2] == used[2] and (
        want[1] == used[1] or want[1] in wild or used[1] in wild)


def lacks(node: "NodeState", need: Needs) -> str | None:
    """Why the node cannot take one more pod with these needs, given what its pods hold and
    what is in flight to it (kube-scheduler's NodeResourcesFit and NodePorts filters), as a
    wait reason; None if it can. A node whose allocatable does not list a resource the pod
    asks for has none of it."""
    limits, held = node.limits, node.held
    if limits.pods is not None and held.pods + node.in_flight_pods + 1 > limits.pods:
        return insufficient(PODS)
    if need.ephemeral_bytes and held.ephemeral_bytes + need.ephemeral_bytes > (
            limits.ephemeral_bytes or 0):
        return insufficient(EPHEMERAL_STORAGE)
    if need.extended:
        have, used = dict(limits.extended), dict(held.extended)
        for name, amount in need.extended:
            if used.get(name, 0) + amount > have.get(name, 0):
                return insufficient(name)
    if need.host_ports and held.host_ports:
        return clash(need.host_ports, held.host_ports)
    return None


def clash(want: frozenset[HostPort], used: frozenset[HostPort]) -> str | None:
    """HOST_PORTS when a port the pod binds is taken (the NodePorts filter), else
    POD_ANTI_AFFINITY when a pod its anti-affinity refuses is there (core.pod_anti_affinity:
    a pseudo port), else None."""
    found = [w for w in want if any(ports_conflict(w, u) for u in used)]
    if not found:
        return None
    if all(pod_anti_affinity.is_token(w[0]) for w in found):
        return pod_anti_affinity.POD_ANTI_AFFINITY
    return HOST_PORTS


def missing_extended(node: "NodeState", need: Needs) -> str | None:
    """An extended resource the pod asks for that the node has none of at all (a static
    mismatch, like a nodeSelector: such a node never matches)."""
    have = dict(node.limits.extended)
    for name, _ in need.extended:
        if have.get(name, 0) <= 0:
            return name
    return None
