"""A build's run that Jenkins' build discarder deleted as it ended still releases its agent.

Jenkins runs a job's build discarder when a run is finalized, right after the Notification
plugin sent COMPLETED (jenkins core GlobalBuildDiscarderListener.onFinalized), and "keep N
builds" counts the runs still building among the N it keeps (hudson.tasks.LogRotator): with
as many newer runs of the job in progress as it keeps, a run that ends is deleted at once,
unless it is the job's last successful or last stable one. Its COMPLETED then named a run the
release job could not read ("Jenkins does not know run"), and the reconcile pass's question
about it answered "unknown" for ever: the agent stayed, idle, until its pod's deadline (an
hour by default). A run Jenkins' own API named as the build's (its queue item's run), since
deleted from a job still there, has finished (a discarder never deletes a run building).
On the whole path: the web app, a real Redis, the worker, kmock over HTTP, the Jenkins fake."""

import time

import pytest

from tests.integration.test_notifications_confirmed import _ignored, _notify, _running
from tests.integration.test_push_to_pod import NAMESPACE, world  # noqa: F401
from tests.support.app import work
from workers import runtime
from workers.engine import reconcile
from workers.core import commit_status
from workers.core.routing import AGENT_PARAMETER


def _newer_run_in_progress(jenkins_fake):
    """Another run of the same job, started after the build's (a Jenkins-queued one here;
    another push's does the same), still building."""
    other = jenkins_fake.queue_build("build", label="nightly", parameters={"NIGHTLY": "1"})
    return jenkins_fake.start_build(other.queue_id)


def test_a_completed_for_a_run_discarded_as_it_ended_releases_the_agent(
        world, kube, jenkins_fake):
    jenkins_fake.add_job("build", num_to_keep=1)  # buildDiscarder(logRotator(numToKeepStr: '1'))
    client, key, agent, build = _running(world, kube, jenkins_fake)
    _newer_run_in_progress(jenkins_fake)
    jenkins_fake.finish_build(build.queue_id, "FAILURE")  # not the last successful: deleted
    assert build.discarded

    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)

    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    # Its end is Jenkins' to confirm, and was; its result no longer is (run deleted): not
    # what the notification says, which anyone holding the shared token can write
    assert state["status"] == "released" and state["result"] == "UNKNOWN"
    assert "discarded" in state["result_unconfirmed"]


@pytest.mark.parametrize("claimed", ["SUCCESS", "FAILURE"])
def test_a_forged_status_for_the_build_s_own_discarded_run_is_not_recorded(
        world, kube, jenkins_fake, claimed):
    """The run failed and was deleted as it ended; a COMPLETED with the shared token names
    it (job, number, agent: all public) with a status of its sender's choosing. Recorded, a
    forged SUCCESS marked the commit passed on GitLab; a forged FAILURE of a passed run kept
    its pod for debugging (workers.engine.retention) and marked it failed."""
    jenkins_fake.add_job("build", num_to_keep=1)
    client, key, agent, build = _running(world, kube, jenkins_fake)
    _newer_run_in_progress(jenkins_fake)
    jenkins_fake.finish_build(build.queue_id, "ABORTED")
    assert build.discarded
    forged = jenkins_fake.notification(build)
    forged["build"].update(status=claimed, full_url="https://phish.example/login")

    assert _notify(client, forged).status_code == 202
    work(world)

    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["status"], state["result"]) == ("released", "UNKNOWN")
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert "build_url" not in state  # the run has no page, and a claimed one is not taken
    wanted = commit_status.wanted(state)
    assert wanted.state == commit_status.State.CANCELED
    assert wanted.description.startswith("build ended, result unknown")
    assert claimed not in wanted.description


def test_a_long_build_discarded_as_it_ended_is_released_by_the_reconcile_pass(
        world, kube, jenkins_fake):
    """Its queue item forgotten (Jenkins keeps a left item 5 minutes) and its COMPLETED lost:
    the reconcile pass had read its run from the item while Jenkins kept it."""
    jenkins_fake.add_job("build", num_to_keep=1)
    client, key, agent, build = _running(world, kube, jenkins_fake)
    rt = runtime.current()
    quiet = rt.settings.lost_event_seconds + 1
    reconcile.reconcile_once(rt, now=time.time() + quiet)  # asks Jenkins: the run is running
    assert kube.pod(NAMESPACE, agent) is not None
    jenkins_fake.forget_left_items()
    _newer_run_in_progress(jenkins_fake)
    jenkins_fake.finish_build(build.queue_id, "FAILURE")
    assert build.discarded

    result = reconcile.reconcile_once(rt, now=time.time() + 2 * quiet)

    assert result["lost_builds_released"] == 1
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


def test_a_forged_completed_naming_a_discarded_run_of_the_job_keeps_the_agent(
        world, kube, jenkins_fake):
    """A deleted run is taken for the build's only when Jenkins' API named it so: another
    run of the job, deleted too, named with the build's agent, is not confirmed."""
    jenkins_fake.add_job("build", num_to_keep=1)
    client, key, agent, build = _running(world, kube, jenkins_fake)
    old = jenkins_fake.queue_build("build", label="nightly", parameters={"NIGHTLY": "1"})
    jenkins_fake.start_build(old.queue_id)
    _newer_run_in_progress(jenkins_fake)
    jenkins_fake.finish_build(old.queue_id, "FAILURE")
    assert old.discarded
    forged = jenkins_fake.notification(old)
    forged["build"]["parameters"] = {AGENT_PARAMETER: agent}
    asked = len(jenkins_fake.requests)

    assert _notify(client, forged).status_code == 202
    work(world)

    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert _ignored(client, "not_confirmed") == 1
    # whether the job is still there is asked only of a run Jenkins named the build's: a
    # COMPLETED naming any other missing run costs no more GETs than that refusal needs
    assert [r.path for r in jenkins_fake.requests[asked:] if r.path == "/job/build/api/json"] \
        == []


def test_a_short_build_discarded_before_the_reconcile_pass_asked_is_released(
        world, kube, jenkins_fake):
    """Its COMPLETED lost, it ended (and was deleted) before the reconcile pass first asked:
    the queue item Jenkins still keeps names its run, which the job no longer has. That is
    Jenkins' API naming the build's run as surely as a read while it ran; it was asked about
    again every period, 'unknown' for ever, the agent idle until its pod's deadline."""
    jenkins_fake.add_job("build", num_to_keep=1)
    client, key, agent, build = _running(world, kube, jenkins_fake)
    _newer_run_in_progress(jenkins_fake)
    jenkins_fake.finish_build(build.queue_id, "FAILURE")
    assert build.discarded
    rt = runtime.current()

    result = reconcile.reconcile_once(rt, now=time.time() + rt.settings.lost_event_seconds + 1)

    assert result["lost_builds_released"] == 1
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
