"""Decisions against the live cluster: observe (watched snapshot + Redis reservations),
decide with the pure core, reserve atomically, and keep the capacity state current."""

import dataclasses
import json
import logging
from collections import Counter

from workers.core.capacity import CapacityState, WaitingBuild, capacity_state
from workers.core.cluster import NodeState, Resources, ZERO
from workers.core.models import BuildRequest, PodTemplate
from workers.core.placement import Decision, Placement, Wait, WaitReason, capacity_left, decide
from workers.core.placement import free
from workers.core.sizing import template_min
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.scheduling")
RESERVE_ATTEMPTS = 5


def observe(rt: Runtime) -> list[NodeState]:
    """Every node with its in-flight agents: the ones reserved in Redis, whose requests the
    snapshot leaves out so that nothing is counted twice."""
    reserved = rt.capacity.reservations()
    nodes = rt.view.snapshot(exclude_build_keys=frozenset(reserved))
    in_flight: dict[str, Resources] = {}
    for node, size in reserved.values():
        in_flight[node] = in_flight.get(node, ZERO) + size
    return [dataclasses.replace(n, in_flight=in_flight.get(n.name, ZERO)) for n in nodes]


def place(rt: Runtime, request: BuildRequest, template: PodTemplate) -> Decision:
    """Decide, then take the slot with an atomic reservation; decide again if another worker
    took it first."""
    target = rt.settings.target_utilisation
    for _ in range(RESERVE_ATTEMPTS):
        nodes = observe(rt)
        # Builds ahead: those waiting for capacity, and the jobs still queued behind this one.
        ahead = rt.capacity.waiting_ahead_of(request.received_at) + rt.state.queue.count
        decision = decide(template, nodes, waiting_ahead=ahead, target_utilisation=target)
        if isinstance(decision, Wait):
            return decision
        node = next(n for n in nodes if n.name == decision.node)
        if rt.capacity.reserve(node=node.name, build_key=request.build_key, size=decision.size,
                               capacity=capacity_left(node, target)):
            return decision
    return Wait(WaitReason.INSUFFICIENT_CPU,
                f"lost the race for a slot {RESERVE_ATTEMPTS} times; retried on the next re-drive",
                template_min(template))


def waiting_builds(rt: Runtime) -> tuple[list[WaitingBuild], Counter]:
    keys = rt.capacity.waiting()
    builds, reasons = [], Counter()
    for key in keys:
        state = rt.state.get_build(key)
        template = rt.config.templates.get(state.get("template", ""))
        if template is None:
            continue
        builds.append(WaitingBuild(key, template, template_min(template)))
        reasons[state.get("wait_reason", "unknown")] += 1
    return builds, reasons


def refresh_capacity(rt: Runtime, nodes: list[NodeState] | None = None) -> CapacityState:
    """Shortfall and nodes needed for the builds waiting now, written to Redis for /metrics."""
    nodes = observe(rt) if nodes is None else nodes
    waiting, reasons = waiting_builds(rt)
    state = capacity_state(waiting, nodes, rt.settings.reference_node,
                           target_utilisation=rt.settings.target_utilisation)
    target = rt.settings.target_utilisation
    rt.capacity.write_state(state, [(n, free(n, target)) for n in nodes], reasons=dict(reasons),
                            metrics_available=rt.view.metrics_available)
    return state


def decision_fields(decision: Placement) -> dict[str, str | int]:
    return {"node": decision.node, "cpu_millis": decision.size.cpu_millis,
            "memory_bytes": decision.size.memory_bytes, "decision": decision.reason}


def request_json(request: BuildRequest) -> str:
    return json.dumps(request.to_dict())
