"""How short the cluster is: the shortfall of the builds waiting for capacity, and how many
nodes of a reference shape would place them all (first-fit decreasing)."""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import and_, ge, itemgetter

from workers.core.cluster import ZERO, Holding, NodeState, Resources
from workers.core.fit import NOTHING_HELD, Held, Limits, Needs, lacks, needs

ONE_POD = Needs()  # what every build asks beside cpu and memory: one pod slot
from workers.core.models import PodTemplate
from workers.core.placement import DEFAULT_TARGET_UTILISATION, free, why_not
from workers.core.placement_index import PlacementIndex, template_key


@dataclass(frozen=True)
class WaitingBuild:
    """A build waiting for capacity, at the smallest size it may run with."""

    build_key: str
    template: PodTemplate
    min_size: Resources


@dataclass(frozen=True)
class Plan:
    """Where first-fit decreasing puts each waiting build: a node name, `new-<i>` for the i-th
    fresh reference node, or None when it is bigger than a reference node."""

    nodes_needed: int
    assignment: dict[str, str | None]

    @property
    def unplaceable(self) -> int:
        return sum(1 for v in self.assignment.values() if v is None)


@dataclass(frozen=True)
class CapacityState:
    waiting: int
    shortfall: Resources
    nodes_needed: int  # of the reference shape, for the builds such a node can hold
    unplaceable: int  # builds bigger than a reference node: no number of them places these
    reference: Resources
    # the unplaceable builds (key, min size): nodes_needed leaves them out, so a build that
    # only a bigger node could take is told apart from a cluster that is merely full
    too_big: tuple[tuple[str, Resources], ...] = ()


def _too_big(waiting: Sequence[WaitingBuild], result: Plan) -> tuple[tuple[str, Resources], ...]:
    return tuple((w.build_key, w.min_size) for w in waiting
                 if result.assignment.get(w.build_key, "") is None)


def shortfall(waiting: Sequence[WaitingBuild]) -> Resources:
    """CPU and memory of all waiting builds at their min size."""
    return Resources.total([w.min_size for w in waiting])


def reference_shape(nodes: Sequence[NodeState],
                    templates: Sequence[PodTemplate] = ()) -> Resources | None:
    """The most common node shape (allocatable) among the nodes one of `templates` (the
    waiting builds') may use (placement.why_not: Ready, uncordoned, its nodeSelector, taints
    tolerated, the extended resources it asks); of every node when none may (or none wait).
    Ties go to the larger shape. Counted over every node, a pool the builds may not use
    (a tainted GPU pool, cordoned nodes being retired) set the shape when it held most
    nodes: nodes_needed then counted in nodes the builds could not run on (1 node of 32
    cores where 2 of the CI pool's 4 were missing)."""
    if not nodes:
        return None
    unique = list({template_key(t): t for t in templates}.values())
    usable = [n for n in nodes if any(why_not(n, t) is None for t in unique)]
    counts = Counter(n.allocatable for n in (usable or nodes))
    return max(counts, key=lambda shape: (counts[shape], shape))


def _weight(size: Resources, reference: Resources) -> float:
    return max(size.cpu_millis / max(1, reference.cpu_millis),
               size.memory_bytes / max(1, reference.memory_bytes))


def plan(waiting: Sequence[WaitingBuild], nodes: Sequence[NodeState], reference: Resources,
         *, target_utilisation: float = DEFAULT_TARGET_UTILISATION,
         per_node: Resources = ZERO, fresh_limits: Limits | None = None) -> Plan:
    """First-fit decreasing: the biggest waiting build first, into the first existing node it
    may use and fits, else the first fresh reference node it fits, else a new one.
    A fresh node is assumed to match every template (the reference shape is the operator's).
    A build asking what kube-scheduler counts beside cpu and memory (a GPU, ephemeral-storage,
    a hostPort: core.fit) goes only to a node that has it left (core.fit.lacks, the builds
    planned there before it counted): first-fit put a build waiting for a GPU on the GPU node
    whose GPU was taken, which had cpu, and nodes_needed said 0 while it waited. Every
    build takes a pod slot (allocatable `pods`, EKS max-pods): a build waiting as
    insufficient_pods was planned onto the node at its pod limit, which had cpu, and
    nodes_needed said 0 while it waited.
    `per_node`: what pods not ours take on every node (DaemonSets: see fresh_room);
    `fresh_limits`: what a fresh node has for builds beside cpu and memory (_onto_fresh)."""
    reference = fresh_room(reference, per_node)
    order = sorted(waiting, key=lambda w: (_weight(w.min_size, reference), w.build_key),
                   reverse=True)
    existing = sorted(nodes, key=lambda n: n.name)
    room = {n.name: free(n, target_utilisation) for n in existing}
    fresh: list[Holding] = []
    pools: dict[tuple[Resources, Limits], list[Holding]] = {}  # (_onto_pool)
    assignment: dict[str, str | None] = {}
    extras = _Extras()
    for w in order:
        need = extras.need(w.template) or ONE_POD  # a pod slot, at least (fit.lacks)
        target = next((n.name for n in existing if why_not(n, w.template) is None
                       and w.min_size.fits_in(room[n.name])
                       and extras.fits(n.name, n, need)), None)
        if target is not None:
            room[target] = room[target] - w.min_size
            assignment[w.build_key] = target
            extras.take(target, need)
            continue
        if need.extended:
            pool = next((n for n in existing if why_not(n, w.template) is None), None)
            if pool is None:
                need = _pool_unseen(need, fresh_limits)
            elif _none_of(need, fresh_limits):
                assignment[w.build_key] = _onto_pool(w.min_size, need, pool, per_node, pools)
                continue
        assignment[w.build_key] = _onto_fresh(w.min_size, need, reference, fresh, fresh_limits)
    return Plan(nodes_needed=len(fresh) + sum(map(len, pools.values())), assignment=assignment)


def _none_of(need: Needs, limits: Limits | None) -> bool:
    """A fresh node of these limits has none of an extended resource `need` asks (a CPU
    node, for a GPU build)."""
    have = dict(limits.extended) if limits is not None else None
    return have is not None and any(have.get(name, 0) <= 0 for name, _ in need.extended)


def _onto_pool(size: Resources, need: Needs, pool: NodeState, per_node: Resources,
               pools: dict[tuple[Resources, Limits], list[Holding]]) -> str | None:
    """First fit onto fresh nodes of the build's own pool, shaped as `pool` (the first node by
    name the template may use), apart from the reference shape's: a build asking an extended
    resource a node of the reference shape has none of (a GPU build waiting beside builds of
    a more common CPU pool, whose shape is the reference) while its pool has nodes. Left out
    of nodes_needed as unplaceable, a GPU pool at its maximum and full paged no one while a
    CPU warm pool below its min or a CPU build about to be placed set the shape: nodes_needed
    0, and CIClusterShortOfCapacity's 5 minutes began again at every such refresh. Planned
    onto the reference shape by its cpu (before), CPU nodes were asked for that never start
    it. `pools` holds each shape's fresh nodes (updated in place): `new-<shape>-<i>`."""
    shape = (pool.allocatable, pool.limits)
    fresh = pools.setdefault(shape, [])
    at = _onto_fresh(size, need, fresh_room(pool.allocatable, per_node), fresh, pool.limits)
    return None if at is None else f"new-{list(pools).index(shape)}-{at[len('new-'):]}"


def _pool_unseen(need: Needs, limits: Limits | None) -> Needs:
    """`need` for a fresh node when no node of the template's own pool is there to tell what
    it has (its node group at zero, as GPU pools often are: placement.why_not refuses every
    node): such a node is assumed to match the template, and an extended resource the
    reference shape has none of is not counted, as its pool's nodes may have it (the build's
    scale-up pod asks one of that pool)."""
    have = dict(limits.extended) if limits is not None else {}
    return replace(need, extended=tuple((n, a) for n, a in need.extended if n in have))


class _Extras:
    """What the builds planned onto a node hold beside cpu and memory (core.fit), so that a
    second GPU build is not planned onto the GPU the first one took."""

    def __init__(self) -> None:
        self._needs: dict[int, Needs | None] = {}
        self._taken: dict[object, Held] = {}
        self.missed: dict[int, list[tuple[int, int]]] = {}  # template -> sizes that found none

    def need(self, template: PodTemplate) -> Needs | None:
        """The template's needs when it asks more than cpu, memory and a pod slot."""
        if (got := self._needs.get(id(template), False)) is False:
            n = needs(template)
            got = self._needs[id(template)] = n if (
                n.ephemeral_bytes or n.extended or n.host_ports) else None
        return got

    def fits(self, where: object, node: NodeState, need: Needs) -> bool:
        taken = self._taken.get(where)
        return lacks(node if taken is None else replace(node, held=node.held + taken),
                     need) is None

    def take(self, where: object, need: Needs | None) -> None:
        if need is not None:
            self._taken[where] = self._taken.get(where, NOTHING_HELD) + need.held


def fresh_room(reference: Resources, per_node: Resources) -> Resources:
    """The room a fresh node of the reference shape has for builds: its allocatable less
    what pods not ours take on every node (`per_node`: the DaemonSets, kube-proxy, the CNI,
    a log shipper, bound to a node as it joins; kube-scheduler counts their requests
    beside ours, and Cluster Autoscaler's scale-up simulation puts them on its template
    node too: simulator/node_info_utils.go, daemonset.GetDaemonSetPodsForNode). Counted
    on the whole allocatable, a 4-core node with 500m of DaemonSets took two 1.9-core
    builds by the plan, one in fact, and nodes_needed asked for half the nodes missing."""
    return (reference - per_node).clamp_min(ZERO)


def _onto_fresh(size: Resources, need: Needs, reference: Resources, fresh: list[Holding],
                limits: Limits | None = None) -> str | None:
    """First fit onto fresh reference nodes (`fresh` holds their room and, as `held`, what
    the builds planned there hold beside cpu and memory; updated in place), opening one if
    needed: `new-<i>`, or None when a reference node is too small.
    `limits`: what a fresh node has for builds beside cpu and memory (its allocatable
    `pods` less its DaemonSets' pods, its ephemeral-storage, its extended resources; None:
    not known, not counted, hostPorts still). kube-scheduler counts these on a node added as on any
    (NodeResourcesFit, NodePorts), and Cluster Autoscaler's estimator too (its binpacking
    runs the scheduler's filters on the template node, DaemonSet pods on it): on small
    nodes of an EKS max-pods (8 to 29 on t3 types), ten small builds that fit one node by
    cpu took two by pods, and three builds waiting for a GPU on nodes of one GPU each were
    one node by cpu; nodes_needed said 1 for both. An extended resource the fresh node
    has none of makes the build unplaceable (None), as a size bigger than the node does:
    mixed with builds of a CPU pool more common than its GPU pool, a GPU build was planned
    onto a fresh CPU node by its cpu alone, so nodes_needed asked for CPU nodes, and kept
    asking after they were added, which never start it (why_not: no such node takes it)."""
    if not size.fits_in(reference):
        return None
    # A fresh node's hostPorts are its builds' alone, whatever its limits: counted when those
    # are not known too (a shape from config), or three builds binding one port were 1 node.
    counted = limits is not None or bool(need.host_ports)
    if counted:
        need = _on_fresh(need, limits) if limits is not None else \
            replace(need, extended=(), ephemeral_bytes=0)  # only its ports are known
        limits = Limits() if limits is None else limits
        if lacks(_fresh_node(reference, limits), need) is not None:
            return None  # not even an empty fresh node takes it (fresh_lacks)

    def takes(left: Holding) -> bool:
        return not counted or lacks(_fresh_node(reference, limits, left.held), need) is None

    index = next((i for i, left in enumerate(fresh) if size.fits_in(left) and takes(left)),
                 None)
    if index is None:
        fresh.append(Holding(reference.cpu_millis, reference.memory_bytes))
        index = len(fresh) - 1
    left = fresh[index] - size
    fresh[index] = Holding(left.cpu_millis, left.memory_bytes, fresh[index].held + need.held)
    return f"new-{index}"


def _fresh_node(room: Resources, limits: Limits, held: Held = NOTHING_HELD) -> NodeState:
    """A fresh node as fit.lacks reads it: what builds planned there hold, beside the
    hostPorts its DaemonSets bind (Limits.bound_ports: kube-scheduler's NodePorts counts
    them as any pod's, so a build binding one never goes there)."""
    if limits.bound_ports:
        held = held + Held(host_ports=limits.bound_ports)
    return NodeState("new", room, limits=limits, held=held)


def _on_fresh(need: Needs, limits: Limits) -> Needs:
    """`need` as a fresh node of these limits counts it (_onto_fresh): ephemeral-storage not
    counted when it reports none (a kubelet without local storage isolation)."""
    return replace(need, ephemeral_bytes=need.ephemeral_bytes
                   if limits.ephemeral_bytes is not None else 0)


def fresh_lacks(need: Needs, room: Resources, limits: Limits | None) -> str | None:
    """What an empty fresh reference node (`room`: fresh_room) lacks beside cpu and memory
    for a build of these needs (fit.lacks' wait reason: insufficient_nvidia.com/gpu, say),
    or None, also when its limits are not known (_onto_fresh: not counted). Such a build is
    unplaceable though it fits the node's cpu and memory: told as bigger than the node by
    them, a build asking two GPUs of a pool of one each read "it asks 900m cpu; such a node
    has 8000m cpu"."""
    if limits is None:
        return None
    return lacks(_fresh_node(room, limits), _on_fresh(need, limits))


def capacity_state(waiting: Sequence[WaitingBuild], nodes: Sequence[NodeState],
                   reference: Resources | None = None, *,
                   target_utilisation: float = DEFAULT_TARGET_UTILISATION,
                   per_node: Resources = ZERO, fresh_limits: Limits | None = None) -> CapacityState:
    reference = reference or reference_shape(nodes, [w.template for w in waiting]) \
        or Resources()
    result = plan(waiting, nodes, reference, target_utilisation=target_utilisation,
                  per_node=per_node, fresh_limits=fresh_limits)
    return CapacityState(waiting=len(waiting), shortfall=shortfall(waiting),
                         nodes_needed=result.nodes_needed, unplaceable=result.unplaceable,
                         reference=reference, too_big=_too_big(waiting, result))


# -- the same, on a PlacementIndex: no pass over every node per waiting build ---------------

def plan_on_index(waiting: Sequence[WaitingBuild], index: PlacementIndex, reference: Resources,
                  *, changed: Mapping[str, NodeState] | None = None,
                  target_utilisation: float | None = None, per_node: Resources = ZERO,
                  fresh_limits: Limits | None = None) -> Plan:
    """`plan(waiting, nodes, reference)` for the index's nodes (each replaced by its entry in
    `changed`), the same plan. Room only shrinks while planning, so for builds of one template
    key and min size the first node that fits never moves back: one lazy scan per such class
    resumes where the last build of the class landed (amortised, not a pass per build); a
    size that found no node rules out every bigger one of its key; and a key with no node
    that has the size free (counted on the index) is not scanned at all."""
    if target_utilisation is not None:
        index.retarget(target_utilisation)
    reference = fresh_room(reference, per_node)
    order = sorted(waiting, key=lambda w: (_weight(w.min_size, reference), w.build_key),
                   reverse=True)
    room_c, room_m = index.rooms(changed)
    slots_left = index.pod_room(changed)  # a build takes a pod slot too (see plan)
    scans: dict[tuple, list] = {}  # (key, cpu, memory) -> [lazy hits, last hit]
    failed: dict[tuple, list[tuple[int, int]]] = {}  # key -> sizes that found no node
    fresh: list[Holding] = []
    pools: dict[tuple[Resources, Limits], list[Holding]] = {}  # (as plan)
    assignment: dict[str, str | None] = {}
    extras = _Extras()
    for w in order:
        a, b = w.min_size.cpu_millis, w.min_size.memory_bytes
        need = extras.need(w.template)
        if need is not None:  # the few that ask more: each node looked at (as plan does);
            # room and what is left only shrink, so a size that found none rules out bigger
            missed = extras.missed.setdefault(id(w.template), [])
            slot = None if any(a >= fa and b >= fb for fa, fb in missed) else next(
                (s for _, s in index.in_name_order(w.template, changed=changed)
                 if room_c[s] >= a and room_m[s] >= b and slots_left[s]  # (the other
                 # builds' pods: extras has those of these few builds only)
                 and extras.fits(s, index.node_state(s, changed), need)), None)
            if slot is None:
                missed.append((a, b))
            if slot is not None:
                room_c[slot] -= a
                room_m[slot] -= b
                slots_left[slot] -= 1
                extras.take(slot, need)
                assignment[w.build_key] = index.slot_name(slot)
            else:
                names = index.in_name_order(w.template, changed=changed) \
                    if need.extended else None
                if names is not None and not names:
                    need = _pool_unseen(need, fresh_limits)  # (as plan)
                elif names and _none_of(need, fresh_limits):
                    assignment[w.build_key] = _onto_pool(
                        w.min_size, need, index.node_state(names[0][1], changed), per_node,
                        pools)
                    continue
                assignment[w.build_key] = _onto_fresh(w.min_size, need, reference, fresh,
                                                      fresh_limits)
            continue
        key = template_key(w.template)
        slot = None
        if not any(a >= fa and b >= fb for fa, fb in failed.get(key, ())):
            scan = scans.get((key, a, b))
            if scan is None:
                hits = iter(())
                if index.count_with_room(w.template, w.min_size, changed=changed):
                    names = index.in_name_order(w.template, changed=changed)
                    slots = map(itemgetter(1), names)
                    hits = compress(map(itemgetter(1), names), map(
                        and_, map(and_, map(ge, map(room_c.__getitem__, slots), repeat(a)),
                                  map(ge, map(room_m.__getitem__, map(itemgetter(1), names)),
                                      repeat(b))),
                        map(ge, map(slots_left.__getitem__, map(itemgetter(1), names)),
                            repeat(1))))
                scan = scans[key, a, b] = [hits, None]
            last = scan[1]
            if last is not None and room_c[last] >= a and room_m[last] >= b \
                    and slots_left[last]:
                slot = last
            else:
                slot = scan[1] = next(scan[0], None)
            if slot is None:
                failed.setdefault(key, []).append((a, b))
        if slot is not None:
            room_c[slot] -= a
            room_m[slot] -= b
            slots_left[slot] -= 1
            assignment[w.build_key] = index.slot_name(slot)
            continue
        assignment[w.build_key] = _onto_fresh(w.min_size, ONE_POD, reference, fresh,
                                              fresh_limits)
    return Plan(nodes_needed=len(fresh) + sum(map(len, pools.values())), assignment=assignment)


def capacity_state_on_index(waiting: Sequence[WaitingBuild], index: PlacementIndex,
                            reference: Resources | None = None, *,
                            changed: Mapping[str, NodeState] | None = None,
                            target_utilisation: float | None = None,
                            per_node: Resources = ZERO,
                            fresh_limits: Limits | None = None) -> CapacityState:
    """`capacity_state(waiting, nodes, reference)` for the index's nodes."""
    reference = reference or index.reference_shape(
        [w.template for w in waiting], changed=changed) or Resources()
    result = plan_on_index(waiting, index, reference, changed=changed,
                           target_utilisation=target_utilisation, per_node=per_node,
                           fresh_limits=fresh_limits)
    return CapacityState(waiting=len(waiting), shortfall=shortfall(waiting),
                         nodes_needed=result.nodes_needed, unplaceable=result.unplaceable,
                         reference=reference, too_big=_too_big(waiting, result))
