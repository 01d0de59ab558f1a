"""An agent namespace with a ResourceQuota: a pod that takes the namespace past the quota is
refused, 403 "exceeded quota". While other pods hold the room, that is for now (a pod ending
frees it) and the build waits; but an agent that asks more than the quota's hard limit in all
can never be admitted, and its build was retried for ever, its pod asked for again and again
and its node's room held, while the developer saw it queued with no reason. Real
redis-server, kmock over HTTP with the API server's ResourceQuota admission
(tests.support.resource_quota), the Jenkins fake; pushes through the webhook and the queue."""

import time

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import failures_counted, pod_creates, push, until
from tests.support.app import production_env
from service.app import create_app
from workers import reconcile, runtime

CONFIG = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
templates:
  small:
    cpu: {min: "2", default: "2", max: "2"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    kube.add_node("node-a", cpu="16", memory="64Gi")
    runtime.install(None)
    app = create_app()
    yield app
    runtime.install(None)


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def test_an_agent_bigger_than_the_whole_quota_fails_its_build_at_once(app, kube, jenkins_fake):
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "1", "pods": "20"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "failed")
    build = state.get_build(key)
    assert build["fail_reason"] == "pod_refused"
    assert "requests.cpu" in build["error"] and "compute" in build["error"], build["error"]
    until(app, lambda: jenkins_fake.nodes == {})
    assert [b.state for b in jenkins_fake.builds] == ["cancelled"]
    assert failures_counted(app, "pod_refused") == 1
    # No pass, however late, asks for the pod again.
    later = runtime.current().settings.provision_lease_seconds * 10
    reconcile.reconcile_once(runtime.current(), now=time.time() + later)
    until(app, lambda: True)
    assert pod_creates(kube) == 1 and kube.pods(NAMESPACE) == []


def test_a_quota_full_for_now_keeps_the_build_for_a_later_try(app, kube, jenkins_fake):
    """Room for one agent: the second build's pod is refused while the first holds the room,
    and the build is kept, not failed (a later try makes it once a pod has ended:
    test_start_failures.test_a_namespace_over_its_quota_keeps_the_build_for_a_later_try)."""
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "3"})
    state = state_of(app)
    first = push(app.test_client(), 0)
    until(app, lambda: state.get_build(first).get("status") == "triggered")
    second = push(app.test_client(), 1)
    until(app, lambda: pod_creates(kube) >= 3)  # refused, and tried again: 2.1 used, 2.1 more
    build = state.get_build(second)
    assert build["status"] == "queued" and not build.get("fail_reason"), build
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == \
        [state.get_build(first)["agent"]]


def passed(app, done):
    """done() after a reconcile pass (the loop's re-drive of the waiting builds) and the jobs
    it queued, as the worker and the reconcile loop run in production."""
    def check():
        reconcile.reconcile_once(runtime.current())
        return done()
    return check


@pytest.mark.parametrize("count", ["pods", "count/pods"])
def test_a_pod_count_of_zero_pauses_builds_it_does_not_fail_them(app, kube, jenkins_fake, count):
    """An admin pausing CI in the namespace (`pods: 0`) is no pod's size: every pod asks 1 pod,
    more than 0 in all, and each build failed for good as pod_refused. It waits."""
    kube.add_resource_quota(NAMESPACE, "pause", {count: "0"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: pod_creates(kube) >= 1)
    until(app, passed(app, lambda: pod_creates(kube) >= 2))  # refused, and tried again
    build = state.get_build(key)
    assert build["status"] in ("queued", "waiting") and not build.get("fail_reason"), build
    assert failures_counted(app, "pod_refused") == 0 and kube.pods(NAMESPACE) == []

