"""The stage SCHEDULED, from the worker's pod watch: an agent pod bound to its node.

``ScheduledWatch`` is a ClusterWatch pod listener (like workers.agent_starts.watch.StartWatch):
for an event of one of our agent pods (the agent namespace, our managed-by label and this
installation's, checked here in code) that is bound to a node, it records the build's SCHEDULED
stage at the time the API server gives (PodScheduled True's lastTransitionTime), else at the
event. It writes once per build in each process: the builds recorded are remembered (the most
recent SCHEDULED_REMEMBERED_BUILDS), so a pod's later events and relists cost nothing; the
record itself keeps the first time whichever process writes it.
"""

import time
from collections import OrderedDict
from typing import Any

from workers.adapters.kube_objects import pod_scheduled
from workers.adapters.legacy_pods import LegacyPods, is_ours
from workers.adapters.redis_state import RedisState
from workers.core.pods import BUILD_KEY_LABEL, is_managed
from workers.core.stages import Stage
from workers.stage_timings import ledger

# Builds whose scheduling this process recorded, remembered so that a pod's later events (its
# containers starting, its deletion's updates) write nothing: more than the agents alive at once.
SCHEDULED_REMEMBERED_BUILDS = 10_000


class ScheduledWatch:
    """A ClusterWatch pod listener (see the module docstring)."""

    def __init__(self, *, state: RedisState, namespace: str,
                 remembered: int = SCHEDULED_REMEMBERED_BUILDS, installation: str = "",
                 legacy_known: LegacyPods | None = None):
        self.state = state
        self.namespace = namespace
        self.installation, self.legacy_known = installation, legacy_known
        self.remembered = remembered
        self.recorded: OrderedDict[str, None] = OrderedDict()

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        key = labels.get(BUILD_KEY_LABEL)
        if meta.get("namespace") != self.namespace or not key or not is_managed(labels) \
                or key in self.recorded \
                or not is_ours(meta, self.installation, self.legacy_known):
            return
        bound, since = pod_scheduled(obj)
        if not bound:
            return
        if ledger.record(self.state, key, Stage.SCHEDULED,
                         at=time.time() if since is None else since) is None:
            return  # Redis away: the pod's next event tries again
        self.recorded[key] = None
        while len(self.recorded) > self.remembered:
            self.recorded.popitem(last=False)
