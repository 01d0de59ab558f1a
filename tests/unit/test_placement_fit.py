"""What kube-scheduler counts beside cpu and memory (core.fit): the pod limit, ephemeral-storage,
extended resources and hostPorts, decided alike by the reference and by the index."""

from dataclasses import replace

import kubernetes_validate
import pytest

from workers.adapters.kube_objects import node_state
from workers.core.cluster import NodeState, Resources, Taint
from workers.core.fit import Held, Limits, lacks, needs, ports_conflict
from workers.core.models import PodTemplate, Toleration
from workers.core.placement import Placement, Wait, decide
from workers.core.placement_index import PlacementIndex
from workers.core.pods import agent_pod_manifest
from workers.core.models import BuildRequest
from workers.core.topology import claim_names, matches, off_volume_nodes
from workers.config.pod_schema import KUBERNETES_SCHEMA_VERSION
from workers.core import node_affinity, podsize
from workers.core.capacity import WaitingBuild, plan as capacity_plan, plan_on_index
from workers.core.scale_up import binds_pause_pod, manifest as scale_up_manifest

GI = 2**30
GPU = "nvidia.com/gpu"
BIG = Resources(16000, 64 * GI)
SMALL = PodTemplate(cpu={"min": "500m", "default": "500m", "max": "500m"},
                    memory={"min": "512Mi", "default": "512Mi", "max": "512Mi"})


def both(template, nodes, **kw):
    """The reference decision, checked equal to the index's."""
    reference = decide(template, nodes, **kw)
    index = PlacementIndex()
    index.replace_all(nodes)
    assert index.decide(template, **kw) == reference
    return reference


def test_a_node_at_its_pod_limit_is_never_chosen_however_idle():
    full = NodeState("a-idle", BIG, limits=Limits(pods=110), held=Held(pods=110))
    busy = NodeState("b-busy", BIG, requested=Resources(12000, 40 * GI),
                     limits=Limits(pods=110), held=Held(pods=30))
    decision = both(SMALL, [full, busy])
    assert isinstance(decision, Placement) and decision.node == "b-busy"


def test_pods_in_flight_count_against_the_pod_limit():
    node = NodeState("a", BIG, limits=Limits(pods=3), held=Held(pods=2), in_flight_pods=1)
    decision = both(SMALL, [node])
    assert isinstance(decision, Wait) and decision.reason == "insufficient_pods"
    assert "1 insufficient_pods" in decision.detail


@pytest.mark.parametrize("condition", ["DiskPressure", "PIDPressure"])
def test_a_node_whose_kubelet_refuses_new_pods_is_never_chosen_whatever_is_tolerated(
        condition):
    """A CI node fills its disk (images, workspaces): its kubelet reports DiskPressure and
    refuses every new pod (eviction manager Admit: the pod Failed, reason Evicted); the taint
    kube-scheduler reads comes later, and a template tolerating every taint never sees it.
    The idlest node under such a condition is passed over (the reference and the index
    alike); MemoryPressure alone admits our pods (they have requests) and is not."""
    def node(name, requested, *conditions):  # as the kubelet reports it
        return replace(node_state({"metadata": {"name": name}, "spec": {}, "status": {
            "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}] + [
                {"type": c, "status": "True"} for c in conditions]}}), requested=requested)
    anywhere = SMALL.model_copy(update={"tolerations": [Toleration(operator="Exists")]})
    nodes = [node("a-idle", Resources(), condition, "MemoryPressure"),
             node("b-busy", Resources(8000, 0), "MemoryPressure"),
             node("c-busier", Resources(12000, 0))]
    assert both(anywhere, nodes).node == "b-busy"
    assert nodes[0].pressure == condition and not nodes[1].pressure
    waiting = [WaitingBuild("k", anywhere, Resources(16000, GI))]
    assert capacity_plan(waiting, nodes[:1], BIG).nodes_needed == 1


def test_nodes_needed_counts_a_pod_slot_for_every_waiting_build():
    """Builds waiting as insufficient_pods (every node at or near its pod limit, EKS
    max-pods, with cpu to spare): first-fit planned them onto those nodes by cpu and memory
    alone, and nodes_needed said 0 while they waited. Two slots left on one node, none on
    the other: two of five builds go there, three need a node (the reference and the index
    alike)."""
    nodes = [NodeState("a-full", BIG, limits=Limits(pods=17), held=Held(pods=17)),
             NodeState("b-two-left", BIG, limits=Limits(pods=17), held=Held(pods=14),
                       in_flight_pods=1)]
    waiting = [WaitingBuild(f"k{i}", SMALL, Resources(500, GI)) for i in range(5)]
    plan = capacity_plan(waiting, nodes, BIG)
    assert plan.nodes_needed == 1
    assert sorted(plan.assignment.values()) == ["b-two-left"] * 2 + ["new-0"] * 3
    index = PlacementIndex()
    index.replace_all(nodes)
    assert plan_on_index(waiting, index, BIG) == plan
    # one slot left, a plain build and one asking ephemeral-storage (the index plans those
    # apart): one takes it, the other needs a node
    disk = SMALL.model_copy(update={"ephemeral_storage": GI})
    one_left = [NodeState("a", BIG, limits=Limits(pods=11, ephemeral_bytes=100 * GI),
                          held=Held(pods=10))]
    waiting = [WaitingBuild("big", SMALL, Resources(1000, GI)),
               WaitingBuild("disk", disk, Resources(500, GI))]
    plan = capacity_plan(waiting, one_left, BIG)
    assert plan.assignment == {"big": "a", "disk": "new-0"}
    index.replace_all(one_left)
    assert plan_on_index(waiting, index, BIG) == plan


GPU_TEMPLATE = SMALL.model_copy(update={"resources": {GPU: 1}})


def test_a_pod_spec_patchs_node_selector_and_tolerations_are_placed_by():
    """The pod's nodeSelector and tolerations are the patch's too (merged, replaced): placement
    judges nodes by them, or the pod's candidates are nodes it cannot go to (Unschedulable
    on each try), and a tainted node it tolerates is never one."""
    def patched(patch):
        return PodTemplate.model_validate({"cpu": {"min": "500m", "default": "500m"},
                                           "podSpecPatch": patch})
    hdd = NodeState("a-hdd", BIG, labels={"disk": "hdd"})  # idlest
    ssd = NodeState("b-ssd", BIG, requested=Resources(8000, 8 * GI), labels={"disk": "ssd"})
    assert both(patched({"nodeSelector": {"disk": "ssd"}}), [hdd, ssd]).node == "b-ssd"
    tainted = NodeState("c-ci", BIG, taints=(Taint("dedicated", "NoSchedule", "ci"),))
    tolerant = patched({"tolerations": [{"key": "dedicated", "value": "ci",
                                         "effect": "NoSchedule"}]})
    assert both(tolerant, [tainted]).node == "c-ci"


def test_a_gpu_template_lands_only_on_a_node_that_has_a_gpu():
    plain = NodeState("a-plain", BIG)  # idlest, no GPU
    gpu = NodeState("b-gpu", BIG, requested=Resources(8000, 8 * GI),
                    limits=Limits(extended=((GPU, 2),)), held=Held(extended=((GPU, 1),)))
    decision = both(GPU_TEMPLATE, [plain, gpu])
    assert isinstance(decision, Placement) and decision.node == "b-gpu"
    # a template without a GPU is not kept off GPU nodes by this
    assert both(SMALL, [gpu]).node == "b-gpu"


def test_a_gpu_template_waits_as_insufficient_gpu_when_every_gpu_is_taken():
    plain = NodeState("a-plain", BIG)
    gpus = [NodeState(f"gpu-{i}", BIG, limits=Limits(extended=((GPU, 1),)),
                      held=Held(pods=1, extended=((GPU, 1),))) for i in range(2)]
    decision = both(GPU_TEMPLATE, [plain, *gpus])
    assert isinstance(decision, Wait)
    assert decision.reason == "insufficient_nvidia.com/gpu"
    assert "none of 2 matching nodes" in decision.detail
    # no node has a GPU at all: no node matches
    assert both(GPU_TEMPLATE, [plain]).reason == "no_matching_node"


def test_ephemeral_storage_is_fitted_against_the_node_allocatable():
    template = SMALL.model_copy(update={"ephemeral_storage": 20 * GI})
    short = NodeState("a-short", BIG, limits=Limits(ephemeral_bytes=100 * GI),
                      held=Held(ephemeral_bytes=90 * GI))
    roomy = NodeState("b-roomy", BIG, requested=Resources(8000, 0),
                      limits=Limits(ephemeral_bytes=100 * GI))
    assert both(template, [short, roomy]).node == "b-roomy"
    assert both(template, [short]).reason == "insufficient_ephemeral-storage"


@pytest.mark.parametrize("want, used, clash", [
    (("TCP", "", 8080), ("TCP", "", 8080), True),
    (("TCP", "10.0.0.1", 8080), ("TCP", "", 8080), True),  # the wildcard takes every IP
    (("TCP", "10.0.0.1", 8080), ("TCP", "10.0.0.2", 8080), False),
    (("UDP", "", 8080), ("TCP", "", 8080), False),
    (("TCP", "", 8081), ("TCP", "", 8080), False),
])
def test_host_ports_conflict_as_the_node_ports_filter_says(want, used, clash):
    assert ports_conflict(want, used) is clash


def test_a_node_whose_host_port_is_taken_is_passed_over():
    template = SMALL.model_copy(update={"pod_spec_patch": {"containers": [
        {"name": "jnlp", "ports": [{"containerPort": 8080, "hostPort": 8080}]}]}})
    taken = NodeState("a-taken", BIG, held=Held(pods=1, host_ports=frozenset({("TCP", "", 8080)})))
    free = NodeState("b-free", BIG, requested=Resources(8000, 0))
    assert needs(template).host_ports == frozenset({("TCP", "", 8080)})
    assert both(template, [taken, free]).node == "b-free"
    assert both(template, [taken]).reason == "host_ports"
    assert lacks(taken, needs(SMALL)) is None


def test_builds_binding_one_host_port_need_a_node_added_each_whatever_its_shape_says():
    """Three builds binding hostPort 8080 wait, the only node's port taken. kube-scheduler's
    NodePorts filter lets one such pod on a node, a node added too (Cluster Autoscaler's
    estimator runs the same filters on its template node): three nodes. A fresh node's
    hostPorts are its builds' alone, known whatever its shape: with the shape from config
    (no node has it, its pod slots and GPUs not known: ClusterWatch.fresh_node) or no node
    to read it from, the three fit one node by cpu and nodes_needed said 1."""
    template = SMALL.model_copy(update={"pod_spec_patch": {"containers": [
        {"name": "jnlp", "ports": [{"containerPort": 8080, "hostPort": 8080}]}]}})
    taken = NodeState("a-taken", BIG, held=Held(pods=1, host_ports=frozenset({("TCP", "", 8080)})))
    waiting = [WaitingBuild(f"k{i}", template, Resources(500, GI)) for i in range(3)]
    index = PlacementIndex()
    index.replace_all([taken])
    for limits in (None, Limits(pods=110)):
        plan = capacity_plan(waiting, [taken], BIG, fresh_limits=limits)
        assert plan.nodes_needed == 3, limits
        assert plan_on_index(waiting, index, BIG, fresh_limits=limits) == plan


def test_the_pod_asks_for_what_placement_counted():
    template = GPU_TEMPLATE.model_copy(update={"ephemeral_storage": 20 * GI})
    build = BuildRequest(build_key="k", agent_name="agent-k", source="gitlab", project="p",
                         ref="refs/heads/main", sha="0" * 40, user="u", job="j",
                         template="gpu")
    pod = agent_pod_manifest(build=build, template=template, size=Resources(500, 512 * 2**20),
                             namespace="ci", jenkins_url="http://j")
    agent = next(c for c in pod["spec"]["containers"] if c["name"] == "jnlp")
    assert agent["resources"]["requests"][GPU] == agent["resources"]["limits"][GPU] == "1"
    assert agent["resources"]["requests"]["ephemeral-storage"] == "20Gi"


@pytest.mark.parametrize("resources, error", [
    ({"cpu": 1}, "only extended resources"),
    ({"gpu": 1}, "only extended resources"),
    ({GPU: 0}, "whole number above 0"),
    ({GPU: 0.5}, "whole number above 0"),
])
def test_a_template_refuses_what_is_not_an_extended_resource(resources, error):
    with pytest.raises(ValueError, match=error):
        PodTemplate(resources=resources)


# -- the node affinity of the volumes bound to a template's claims (core.topology) --------

ZONE = "topology.kubernetes.io/zone"


def zone_node(name: str, zone: str, **kw) -> NodeState:
    return NodeState(name, BIG, labels={ZONE: zone, "kubernetes.io/hostname": name}, **kw)


def zone_terms(*zones: str) -> list[dict]:
    return [{"matchExpressions": [{"key": ZONE, "operator": "In", "values": list(zones)}]}]


@pytest.mark.parametrize("terms, fits", [
    (zone_terms("a"), True),
    (zone_terms("b", "a"), True),
    (zone_terms("b"), False),
    ([{"matchExpressions": [{"key": ZONE, "operator": "NotIn", "values": ["a"]}]}], False),
    ([{"matchExpressions": [{"key": "disk", "operator": "DoesNotExist"}]}], True),
    ([{"matchExpressions": [{"key": ZONE, "operator": "Exists"}]}], True),
    ([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}], True),
    ([{}], False),  # an empty term matches no node
    ([{"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["b"]}]},
      {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a"]}]}], True),
])
def test_node_selector_terms_match_as_the_api_server_reads_them(terms, fits):
    assert matches(zone_node("n", "a"), terms) is fits


def test_a_template_with_a_zonal_claim_is_placed_only_in_its_zone():
    template = SMALL.model_copy(update={"workspace_volume": {
        "persistentVolumeClaim": {"claimName": "cache"}}})
    assert claim_names(template) == ("cache",)
    nodes = [zone_node("a-idle", "a"), zone_node("b-busy", "b", requested=Resources(8000, 0))]
    off = off_volume_nodes(nodes, [zone_terms("b")])
    assert off == {"a-idle"}
    assert both(template, nodes, exclude_nodes=off).node == "b-busy"


def test_what_the_namespace_s_default_requests_add_is_needed():
    """Each container asking none of a defaulted resource gets it (admission.go
    mergeContainerResources): jnlp (the build's, asking the template's ephemeralStorage
    itself) and a service, db, asking neither."""
    from workers.core.fit import needs
    from workers.core.limit_range_requests import added_requests
    from workers.core.models import PodTemplate
    template = PodTemplate.model_validate({
        "ephemeralStorage": "1Gi", "containers": [{"name": "db", "image": "postgres:16"}]})
    added = added_requests(template, {"ephemeral-storage": "2Gi", "example.com/fpga": "1",
                                      "cpu": "1"})
    assert added == (("ephemeral-storage", 2 * 2**30), ("example.com/fpga", 2))
    need = needs(template.with_namespace_requests(added))
    assert need.ephemeral_bytes == 3 * 2**30 and need.extended == (("example.com/fpga", 2),)
    assert needs(template).ephemeral_bytes == 2**30  # the template as configured: its own


def test_a_default_the_agent_s_init_container_gets_above_the_build_s_own_is_needed():
    """With agentInjection and one container, marked build, asking 1Gi of ephemeral-storage,
    no container gets the 2Gi default, but the agent's init container does (it asks none,
    core.pods._agent_init): the pod's request is the larger of the containers' sum and each
    init container's (resourcehelper.PodRequests), 2Gi, and placement counted 1Gi."""
    from workers.core.fit import needs
    from workers.core.limit_range_requests import added_requests
    from workers.core.models import PodTemplate
    template = PodTemplate.model_validate({
        "ephemeralStorage": "1Gi", "containers": [
            {"name": "build", "image": "maven:3", "build": True}]})
    added = added_requests(template, {"ephemeral-storage": "2Gi"})
    assert needs(template.with_namespace_requests(added)).ephemeral_bytes == 2 * 2**30
    # the build container asking more than the default: its own is the pod's
    assert added_requests(template, {"ephemeral-storage": "512Mi"}) == ()


# -- a template's own required node affinity (its podSpecPatch's; core.node_affinity) ------

def expr(key: str, op: str, *values: str) -> dict:
    return {"key": key, "operator": op, **({"values": list(values)} if values else {})}


LABELLED = NodeState("n-1", BIG, labels={ZONE: "a", "cores": "16", "disk": "ssd"})


@pytest.mark.parametrize("requirement, fits", [
    (expr(ZONE, "In", "a", "b"), True),
    (expr(ZONE, "In", "b"), False),
    (expr("missing", "In", "a"), False),
    (expr(ZONE, "NotIn", "b"), True),
    (expr(ZONE, "NotIn", "a"), False),
    (expr("missing", "NotIn", "a"), True),  # no such label: not in any set
    (expr("disk", "Exists"), True),
    (expr("gpu", "Exists"), False),
    (expr("gpu", "DoesNotExist"), True),
    (expr("disk", "DoesNotExist"), False),
    (expr("cores", "Gt", "8"), True),
    (expr("cores", "Gt", "16"), False),
    (expr("cores", "Lt", "32"), True),
    (expr("cores", "Lt", "16"), False),
    # strconv.ParseInt takes a sign, but labels.NewRequirement also wants each value a label
    # value: "+8" and "-1" do not parse, and the term matches no node
    (expr("cores", "Gt", "+8"), False),
    (expr("cores", "Lt", "-1"), False),
    (expr("cores", "Gt", "1_0"), False),  # ... nor an underscore
    (expr(ZONE, "NotIn", "eu west"), False),  # no label value: matches nothing, not all
    (expr(ZONE, "In", "a", "b c"), False),  # one bad value spoils the requirement
    (expr(ZONE, "NotIn"), False),  # NotIn without values does not parse
    (expr("disk", "Exists", "ssd"), False),  # nor Exists with values
    (expr("bad key!", "DoesNotExist"), False),  # nor a key that is no label key
    (expr("disk", "Gt", "1"), False),  # a label that is no integer matches neither
    (expr("missing", "Lt", "100"), False),
    (expr("cores", "Gt", "1", "2"), False),  # Gt takes exactly one value
    (expr(ZONE, "Near", "a"), False),  # an unknown operator matches nothing
])
def test_each_operator_matches_node_labels_as_kube_scheduler_does(requirement, fits):
    assert node_affinity.matches(LABELLED, [{"matchExpressions": [requirement]}]) is fits


@pytest.mark.parametrize("terms, fits", [
    ([], False),  # no terms: no node (NodeSelector.Match over an empty list)
    ([{}], False),
    ([{"matchExpressions": []}], False),
    ([{"matchExpressions": [expr(ZONE, "In", "a"), expr("disk", "In", "hdd")]}], False),  # AND
    ([{"matchExpressions": [expr(ZONE, "In", "a"), expr("disk", "In", "ssd")]}], True),
    ([{"matchExpressions": [expr(ZONE, "In", "b")]}, {}, {"matchFields": [
        expr("metadata.name", "In", "n-1")]}], True),  # OR
    ([{"matchFields": [expr("metadata.name", "NotIn", "n-1")]}], False),
    ([{"matchFields": [expr("spec.unschedulable", "In", "n-1")]}], False),
    # a field requirement takes exactly one value (nodeSelectorRequirementsAsFieldSelector)
    ([{"matchFields": [expr("metadata.name", "In", "n-1", "n-2")]}], False),
    ([{"matchExpressions": [expr(ZONE, "In", "a")],
       "matchFields": [expr("metadata.name", "In", "n-2")]}], False),
])
def test_terms_are_ored_and_requirements_anded_an_empty_term_matching_nothing(terms, fits):
    assert node_affinity.matches(LABELLED, terms) is fits


def zonal(*zones: str, preferred: list | None = None) -> PodTemplate:
    affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": zone_terms(*zones)}}
    if preferred:
        affinity["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return PodTemplate.model_validate({
        "cpu": {"min": "500m", "default": "500m", "max": "500m"},
        "memory": {"min": "512Mi", "default": "512Mi", "max": "512Mi"},
        "podSpecPatch": {"affinity": {"nodeAffinity": affinity}}})


def test_a_template_s_node_affinity_keeps_its_builds_to_the_nodes_it_matches():
    """Placement (the reference and the index alike), scale-up pods and nodes_needed read a
    podSpecPatch's required node affinity: the idlest node outside its zones is passed over,
    and with none inside them the build waits as no_matching_node."""
    nodes = [zone_node("a-idle", "a"), zone_node("b-busy", "b", requested=Resources(8000, 0)),
             zone_node("c-busy", "c", requested=Resources(4000, 0))]
    assert both(zonal("b", "c"), nodes).node == "c-busy"
    waits = both(zonal("d"), nodes)
    assert isinstance(waits, Wait) and waits.reason == "no_matching_node"
    # templates alike but for their affinity are not taken for one by the index
    index = PlacementIndex()
    index.replace_all(nodes)
    assert index.decide(zonal("b")).node == "b-busy"
    assert index.decide(zonal("a")).node == "a-idle"
    assert [n.name for n in nodes if binds_pause_pod(n, zonal("b", "c"))] == ["b-busy", "c-busy"]
    pause = scale_up_manifest(build_key="k", template_name="t", template=zonal("d"),
                              requests=[Resources(500, GI)])
    assert pause["spec"]["affinity"] == {"nodeAffinity": zonal("d").node_affinity}
    kubernetes_validate.validate(pause, KUBERNETES_SCHEMA_VERSION, strict=True)
    for zone, needed in (("d", 1), ("b", 0)):
        waiting = [WaitingBuild("k", zonal(zone), Resources(500, GI))]
        assert capacity_plan(waiting, nodes, BIG).nodes_needed == needed
        on_index = plan_on_index(waiting, index, BIG)
        assert on_index.nodes_needed == needed


def test_a_pod_spec_patchs_sidecar_is_counted_in_what_placement_fits():
    """A native sidecar (an init container with restartPolicy Always, README: podSpecPatch)
    runs beside the containers, and kube-scheduler adds its requests to theirs
    (k8s.io/component-helpers/resource PodRequests): placement fits the same total, so a node
    with room for the build but not its sidecar is not chosen, and the pod a placement makes
    asks what placement counted. Left out, the 1-core proxy went to a node with 600m free."""
    side = {"cpu": "1", "memory": "256Mi"}
    template = SMALL.model_copy(update={"pod_spec_patch": {"initContainers": [
        {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
         "resources": {"requests": side, "limits": {"memory": side["memory"]}}}]}})
    placed = podsize.placement_template(template)
    tight = NodeState("a-tight", Resources(1000, 4 * GI))  # the build's 600m, not 1600m
    assert isinstance(both(placed, [tight]), Wait)
    decision = both(placed, [tight, NodeState("b-roomy", BIG)])
    assert isinstance(decision, Placement) and decision.node == "b-roomy"
    build = BuildRequest(build_key="k", agent_name="agent-k", source="gitlab", project="p",
                         ref="refs/heads/main", sha="0" * 40, user="u", job="j", template="t")
    spec = agent_pod_manifest(build=build, template=template, namespace="ci",
                              size=podsize.build_size(template, decision.size),
                              jenkins_url="http://j")["spec"]
    asked = [podsize.requests_of(c) for c in spec["containers"] + [
        c for c in spec["initContainers"] if c.get("restartPolicy") == "Always"]]
    assert Resources.total(asked) == decision.size


def test_an_empty_key_with_exists_tolerates_every_taint_as_kube_scheduler_reads_it():
    """`{key: "", operator: Exists}` (how charts render "tolerate everything") matches every
    taint (k8s.io/api core/v1 Toleration.ToleratesTaint: an empty key with Exists matches all
    keys): read as a key named "", the only node, tainted, was no match, and the build waited
    no_matching_node while kube-scheduler would have run its pod there."""
    tainted = NodeState("a-ci", BIG, taints=(Taint("dedicated", "NoSchedule", "ci"),))
    everything = PodTemplate.model_validate({"tolerations": [{"key": "", "operator": "Exists"}]})
    assert both(everything, [tainted]).node == "a-ci"


def test_an_init_container_asking_more_than_the_pod_is_fitted_as_kube_scheduler_counts_it():
    """kube-scheduler counts a pod at max(its containers' sum, the largest init container with
    the sidecars started before it) (k8s.io/component-helpers/resource PodRequests; our own
    count of a bound pod, kube_objects.effective_request, does the same): a 2 GiB setup step
    after a 1 GiB sidecar, in a pod of 1.75 GiB, holds 3 GiB of the node. Placement fits that floor, so a node with
    room for the build but not its setup is not chosen, and the build's container gets the
    room the pod holds anyway. Refused at load before, a config the API server takes kept the
    service from starting."""
    template = SMALL.model_copy(update={"pod_spec_patch": {"initContainers": [
        {"name": "proxy", "image": "envoy", "restartPolicy": "Always",
         "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}},
        {"name": "setup", "image": "git", "resources": {"requests": {"memory": "2Gi"}}}]}})
    placed = podsize.placement_template(template)
    floor = Resources(100, 3 * GI)  # the setup with the sidecar started before it
    assert podsize.init_floor(template) == floor
    tight = NodeState("a-tight", Resources(4000, 2 * GI + GI // 2))  # build + sidecar, not 3Gi
    assert isinstance(both(placed, [tight]), Wait)
    decision = both(placed, [tight, NodeState("b-roomy", BIG)])
    assert isinstance(decision, Placement) and decision.node == "b-roomy"
    assert floor.fits_in(decision.size)
    size = podsize.build_size(template, decision.size)
    assert podsize.pod_total(template, size).clamp_min(floor) == decision.size
