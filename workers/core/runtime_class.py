"""What a template's RuntimeClass does to its pods, as the API server's RuntimeClass admission
plugin does it (kubernetes plugin/pkg/admission/runtimeclass/admission.go): the pod gets the
RuntimeClass's `overhead.podFixed` as spec.overhead, which kube-scheduler adds to the pod's
requests (k8s.io/component-helpers/resource PodRequests), and its `scheduling.nodeSelector`
(merged into the pod's) and `scheduling.tolerations` (added to the pod's). Placement,
sizing and nodes_needed count the pod so: a template with `podSpecPatch: {runtimeClassName:
kata}` was fitted without the overhead and on nodes the class does not run on, so the pod
was Unschedulable on its candidates. Pure."""

from collections.abc import Mapping
from typing import Any

from workers.core.models import PodTemplate, Toleration
from workers.core.quantity import cpu_millis, memory_bytes


def name(template: PodTemplate) -> str | None:
    """The RuntimeClass the template's pods name (its podSpecPatch's), or None."""
    value = template.pod_spec_patch.get("runtimeClassName")
    return value if isinstance(value, str) and value else None


def applied(template: PodTemplate, runtime_class: Mapping[str, Any] | None) -> PodTemplate:
    """The template as its pods are once admitted with this RuntimeClass (None: unknown, or
    none named: the template as it is). A selector key the template sets already keeps the
    template's value (admission refuses such a pod: the build's error names the label and both
    values, workers.adapters.kube_admission.runtime_class_words)."""
    if not runtime_class:
        return template
    fixed = ((runtime_class.get("overhead") or {}).get("podFixed") or {})
    try:
        overhead = (cpu_millis(fixed.get("cpu", 0)), memory_bytes(fixed.get("memory", 0)))
    except (TypeError, ValueError):
        overhead = (0, 0)
    scheduling = runtime_class.get("scheduling") or {}
    selector = dict(scheduling.get("nodeSelector") or {})
    tolerations = list(template.tolerations)
    for raw in scheduling.get("tolerations") or []:
        try:
            toleration = Toleration.model_validate(raw)
        except ValueError:
            continue
        if toleration not in tolerations:
            tolerations.append(toleration)
    return template.with_overhead(
        overhead, node_selector={**selector, **template.node_selector},
        tolerations=tuple(tolerations))
