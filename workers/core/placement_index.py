"""The same placement decisions, fast: a cluster-wide index that a watched snapshot keeps
current on every event (free room and utilisation as plain numbers, eligibility per
template, nodes ordered per shape by utilisation), so a decision examines only the few nodes
that can still win. Differential tests prove it decides exactly as placement.decide."""

import dataclasses
import json
import math
from collections import Counter
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import ge, itemgetter

from workers.core.cluster import NodeState, Resources, TaintEffect
from workers.core.fit import EPHEMERAL_STORAGE, PODS, Held, Needs, insufficient
from workers.core.fit import clash, lacks, needs, ports_conflict
from workers.core.models import PodTemplate, Toleration
from workers.core.placement import (
    DEFAULT_TARGET_UTILISATION, Decision, Placement, Wait, WaitReason, admission, admitted,
    avoided, blocked_wait, closed, fmt, free, no_matching_node, preferring, shrunk_to,
    utilisation_after, why_not)
from workers.core.sizing import choose_size, template_default, template_min
from workers.core.tolerations import run_bound


_Key = tuple[tuple[tuple[str, str], ...], tuple[Toleration, ...], tuple[str, ...], str, int]
_REBUILD_SHARE = 16  # more than 1/16 of the nodes changed at once: re-sort instead of moving
_NO_POD_LIMIT = 1 << 30  # pod_room of a node whose allocatable lists no pods (no limit known)


def _pods_left(node: NodeState, held: Held) -> int:
    """The pods the node may still take (fit.lacks), beside `held`'s and those in flight."""
    if node.limits.pods is None:
        return _NO_POD_LIMIT
    return max(0, node.limits.pods - held.pods - node.in_flight_pods)


# name, allocatable cpu and memory, requested + in flight cpu and memory, used cpu and memory
# (None without a sample; memory: the pods' requests plus what they use beyond them), free cpu
# and memory: what /metrics shows of a node.
NodeRow = tuple[str, int, int, int, int, int | None, int | None, int, int]


def node_row(node: NodeState, node_free: Resources) -> NodeRow:
    """What /metrics and the status page show of a node. Its free is none on a node that
    takes no pod (placement.closed: NotReady, cordoned, pressure, being removed), as
    placement sees it: a cordoned node showed its cores free beside builds waiting and
    nodes_needed asking for more."""
    if closed(node) is not None:
        node_free = Resources()
    return (node.name, node.allocatable.cpu_millis, node.allocatable.memory_bytes,
            node.requested.cpu_millis + node.in_flight.cpu_millis,
            node.requested.memory_bytes + node.in_flight.memory_bytes,
            None if node.usage is None else node.usage.cpu_millis,
            None if node.usage is None else node.requested.memory_bytes
            + node.usage.memory_bytes, node_free.cpu_millis, node_free.memory_bytes)


def template_key(template: PodTemplate) -> _Key:
    """What `why_not` reads of a template: templates of one key may use the same nodes."""
    return (tuple(sorted(template.node_selector.items())), tuple(template.tolerations),
            tuple(sorted(template.resources)),
            json.dumps(template.required_node_terms, sort_keys=True), run_bound(template))


def _free_numbers(alloc: Resources, requested: Resources, usage: Resources | None,
                  in_flight: Resources, target: float) -> tuple[int, int]:
    """`free()` as two plain ints (the same arithmetic, no objects)."""
    if usage is None:
        busy_c, busy_m = requested.cpu_millis, requested.memory_bytes
    else:
        busy_c = max(requested.cpu_millis, math.ceil(usage.cpu_millis / target))
        busy_m = requested.memory_bytes + usage.memory_bytes
    return (max(0, max(0, alloc.cpu_millis - busy_c) - in_flight.cpu_millis),
            max(0, max(0, alloc.memory_bytes - busy_m) - in_flight.memory_bytes))


def _margin(value: float) -> float:
    """Far above the rounding error of a utilisation, far below a real difference."""
    return 1e-9 * (1.0 + abs(value))


def _count_ge(values, threshold: int) -> int:
    return sum(map(ge, values, repeat(threshold)))


class _Class:
    """The nodes one template key may use, kept sorted three ways (see PlacementIndex)."""

    __slots__ = ("template", "strict", "eligible", "count", "sum_c", "sum_m", "by_c", "by_m",
                 "by_h", "by_name")

    def __init__(self, template: PodTemplate, size: int, strict: bool = False):
        self.template = template
        # strict: nor the nodes it is asked to avoid (placement.avoided: PreferNoSchedule)
        self.strict = strict
        self.eligible = bytearray(size)
        self.count = self.sum_c = self.sum_m = 0
        self.by_c: list[tuple[int, int, int]] = []  # (free cpu, free memory, slot)
        self.by_m: list[tuple[int, int, int]] = []  # (free memory, free cpu, slot)
        self.by_h: dict[tuple[int, int], list[tuple[float, int]]] = {}  # shape -> (util, slot)
        self.by_name: list[tuple[str, int]] = []


def _remove(items: list, item: tuple) -> None:
    i = bisect_left(items, item)
    if i == len(items) or items[i] != item:
        raise AssertionError(f"placement index out of step: {item!r} missing")
    del items[i]


class PlacementIndex:
    """The nodes as `decide()` reads them, kept current change by change, so that a decision
    examines a few nodes instead of all: `decide()` here returns exactly what
    `placement.decide(template, nodes, ...)` returns for the same nodes.

    Per node: allocatable and free (at the target utilisation) as plain ints, and its
    current utilisation. Per template key (nodeSelector + tolerations; eligibility is
    computed once per node and key, again when the node changes): the count and sums of
    the eligible nodes' free capacity, and the eligible nodes sorted by free cpu, by free
    memory, by name, and per node shape by current utilisation. So:
    - free_total (sizing) is a sum kept current; the counts in the reasons are bisections
      plus a walk over the smaller side of a split;
    - the node with the lowest utilisation after placement is found by walking each shape
      in order of current utilisation, stopping once current utilisation plus the smallest
      step the agent adds to a node of that shape exceeds the best found;
    - the node with the most room (when none has room for the wanted size) by walking the
      nodes by free cpu and by free memory from the top at once, stopping once what is left
      cannot have more room than the best found.
    `changed` overrides a few nodes for one decision (the ones with agents in flight):
    those are evaluated with the reference functions and skipped in the walks.

    Not thread-safe: the owner (ClusterWatch) holds its lock around changes and decisions.
    """

    def __init__(self, target_utilisation: float = DEFAULT_TARGET_UTILISATION, *,
                 max_classes: int = 64):
        self._target = target_utilisation
        self._max_classes = max_classes
        self._slots: dict[str, int] = {}
        self._spare: list[int] = []
        self._nodes: list[NodeState | None] = []
        self._loads: list[tuple[Resources, Resources | None, Resources] | None] = []
        self._shape: list[tuple[int, int]] = []
        self._fc: list[int] = []
        self._fm: list[int] = []
        self._h: list[float] = []
        self._shapes: dict[tuple[int, int], int] = {}
        self._classes: dict[_Key, _Class] = {}
        # What the scheduler counts beside cpu and memory (core.fit), per slot, and the few
        # nodes that may lack it: at their pod limit; by free ephemeral-storage; by hostPort.
        self._held: list[Held] = []
        self._pod_full: set[int] = set()
        self._eph: list[tuple[int, int]] = []  # (free ephemeral-storage, slot), sorted
        self._eph_of: list[int] = []
        self._pods_left: list[int] = []  # the pods each node may still take (pod_room)
        self._ports: dict[tuple[str, int], set[int]] = {}  # (protocol, port) -> slots
        # The nodes with a PreferNoSchedule taint (placement.avoided): few, read per decision.
        self._soft: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots)

    def reference_shape(self, templates: Sequence[PodTemplate] = (), *,
                        changed: Mapping[str, NodeState] | None = None) -> Resources | None:
        """capacity.reference_shape(nodes held, each replaced by its entry in `changed`,
        templates): from the templates' classes (the nodes each may use, by shape; a node
        several may use counted once), the few changed nodes judged again."""
        classes = [self._class(t) for t in {template_key(t): t for t in templates}.values()]
        counts: dict[tuple[int, int], int] = {}
        if len(classes) == 1:
            counts = {shape: len(items) for shape, items in classes[0].by_h.items()}
        elif classes:
            slots: dict[tuple[int, int], set[int]] = {}
            for cls in classes:
                for shape, items in cls.by_h.items():
                    slots.setdefault(shape, set()).update(slot for _, slot in items)
            counts = {shape: len(held) for shape, held in slots.items()}
        every = dict(self._shapes)
        for node in (changed or {}).values():
            slot = self._slots.get(node.name)
            if slot is None:
                continue
            was, now = self._shape[slot], (node.allocatable.cpu_millis,
                                           node.allocatable.memory_bytes)
            every[was] -= 1
            every[now] = every.get(now, 0) + 1
            if classes:
                counts[was] = counts.get(was, 0) - any(c.eligible[slot] for c in classes)
                counts[now] = counts.get(now, 0) + any(
                    why_not(node, c.template) is None for c in classes)
        counts = {shape: n for shape, n in counts.items() if n > 0} or \
            {shape: n for shape, n in every.items() if n > 0}
        if not counts:
            return None
        best = max(counts, key=lambda shape: (counts[shape], shape))
        return Resources(*best)

    # -- changes ---------------------------------------------------------------------------

    def put(self, node: NodeState) -> None:
        """Add or replace a node: its shape, labels, taints, state and load."""
        self._mark_soft(node)
        slot = self._slots.get(node.name)
        load = (node.requested, node.usage, node.in_flight)
        if slot is not None:
            old = self._nodes[slot]
            if (old.allocatable, old.labels, old.taints, old.unschedulable, old.ready,
                    old.pressure, old.limits) == (
                        node.allocatable, node.labels, node.taints, node.unschedulable,
                        node.ready, node.pressure, node.limits):
                self._unhold(slot)
                self._nodes[slot], self._held[slot] = node, node.held
                self._hold(slot)
                self.set_loads([(node.name, *load)])
                return
            self._unindex(slot)
        else:
            slot = self._new_slot(node.name)
        self._nodes[slot], self._loads[slot], self._held[slot] = node, load, node.held
        self._hold(slot)
        shape = self._shape[slot] = (node.allocatable.cpu_millis, node.allocatable.memory_bytes)
        self._shapes[shape] = self._shapes.get(shape, 0) + 1
        self._compute(slot)
        for cls in self._classes.values():
            if self._admits(cls, node):
                self._enter(cls, slot)

    def remove(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        self._soft.discard(name)
        if slot is None:
            return
        self._unindex(slot)
        self._nodes[slot] = self._loads[slot] = None
        self._held[slot] = Held()
        self._spare.append(slot)

    def replace_all(self, nodes: Iterable[NodeState]) -> None:
        """Hold exactly these nodes (a fresh list): the indexes are built once, sorted."""
        self._slots, self._spare, self._nodes, self._loads = {}, [], [], []
        self._shape, self._fc, self._fm, self._h, self._shapes = [], [], [], [], {}
        self._held, self._pod_full, self._eph, self._eph_of, self._ports = [], set(), [], [], {}
        self._pods_left, self._soft = [], set()
        for node in nodes:
            self._mark_soft(node)
            slot = self._slots.get(node.name)
            if slot is None:
                slot = self._new_slot(node.name)
            else:  # the same name twice: the last one wins, as a put would do
                self._shapes[self._shape[slot]] -= 1
            self._nodes[slot] = node
            self._loads[slot] = (node.requested, node.usage, node.in_flight)
            self._held[slot] = node.held
            shape = self._shape[slot] = (node.allocatable.cpu_millis,
                                         node.allocatable.memory_bytes)
            self._shapes[shape] = self._shapes.get(shape, 0) + 1
            self._compute(slot)
        self._shapes = {k: v for k, v in self._shapes.items() if v}
        for slot in self._slots.values():
            self._hold(slot, sort=False)
        self._eph.sort()
        for key, cls in list(self._classes.items()):
            self._classes[key] = self._build(cls.template, cls.strict)

    def set_loads(self, loads: Iterable[tuple[str, Resources, Resources | None, Resources]]
                  ) -> None:
        """New (name, requested, usage, in_flight) of nodes held; unknown names are ignored.
        Many at once (a metrics poll): the indexes are sorted again instead."""
        moved = []
        slots, nodes, fcs, fms, target = self._slots, self._nodes, self._fc, self._fm, \
            self._target
        # A node named twice in one batch takes its last load: each is compared with the free
        # numbers held before the batch, so an earlier entry would otherwise win.
        latest = {load[0]: load for load in loads}
        for name, requested, usage, in_flight in latest.values():
            slot = slots.get(name)
            if slot is None:
                continue
            self._loads[slot] = (requested, usage, in_flight)
            fc, fm = _free_numbers(nodes[slot].allocatable, requested, usage, in_flight,
                                   target)
            if fc != fcs[slot] or fm != fms[slot]:
                moved.append((slot, fc, fm))
        if len(moved) * _REBUILD_SHARE > max(len(slots), _REBUILD_SHARE):
            for slot, fc, fm in moved:
                self._set_free(slot, fc, fm)
            self._resort()
            return
        for slot, fc, fm in moved:
            inside = [cls for cls in self._classes.values() if cls.eligible[slot]]
            for cls in inside:
                self._leave(cls, slot, keep_name=True)
            self._set_free(slot, fc, fm)
            for cls in inside:
                self._enter(cls, slot, keep_name=True)

    def set_held(self, items: Iterable[tuple[str, Held]]) -> None:
        """What the pods of nodes held hold beside cpu and memory (core.fit.Held), now;
        unknown names are ignored."""
        for name, held in items:
            slot = self._slots.get(name)
            if slot is None or self._held[slot] == held:
                continue
            self._unhold(slot)
            self._held[slot] = held
            self._hold(slot)

    def retarget(self, target_utilisation: float) -> None:
        """Free capacity at another target utilisation (every node computed again)."""
        if target_utilisation == self._target:
            return
        self._target = target_utilisation
        for slot in self._slots.values():
            self._compute(slot)
        self._resort()

    # -- internals -------------------------------------------------------------------------

    def _mark_soft(self, node: NodeState) -> None:
        if any(t.effect == TaintEffect.PREFER_NO_SCHEDULE for t in node.taints):
            self._soft.add(node.name)
        else:
            self._soft.discard(node.name)

    def _avoided(self, template: PodTemplate, changed: Mapping[str, NodeState] | None,
                 exclude: frozenset[str] = frozenset(), first: bool = False
                 ) -> frozenset[str]:
        """The nodes held, not in `exclude`, that the template is asked to avoid
        (placement.avoided); with `first`, one of them at most (whether there are any)."""
        changed, out = changed or {}, set()
        for name in self._soft:
            if name not in exclude and avoided(
                    changed.get(name) or self._nodes[self._slots[name]], template):
                out.add(name)
                if first:
                    break
        return frozenset(out)

    @staticmethod
    def _admits(cls: _Class, node: NodeState) -> bool:
        """The class's template may use the node (why_not), and when strict, is not asked to
        avoid it (placement.avoided): what a strict class holds is what decide_among sees
        with the avoided nodes excluded, kept sorted as any class, so that a decision among
        the others reads a few nodes whatever their number (Cluster Autoscaler soft-taints
        every node it finds unneeded, 10 a loop: hundreds on a quiet night; excluded one by
        one, 1,500 such nodes of 5,000 took a decision from 0.1 ms to 117 ms)."""
        return why_not(node, cls.template) is None and not (
            cls.strict and node.taints and avoided(node, cls.template))

    def _new_slot(self, name: str) -> int:
        if self._spare:
            slot = self._spare.pop()
        else:
            slot = len(self._nodes)
            for column, blank in ((self._nodes, None), (self._loads, None),
                                  (self._shape, (0, 0)), (self._fc, 0), (self._fm, 0),
                                  (self._h, 0.0), (self._held, Held()), (self._eph_of, 0),
                                  (self._pods_left, 0)):
                column.append(blank)
            for cls in self._classes.values():
                cls.eligible.append(0)
        self._slots[name] = slot
        return slot

    def _compute(self, slot: int) -> None:
        requested, usage, in_flight = self._loads[slot]
        self._set_free(slot, *_free_numbers(self._nodes[slot].allocatable, requested, usage,
                                            in_flight, self._target))

    def _set_free(self, slot: int, fc: int, fm: int) -> None:
        ac, am = self._shape[slot]
        self._fc[slot], self._fm[slot] = fc, fm
        self._h[slot] = max((ac - fc) / max(1, ac), (am - fm) / max(1, am))

    def _hold(self, slot: int, sort: bool = True) -> None:
        """Index what the slot's pods hold (core.fit), from _nodes[slot] and _held[slot]."""
        node, held = self._nodes[slot], self._held[slot]
        limits = node.limits
        if limits.pods is not None and held.pods + node.in_flight_pods + 1 > limits.pods:
            self._pod_full.add(slot)
        self._pods_left[slot] = _pods_left(node, held)
        room = self._eph_of[slot] = (limits.ephemeral_bytes or 0) - held.ephemeral_bytes
        if sort:
            insort(self._eph, (room, slot))
        else:
            self._eph.append((room, slot))
        for protocol, _, port in held.host_ports:
            self._ports.setdefault((protocol, port), set()).add(slot)

    def _unhold(self, slot: int) -> None:
        self._pod_full.discard(slot)
        self._pods_left[slot] = 0
        _remove(self._eph, (self._eph_of[slot], slot))
        for protocol, _, port in self._held[slot].host_ports:
            slots = self._ports.get((protocol, port))
            if slots is not None:
                slots.discard(slot)
                if not slots:
                    del self._ports[protocol, port]

    def _blocked(self, cls: _Class, need: Needs) -> dict[int, str]:
        """The eligible slots that lack what the template needs beside cpu and memory, with
        the reason `fit.lacks` gives (checked in the same order), from the few candidates
        the indexes name: nodes at their pod limit, short of ephemeral-storage, holding a
        port, and (for extended resources) the eligible nodes, which all have them."""
        out: dict[int, str] = {}
        elig = cls.eligible
        for slot in self._pod_full:
            if elig[slot]:
                out[slot] = insufficient(PODS)
        if need.ephemeral_bytes:
            for _, slot in self._eph[:bisect_left(self._eph, (need.ephemeral_bytes,))]:
                if elig[slot] and slot not in out:
                    out[slot] = insufficient(EPHEMERAL_STORAGE)
        if need.extended:
            nodes, held = self._nodes, self._held
            for _, slot in cls.by_name:
                if slot not in out:
                    have, used = dict(nodes[slot].limits.extended), dict(held[slot].extended)
                    for name, amount in need.extended:
                        if used.get(name, 0) + amount > have.get(name, 0):
                            out[slot] = insufficient(name)
                            break
        for want in need.host_ports:
            for slot in self._ports.get((want[0], want[2]), ()):
                if elig[slot] and slot not in out and any(
                        ports_conflict(want, used) for used in self._held[slot].host_ports):
                    out[slot] = clash(need.host_ports, self._held[slot].host_ports)
        return out

    def _unindex(self, slot: int) -> None:
        self._unhold(slot)
        for cls in self._classes.values():
            if cls.eligible[slot]:
                self._leave(cls, slot)
        shape = self._shape[slot]
        self._shapes[shape] -= 1
        if not self._shapes[shape]:
            del self._shapes[shape]

    def _enter(self, cls: _Class, slot: int, keep_name: bool = False) -> None:
        fc, fm, shape = self._fc[slot], self._fm[slot], self._shape[slot]
        cls.eligible[slot] = 1
        cls.count += 1
        cls.sum_c += fc
        cls.sum_m += fm
        insort(cls.by_c, (fc, fm, slot))
        insort(cls.by_m, (fm, fc, slot))
        insort(cls.by_h.setdefault(shape, []), (self._h[slot], slot))
        if not keep_name:
            insort(cls.by_name, (self._nodes[slot].name, slot))

    def _leave(self, cls: _Class, slot: int, keep_name: bool = False) -> None:
        fc, fm, shape = self._fc[slot], self._fm[slot], self._shape[slot]
        cls.eligible[slot] = 0
        cls.count -= 1
        cls.sum_c -= fc
        cls.sum_m -= fm
        _remove(cls.by_c, (fc, fm, slot))
        _remove(cls.by_m, (fm, fc, slot))
        by_shape = cls.by_h[shape]
        _remove(by_shape, (self._h[slot], slot))
        if not by_shape:
            del cls.by_h[shape]
        if not keep_name:
            _remove(cls.by_name, (self._nodes[slot].name, slot))

    def _build(self, template: PodTemplate, strict: bool = False) -> _Class:
        cls = _Class(template, len(self._nodes), strict)
        for slot in self._slots.values():
            if self._admits(cls, self._nodes[slot]):
                cls.eligible[slot] = 1
        cls.by_name = sorted((self._nodes[s].name, s) for s in self._slots.values()
                             if cls.eligible[s])
        self._sort(cls)
        return cls

    def _sort(self, cls: _Class) -> None:
        slots = [s for _, s in cls.by_name]
        fc, fm, h, shape = self._fc, self._fm, self._h, self._shape
        cls.count, cls.sum_c, cls.sum_m = len(slots), sum(map(fc.__getitem__, slots)), \
            sum(map(fm.__getitem__, slots))
        cls.by_c = sorted(zip(map(fc.__getitem__, slots), map(fm.__getitem__, slots), slots))
        cls.by_m = sorted(zip(map(fm.__getitem__, slots), map(fc.__getitem__, slots), slots))
        by_h: dict[tuple[int, int], list[tuple[float, int]]] = {}
        for s in slots:
            by_h.setdefault(shape[s], []).append((h[s], s))
        for items in by_h.values():
            items.sort()
        cls.by_h = by_h

    def _resort(self) -> None:
        for cls in self._classes.values():
            self._sort(cls)

    def _class(self, template: PodTemplate, strict: bool = False) -> _Class:
        key = template_key(template)
        key = (key, "strict") if strict else key
        cls = self._classes.get(key)
        if cls is None:
            if len(self._classes) >= self._max_classes:  # forget the oldest template key
                del self._classes[next(iter(self._classes))]
            cls = self._classes[key] = self._build(template, strict)
        return cls

    def _count(self, cls: _Class, x: int, y: int) -> int:
        """Eligible nodes (as held) with free cpu >= x and free memory >= y: split by each
        bound with a bisection and walk the smallest of the four parts."""
        n = len(cls.by_c)
        i, j = bisect_left(cls.by_c, (x,)), bisect_left(cls.by_m, (y,))
        a, b = n - i, n - j  # free cpu >= x; free memory >= y
        if not a or not b:
            return 0
        if not i or not j:
            return b if not i else a
        smallest = min(a, i, b, j)
        if smallest == a:
            return _count_ge(map(itemgetter(1), cls.by_c[i:]), y)
        if smallest == i:
            return b - _count_ge(map(itemgetter(1), cls.by_c[:i]), y)
        if smallest == b:
            return _count_ge(map(itemgetter(1), cls.by_m[j:]), x)
        return a - _count_ge(map(itemgetter(1), cls.by_m[:j]), x)

    def _alt(self, template: PodTemplate, changed: Mapping[str, NodeState] | None,
             exclude: frozenset[str] = frozenset(), blocked: Mapping[int, str] | None = None,
             need: Needs | None = None, strict: bool = False) -> list:
        """(slot, node, free, eligible) of the held nodes that `changed` replaces, and of the
        held nodes in `exclude` or `blocked` (never eligible). With `need`, a changed node
        that lacks it (core.fit.lacks) is not eligible either; `strict`, nor one the template
        is asked to avoid (_admits)."""
        alt = []
        changed = changed or {}
        for node in changed.values():
            slot = self._slots.get(node.name)
            if slot is not None:
                alt.append((slot, node, free(node, self._target),
                            node.name not in exclude and why_not(node, template) is None
                            and not (strict and node.taints and avoided(node, template))
                            and (need is None or lacks(node, need) is None)))
        names = list(exclude)
        if blocked:
            names += [self._nodes[slot].name for slot in blocked]
        for name in set(names):
            slot = self._slots.get(name)
            if slot is not None and name not in changed:
                node = self._nodes[slot]
                alt.append((slot, node, free(node, self._target), False))
        return alt

    def _count_with(self, cls: _Class, size: Resources, alt: list) -> int:
        x, y = size.cpu_millis, size.memory_bytes
        n = self._count(cls, x, y)
        fc_of, fm_of, elig = self._fc, self._fm, cls.eligible
        for slot, _, f, ok in alt:
            n -= bool(elig[slot] and fc_of[slot] >= x and fm_of[slot] >= y)
            n += bool(ok and f.cpu_millis >= x and f.memory_bytes >= y)
        return n

    # -- what first-fit planning reads (capacity.plan_on_index) ----------------------------

    def count_with_room(self, template: PodTemplate, size: Resources, *,
                        changed: Mapping[str, NodeState] | None = None) -> int:
        """How many nodes the template may use have `size` free."""
        cls = self._class(template)
        return self._count_with(cls, size, self._alt(template, changed))

    def rooms(self, changed: Mapping[str, NodeState] | None = None
              ) -> tuple[list[int], list[int]]:
        """Free cpu and memory by slot, fresh lists (`changed` applied) to be spent."""
        room_c, room_m = list(self._fc), list(self._fm)
        for node in (changed or {}).values():
            slot = self._slots.get(node.name)
            if slot is not None:
                f = free(node, self._target)
                room_c[slot], room_m[slot] = f.cpu_millis, f.memory_bytes
        return room_c, room_m

    def pod_room(self, changed: Mapping[str, NodeState] | None = None) -> list[int]:
        """How many more pods each slot's node takes (fit.lacks: its allocatable pods less
        its pods and those in flight; 0 for a free slot; many without a pod limit), a fresh
        list (`changed` applied) to be spent."""
        out = list(self._pods_left)
        for node in (changed or {}).values():
            slot = self._slots.get(node.name)
            if slot is not None:
                out[slot] = _pods_left(node, node.held)
        return out

    def in_name_order(self, template: PodTemplate, *,
                      changed: Mapping[str, NodeState] | None = None) -> list[tuple[str, int]]:
        """(name, slot) of the nodes the template may use, by name. Do not change it."""
        cls = self._class(template)
        names = cls.by_name
        for slot, node, _, ok in self._alt(template, changed):
            if ok != bool(cls.eligible[slot]):
                names = list(names) if names is cls.by_name else names
                if ok:
                    insort(names, (node.name, slot))
                else:
                    _remove(names, (node.name, slot))
        return names

    def slot_name(self, slot: int) -> str:
        return self._nodes[slot].name

    def node_state(self, slot: int, changed: Mapping[str, NodeState] | None = None
                   ) -> NodeState:
        """The slot's node as `changed` has it, else as held, with what its pods hold."""
        node = self._nodes[slot]
        alt = (changed or {}).get(node.name)
        if alt is not None:
            return alt
        return node if node.held == self._held[slot] else dataclasses.replace(
            node, held=self._held[slot])

    def rows(self, changed: Mapping[str, NodeState] | None = None) -> list[NodeRow]:
        """Every node held as a `NodeRow` (`changed` applied), as plain numbers."""
        out = []
        alt = {}
        for node in (changed or {}).values():
            if node.name in self._slots:
                alt[node.name] = node
        loads, fcs, fms, shapes = self._loads, self._fc, self._fm, self._shape
        target = self._target
        for name, slot in self._slots.items():
            node = alt.get(name)
            if node is not None:
                f = free(node, target) if closed(node) is None else Resources()
                requested, usage, in_flight = node.requested, node.usage, node.in_flight
                ac, am = node.allocatable.cpu_millis, node.allocatable.memory_bytes
                fc, fm = f.cpu_millis, f.memory_bytes
            else:
                requested, usage, in_flight = loads[slot]
                ac, am = shapes[slot]
                fc, fm = fcs[slot], fms[slot]
                if closed(self._nodes[slot]) is not None:  # as node_row
                    fc = fm = 0
            out.append((name, ac, am, requested.cpu_millis + in_flight.cpu_millis,
                        requested.memory_bytes + in_flight.memory_bytes,
                        None if usage is None else usage.cpu_millis,
                        None if usage is None else requested.memory_bytes + usage.memory_bytes,
                        fc, fm))
        return out

    # -- the decision ----------------------------------------------------------------------

    def decide(self, template: PodTemplate, *, changed: Mapping[str, NodeState] | None = None,
               waiting_ahead: int = 0, target_utilisation: float | None = None,
               expected_use: Resources | None = None,
               exclude_nodes: frozenset[str] = frozenset()) -> Decision:
        """`placement.decide(template, nodes, ...)` for the nodes held, each replaced by its
        entry in `changed` when it has one (names not held are ignored); the nodes in
        `exclude_nodes` are taken as not eligible, like the reference does."""
        if target_utilisation is not None:
            self.retarget(target_utilisation)
        return preferring(lambda strict: self._decide(
            template, changed=changed, waiting_ahead=waiting_ahead,
            expected_use=expected_use, exclude_nodes=exclude_nodes, strict=strict),
            bool(self._soft) and bool(self._avoided(template, changed, exclude_nodes, True)),
            lambda: len(self._avoided(template, changed, exclude_nodes)),
            lambda node: node in self._soft and avoided(
                (changed or {}).get(node) or self._nodes[self._slots[node]], template))

    def _decide(self, template: PodTemplate, *, changed: Mapping[str, NodeState] | None,
                waiting_ahead: int, expected_use: Resources | None,
                exclude_nodes: frozenset[str], strict: bool = False) -> Decision:
        """placement.decide_among for the nodes held (`strict`: with those the template is
        asked to avoid excluded too, a class of their own: _admits)."""
        cls = self._class(template, strict)
        low, need = template_min(template), needs(template)
        fc_of, fm_of, elig = self._fc, self._fm, cls.eligible
        blocked = self._blocked(cls, need)
        alt = self._alt(template, changed, exclude_nodes, blocked, need, strict)
        skip = {a[0] for a in alt}
        n_eligible, free_c, free_m = cls.count, cls.sum_c, cls.sum_m
        for slot, _, f, ok in alt:
            if elig[slot]:
                n_eligible, free_c, free_m = (n_eligible - 1, free_c - fc_of[slot],
                                              free_m - fm_of[slot])
            if ok:
                n_eligible, free_c, free_m = (n_eligible + 1, free_c + f.cpu_millis,
                                              free_m + f.memory_bytes)
        if not n_eligible:
            lacking = Counter(reason for slot, reason in blocked.items()
                              if self._nodes[slot].name not in exclude_nodes
                              and self._nodes[slot].name not in (changed or {}))
            for node in (changed or {}).values():
                if node.name in self._slots and node.name not in exclude_nodes \
                        and why_not(node, template) is None \
                        and not (strict and node.taints and avoided(node, template)):
                    lack = lacks(node, need)
                    if lack is not None:
                        lacking[lack] += 1
            if lacking:
                return blocked_wait(lacking, sum(lacking.values()), low)
            excluded = sum(1 for name in exclude_nodes if name in self._slots)
            return Wait(WaitReason.NO_MATCHING_NODE,
                        no_matching_node(len(self._slots), excluded), low)
        want = choose_size(template, free_total=Resources(free_c, free_m),
                           waiting_ahead=waiting_ahead)
        use = want if expected_use is None else want.clamp_min(expected_use)

        n_full = self._count_with(cls, want, alt)
        if n_full:
            n_roomy = n_full if use == want else self._count_with(cls, use, alt)
            util, node = self._lowest(cls, use if n_roomy else want, use, alt, skip)
            seen = "" if use == want else f", {n_roomy} with room for the {fmt(use)} " \
                                          "such builds use"
            return Placement(node.name, node.hostname, want,
                             f"{fmt(want)} on {node.name}: lowest utilisation after placement "
                             f"({util:.0%}) of {n_full} nodes with room{seen}", in_flight=use)
        # as the reference: memory shrinks first, at the CPU asked for; then admission by
        # requests; then CPU shrinks too
        floor = Resources(min(want.cpu_millis, template.cpu.default), low.memory_bytes)
        most = self._most_room(cls, want, floor, alt, skip)
        if most is not None:
            return shrunk_to(*most[1:], want)
        size = template_default(template)
        use = size if expected_use is None else size.clamp_min(expected_use)
        admit = self._admit(cls, size, use, alt, skip)
        if admit is not None:
            rank, fitting, node = admit
            return admitted(node, size, floor, rank, fitting, use)
        most = self._most_room(cls, want, low, alt, skip)
        if most is not None:
            return shrunk_to(*most[1:], want)
        short_cpu = bisect_left(cls.by_c, (low.cpu_millis,))
        short_mem = bisect_left(cls.by_m, (low.memory_bytes,))
        for slot, _, f, ok in alt:
            if elig[slot]:
                short_cpu -= fc_of[slot] < low.cpu_millis
                short_mem -= fm_of[slot] < low.memory_bytes
            if ok:
                short_cpu += f.cpu_millis < low.cpu_millis
                short_mem += f.memory_bytes < low.memory_bytes
        reason = WaitReason.INSUFFICIENT_CPU if short_cpu >= short_mem \
            else WaitReason.INSUFFICIENT_MEMORY
        return Wait(reason, f"no node has {fmt(low)} free (min size); {short_cpu} of "
                            f"{n_eligible} lack cpu, {short_mem} lack memory", low)

    def alternates(self, template: PodTemplate, placement: Placement, count: int, *,
                   changed: Mapping[str, NodeState] | None = None,
                   exclude_nodes: frozenset[str] = frozenset()) -> Placement:
        """`placement.alternates(template, nodes, placement, count, ...)` for the nodes held
        (`changed` applied): the next best nodes by the same walk as a decision, each one
        then left out for the next; those the template is asked to avoid after the others."""
        if count <= 0 or not self._soft or \
                not self._avoided(template, changed, exclude_nodes, first=True):
            return self._alternates(template, placement, count, changed=changed,
                                    exclude_nodes=exclude_nodes)
        first = self._alternates(template, placement, count, changed=changed,
                                 exclude_nodes=exclude_nodes, strict=True)
        if len(first.others) == count:
            return first
        rest = self._alternates(template, placement, count - len(first.others),
                                changed=changed, exclude_nodes=exclude_nodes | frozenset(
                                    name for name, _ in first.others))
        return dataclasses.replace(first, others=first.others + rest.others)

    def _alternates(self, template: PodTemplate, placement: Placement, count: int, *,
                    changed: Mapping[str, NodeState] | None,
                    exclude_nodes: frozenset[str], strict: bool = False) -> Placement:
        if count <= 0:
            return placement
        cls, need, size = self._class(template, strict), needs(template), placement.size
        taken = {placement.node}
        blocked = self._blocked(cls, need)
        others = []
        for _ in range(count):
            alt = self._alt(template, changed, exclude_nodes | taken, blocked, need, strict)
            util, node = self._lowest(cls, size, size, alt, {a[0] for a in alt})
            if node is None:
                break
            others.append((node.name, node.hostname))
            taken.add(node.name)
        return dataclasses.replace(placement, others=tuple(others))

    def _admit(self, cls: _Class, want: Resources, use: Resources, alt: list,
               skip: set[int]) -> tuple[tuple[float, float], int, NodeState] | None:
        """placement.admission over the eligible nodes: (lowest rank, how many fit, node).
        A pass over every eligible node: it runs only when none has room by use (builds wait)."""
        best, fitting, target = None, 0, self._target
        for _, node, _, ok in alt:
            if ok and (util := admission(node.allocatable, node.requested, node.usage,
                                         node.in_flight, want, use, target)) is not None:
                fitting += 1
                if best is None or (util, node.name) < (best[0], best[2].name):
                    best = (util, 0, node)
        nodes, loads = self._nodes, self._loads
        for name, slot in cls.by_name:
            if slot in skip:
                continue
            node = nodes[slot]
            requested, usage, in_flight = loads[slot]
            util = admission(node.allocatable, requested, usage, in_flight, want, use, target)
            if util is not None:
                fitting += 1
                if best is None or (util, name) < (best[0], best[2].name):
                    best = (util, 0, node)
        return None if best is None else (best[0], fitting, best[2])

    def _lowest(self, cls: _Class, room: Resources, use: Resources, alt: list,
                skip: set[int]) -> tuple[float, NodeState]:
        """The lowest (utilisation after adding `use`, name) among the eligible nodes with
        `room` free. A node's utilisation after placement is at least its current one plus
        the smallest step `use` adds to a node of its shape: per shape, walk the nodes by
        current utilisation until that bound exceeds the best found."""
        tc, tm, uc, um = room.cpu_millis, room.memory_bytes, use.cpu_millis, use.memory_bytes
        best_util, best_name, best_node = math.inf, "", None
        for _, node, f, ok in alt:
            if ok and room.fits_in(f):
                util = utilisation_after(node, f, use)
                if (util, node.name) < (best_util, best_name) or best_node is None:
                    best_util, best_name, best_node = util, node.name, node
        shapes = []
        for (ac, am), items in cls.by_h.items():
            if max(0, ac) < tc or max(0, am) < tm:
                continue  # no node of this shape can have that much free
            step = min(uc / max(1, ac), um / max(1, am))
            shapes.append((items[0][0] + step, ac, am, step, items))
        shapes.sort(key=itemgetter(0, 1, 2))
        fc_of, fm_of, nodes = self._fc, self._fm, self._nodes
        for first, ac, am, step, items in shapes:
            if first > best_util + _margin(best_util):
                break
            div_c, div_m = max(1, ac), max(1, am)
            for h, slot in items:
                if h + step > best_util + _margin(best_util):
                    break
                fc, fm = fc_of[slot], fm_of[slot]
                if fc < tc or fm < tm or slot in skip:
                    continue
                util = max((ac - fc + uc) / div_c, (am - fm + um) / div_m)
                if util <= best_util:
                    name = nodes[slot].name
                    if util < best_util or name < best_name or best_node is None:
                        best_util, best_name, best_node = util, name, nodes[slot]
        return best_util, best_node

    def _most_room(self, cls: _Class, want: Resources, low: Resources, alt: list,
                   skip: set[int]) -> tuple | None:
        """min((-share, utilisation after, name, node, size)) over the eligible nodes with
        at least `low` free, where size = want capped by the node's free capacity and share
        = size / want summed over cpu and memory. Walks the nodes by free cpu and by free
        memory from the top at once; a node not reached yet by either walk has no more
        share than the last two seen allow, so the walk stops below the best share."""
        wc, wm, lc, lm = want.cpu_millis, want.memory_bytes, low.cpu_millis, low.memory_bytes
        best = None
        for _, node, f, ok in alt:
            if ok and low.fits_in(f):
                size = want.clamp_max(f)
                share = size.cpu_millis / wc + size.memory_bytes / wm
                candidate = (-share, utilisation_after(node, f, size), node.name, node, size)
                if best is None or candidate[:3] < best[:3]:
                    best = candidate
        nodes, shape_of = self._nodes, self._shape
        seen = set(skip)

        def consider(slot: int, fc: int, fm: int) -> None:
            nonlocal best
            if slot in seen:
                return
            seen.add(slot)
            if fc < lc or fm < lm:
                return
            sc, sm = min(wc, fc), min(wm, fm)
            share = sc / wc + sm / wm
            if best is not None and -share > best[0]:
                return
            ac, am = shape_of[slot]
            util = max((ac - fc + sc) / max(1, ac), (am - fm + sm) / max(1, am))
            node = nodes[slot]
            if best is None or (-share, util, node.name) < best[:3]:
                best = (-share, util, node.name, node, Resources(sc, sm))

        by_c, by_m = cls.by_c, cls.by_m
        i = len(by_c)
        while i:
            i -= 1
            fc, fm, slot = by_c[i]
            if fc < lc:
                break  # every node with lc free cpu was walked
            consider(slot, fc, fm)
            last_c = fc
            fm, fc, slot = by_m[i]
            if fm < lm:
                break
            consider(slot, fc, fm)
            if best is not None and min(wc, last_c) / wc + min(wm, fm) / wm < -best[0]:
                break
        return best
