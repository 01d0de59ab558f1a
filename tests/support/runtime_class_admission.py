"""The API server's RuntimeClass admission plugin, for kmock (kubernetes 1.30
plugin/pkg/admission/runtimeclass/admission.go): a pod naming a runtimeClassName gets the
class's overhead.podFixed as spec.overhead (setOverhead; a pod naming another overhead is
refused), its scheduling.nodeSelector merged into the pod's (setScheduling; a key the pod sets
to another value is refused: "conflict"), and its scheduling.tolerations added
(tolerations.MergeTolerations). A class that does not exist refuses the pod (403 Forbidden,
"pod rejected: RuntimeClass %q not found")."""

from __future__ import annotations

import copy
from typing import Any

Refusal = tuple[int, str, str]


def _forbidden(pod: dict[str, Any], why: str) -> Refusal:
    name = (pod.get("metadata") or {}).get("name", "")
    return 403, "Forbidden", f'pods "{name}" is forbidden: {why}'


def admit(pod: dict[str, Any], classes: dict[str, dict[str, Any]]
          ) -> tuple[dict[str, Any], Refusal | None]:
    spec = pod.get("spec") or {}
    name = spec.get("runtimeClassName")
    if not name:
        if spec.get("overhead"):
            return pod, _forbidden(pod, "pod rejected: Pod Overhead set without corresponding "
                                        "RuntimeClass defined Overhead")
        return pod, None
    rc = classes.get(name)
    if rc is None:
        return pod, _forbidden(pod, f'pod rejected: RuntimeClass "{name}" not found')
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    fixed = (rc.get("overhead") or {}).get("podFixed")
    if fixed:
        if spec.get("overhead") and spec["overhead"] != fixed:
            return pod, _forbidden(pod, "pod rejected: Pod's Overhead doesn't match "
                                        "RuntimeClass's defined Overhead")
        spec["overhead"] = dict(fixed)
    elif spec.get("overhead"):
        return pod, _forbidden(pod, "pod rejected: Pod Overhead set without corresponding "
                                    "RuntimeClass defined Overhead")
    scheduling = rc.get("scheduling") or {}
    selector = dict(spec.get("nodeSelector") or {})
    for key, value in (scheduling.get("nodeSelector") or {}).items():
        if key in selector and selector[key] != value:
            return pod, _forbidden(pod, f"conflict: runtimeClass.scheduling.nodeSelector[{key}]"
                                        f" = {value}; pod.spec.nodeSelector[{key}] = "
                                        f"{selector[key]}")
        selector[key] = value
    if selector:
        spec["nodeSelector"] = selector
    tolerations = list(spec.get("tolerations") or [])
    for t in scheduling.get("tolerations") or []:
        if t not in tolerations:  # MergeTolerations drops duplicates (and subsumed ones)
            tolerations.append(t)
    if tolerations:
        spec["tolerations"] = tolerations
    return pod, None
