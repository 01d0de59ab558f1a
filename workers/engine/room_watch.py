"""Room freed on a node re-drives the waiting builds at once (issue 3: "re-driven in arrival
order when capacity frees: a pod deletion, a build completion, or a periodic reconcile").

A release queues a re-drive right after it asks for its pod's delete, but the worker's watched
snapshot still holds the pod then (its DELETED event comes a moment later; on a real cluster
the pod stays Terminating for its grace period, counted by kube-scheduler and by us), so that
re-drive found no room, and the waiting build waited for the next reconcile pass, up to 15 s
with a free slot. A pod of someone else's that ends or goes frees room just the same and
re-drove nothing either.

``RoomFreedWatch`` is a ClusterWatch pod listener (like workers.warm.gone_watch, which does
this for an idle warm agent's pod): any pod bound to a node, in any namespace, gone (DELETED)
or ended (Succeeded, Failed): the snapshot has applied the event already, so a re-drive queued
now sees the room. Every worker process's watch sees the event; the re-drive's pending mark
queues one job, and nothing at all while no build waits (one Redis read).
"""

from typing import Any

from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState


class RoomFreedWatch:
    """A ClusterWatch pod listener (see the module docstring)."""

    def __init__(self, *, state: RedisState, capacity: CapacityStore):
        self.state, self.capacity = state, capacity

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        if not (obj.get("spec") or {}).get("nodeName"):
            return  # never bound: it held no node's room
        ended = (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if kind == "DELETED" or (kind == "MODIFIED" and ended):
            from workers.engine import redrive  # it imports the runtime, which imports this
            redrive.queue_redrive(self.state, self.capacity)
