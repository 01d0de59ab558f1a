"""A template's required pod anti-affinity of one pod per node (core.pod_anti_affinity), as
kube-scheduler's InterPodAffinity filter judges it (Kubernetes docs, "Inter-pod affinity and
anti-affinity"): a node running a pod the term selects is refused, for the reference and the
index alike; the label selector read as metav1.LabelSelectorAsSelector reads it."""

import pytest

from workers.adapters.kube_objects import pod_record
from workers.config.config_file import parse_file_config
from workers.core import scale_up
from workers.core.cluster import NodeState, Resources
from workers.core.fit import Held, needs
from workers.core.placement import Placement, Wait, decide
from workers.core.placement_index import PlacementIndex
from workers.core.pod_anti_affinity import selects, tokens

GI = 2**30
SHAPE = Resources(16000, 64 * GI)
OURS = {"app.kubernetes.io/managed-by": "ci-autoscaler", "ci-autoscaler.io/template": "heavy"}


def term(selector, topology="kubernetes.io/hostname", **more):
    return {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": selector, "topologyKey": topology, **more}]}}}


SELF = term({"matchLabels": {"ci-autoscaler.io/template": "heavy"}})


@pytest.mark.parametrize("selector,labels,expected", [
    ({}, {"a": "1"}, True),  # an empty selector selects every pod
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"},
     True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
    ({"matchLabels": {"a": "1"},
      "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_a_label_selector_selects_as_the_api_server_reads_it(selector, labels, expected):
    assert selects(selector, labels) is expected


def test_only_a_per_node_term_of_the_pods_own_namespace_that_selects_it_is_counted():
    assert len(tokens(SELF, OURS)) == 1
    assert tokens(SELF, {**OURS, "ci-autoscaler.io/template": "light"}) == frozenset()
    assert tokens(term(SELF["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"],
        topology="topology.kubernetes.io/zone"), OURS) == frozenset()
    assert tokens(term({}, namespaceSelector={}), OURS) == frozenset()


CONFIG = """
routes: [{project: '*', ref: 'refs/*', job: build, template: heavy}]
templates:
  heavy:
    cpu: {min: 1, default: 1, max: 1}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    podSpecPatch:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {ci-autoscaler.io/template: heavy}}
              topologyKey: kubernetes.io/hostname
"""


def both(template, nodes):
    reference = decide(template, nodes)
    index = PlacementIndex()
    index.replace_all(nodes)
    assert index.decide(template) == reference
    return reference


def test_a_node_running_one_of_the_templates_pods_is_refused_on_both_paths():
    template = parse_file_config(CONFIG).templates["heavy"]
    held = Held(1, host_ports=needs(template).host_ports)
    nodes = [NodeState("a-idle", SHAPE, held=held),
             NodeState("b-calm", SHAPE, requested=Resources(4000, 8 * GI))]
    assert isinstance(both(template, nodes), Placement) and both(template, nodes).node == "b-calm"
    nodes[1] = NodeState("b-calm", SHAPE, requested=Resources(4000, 8 * GI), held=held)
    decision = both(template, nodes)
    assert isinstance(decision, Wait) and decision.reason == "pod_anti_affinity"
    # a pod on a host port beside it: host_ports, kube-scheduler's NodePorts reason, first
    port = Held(1, host_ports=held.host_ports | {("TCP", "", 8080)})
    ported = template.model_copy(update={"pod_spec_patch": {
        **template.pod_spec_patch, "containers": [{"name": "jnlp", "ports": [
            {"containerPort": 8080, "hostPort": 8080}]}]}})
    decision = both(ported, [NodeState("a", SHAPE, held=port)])
    assert decision.reason == "host_ports"


def test_the_watch_counts_the_token_of_our_agents_and_of_no_one_else():
    spec = {"nodeName": "a", "containers": [{"name": "jnlp"}], **SELF}
    ours = {"metadata": {"labels": OURS}, "spec": spec}
    assert pod_record(ours)[3].host_ports == tokens(SELF, OURS)
    theirs = {"metadata": {"labels": {**OURS, "app.kubernetes.io/managed-by": "helm"}},
              "spec": spec}
    assert pod_record(theirs)[3].host_ports == frozenset()


def test_a_scale_up_pod_keeps_the_builds_anti_affinity():
    """Its pause pod stands in for the build's pod: without the term it was bound beside a
    heavy build, deleted in vain, and no node was added (core.scale_up.wants_node)."""
    template = parse_file_config(CONFIG).templates["heavy"]
    pod = scale_up.manifest(build_key="k" * 20, template_name="heavy", template=template,
                            requests=[Resources(1000, GI)])
    assert pod["spec"]["affinity"]["podAntiAffinity"] == template.pod_spec_patch[
        "affinity"]["podAntiAffinity"]
    assert scale_up.wants_node("pod_anti_affinity")


def test_nodes_needed_plans_one_such_build_per_node_added_on_both_paths():
    from workers.core.capacity import WaitingBuild, plan, plan_on_index
    template = parse_file_config(CONFIG).templates["heavy"]
    held = Held(1, host_ports=needs(template).host_ports)
    nodes = [NodeState("a", SHAPE, held=held), NodeState("b", Resources(16000, 64 * GI))]
    waiting = [WaitingBuild(f"k{i}", template, Resources(1000, GI)) for i in range(3)]
    reference = plan(waiting, nodes, SHAPE)
    index = PlacementIndex()
    index.replace_all(nodes)
    assert plan_on_index(waiting, index, SHAPE) == reference
    # one on b, the other two on a fresh node each, though one node's cpu would take them all
    assert reference.nodes_needed == 2
    assert sorted(reference.assignment.values()).count("b") == 1


TWO = """
routes: [{project: '*', ref: 'refs/*', job: build, template: heavy}]
templates:
  heavy:
    cpu: {min: 1, default: 1, max: 1}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    podSpecPatch:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: SELECTOR
              topologyKey: kubernetes.io/hostname
  light:
    cpu: {min: 1, default: 1, max: 1}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""


@pytest.mark.parametrize("selector", [
    "{matchLabels: {app.kubernetes.io/managed-by: ci-autoscaler}}",  # every agent of ours
    "{}",  # every pod of the namespace
    "{matchExpressions: [{key: ci-autoscaler.io/template, operator: Exists}]}",
    "{matchExpressions: [{key: ci-autoscaler.io/template, operator: In, "
    "values: [heavy, light]}]}",
])
def test_a_term_selecting_pods_of_other_templates_too_is_left_to_kube_scheduler(selector):
    """kube-scheduler refuses a heavy pod beside a light one its term selects, and a light pod
    beside a heavy one whose term selects it (the existing pod's anti-affinity: Kubernetes
    docs, "Inter-pod affinity and anti-affinity"). A light pod holds no token, so counted as a
    token the heavy build was placed beside a light one (Unschedulable there), and the
    config check stayed silent about it; such a term is the config check's warning, as
    before."""
    from workers.config.config_warnings import _placement_blind
    from workers.core import pod_anti_affinity, pods
    assert pod_anti_affinity.TEMPLATE_LABEL == pods.TEMPLATE_LABEL
    config = parse_file_config(TWO.replace("SELECTOR", selector))
    heavy = config.templates["heavy"]
    assert needs(heavy).host_ports == frozenset()
    assert [path for path, _ in _placement_blind(config)] == [
        ("templates", "heavy", "podSpecPatch", "affinity", "podAntiAffinity")]
    spec = {"nodeName": "a", "containers": [{"name": "jnlp"}], **heavy.pod_spec_patch}
    assert pod_record({"metadata": {"labels": OURS}, "spec": spec})[3].host_ports == \
        frozenset()


def test_a_pod_of_ours_in_another_namespace_holds_no_token_for_the_agent_namespace():
    """A term without namespaces selects the pods of its own pod's namespace only (Kubernetes
    docs, "Inter-pod affinity and anti-affinity": "... the namespace of the Pod with the
    affinity"). The watch lists every namespace's pods: another installation's heavy build
    in its own namespace (both without an installation identity) kept ours off its node,
    where kube-scheduler would have bound it."""
    spec = {"nodeName": "a", "containers": [{"name": "jnlp"}], **SELF}
    mine = {"metadata": {"namespace": "ci-agents", "labels": OURS}, "spec": spec}
    theirs = {"metadata": {"namespace": "other-ci", "labels": OURS}, "spec": spec}
    assert pod_record(mine, agent_namespace="ci-agents")[3].host_ports == tokens(SELF, OURS)
    assert pod_record(theirs, agent_namespace="ci-agents")[3].host_ports == frozenset()
