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
now sees the room. Once per pod: at its end, or at its deletion when it was not seen ended; an
ended pod's later updates and its deletion free nothing more. Every worker process's watch sees the event; the re-drive's pending mark
queues one job, and nothing at all while no build waits (one Redis read).

The Redis calls are made on a thread of their own, never the watch's: pods end all the time on
a big cluster, and a Redis that does not answer (a failover, a partition: each call waits out
its socket timeout, 5 s) held the watch thread on every such pod, every worker's snapshot
falling behind the cluster (tests/integration/test_room_watch_redis_away.py). Events that come
while one call is on its way are one more call after it, not one each.
"""

import logging
import threading
from collections import OrderedDict
from typing import Any

from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState

log = logging.getLogger("ci_autoscaler.tasks")
# Pods seen ended and not yet deleted, remembered so that their later events re-drive nothing:
# more than end at once between a pod's end and its deletion (a Job's pods are kept until its
# TTL or its owner's cleanup).
ENDED_REMEMBERED = 10_000


class RoomFreedWatch:
    """A ClusterWatch pod listener (see the module docstring)."""

    def __init__(self, *, state: RedisState, capacity: CapacityStore):
        self.state, self.capacity = state, capacity
        self._lock = threading.Lock()
        self._again = self._busy = False  # an event not yet acted on; a thread acting
        self._ended: OrderedDict[str, bool] = OrderedDict()  # pods seen ended, not yet deleted

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        if not (obj.get("spec") or {}).get("nodeName"):
            return  # never bound: it held no node's room
        ended = (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if not (kind == "DELETED" or (kind == "MODIFIED" and ended)):
            return
        meta = obj.get("metadata") or {}
        pod = meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}"
        with self._lock:
            # Once per pod: its end freed its room, and its later updates (the deletion's
            # timestamp, its finalizers) and its deletion free none again: each was a
            # re-drive of every waiting build, and on a cluster of batch Jobs pods end all
            # the time.
            if kind == "DELETED":
                if self._ended.pop(pod, False):
                    return
            elif pod in self._ended:
                return
            else:
                self._ended[pod] = True
                while len(self._ended) > ENDED_REMEMBERED:
                    self._ended.popitem(last=False)
        self._freed()

    def _freed(self) -> None:
        """Room freed: a re-drive queued on the acting thread (one call for every event that
        came while it was on its way)."""
        with self._lock:
            self._again = True
            if self._busy:
                return  # the thread acting calls once more
            self._busy = True
        threading.Thread(target=self._queue, name="room-freed", daemon=True).start()

    def _queue(self) -> None:
        from workers.engine import redrive  # it imports the runtime, which imports this
        while True:
            with self._lock:
                if not self._again:
                    self._busy = False
                    return
                self._again = False
            try:
                redrive.queue_redrive(self.state, self.capacity)
            except Exception as err:  # the next pod freed tries again; the reconcile pass too
                log.warning("room freed on a node: re-drive not queued: %s", type(err).__name__)
