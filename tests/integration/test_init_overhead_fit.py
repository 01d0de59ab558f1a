"""A template whose pod has a setup init container bigger than its containers and a
RuntimeClass with a pod overhead, over kmock: placement fits the pod at what kube-scheduler
counts, max(the containers' sum, each init container) plus the overhead
(k8s.io/component-helpers/resource PodRequests: the overhead is added after the max;
Kubernetes docs, "Pod Overhead": "the overhead is added to the sum of container requests",
and "Init Containers": the effective request is the higher of the init containers' and the
app containers'). The overhead was left out whenever the init container was the larger:
the build went to a node short of it by the overhead, its pod Unschedulable there."""

from tests.integration.test_placement_fit_on_cluster import build, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import one_template_config, work

# the build's 900m and 768Mi plus the injected agent's 100m and 256Mi: 1 core, 1Gi; the setup
# step 2 cores, 2Gi; the overhead 500m, 256Mi: kube-scheduler counts 2.5 cores, 2.25Gi
CONFIG = one_template_config("""
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
    podSpecPatch:
      runtimeClassName: kata
      initContainers:
        - name: setup
          image: busybox:1.36
          command: [sh, -c, "true"]
          resources: {requests: {cpu: "2", memory: 2Gi}}
""", name="sandboxed")


def test_the_overhead_is_added_to_an_init_container_bigger_than_the_pods_containers(
        kube, app_on_cluster):
    kube.add_runtime_class("kata", "kata-qemu", overhead={"cpu": "500m", "memory": "256Mi"})
    kube.add_node("a-tight", cpu="16", memory="64Gi")
    # 2.2 cores left: room for the init container's 2, not with the overhead on top
    kube.add_pod("team-b", "filler", node="a-tight", requests=[{"cpu": "13800m",
                                                                "memory": "1Gi"}])
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())
    key = push(app, 1)
    work(app)
    state = build(app, key)
    assert not state.get("node"), state
    assert state["status"] == "waiting" and state["wait_reason"] == "insufficient_cpu", state
    assert "2500m cpu" in state["wait_detail"], state["wait_detail"]
    assert not kube.pods(NAMESPACE)
