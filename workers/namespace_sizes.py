"""The templates as the agent namespace lets them be sized: each one's cpu and memory ranges
narrowed to its LimitRanges' per-container max and min (core.limit_range_sizing.within), then
to their per-pod max and min (within_pod), so that placement, warm agents, scale-up pods,
nodes_needed and the size a build shows all agree with the pod the API server accepts. The
LimitRanges are the cluster adapter's, cached a minute."""

from workers.core.limit_range_sizing import within, within_pod
from workers.core.models import PodTemplate
from workers.runtime import Runtime


def fitted(rt: Runtime, template: PodTemplate) -> PodTemplate:
    return within_pod(within(template, *rt.cluster.container_bounds()),
                      *rt.cluster.pod_bounds())


def fitted_all(rt: Runtime, templates: dict[str, PodTemplate]) -> dict[str, PodTemplate]:
    if not templates:
        return templates
    (most, least), (pod_most, pod_least) = rt.cluster.container_bounds(), rt.cluster.pod_bounds()
    return {name: within_pod(within(t, most, least), pod_most, pod_least)
            for name, t in templates.items()}
