"""A COMPLETED is acted on only when it names the build's job, and the release job releases
the agent only when Jenkins' API (one GET of the run) says the run finished and is the build's
(workers.core.notifications). Issue 17: a COMPLETED naming an unrelated job, for a build still
queued, released its agent. On the whole path: the web app, a real Redis, the worker, kmock over
HTTP and the Jenkins fake; each refusal is logged and counted."""

import pytest

from tests.integration.test_push_to_pod import NAMESPACE, completed, push, world  # noqa: F401
from tests.support.app import JENKINS_TOKEN, mover, work
from tests.support.jenkins_fake import FREESTYLE_JOB, WORKFLOW_JOB
from workers.core import commit_status
from workers.core.routing import AGENT_PARAMETER


def _notify(client, note):
    return client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=note)


def _started(client, note):
    """A STARTED posted, and applied by the worker's intake mover (workers.engine.started)."""
    answer = _notify(client, note)
    mover(client.application).drain()
    return answer


def _ignored(client, reason: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    line = f'ci_autoscaler_notifications_ignored_total{{reason="{reason}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).rsplit(" ", 1)[1])


def _running(world, kube, jenkins_fake):
    client = world.test_client()
    key = push(client).json["build_key"]
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    jenkins_fake.start_build(build.queue_id)
    return client, key, agent, build


def test_a_completed_naming_another_job_is_ignored_logged_and_counted(
        world, kube, jenkins_fake, caplog):
    client, key, agent, build = _running(world, kube, jenkins_fake)
    jenkins_fake.finish_build(build.queue_id)
    note = jenkins_fake.notification(build)
    note.update(name="deploy-prod", url="job/deploy-prod/")  # the shared token, another job
    response = _notify(client, note)
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert "'deploy-prod'" in response.json["reason"]
    work(world)
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert _ignored(client, "job_mismatch") == 1
    assert "notification ignored" in caplog.text
    # The build's own COMPLETED still releases it.
    assert _notify(client, completed(jenkins_fake, agent)).status_code == 202
    work(world)
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


def test_a_completed_that_jenkins_does_not_confirm_keeps_the_agent(
        world, kube, jenkins_fake, caplog):
    client, key, agent, build = _running(world, kube, jenkins_fake)
    forged = jenkins_fake.notification(build)  # the right job and run, but it still runs
    forged["build"]["status"] = "SUCCESS"
    assert _notify(client, forged).status_code == 202  # stored: only Jenkins can tell
    work(world)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert state["status"] == "triggered" and "result" not in state  # as it was
    assert _ignored(client, "not_confirmed") == 1
    assert "Jenkins does not confirm it" in caplog.text
    # Another run of the same job, finished: not the build's either (its parameters say).
    other = jenkins_fake.queue_build("build", label="nightly", parameters={"NIGHTLY": "1"})
    jenkins_fake.finish_build(other.queue_id)
    note = jenkins_fake.notification(other)
    note["build"]["parameters"] = {AGENT_PARAMETER: agent}  # what the forger writes
    assert _notify(client, note).status_code == 202
    work(world)
    assert kube.pod(NAMESPACE, agent) is not None and _ignored(client, "not_confirmed") == 2
    # Once the run has finished, its true COMPLETED is taken (the forged one left no mark).
    assert _notify(client, completed(jenkins_fake, agent)).status_code == 202
    work(world)
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert world.extensions["ci_autoscaler"].state.get_build(key)["status"] == "released"


@pytest.mark.parametrize("status", ["SUCCESS", None])
def test_a_confirmed_end_records_the_result_of_jenkins_run_not_the_notifications(
        world, kube, jenkins_fake, status):
    """The build's result was the notification's `build.status`: a FINALIZED whose run had
    no result yet carries none (notification-plugin Phase.buildJobState sets it only when
    Run.getResult is not null) and was recorded "UNKNOWN"; a body with another status (the
    token is shared, issue 17) had a failed run recorded SUCCESS, and its commit marked
    passed. The release job reads the run anyway: its result is recorded."""
    client, key, agent, build = _running(world, kube, jenkins_fake)
    jenkins_fake.finish_build(build.queue_id, result="FAILURE")
    note = jenkins_fake.notification(build, "FINALIZED")
    note["build"].pop("status")
    if status is not None:
        note["build"]["status"] = status

    assert _notify(client, note).status_code == 202
    work(world)

    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert state["result"] == "FAILURE" and state["status"] == "released"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


def _running_on_its_agent(world, kube, jenkins_fake, kind):
    """A build whose agent connected and took its run (Jenkins' queue maintenance), its job
    of `kind`."""
    client = world.test_client()
    key = push(client).json["build_key"]
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    jenkins_fake.job(build.job).kind = kind
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    return client, key, agent, build


@pytest.mark.parametrize("kind", [WORKFLOW_JOB, FREESTYLE_JOB])
def test_the_end_of_a_build_whose_job_was_moved_into_a_folder_releases_it(
        world, kube, jenkins_fake, kind):
    """A person moved the job into a folder while its build ran (jenkins core Items.move does
    not check for running builds): the COMPLETED names the new full name, and was ignored as
    another job's, the agent kept until its pod deadline. Jenkins' API says the named run is
    the build's (a freestyle run's builtOn is our agent; a Pipeline's, which exports none,
    left the queue as our trigger's item): released, the job's new name recorded."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake, kind)
    old = build.job
    jenkins_fake.move_job(old, "team")
    jenkins_fake.finish_build(build.queue_id, result="UNSTABLE")

    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)

    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["result"], state["status"]) == \
        (f"team/{old}", "UNSTABLE", "released")
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


@pytest.mark.parametrize("kind", [WORKFLOW_JOB, FREESTYLE_JOB])
def test_a_completed_of_a_same_named_job_in_another_folder_not_built_on_the_agent_is_ignored(
        world, kube, jenkins_fake, kind):
    """Issue 17 still holds for a job of the build's name in another folder: its run of the
    same number, finished, made by someone with our build key and agent as parameters (what
    a forger can write), was not built on our agent (freestyle: builtOn) nor left the queue
    as our trigger's item (Pipeline): ignored, counted, the agent kept."""
    client, key, agent, build = _running_on_its_agent(world, kube, jenkins_fake, kind)
    forged = jenkins_fake.queue_build(f"other/{build.job}", label="elsewhere",
                                      parameters=dict(build.parameters))
    jenkins_fake.job(forged.job).kind = kind
    jenkins_fake.finish_build(forged.queue_id)
    assert forged.number == build.number

    assert _notify(client, jenkins_fake.notification(forged)).status_code == 202
    work(world)

    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert world.extensions["ci_autoscaler"].state.get_build(key)["job"] == build.job
    assert _ignored(client, "job_mismatch") == 1
    # The build's own COMPLETED still releases it (the ignored one left no mark).
    jenkins_fake.finish_build(build.queue_id)
    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


@pytest.mark.parametrize("spelling", [{"url": "job/../job/{job}/"}, {"name": "/{job}"}])
def test_a_completed_spelling_the_builds_job_as_a_path_is_not_taken_for_a_move(
        world, kube, jenkins_fake, spelling):
    """A forged COMPLETED naming "../build" (its `url` job/../job/build/) or "/build" (its
    `name`, no url): no job is so named (Jenkins.checkGoodName), but the last segment is the
    build's job's, so it passed for the job moved; the run page asked of it is job "build"'s
    own (requests removes the dot segments, empty ones are skipped), and its finished run
    confirmed it: the forged name was recorded as the build's job. Ignored as another job's."""
    client, key, agent, build = _running(world, kube, jenkins_fake)
    jenkins_fake.finish_build(build.queue_id)
    note = jenkins_fake.notification(build)
    note.pop("url")
    note.update({k: v.format(job=build.job) for k, v in spelling.items()})

    response = _notify(client, note)
    assert response.status_code == 200 and response.json["status"] == "ignored"
    work(world)

    assert world.extensions["ci_autoscaler"].state.get_build(key)["job"] == build.job
    assert kube.pod(NAMESPACE, agent) is not None and _ignored(client, "job_mismatch") == 1
    # The build's own COMPLETED releases it, under its job's name.
    assert _notify(client, jenkins_fake.notification(build)).status_code == 202
    work(world)
    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["job"], state["status"]) == (build.job, "released")
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


def test_the_commit_status_links_the_run_page_jenkins_names_not_the_notification_s(
        world, kube, jenkins_fake):
    """A COMPLETED with the shared token for the build's own finished run, its full_url
    pointing elsewhere: the end is Jenkins' (confirmed), the link on the commit too."""
    client, key, agent, build = _running(world, kube, jenkins_fake)
    jenkins_fake.finish_build(build.queue_id, "SUCCESS")
    forged = jenkins_fake.notification(build)
    forged["build"]["full_url"] = "https://phish.example/login"

    assert _notify(client, forged).status_code == 202
    work(world)

    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert (state["status"], state["result"]) == ("released", "SUCCESS")
    assert state["build_url"] == f"{jenkins_fake.url}/job/build/{build.number}/"
    assert commit_status.wanted(state).target_url == state["build_url"]


@pytest.mark.parametrize("full_url", [
    "https://phish.example/login",
    "{jenkins}.phish.example/job/build/{n}/",  # the host only begins as Jenkins' does
    "{scheme}://ci@phish.example/job/build/{n}/",  # a user part hiding the host
    "{jenkins}/job/build/../../../elsewhere/",  # out of Jenkins' path once resolved
], ids=["elsewhere", "longer host", "user part", "dot segments"])
def test_a_started_s_full_url_outside_jenkins_is_not_the_running_build_s_link(
        world, kube, jenkins_fake, full_url):
    """A STARTED with the shared token, its full_url of its sender's choosing: recorded as
    it came, GitLab linked it while the build ran. The run's page is built from JENKINS_URL
    instead."""
    client, key, agent, build = _running(world, kube, jenkins_fake)
    forged = jenkins_fake.notification(build, phase="STARTED")
    forged["build"]["full_url"] = full_url.format(
        jenkins=jenkins_fake.url, scheme=jenkins_fake.url.split(":")[0], n=build.number)

    assert _started(client, forged).status_code == 200

    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert state["status"] == "running"
    # fails without the fix: the forged link recorded
    assert state["build_url"] == f"{jenkins_fake.url}/job/build/{build.number}/"
    assert commit_status.wanted(state).target_url == state["build_url"]


def test_a_started_s_full_url_under_jenkins_is_the_running_build_s_link(
        world, kube, jenkins_fake):
    client, key, agent, build = _running(world, kube, jenkins_fake)
    note = jenkins_fake.notification(build, phase="STARTED")
    note["build"]["full_url"] = f"{jenkins_fake.url}/job/build/{build.number}/console"

    assert _started(client, note).status_code == 200

    state = world.extensions["ci_autoscaler"].state.get_build(key)
    assert state["build_url"] == note["build"]["full_url"]
