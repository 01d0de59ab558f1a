"""A Jenkins user without Agent/Connect may register our agents but not read their secrets:
Jenkins answers the JNLP file 403 "<user> is missing the Agent/Connect permission"
(REALITY.md "Agent state"; the Jenkins fake's missing_permissions). Through the real path (a
GitLab push, the mover, an RQ SimpleWorker with the production failure handler, kmock over
HTTP, the Jenkins fake) the build fails for good with words that name the permission, no pod
is made, and the Jenkins node it registered does not stay behind."""

import logging
import time

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    LEASE_SECONDS, app, pod_creates, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from workers import reconcile, runtime


def test_an_agent_secret_refused_for_want_of_agent_connect_fails_the_build_and_leaves_nothing(
        app, kube, jenkins_fake, caplog):  # noqa: F811
    jenkins_fake.missing_permissions = {"Agent/Connect"}
    caplog.set_level(logging.INFO)

    key = push(app.test_client(), 1)
    run_worker(app)

    state = app.extensions["ci_autoscaler"].state
    build = state.get_build(key)
    assert build["status"] == "failed"
    assert "Agent/Connect" in build["error"]
    jnlp = [r for r in jenkins_fake.requests if r.path.endswith("/jenkins-agent.jnlp")]
    assert len(jnlp) == 1  # refused for good: not asked again
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
    assert len([r for r in jenkins_fake.requests if r.path.endswith("/jenkins-agent.jnlp")]) == 1
    assert jenkins_fake.nodes == {}
