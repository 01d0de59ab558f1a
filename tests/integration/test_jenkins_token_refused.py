"""A Jenkins that refuses our API token (401: rotated, or revoked by an admin) makes builds
wait, not fail: through the real path (a GitLab push to the webhook, the worker's mover, an RQ
SimpleWorker with the production failure handler, the reconcile pass, kmock over HTTP and the
Jenkins fake), a build pushed meanwhile is neither failed nor leaves a pod behind, and is built
once, when the token works again. The reconcile pass stops its Jenkins steps on it, without
taking Jenkins for away."""

import logging
import time

import pytest

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    LEASE_SECONDS, OURS, app, metrics, pod_creates, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.engine import reconcile, tasks
from workers.agent_starts import jenkins_away
from workers.core.errors import Unauthorized

HINT = "JENKINS_USER / JENKINS_API_TOKEN not accepted"
# What Jenkins answers a wrong token with (jenkins.security.BasicHeaderProcessor), as the fake
# does for a whole controller (tests.support.jenkins_fake._checked); here for some URLs only.
REFUSED = "Invalid password/token for user: ci-autoscaler"


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def run_retries(app) -> None:
    """The RQ retries scheduled so far, due now (RQ's scheduler would move them back to the
    queue after their interval), then the worker."""
    queue = state_of(app).queue
    registry = queue.scheduled_job_registry
    for job_id in registry.get_job_ids():
        job = queue.fetch_job(job_id)
        registry.remove(job)
        queue.enqueue_job(job)
    run_worker(app)


def passes(app, count: int, start: float) -> float:
    """`count` reconcile passes, each a lease period and more after the one before (long
    enough for a build's provision to count as stalled), each followed by the worker."""
    rt = runtime.current()
    for _ in range(count):
        start += 2 * LEASE_SECONDS
        reconcile.reconcile_pass(rt, now=start)
        run_retries(app)
    return start


def assert_waits(app, kube, jenkins_fake, key, pods: int) -> None:
    build = state_of(app).get_build(key)
    assert build["status"] not in ("failed", "released"), build
    assert not build.get("error") and not build.get("fail_reason"), build
    assert state_of(app).queue.failed_job_registry.count == 0  # no job failed for good
    assert jenkins_fake.builds == []
    assert len(kube.pods(NAMESPACE)) == pods and len(pod_creates(kube)) == pods  # none leaked


def test_a_build_pushed_while_our_token_is_refused_waits_and_is_built_once_it_works(
        app, kube, jenkins_fake, caplog):
    jenkins_fake.add_job("build", parameters=OURS)
    token, jenkins_fake.token = jenkins_fake.token, "11" + "ab" * 16  # ours no longer valid
    caplog.set_level(logging.WARNING)

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 3, time.time())

    assert_waits(app, kube, jenkins_fake, key, pods=0)  # refused at the node: no pod made
    assert jenkins_fake.nodes == {}
    assert all(token not in r.getMessage() and token not in str(r.__dict__)
               for r in caplog.records)
    retried = [r for r in caplog.records
               if r.getMessage() == "job will be retried: Jenkins refuses us until a setting "
               "is fixed"]
    assert retried and all(HINT in r.error for r in retried)
    assert 'ci_autoscaler_errors_total{component="provision",kind="unauthorized"}' in \
        metrics(app)
    assert 'ci_autoscaler_errors_total{component="provision",kind="permanent"} 0.0' in \
        metrics(app)

    jenkins_fake.token = token  # the new token in place
    passes(app, 1, later)
    run_retries(app)  # what RQ still had scheduled finds the build triggered

    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state_of(app).get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1 and len(kube.pods(NAMESPACE)) == 1


@pytest.mark.parametrize("refused", ["/job/build/api/json", "/job/build/buildWithParameters"],
                         ids=["job-read", "trigger"])
def test_a_build_whose_trigger_meets_the_401_keeps_its_pod_and_is_triggered_once(
        app, kube, jenkins_fake, refused):
    """The token refused after the agent was registered and its pod made (the job's read
    before the trigger, or the trigger itself): the pod stays, and is the one the build
    runs on once the token works."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.fail_next(401, times=1000, path_prefix=refused, body=REFUSED,
                           headers={"WWW-Authenticate": 'Basic realm="Jenkins"'})

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 2, time.time())

    assert_waits(app, kube, jenkins_fake, key, pods=1)
    jenkins_fake.clear_failures()  # the new token in place
    passes(app, 1, later)
    run_retries(app)

    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state_of(app).get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1 and len(kube.pods(NAMESPACE)) == 1


def test_the_reconcile_pass_stops_its_jenkins_steps_on_a_401_without_taking_jenkins_for_away(
        app, kube, jenkins_fake, caplog):
    jenkins_fake.token = "11" + "cd" * 16
    rt = runtime.current()
    caplog.set_level(logging.INFO, logger="ci_autoscaler")
    before = len(jenkins_fake.requests)

    reconcile.leader_pass(rt, "me")

    assert len(jenkins_fake.requests) - before == 1  # the first Jenkins step's one call
    assert jenkins_away.last(state_of(app)) == 0  # agents connect with their own secrets
    [logged] = [r for r in caplog.records if r.name == "ci_autoscaler.reconcile"]
    assert logged.levelno == logging.ERROR and HINT in logged.error
    assert logged.getMessage() == "reconcile pass without Jenkins: Jenkins refuses us until a " \
        "setting is fixed"
    assert logged.exc_info is None  # one line, no trace
    assert 'ci_autoscaler_errors_total{component="reconcile",kind="unauthorized"} 1.0' in \
        metrics(app)
    result, error = reconcile.reconcile_pass(rt)
    assert isinstance(error, Unauthorized)
    assert result["jenkins_steps_failed"] == 1 and result["jenkins_steps_skipped"] > 0


def test_a_waiting_build_re_driven_while_our_token_is_refused_keeps_waiting(
        app, kube, jenkins_fake):
    """The template's cap (2) holds the third build back; a release while the token is
    refused frees its slot (the Jenkins node left for a later pass), and the re-drive that
    follows meets the 401: the build waits on, and is placed once the token works."""
    jenkins_fake.add_job("build", parameters=OURS)
    keys = [push(app.test_client(), n) for n in (1, 2, 3)]
    run_worker(app)
    state = state_of(app)
    assert state.get_build(keys[2])["status"] == "waiting"
    token, jenkins_fake.token = jenkins_fake.token, "11" + "ef" * 16
    first = state.get_build(keys[0])["agent"]

    tasks.release_agent(keys[0], first)
    run_worker(app)  # the re-drive the release queued

    assert first not in [p["metadata"]["name"] for p in kube.pods(NAMESPACE)]
    build = state.get_build(keys[2])
    assert build["status"] == "waiting" and not build.get("error"), build
    assert len(pod_creates(kube)) == 2 and len(jenkins_fake.builds) == 2
    jenkins_fake.token = token
    passes(app, 1, time.time())

    assert sorted(b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds) == \
        sorted(keys)
    assert state.get_build(keys[2])["status"] == "triggered"
    assert first not in jenkins_fake.nodes  # deleted by the pass, now that Jenkins answers


def test_a_jenkins_url_answering_404_to_creating_agents_waits_and_says_so_not_credentials(
        app, kube, jenkins_fake, caplog):
    """JENKINS_URL without Jenkins' context path (or a proxy in front answering 404 while
    Jenkins restarts): computer/doCreateItem, on every Jenkins, answers 404, which the
    adapter makes Unauthorized naming JENKINS_URL, so the build waits. The log line's own
    words said "Jenkins does not accept our credentials": an operator rotated a token that
    was fine. They name the settings, the error which one."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.fail_next(404, times=1000, path_prefix="/computer/doCreateItem")
    caplog.set_level(logging.WARNING)

    key = push(app.test_client(), 1)
    run_worker(app)
    passes(app, 2, time.time())

    assert_waits(app, kube, jenkins_fake, key, pods=0)
    retried = [r for r in caplog.records if r.getMessage().startswith("job will be retried")]
    assert retried and all("JENKINS_URL" in r.error for r in retried)
    assert not any("credentials" in r.getMessage() for r in retried)
