"""Ephemeral-storage and extended resources of init containers, counted as kube-scheduler's
NodeResourcesFit counts them (k8s.io/component-helpers/resource PodRequests, the same rule
for every resource): per resource, the larger of the containers' sum with the native
sidecars (restartPolicy Always: they keep running beside the containers) and each init
container with the sidecars started before it. For a template's own pod (fit.needs) and for
any pod the watch reads (kube_objects.pod_held)."""

from workers.adapters.kube_objects import pod_held
from workers.core.fit import EPHEMERAL_STORAGE, needs, with_init_containers
from workers.core.models import PodTemplate

GI = 2**30
GPU = "example.com/fpga"


def init(name: str, sidecar: bool = False, **requests: str) -> dict:
    return {"name": name, "image": "busybox:1.36", "command": ["true"],
            "resources": {"requests": dict(requests)},
            **({"restartPolicy": "Always"} if sidecar else {})}


def test_a_setup_step_larger_than_the_containers_sets_the_pods_storage():
    spec = {"initContainers": [init("unpack", **{EPHEMERAL_STORAGE: "30Gi"})]}
    assert with_init_containers(spec, {EPHEMERAL_STORAGE: 2 * GI}) == {EPHEMERAL_STORAGE: 30 * GI}
    # smaller than the containers' sum: the sum stands
    assert with_init_containers(spec, {EPHEMERAL_STORAGE: 40 * GI}) == {
        EPHEMERAL_STORAGE: 40 * GI}


def test_a_sidecar_adds_to_the_containers_and_to_the_init_containers_after_it():
    spec = {"initContainers": [init("first", **{EPHEMERAL_STORAGE: "3Gi"}),
                               init("proxy", sidecar=True, **{EPHEMERAL_STORAGE: "1Gi"}),
                               init("unpack", **{EPHEMERAL_STORAGE: "4Gi", GPU: "1"})]}
    # containers 2Gi + sidecar 1Gi = 3Gi; unpack 4Gi + the sidecar before it 1Gi = 5Gi
    assert with_init_containers(spec, {EPHEMERAL_STORAGE: 2 * GI}) == {
        EPHEMERAL_STORAGE: 5 * GI, GPU: 1}


def test_a_templates_needs_count_its_patchs_init_containers():
    template = PodTemplate.model_validate({
        "ephemeralStorage": "2Gi", "resources": {GPU: 1},
        "podSpecPatch": {"initContainers": [init("unpack", **{EPHEMERAL_STORAGE: "30Gi",
                                                             GPU: "2"})]}})
    need = needs(template)
    assert need.ephemeral_bytes == 30 * GI and dict(need.extended) == {GPU: 2}


def test_a_watched_pods_sidecar_storage_is_added_not_maxed():
    spec = {"containers": [{"name": "app", "resources": {"requests": {
                EPHEMERAL_STORAGE: "2Gi"}}}],
            "initContainers": [init("logs", sidecar=True, **{EPHEMERAL_STORAGE: "1Gi"})]}
    assert pod_held(spec).ephemeral_bytes == 3 * GI
