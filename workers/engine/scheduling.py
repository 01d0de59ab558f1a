"""Decisions against the live cluster: observe (watched snapshot + Redis reservations),
decide with the pure core, reserve atomically, and keep the capacity state current.

A view that keeps a placement index (ClusterWatch: ``IndexedView``) takes the decision and the
capacity state itself, looking at a few nodes; any other view (the simulated cluster of the
demo) gives its snapshot to the reference functions. Both give the same decision for the same
cluster (tests/unit/test_placement_index.py)."""

import json
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from workers.engine import caps, namespace_sizes
from workers.adapters.warm_store import WarmStore
from workers.concurrency.coalesce import Coalesced
from workers.core import hints, podsize, topology
from workers.core.capacity import (
    CapacityState, WaitingBuild, capacity_state, fresh_lacks, fresh_room, shortfall)
from workers.core.cluster import NodeState, Resources, ZERO, holds
from workers.core.fit import NOTHING_HELD, Held, Limits, Needs, needs
from workers.core.errors import RetryableError
from workers.core.models import BuildRequest, PodTemplate
from workers.core.placement import (
    Decision, Placement, Wait, WaitReason, alternates, decide, reservation_room)
from workers.core.placement import free
from workers.core.placement_index import NodeRow, node_row
from workers.core.sizing import moved_by, template_default, template_min
from workers.core.warm_pool import WarmState, missing_below_min, pinned
from workers.core.warm_claim import agent_size, largest_room
from workers.core.waiting_text import lacks_text, too_big_text
from workers.job_history.sized import past_hint, sized
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.scheduling")
GIVE_WAY_TASK = "workers.warm.tasks.give_way"
GIVE_WAY_PENDING = "warm-give-way-pending"
GIVE_WAY_PENDING_SECONDS = 30
RESERVE_ATTEMPTS = 5
Reserved = Mapping[str, tuple[str, Resources]]  # build key -> (node, size in flight)


@runtime_checkable
class IndexedView(Protocol):
    """A ClusterView that decides from its own placement index (see ClusterWatch)."""

    def decide(self, template: PodTemplate, *, reserved: Reserved, waiting_ahead: int = 0,
               target_utilisation: float = ..., expected_use: Resources | None = None,
               exclude_nodes: frozenset[str] = frozenset(), candidates: int = 1
               ) -> tuple[Decision, Resources | None]: ...

    def capacity_state(self, waiting: Sequence[WaitingBuild], *, reserved: Reserved,
                       reference: Resources | None = None,
                       target_utilisation: float = ..., per_node: Resources = ...,
                       fresh_limits: Limits | None = None) -> CapacityState: ...

    def node_rows(self, *, reserved: Reserved, target_utilisation: float = ...
                  ) -> list[NodeRow]: ...


@runtime_checkable
class AgentUsageView(Protocol):
    """A ClusterView that samples what our agents use (metrics.k8s.io PodMetrics)."""

    def watch_agent_usage(self, namespace: str) -> None: ...

    def expected_use(self, template: str) -> Resources | None: ...


@runtime_checkable
class AgentPods(Protocol):
    """A ClusterView that knows which of its pods are our agents (ClusterWatch)."""

    def build_keys(self) -> frozenset[str]: ...


@runtime_checkable
class ClaimTopology(Protocol):
    """A Cluster that reads where a claim's bound volume lets pods run (KubeCluster)."""

    def claim_node_terms(self, claim: str) -> list[dict] | None: ...


def off_volume_nodes(rt: Runtime, template: PodTemplate) -> frozenset[str]:
    """The nodes the template's claims keep its pod off (their bound volumes' node affinity,
    core.topology); none without claims or a cluster that can say."""
    claims = topology.claim_names(template)
    if not claims or not isinstance(rt.cluster, ClaimTopology):
        return frozenset()
    terms = [t for t in map(rt.cluster.claim_node_terms, claims) if t]
    return topology.off_volume_nodes(rt.view.snapshot(), terms) if terms else frozenset()


def observe(rt: Runtime, reserved: Reserved | None = None) -> list[NodeState]:
    """Every node with its in-flight agents: the ones reserved in Redis, whose pods the
    snapshot leaves out on the reserved node so that nothing is counted twice (a pod
    kube-scheduler bound to another of its candidates is counted there, as a pod). What a
    reservation holds beside cpu and memory (a GPU) is held on its node too; here, without a
    view of which pods exist (ClusterWatch._in_flight knows), beside its pod once there: more
    than the node holds for a while, never less."""
    reserved = rt.capacity.reservations() if reserved is None else reserved
    nodes = rt.view.snapshot(exclude_build_keys={k: node for k, (node, _) in reserved.items()})
    in_flight: dict[str, Resources] = {}
    flying: dict[str, int] = {}
    held: dict[str, Held] = {}
    for node, size in reserved.values():
        in_flight[node] = in_flight.get(node, ZERO) + size
        flying[node] = flying.get(node, 0) + 1
        held[node] = held.get(node, NOTHING_HELD) + holds(size)
    if not in_flight:
        return nodes
    return [replace(n, in_flight=in_flight[n.name], in_flight_pods=flying[n.name],
                    held=n.held + held[n.name], in_flight_held=held[n.name])
            if n.name in in_flight else n for n in nodes]


def expected_use(rt: Runtime, template: str) -> Resources | None:
    """What agents of the template were seen to use, when the view samples it (the
    simulator's Autoscaler passes the same estimate to decide)."""
    view = rt.view
    if not isinstance(view, AgentUsageView):
        return None
    view.watch_agent_usage(rt.settings.agent_namespace)  # no-op once the watch knows it
    return view.expected_use(template)


def _decide(rt: Runtime, template: PodTemplate, reserved: Reserved, ahead: int,
            use: Resources | None, exclude: frozenset[str]
            ) -> tuple[Decision, Resources | None]:
    """The decision (a placement with its other candidates) and, for a placement, what its
    reservation is checked against (placement.reservation_room)."""
    target, candidates = rt.settings.target_utilisation, rt.settings.placement_candidates
    if isinstance(rt.view, IndexedView):
        return rt.view.decide(template, reserved=reserved, waiting_ahead=ahead,
                              target_utilisation=target, expected_use=use,
                              exclude_nodes=exclude, candidates=candidates)
    nodes = observe(rt, reserved)
    decision = decide(template, nodes, waiting_ahead=ahead, target_utilisation=target,
                      expected_use=use, exclude_nodes=exclude)
    if isinstance(decision, Wait):
        return decision, None
    node = next(n for n in nodes if n.name == decision.node)
    decision = alternates(template, nodes, decision, candidates - 1,
                          target_utilisation=target, exclude_nodes=exclude)
    return decision, reservation_room(node, decision, target)


def excluded(fields: Mapping[str, str]) -> frozenset[str]:
    """The nodes a build may no longer use (from its record): the scheduler refused its pod
    there, or its agent never connected there."""
    return frozenset(filter(None, (fields.get("excluded_nodes") or "").split(",")))


def refused_wait(decision: Wait, fields: Mapping[str, str]) -> Wait:
    """A build the scheduler refused that finds no other node left waits as unschedulable,
    with the scheduler's message (workers.agent_starts.unschedulable), not as
    no_matching_node."""
    if decision.reason != WaitReason.NO_MATCHING_NODE or not fields.get("scheduler_message"):
        return decision
    return Wait(WaitReason.UNSCHEDULABLE, f"{fields['scheduler_message']} (no other node left: "
                                          f"{decision.detail})", decision.min_size)


def place(rt: Runtime, request: BuildRequest, template: PodTemplate, *,
          exclude_nodes: frozenset[str] = frozenset()) -> Decision:
    """Decide, then take the slot with an atomic reservation; decide again if another worker
    took it first. The reservation counts what such builds are seen to use (the in-flight
    estimate), and is taken if the decided size still fits beside the other reservations.

    Sizing and placement fit the whole pod (podsize.placement_template); the placement
    returned carries the size of the build's containers, and the pod's total in flight.
    The build's agent slot (caps) is taken first, and given back when it must wait.
    `exclude_nodes`: nodes this build may not use (where its agent did not connect)."""
    template = sized_for(rt, request, template)
    over_cap = caps.take(rt, request, template, warm_give_way=True)
    if over_cap is not None:
        return over_cap
    exclude_nodes = exclude_nodes | off_volume_nodes(rt, template)
    decision = _place(rt, request, podsize.placement_template(template), exclude_nodes)
    if isinstance(decision, Wait):  # its caller records the wait, then gives way (below)
        caps.free(rt, request.build_key)
        return decision
    placed = replace(decision, size=podsize.build_size(template, decision.size),
                     in_flight=decision.in_flight or decision.size)
    moved = moved_by(template_default(template), placed.size)
    # written either way: a placement at the default clears what moved an earlier one of
    # this build under the same name (one whose provision failed before its pod: RQ retries it)
    rt.state.update_build(request.build_key, size_moved=moved)
    log_moved(request.build_key, moved, template_default(template), placed.size)
    return placed


def log_moved(build_key: str, moved: str | None, default: Resources, size: Resources,
              **extra: str) -> None:
    """The log line of a build whose size `moved` from its default (issue 21: the logs say
    which size came from where): a placement's, or a warm agent's (workers.warm.claim)."""
    if moved is not None:
        log.info("build size moved from its default", extra={
            "build_key": build_key, "size_moved": moved, **extra,
            "default_cpu_millis": default.cpu_millis,
            "default_memory_bytes": default.memory_bytes,
            "cpu_millis": size.cpu_millis, "memory_bytes": size.memory_bytes})


def sized_for(rt: Runtime, request: BuildRequest, template: PodTemplate) -> PodTemplate:
    """The template with the build's default size: its size hint, which wins for what it
    names (but for the memory of an OOM-killed build's retry, which its kill taught:
    job_history.past_hint), else its job's history (workers.job_history); the record says
    which (size_source). A hint of CPU alone leaves the memory to the job's history: taken
    from the template instead, a job whose route hints its CPU never learned its memory, and
    one OOM-killed was killed again at the same size on every push."""
    hinted = _hinted(request, template)
    if hinted is not template and not hints.names_memory(request.parameters):
        learned = sized(rt, request, template)  # (its size_source: history or oom)
        if learned is not template:
            log.info("default size from the build's hint", extra={
                "build_key": request.build_key, "cpu_millis": hinted.cpu.default})
            return learned.model_copy(update={"cpu": hinted.cpu})
    if hinted is not template:
        taught = past_hint(rt, request, template, hinted)  # an OOM retry: bigger than its hint
        source = "hint" if taught is hinted else "oom"
        rt.state.update_build(request.build_key, size_source=source)
        log.info("default size from the build's hint", extra={
            "build_key": request.build_key, "size_source": source,
            "cpu_millis": taught.cpu.default, "memory_bytes": taught.memory.default})
        return taught
    return sized(rt, request, template)


def place_warm(rt: Runtime, request: BuildRequest, template: PodTemplate) -> Decision:
    """A warm agent (workers.warm): the template as given (pinned at its default size), with
    the same placement and reservation as a build, but no agent slot: a warm agent is not a
    build, and the build that claims it holds the slot (caps.hold)."""
    decision = _place(rt, request, podsize.placement_template(template))
    if isinstance(decision, Wait):
        return decision
    return replace(decision, size=podsize.build_size(template, decision.size),
                   in_flight=decision.in_flight or decision.size)


def give_way_soon(rt: Runtime) -> bool:
    """Builds always win: a build must wait for room, so idle warm agents are given up (and
    the waiting builds re-driven) by a task (workers.warm.tasks.give_way), queued once while
    one is pending, and only when some template has an idle warm agent. Called once the
    build's wait is recorded (its waiting entry and reason): the task, on another thread, gives
    way only to the builds it finds waiting, and a task queued before that found none, so the
    build waited for the next reconcile pass (up to 15 s) with idle warm agents beside it."""
    pools = [n for n, t in rt.config.templates.items() if t.warm is not None]
    if not pools:
        return False
    idle = WarmStore(rt.state.redis, prefix=rt.state.prefix).all_agents(pools)
    if not any(a.state == WarmState.IDLE for entries in idle.values() for a in entries):
        return False
    if not rt.state.redis.set(rt.state.prefix + GIVE_WAY_PENDING, "1", nx=True,
                              ex=GIVE_WAY_PENDING_SECONDS):
        return False
    rt.state.enqueue_task(GIVE_WAY_TASK, description="warm agents give way")
    return True


def _hinted(request: BuildRequest, template: PodTemplate) -> PodTemplate:
    """The template with the build's size hint as its default (clamped, never failed)."""
    hinted, notes = hints.apply_hint(template, request.parameters)
    for note in notes:
        log.warning("size hint adjusted", extra={"build_key": request.build_key, "hint": note})
    return hinted


# A process's provisions decide and reserve one at a time (PoolWorker runs them on threads):
# decisions made at the same moment read the same reservations, so each chose the same
# idlest node, and the reservation (which checks room, not "still the idlest") took them all
# there until it was full: 6 of a burst of 12 on one of three idle nodes, each deciding at
# "8% after placement". A hold is a few Redis round trips and a decision (milliseconds;
# 16 threads of a loaded worker queue up for a second or more, the GIL shared with their
# HTTP calls); waited for this long at most, then it decides beside the others, as before.
PLACING_WAIT_SECONDS = 10.0
_placing: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()


def _placing_lock(rt: Runtime) -> threading.Lock:
    with _refreshes_lock:
        return _placing.setdefault(rt.capacity, threading.Lock())


def _place(rt: Runtime, request: BuildRequest, template: PodTemplate,
           exclude: frozenset[str] = frozenset()) -> Decision:
    use = expected_use(rt, request.template)
    need = needs(template)  # its GPU, ephemeral-storage: counted on the node until its pod is
    lock = _placing_lock(rt)
    for attempt in range(RESERVE_ATTEMPTS):
        held = lock.acquire(timeout=PLACING_WAIT_SECONDS)
        try:
            # the last try takes room beside builds placed meanwhile, as the node still has it
            decision = _place_once(rt, request, template, exclude, use, need,
                                   read_all=attempt < RESERVE_ATTEMPTS - 1)
        finally:
            if held:
                lock.release()
        if decision is not None:
            return decision
    # Each try found a node with room and lost it to a reservation taken or given back
    # meanwhile. Reported as insufficient_cpu, it told the developer and the operator (who
    # reads the waiting builds by reason) to add CPU, and got the build a scale-up pod: a
    # node asked for while room was there.
    log.warning("lost the race for a node's room on every try: the build waits for the next "
                "re-drive", extra={"build_key": request.build_key, "tries": RESERVE_ATTEMPTS})
    return Wait(WaitReason.CONTENTION,
                f"other builds placed at the same time took the room found, {RESERVE_ATTEMPTS} "
                "times; tried again on the next re-drive", template_min(template))


def _place_once(rt: Runtime, request: BuildRequest, template: PodTemplate,
                exclude: frozenset[str], use: Resources | None, need: Needs, *,
                read_all: bool = True) -> Decision | None:
    """One decision and its reservation; None when another worker took the room first, or
    (`read_all`) placed a build on the node meanwhile (the other worker processes decide
    beside this one's lock: CapacityStore.reserve)."""
    records = rt.capacity.reservation_records()
    reserved = {key: (node, size) for key, (node, size, _) in records.items()}
    # Builds ahead: those waiting for capacity, and the jobs still queued behind this one.
    ahead = rt.capacity.waiting_ahead_of(request.received_at) + rt.state.queue.count
    decision, capacity = _decide(rt, template, reserved, ahead, use, exclude)
    if isinstance(decision, Wait):
        return decision
    # The node's reservations as read: the decision left their builds' pods out of its
    # room (counted in flight instead), so one released meanwhile (its pod seen running
    # by a reconcile pass, or expired) would leave its pod counted nowhere: decide again.
    read = {key: raw for key, (node, _, raw) in records.items()
            if node == decision.node and key != request.build_key}
    if rt.capacity.reserve(node=decision.node, build_key=request.build_key,
                           size=decision.in_flight or decision.size, needs=decision.size,
                           capacity=capacity, read=read, holds=need.held, read_all=read_all):
        return decision
    return None


def waiting_builds(rt: Runtime) -> tuple[list[WaitingBuild], Counter, dict[str, bool],
                                         dict[str, bool]]:
    """The builds that want room on nodes, the waiting builds by reason, and whether each
    waiting build is paused (an admin's pods: 0; CapacityStore.mark_paused) and held by a
    quota or a cap (not counted as waiting ahead; CapacityStore.mark_held)."""
    keys = rt.capacity.waiting()
    builds, reasons, paused, held = [], Counter(), {}, {}
    for key, (name, reason) in zip(keys, rt.state.build_fields(keys, "template", "wait_reason")):
        paused[key] = reason == WaitReason.PAUSED
        held[key] = reason in (WaitReason.CAP, WaitReason.QUOTA, WaitReason.PAUSED)
        template = rt.config.templates.get(name or "")
        if template is None:
            continue
        template = namespace_sizes.fitted(rt, template)
        reasons[reason or "unknown"] += 1
        if reason in (WaitReason.CAP, WaitReason.QUOTA, WaitReason.PAUSED,
                      WaitReason.CONTENTION):  # more nodes would not start it (or room was
            # there, taken by builds placed at once): not a shortfall
            continue
        builds.append(WaitingBuild(key, template,
                                   template_min(podsize.placement_template(template))))
    # builds whose last pod the scheduler refused, left Pending to it: they wait too
    reasons[WaitReason.UNSCHEDULABLE] += len(rt.capacity.unschedulable())
    if not reasons[WaitReason.UNSCHEDULABLE]:
        del reasons[WaitReason.UNSCHEDULABLE]
    return builds, reasons, paused, held


def largest_node(rt: Runtime, template: PodTemplate) -> Resources | None:
    """The most room a pod of the template could have on a node it may use
    (workers.core.warm_claim.largest_room, on the nodes with what pods not ours request);
    None while the cluster is not listed yet, or no node matches. A view that cannot tell
    our pods apart: the biggest allocatable."""
    view, apart = rt.view, isinstance(rt.view, AgentPods)
    try:
        nodes = view.snapshot(exclude_build_keys=view.build_keys()) if apart else \
            view.snapshot()
    except RetryableError:
        return None
    return largest_room(nodes, template, others=apart)


@runtime_checkable
class DaemonView(Protocol):
    """A ClusterView that knows what the DaemonSets' pods take on a node (ClusterWatch)."""

    def fresh_node(self, templates: Sequence[PodTemplate] = (),
                   reference: Resources | None = None
                   ) -> tuple[Resources | None, Resources, Limits | None]: ...


def fresh_node(rt: Runtime, planned: Sequence[WaitingBuild]
               ) -> tuple[Resources | None, Resources, Limits | None]:
    """A node joining for the `planned` builds: its shape (the configured reference, else
    None: the commonest, capacity.reference_shape), what its DaemonSets' and static pods
    request, and what it has for builds beside cpu and memory (its pod slots left by them,
    its GPUs; None: not counted), when the view can
    tell (the simulator's nodes run none), read off the same nodes (ClusterWatch.fresh_node)."""
    reference = rt.settings.reference_node
    if not planned or not isinstance(rt.view, DaemonView):
        return reference, ZERO, None
    return rt.view.fresh_node([w.template for w in planned], reference)


def warm_room(rt: Runtime, builds: int = 0) -> list[WaitingBuild]:
    """The warm agents each pool lacks to reach its `min` (workers.warm), as builds waiting
    at the size the pool makes them at now (from demand; before the first pool pass, the size
    it starts at): room that nodes_needed counts. Beyond `min` a pool only takes room that is
    free, so it never asks for nodes. `builds`: how many builds wait for room on nodes."""
    pools = namespace_sizes.fitted_all(rt, {n: t for n, t in rt.config.templates.items()
                                            if t.warm is not None and t.warm.min})
    if not pools:
        return []
    agents, sizes = WarmStore(rt.state.redis, prefix=rt.state.prefix).agents_and_sizes(pools)
    # A warm agent takes a slot of maxAgents before its pod (workers.warm.agents): with
    # builds holding them, the pool starts none, and a node added for it would stay empty
    # (cap waits are no shortfall). Those a pool has hold slots already: the free ones count,
    # less those the builds waiting for room will take (they hold none while they wait, and
    # take one once a node has room: builds win, an agent in it gives way, giving_way.for_slot)
    free = None if rt.config.max_agents is None else \
        max(0, rt.config.max_agents - len(rt.capacity.slots()) - builds)
    room = []
    for name, template in pools.items():
        # none yet: the size the first pass makes them at
        size = sizes.get(name) or agent_size(template, [], largest_node(rt, template))
        sized = podsize.placement_template(pinned(template, size))
        missing = missing_below_min(template, [e.agent for e in agents[name]],
                                    rt.config.max_agents)
        if free is not None:
            missing = min(missing, free)
            free -= missing
        for i in range(missing):
            room.append(WaitingBuild(f"warm:{name}:{i}", sized, template_min(sized)))
    return room


def refresh_capacity(rt: Runtime) -> CapacityState:
    """Shortfall and nodes needed for the builds waiting now, written to Redis for /metrics
    with a row per node."""
    target = rt.settings.target_utilisation
    waiting, reasons, paused, held = waiting_builds(rt)
    planned = waiting + warm_room(rt, len(waiting))  # nodes_needed counts the pools up to their min
    # what a node added would hold before our builds (nothing to plan: not read)
    reference, per_node, fresh_limits = fresh_node(rt, planned)
    if isinstance(rt.view, IndexedView):
        reserved = rt.capacity.reservations()
        state = rt.view.capacity_state(planned, reserved=reserved, reference=reference,
                                       target_utilisation=target, per_node=per_node,
                                       fresh_limits=fresh_limits)
        rows = rt.view.node_rows(reserved=reserved, target_utilisation=target)
    else:
        nodes = observe(rt)
        state = capacity_state(planned, nodes, reference, target_utilisation=target,
                               per_node=per_node, fresh_limits=fresh_limits)
        rows = [node_row(n, free(n, target)) for n in nodes]
    if len(planned) > len(waiting):  # the waiting count and shortfall are the builds' own
        state = replace(state, waiting=len(waiting), shortfall=shortfall(waiting))
    # Builds no node of the reference shape can hold: nodes_needed leaves them out (such
    # nodes would not start them), and their wait said only "insufficient memory", as a full
    # cluster's does, with 0 nodes needed. Told on the status page, and logged once each.
    builds = {w.build_key: w for w in waiting}
    too_big = {key: unplaceable_text(builds[key].template, size, state.reference, per_node,
                                     fresh_limits)
               for key, size in state.too_big if key in builds}
    for key in rt.capacity.write_state(state, rows, reasons=dict(reasons),
                                       metrics_available=rt.view.metrics_available,
                                       too_big=too_big, held_since=held_since(rt)):
        size = dict(state.too_big)[key]
        # (the message kept for greps; `why` tells one short of GPUs or pod slots apart)
        log.warning("build bigger than a node of the reference shape: more nodes of that "
                    "shape will not start it", extra={
                        "build_key": key, "why": too_big[key], "cpu_millis": size.cpu_millis,
                        "memory_bytes": size.memory_bytes,
                        "reference_cpu_millis": state.reference.cpu_millis,
                        "reference_memory_bytes": state.reference.memory_bytes})
    rt.capacity.mark_paused(paused)  # left out of the wait that pages (CIBuildsWaitingTooLong)
    rt.capacity.mark_held(held)  # not counted as waiting ahead of later builds
    return state


def unplaceable_text(template: PodTemplate, size: Resources, reference: Resources,
                     per_node: Resources, limits: Limits | None) -> str:
    """Why a build no fresh node of the reference shape holds waits: bigger than its room by
    cpu or memory (too_big_text), else short of what else it asks (capacity.fresh_lacks:
    its GPUs, pod slots, ephemeral-storage)."""
    room = fresh_room(reference, per_node)
    if size.fits_in(room) and (why := fresh_lacks(needs(template), room, limits)):
        return lacks_text(why)
    return too_big_text(size, reference, per_node)


def held_since(rt: Runtime) -> float | None:
    """When the longest-waiting of the builds held as unschedulable arrived (their last pod
    left Pending to kube-scheduler, out of the waiting set: workers.agent_starts.unschedulable),
    or None: they wait as much as any, and the age that pages (CIBuildsWaitingTooLong)
    counts them."""
    keys = rt.capacity.unschedulable()
    arrived = [float(r) for (r,) in rt.state.build_fields(keys, "received_at") if r] \
        if keys else []
    return min(arrived, default=None)


_refreshes: "weakref.WeakKeyDictionary[object, Coalesced]" = weakref.WeakKeyDictionary()
_refreshes_lock = threading.Lock()


def refresh_capacity_folded(rt: Runtime) -> None:
    """refresh_capacity, with the asks of this process's other threads for the same store made
    while it runs folded into one more run (workers.concurrency.coalesce): a provision's after
    its placement."""
    with _refreshes_lock:
        gate = _refreshes.setdefault(rt.capacity, Coalesced())
    gate.run(lambda: refresh_capacity(rt))


def decision_fields(decision: Placement) -> dict[str, str | int]:
    """What the build's record keeps of its placement; `candidates`: every node its pod may
    go to (the ones left out for it if the scheduler refuses them all)."""
    return {"node": decision.node, "cpu_millis": decision.size.cpu_millis,
            "memory_bytes": decision.size.memory_bytes, "decision": decision.reason,
            "candidates": ",".join(node for node, _ in decision.candidates)}


def planned(agent: str, decision: Placement) -> str:
    """The placement of the pod about to be made for `agent`, kept on the record beside the
    create's mark (workers.engine.tasks.POD_PLANNED): an attempt whose create's answer was
    lost never wrote decision_fields, and the retry that finds its pod knows nothing of it."""
    return json.dumps({"agent": agent, **decision_fields(decision)})


def planned_fields(raw: str | None, agent: str) -> dict[str, str | int]:
    """The decision_fields `planned` kept, if they are of the pod of `agent` (a build placed
    again has a new agent name), else none."""
    try:
        kept = json.loads(raw or "{}")
    except ValueError:
        return {}
    if not isinstance(kept, dict) or kept.pop("agent", None) != agent:
        return {}
    return kept


def request_json(request: BuildRequest) -> str:
    return json.dumps(request.to_dict())
