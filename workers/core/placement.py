"""Where an agent goes: the node with the lowest utilisation after placement (spread), among
the nodes that are Ready, not cordoned, match the template's nodeSelector, whose taints it
tolerates, and that have room. The decision is data with a human-readable reason.

`decide()` is the reference: it reads every node, and the simulator and the property tests use
it. `PlacementIndex` keeps the nodes as plain numbers, sorted so that the same decision reads a
few of them; production decides with it (through ClusterWatch), and a differential property
test holds the two to the same answers (tests/unit/test_placement_index.py)."""

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from workers.core import node_affinity
from workers.core.cluster import Holding, NodeState, Resources, TaintEffect, ZERO
from workers.core.fit import Held, lacks, needs
from workers.core.models import PodTemplate
from workers.core.sizing import choose_size, template_default, template_min
from workers.core.tolerations import cut_short, tolerates

DEFAULT_TARGET_UTILISATION = 0.8
# The pod may go to any of the best this many nodes (required node affinity), ours first
# (preferred weights): kube-scheduler has the last word among them.
DEFAULT_CANDIDATES = 3
# The taints a node autoscaler puts on a node it has chosen to remove, before it evicts the
# node's pods (all NoSchedule): Cluster Autoscaler's ToBeDeletedTaint (cluster-autoscaler
# utils/taints/taints.go, "ToBeDeletedByClusterAutoscaler"), Karpenter v1's
# DisruptedTaintKey (karpenter pkg/apis/v1/taints.go, "karpenter.sh/disrupted") and that of
# Karpenter v0.32-v0.37, still run on many clusters (pkg/apis/v1beta1/taints.go,
# DisruptionNoScheduleTaint "karpenter.sh/disruption=disrupting"). Cluster
# Autoscaler's DeletionCandidateOfClusterAutoscaler is PreferNoSchedule: a node it may
# remove later, nothing evicted yet; not one of these. No pod of ours goes to such a node,
# whatever it tolerates (`why_not`): the autoscaler drains it within seconds.
REMOVAL_TAINT_KEYS = frozenset({"ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted",
                                "karpenter.sh/disruption"})


class WaitReason(StrEnum):
    CAP = "cap"
    INSUFFICIENT_CPU = "insufficient_cpu"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    NO_MATCHING_NODE = "no_matching_node"
    # kube-scheduler found no node among the candidates we gave it, every time (its message is
    # the detail); other reasons come from core.fit: insufficient_pods, host_ports, ...
    UNSCHEDULABLE = "unschedulable"
    # A ResourceQuota of the agent namespace refused the pod for now (workers.engine.tasks): room in
    # the quota, not on nodes; more nodes would not start it.
    QUOTA = "quota"
    # The same, for a pod count of 0 (`pods: 0`): an admin paused CI in the namespace on
    # purpose; no pod ending frees it, lifting it does.
    PAUSED = "paused"
    # A node had room, but other builds placed at the same moment took it first, every one
    # of the tries (workers.engine.scheduling.RESERVE_ATTEMPTS): neither a lack of room nor a reason
    # for more nodes; the next re-drive decides again.
    CONTENTION = "contention"


@dataclass(frozen=True)
class Placement:
    node: str
    hostname: str
    size: Resources
    reason: str
    # What to count against the node until its usage shows the agent: the size, or more
    # when agents of this template are seen to use more (the in-flight estimate).
    in_flight: Resources | None = None
    # (node, hostname) of the next best nodes after this one, best first (see alternates):
    # the pod's other candidates.
    others: tuple[tuple[str, str], ...] = ()
    # Admitted with no node having room by use (see admission): its reservation is checked
    # against the node's room by cpu requests, not by use.
    by_requests: bool = False

    @property
    def candidates(self) -> tuple[tuple[str, str], ...]:
        """(node, hostname) of every node the pod may go to, ours first."""
        return ((self.node, self.hostname),) + self.others


@dataclass(frozen=True)
class Wait:
    reason: str  # a WaitReason, or a core.fit reason (insufficient_nvidia.com/gpu)
    detail: str
    min_size: Resources


Decision = Placement | Wait


def busy(node: NodeState, target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> Resources:
    """What the node's pods hold. CPU: their requests, or their use scaled to the target
    utilisation (headroom for bursts of a compressible resource) when more. Memory: their
    requests plus what they use beyond them (`usage.memory_bytes`, core.usage), as it is: the
    requests are current, and nothing the scheduler rightly counts free is counted taken."""
    if node.usage is None:
        return node.requested
    return Resources(
        max(node.requested.cpu_millis, math.ceil(node.usage.cpu_millis / target_utilisation)),
        node.requested.memory_bytes + node.usage.memory_bytes)


def admission(alloc: Resources, requested: Resources, usage: Resources | None,
              in_flight: Resources, want: Resources, use: Resources, target: float
              ) -> tuple[float, float] | None:
    """When builds wait and no node has room by use: whether a node may take `want` anyway,
    as kube-scheduler would, CPU counted by requests (it is compressible: a busy node slows
    builds, it does not fail them) and memory by use (it is not); and if so its rank, lowest
    first: (the CPU overload the build adds, how loaded the node is by use after taking
    `use`), shares of allocatable. Plain numbers, the same for decide and the index.

    The overload added is counted at the build's request over the CPU in use (sampled, plus
    what is in flight): none on a node with that much idle; on a saturated node, the request's
    share of the node. Under contention a container's CPU share follows its request, so that
    is what it takes from the builds already there: one more build on a saturated 16-core node
    slows them a quarter as much as on a 4-core one, and saturates no node that was not
    (issue 18: spreading the overload evenly saturated more nodes than requests-only)."""
    busy_c, busy_m = requested.cpu_millis, requested.memory_bytes
    if usage is not None:
        busy_c = max(busy_c, math.ceil(usage.cpu_millis / target))
        busy_m += usage.memory_bytes
    if want.cpu_millis > alloc.cpu_millis - requested.cpu_millis - in_flight.cpu_millis or \
            want.memory_bytes > alloc.memory_bytes - busy_m - in_flight.memory_bytes:
        return None
    cores = max(1, alloc.cpu_millis)
    demand = (requested if usage is None else usage).cpu_millis + in_flight.cpu_millis
    over = max(0, demand + want.cpu_millis - max(demand, alloc.cpu_millis)) / cores
    return over, max((busy_c + in_flight.cpu_millis + use.cpu_millis) / cores,
                     (busy_m + in_flight.memory_bytes + use.memory_bytes)
                     / max(1, alloc.memory_bytes))


def admitted(node: NodeState, want: Resources, low: Resources, rank: tuple[float, float],
             fitting: int, use: Resources) -> Placement:
    """The placement `admission` made (the same text from decide and the index)."""
    over, load = rank
    return Placement(node.name, node.hostname, want,
                     f"{fmt(want)} on {node.name}: no node has {fmt(low)} free by use; "
                     f"admitted by cpu requests where it adds the least cpu overload "
                     f"({over:.0%}), then the least loaded by use ({load:.0%} after "
                     f"placement), of {fitting} nodes that fit", in_flight=use, by_requests=True)


def reservation_room(node: NodeState, placement: "Placement",
                     target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> Resources:
    """What the placement's reservation is checked against, before the agents in flight:
    capacity_left, or for a placement admitted by requests its cpu requests' room and its
    memory room by use; with the node's room for what reservations hold beside them
    (hold_room), when it has any."""
    if not placement.by_requests:
        room = capacity_left(node, target_utilisation)
    else:
        held = busy(node, target_utilisation)
        room = Resources(node.allocatable.cpu_millis - node.requested.cpu_millis,
                         node.allocatable.memory_bytes - held.memory_bytes).clamp_min(ZERO)
    return Holding.of(room, hold_room(node))


def hold_room(node: NodeState) -> Held:
    """The node's ephemeral-storage and extended resources less what its pods hold, and the
    pods it may still take (0: no pod limit known), before the agents in flight (whose holds
    and pods the atomic reservation sums itself)."""
    limits, held = node.limits, node.held - node.in_flight_held
    have = dict(held.extended)
    slots = max(1, limits.pods - held.pods) if limits.pods is not None else 0
    return Held(slots, max(0, (limits.ephemeral_bytes or 0) - held.ephemeral_bytes),
                tuple((name, max(0, amount - have.get(name, 0)))
                      for name, amount in limits.extended))


def capacity_left(node: NodeState,
                  target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> Resources:
    """allocatable - max(requests, usage / target): free before counting in-flight agents."""
    return (node.allocatable - busy(node, target_utilisation)).clamp_min(ZERO)


def free(node: NodeState, target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> Resources:
    """allocatable - max(requests, usage / target) - in-flight; never negative."""
    return (capacity_left(node, target_utilisation) - node.in_flight).clamp_min(ZERO)


def being_removed(node: NodeState) -> bool:
    """A node autoscaler is removing the node (one of REMOVAL_TAINT_KEYS, NoSchedule)."""
    return any(t.key in REMOVAL_TAINT_KEYS and t.effect == TaintEffect.NO_SCHEDULE
               for t in node.taints)


def closed(node: NodeState) -> str | None:
    """Why the node takes no new pod of any template, or None: NotReady (or Unknown: the node
    lifecycle controller's), cordoned, under a pressure the kubelet refuses pods for, or
    being removed by a node autoscaler (`why_not`'s first checks)."""
    if not node.ready:
        return "NotReady"
    if node.unschedulable:
        return "cordoned"
    if node.pressure:  # the kubelet refuses the pod, whatever the pod tolerates
        return node.pressure
    if being_removed(node):
        return "being removed by a node autoscaler"
    return None


def why_not(node: NodeState, template: PodTemplate) -> str | None:
    """Why the template may not run on this node at all, or None if it may. A node a node
    autoscaler is removing takes no pod even from a template that tolerates every taint
    (`tolerations: [{operator: Exists}]`): kube-scheduler would bind it there, and the
    autoscaler's drain evict it moments later (a warm agent's pool made one, saw it go,
    and made one there again, pass after pass). Nor does a node with a NoExecute taint the
    template tolerates for fewer seconds than its activeDeadlineSeconds (core.tolerations):
    kube-scheduler binds the pod there, and the taint eviction controller evicts it then,
    the build failing mid-run (spread by load, every build went to such an idle node)."""
    return closed(node) or unsuited(node, template)


def unsuited(node: NodeState, template: PodTemplate) -> str | None:
    """Why the template may not run on this node even once it is open (`closed`): its
    nodeSelector, required node affinity, taints (or a NoExecute one tolerated too briefly)
    or extended resources; None if it may."""
    for k, v in template.node_selector.items():
        if node.labels.get(k) != v:
            return f"nodeSelector {k}={v}"
    terms = template.required_node_terms
    if terms is not None and not node_affinity.matches(node, terms):
        return "nodeAffinity"
    for taint in node.taints:
        if taint.effect == TaintEffect.PREFER_NO_SCHEDULE:
            continue
        if not tolerates(template.tolerations, taint.key, taint.value, taint.effect):
            return f"taint {taint.key}:{taint.effect}"
        if taint.effect == TaintEffect.NO_EXECUTE and (seconds := cut_short(
                template.tolerations, taint.key, taint.value,
                template.active_deadline_seconds)) is not None:
            # kube-scheduler binds it, the taint eviction controller evicts it mid-build
            return (f"taint {taint.key}:NoExecute tolerated for {seconds}s only, less than "
                    f"activeDeadlineSeconds ({template.active_deadline_seconds}s)")
    if template.resources:
        have = dict(node.limits.extended)
        for name in template.resources:
            if have.get(name, 0) <= 0:
                return f"no {name}"
    return None


def avoided(node: NodeState, template: PodTemplate) -> bool:
    """The node has a PreferNoSchedule taint the template does not tolerate: one it may use,
    but only when no other node takes it. kube-scheduler's TaintToleration scores a node by
    how many such taints it has (fewest best; taint_toleration.go,
    countIntolerableTaintsPreferNoSchedule) at weight 3, the heaviest of its default score
    plugins (apis/config/v1/default_plugins.go): it puts the pod on an untainted node that
    passes its filters however loaded. Operators taint nodes so to drain them softly, and
    Cluster Autoscaler marks the nodes it means to remove (DeletionCandidateOfClusterAutoscaler,
    cluster-autoscaler utils/taints/taints.go): spread by load alone, every build went to those
    idlest nodes, and an agent there holds the node (safe-to-evict false) so it is never
    removed."""
    return any(t.effect == TaintEffect.PREFER_NO_SCHEDULE
               and not tolerates(template.tolerations, t.key, t.value, t.effect)
               for t in node.taints)


def preferring(decide_on: Callable[[bool], "Decision"], any_soft: bool,
               count_soft: Callable[[], int], is_soft: Callable[[str], bool]) -> Decision:
    """The decision on the nodes the template is not asked to avoid (avoided), when one
    takes it there at any size; else the decision on every node, its reason saying why an
    avoided node took it. `decide_on(strict)` decides, with the nodes to avoid left out
    when strict; `any_soft`: there are some (not excluded); `count_soft()`: how many;
    `is_soft(name)`: whether one is (the same for decide and the index)."""
    if any_soft:
        first = decide_on(True)
        if isinstance(first, Placement):
            return first
    decision = decide_on(False)
    if any_soft and isinstance(decision, Placement) and is_soft(decision.node):
        decision = replace(decision, reason=f"{decision.reason}; no node without a "
                                            f"PreferNoSchedule taint it does not tolerate "
                                            f"({count_soft()} tainted) could take it")
    return decision


def utilisation_after(node: NodeState, node_free: Resources, size: Resources) -> float:
    used = node.allocatable - node_free + size
    return max(used.cpu_millis / max(1, node.allocatable.cpu_millis),
               used.memory_bytes / max(1, node.allocatable.memory_bytes))


def fmt(r: Resources) -> str:
    return f"{r.cpu_millis}m cpu, {r.memory_bytes // 2**20}Mi memory"


def no_matching_node(total: int, excluded: int) -> str:
    """The detail of a NO_MATCHING_NODE wait (the same text from decide and the index)."""
    return f"none of {total} nodes is Ready, uncordoned, matching and tolerated" + (
        f" ({excluded} excluded for this build)" if excluded else "")


def blocked_wait(blocked: Counter, matching: int, low: Resources) -> Wait:
    """Every matching node lacks what the scheduler counts beside cpu and memory: wait with
    the commonest such reason (the same from decide and the index)."""
    reason = min(blocked, key=lambda r: (-blocked[r], r))
    parts = ", ".join(f"{blocked[r]} {r}" for r in sorted(blocked, key=lambda r: (-blocked[r], r)))
    return Wait(reason, f"none of {matching} matching nodes can take one more such pod "
                        f"({parts})", low)


def decide(template: PodTemplate, nodes: Sequence[NodeState], *, waiting_ahead: int = 0,
           target_utilisation: float = DEFAULT_TARGET_UTILISATION,
           expected_use: Resources | None = None,
           exclude_nodes: frozenset[str] = frozenset()) -> Decision:
    """`decide_among`, on the nodes without a PreferNoSchedule taint the template does not
    tolerate first (avoided, preferring)."""
    soft = frozenset(n.name for n in nodes if n.taints and n.name not in exclude_nodes
                     and avoided(n, template))
    return preferring(lambda strict: decide_among(
        template, nodes, waiting_ahead=waiting_ahead, target_utilisation=target_utilisation,
        expected_use=expected_use, exclude_nodes=exclude_nodes | soft if strict
        else exclude_nodes), bool(soft), lambda: len(soft), soft.__contains__)


def decide_among(template: PodTemplate, nodes: Sequence[NodeState], *, waiting_ahead: int = 0,
                 target_utilisation: float = DEFAULT_TARGET_UTILISATION,
                 expected_use: Resources | None = None,
                 exclude_nodes: frozenset[str] = frozenset()) -> Decision:
    """Size and node for one build, or why it must wait. Deterministic for the same input.

    `expected_use` is what agents of this template were seen to really use (metrics of
    their pods), when known. Without a CPU limit a build uses what its parallelism takes,
    often more than its request: nodes with room for that use come first, so one busy build
    does not saturate a small node while a bigger one has room.
    `exclude_nodes`: nodes this build may not use (its agent failed to connect there, or the
    scheduler refused it there), as if they did not match.
    A matching node that cannot take one more such pod for what the scheduler counts beside
    cpu and memory (core.fit.lacks: pod limit, ephemeral-storage, extended resources,
    hostPorts) is left out too; when that leaves none, the build waits with that reason."""
    low, need = template_min(template), needs(template)
    eligible, blocked = [], Counter()
    for n in nodes:
        if n.name in exclude_nodes or why_not(n, template) is not None:
            continue
        lack = lacks(n, need)
        if lack is not None:
            blocked[lack] += 1
        else:
            eligible.append((n, free(n, target_utilisation)))
    if not eligible and blocked:
        return blocked_wait(blocked, sum(blocked.values()), low)
    if not eligible:
        excluded = sum(1 for n in nodes if n.name in exclude_nodes) if exclude_nodes else 0
        return Wait(WaitReason.NO_MATCHING_NODE, no_matching_node(len(nodes), excluded), low)
    want = choose_size(template, free_total=Resources.total([f for _, f in eligible]),
                       waiting_ahead=waiting_ahead)
    use = want if expected_use is None else want.clamp_min(expected_use)
    full = [(utilisation_after(n, f, use), n.name, n) for n, f in eligible if want.fits_in(f)]
    roomy = [c for c in full if use.fits_in(free(c[2], target_utilisation))]
    if full:
        util, _, node = min(roomy or full)
        seen = "" if use == want else f", {len(roomy)} with room for the {fmt(use)} " \
                                      "such builds use"
        return Placement(node.name, node.hostname, want,
                         f"{fmt(want)} on {node.name}: lowest utilisation after placement "
                         f"({util:.0%}) of {len(full)} nodes with room{seen}", in_flight=use)
    # No node has room for the wanted size: shrink memory towards min on the node with most
    # room, but CPU no lower than the default. A build without a CPU limit uses what its
    # parallelism takes whatever it requested, so a smaller CPU request only lets more builds
    # onto nodes their use then saturates, and each runs slower for it (issue 18: in a burst,
    # CPU shrunk to the room left cost turnaround and saturation against requests-only).
    floor = Resources(min(want.cpu_millis, template.cpu.default), low.memory_bytes)
    shrunk = most_room(eligible, want, floor)
    if shrunk is not None:
        return shrunk
    # No node has room by use: take the build anyway, at its default size, where kube-scheduler
    # would (issue 18: waiting for headroom cost more turnaround than sharing a busy node's CPU).
    size = template_default(template)
    use = size if expected_use is None else size.clamp_min(expected_use)
    fits = [(rank, n.name, n) for n, _ in eligible if (rank := admission(
        n.allocatable, n.requested, n.usage, n.in_flight, size, use, target_utilisation))
        is not None]
    if fits:
        rank, _, node = min(fits)
        return admitted(node, size, floor, rank, len(fits), use)
    # Not even by requests: CPU shrinks too, towards min, rather than the build wait while a
    # node has its min free.
    shrunk = most_room(eligible, want, low)
    if shrunk is not None:
        return shrunk
    short_cpu = sum(1 for _, f in eligible if f.cpu_millis < low.cpu_millis)
    short_mem = sum(1 for _, f in eligible if f.memory_bytes < low.memory_bytes)
    reason = WaitReason.INSUFFICIENT_CPU if short_cpu >= short_mem \
        else WaitReason.INSUFFICIENT_MEMORY
    return Wait(reason, f"no node has {fmt(low)} free (min size); {short_cpu} of "
                        f"{len(eligible)} lack cpu, {short_mem} lack memory", low)


def most_room(eligible: Sequence[tuple[NodeState, Resources]], want: Resources,
              floor: Resources) -> Placement | None:
    """`want` shrunk to the node with the most room (the largest share of `want` it has
    free, then the lowest utilisation after placement, then name), never below `floor`;
    None when no node has `floor` free. `eligible`: (node, free) pairs."""
    partial = []
    for n, f in eligible:
        size = want.clamp_max(f)
        if floor.fits_in(size):
            share = size.cpu_millis / want.cpu_millis + size.memory_bytes / want.memory_bytes
            partial.append((-share, utilisation_after(n, f, size), n.name, n, size))
    if not partial:
        return None
    return shrunk_to(*min(partial)[1:], want)


def shrunk_to(util: float, _name: str, node: NodeState, size: Resources,
              want: Resources) -> Placement:
    """The placement `most_room` made (the same text from decide and the index)."""
    return Placement(node.name, node.hostname, size,
                     f"{fmt(size)} on {node.name}: shrunk from {fmt(want)}, "
                     f"the most room left ({util:.0%} after placement)", in_flight=size)


def alternates(template: PodTemplate, nodes: Sequence[NodeState], placement: Placement,
               count: int, *, target_utilisation: float = DEFAULT_TARGET_UTILISATION,
               exclude_nodes: frozenset[str] = frozenset()) -> Placement:
    """The placement with up to `count` other nodes the pod could go to as well: eligible as
    for decide (not excluded, nothing lacking), with room for its size, by utilisation after
    placing it there (then name), those it is asked to avoid (avoided: PreferNoSchedule)
    after the others. The scheduler may take one of them when ours is refused."""
    if count <= 0:
        return placement
    need, size = needs(template), placement.size
    ranked = sorted(
        (avoided(n, template), utilisation_after(n, f, size), n.name, n.hostname)
        for n in nodes
        if n.name != placement.node and n.name not in exclude_nodes
        and why_not(n, template) is None and lacks(n, need) is None
        and size.fits_in(f := free(n, target_utilisation)))
    return replace(placement, others=tuple((name, host) for _, _, name, host in ranked[:count]))
