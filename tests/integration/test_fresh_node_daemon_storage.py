"""nodes_needed over kmock, through the worker and the reconcile pass: a node joining runs
its DaemonSets, and kube-scheduler counts their ephemeral-storage requests against its
allocatable ephemeral-storage (NodeResourcesFit) as it counts their pod slots."""

from tests.integration.test_placement_on_cluster import metric, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import one_template_config, production_env, work
from service.app import create_app
from workers import runtime
from workers.engine import reconcile


def test_nodes_needed_counts_the_ephemeral_storage_a_node_added_s_daemonsets_take(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """Nodes of 80Gi allocatable ephemeral-storage, whose log shipper DaemonSet asks 2Gi of
    it (its buffer on the node's disk); a team's pod takes 60Gi more on each. Two builds
    asking 40Gi wait: a node added has 78Gi for them, so it takes one, and two are needed;
    counted on its whole 80Gi, nodes_needed said 1."""
    config = tmp_path / "config.yaml"
    config.write_text(one_template_config("""
        cpu: {min: 500m, default: 500m, max: 500m}
        memory: {min: 512Mi, default: 512Mi, max: 512Mi}
        ephemeralStorage: 40Gi
    """))
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    for name in ("a", "b"):
        kube.add_node(name, cpu="8", memory="32Gi", extended={"ephemeral-storage": "80Gi"})
        kube.add_pod("kube-system", f"fluent-bit-{name}", node=name, daemon_set="fluent-bit",
                     requests=[{"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "2Gi"}])
        kube.add_pod("shop", f"cache-{name}", node=name,
                     requests=[{"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "60Gi"}])
    runtime.install(None)
    try:
        app = create_app()
        client = app.test_client()
        keys = [push(client, i) for i in range(2)]
        work(app)
        state = app.extensions["ci_autoscaler"].state
        assert {state.get_build(k)["wait_reason"] for k in keys} == {
            "insufficient_ephemeral-storage"}
        reconcile.reconcile_once(runtime.current())
        assert metric(app, "ci_autoscaler_nodes_needed") == 2
        assert metric(app, "ci_autoscaler_builds_unplaceable") == 0
    finally:
        runtime.install(None)


def test_a_port_a_node_added_s_daemonset_binds_makes_the_build_unplaceable_not_a_node_needed(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """Every node runs a metrics agent DaemonSet binding hostPort 8125/UDP (DogStatsD's), and
    the template's build binds it too: kube-scheduler's NodePorts filter refuses every node,
    and a node added runs the DaemonSet as well (Cluster Autoscaler's template node holds
    its DaemonSet pods: simulator/node_info_utils.go). nodes_needed said 1, for a node that
    never takes the build (and CIClusterShortOfCapacity fired for it); it is unplaceable."""
    config = tmp_path / "config.yaml"
    config.write_text(one_template_config("""
        cpu: {min: 500m, default: 500m, max: 500m}
        memory: {min: 512Mi, default: 512Mi, max: 512Mi}
        podSpecPatch:
          containers:
            - name: jnlp
              ports: [{containerPort: 8125, hostPort: 8125, protocol: UDP}]
    """))
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    for name in ("a", "b"):
        kube.add_node(name, cpu="8", memory="32Gi")
        kube.add_pod("monitoring", f"datadog-{name}", node=name, daemon_set="datadog",
                     requests=[{"cpu": "100m", "memory": "256Mi"}],
                     ports=[{"containerPort": 8125, "hostPort": 8125, "protocol": "UDP"}])
    runtime.install(None)
    try:
        app = create_app()
        key = push(app.test_client(), 0)
        work(app)
        state = app.extensions["ci_autoscaler"].state
        assert state.get_build(key)["wait_reason"] == "host_ports"
        reconcile.reconcile_once(runtime.current())
        assert metric(app, "ci_autoscaler_nodes_needed") == 0
        assert metric(app, "ci_autoscaler_builds_unplaceable") == 1
    finally:
        runtime.install(None)
