"""What giving way (workers.core.warm_pool.give_way) counts beside cpu and memory: an idle
warm agent's pod holds a pod slot, ephemeral-storage, extended resources (a GPU), its
hostPorts and its anti-affinity token (core.fit, core.pod_anti_affinity) on its node, and a
build may wait for any of them (`insufficient_nvidia.com/gpu`, `host_ports`,
`pod_anti_affinity`, ...). Giving the agent up frees them; it is given up only when that
makes the build fit (kube-scheduler's NodeResourcesFit, NodePorts and InterPodAffinity
filters, as core.fit counts them). Pure."""

from collections.abc import Iterable, Mapping
from dataclasses import replace

from workers.core import fit, pod_anti_affinity
from workers.core.cluster import NodeState
from workers.core.fit import Held, Needs


def gives_room(reason: str) -> bool:
    """Whether a build waiting for this reason could be placed once an idle warm agent's pod
    leaves a node it may use: room (cpu, memory, pods, ephemeral-storage, an extended
    resource), a host port, or the anti-affinity token the agent holds (as
    core.scale_up.wants_node, less a node matching it at all)."""
    return reason.startswith("insufficient_") or reason in (
        fit.HOST_PORTS, pod_anti_affinity.POD_ANTI_AFFINITY)


class Beside:
    """The nodes' holdings beside cpu and memory as giving way changes them. A node it was
    not told of (no cluster view yet) is judged by cpu and memory alone."""

    def __init__(self, nodes: Mapping[str, NodeState],
                 gone: Iterable[tuple[str, Held]] = ()) -> None:
        self._nodes = dict(nodes)
        self._held = {name: n.held for name, n in nodes.items()}
        for node, held in gone:  # given up already, their pods still counted
            if node in self._held:
                self._held[node] = self._held[node] - held

    def fits(self, node: str, needs: Needs, leaving: Iterable[Held] = ()) -> bool:
        """The node takes one more pod with these needs once `leaving` are gone."""
        state = self._nodes.get(node)
        if state is None:
            return True
        held = self._held[node]
        for h in leaving:
            held = held - h
        return fit.lacks(replace(state, held=held), needs) is None

    def take(self, node: str, needs: Needs, leaving: Iterable[Held] = ()) -> None:
        """The build placed on the node, `leaving` gone from it."""
        if node not in self._held:
            return
        held = self._held[node]
        for h in leaving:
            held = held - h
        self._held[node] = held + needs.held


def common_held(held: list[Held]) -> Held:
    """What every one of these holds: the name of an agent of a template whose job slug
    another's shares (keys._slug cuts it at 32 characters, '_' and '.' made '-') tells neither
    apart. Counted as the first one's, a CPU agent's going freed a GPU twin template's GPU
    that its node had not got: a GPU build was taken for placed there, and waited while an
    idle GPU agent could have given way."""
    first, *rest = held
    for h in rest:
        other = dict(h.extended)
        first = Held(min(first.pods, h.pods), min(first.ephemeral_bytes, h.ephemeral_bytes),
                     tuple((k, min(v, other[k])) for k, v in first.extended if k in other),
                     first.host_ports & h.host_ports)
    return first
