"""The stage SCHEDULED, from the worker's pod watch: an agent pod bound to its node.

``ScheduledWatch`` is a ClusterWatch pod listener (like workers.agent_starts.watch.StartWatch):
for an event of one of our agent pods (the agent namespace, our managed-by label and this
installation's, checked here in code) that is bound to a node, it records the build's SCHEDULED
stage at the time the API server gives (PodScheduled True's lastTransitionTime), else at the
event. It writes once per build in each process: the builds recorded are remembered (the most
recent SCHEDULED_REMEMBERED_BUILDS), so a pod's later events and relists cost nothing; the
record itself keeps the first time whichever process writes it.

PLACED goes with it, unless the build has it already: kube-scheduler binds a pod within
milliseconds of its create, while the provision that made it still waits on its trigger
(Jenkins' answer) and records PLACED only after both. SCHEDULED observed first left PLACED,
recorded after it, unobserved for good (workers.core.stages.due: a later stage was observed),
and ci_autoscaler_build_stage_seconds counted fewer builds placed than scheduled. Its time is
when this watch first saw the pod unbound (its create, to the watch's delay), else now (a
claimed warm agent's pod, bound long before its build: its claim is now).
"""

import time
from collections import OrderedDict
from typing import Any

from workers.adapters.kube_objects import pod_scheduled
from workers.adapters.legacy_pods import LegacyPods, is_ours
from workers.adapters.redis_state import RedisState
from workers.core.pods import BUILD_KEY_LABEL, is_managed
from workers.core.stages import FIELD, Stage
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
        self.unbound: OrderedDict[str, float] = OrderedDict()  # first seen unbound, by build

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
            self.unbound.setdefault(key, time.time())
            while len(self.unbound) > self.remembered:
                self.unbound.popitem(last=False)
            return
        placed = self.unbound.get(key, time.time())
        if ledger.record(self.state, key, Stage.SCHEDULED,
                         at=time.time() if since is None else since,
                         **{FIELD[Stage.PLACED]: repr(placed)}) is None:
            return  # Redis away: the pod's next event tries again
        self.unbound.pop(key, None)
        self.recorded[key] = None
        while len(self.recorded) > self.remembered:
            self.recorded.popitem(last=False)
