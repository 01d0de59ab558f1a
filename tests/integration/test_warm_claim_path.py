"""What stands between a push and its trigger on an idle warm agent (issue 22: "under 1 s"):
no call of the API server. The claimed agent's pod is marked its build's (label claimed,
DO_NOT_DISRUPT: workers.warm.protect) beside the trigger; before, that patch (a read and a
PATCH of the pod) came first, and a slow API server held the trigger back by its two round
trips: the operator test's bound was overrun under load (1.07 s, against 0.04-0.07 s quiet).

Real parts: redis-server, kmock over HTTP behind a proxy the test holds a request in, the
Jenkins fake; the worker's pool of job threads, as `ci-autoscaler worker` runs it.
"""

import pytest

from tests.integration.test_concurrent_provisions import WAIT_SECONDS, work_while
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_warm_agents import CONFIG, warm_up
from tests.support.app import production_env
from tests.support.fault_proxy import FaultProxy
from tests.support.kmock_cluster import _write_kubeconfig
from tests.support.monitoring import wait_until
from service.app import create_app
from workers import runtime
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER
from workers.core.warm_pods import CLAIMED_ANNOTATIONS, CLAIMED_LABELS
from workers.warm import agents

# A build's trigger on an agent that is online already takes milliseconds here: the longest
# the test waits for it while the pod's patch is held. Below the adapter's request timeout
# (10 s, workers.adapters.kube), after which a patch held before the trigger gave up and let
# the trigger go anyway.
TRIGGERED_SECONDS = 5


@pytest.fixture
def world(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The production path, the API server reached through a proxy the test can hold."""
    proxy = FaultProxy(kube.url, ratio=0.0, seed=0, kubernetes=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    _write_kubeconfig(kubeconfig, proxy.url)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, KUBECONFIG=str(kubeconfig))
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    kube.add_node("node-a", cpu="8", memory="32Gi")
    runtime.install(None)
    yield create_app(), proxy
    runtime.install(None)
    proxy.stop()


def test_the_warm_claim_triggers_while_its_pods_claimed_patch_is_under_way(
        world, kube, jenkins_fake):
    app, proxy = world
    [warm] = warm_up(runtime.current(), kube, jenkins_fake, "node-a")
    key = push(app.test_client(), 0)
    arrived, release = proxy.hold_next("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{warm}")

    def look() -> list:
        assert arrived.wait(WAIT_SECONDS), "the claimed pod's patch never came"
        return wait_until(lambda: jenkins_fake.build_with(BUILD_KEY_PARAMETER, key),
                          timeout=TRIGGERED_SECONDS,
                          what="the build triggered while its pod's patch is held")

    [build] = work_while(app, look, release=release)
    assert build.parameters[AGENT_PARAMETER] == warm
    # the patch still went through once let go: the build's pod is protected as before
    labels = kube.pod(NAMESPACE, warm)["metadata"]["labels"]
    annotations = kube.pod(NAMESPACE, warm)["metadata"]["annotations"]
    assert {k: labels.get(k) for k in CLAIMED_LABELS} == CLAIMED_LABELS
    assert {k: annotations.get(k) for k in CLAIMED_ANNOTATIONS} == CLAIMED_ANNOTATIONS
    entry = {e.name: e for e in agents.store(runtime.current()).agents("small")}[warm]
    assert entry.build == key
