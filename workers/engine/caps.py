"""Caps an operator can trust: at most `maxConcurrent` agents of a template and `maxAgents`
in all, counted and taken atomically in Redis (CapacityStore.take_slot) across workers.

A build takes its slot before placement and keeps it until its agent is released; a build
over a cap waits in the waiting set with the reason `cap` (never rejected) and is re-driven
when a slot frees. A build that waits for capacity gives its slot back, so a cap is never
held by builds that have no pod."""

import logging

from workers.adapters.capacity_store import ALL_FULL, SLOT_TAKEN
from workers.adapters.redis_state import BuildStatus
from workers.core.models import BuildRequest, PodTemplate
from workers.core.placement import Wait, WaitReason
from workers.core.sizing import template_min
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.caps")
# A slot whose build is in one of these has no pod coming: the reconcile pass frees it.
# (A waiting build gives its slot back itself: one being re-driven may hold it already.)
# A retained pod (podRetention) holds node capacity but no slot: its build is over.
NO_POD_STATUSES = frozenset({BuildStatus.RELEASED, BuildStatus.FAILED, BuildStatus.RETAINED})


def take(rt: Runtime, request: BuildRequest, template: PodTemplate) -> Wait | None:
    """Take the build's slot, or the Wait that says which cap is full."""
    taken = rt.capacity.take_slot(build_key=request.build_key, template=request.template,
                                  max_concurrent=template.max_concurrent,
                                  max_agents=rt.config.max_agents)
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


def release_stale(rt: Runtime) -> int:
    """Free the slots of builds that have no agent coming (released, failed, or unknown): the level-triggered safety net behind release_agent."""
    slots = list(rt.capacity.slots())
    if not slots:
        return 0
    statuses = rt.state.build_fields(slots, "status")
    stale = [key for key, (status,) in zip(slots, statuses)
             if status is None or status in NO_POD_STATUSES]
    if stale:
        log.info("freed stale agent slots", extra={"slots": len(stale)})
    return rt.capacity.free_slots(*stale)
