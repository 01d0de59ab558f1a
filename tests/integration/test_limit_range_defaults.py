"""An agent namespace with a LimitRange, as many clusters give every namespace: its default CPU
limit (here 500m, or its max when it gives no default) is put by the API server on every
container naming no CPU limit, and a request above it is refused (422). Agents name no CPU
limit unless their template has cpuLimitFactor, so every build sized above the default failed
as pod_refused. Real redis-server, kmock over HTTP with the API server's LimitRanger
(tests.support.limit_ranger), the Jenkins fake; the push goes through the webhook and the
worker's queue as in production."""

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import push, until
from tests.support.app import one_template_config, work
from workers.core.containers import AGENT_CONTAINER
from workers.core.quantity import cpu_millis

CONFIG = one_template_config("""
    cpu: {min: "2", default: "2", max: "2"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
""")


@pytest.fixture
def make_app(app_on_cluster):
    """`make_app(node_cpu=..., node_memory=..., text=...)`: the web app of `text` (CONFIG) on
    one node of that size (8 cores, 32Gi)."""
    def make(*, node_cpu: str = "8", node_memory: str = "32Gi", text: str = CONFIG):
        return app_on_cluster(text, namespace=NAMESPACE,
                              nodes=(("node-a", node_cpu, node_memory),))
    return make


@pytest.fixture
def app(make_app):
    return make_app()


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def build_container(pod):
    return next(c for c in pod["spec"]["containers"] if c["name"] == AGENT_CONTAINER)


@pytest.mark.parametrize("item, cpu_limit", [
    ({"type": "Container", "default": {"cpu": "500m", "memory": "512Mi"},
      "defaultRequest": {"cpu": "100m", "memory": "256Mi"}}, "2100m"),
    # its default limit is its max, 4: above the request, so the API server's own is kept
    ({"type": "Container", "max": {"cpu": "4", "memory": "8Gi"}}, "4"),
], ids=["default-limit-below-the-request", "max-only-above-it"])
def test_an_agent_above_the_namespaces_default_cpu_limit_is_made_not_refused(
        app, kube, jenkins_fake, item, cpu_limit):
    kube.add_limit_range(NAMESPACE, "defaults", [item])
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))
    build = state.get_build(key)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    resources = build_container(pod)["resources"]
    assert resources["requests"]["cpu"] == "2100m"  # the build's 2 and the agent's own 100m
    # A limit the API server accepts: the request where the namespace's default is below it.
    assert resources["limits"]["cpu"] == cpu_limit, resources


def test_a_namespace_without_limit_ranges_gets_agents_without_a_cpu_limit(app, kube,
                                                                        jenkins_fake):
    key = push(app.test_client(), 0)
    work(app)
    assert state_of(app).get_build(key)["status"] == "triggered"
    [pod] = kube.pods(NAMESPACE)
    assert "cpu" not in build_container(pod)["resources"]["limits"]


def test_limit_ranges_that_cannot_be_read_leave_the_pod_as_it_was(app, kube, jenkins_fake):
    """A Role from before the chart granted `list limitranges` (403): the pod goes as before."""
    kube.fail("get", f"/api/v1/namespaces/{NAMESPACE}/limitranges", status=403,
              reason="Forbidden", message='limitranges is forbidden: User "system:serviceaccount:'
                                          'x:y" cannot list resource "limitranges" in API group ""')
    key = push(app.test_client(), 0)
    work(app)
    assert state_of(app).get_build(key)["status"] == "triggered"
    [pod] = kube.pods(NAMESPACE)
    assert "cpu" not in build_container(pod)["resources"]["limits"]


def test_an_agent_above_the_namespaces_max_fails_naming_the_limit_range(app, kube,
                                                                      jenkins_fake):
    """A max below the template's size is the operator's to settle (the template's max): the
    build fails at once, and its error names the LimitRange's bound, not only "HTTP 403"."""
    kube.add_limit_range(NAMESPACE, "caps", [{"type": "Container", "max": {"cpu": "1"}}])
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "failed")
    build = state.get_build(key)
    assert build["fail_reason"] == "pod_refused"
    assert build["error"].endswith(
        "HTTP 403 Forbidden (LimitRange: maximum cpu usage per Container is 1, but limit is "
        "2100m)"), build["error"]


def test_a_limit_range_made_after_the_last_read_does_not_fail_the_next_build(app, kube,
                                                                          jenkins_fake):
    """The defaults are read once a minute: a LimitRange made within it refused the next pod
    (422, request above the default put on it) and failed its build for good, though a read
    then would have met it. Refused as invalid, the pod is sent again with the defaults read
    anew (workers.adapters.kube_limit_ranges)."""
    state = state_of(app)
    first = push(app.test_client(), 0)  # reads the namespace's LimitRanges: none yet
    until(app, lambda: state.get_build(first).get("status") in ("triggered", "failed"))
    assert state.get_build(first)["status"] == "triggered"
    kube.add_limit_range(NAMESPACE, "defaults", [
        {"type": "Container", "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"}}])

    second = push(app.test_client(), 1)
    until(app, lambda: state.get_build(second).get("status") in ("triggered", "failed"))

    build = state.get_build(second)
    assert build["status"] == "triggered", build.get("error")
    [pod] = [p for p in kube.pods(NAMESPACE) if p["metadata"]["name"] == build["agent"]]
    assert build_container(pod)["resources"]["limits"]["cpu"] == "2100m"


def test_a_max_limit_to_request_ratio_gets_every_container_a_limit_it_allows(app, kube,
                                                                          jenkins_fake):
    """A maxLimitRequestRatio for CPU refuses every container naming no CPU limit (403, "no
    limit is specified"), as ours do without cpuLimitFactor, and one given a default limit
    more than the ratio times its request: every build failed as pod_refused."""
    kube.add_limit_range(NAMESPACE, "ratio", [
        {"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}])
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))
    build = state.get_build(key)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
        resources = container["resources"]
        assert cpu_millis(resources["limits"]["cpu"]) == 2 * cpu_millis(
            resources["requests"]["cpu"]), container["name"]
