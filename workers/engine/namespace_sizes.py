"""The templates as the agent namespace lets them be sized: each one's cpu and memory ranges
narrowed to its LimitRanges' per-container max and min (core.limit_range_sizing.within), then
to their per-pod max and min (within_pod), so that placement, warm agents, scale-up pods,
nodes_needed and the size a build shows all agree with the pod the API server accepts. The
LimitRanges are the cluster adapter's, cached a minute. Each carries what the LimitRanges'
default requests add to its pods (core.limit_range_requests: ephemeral-storage, extended
resources on the containers asking none), which placement counts (core.fit.needs). Then
each is taken as its RuntimeClass admits its pods (core.runtime_class: the overhead, and the
class's node selector and tolerations), read from the cluster adapter, cached a minute. The
overhead comes after the LimitRanges: the LimitRanger sums a pod's containers without it
(plugin/pkg/admission/limitranger podRequests), kube-scheduler with it."""

from workers.core.limit_range_requests import added_requests
from workers.core.limit_range_sizing import within, within_pod
from workers.core import runtime_class
from workers.core.models import PodTemplate
from workers.runtime import Runtime


Bounds = tuple[dict[str, str], dict[str, str]]  # max, min


def _fit(template: PodTemplate, bounds: Bounds, pod_bounds: Bounds, defaults: dict[str, str]
         ) -> PodTemplate:
    sized = within_pod(within(template, *bounds), *pod_bounds)
    return sized.with_namespace_requests(added_requests(sized, defaults))


def _admitted(rt: Runtime, template: PodTemplate) -> PodTemplate:
    name = runtime_class.name(template)
    return template if name is None else runtime_class.applied(
        template, rt.cluster.runtime_class(name))


def fitted(rt: Runtime, template: PodTemplate) -> PodTemplate:
    return _admitted(rt, _fit(template, rt.cluster.container_bounds(),
                              rt.cluster.pod_bounds(), rt.cluster.default_requests()))


def fitted_all(rt: Runtime, templates: dict[str, PodTemplate]) -> dict[str, PodTemplate]:
    if not templates:
        return templates
    bounds, pod_bounds = rt.cluster.container_bounds(), rt.cluster.pod_bounds()
    defaults = rt.cluster.default_requests()
    return {name: _admitted(rt, _fit(t, bounds, pod_bounds, defaults))
            for name, t in templates.items()}
