"""A Jenkins user without Agent/Connect may register our agents but not read their secrets:
Jenkins answers the JNLP file 403 "<user> is missing the Agent/Connect permission"
(REALITY.md "Agent state"; the Jenkins fake's missing_permissions); one without Agent/Create
cannot register them. Through the real path (a
GitLab push, the mover, an RQ SimpleWorker with the production failure handler, kmock over
HTTP, the Jenkins fake) the build fails for good with words that name the permission, no pod
is made, and the Jenkins node it registered does not stay behind."""

import logging
import time

import pytest
import requests

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    LEASE_SECONDS, app, pod_creates, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.engine import reconcile


@pytest.mark.parametrize(("permission", "asked"), [
    ("Agent/Connect", 1),  # registered, its secret refused
    ("Agent/Create", 0),  # refused at registration: no secret asked
])
def test_an_agent_jenkins_refuses_for_want_of_a_permission_fails_the_build_and_leaves_nothing(
        app, kube, jenkins_fake, caplog, permission, asked):  # noqa: F811
    jenkins_fake.missing_permissions = {permission}
    caplog.set_level(logging.INFO)

    key = push(app.test_client(), 1)
    run_worker(app)

    state = app.extensions["ci_autoscaler"].state
    build = state.get_build(key)
    assert build["status"] == "failed"
    assert f"lacks the {permission} permission" in build["error"]
    jnlp = [r for r in jenkins_fake.requests if r.path.endswith("/jenkins-agent.jnlp")]
    assert len(jnlp) == asked  # refused for good: not asked again
    assert pod_creates(kube) == [] and kube.pods(NAMESPACE) == []
    assert jenkins_fake.nodes == {}  # the node it registered is deleted again
    assert jenkins_fake.builds == []
    assert state.queue.scheduled_job_registry.count == 0
    rt = runtime.current()
    assert rt.capacity.reservations() == {} and rt.capacity.slots() == {}

    # A reconcile pass long after the lease does not provision it again (before, the build
    # stayed queued and every pass registered its agent and was refused again).
    result = reconcile.reconcile_once(rt, now=time.time() + 20 * LEASE_SECONDS)
    assert result["stalled_builds_restarted"] == 0
    run_worker(app)
    assert len([r for r in jenkins_fake.requests if r.path.endswith("/jenkins-agent.jnlp")]) \
        == asked
    assert len([r for r in jenkins_fake.requests if r.path == "/computer/doCreateItem"]) == 1
    assert jenkins_fake.nodes == {}


def test_the_fake_takes_an_agent_offline_only_with_disconnect_and_back_only_with_connect(
        jenkins_fake):
    """Computer.doToggleOffline checks DISCONNECT to take an agent offline and CONNECT to
    bring it back; doChangeOfflineCause checks DISCONNECT (jenkins core hudson/model/
    Computer.java). The 403 names the permission as AccessDeniedException3 does."""
    jenkins_fake.add_node("a")
    session = requests.Session()
    session.auth = (jenkins_fake.user, jenkins_fake.token)
    session.headers["Jenkins-Crumb"] = jenkins_fake.crumb

    def post(action: str) -> requests.Response:
        return session.post(f"{jenkins_fake.url}/computer/a/{action}", allow_redirects=False)

    jenkins_fake.missing_permissions = {"Agent/Disconnect"}  # Agent/Connect held
    for action in ("toggleOffline", "changeOfflineCause"):
        refused = post(action)
        assert refused.status_code == 403
        assert refused.headers["X-Required-Permission"] == "hudson.model.Computer.Disconnect"
        assert "ci-autoscaler is missing the Agent/Disconnect permission" in refused.text
    assert jenkins_fake.nodes["a"].temporarily_offline is False

    jenkins_fake.missing_permissions = set()
    assert post("toggleOffline").status_code == 302  # offline now
    jenkins_fake.missing_permissions = {"Agent/Connect"}
    back = post("toggleOffline")
    assert back.status_code == 403
    assert back.headers["X-Required-Permission"] == "hudson.model.Computer.Connect"
    assert jenkins_fake.nodes["a"].temporarily_offline is True
    # Agent/Disconnect implies Agent/Connect (Computer.CONNECT's impliedBy): a user lacking
    # Connect lacks Disconnect too, and one holding Connect alone brings an agent back
    assert post("changeOfflineCause").headers["X-Required-Permission"] \
        == "hudson.model.Computer.Disconnect"
    jenkins_fake.missing_permissions = {"Agent/Disconnect"}
    assert post("toggleOffline").status_code == 302
    assert jenkins_fake.nodes["a"].temporarily_offline is False


def test_a_403_that_names_no_permission_does_not_fail_the_build_for_good(
        app, kube, jenkins_fake):  # noqa: F811
    """A 403 without X-Required-Permission is not Jenkins' permission check (every
    AccessDeniedException3 sets it: AccessDeniedHandlerImpl.handle calls reportAsHeaders):
    a proxy's or a WAF's refusal in front of Jenkins, the installation's to fix. The build is
    not failed for it: once the proxy lets the calls through, the reconcile pass's restart
    provisions it."""
    key = push(app.test_client(), 1)
    jenkins_fake.fail_next(403, path_prefix="/computer/", times=10,
                           body="<html><body><h1>403 Forbidden</h1>nginx</body></html>")
    run_worker(app)

    state = app.extensions["ci_autoscaler"].state
    assert state.get_build(key)["status"] != "failed"
    assert pod_creates(kube) == []

    jenkins_fake.clear_failures()
    rt = runtime.current()
    result = reconcile.reconcile_once(rt, now=time.time() + 20 * LEASE_SECONDS)
    assert result["stalled_builds_restarted"] == 1
    run_worker(app)
    assert state.get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1
