"""Caps an operator can trust: at most `maxConcurrent` agents of a template and `maxAgents`
in all, counted and taken atomically in Redis (CapacityStore.take_slot) across workers.

A build takes its slot before placement and keeps it until its agent is released; a build
over a cap waits in the waiting set with the reason `cap` (never rejected) and is re-driven
when a slot frees. A build that waits for capacity gives its slot back, so a cap is never
held by builds that have no pod."""

import logging
from collections.abc import Iterable

from workers.adapters.capacity_store import ALL_FULL, SLOT_TAKEN, WARM_SLOT
from workers.adapters.redis_state import BuildStatus
from workers.core.models import BuildRequest, PodTemplate
from workers.core.ports import PodInfo
from workers.core.placement import Wait, WaitReason
from workers.core.sizing import template_min
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.caps")
# A slot whose build is in one of these has no pod coming: the reconcile pass frees it.
# (A waiting build gives its slot back itself: one being re-driven may hold it already.)
# A retained pod (podRetention) holds node capacity but no slot: its build is over.
NO_POD_STATUSES = frozenset({BuildStatus.RELEASED, BuildStatus.FAILED, BuildStatus.RETAINED})


# How many idle or starting warm agents a build gives way to for a slot of maxAgents, at most
# (each taken by a racing build meanwhile is one more try).
MAX_GIVE_WAY_FOR_SLOT = 3


def take_code(rt: Runtime, request: BuildRequest, template: PodTemplate) -> int:
    """Take the build's slot: SLOT_TAKEN, TEMPLATE_FULL or ALL_FULL."""
    return rt.capacity.take_slot(build_key=request.build_key, template=request.template,
                                 max_concurrent=template.max_concurrent,
                                 max_agents=rt.config.max_agents)


def take(rt: Runtime, request: BuildRequest, template: PodTemplate, *,
         warm_give_way: bool = False) -> Wait | None:
    """Take the build's slot, or the Wait that says which cap is full. With
    `warm_give_way`, a build that finds maxAgents full while warm agents that no build claimed
    hold slots of it has one give way (builds always win: workers.warm.giving_way.for_slot)."""
    taken = take_code(rt, request, template)
    tries = MAX_GIVE_WAY_FOR_SLOT if warm_give_way else 0
    while taken == ALL_FULL and tries > 0:
        from workers.warm import giving_way  # it imports scheduling, which imports this
        if not giving_way.for_slot(rt):
            break
        tries -= 1
        taken = take_code(rt, request, template)
    if taken == SLOT_TAKEN:
        return None
    detail = f"maxAgents {rt.config.max_agents} reached" if taken == ALL_FULL else \
        f"maxConcurrent {template.max_concurrent} of template {request.template} reached"
    return Wait(WaitReason.CAP, detail, template_min(template))


def hold(rt: Runtime, request: BuildRequest) -> None:
    """Count an agent whose pod exists already (made by an earlier attempt), cap or not."""
    rt.capacity.take_slot(build_key=request.build_key, template=request.template,
                          max_concurrent=None, max_agents=None)


def free(rt: Runtime, build_key: str) -> None:
    rt.capacity.free_slots(build_key)


def release_stale(rt: Runtime, pods: Iterable[PodInfo] | None = None) -> int:
    """Free the slots of builds that have no agent coming (released, failed, or unknown): the level-triggered safety net behind release_agent.
    Also a build marked done (release_agent's mark before its release) whose agent's pod is
    not among the pass's `pods` (none judged so without them): a worker killed in the release
    after the pod's delete left the slot, and with no pod the repairs release nothing (with
    one, they release it)."""
    held = rt.capacity.slots()
    if not held:
        return 0
    listed = None if pods is None else {pod.name for pod in pods}
    slots = [key for key, template in held.items() if not template.startswith(WARM_SLOT)]
    rows = rt.state.build_fields(slots, "status", "agent") if slots else []
    stale = [key for key, (status, agent) in zip(slots, rows)
             if status is None or status in NO_POD_STATUSES
             or (status == BuildStatus.DONE and listed is not None and agent not in listed)]
    warm = [key for key, template in held.items() if template.startswith(WARM_SLOT)]
    if warm:  # a warm agent's, once it is neither starting nor idle nor being started
        from workers.warm import agents  # it imports scheduling, which imports this
        live = agents.registered(rt)
        stale += [key for key in warm if key not in live]
    if stale:
        log.info("freed stale agent slots", extra={"slots": len(stale)})
    return rt.capacity.free_slots(*stale)
