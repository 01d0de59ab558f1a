"""A template whose pods keep one per node by a required pod anti-affinity ("one heavy build
per node", as Kubernetes-plugin templates often say it), over kmock, through the worker's own
provision and the reconcile pass.

kube-scheduler's InterPodAffinity filter refuses a node in the term's topology domain (with
topologyKey kubernetes.io/hostname, the node itself) that runs a pod the term's labelSelector
selects, in the pod's namespace (Kubernetes docs, "Assigning Pods to Nodes", "Inter-pod
affinity and anti-affinity"). Placement read nodes only: the second build went to the node
the first had (the idlest still), its pod Unschedulable there; the third waited as if there
were room, nodes_needed said 0 and no node was ever added for it."""

from tests.integration.test_placement_on_cluster import metric, node_of, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import one_template_config, work
from workers import runtime
from workers.engine import reconcile

CONFIG = one_template_config("""
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    podSpecPatch:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {ci-autoscaler.io/template: heavy}}
              topologyKey: kubernetes.io/hostname
""", name="heavy")


def test_one_build_per_node_is_placed_so_and_a_third_waits_for_a_node_added(
        kube, app_on_cluster):
    kube.add_node("a-idle", cpu="16", memory="64Gi")
    kube.add_node("b-calm", cpu="16", memory="64Gi")
    kube.set_node_usage("b-calm", cpu="4", memory="8Gi")
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(),
                         CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2")
    client = app.test_client()
    first = push(client, 0)
    work(app)
    assert node_of(app, first) == "a-idle"
    second = push(client, 1)
    work(app)
    # a-idle is still the idlest, but runs a heavy build already
    assert node_of(app, second) == "b-calm"
    state = app.extensions["ci_autoscaler"].state
    pod = kube.pod(NAMESPACE, state.get_build(second)["agent"])
    assert pod["spec"]["affinity"]["podAntiAffinity"]  # the pod keeps it: the scheduler's too
    # kube-scheduler binds both; the watch sees them where they run
    for key in (first, second):
        kube.bind_pod(NAMESPACE, state.get_build(key)["agent"], node_of(app, key))
    third = push(client, 2)
    work(app)
    build = state.get_build(third)
    assert not build.get("node"), build
    assert build["wait_reason"] == "pod_anti_affinity", build
    reconcile.reconcile_once(runtime.current())
    assert metric(app, "ci_autoscaler_nodes_needed") == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ci_autoscaler_builds_waiting{reason="pod_anti_affinity"} 1.0' in text
