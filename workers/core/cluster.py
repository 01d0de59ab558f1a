"""The cluster model the decisions work on: what each node has, what is asked of it, what it
really uses. Plain frozen values, built by the snapshot adapter (or the simulator)."""

from dataclasses import dataclass, field
from enum import StrEnum

from workers.core.fit import NO_LIMITS, NOTHING_HELD, Held, Limits


@dataclass(frozen=True, order=True)
class Resources:
    """CPU in millicores and memory in bytes."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(self.cpu_millis + other.cpu_millis,
                         self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: "Resources") -> "Resources":
        return Resources(self.cpu_millis - other.cpu_millis,
                         self.memory_bytes - other.memory_bytes)

    def fits_in(self, other: "Resources") -> bool:
        return self.cpu_millis <= other.cpu_millis and self.memory_bytes <= other.memory_bytes

    def clamp_min(self, floor: "Resources") -> "Resources":
        return Resources(max(self.cpu_millis, floor.cpu_millis),
                         max(self.memory_bytes, floor.memory_bytes))

    def clamp_max(self, ceiling: "Resources") -> "Resources":
        return Resources(min(self.cpu_millis, ceiling.cpu_millis),
                         min(self.memory_bytes, ceiling.memory_bytes))

    @staticmethod
    def total(items: "list[Resources] | tuple[Resources, ...]") -> "Resources":
        return Resources(sum(r.cpu_millis for r in items), sum(r.memory_bytes for r in items))


ZERO = Resources()


@dataclass(frozen=True)
class Holding(Resources):
    """CPU and memory with what goes beside them (core.fit.Held): a reservation's size with
    the ephemeral-storage, extended resources (a GPU) and hostPorts its pod will hold (its
    pod count left out: each reservation is one pod), or the room a node has for them and
    the pods it may still take (placement.hold_room). kube-scheduler counts these too, and a
    pod is counted on a node only once it exists, so two builds decided at once took one GPU
    (or one hostPort, or the node's last pod slot)."""

    held: Held = NOTHING_HELD

    @staticmethod
    def of(size: Resources, held: Held) -> Resources:
        """`size` carrying `held`, or `size` alone when nothing is held beside it."""
        if not (held.pods or held.ephemeral_bytes or held.extended or held.host_ports):
            return Resources(size.cpu_millis, size.memory_bytes)
        return Holding(size.cpu_millis, size.memory_bytes, held)


def holds(size: Resources) -> Held:
    """What a reservation's size holds beside cpu and memory (none for a plain one, as a
    reservation of an older release)."""
    return size.held if isinstance(size, Holding) else NOTHING_HELD


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str | None = None


# Node conditions under which the kubelet refuses every new pod that is not critical: its
# eviction manager's Admit admits under MemoryPressure alone any pod but a BestEffort one
# (ours have requests), and under any other pressure condition none ("Conditions other than
# memory pressure reject all pods": pkg/kubelet/eviction/eviction_manager.go), the pod
# ending Failed, reason Evicted. kube-scheduler reads no condition, only the taints the node
# lifecycle controller adds for them (TaintNodesByCondition: disk-pressure, pid-pressure,
# NoSchedule), moments later, and a template tolerating every taint still goes there.
REFUSING_CONDITIONS = frozenset({"DiskPressure", "PIDPressure"})


@dataclass(frozen=True)
class NodeState:
    """One node as a decision sees it.

    requested: requests of the node's non-terminated pods, not counting pods still in flight;
    usage: the last metrics.k8s.io sample, or None without metrics-server: the node's CPU,
    and the memory its pods use beyond their requests (core.usage; not the node's working
    set, which counts system daemons and page cache that allocatable already leaves out);
    in_flight: agents placed on the node since that sample (reservations), whose use the
    sample cannot show yet; in_flight_pods: how many; in_flight_held: what those hold beside
    cpu and memory (a GPU: Holding), already counted in `held`;
    limits, held: what the node allows and its pods hold beside cpu and memory (pods,
    ephemeral-storage, extended resources, hostPorts: core.fit).
    """

    name: str
    allocatable: Resources
    requested: Resources = ZERO
    usage: Resources | None = None
    in_flight: Resources = ZERO
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    ready: bool = True
    limits: Limits = NO_LIMITS
    held: Held = NOTHING_HELD
    in_flight_pods: int = 0
    in_flight_held: Held = NOTHING_HELD
    reserved: Resources = ZERO  # capacity - allocatable: what the system keeps for itself
    # While not Ready: since when (its Ready condition's lastTransitionTime, Unix time: the
    # kubelet and the node lifecycle controller set it when the status changes); None when
    # Ready or not told.
    not_ready_since: float | None = None
    # A node condition under which the kubelet admits no new pod of ours (see
    # REFUSING_CONDITIONS), "" when none: DiskPressure or PIDPressure, True.
    pressure: str = ""

    @property
    def hostname(self) -> str:
        return self.labels.get("kubernetes.io/hostname", self.name)
