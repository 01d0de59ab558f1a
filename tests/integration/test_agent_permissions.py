"""A Jenkins user without Agent/Connect may register our agents but not read their secrets:
Jenkins answers the JNLP file 403 "<user> is missing the Agent/Connect permission"
(REALITY.md "Agent state"; the Jenkins fake's missing_permissions); one without Agent/Create
cannot register them. Through the real path (a
GitLab push, the mover, an RQ SimpleWorker with the production failure handler, kmock over
HTTP, the Jenkins fake) the build waits, each refusal logged and counted naming the permission,
and is built once an admin grants it."""

import logging
import time

import pytest
import requests

from tests.integration.test_jenkins_token_refused import assert_waits, passes, run_retries, \
    state_of
from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    LEASE_SECONDS, OURS, app, metrics, pod_creates, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.engine import reconcile


@pytest.mark.parametrize(("permission", "asked"), [
    ("Agent/Connect", 1),  # registered, its secret refused
    ("Agent/Create", 0),  # refused at registration: no secret asked
])
def test_a_build_waits_while_jenkins_withholds_an_agent_permission_and_goes_on_once_granted(
        app, kube, jenkins_fake, caplog, permission, asked):  # noqa: F811
    """Agent/Create and Agent/Connect are Jenkins-wide for our agents (a node not made yet
    has no ACL of its own: ComputerSet.doCreateItem checks Jenkins' CREATE; a new computer's
    ACL is Jenkins'): every build is refused alike until an admin grants the permission,
    a setting of the installation as a revoked token is (a 401: builds wait). Every build
    pushed meanwhile was failed for good, and had to be pushed again once the admin had
    granted it. Now it waits, each refusal logged at error naming the permission and
    counted `unauthorized` (CIProvisioningFailing), and is built once it is granted."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.missing_permissions = {permission}
    caplog.set_level(logging.WARNING)

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 2, time.time())

    assert_waits(app, kube, jenkins_fake, key, pods=0)  # refused before its pod: none made
    assert len([r for r in jenkins_fake.requests if r.path.endswith("/jenkins-agent.jnlp")]) \
        >= asked
    retried = [r for r in caplog.records
               if r.getMessage() == "job will be retried: Jenkins refuses us until a setting "
               "is fixed"]
    assert retried and all(f"lacks the {permission} permission" in r.error for r in retried)
    assert 'ci_autoscaler_errors_total{component="provision",kind="unauthorized"}' in \
        metrics(app)
    assert 'ci_autoscaler_errors_total{component="provision",kind="permanent"} 0.0' in \
        metrics(app)

    jenkins_fake.missing_permissions = set()  # the admin grants it
    passes(app, 1, later)
    run_retries(app)

    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state_of(app).get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1 and len(kube.pods(NAMESPACE)) == 1
    assert len(jenkins_fake.nodes) == 1  # one agent registered, its own


def test_the_fake_takes_an_agent_offline_only_with_disconnect_and_back_only_with_connect(
        jenkins_fake):
    """Computer.doToggleOffline checks DISCONNECT to take an agent offline and CONNECT to
    bring it back; doChangeOfflineCause checks DISCONNECT (jenkins core hudson/model/
    Computer.java). The 403 names the permission as AccessDeniedException3 does."""
    jenkins_fake.add_node("a")
    session = requests.Session()
    session.auth = (jenkins_fake.user, jenkins_fake.token)
    session.headers.update(jenkins_fake.crumb_headers())

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


def test_a_job_our_user_may_not_build_fails_its_build_naming_the_permission(
        app, kube, jenkins_fake):  # noqa: F811
    """Job/Build is set per job or folder (project-based matrix, a folder's own
    authorization): that job's own setting, as a disabled job is, so its build fails at once
    with Jenkins' words, its pod deleted, not left waiting beside the builds of other jobs."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.missing_permissions = {"Job/Build"}

    key = push(app.test_client(), 1)
    run_worker(app)

    build = state_of(app).get_build(key)
    assert build["status"] == "failed"
    assert "lacks the Job/Build permission" in build["error"]
    assert jenkins_fake.builds == [] and kube.pods(NAMESPACE) == []


def test_a_job_our_user_may_only_discover_fails_its_build_naming_read(
        app, kube, jenkins_fake):  # noqa: F811
    """Jenkins' one 403 to a job's page that names no permission (Jenkins.getItem: "Please
    login to access job", no X-Required-Permission) is Jenkins' own, the job's setting: its
    build fails, not taken for a front's sign-in page, where builds wait."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.unreadable = jenkins_fake.discoverable = {"build"}

    key = push(app.test_client(), 1)
    run_worker(app)

    build = state_of(app).get_build(key)
    assert build["status"] == "failed"
    assert "lacks the Job/Read permission (it may only discover the job)" in build["error"]
    assert jenkins_fake.builds == [] and kube.pods(NAMESPACE) == []
