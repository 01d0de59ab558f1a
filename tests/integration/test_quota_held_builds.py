"""Builds a ResourceQuota or a cap holds back (wait reason quota, cap) beside the builds that go
on: they want room in the quota or a slot, not on nodes, so they do not shrink what the next
build is given
(scale-up pods under a quota: test_scale_up_pods). Real redis-server, kmock over HTTP with the
API server's ResourceQuota admission (tests.support.resource_quota), the Jenkins fake; pushes
through the webhook and the queue."""

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import until
from tests.support.app import GITLAB_TOKEN
from tests.support.payloads import fixture
from service.app import create_app
from workers import runtime
from workers.engine import reconcile
from workers.core.quantity import memory_bytes

CONFIG = """
routes:
  - project: "*"
    ref: "refs/heads/big"
    job: build
    template: big
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
templates:
  big:
    cpu: {min: "4", default: "4", max: "4"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
  small:
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 8Gi, default: 8Gi, max: 16Gi}
"""


@pytest.fixture
def config_text():
    return CONFIG


@pytest.fixture
def app(app_on_cluster, config_text):
    # Room for about three small builds' memory at the target utilisation: one build alone
    # has the headroom to grow past its default; two at the default have not.
    return app_on_cluster(config_text, namespace=NAMESPACE, nodes=(("node-a", "16", "30Gi"),))


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def push(client, n: int, ref: str = "refs/heads/main") -> str:
    body = fixture("gitlab_push_real_lrz.json")
    body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
    body["ref"] = ref
    response = client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": f"push-{n}"})
    assert response.status_code == 202
    return response.json["build_key"]


def test_a_build_the_quota_holds_does_not_keep_the_next_build_from_growing(app, kube,
                                                                           jenkins_fake):
    """A database someone runs in the agent namespace holds 2 of the quota's 5 cores: a big
    build (4 cores) waits for the quota, a small one (1 core) fits beside it. Counted as
    waiting ahead, the held build halved the headroom every later build was sized from, so
    the small build kept its default on a node with room to give it more; room on nodes
    would not start the held build, so it is not counted."""
    kube.add_pod(NAMESPACE, "db", requests=({"cpu": "2", "memory": "1Gi"},), phase="Pending")
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "5"})
    client, state = app.test_client(), state_of(app)
    held = push(client, 0, ref="refs/heads/big")
    until(app, lambda: state.get_build(held).get("status") == "waiting")
    assert state.get_build(held)["wait_reason"] == "quota"

    small = push(client, 1)
    until(app, lambda: state.get_build(small).get("status") in ("triggered", "waiting"))
    build = state.get_build(small)
    assert build["status"] == "triggered", build
    assert int(build["memory_bytes"]) > memory_bytes("8Gi"), build["decision"]
    assert state.get_build(held)["wait_reason"] == "quota"  # still held: not counted


@pytest.mark.parametrize("config_text", [CONFIG.replace(
    '    memory: {min: 1Gi, default: 1Gi, max: 1Gi}\n',
    '    memory: {min: 1Gi, default: 1Gi, max: 1Gi}\n    maxConcurrent: 1\n')])
def test_a_build_a_cap_holds_does_not_keep_the_next_build_from_growing(app, kube, jenkins_fake):
    """The same for a cap (workers.engine.caps): a second big build waits for the one slot its
    template's maxConcurrent allows; room on nodes would not start it either. Counted as
    waiting ahead, it held the small build to its default on a node with room to give it
    more, for as long as the first big build ran."""
    client, state = app.test_client(), state_of(app)
    running = push(client, 0, ref="refs/heads/big")
    until(app, lambda: state.get_build(running).get("status") == "triggered")
    held = push(client, 1, ref="refs/heads/big")
    until(app, lambda: state.get_build(held).get("status") == "waiting")
    assert state.get_build(held)["wait_reason"] == "cap"

    small = push(client, 2)
    until(app, lambda: state.get_build(small).get("status") in ("triggered", "waiting"))
    build = state.get_build(small)
    assert build["status"] == "triggered", build
    assert int(build["memory_bytes"]) > memory_bytes("8Gi"), build["decision"]
    assert state.get_build(held)["wait_reason"] == "cap"  # still held: not counted


@pytest.mark.parametrize("config_text", [CONFIG.replace(
    '    memory: {min: 1Gi, default: 1Gi, max: 1Gi}\n',
    '    memory: {min: 1Gi, default: 1Gi, max: 1Gi}\n    maxConcurrent: 1\n')])
def test_builds_a_cap_held_before_the_mark_existed_are_marked_by_the_next_pass(
        app, kube, jenkins_fake, monkeypatch):
    """Builds that began waiting on a cap before an upgrade (or were re-driven by a worker of
    the release before, whose add_waiting clears the mark) have no held mark. A re-drive
    marks only the first of a template's held builds (it waits, and the template is full for
    the rest of the pass), so the ones behind it were counted as waiting ahead for as long
    as they waited, holding every later build to its default: the fix did not reach them.
    The reconcile pass's refresh of the capacity state sets the mark from the wait reason,
    as it does the pause mark. (A re-drive tries the first CI_AUTOSCALER_PROVISION_CONCURRENCY
    waiting builds at once, 16 by default; 1 here, so that two held builds show it.)"""
    monkeypatch.setenv("CI_AUTOSCALER_PROVISION_CONCURRENCY", "1")
    runtime.install(None)
    app = create_app()
    client, state = app.test_client(), state_of(app)
    running = push(client, 0, ref="refs/heads/big")
    until(app, lambda: state.get_build(running).get("status") == "triggered")
    held = [push(client, n, ref="refs/heads/big") for n in (1, 2)]
    until(app, lambda: all(state.get_build(k).get("status") == "waiting" for k in held))
    assert [state.get_build(k)["wait_reason"] for k in held] == ["cap", "cap"]
    state.redis.zrem(state.prefix + "waiting-quota", *held)  # as the release before left them

    reconcile.reconcile_once(runtime.current())

    small = push(client, 3)
    until(app, lambda: state.get_build(small).get("status") in ("triggered", "waiting"))
    build = state.get_build(small)
    assert build["status"] == "triggered", build
    assert int(build["memory_bytes"]) > memory_bytes("8Gi"), build["decision"]
    assert [state.get_build(k)["wait_reason"] for k in held] == ["cap", "cap"]
