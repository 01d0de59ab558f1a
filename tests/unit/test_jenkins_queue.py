"""Reading the Jenkins queue and runs from Jenkins' own words and URLs (pure)."""

import pytest

from workers.core.jenkins_queue import (
    first_triggered, items_waiting_on, items_waiting_on_agents, items_waiting_on_expressions,
    job_of_url, label_atoms, queued_by_only, run_of, run_of_url, waiting_label)
from workers.core.keys import agent_name, build_key
from workers.core.ports import QueueItem, RunRef

AGENT = agent_name("build", build_key("gitlab", "g/p", "refs/heads/main", "a" * 40))


@pytest.mark.parametrize("why,label", [
    ("There are no nodes with the label ‘maven’", "maven"),
    ("Waiting for next available executor on ‘maven’", "maven"),
    ("All nodes of label ‘maven’ are offline", "maven"),
    ("Waiting for next available executor on ‘windows’", None),
    ("", None)])
def test_the_label_an_item_waits_on_is_taken_only_when_it_is_ours(why, label):
    assert waiting_label(why, ["maven", "gradle"]) == label


@pytest.mark.parametrize("why,label", [
    # hudson.model.Queue.BuildableItem.getCauseOfBlockage: one node in the label, the reason
    # names the node (CauseOfBlockage.BecauseNodeIsBusy, BecauseNodeIsOffline)
    ("Waiting for next available executor on ‘ci-a1’", "maven"),
    ("‘ci-a1’ is offline", "maven"),
    ("‘ci-b2’ is offline", None),  # a node carrying a label not ours
    ("‘someone-else’ is offline", None)])
def test_a_reason_naming_the_only_node_of_our_label_is_read_as_that_label(why, label):
    assert waiting_label(why, ["maven"], {"ci-a1": "maven", "ci-b2": "windows"}) == label


def test_items_on_our_template_labels_oldest_first_and_never_our_own_triggered_builds():
    items = [QueueItem(7, "nightly", "Waiting for next available executor on ‘maven’"),
             QueueItem(3, "nightly", "There are no nodes with the label ‘maven’"),
             QueueItem(5, "build", "There are no nodes with the label ‘maven’",
                       {"CI_AUTOSCALER_BUILD_KEY": "k"}),
             QueueItem(4, "other", "There are no nodes with the label ‘windows’")]
    found = items_waiting_on(items, ["maven"], skip_parameter="CI_AUTOSCALER_BUILD_KEY")
    assert [(item.id, label) for item, label in found] == [(3, "maven"), (7, "maven")]


def test_items_waiting_on_one_of_our_agents_names_for_their_job():
    items = [QueueItem(9, "build", f"There are no nodes with the label ‘{AGENT}’"),
             QueueItem(8, "deploy", f"There are no nodes with the label ‘{AGENT}’"),  # not its
             QueueItem(6, "build", "There are no nodes with the label ‘maven’"),
             QueueItem(2, "build", f"Waiting for next available executor on ‘{AGENT}’")]
    found = items_waiting_on_agents(items)
    assert [(item.id, label) for item, label in found] == [(2, AGENT), (9, AGENT)]


@pytest.mark.parametrize("url,job", [
    ("http://jenkins:8080/job/build/5/", "build"),
    ("https://ci.example.com/jenkins/job/team/job/app/12/", "team/app"),
    ("job/build/6/", "build"),  # a PlaceholderTask's url: the run's, relative
    ("job/cookbook-test/", "cookbook-test"),  # a Notification plugin's job url
    ("http://j/job/my%20job/job/job/3/", "my job/job"),
    # Util.rawEncode leaves "!@$&*()-_=+',." as they are ('+' is a plus, not a space) and
    # escapes the rest, "~", "%" and non-ASCII (UTF-8) too; a multibranch project's branch
    # job is named "feature%2Fx" (NameMangler)
    ("job/r+d%20(v2)/job/%C3%BCber%7Ex,%20it's=1/7/", "r+d (v2)/über~x, it's=1"),
    ("job/repo/job/feature%252Fx/3/", "repo/feature%2Fx"),
    ("http://j/computer/agent/", ""), ("", "")])
def test_the_job_of_a_url(url, job):
    assert job_of_url(url) == job


@pytest.mark.parametrize("executable,run", [
    ({"_class": "org.jenkinsci.plugins.workflow.support.steps.ExecutorStepExecution"
                "$PlaceholderTask$PlaceholderExecutable", "number": 5,
      "url": "http://jenkins/job/f/job/nightly/5/"}, RunRef("f/nightly", 5)),
    ({"_class": "hudson.model.FreeStyleBuild", "number": 2, "url": "http://j/job/b/2/"},
     RunRef("b", 2)),
    ({"_class": "org.jenkinsci.plugins.workflow.support.steps.ExecutorStepExecution"
                "$PlaceholderTask$PlaceholderExecutable"}, None),  # before number was exported
    ({"number": True, "url": "http://j/job/b/1/"}, None), (None, None), ({}, None)])
def test_the_run_an_executable_names(executable, run):
    assert run_of(executable) == run


@pytest.mark.parametrize("url, run", [
    ("job/build/5/", RunRef("build", 5)),  # a node block's task (PlaceholderTask.getUrl)
    ("http://jenkins/ci/job/team/job/my%20build/12/", RunRef("team/my build", 12)),
    ("job/job/3/", RunRef("job", 3)),  # a job named "job"
    ("job/build/", None),  # a job's own item: its task is the job
    ("job/team/job/42/", None),  # the job "team/42", no run
    ("", None),
])
def test_a_run_is_read_from_a_node_block_item_s_task_url_only(url, run):
    assert run_of_url(url) == run


def test_first_triggered_is_the_earliest_trigger_time_the_record_holds():
    """A build triggered again (after a restart lost it) is looked for since its first
    attempt; a record with no time (an adopted build) gives None, a bad value is skipped."""
    assert first_triggered({"trigger_attempted_at": "100.5", "triggered_at": "101",
                            "retrigger_attempted_at": "900"}) == 100.5
    assert first_triggered({"triggered_at": "101", "trigger_attempted_at": ""}) == 101.0
    assert first_triggered({"triggered_at": "x"}) is None
    assert first_triggered({"job": "app"}) is None


@pytest.mark.parametrize("why,expression,ours", [
    # Jenkins names an expression by its normal form (LabelExpression.Binary: no spaces)
    ("There are no nodes with the label ‘maven&&jdk17’", "maven&&jdk17", ("maven",)),
    ("Waiting for next available executor on ‘maven||gradle’", "maven||gradle",
     ("maven", "gradle")),
    ("There are no nodes with the label ‘(maven || gradle) && !\"jdk 8\"’",
     "(maven || gradle) && !\"jdk 8\"", ("maven", "gradle")),
    ("There are no nodes with the label ‘windows&&x64’", None, None),  # another's labels only
    ("There are no nodes with the label ‘maven’", None, None),  # one label: adopted instead
    ("There are no nodes with the label ‘jdk-17’", None, None),  # a dash is no operator
])
def test_an_item_on_a_label_expression_naming_our_labels_is_told_apart(why, expression, ours):
    found = items_waiting_on_expressions([QueueItem(7, "nightly", why)], ["maven", "gradle"],
                                         skip_parameter="CI_AUTOSCALER_BUILD_KEY")
    assert [(u.item.id, u.expression, u.ours) for u in found] == (
        [] if expression is None else [(7, expression, ours)])
    assert waiting_label(why, ["maven", "gradle"]) == (
        "maven" if why.endswith("‘maven’") else None)  # never adopted as one label


def test_our_own_items_and_the_atoms_of_an_expression():
    ours = QueueItem(8, "build", "There are no nodes with the label ‘maven&&jdk17’",
                     parameters={"CI_AUTOSCALER_BUILD_KEY": "k"})
    assert items_waiting_on_expressions([ours], ["maven"],
                                        skip_parameter="CI_AUTOSCALER_BUILD_KEY") == []
    assert label_atoms("a->b<->!c") == ("a", "b", "c")


@pytest.mark.parametrize("expression,ours", [
    ("linux&&!maven", None),  # a job kept off our agents: nothing to tell
    ("!maven", None),
    ("!(maven||gradle)&&linux", None),
    ("maven->linux", None),  # !maven || linux: met without our label
    ("maven&&!gradle", ("maven",)),
    ("linux->maven", ("maven",)),
    ("maven<->gradle", ("maven", "gradle")),
])
def test_an_expression_that_only_rules_our_labels_out_is_not_told(expression, ours):
    """`agent { label '!maven' }` keeps a job off the maven agents: its item, waiting for a
    static executor, was logged as one no template serves and listed on the status page,
    telling the operator to restrict a job to a label it refuses."""
    why = f"Waiting for next available executor on ‘{expression}’"
    found = items_waiting_on_expressions([QueueItem(9, "deploy", why)], ["maven", "gradle"],
                                         skip_parameter="CI_AUTOSCALER_BUILD_KEY")
    assert [u.ours for u in found] == ([] if ours is None else [ours])


USER = "hudson.model.Cause$UserIdCause"
REBUILD = "com.sonyericsson.rebuild.RebuildCause"


@pytest.mark.parametrize("causes,ours", [
    (((USER, "ci-bot"),), True),  # our API user's buildWithParameters
    (((USER, "CI-Bot"),), True),  # Jenkins' default IdStrategy: case-insensitive
    (((USER, "alice"),), False),  # a person's Build with Parameters
    (((USER, "ci-bot"), (REBUILD, "")), False),  # a Rebuild, even from our user's account
    (((USER, "alice"), ("org.jenkinsci.plugins.workflow.cps.replay.ReplayCause", "")), False),
    ((("hudson.triggers.TimerTrigger$TimerTriggerCause", ""),), False),
    ((), False)])  # causes not read
def test_an_item_is_our_own_triggers_only_when_our_user_alone_queued_it(causes, ours):
    assert queued_by_only(causes, "ci-bot") is ours
    assert queued_by_only(causes, "") is False  # no user set: nothing is told ours


def test_a_run_of_a_job_named_in_another_case_is_the_same_run():
    """A route naming job "Build" triggers Jenkins' "build" (Jenkins finds items in any
    case: Jenkins.items is CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), whose runs,
    node blocks and queue items name it "build": the build's run, made from the route's name,
    was not found among its agent's blocks (workers.engine.lost_runs: a lost agent's block
    was never retried) nor its queue's (agent_starts.unreached, lost_runs._blocks_waiting)."""
    ours = RunRef("Team/Build", 5)
    jenkins = run_of_url("http://jenkins/job/team/job/build/5/")

    assert ours == jenkins and ours in {jenkins} and ours in (jenkins,)
    assert RunRef("Team/Build", 6) != jenkins and RunRef("Team/Builds", 5) != jenkins
