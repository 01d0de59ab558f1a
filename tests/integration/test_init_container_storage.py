"""A podSpecPatch's init container asking ephemeral-storage (a setup step unpacking a cache) or
an extended resource, over kmock: placement fits the pod's ephemeral-storage as
kube-scheduler's NodeResourcesFit does, per resource the larger of the containers' sum and
each init container (k8s.io/component-helpers/resource PodRequests, which counts every
resource so; Kubernetes docs, "Init Containers", "Resource sharing within containers": the
effective request is the higher of the largest init container's and the sum of the app
containers'). Only the build container's ephemeralStorage was counted: the build went to
the idle node with too little local storage for its setup step, its pod Unschedulable."""

from tests.integration.test_placement_fit_on_cluster import build, push, seen
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_scale_up_pods import scale_up_pods
from tests.support.app import one_template_config, work
from workers import runtime
from workers.engine import reconcile

CONFIG = one_template_config("""
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    ephemeralStorage: 2Gi
    podSpecPatch:
      initContainers:
        - name: unpack-cache
          image: busybox:1.36
          command: [sh, -c, "true"]
          resources: {requests: {ephemeral-storage: 30Gi}}
""")


def test_an_init_container_s_ephemeral_storage_is_fitted_as_the_scheduler_counts_it(
        kube, app_on_cluster):
    # the idlest node has 20Gi of local storage: room for the build's 2Gi, not the setup's 30Gi
    kube.add_node("a-idle-small-disk", cpu="8", memory="32Gi",
                  extended={"ephemeral-storage": "20Gi"})
    kube.add_node("b-busy-big-disk", cpu="8", memory="32Gi",
                  extended={"ephemeral-storage": "100Gi"})
    kube.add_pod("team-b", "filler", node="b-busy-big-disk",
                 requests=[{"cpu": "4", "memory": "8Gi"}])
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())
    key = push(app, 1)
    work(app)
    assert build(app, key)["node"] == "b-busy-big-disk"
    # with the big disk taken by another pod, the build waits as the scheduler would have it
    kube.create_pod("team-b", "cache", node="b-busy-big-disk",
                    requests=[{"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "80Gi"}])
    rt = runtime.current()
    seen(lambda: next(n for n in rt.view.snapshot() if n.name == "b-busy-big-disk")
         .held.ephemeral_bytes >= 80 * 2**30, "the cache pod's ephemeral-storage")
    second = push(app, 2)
    work(app)
    state = build(app, second)
    assert not state.get("node"), state
    assert state["wait_reason"] == "insufficient_ephemeral-storage", state


def test_its_scale_up_pod_asks_the_setup_steps_storage(kube, app_on_cluster):
    """No node has 30Gi of local storage: the build waits, and its pause pod asks what the
    build's pod is counted at, so that an autoscaler adds a node with room for it; at the
    build's 2Gi it was bound on the small-disk node, in vain, pass after pass."""
    kube.add_node("a-idle-small-disk", cpu="8", memory="32Gi",
                  extended={"ephemeral-storage": "20Gi"})
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())
    key = push(app, 1)
    work(app)
    assert build(app, key)["wait_reason"] == "insufficient_ephemeral-storage"
    reconcile.reconcile_once(runtime.current())
    [pod] = scale_up_pods(kube).values()
    asked = [c["resources"]["requests"].get("ephemeral-storage") for c in pod["spec"][
        "containers"]]
    assert "30Gi" in asked, pod["spec"]
