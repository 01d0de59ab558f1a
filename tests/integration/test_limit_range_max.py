"""A LimitRange's per-container max (or min) in the agent namespace sizes the build's pod
within it: a template whose default is above the max gets a pod at the max, not a refused one
(403 "maximum cpu usage per Container is 2", every build failed as pod_refused); only a max
below what the template needs at least (its min) still fails the build, naming the bound.
Real redis-server, kmock over HTTP with the API server's LimitRanger
(tests.support.limit_ranger), the Jenkins fake; the push goes through the webhook and the
worker's queue as in production."""

import pytest

from tests.integration.test_limit_range_defaults import build_container, state_of
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import push, until
from workers.core.quantity import cpu_millis, memory_bytes

CONFIG = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: big
templates:
  big:
    cpu: {min: "%(cpu_min)s", default: "4", max: "8"}
    memory: {min: "%(memory_min)s", default: 4Gi, max: 8Gi}
    agentInjection: %(injection)s
%(extra)s"""


@pytest.fixture
def make_app(app_on_cluster):
    """`make_app(cpu_min=..., memory_min=..., injection=...)`: the app of CONFIG so filled in,
    on one 16-core, 64Gi node."""
    def make(*, cpu_min="1", memory_min="1Gi", injection="true", extra=""):
        config = CONFIG % {"cpu_min": cpu_min, "memory_min": memory_min, "injection": injection,
                           "extra": extra}
        return app_on_cluster(config, namespace=NAMESPACE, nodes=(("node-a", "16", "64Gi"),))
    return make


def settled(app):
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))
    return state.get_build(key)


@pytest.mark.parametrize("item, resource, parse, most", [
    ({"type": "Container", "max": {"cpu": "2"}}, "cpu", cpu_millis, "2"),
    ({"type": "Container", "max": {"memory": "2Gi"}}, "memory", memory_bytes, "2Gi"),
], ids=["cpu", "memory"])
def test_a_namespace_max_below_the_templates_default_caps_the_pod(make_app, kube, item,
                                                                  resource, parse, most):
    app = make_app()
    kube.add_limit_range(NAMESPACE, "caps", [item])
    build = settled(app)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    resources = build_container(pod)["resources"]
    # The build container runs the agent too: its request (the build's size and the agent's
    # own) and its limit are the namespace's max, the most a container may have.
    assert parse(resources["requests"][resource]) == parse(most), resources
    assert parse(resources["limits"][resource]) == parse(most), resources
    # The size the build records (and placement counted) is the one the pod asks.
    field = "cpu_millis" if resource == "cpu" else "memory_bytes"
    agent = 100 if resource == "cpu" else parse(
        resources["requests"][resource]) - int(build[field])
    assert int(build[field]) + agent == parse(most), build


@pytest.mark.parametrize("item, mins, bound", [
    ({"type": "Container", "max": {"cpu": "2"}}, {"cpu_min": "3"},
     "maximum cpu usage per Container is 2, but limit is "),
    ({"type": "Container", "max": {"memory": "2Gi"}}, {"memory_min": "3Gi"},
     "maximum memory usage per Container is 2Gi, but limit is "),
], ids=["cpu", "memory"])
def test_a_namespace_max_below_the_templates_min_fails_naming_the_bound(make_app, kube, item,
                                                                         mins, bound):
    app = make_app(**mins)
    kube.add_limit_range(NAMESPACE, "caps", [item])
    build = settled(app)
    assert build["status"] == "failed"
    assert build["fail_reason"] == "pod_refused"
    assert f"(LimitRange: {bound}" in build["error"], build["error"]


def test_a_namespace_min_above_the_templates_default_raises_the_pod(make_app, kube):
    """A Container min (6 CPU) raises the build's size within the template's max, where the
    pod was refused ("minimum cpu usage per Container is 6, but request is 4"). The image's
    own agent (agentInjection false): the build's container is the pod's only one."""
    app = make_app(injection="false")
    kube.add_limit_range(NAMESPACE, "floor", [{"type": "Container", "min": {"cpu": "6"}}])
    build = settled(app)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    assert cpu_millis(build_container(pod)["resources"]["requests"]["cpu"]) == 6000
    assert build["cpu_millis"] == "6000"


def test_a_max_made_after_the_last_read_sizes_the_next_build_down_not_fails_it(make_app,
                                                                                  kube):
    """The LimitRanges are read once a minute (workers.adapters.kube_limit_ranges): a max
    made within it refused the next pod, sized from the read before, and failed its build for
    good (pod_refused), though the read the refusal made would have sized it within the max.
    The build is provisioned again at the size the namespace allows now."""
    app = make_app()
    state = state_of(app)
    assert settled(app)["status"] == "triggered"  # reads the namespace's LimitRanges: none
    kube.add_limit_range(NAMESPACE, "caps", [{"type": "Container", "max": {"cpu": "2"}}])

    key = push(app.test_client(), 1)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))

    build = state.get_build(key)
    assert build["status"] == "triggered", build.get("error")
    [pod] = [p for p in kube.pods(NAMESPACE) if p["metadata"]["name"] == build["agent"]]
    assert cpu_millis(build_container(pod)["resources"]["limits"]["cpu"]) == 2000
    assert build["cpu_millis"] == "1900"  # and the agent's 100m beside it


@pytest.mark.parametrize("least, resource, parse", [
    ({"cpu": "200m"}, "cpu", cpu_millis),
    ({"memory": "512Mi"}, "memory", memory_bytes),
], ids=["cpu", "memory"])
def test_a_namespace_min_above_the_agents_share_admits_the_agents_init_container(
        make_app, kube, least, resource, parse):
    """The LimitRanger checks init containers against a Container min too (admission.go
    PodLimitFunc: the loop over pod.Spec.InitContainers), and the init container that copies
    the injected agent asked only the agent's 100m / 256Mi: under a min above them every
    pod was refused, whatever the build's size. It asks the min, no more than the build
    container beside it does, so the pod's effective request (the larger of the containers'
    sum and each init container's) is what placement counted."""
    app = make_app()
    kube.add_limit_range(NAMESPACE, "floor", [{"type": "Container", "min": least}])
    build = settled(app)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    [init] = pod["spec"]["initContainers"]
    assert parse(init["resources"]["requests"][resource]) == parse(least[resource])
    assert parse(init["resources"]["limits"].get(resource, least[resource])) >= parse(
        least[resource])
    # the build container as placement sized it: the build's size and the agent's share
    asked = build_container(pod)["resources"]["requests"]
    assert (cpu_millis(asked["cpu"]), memory_bytes(asked["memory"])) == (
        int(build["cpu_millis"]) + 100, int(build["memory_bytes"]) + 256 * 2**20), build


def test_a_tmpfs_workspace_stays_within_the_namespace_max(make_app, kube):
    """The build container carries a memory-backed workspace's sizeLimit on top of its size
    (core.pods._add_extras): the pod is sized so that the sum is the max, not refused."""
    app = make_app(extra="    workspaceVolume: {emptyDir: {medium: Memory, sizeLimit: 1Gi}}\n")
    kube.add_limit_range(NAMESPACE, "caps", [{"type": "Container", "max": {"memory": "4Gi"}}])
    build = settled(app)
    assert build["status"] == "triggered", build.get("error")
    [pod] = kube.pods(NAMESPACE)
    assert memory_bytes(build_container(pod)["resources"]["limits"]["memory"]) == 4 * 2**30
