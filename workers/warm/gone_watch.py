"""Builds always win, without waiting a pass (issue 22): an idle warm agent's pod gone from
the worker's pod watch (DELETED: its kubelet confirmed the deletion) frees room that waiting
builds may use, so a re-drive of them is queued at once.

A warm agent given up for a waiting build (workers.warm.giving_way) is deleted gracefully: on
a real cluster its pod stays Terminating for seconds, holding its node's room (and its share
of a ResourceQuota), and the re-drive that the give-way queued finds it still there. Nothing
else re-drove the build until the next reconcile pass, up to 15 s later.

``WarmGoneWatch`` is a ClusterWatch pod listener (like workers.stage_timings.scheduled): our
pods only (the agent namespace, our managed-by label and this installation's, checked here in
code), idle warm agents' only (a claimed one is a build's, whose release re-drives). Every
worker process's watch sees the event; the re-drive's pending mark queues one of them.
"""

import logging
from typing import Any

from workers.adapters.capacity_store import CapacityStore
from workers.adapters.legacy_pods import LegacyPods, is_ours
from workers.adapters.redis_state import RedisState
from workers.core.pods import WARM_IDLE, WARM_LABEL, is_managed

log = logging.getLogger("ci_autoscaler.warm")


class WarmGoneWatch:
    """A ClusterWatch pod listener (see the module docstring)."""

    def __init__(self, *, state: RedisState, capacity: CapacityStore, namespace: str,
                 installation: str = "", legacy_known: LegacyPods | None = None):
        self.state, self.capacity = state, capacity
        self.namespace = namespace
        self.installation, self.legacy_known = installation, legacy_known

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            return
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != self.namespace or not is_managed(labels) \
                or labels.get(WARM_LABEL) != WARM_IDLE \
                or not is_ours(meta, self.installation, self.legacy_known):
            return
        from workers.engine import redrive  # it imports the runtime, which imports this
        if redrive.queue_redrive(self.state, self.capacity):
            log.info("warm agent's pod gone: waiting builds re-driven",
                     extra={"agent": meta.get("name")})
