"""Whether a notification that ends a build may release its agent (workers.core.notifications):
decisions as data, each with its reason."""

import pytest

from workers.core.notifications import (
    JOB_MISMATCH, NOT_CONFIRMED, Confirmed, Refused, confirm_completion, confirm_moved,
    job_gone_over, job_matches, moved_job, other_run)
from workers.core.ports import AgentActivity, RunInfo, RunRef
from workers.core.routing import BUILD_KEY_PARAMETER

OURS = RunInfo(finished=True, parameters={BUILD_KEY_PARAMETER: "bk-1"})


@pytest.mark.parametrize("build_job,notified,ok", [
    ("build", "build", True), ("folder/build", "folder/build", True),
    ("build", "deploy-prod", False), ("folder/build", "build", False), (None, "build", False),
    ("", "", False),
])
def test_a_notification_must_name_the_builds_job(build_job, notified, ok):
    result = job_matches(build_job, notified)
    assert (result is None) == ok
    if not ok:
        assert result.kind == JOB_MISMATCH and repr(notified) in result.reason


@pytest.mark.parametrize("build_run,number,ok", [
    (None, 7, True), ("", 7, True), ("7", 7, True),  # not known yet, or the build's own
    ("7", 8, False), ("8", 7, False),  # a Replay's or Rebuild's run, its parameters copied
])
def test_an_end_of_another_run_than_the_builds_is_refused(build_run, number, ok):
    result = other_run(build_run, number)
    assert (result is None) == ok
    if not ok:
        assert result.kind == NOT_CONFIRMED and f"#{number}" in result.reason


@pytest.mark.parametrize("build_job,notified,moved", [
    ("build", "team/build", True), ("team/build", "build", True),  # into, out of a folder
    ("a/build", "b/build", True), ("build", "build", False), ("build", "team/deploy", False),
    ("build", "team/xbuild", False), (None, "team/build", False), ("", "build", False),
    # no item is named "", "." or "..": another spelling of a path, the job "build" itself
    ("build", "../build", False), ("build", "/build", False), ("a/build", "a//build", False),
    ("build", "./build", False), ("a/build", "a/x/../build", False), ("build", " ../build", False),
    # names in any case, as Jenkins finds items (a route naming "Build", Jenkins' "build")
    ("Build", "team/build", True), ("team/Build", "build", True), ("Build", "build", False),
])
def test_a_moved_job_keeps_its_name_under_another_parent(build_job, notified, moved):
    assert moved_job(build_job, notified) is moved


def _moved(run, *, agent="cia-1", queue_item=5):
    return confirm_moved(build_key="bk-1", build_job="build", job="team/build", number=7,
                         run=run, agent=agent, queue_item=queue_item)


@pytest.mark.parametrize("run,queue_item,confirmed,says", [
    (RunInfo(True, OURS.parameters, "SUCCESS", built_on="cia-1"), None, True, "built on"),
    (RunInfo(True, OURS.parameters, "SUCCESS", queue_id=5), 5, True, "queue item"),
    (RunInfo(True, OURS.parameters, "SUCCESS", built_on="other"), 5, False, "not on"),
    (RunInfo(True, OURS.parameters, "SUCCESS", built_on=""), 5, False, "not on"),  # built-in
    (RunInfo(True, OURS.parameters, "SUCCESS", queue_id=6), 5, False, "not the build's"),
    (RunInfo(True, OURS.parameters, "SUCCESS", queue_id=5), None, False, "not the build's"),
    (None, 5, False, "does not know"),
    (RunInfo(False, OURS.parameters, built_on="cia-1"), 5, False, "has not finished"),
    (RunInfo(True, {BUILD_KEY_PARAMETER: "bk-2"}, "SUCCESS", built_on="cia-1"), 5, False,
     "is not this build's"),
])
def test_a_moved_jobs_run_confirms_the_build_only_when_built_on_its_agent(
        run, queue_item, confirmed, says):
    result = _moved(run, queue_item=queue_item)
    assert isinstance(result, Confirmed if confirmed else Refused) and says in result.reason
    if not confirmed and says in ("not on", "not the build's", "does not know"):
        assert result.kind == JOB_MISMATCH


def test_a_job_of_another_name_is_never_taken_for_moved():
    result = confirm_moved(build_key="bk-1", build_job="build", job="deploy", number=7,
                           run=RunInfo(True, OURS.parameters, built_on="cia-1"), agent="cia-1",
                           queue_item=5)
    assert isinstance(result, Refused) and result.kind == JOB_MISMATCH


@pytest.mark.parametrize("run,adopted_by,confirmed,says", [
    (OURS, None, True, "finished"),
    (None, None, False, "does not know"),
    (RunInfo(finished=False, parameters=OURS.parameters), None, False, "has not finished"),
    (RunInfo(finished=True, parameters={BUILD_KEY_PARAMETER: "bk-2"}), None, False,
     "is not this build's"),
    (RunInfo(finished=True, parameters={}), None, False, "is not this build's"),
    (RunInfo(finished=True, parameters={BUILD_KEY_PARAMETER: "bk-0"}), "bk-1", True,
     "finished"),  # a Replay an adopted agent took for this build (workers.engine.adoption)
])
def test_only_a_finished_run_of_the_build_confirms_it(run, adopted_by, confirmed, says):
    result = confirm_completion(build_key="bk-1", job="build", number=7, run=run,
                                adopted_by=adopted_by)
    assert isinstance(result, Confirmed if confirmed else Refused) and says in result.reason
    if not confirmed:
        assert result.kind == NOT_CONFIRMED and "build#7" in result.reason


@pytest.mark.parametrize("built_on,confirmed", [
    ("cia-nightly-0a1b2c3d4e5f", True),  # a freestyle run "Build Now" left on the build's agent
    ("cia-nightly-ffffffffffff", False),  # another adopted agent took this item
    ("", False),  # the built-in node
    (None, False),  # a Pipeline's run names no node
])
def test_a_run_with_no_key_is_the_builds_when_built_on_its_agent(built_on, confirmed):
    run = RunInfo(finished=True, parameters={}, built_on=built_on)
    result = confirm_completion(build_key="bk-1", job="nightly", number=3, run=run,
                                agent="cia-nightly-0a1b2c3d4e5f")
    assert isinstance(result, Confirmed if confirmed else Refused), result
    assert getattr(result, "by_agent", confirmed) is confirmed  # its builtOn alone said so
    keyed = confirm_completion(build_key="bk-1", job="nightly", number=3, agent="cia-x",
                               run=RunInfo(finished=True, built_on=built_on,
                                           parameters={BUILD_KEY_PARAMETER: "bk-1"}))
    assert isinstance(keyed, Confirmed) and not keyed.by_agent, keyed
    unfinished = confirm_completion(build_key="bk-1", job="nightly", number=3,
                                    run=RunInfo(finished=False, built_on=built_on),
                                    agent="cia-nightly-0a1b2c3d4e5f")
    assert isinstance(unfinished, Refused)


@pytest.mark.parametrize("run,own_run,confirmed,says", [
    (None, 7, True, "discarded"),  # Jenkins named run 7 the build's; a discarder deleted it
    (None, 6, False, "does not know"),  # another run of the job, deleted: not the build's
    (None, None, False, "does not know"),  # Jenkins never named the build's run
    # a run Jenkins still has is judged by what it says, whatever own_run is
    (RunInfo(finished=False, parameters=OURS.parameters), 7, False, "has not finished"),
])
def test_a_run_jenkins_no_longer_has_confirms_only_when_jenkins_named_it_the_builds(
        run, own_run, confirmed, says):
    result = confirm_completion(build_key="bk-1", job="build", number=7, run=run,
                                own_run=own_run)
    assert isinstance(result, Confirmed if confirmed else Refused) and says in result.reason


@pytest.mark.parametrize("activity,confirmed,says", [
    (None, True, "nor agent"),  # its computer gone too
    (AgentActivity(offline=False, temporarily_offline=False), True, "runs nothing"),
    # taken offline by a person: what it ran would still show
    (AgentActivity(offline=True, temporarily_offline=True), True, "runs nothing"),
    # moved into a folder: its run goes on, on our agent, under the new name
    (AgentActivity(offline=False, temporarily_offline=False,
                   runs=(RunRef("archive/build", 7),)), False, "archive/build#7"),
    # a run of a job we may not READ: no currentExecutable, `idle` false; its job 404s
    # whether there or not
    (AgentActivity(offline=False, temporarily_offline=False, hidden_runs=1), False,
     "may not read"),
    # not connected: a moved job's queued build may still wait for it
    (AgentActivity(offline=True, temporarily_offline=False), False, "not connected"),
])
def test_a_gone_jobs_build_is_over_only_when_its_agent_runs_nothing(activity, confirmed, says):
    result = job_gone_over(job="build", agent="ci-a1", activity=activity)
    assert isinstance(result, Confirmed if confirmed else Refused) and says in result.reason
    if not confirmed:
        assert result.kind == NOT_CONFIRMED
