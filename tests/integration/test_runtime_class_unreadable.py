"""A template naming a RuntimeClass the worker cannot use as the API server does. Where the
worker may not read RuntimeClasses (an image upgraded before its chart: the ClusterRole from
before grants no `get` on runtimeclasses; or rights granted by hand without it), every build
is still placed (its pod admitted with the class by the API server all the same), the
refusal is logged once, and the class is asked again at most once a minute, not on every
decision. Where the class is missing, or its node selector conflicts with the template's,
the API server refuses every pod, and the build's error says which. Over the Kubernetes API
mock (the chart's RBAC, less that right in the first case), real RQ jobs and Redis."""

import logging

import pytest

from tests.integration.test_placement_fit_on_cluster import build, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import one_template_config, work

CONFIG = one_template_config("""
    cpu: {min: 300m, default: 500m, max: 500m}
    memory: {min: 512Mi, default: 512Mi, max: 512Mi}
    podSpecPatch: {runtimeClassName: kata}
""")
KATA = {"katacontainers.io/kata-runtime": "true"}


@pytest.fixture
def app(app_on_cluster, kube):
    kube.add_runtime_class("kata", "kata-qemu", overhead={"cpu": "250m", "memory": "160Mi"},
                           node_selector=KATA)
    kube.add_node("kata-1", cpu="8", memory="32Gi", labels=KATA)
    kube.add_node("kata-2", cpu="8", memory="32Gi", labels=KATA)
    kube.revoke("node.k8s.io", "runtimeclasses")
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())


def test_every_build_is_placed_and_the_refusal_logged_once(app, kube, caplog):
    caplog.set_level(logging.WARNING, logger="ci_autoscaler")
    keys = [push(app, n) for n in range(4)]
    work(app)

    for key in keys:
        state = build(app, key)
        assert state.get("node") in ("kata-1", "kata-2"), state
        pod = kube.pod(NAMESPACE, state["agent"])
        # the API server admitted it with the class all the same
        assert pod["spec"]["overhead"] == {"cpu": "250m", "memory": "160Mi"}
    said = [r.getMessage() for r in caplog.records if "runtime class kata" in r.getMessage()]
    assert len(said) == 1, said
    assert "403" in said[0] and "placed without its overhead" in said[0], said
    reads = [r for r in kube.requests() if r.startswith(
        "GET /apis/node.k8s.io/v1/runtimeclasses/kata")]
    assert len(reads) == 1, reads
    assert [f.split(":")[0] for f in kube.forbidden] == [
        "GET /apis/node.k8s.io/v1/runtimeclasses/kata"], kube.forbidden
    kube.forbidden.clear()  # the refusal this test is about (the fixture fails on any other)



def test_a_missing_class_fails_the_build_naming_it(app_on_cluster, kube):
    """The API server's RuntimeClass admission refuses every pod naming a class it lacks
    (prepareObjects: 403, pod rejected: RuntimeClass "gvisor" not found): the build fails
    as pod_refused, as it does, and its error says why; it said "HTTP 403 Forbidden" alone,
    and the worker, having read the class's 404, logged nothing either."""
    app = app_on_cluster(CONFIG.replace("kata", "gvisor"), namespace=NAMESPACE,
                         nodes=(("node-a", "8", "32Gi"),))
    key = push(app, 0)
    work(app)
    state = build(app, key)
    assert state["fail_reason"] == "pod_refused", state
    assert state["error"].endswith("create failed: HTTP 403 Forbidden "
                                   "(RuntimeClass gvisor not found)"), state


def test_a_class_whose_selector_conflicts_with_the_templates_names_both(app_on_cluster, kube):
    """setScheduling refuses a pod whose nodeSelector sets a label of the class's
    scheduling.nodeSelector to another value ("conflict: ..."): the error names the label
    and both values."""
    kube.add_runtime_class("kata", "kata-qemu", node_selector=KATA)
    config = CONFIG + "    nodeSelector: {katacontainers.io/kata-runtime: \"false\"}\n"
    app = app_on_cluster(config, namespace=NAMESPACE, nodes=())
    kube.add_node("node-a", cpu="8", memory="32Gi",
                  labels={"katacontainers.io/kata-runtime": "false"})
    key = push(app, 0)
    work(app)
    state = build(app, key)
    assert state["fail_reason"] == "pod_refused", state
    assert state["error"].endswith(
        "(RuntimeClass nodeSelector katacontainers.io/kata-runtime=true conflicts with the "
        "template's katacontainers.io/kata-runtime=false)"), state
