"""Which warm agent a build may take, and the size warm agents are made at (issue 22). Pure;
the product (workers.warm) and the simulator's strategy e (workers.sim.warm_agents) both call
these, so the figures in bench/results/simulation.md are the product's rules.

A build wants a size (`wanted`): its size hint, else its job's history size, else what
placement could give a build of the template with headroom, the template's max memory. It
takes an idle agent that covers that (`covers`): at least the memory it wants, because memory
is not compressible (a build on less memory than its job peaks at is OOM-killed), and a
bigger agent is right, not wrong: the build runs as it would on a pod of its own given
headroom, and only the difference is idle. A hint covers CPU too: a build that asked for
cores gets them. A build no idle agent covers goes the normal way. Agents are made at the
demand's size (`agent_size`): the most memory any recent build of the template wanted, so
that the next build finds one that covers it. Among the agents that cover a build it takes
the one whose node has the most room by use (`claim_order`): agents are placed long before
they are taken, and a node may have turned busy since. It never takes one on a node that takes
no new pod of the template, or that a node autoscaler is removing (`claimable_on`): idle agents
may be evicted (workers.core.warm_pods), and its build would be lost with its pod moments later.
The pool retires such an agent (`retire_on`), but one on a node NotReady for a moment only
after NOT_READY_GRACE_SECONDS: nodes miss a heartbeat now and then and come back.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

from workers.core.cluster import ZERO, NodeState, Resources
from workers.core.models import PodTemplate
from workers.core.placement import why_not
from workers.core.podsize import build_size, placement_template
from workers.core.sizing import template_default

# The taints of a node a node autoscaler removes: workers.core.placement.REMOVAL_TAINT_KEYS.

# A node NotReady for less than this keeps its idle warm agents (none is claimed there
# meanwhile): kubelet heartbeats and node-lease renewals miss now and then, and the node comes
# back within seconds; the node lifecycle controller evicts only after its NoExecute taint's
# tolerationSeconds, 300 by default (the DefaultTolerationSeconds admission plugin).
NOT_READY_GRACE_SECONDS = 60
# The taints the node lifecycle controller puts on a node the moment it is not Ready
# (kubernetes pkg/controller/nodelifecycle/node_lifecycle_controller.go: NotReadyTaintTemplate
# and UnreachableTaintTemplate, NoExecute; the NoSchedule ones by nodeConditionToTaintKeyStatusMap):
# part of the blip, not a reason of their own.
NOT_READY_TAINT_KEYS = frozenset({"node.kubernetes.io/not-ready",
                                  "node.kubernetes.io/unreachable"})


@dataclass(frozen=True)
class Want:
    """What a build needs of a warm agent: `size`; CPU counts only when `cpu` (a hint)."""

    size: Resources
    cpu: bool = False


@dataclass(frozen=True)
class Candidate:
    """An idle warm agent as a claim sees it: its size, and its node's load if it took the
    build (utilisation by use, 0..1+; None when not known)."""

    name: str
    size: Resources
    since: float
    load: float | None = None


def wanted(template: PodTemplate, sized: PodTemplate, *, hinted: bool = False,
           largest: Resources | None = None) -> Want:
    """What a build of `template` needs of a warm agent. `sized` is the template with the
    build's own default (its hint, else its job's history), or `template` itself when it has
    neither: then it wants the template's max memory, as placement gives it up to that with
    headroom, and an agent with less could OOM-kill it; but no more than the pod may have on
    `largest` (as agent_size: placement gives it no more there). Wanting a max no node holds,
    it was covered by no agent of its pool (made at what a node holds), and every build
    missed. CPU is compressible: the template's default is asked for, and (but for a hint)
    not held to."""
    if sized is template:
        memory = template.memory.max
        if largest is not None:
            memory = min(memory, build_size(template, largest).memory_bytes)
        return Want(Resources(template.cpu.default, memory))
    return Want(template_default(sized), cpu=hinted)


def covers(agent: Resources, want: Want) -> bool:
    """The agent is not too small for the build: its memory (and for a hint, its CPU) at
    least what the build wants. Bigger is fine: see the module's docstring."""
    if want.cpu:
        return want.size.fits_in(agent)
    return want.size.memory_bytes <= agent.memory_bytes


def claimable_on(node: NodeState, template: PodTemplate) -> bool:
    """A build of `template` may take an idle warm agent on this node: the node would take a
    new pod of it (workers.core.placement.why_not: Ready, not cordoned, its NoSchedule taints
    tolerated, ...; `kubectl drain` and a node upgrade cordon before they evict), and no node
    autoscaler is removing it (the node goes, whatever the agent's pod tolerates: why_not
    says so for every pod)."""
    return why_not(node, template) is None


def retire_on(node: NodeState, template: PodTemplate, now: float,
              grace_seconds: float = NOT_READY_GRACE_SECONDS) -> bool:
    """The pool retires an idle warm agent of `template` on this node: no build may take one
    there (claimable_on), and not only because the node has been NotReady (with its
    not-ready / unreachable taints) for less than `grace_seconds`: one agent start per
    heartbeat blip. Cordoned, tainted against the template or being removed: at once. NotReady
    since a time not told (a cluster model without it): at once, as before."""
    if claimable_on(node, template):
        return False
    if node.ready or node.not_ready_since is None \
            or now - node.not_ready_since >= grace_seconds:
        return True
    well = replace(node, ready=True, not_ready_since=None,
                   taints=tuple(t for t in node.taints if t.key not in NOT_READY_TAINT_KEYS))
    return not claimable_on(well, template)


def claim_order(idle: Sequence[Candidate], want: Want) -> tuple[str, ...]:
    """The idle agents that cover the build, the one to take first: least loaded node by use
    (unknown loads after known ones), then idle longest."""
    fits = [c for c in idle if covers(c.size, want)]
    fits.sort(key=lambda c: (c.load is None, c.load or 0.0, c.since))
    return tuple(c.name for c in fits)


def agent_size(template: PodTemplate, wants: Sequence[Resources],
               largest: Resources | None = None) -> Resources:
    """The size to make the template's next warm agent: the template's default CPU, and the
    most memory any recent build wanted (`wants`, within the template's min..max). While none
    arrived, what a build with neither a hint nor a history wants (the template's max
    memory), so that the first build finds an agent that covers it: at the template's
    default, below its max, the first build of a pool (or the first after a quiet spell)
    never took one. Never more than the pod may have on `largest` (the allocatable of the
    biggest node the template may use, when known): a build placed the normal way gets no
    more there, and an agent bigger than every node fits nowhere, so the pool stayed empty."""
    default = template_default(template)
    memory = max((w.memory_bytes for w in wants), default=template.memory.max)
    memory = min(template.memory.max, max(template.memory.min, memory))
    if largest is not None:
        memory = min(memory, build_size(template, largest).memory_bytes)
    return Resources(default.cpu_millis, memory)


def largest_room(nodes: Sequence[NodeState], template: PodTemplate, *,
                 others: bool = True) -> Resources | None:
    """The `largest` of agent_size and wanted: the most room a pod of the template could
    have on a node it may use (placement.why_not: Ready, uncordoned, nodeSelector, taints),
    the biggest allocatable (by memory) less what pods not ours request on every such node,
    the least of them on any (DaemonSets run on each node; other workloads come and go, and
    a node of the shape may be added); None when no node matches. Each node's `requested`
    is what pods not ours request; `others` False: it cannot be told (the biggest
    allocatable then)."""
    usable = [n for n in nodes if why_not(n, placement_template(template)) is None]
    if not usable:
        return None
    biggest = max((n.allocatable for n in usable), key=lambda a: (a.memory_bytes, a.cpu_millis))
    if not others:
        return biggest
    every = Resources(min(n.requested.cpu_millis for n in usable),
                      min(n.requested.memory_bytes for n in usable))
    return (biggest - every).clamp_min(ZERO)


def load_after(allocatable: Resources, free: Resources, extra: Resources) -> float:
    """A node's utilisation by use once `extra` more is used on it, the larger of CPU and
    memory: workers.core.placement.utilisation_after, from the two figures the product's
    capacity rows hold (it has no NodeState there)."""
    used = allocatable - free + extra
    return max(used.cpu_millis / max(1, allocatable.cpu_millis),
               used.memory_bytes / max(1, allocatable.memory_bytes))
