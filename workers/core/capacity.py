"""How short the cluster is: the shortfall of the builds waiting for capacity, and how many
nodes of a reference shape would place them all (first-fit decreasing)."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from workers.core.cluster import NodeState, Resources
from workers.core.models import PodTemplate
from workers.core.placement import DEFAULT_TARGET_UTILISATION, free, why_not


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
    nodes_needed: int
    unplaceable: int
    reference: Resources


def shortfall(waiting: Sequence[WaitingBuild]) -> Resources:
    """CPU and memory of all waiting builds at their min size."""
    return Resources.total([w.min_size for w in waiting])


def reference_shape(nodes: Sequence[NodeState]) -> Resources | None:
    """The most common node shape (allocatable); ties go to the larger shape."""
    if not nodes:
        return None
    counts = Counter(n.allocatable for n in nodes)
    return max(counts, key=lambda shape: (counts[shape], shape))


def _weight(size: Resources, reference: Resources) -> float:
    return max(size.cpu_millis / max(1, reference.cpu_millis),
               size.memory_bytes / max(1, reference.memory_bytes))


def plan(waiting: Sequence[WaitingBuild], nodes: Sequence[NodeState], reference: Resources,
         *, target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> Plan:
    """First-fit decreasing: the biggest waiting build first, into the first existing node it
    may use and fits, else the first fresh reference node it fits, else a new one.
    A fresh node is assumed to match every template (the reference shape is the operator's)."""
    order = sorted(waiting, key=lambda w: (_weight(w.min_size, reference), w.build_key),
                   reverse=True)
    existing = sorted(nodes, key=lambda n: n.name)
    room = {n.name: free(n, target_utilisation) for n in existing}
    fresh: list[Resources] = []
    assignment: dict[str, str | None] = {}
    for w in order:
        target = next((n.name for n in existing if why_not(n, w.template) is None
                       and w.min_size.fits_in(room[n.name])), None)
        if target is not None:
            room[target] = room[target] - w.min_size
            assignment[w.build_key] = target
            continue
        if not w.min_size.fits_in(reference):
            assignment[w.build_key] = None
            continue
        index = next((i for i, left in enumerate(fresh) if w.min_size.fits_in(left)), None)
        if index is None:
            fresh.append(reference)
            index = len(fresh) - 1
        fresh[index] = fresh[index] - w.min_size
        assignment[w.build_key] = f"new-{index}"
    return Plan(nodes_needed=len(fresh), assignment=assignment)


def capacity_state(waiting: Sequence[WaitingBuild], nodes: Sequence[NodeState],
                   reference: Resources | None = None, *,
                   target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> CapacityState:
    reference = reference or reference_shape(nodes) or Resources()
    result = plan(waiting, nodes, reference, target_utilisation=target_utilisation)
    return CapacityState(waiting=len(waiting), shortfall=shortfall(waiting),
                         nodes_needed=result.nodes_needed, unplaceable=result.unplaceable,
                         reference=reference)
