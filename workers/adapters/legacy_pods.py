"""Which pods from before installation labels are this installation's
(workers.core.installation_pods): those whose name its state knows, as workers.engine.repairs does
for the Jenkins nodes of before. An agent's, by the build state's agent names; a warm agent's,
by the warm store; a scale-up pod's, by its build key among the builds (the same push may
give another installation the same key: the worst taken is a pause pod it makes again).
Another installation's pods of before, and any no state here knows, are left alone.
"""

from collections.abc import Mapping
from typing import Any

from workers.adapters.redis_state import RedisState
from workers.adapters.warm_store import WarmStore
from workers.core.installation_pods import Owner, owner
from workers.core.pods import BUILD_KEY_LABEL, TEMPLATE_LABEL, WARM_LABEL
from workers.core.scale_up import is_scale_up

Labels = Mapping[str, str]


class LegacyPods:
    """Called with legacy pods (name -> labels), answers the names that are ours."""

    def __init__(self, state: RedisState, warm: WarmStore):
        self._state = state
        self._warm = warm

    def __call__(self, pods: Mapping[str, Labels]) -> set[str]:
        if not pods:
            return set()
        scale_up = {name: labels.get(BUILD_KEY_LABEL, "") for name, labels in pods.items()
                    if is_scale_up(labels)}
        warm = {name: labels.get(TEMPLATE_LABEL, "") for name, labels in pods.items()
                if labels.get(WARM_LABEL) and name not in scale_up}
        agents = [name for name in pods if name not in scale_up and name not in warm]
        known = set(self._state.builds_for_agents(agents)) | self._warm.known(warm)
        keys = [key for key in scale_up.values() if key]
        have = {key for key, (status,) in zip(keys, self._state.build_fields(keys, "status"))
                if status is not None} if keys else set()
        return known | {name for name, key in scale_up.items() if key in have}


def is_ours(meta: Mapping[str, Any], installation: str,
            legacy_known: "LegacyPods | None") -> bool:
    """Whether a pod with our managed-by value (its raw metadata, as a watch event has it) is
    this installation's: labelled so, or from before labels and known to its state."""
    labels = meta.get("labels") or {}
    whose = owner(labels, meta.get("annotations") or {}, installation)
    name = str(meta.get("name") or "")
    return whose == Owner.OURS or (whose == Owner.LEGACY and legacy_known is not None
                                   and name in legacy_known({name: labels}))
