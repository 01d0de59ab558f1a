"""A namespace's maxLimitRequestRatio below a template's cpuLimitFactor: the build container
names a CPU limit of its request x the factor (core.pods), which the API server's LimitRanger
refuses, 403 'pods "NAME" is forbidden: cpu max limit to request ratio per Container is 2, but
provided ratio is 3.000000.' (plugin/pkg/admission/limitranger/admission.go
limitRequestRatioConstraint), so every build of the template failed as pod_refused. The limit
is now lowered to the most the ratio admits, and that is said once. Real redis-server, kmock
over HTTP with the LimitRanger (tests.support.limit_ranger), the Jenkins fake."""

import logging

import pytest

from tests.integration.test_limit_range_defaults import build_container, state_of
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import push, until
from tests.support.app import one_template_config
from workers.core.quantity import cpu_millis

FACTOR_3 = one_template_config("""
    cpu: {min: "2", default: "2", max: "2"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    cpuLimitFactor: 3
""")


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(FACTOR_3, namespace=NAMESPACE)


def test_a_cpu_limit_factor_above_the_namespaces_ratio_is_lowered_to_it_not_refused(
        app, kube, jenkins_fake, caplog):
    kube.add_limit_range(NAMESPACE, "ratio", [
        {"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}])
    state = state_of(app)
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.kube")
    keys = [push(app.test_client(), i) for i in range(2)]
    until(app, lambda: all(state.get_build(k).get("status") in ("triggered", "failed")
                           for k in keys))
    for key in keys:
        build = state.get_build(key)
        assert build["status"] == "triggered", build.get("error")
    for pod in kube.pods(NAMESPACE):
        resources = build_container(pod)["resources"]
        assert resources["requests"]["cpu"] == "2100m"  # the build's 2, the agent's 100m
        # the most the ratio admits, not 6300m (x3) and not the request
        assert cpu_millis(resources["limits"]["cpu"]) == 4200, resources
    lowered = [r.getMessage() for r in caplog.records if "maxLimitRequestRatio" in r.getMessage()]
    assert lowered == [f"cpu limit of container jnlp lowered from 6300m to 4200m: the "
                       f"LimitRange maxLimitRequestRatio of cpu in {NAMESPACE} is 2 (a "
                       "template's cpuLimitFactor above it had every pod refused)"], lowered


def test_a_cpu_limit_factor_above_a_pod_ratio_is_lowered_to_it_not_refused(
        app, kube, jenkins_fake, caplog):
    """A Pod item's ratio bounds the pod's summed limits over its request (PodLimitFunc's Pod
    branch): 6300m over 2100m was refused, 403 "cpu max limit to request ratio per Pod is 2,
    but provided ratio is 3.000000."."""
    kube.add_limit_range(NAMESPACE, "ratio", [
        {"type": "Pod", "maxLimitRequestRatio": {"cpu": "2"}}])
    state = state_of(app)
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.kube")
    key = push(app.test_client(), 0)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))
    build = state.get_build(key)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    resources = build_container(pod)["resources"]
    assert (resources["requests"]["cpu"], resources["limits"]["cpu"]) == ("2100m", "4200m")
    assert [r.getMessage() for r in caplog.records if "Pod maxLimitRequestRatio" in
            r.getMessage()] == [
        f"cpu limits lowered to the LimitRange Pod maxLimitRequestRatio of cpu in {NAMESPACE}, "
        "2 (a template's cpuLimitFactor above it had every pod refused)"]
