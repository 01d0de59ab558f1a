"""The pod placement fits is the pod kube-scheduler counts: the rendered agent pod, with the
RuntimeClass admission's spec.overhead on it, has the effective request (kube_objects
effective_request: max(containers + sidecars, each init container + the sidecars before it),
plus the overhead, as k8s.io/component-helpers/resource PodRequests) that
podsize.placement_template fits at each size, also when an init container is the largest."""

import pytest

from tests.unit.test_pods import BUILD
from workers.adapters.kube_objects import effective_request
from workers.core import podsize, runtime_class
from workers.core.cluster import Resources
from workers.core.models import PodTemplate
from workers.core.pods import agent_pod_manifest

KATA = {"overhead": {"podFixed": {"cpu": "500m", "memory": "256Mi"}}}
SETUP = {"name": "setup", "image": "busybox:1.36", "command": ["true"],
         "resources": {"requests": {"cpu": "2", "memory": "2Gi"}}}
SIDECAR = {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
           "resources": {"requests": {"cpu": "200m", "memory": "128Mi"}}}
PATCHES = {
    "setup-largest": {"runtimeClassName": "kata", "initContainers": [SETUP]},
    "sidecar-then-setup": {"runtimeClassName": "kata", "initContainers": [SIDECAR, SETUP]},
    "no-init": {"runtimeClassName": "kata"},
}
RANGES = {"cpu": {"min": "500m", "default": "1", "max": "3"},
          "memory": {"min": "512Mi", "default": "1Gi", "max": "4Gi"}}


@pytest.mark.parametrize("name", PATCHES)
@pytest.mark.parametrize("which", ["min", "default", "max"])
def test_the_admitted_pods_effective_request_is_what_placement_fits(name, which):
    template = runtime_class.applied(
        PodTemplate.model_validate({**RANGES, "podSpecPatch": PATCHES[name]}), KATA)
    placed = podsize.placement_template(template)
    total = Resources(getattr(placed.cpu, which), getattr(placed.memory, which))
    size = podsize.build_size(template, total)
    pod = agent_pod_manifest(build=BUILD, template=template, size=size, namespace="ci",
                             jenkins_url="https://jenkins.example.com", hostname="node-a")
    # what the RuntimeClass admission plugin sets (plugin/pkg/admission/runtimeclass)
    pod["spec"]["overhead"] = KATA["overhead"]["podFixed"]
    assert effective_request(pod["spec"]) == total
