"""A build whose Jenkins job is gone is released once Jenkins shows it is over.

A job is deleted while its build runs: by an admin, or by branch indexing once its branch is
deleted (a merge request merged, its source branch removed: every day). Jenkins aborts the
job's runs before it deletes the job (jenkins core AbstractItem.delete, ItemDeletion
.cancelBuildsInProgress), so the abort's COMPLETED is sent, or lost. Either way the release
job, or the reconcile pass, asked Jenkins about a run of a job it no longer has, and refused it
on purpose: a job moved into a folder (Items.move) vanishes from its old name too while its
run goes on. The agent was held until its pod's deadline (an hour by default). What tells the
two apart is the build's own agent in Jenkins: a moved job's run still holds its executor, a
deleted job's aborted run does not (workers.core.notifications.job_gone_over). On the whole
path: the web app, a real Redis, the worker, kmock over HTTP and the Jenkins fake."""

import time

import pytest

from tests.integration.test_notifications_confirmed import _ignored, _notify, _started
from tests.integration.test_push_to_pod import NAMESPACE, push, world  # noqa: F401
from tests.support.app import GITLAB_TOKEN, production_env, work
from tests.support.jenkins_fake import FREESTYLE_JOB
from tests.support.payloads import EXAMPLE_CONFIG, fixture
from service.app import create_app
from workers import runtime
from workers.engine import reconcile
from workers.core.routing import AGENT_PARAMETER


def _waiting_on_its_agent(world, kube, jenkins_fake):
    """A push's build queued in Jenkins, its pod running and its agent connected."""
    client = world.test_client()
    key = push(client).json["build_key"]
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    return client, key, agent, build


def _running_on_its_agent(world, kube, jenkins_fake):
    """The build's Pipeline runs, its agent block on the build's connected agent."""
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    block = jenkins_fake.start_pipeline(build.queue_id)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    return client, key, agent, build


def _another_push_waiting(world, kube, jenkins_fake, client, agent):
    """A push of another branch: its build queued, its pod running, its agent connected."""
    body = fixture("gitlab_push_real_lrz.json")
    body |= {"ref": "refs/heads/other", "after": "1" * 40, "checkout_sha": "1" * 40}
    other_key = client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": "delivery-2"}).json["build_key"]
    work(world)
    [other_agent] = set(jenkins_fake.nodes) - {agent}
    kube.set_pod_phase(NAMESPACE, other_agent, "Running", node="node-a")
    jenkins_fake.connect_agent(other_agent)
    return other_key, other_agent


def _released(world, kube, jenkins_fake, key, agent) -> bool:
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    return kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes \
        and state["status"] == "released"


def _fails_and_is_released(world, kube, jenkins_fake, client, key, agent, build) -> None:
    """The build ends in FAILURE and Jenkins says so: its agent goes, its result is kept."""
    jenkins_fake.finish_build(build.queue_id, "FAILURE")
    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)
    assert _released(world, kube, jenkins_fake, key, agent)
    assert world.extensions["ci_autoscaler"].state.get_build(key)["result"] == "FAILURE"


def _kept(kube, jenkins_fake, agent) -> bool:
    return kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes


def _pass(after_seconds: float = 1) -> dict:
    """One reconcile pass, as long after the build was last heard of as the lost-event check
    waits, and `after_seconds` more."""
    rt = runtime.current()
    return reconcile.reconcile_once(rt, now=time.time() + rt.settings.lost_event_seconds
                                    + after_seconds)


def _old_name_given_to_a_new_job(jenkins_fake, **kind) -> None:
    """"build" renamed "build-legacy" while its build waits, and a new job "build" made, with a
    finished run #1 of its own (queued by hand elsewhere): run numbers are per job."""
    jenkins_fake.rename_job("build", "build-legacy")
    jenkins_fake.add_job("build", **kind)
    by_hand = jenkins_fake.queue_build("build", label="somewhere-else")
    assert jenkins_fake.finish_build(by_hand.queue_id).number == 1


def _started_naming_the_new_jobs_run(jenkins_fake, build) -> dict:
    """A STARTED for `build`, forged with the shared token, naming the new job's run #1."""
    forged = jenkins_fake.notification(build, "STARTED")
    forged |= {"name": "build", "url": "job/build/"}
    forged["build"] |= {"url": "job/build/1/", "full_url": f"{jenkins_fake.url}/job/build/1/"}
    return forged


def test_a_job_deleted_while_its_build_runs_releases_the_agent_on_the_aborts_completed(
        world, kube, jenkins_fake, caplog):
    caplog.set_level("INFO")  # the confirmation says why
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake)
    [aborted] = jenkins_fake.delete_job("build")
    assert aborted is build and build.result == "ABORTED"

    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)

    assert _released(world, kube, jenkins_fake, key, agent)
    assert world.extensions["ci_autoscaler"].state.get_build(key)["result"] == "ABORTED"
    assert any("runs nothing: the job was deleted" in getattr(r, "reason", "")
               for r in caplog.records)


@pytest.mark.parametrize("item_forgotten", [False, True], ids=["item-kept", "item-forgotten"])
def test_a_job_deleted_while_its_build_runs_its_completed_lost_is_released_in_one_pass(
        world, kube, jenkins_fake, item_forgotten):
    """The abort's COMPLETED lost (the web away: the plugin does not send it again); the
    queue item still names the run (5 minutes), or is forgotten too."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.delete_job("build")
    if item_forgotten:
        jenkins_fake.forget_left_items()

    result = _pass()

    assert result["lost_builds_released"] == 1
    assert _released(world, kube, jenkins_fake, key, agent)


def test_a_job_moved_into_a_folder_keeps_the_agent_until_its_run_ends(
        world, kube, jenkins_fake):
    """Its run goes on, under the folder's name, on the build's agent: a COMPLETED naming
    the old name (forged: Jenkins sends none) and the reconcile pass both keep the agent. The
    run's own COMPLETED names the new job: Jenkins' API says that run is the build's (it left
    the queue as the build's item; test_notifications_confirmed.py has the rules), so it
    releases the agent at once, recording the job's new name and the run's result (it was
    refused as another job's, and the agent waited for a reconcile pass, which took the
    job for deleted and recorded no result)."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.move_job("build", "archive")
    assert build.job == "archive/build" and jenkins_fake.job("build") is None

    forged = jenkins_fake.notification(build)
    forged.update(name="build", url="job/build/")
    forged["build"]["status"] = "SUCCESS"
    assert _notify(client, forged).status_code == 202
    work(world)
    assert _kept(kube, jenkins_fake, agent) and _ignored(client, "not_confirmed") == 1
    assert _pass()["lost_builds_released"] == 0
    assert _kept(kube, jenkins_fake, agent)

    jenkins_fake.finish_build(build.queue_id, result="FAILURE")
    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)
    assert _released(world, kube, jenkins_fake, key, agent)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["result"]) == ("archive/build", "FAILURE")


def test_a_forged_completed_for_a_build_of_a_job_still_there_keeps_an_idle_agent(
        world, kube, jenkins_fake):
    """Issue 17: the agent idle (its run not yet on it) is no proof alone: the job's page is
    read too, and the job is there."""
    client = world.test_client()
    push(client)
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    jenkins_fake.connect_agent(agent)  # online, idle: its build waits in the quiet period
    other = jenkins_fake.queue_build("build", label="nightly", parameters={"NIGHTLY": "1"})
    jenkins_fake.finish_build(other.queue_id)
    forged = jenkins_fake.notification(other)
    forged["build"]["number"] = 99  # a run Jenkins does not have
    forged["build"]["url"] = "job/build/99/"
    forged["build"]["parameters"] = {AGENT_PARAMETER: agent}  # what the forger writes

    assert _notify(client, forged).status_code == 202
    work(world)

    assert _kept(kube, jenkins_fake, agent) and _ignored(client, "not_confirmed") == 1



@pytest.mark.parametrize("hidden", ["moved-into-restricted-folder", "read-revoked"])
def test_a_running_build_whose_job_we_may_not_read_keeps_its_agent(
        world, kube, jenkins_fake, hidden):
    """A job the API user may not READ answers 404 as a gone one does (Jenkins.getItem), and
    the executor running its run names no run (Executor.getCurrentExecutableForApi): only
    the executor's `idle` shows the agent busy. Moved into a folder an admin keeps us out
    of, or Item/Read taken from us on the job, the build still runs: neither a COMPLETED
    naming the old run (forged: issue 17) nor the reconcile pass may release it."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake)
    if hidden == "read-revoked":
        jenkins_fake.unreadable = {"build"}
    else:
        jenkins_fake.move_job("build", "restricted")
        jenkins_fake.unreadable = {"restricted"}

    forged = jenkins_fake.notification(build)
    forged.update(name="build", url="job/build/")
    forged["build"]["status"] = "SUCCESS"
    assert _notify(client, forged).status_code == 202
    work(world)
    assert _kept(kube, jenkins_fake, agent) and _ignored(client, "not_confirmed") == 1
    assert _pass()["lost_builds_released"] == 0
    assert _kept(kube, jenkins_fake, agent)


def test_a_forged_completed_for_a_queued_build_of_a_moved_job_keeps_its_idle_agent(
        world, kube, jenkins_fake):
    """Issue 17: the job moved into a folder (Items.move) while its build's item still waits
    in the queue (its quiet period), our agent connected and idle: the old name answers 404
    and the agent runs nothing, as for a deleted job, but Jenkins' queue still holds the
    build's item (a deleted job's items are cancelled: AbstractItem.delete, Queue.cancel).
    A forged COMPLETED must not take the agent the item is about to run on."""
    client = world.test_client()
    key = push(client).json["build_key"]
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    jenkins_fake.connect_agent(agent)  # online, idle: its build waits in the quiet period
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    jenkins_fake.move_job("build", "archive")
    forged = {"name": "build", "url": "job/build/", "build": {  # what the forger writes
        "full_url": f"{jenkins_fake.url}/job/build/99/", "number": 99,
        "queue_id": build.queue_id, "phase": "COMPLETED", "url": "job/build/99/",
        "status": "SUCCESS", "parameters": dict(build.parameters)}}

    assert _notify(client, forged).status_code == 202
    work(world)

    assert _kept(kube, jenkins_fake, agent) and _ignored(client, "not_confirmed") == 1
    assert world.extensions["ci_autoscaler"].state.get_build(key)["status"] != "released"


def test_a_deleted_jobs_build_records_jenkins_abort_not_the_result_a_completed_claims(
        world, kube, jenkins_fake):
    """Jenkins has no run left to read the result from: a deleted job's runs were aborted
    (ItemDeletion.cancelBuildsInProgress interrupts them with Result.ABORTED). A COMPLETED
    claiming SUCCESS for it (forged, ahead of the abort's own: issue 17) releases the agent,
    its build being over, but the build's result, which its GitLab commit status shows, is
    Jenkins' ABORTED: never a success for a commit that was not built."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.delete_job("build")
    forged = jenkins_fake.notification(build)
    forged["build"].update(number=99, url="job/build/99/", status="SUCCESS",
                           full_url=f"{jenkins_fake.url}/job/build/99/")

    assert _notify(client, forged).status_code == 202
    work(world)

    assert _released(world, kube, jenkins_fake, key, agent)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert state["result"] == "ABORTED" and state.get("jenkins_build") != "99"


def test_a_job_renamed_while_its_build_waited_is_followed_to_its_new_name(
        world, kube, jenkins_fake):
    """A person renames the job while its build waits in the queue for its agent: Jenkins
    refuses a rename only while the job builds (Job.checkRename), and a queue item holds the
    job itself, so the build runs under the new name, which its STARTED and COMPLETED name.
    The reconcile pass reads the new name from Jenkins' own page of the build's queue item
    (its task is the job), the item's CI_AUTOSCALER_BUILD_KEY the build's: the build is
    marked running, and its COMPLETED releases the agent with Jenkins' result. Before, both
    notifications were ignored as another job's, the agent was held until the lost-event
    check found the old name gone, and released with no result (GitLab: `canceled` for a
    failed build)."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.rename_job("build", "build-legacy")
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    _started(client, jenkins_fake.notification(build, "STARTED"))  # another job's name

    _pass()
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["status"]) == ("build-legacy", "running")
    _fails_and_is_released(world, kube, jenkins_fake, client, key, agent, build)


def test_a_job_disabled_while_its_build_waited_releases_the_agent_in_one_pass(
        world, kube, jenkins_fake):
    """A person disables the job while its build waits in the queue for its agent: Jenkins
    cancels the job's queued items as it disables it (ParameterizedJob.makeDisabled), and
    nothing is notified (no run). One lost-event pass releases the agent; nothing is left."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    _, key, agent, _ = _waiting_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.disable_job("build")

    assert jenkins_fake.dispatch() == []
    _pass()
    work(world)

    assert _released(world, kube, jenkins_fake, key, agent)


def test_a_job_renamed_and_its_name_given_to_a_new_job_keeps_the_waiting_builds_agent(
        world, kube, jenkins_fake):
    """A person moves a job aside (renames "build" to "build-legacy") and creates a new job
    under the old name, as one does to replace a freestyle job by a Pipeline, while a build
    waits in the queue: the build runs under "build-legacy" (a queue item holds the job
    itself, Queue.Item.task). Its item names its run as "build-legacy"'s (executable.url),
    which the new "build" does not have: read as "build"'s run discarded, the pass released
    the agent under the running build. It is followed to the new name as a plain rename."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.rename_job("build", "build-legacy")
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]

    _pass()

    assert _kept(kube, jenkins_fake, agent)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["status"]) == ("build-legacy", "running")
    _fails_and_is_released(world, kube, jenkins_fake, client, key, agent, build)


def test_a_job_disabled_while_two_builds_waited_releases_both_agents(world, kube, jenkins_fake):
    """Disabling a job cancels one of its queued items, not all: makeDisabled calls
    Queue.cancel(task) once, which cancels "the first occurrence" (the first waiting item,
    or else the first blocked and the first buildable one). The other waits on, and the
    executor of its connected agent takes it and makes no run (createExecutable is null for
    a disabled job): a LeftItem, not cancelled, with no executable. The first build is
    released by one pass; the second, an item Jenkins never makes a run of, once Jenkins
    has forgotten it (about 5 minutes) and nothing of it is left: no item, no run, its agent
    idle."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    other_key, other_agent = _another_push_waiting(world, kube, jenkins_fake, client, agent)

    jenkins_fake.disable_job("build")
    [cancelled] = [b for b in jenkins_fake.builds if b.state == "cancelled"]
    assert cancelled is build
    [(_, taken_by)] = jenkins_fake.dispatch()
    assert taken_by == other_agent and not jenkins_fake.build_with(
        AGENT_PARAMETER, other_agent)[0].number
    _pass()
    work(world)
    assert _released(world, kube, jenkins_fake, key, agent)
    assert _kept(kube, jenkins_fake, other_agent)  # its item left the queue: a run may come

    jenkins_fake.forget_left_items()
    _pass(after_seconds=5 * 60)  # the time Jenkins keeps a left item
    work(world)
    assert _released(world, kube, jenkins_fake, other_key, other_agent)


def test_a_renamed_jobs_build_that_ended_before_the_pass_is_released_with_its_result(
        world, kube, jenkins_fake):
    """The build of a job renamed while it waited ends before any pass read the new name:
    its COMPLETED, naming another job, is ignored; the pass follows the name and releases
    the agent with the run's result as Jenkins' API gives it."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.rename_job("build", "build-legacy")
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    jenkins_fake.finish_build(build.queue_id, "FAILURE")
    _notify(client, jenkins_fake.notification(build))
    work(world)
    assert _kept(kube, jenkins_fake, agent)

    _pass()
    work(world)

    assert _released(world, kube, jenkins_fake, key, agent)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["result"]) == ("build-legacy", "FAILURE")


def test_a_forged_started_naming_a_run_of_the_new_job_at_the_old_name_kills_no_build(
        world, kube, jenkins_fake):
    """Issue 17. The job was renamed while the build waited and a new job took the old name,
    which has a finished run #1 of its own; a STARTED forged with the shared token names the
    build's job as recorded (the old name) and that run's number. The pass asked Jenkins
    about the run the STARTED named (the fallback for an item Jenkins has forgotten) while
    Jenkins still kept the item, found it finished, and released the agent under the
    running build. The item names the renamed job: followed first, the STARTED's number is
    never asked about."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    _old_name_given_to_a_new_job(jenkins_fake, kind=FREESTYLE_JOB)
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    assert build.number == 1  # build-legacy's #1
    _started(client, _started_naming_the_new_jobs_run(jenkins_fake, build))
    assert world.extensions["ci_autoscaler"].state.get_build(key)["jenkins_build"] == "1"

    _pass()
    work(world)

    assert _kept(kube, jenkins_fake, agent)
    assert world.extensions["ci_autoscaler"].state.get_build(key)["job"] == "build-legacy"


def test_a_run_of_the_new_job_at_the_old_name_is_not_taken_for_the_builds(
        world, kube, jenkins_fake):
    """As above, the new job at the old name has a run of the number the build's run has
    under the renamed job (run numbers are per job). The build's queue item names its run by
    number and URL: read by number against the old name, that run, another job's, finished,
    was taken for the build's and the agent released under the running build."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    _, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    _old_name_given_to_a_new_job(jenkins_fake, kind=FREESTYLE_JOB)
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    assert build.number == 1  # build-legacy's #1

    _pass()
    work(world)

    assert _kept(kube, jenkins_fake, agent)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["status"]) == ("build-legacy", "running")


def test_a_forged_started_kills_no_build_once_jenkins_has_forgotten_its_item(
        world, kube, jenkins_fake):
    """As above, no pass ran while Jenkins kept the build's item (the reconcile loop down
    for more than 5 minutes): nothing ties the build to the renamed job any more, and the
    pass asks about the run the STARTED named, a run Jenkins says finished. A run named by a
    notification only is the build's if Jenkins says so (its CI_AUTOSCALER_BUILD_KEY, or its
    builtOn the build's agent); this one is the new job's: the agent is kept."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    _old_name_given_to_a_new_job(jenkins_fake, kind=FREESTYLE_JOB)
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    _started(client, _started_naming_the_new_jobs_run(jenkins_fake, build))
    jenkins_fake.forget_left_items()

    _pass()
    work(world)

    assert _kept(kube, jenkins_fake, agent)


def test_a_forged_started_kills_no_pipeline_whose_node_block_waits_on_its_agent(
        world, kube, jenkins_fake):
    """Issue 17, as above with a Pipeline: its item left the queue as its run started on the
    controller (a flyweight task), and its ``node`` block waits in the queue on the build's
    agent, not connected yet (its pod pulling its image), or between two blocks: the agent
    runs nothing. The pass, Jenkins having forgotten the item, took the finished run of the
    new job a forged STARTED named for the build's (the agent idle) and released the agent:
    the block waits for good. A queue item waiting on the agent is the build's own."""
    jenkins_fake.add_job("build")
    client = world.test_client()
    push(client)
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    _old_name_given_to_a_new_job(jenkins_fake)
    block = jenkins_fake.start_pipeline(build.queue_id)  # build-legacy #1, its block queued
    _started(client, _started_naming_the_new_jobs_run(jenkins_fake, build))
    jenkins_fake.forget_left_items()

    _pass()
    work(world)

    assert _kept(kube, jenkins_fake, agent)
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]


def test_a_job_renamed_in_case_only_keeps_its_builds_notifications(world, kube, jenkins_fake):
    """A person renames "build" to "Build" while its build waits: Jenkins finds items in any
    case (Jenkins.items is a CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), so it is
    the same job under either spelling, and the Notification plugin names it as it is now
    (Job.getFullName): "Build". Its STARTED marks the build running, its COMPLETED releases
    the agent with the run's result, as for any build."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    jenkins_fake.rename_job("build", "Build")
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    _started(client, jenkins_fake.notification(build, "STARTED"))
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert state["status"] == "running"

    _fails_and_is_released(world, kube, jenkins_fake, client, key, agent, build)


def test_a_forged_started_kills_no_pipeline_in_an_input_before_its_first_node_block(
        world, kube, jenkins_fake):
    """As above, the Pipeline's run (build-legacy #1, on the controller) waits in an ``input``
    before its first ``node`` block: no item waits on the agent, the agent runs nothing, and
    the job's runs at the old name are the new job's. Jenkins still runs the build's own run,
    on a one-off executor (a WorkflowRun is a Queue.FlyweightTask), carrying its
    CI_AUTOSCALER_AGENT: the agent is kept for the block the run reaches next."""
    jenkins_fake.add_job("build")
    client = world.test_client()
    push(client)
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    _old_name_given_to_a_new_job(jenkins_fake)
    run = jenkins_fake.start_pipeline_on_controller(build.queue_id)  # build-legacy #1
    _started(client, _started_naming_the_new_jobs_run(jenkins_fake, build))
    jenkins_fake.forget_left_items()

    _pass()
    work(world)

    assert _kept(kube, jenkins_fake, agent)
    block = jenkins_fake.next_node_block(run)  # the input answered
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]


@pytest.mark.parametrize("item_forgotten", [False, True], ids=["item-kept", "item-forgotten"])
def test_a_pipeline_in_an_input_whose_job_is_moved_into_a_folder_keeps_its_agent(
        world, kube, jenkins_fake, item_forgotten):
    """A person moves the job into a folder (Items.move checks no running build) while its
    Pipeline run waits in an ``input`` before its first node block, longer than the lost-event
    check waits: the old name answers 404 and the agent, connected, runs nothing, which is
    what a deleted job's aborted run leaves too. The pass took the job for deleted and
    released the agent: the run, answered, waited for good for its node block. Jenkins still
    runs it, on a one-off executor, carrying the build's agent: the agent is kept for it."""
    jenkins_fake.add_job("build")
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    run = jenkins_fake.start_pipeline_on_controller(build.queue_id)
    _started(client, jenkins_fake.notification(build, "STARTED"))
    jenkins_fake.move_job("build", "archive")
    if item_forgotten:
        jenkins_fake.forget_left_items()

    assert _pass()["lost_builds_released"] == 0
    work(world)

    assert _kept(kube, jenkins_fake, agent)
    block = jenkins_fake.next_node_block(run)  # the input answered
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]


def test_a_forged_completed_kills_no_pipeline_in_an_input_whose_job_moved(
        world, kube, jenkins_fake):
    """As above, and a COMPLETED naming the old name (forged: Jenkins sends none), Jenkins
    having forgotten the item: the run it names is missing, the job gone from that name and
    the agent idle, as after a delete (job_gone); the run going on, carrying the build's
    agent, says the job moved: the agent is kept."""
    jenkins_fake.add_job("build")
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    run = jenkins_fake.start_pipeline_on_controller(build.queue_id)
    _started(client, jenkins_fake.notification(build, "STARTED"))
    forged = jenkins_fake.notification(build)
    jenkins_fake.move_job("build", "archive")
    jenkins_fake.forget_left_items()

    assert _notify(client, forged).status_code == 202
    work(world)

    assert _kept(kube, jenkins_fake, agent) and _ignored(client, "not_confirmed") == 1
    assert jenkins_fake.dispatch() == [] and run.state == "running"


def test_a_pass_reads_the_one_off_executors_once_for_all_its_builds(world, kube, jenkins_fake):
    """A job deleted while two of its builds ran, Jenkins having forgotten their items: each
    build asked whether its run goes on under another name (run_confirm.job_renamed) and,
    its job gone, again (run_confirm.job_gone): four GETs of every computer's one-off
    executors, each listing every Pipeline run in progress with its actions (a big Jenkins
    runs hundreds: the built-in node's OneOffExecutors), for what one read tells (a run
    that ended since errs only towards keeping an agent; one that began since left its item
    less than the 5 minutes Jenkins keeps it). One read per pass, both agents released."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake)
    other_key, other_agent = _another_push_waiting(world, kube, jenkins_fake, client, agent)
    [other] = jenkins_fake.build_with(AGENT_PARAMETER, other_agent)
    block = jenkins_fake.start_pipeline(other.queue_id)
    assert jenkins_fake.dispatch() == [(block.queue_id, other_agent)]
    jenkins_fake.delete_job("build")
    jenkins_fake.forget_left_items()
    before = _one_off_reads(jenkins_fake)

    assert _pass()["lost_builds_released"] == 2

    assert _one_off_reads(jenkins_fake) - before == 1
    assert _released(world, kube, jenkins_fake, key, agent)
    assert _released(world, kube, jenkins_fake, other_key, other_agent)


def _one_off_reads(jenkins_fake) -> int:
    return sum("oneOffExecutors" in r.query.get("tree", "")
               for r in jenkins_fake.requests_to("/computer/api/json"))


@pytest.fixture
def folder_route_world(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The example's routes naming job "team/Build", which Jenkins has as "team/build"."""
    config = tmp_path / "config.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("job: build", "job: team/Build"))
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    for name in ("node-a", "node-b"):
        kube.add_node(name, cpu="8", memory="32Gi", labels={"kubernetes.io/os": "linux"})
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    runtime.install(None)
    yield create_app()
    runtime.install(None)


def test_a_pipeline_in_an_input_is_followed_to_its_folder_jobs_own_name_after_a_restart(
        folder_route_world, kube, jenkins_fake):
    """A route names "team/Build", Jenkins' job is "team/build": found in any case while the
    folder is as it was made, the build was triggered. Jenkins restarts while the Pipeline
    waits in an ``input`` before its first node block: the folder, loaded from disk, finds
    its items in their exact case only (AbstractFolder.onLoad: loadChildren's
    CopyOnWriteMap.Tree<>(), natural order), so "team/Build" answers 404 and the agent runs
    nothing, as after a delete. The run going on carries the build's agent under the name
    Jenkins has, "team/build": taken for the same job as the build's (same_job), it was no
    sign of the build going on, and the pass released the agent the run's block waits for.
    The build follows the run to the name Jenkins finds, and keeps its agent."""
    world = folder_route_world
    jenkins_fake.add_job("team/build")
    jenkins_fake.any_job = False  # no other job than those made
    client, key, agent, build = _waiting_on_its_agent(world, kube, jenkins_fake)
    assert build.job == "team/build"
    run = jenkins_fake.start_pipeline_on_controller(build.queue_id)
    _started(client, jenkins_fake.notification(build, "STARTED"))
    jenkins_fake.restart()
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.job("team/Build") is None

    assert _pass()["lost_builds_released"] == 0
    work(world)

    assert _kept(kube, jenkins_fake, agent)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert state["job"] == "team/build"
    block = jenkins_fake.next_node_block(run)  # the input answered
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
