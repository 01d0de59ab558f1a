"""Warm agents: how many a template keeps connected and idle, and which to start or give up.

The target follows demand: builds arrive at a measured rate, and a fresh agent takes a
measured time to come online; while one replaces a taken warm agent, about rate × online
time more builds arrive (Little's law). Arrivals are bursty, so the target is the Poisson
quantile of that mean (95% by default: a pool that covers 19 windows in 20), plus one so
that the arriving build finds one at that quantile, between the template's `min` and `max`.
The rate is counted over a window of minutes, so it lags when arrivals slow: a gap with no
arrival that the counted rate would make rarer than the quantile's tail caps the rate, and
the pool shrinks a step at a time while the gap grows (`gap_cap`). With no arrival for
`idleSeconds` the target falls back to `min` (which may be 0): nights and weekends cost
nothing.

Builds always win: while builds wait for capacity, idle warm agents are given up (oldest
first, one per waiting build) and none are started. Only idle agents are ever retired; a
claimed agent belongs to its build, and a starting one is left to come online (it is given up
once idle, if still beyond the target). Pure.
"""

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from workers.core.cluster import NodeState, Resources
from workers.core.fit import NOTHING_HELD, Held, Needs
from workers.core.give_way_fit import Beside
from workers.core.models import CpuRange, MemoryRange, PodTemplate

DEFAULT_QUANTILE = 0.95
# The `source` of a warm agent's own request (its pod is made through the same placement).
WARM_SOURCE = "warm"
# A warm agent idle this long after its pod was made is retired (and replaced): its pod's
# activeDeadlineSeconds is the template's plus this, so the build that takes it still has the
# template's whole deadline (Kubernetes may lower a pod's deadline, never raise it).
WARM_MAX_AGE_SECONDS = 1800


class WarmState(StrEnum):
    STARTING = "starting"  # pod created, agent not yet online in Jenkins
    IDLE = "idle"  # online, waiting for a build
    CLAIMED = "claimed"  # taken by one build; deleted when that build ends


@dataclass(frozen=True)
class WarmAgent:
    name: str
    state: WarmState
    since: float  # when it entered this state


@dataclass(frozen=True)
class PoolPlan:
    start: int  # new warm agents to start
    retire: tuple[str, ...]  # idle warm agents to give up, in this order


def poisson_quantile(mean: float, q: float = DEFAULT_QUANTILE) -> int:
    """The smallest k with P(X <= k) >= q for X ~ Poisson(mean)."""
    if mean <= 0:
        return 0
    term = math.exp(-mean)
    if term == 0.0:  # a mean this large is near-normal: mean + z·sqrt(mean), z(0.999) bound
        return math.ceil(mean + 3.1 * math.sqrt(mean))
    k, cumulative = 0, term
    while cumulative < q:
        k += 1
        term *= mean / k
        cumulative += term
    return k


def target_size(*, minimum: int, maximum: int, idle_seconds: float,
                arrivals_per_second: float, online_seconds: float,
                last_arrival_at: float | None, now: float,
                quantile: float = DEFAULT_QUANTILE, cover_arrival: bool = True,
                gap_cap: bool = True) -> int:
    """How many warm agents (starting or idle) the template should have now.

    The quantile covers the arrivals of a start window. A build finds an idle agent only
    while fewer than the target arrived in the window before it (each took one, whose
    replacement is still starting), so with `cover_arrival` one more is kept: then a build
    finds one with probability `quantile` (Poisson arrivals see time averages), not less.
    At one arrival per online time, 0.95 gives 3 agents and 92% of builds an agent; with
    `cover_arrival`, 4 and 98%. It is the default: without it the simulator's strategy e
    had a p95 wait of 22-24 s, with it 5 s (bench/results/simulation.md, "Variants").

    With `gap_cap` (the default) the rate is at most `gap_rate(quantile, gap)` once no build
    arrived for `gap` seconds: the pool ends idle agents when arrivals slow, not only
    `idle_seconds` after the last one; the next arrival's pass sees a gap of 0 again."""
    if maximum <= 0:
        return 0
    if last_arrival_at is None or now - last_arrival_at > idle_seconds:
        return max(0, min(minimum, maximum))
    rate = max(0.0, arrivals_per_second)
    if gap_cap:
        rate = min(rate, gap_rate(quantile, now - last_arrival_at))
    wanted = poisson_quantile(rate * max(0.0, online_seconds),
                             quantile) + (1 if cover_arrival else 0)
    return max(minimum, min(maximum, wanted))


def gap_rate(quantile: float, gap: float) -> float:
    """The highest arrival rate at which no arrival for `gap` seconds is not rarer than the
    quantile's tail: exp(-rate × gap) = 1 - quantile, so -ln(1 - quantile) / gap (3 / gap at
    0.95). Above it, a gap that long says the rate has fallen. Unbounded at a gap of 0."""
    if gap <= 0 or not 0 < quantile < 1:
        return math.inf
    return -math.log(1 - quantile) / gap


def plan(agents: Sequence[WarmAgent], target: int, *, builds_waiting: int) -> PoolPlan:
    """What to do with one template's pool to bring it to `target`."""
    idle = sorted((a for a in agents if a.state == WarmState.IDLE), key=lambda a: a.since)
    if builds_waiting > 0:
        return PoolPlan(0, tuple(a.name for a in idle[:builds_waiting]))
    live = sum(1 for a in agents if a.state in (WarmState.STARTING, WarmState.IDLE))
    if live < target:
        return PoolPlan(target - live, ())
    extra = min(live - target, len(idle))
    return PoolPlan(0, tuple(a.name for a in idle[:extra]))


def outgrown(idle: Sequence[tuple[str, int]], wanted: Sequence[int],
             made_at: int) -> tuple[str, ...]:
    """The idle agents (name, memory) that no recent build could take: smaller than what every
    one of them wanted (`wanted`: the memory each build of the window wanted of a warm agent),
    and smaller than the pool makes agents at now (`made_at`; an agent at that size, the most
    the biggest node holds, would be made again just as it is). Kept, one held its place in the
    pool, which started none bigger, until its idle life ended: a template whose max memory
    was raised, or a job whose history grew, missed every build for up to half an hour.
    None while the pool makes agents smaller than every build wanted (the biggest node holds no
    more): made again, an agent would still be taken by none, and each pass that saw that node
    room grow a little (another workload's pod ended) deleted and remade the whole pool."""
    if not wanted:
        return ()
    least = min(wanted)
    if made_at < least:
        return ()
    return tuple(name for name, memory in idle if memory < least)


# Template fields that do not shape a warm agent's pod beyond its size (which the claim and
# `outgrown` judge by the agent's own): changed, they leave the pool's agents as they are.
_NOT_THE_POD = frozenset({"warm", "cpu", "memory", "max_concurrent", "history", "retry_on_oom",
                          "pod_retention", "pod_retention_seconds", "label"})


def pod_spec_of(template: PodTemplate) -> str:
    """A fingerprint of what a template's pods are made of besides their size (image,
    containers, env, volumes, nodeSelector, ...), as configured: a warm agent made under
    another one runs what the file no longer says (an image changed for a fix): no build
    takes it, and the pool retires it (workers.warm)."""
    shaped = template.model_dump(mode="json", exclude=set(_NOT_THE_POD))
    return hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:16]


# Template fields that size a pool (how many agents, at what size) without shaping its pods.
_THE_POOL = ("warm", "cpu", "memory", "max_concurrent")


def pool_sizes_of(template: PodTemplate, max_agents: int | None = None) -> str:
    """A fingerprint of how a template's pool is sized (its `warm` min, max and idleSeconds,
    its sizes, maxConcurrent, and the file's maxAgents): two files whose pods agree but whose
    pools do not want different targets, and their passes, run side by side during a rolling
    upgrade, each retired or made what the other had just made or retired."""
    shaped = {**template.model_dump(mode="json", include=set(_THE_POOL)),
              "max_agents": max_agents}
    return hashlib.sha256(json.dumps(shaped, sort_keys=True).encode()).hexdigest()[:16]


# After a warm agent of a template failed to start (its image cannot be pulled, its agent
# never connected), the pool starts no other of it for this long, doubled at each failure in
# a row up to the max: as a kubelet backs off an image pull or a crashing container (10 s
# doubled up to 5 min, kubelet's backOffPeriod and MaxContainerBackOff). Without it, a
# template whose image was broken made and retired a pod on every pass.
WARM_BACKOFF_SECONDS = 30
WARM_BACKOFF_MAX_SECONDS = 300


def backoff_seconds(failures: int) -> float:
    """How long the pool waits after `failures` start failures in a row (0 for none)."""
    if failures <= 0:
        return 0.0
    return float(min(WARM_BACKOFF_MAX_SECONDS,
                     WARM_BACKOFF_SECONDS * 2 ** min(failures - 1, 16)))


def arrival_rate(arrivals: Sequence[float], *, now: float, window_seconds: float) -> float:
    """Builds per second over the last `window_seconds` (arrival times in seconds)."""
    if window_seconds <= 0:
        return 0.0
    return sum(1 for t in arrivals if now - window_seconds <= t <= now) / window_seconds


def default_size(template: PodTemplate) -> Resources:
    """The template's default size: a warm agent's while no build of it arrived lately
    (workers.core.warm_claim.agent_size sizes them from demand)."""
    return Resources(template.cpu.default, template.memory.default)


def pinned(template: PodTemplate, size: Resources | None = None) -> PodTemplate:
    """The template with min = default = max at `size` (its default if None): placement
    gives exactly that size or waits."""
    cpu, memory = (template.cpu.default, template.memory.default) if size is None else \
        (size.cpu_millis, size.memory_bytes)
    return template.model_copy(update={
        "cpu": CpuRange.model_construct(min=cpu, default=cpu, max=cpu),
        "memory": MemoryRange.model_construct(min=memory, default=memory, max=memory)})


def most_agents(template: PodTemplate, max_agents: int | None = None) -> int:
    """The most warm agents (starting or idle) the template's pool may hold: its `max`, but
    never more than builds could take at once. Each build takes its slot before it claims an
    agent (workers.engine.caps), so agents beyond the template's `maxConcurrent`, or beyond
    `maxAgents` (all templates together), could never all be taken: idle pods that only hold
    their nodes' room (and nodes_needed's)."""
    if template.warm is None:
        return 0
    caps = [c for c in (template.max_concurrent, max_agents) if c is not None]
    return min([template.warm.max, *caps])


def missing_below_min(template: PodTemplate, agents: Sequence[WarmAgent],
                      max_agents: int | None = None) -> int:
    """How many warm agents (starting or idle) the pool lacks to reach its `min` (within
    most_agents): the room that counts in nodes_needed (beyond `min`, the pool takes only
    room that is free)."""
    if template.warm is None:
        return 0
    live = sum(1 for a in agents if a.state in (WarmState.STARTING, WarmState.IDLE))
    return max(0, min(template.warm.min, most_agents(template, max_agents)) - live)


@dataclass(frozen=True)
class IdleAgent:
    """An idle warm agent as giving way sees it: where it is, and the room its pod holds."""

    name: str
    node: str
    size: Resources  # the pod's requests
    since: float
    held: Held = NOTHING_HELD  # what the pod holds beside cpu and memory (core.fit)


@dataclass(frozen=True)
class Need:
    """A waiting build as giving way sees it: its pod's min size, and the nodes its template
    may go to (nodeSelector, taints, Ready; None: any). With several node pools, room on a
    node the build may not use places it nowhere, and an agent there is no use to give up."""

    size: Resources
    nodes: frozenset[str] | None = None
    # beside cpu and memory: a GPU, hostPorts, its anti-affinity token (core.fit.needs)
    needs: Needs = Needs()

    def may_use(self, node: str) -> bool:
        return self.nodes is None or node in self.nodes


def give_way(idle: Sequence[IdleAgent], free: Mapping[str, Resources],
             needs: Sequence[Need], given: Sequence[IdleAgent] = (),
             nodes: Mapping[str, NodeState] | None = None) -> tuple[str, ...]:
    """The idle agents to give up so that the waiting builds fit: for each build (its pod's
    min size, in arrival order, with the nodes it may use), a node where it fits already
    takes it; else the node whose idle agents, given up oldest first, make it fit (nodes tried
    by their oldest idle agent), gives up just those. A build no such node can hold (too big,
    or nothing idle where it would fit) costs no agent.

    Fitting counts cpu and memory (`free`) and, on the `nodes` given, what the build needs
    beside them (core.give_way_fit): an agent holding the GPU, the host port or the
    anti-affinity token a build waits for gives way as one holding its memory does; one
    whose going would not let the build fit stays.

    `given`: agents given up already whose pods `free` still counts (being deleted: a pod
    holds its node's room until its kubelet confirms it stopped): their room is free, for
    the builds they gave way to. Left out, each later caller (the worker's task, the
    reconcile pass) gave up one more agent for the same build, until the pod was gone."""
    room = dict(free)
    for agent in given:
        if agent.node in room:  # a node gone holds no room
            room[agent.node] = room[agent.node] + agent.size
    beside = Beside(nodes or {}, [(a.node, a.held) for a in given])
    left = sorted(idle, key=lambda a: a.since)
    out: list[str] = []
    for need in needs:
        fits = next((n for n, r in room.items() if need.may_use(n) and need.size.fits_in(r)
                     and beside.fits(n, need.needs)), None)
        if fits is not None:
            room[fits] = room[fits] - need.size
            beside.take(fits, need.needs)
            continue
        for node in dict.fromkeys(a.node for a in left if need.may_use(a.node)):
            have, chosen = room.get(node, Resources()), []
            for agent in (a for a in left if a.node == node):
                have, chosen = have + agent.size, chosen + [agent]
                if need.size.fits_in(have) and beside.fits(node, need.needs,
                                                           [a.held for a in chosen]):
                    break
            if need.size.fits_in(have) and beside.fits(node, need.needs,
                                                       [a.held for a in chosen]):
                # the older ones whose going adds nothing it lacks stay (the room was there,
                # only a younger one's GPU or token lacked): each went too, for nothing
                for agent in reversed(chosen[:-1]):
                    rest = [a for a in chosen if a is not agent]
                    if need.size.fits_in(have - agent.size) and beside.fits(
                            node, need.needs, [a.held for a in rest]):
                        chosen, have = rest, have - agent.size
                out += [a.name for a in chosen]
                left = [a for a in left if a not in chosen]
                room[node] = have - need.size
                beside.take(node, need.needs, [a.held for a in chosen])
                break
    return tuple(out)
