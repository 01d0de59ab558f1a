"""Adopted agents on real parts (web app, real redis-server, RQ worker, kmock over HTTP, the
Jenkins fake with Jenkins' queue rules): a Replay of one of our builds, waiting on the label of
its deleted agent, gets a new agent of the original template; a Pipeline's node('maven') block
gets an agent that runs it alone (taken offline once it took it) and is released when the
run ends, by its COMPLETED or by the reconcile pass asking Jenkins."""

import logging
import time

import pytest

from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reruns import pods, push
from tests.support.app import JENKINS_TOKEN, work
from tests.support.jenkins_fake import FREESTYLE_JOB
from tests.support.kmock_cluster import running
from tests.support.payloads import fixture
from workers import runtime
from workers.engine import adoption, reconcile
from workers.agent_starts import online
from workers.adapters.redis_state import BuildStatus
from workers.core.label_probe import PROBE_PREFIX
from workers.core.routing import AGENT_PARAMETER

LOST_EVENT_SECONDS = 30
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    label: maven
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
  large:
    cpu: {min: "2", default: "2", max: "2"}
    memory: {min: 2Gi, default: 2Gi, max: 2Gi}
"""


def notify(client, run, phase: str = "COMPLETED", status: str = "SUCCESS"):
    """The Notification plugin's event for a run of the Jenkins fake (its own parameters)."""
    note = fixture("jenkins_notification_completed_unstable.json")
    job = run.job
    note.update(name=job.rsplit("/", 1)[-1], url=f"job/{'/job/'.join(job.split('/'))}/")
    note["build"].update(number=run.number, phase=phase, status=status,
                         queue_id=run.queue_id, parameters=dict(run.parameters),
                         url=f"{note['url']}{run.number}/")
    return client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=note)


def ran_to_its_end(client, jenkins_fake, work_done) -> tuple:
    """The one build in the Jenkins fake run on its agent and finished, its COMPLETED
    delivered, and the work that follows done (`work_done`): the build, and its agent's name
    (the label a Replay or Rebuild of it waits on)."""
    (build,) = jenkins_fake.builds
    old_agent = build.parameters[AGENT_PARAMETER]
    jenkins_fake.connect_agent(old_agent)
    assert jenkins_fake.dispatch() == [(build.queue_id, old_agent)]
    jenkins_fake.finish_build(build.queue_id)
    assert notify(client, build).status_code == 202
    work_done()
    return build, old_agent


def agents(jenkins_fake) -> list[str]:
    """The Jenkins nodes but the label probe (made while Jenkins had no agent at all and an
    item waited: workers.engine.label_probe; the next pass deletes it once an agent is there)."""
    return sorted(n for n in jenkins_fake.nodes if not n.startswith(PROBE_PREFIX))


def adopted_agent(jenkins_fake, block) -> str:
    """The agent of ours whose Jenkins node carries the label the block waits on."""
    (name,) = [n for n, node in jenkins_fake.nodes.items() if block.label in node.label.split()]
    return name


def adopted_block_running(world, jenkins_fake) -> tuple:
    """A Pipeline's node('maven') block queued by Jenkins, adopted by a reconcile pass, its
    agent made, connected and given the block: the block and its agent's name."""
    block = jenkins_fake.queue_node_block("nightly", label="maven")
    assert reconcile.reconcile_once(runtime.current())["queue_items_adopted"] == 1
    work(world)
    agent = adopted_agent(jenkins_fake, block)
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]
    return block, agent


@pytest.fixture
def world(make_world):
    return make_world(CONFIG, CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS))


@pytest.mark.parametrize("expired", [False, True], ids=["state kept", "state expired"])
def test_a_replay_of_one_of_our_builds_gets_a_new_agent_of_its_template(
        world, kube, jenkins_fake, expired):
    client, state, rt = world.test_client(), world.extensions["ci_autoscaler"].state, \
        runtime.current()
    key = push(client, "delivery-1").json["build_key"]
    work(world)
    build, old_agent = ran_to_its_end(client, jenkins_fake, lambda: work(world))
    assert pods(kube) == [] and jenkins_fake.nodes == {}
    if expired:  # long after: the old build's state is gone
        reconcile.reconcile_once(rt, now=time.time() + rt.settings.build_ttl_seconds + 60)
        assert state.get_build(key) == {}

    replay = jenkins_fake.replay(build.queue_id)  # waits on the deleted agent's label
    assert replay.run.parameters[AGENT_PARAMETER] == old_agent
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(world)

    (new_agent,) = agents(jenkins_fake)
    assert new_agent != old_agent and pods(kube) == [new_agent]
    assert jenkins_fake.nodes[new_agent].label == old_agent  # registered with that label
    pod = kube.pod(NAMESPACE, new_agent)
    # small: 1 core for the build, plus 100m for the agent injected into its container
    assert pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1100m"
    jenkins_fake.connect_agent(new_agent)
    assert jenkins_fake.dispatch() == [(replay.queue_id, new_agent)]  # no waiting forever
    # Its STARTED names the old agent (a copied parameter): it must not revive the old build.
    assert notify(client, replay.run, "STARTED").json["status"] == "ignored"
    result = reconcile.reconcile_once(rt)
    assert result["adopted_agents_taken"] == 1 and result["queue_items_adopted"] == 0
    jenkins_fake.finish_build(replay.run.queue_id)
    answer = notify(client, replay.run)
    assert answer.status_code == 202 and answer.json["build_key"] != key
    work(world)
    assert pods(kube) == [] and jenkins_fake.nodes == {}
    if not expired:
        assert state.get_build(key)["status"] == BuildStatus.RELEASED  # left as it was


def test_a_replay_of_a_build_of_a_route_naming_its_job_in_another_case_gets_an_agent(
        make_world, kube, jenkins_fake):
    """The route names job "Build", Jenkins has it as "build" (Jenkins finds items in any
    case: Jenkins.items is CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), so the Replay's
    item names "build". Long after, the old build's state gone, its template comes from the
    route naming the item's job: compared exactly, none did, and the Replay waited in
    Jenkins' queue for ever ("a queue item waits on a gone agent of a job no route names")."""
    world = make_world(CONFIG.replace("job: build", "job: Build"),
                       CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS))
    jenkins_fake.add_job("build")
    client, rt = world.test_client(), runtime.current()
    push(client, "delivery-1")
    work(world)
    build, old_agent = ran_to_its_end(client, jenkins_fake, lambda: work(world))
    assert build.job == "build"  # as Jenkins has it
    reconcile.reconcile_once(rt, now=time.time() + rt.settings.build_ttl_seconds + 60)

    replay = jenkins_fake.replay(build.queue_id)  # waits on the deleted agent's label
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(world)

    (new_agent,) = agents(jenkins_fake)
    assert new_agent != old_agent and pods(kube) == [new_agent]
    jenkins_fake.connect_agent(new_agent)
    assert jenkins_fake.dispatch() == [(replay.queue_id, new_agent)]


def test_a_trigger_jenkins_took_after_its_call_timed_out_is_cancelled_not_built_again(
        world, kube, jenkins_fake):
    """Jenkins slow to take a trigger (its queue's lock held, a long GC): the call times out,
    its retry finds no item yet and triggers again, and that item runs and ends. Then Jenkins
    takes the first request after all (Jetty runs a request to its end whether or not its
    client waits), as an item of its own with the same parameters: nothing folds it, the first
    has left the queue. It waits on the build's deleted agent like a Rebuild, but our API
    user queued it, not a person's Rebuild or Replay: it is cancelled, not built a second
    time. A person's build of the same parameters is still adopted."""
    client, rt = world.test_client(), runtime.current()
    push(client, "delivery-1")
    work(world)
    build, old_agent = ran_to_its_end(client, jenkins_fake, lambda: work(world))
    late = jenkins_fake.queue_build(build.job, label=old_agent, parameters=build.parameters,
                                    started_by=jenkins_fake.user)

    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 0
    work(world)
    assert late.state == "cancelled" and late.queue_id in jenkins_fake.cancelled_items
    assert agents(jenkins_fake) == [] and pods(kube) == []

    by_hand = jenkins_fake.queue_build(build.job, label=old_agent,
                                       parameters=build.parameters, started_by="alice")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    assert by_hand.state == "queued"


def test_a_late_trigger_of_a_pipeline_started_its_run_which_is_aborted_not_given_an_agent(
        world, kube, jenkins_fake):
    """The same late request to a Pipeline job: its run starts on the controller at once (a
    WorkflowRun is a flyweight task), and its `agent` block waits on the label of the build's
    agent, busy with the build's own block. Its run, queued by our API user alone with the
    build's key, is not the build's (another queue id): it is aborted, before Jenkins hands
    the agent its block once the build's own is done."""
    client, rt = world.test_client(), runtime.current()
    push(client, "delivery-1")
    work(world)
    (build,) = jenkins_fake.builds
    agent = build.parameters[AGENT_PARAMETER]
    jenkins_fake.start_pipeline(build.queue_id)
    assert notify(client, build, "STARTED").status_code in (200, 202)
    work(world)  # the intake's mover records the build's run
    jenkins_fake.connect_agent(agent)
    jenkins_fake.dispatch()
    late = jenkins_fake.queue_build(build.job, label=agent, parameters=build.parameters,
                                    started_by=jenkins_fake.user)
    jenkins_fake.start_pipeline(late.queue_id)  # its block waits on the busy agent

    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 0
    assert jenkins_fake.stopped_builds == [(late.job, late.number)]
    assert build.state == "running" and agents(jenkins_fake) == [agent]


def test_a_late_pipeline_run_is_aborted_only_once_the_build_has_its_own_run(
        world, kube, jenkins_fake):
    """The late run's abort ends it: the Notification plugin sends its COMPLETED (ABORTED),
    with the build's key. Until the build's own run is recorded (its STARTED lost: the
    plugin ignores a 503, or not applied yet) that COMPLETED would be taken for the build's
    end (run_confirm: the key is the build's, no other run named) and release the agent the
    build's own block runs on. So the late run is left waiting on the busy agent until the
    build's run is known, and aborted then; its COMPLETED is refused."""
    client, rt = world.test_client(), runtime.current()
    key = push(client, "delivery-1").json["build_key"]
    work(world)
    (build,) = jenkins_fake.builds
    agent = build.parameters[AGENT_PARAMETER]
    jenkins_fake.start_pipeline(build.queue_id)  # its STARTED is lost
    jenkins_fake.connect_agent(agent)
    jenkins_fake.dispatch()
    late = jenkins_fake.queue_build(build.job, label=agent, parameters=build.parameters,
                                    started_by=jenkins_fake.user)
    jenkins_fake.start_pipeline(late.queue_id)

    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 0
    # what an abort would send (refused while the run goes on: Jenkins says it has not ended)
    assert notify(client, late, status="ABORTED").status_code in (200, 202)
    work(world)
    assert rt.state.get_build(key)["status"] == BuildStatus.TRIGGERED
    assert agents(jenkins_fake) == [agent] and late.state == "running"

    assert notify(client, build, "STARTED").status_code in (200, 202)
    work(world)
    reconcile.reconcile_once(rt)
    assert jenkins_fake.stopped_builds == [(late.job, late.number)]
    assert notify(client, late, status="ABORTED").status_code in (200, 202)
    work(world)
    assert rt.state.get_build(key)["status"] == BuildStatus.RUNNING
    assert build.state == "running" and agents(jenkins_fake) == [agent]


def test_an_adopted_node_block_agent_runs_that_block_alone_and_goes_when_its_run_ends(
        world, kube, jenkins_fake):
    client, rt = world.test_client(), runtime.current()
    first, agent = adopted_block_running(world, jenkins_fake)

    second = jenkins_fake.queue_node_block("nightly", label="maven")  # the same label
    result = reconcile.reconcile_once(rt)
    assert result["adopted_agents_taken"] == 1 and result["queue_items_adopted"] == 1
    assert jenkins_fake.nodes[agent].temporarily_offline
    jenkins_fake.finish_node_block(first)  # its executor idles; the run goes on
    assert jenkins_fake.dispatch() == []  # the second cannot land on the first's agent
    work(world)  # the second's own agent
    (other,) = set(jenkins_fake.nodes) - {agent}
    jenkins_fake.connect_agent(other)
    assert jenkins_fake.dispatch() == [(second.queue_id, other)]
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1

    # The first run ends: its COMPLETED (job and number, no parameter of ours) releases it.
    jenkins_fake.finish_build(first.run.queue_id)
    assert notify(client, first.run).status_code == 202
    work(world)
    assert pods(kube) == [other] and list(jenkins_fake.nodes) == [other]

    # The second's COMPLETED is lost: the pass asks Jenkins about its run.
    jenkins_fake.finish_build(second.run.queue_id)
    result = reconcile.reconcile_once(rt, now=time.time() + LOST_EVENT_SECONDS + 1)
    assert result["lost_builds_released"] == 1
    assert pods(kube) == [] and jenkins_fake.nodes == {}


def test_an_item_on_a_label_whose_only_node_is_an_adopted_agent_gets_its_own_agent(
        world, kube, jenkins_fake):
    """While an adopted agent is the only node with the label, Jenkins' reason names that
    node, not the label ("‘NODE’ is offline", "Waiting for next available executor on
    ‘NODE’": Queue.BuildableItem.getCauseOfBlockage); the item is adopted all the same, not
    left waiting until that agent's run ends and its node goes."""
    rt = runtime.current()
    first = jenkins_fake.queue_node_block("nightly", label="maven")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(world)
    agent = adopted_agent(jenkins_fake, first)
    second = jenkins_fake.queue_build("hand-started", label="maven")  # agent not connected
    assert {i.id: i.why for i in rt.jenkins.queue_items()}[second.queue_id] \
        == f"‘{agent}’ is offline"
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1  # the first keeps its own
    work(world)
    assert len(jenkins_fake.nodes) == 2
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch()[0] == (first.queue_id, agent)


def test_an_item_that_takes_the_agent_made_for_another_leaves_that_one_its_agent(
        world, kube, jenkins_fake):
    client, rt = world.test_client(), runtime.current()
    a = jenkins_fake.queue_node_block("nightly", label="maven")
    b = jenkins_fake.queue_node_block("weekly", label="maven")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 2
    work(world)
    x, y = agents(jenkins_fake)
    jenkins_fake.connect_agent(y)  # the second agent is up first: Jenkins gives it the oldest
    assert jenkins_fake.dispatch() == [(a.queue_id, y)]

    result = reconcile.reconcile_once(rt)
    assert result["adopted_agents_taken"] == 1  # y, by what its executor runs
    assert result["queue_items_adopted"] == 0  # x, not connected yet, is still b's
    jenkins_fake.connect_agent(x)
    assert jenkins_fake.dispatch() == [(b.queue_id, x)]
    assert reconcile.reconcile_once(rt)["adopted_agents_taken"] == 1

    for block in (a, b):  # each agent goes with the run it ran
        jenkins_fake.finish_build(block.run.queue_id)
        assert notify(client, block.run).status_code == 202
        work(world)
        assert block.node not in jenkins_fake.nodes
    assert pods(kube) == []


def test_an_adopted_agent_taken_offline_before_a_poll_saw_it_online_is_not_replaced(
        world, kube, jenkins_fake):
    """Its agent connects and takes the node block after the pass noticed the agents online,
    and the pass's repairs take it offline (watch_adopted): Jenkins' `offline` is
    temporarilyOffline || no channel (Computer.isOffline), so no poll sees it online from
    then on. The agent took a run, so it connected: its build is marked online. Left
    pending, once its pod had run past the connect timeout the check took it for an agent
    that never connected and deleted its Jenkins node and pod from under the running block
    (or failed the build with agent_connect_timeout)."""
    rt, state = runtime.current(), world.extensions["ci_autoscaler"].state
    block, agent = adopted_block_running(world, jenkins_fake)
    key = state.build_for_agent(agent)
    assert adoption.watch_adopted(rt, {key: state.get_build(key)}) == 1
    assert jenkins_fake.nodes[agent].temporarily_offline
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={c["name"]: running(time.time() - 120) for c in
                                kube.pod(NAMESPACE, agent)["spec"]["containers"]})
    result = online.check_connect_timeouts(rt, now=time.time() + 3600)
    assert result == {"agents_replaced": 0, "agents_timed_out": 0}
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert state.get_build(key).get("agent_online_at")
    assert "fail_reason" not in state.get_build(key)


def test_an_adopted_agent_jenkins_refuses_to_take_offline_still_has_its_run_recorded(
        world, kube, jenkins_fake):
    """Jenkins refuses to take it offline for good (403: the user lacks Agent/Disconnect,
    Computer.doChangeOfflineCause's checkPermission(DISCONNECT)). The run the agent took is
    recorded all the same and the build marked online; the refusal is logged. The refusal
    raised out of watch_adopted: every pass failed the step at that build, and no run was
    ever recorded for it, nor for the adopted builds after it in the pass (the run that ends
    an adopted build: finish_lost_builds), whose agents were not taken offline either."""
    rt, state = runtime.current(), world.extensions["ci_autoscaler"].state
    first, agent = adopted_block_running(world, jenkins_fake)
    key = state.build_for_agent(agent)
    jenkins_fake.fail_next(403, path_prefix=f"/computer/{agent}/changeOfflineCause")
    assert adoption.watch_adopted(rt, {key: state.get_build(key)}) == 1
    assert jenkins_fake.requests_to(f"/computer/{agent}/changeOfflineCause", "POST")
    assert not jenkins_fake.nodes[agent].temporarily_offline
    build = state.get_build(key)
    assert build.get("jenkins_build") == str(first.run.number)
    assert build.get("agent_online_at")


def adopted_and_running(world, jenkins_fake, *, started: bool = False):
    """A "Build Now" of `nightly` on `maven`, adopted by a pass: its agent made, connected and
    given the item (its STARTED delivered and taken when `started`); (the run, the agent)."""
    first = jenkins_fake.queue_build("nightly", label="maven")
    assert reconcile.reconcile_once(runtime.current())["queue_items_adopted"] == 1
    work(world)
    (agent,) = agents(jenkins_fake)
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(first.queue_id, agent)]
    if started:
        assert notify(world.test_client(), first, "STARTED").status_code == 200
        work(world)
    return first, agent


def second_runs_then_releases(world, kube, jenkins_fake, second, agent) -> None:
    """The agent kept, offline, for the `second` run Jenkins handed it; that run's end
    releases it."""
    assert second.state == "running" and second.node == agent
    assert jenkins_fake.nodes[agent].temporarily_offline
    jenkins_fake.finish_build(second.queue_id)
    assert notify(world.test_client(), second).status_code == 202
    work(world)
    assert agent not in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is None


def test_a_short_hand_started_build_leaves_its_agent_to_the_item_jenkins_gave_it_next(
        world, kube, jenkins_fake):
    """"Build Now" of a freestyle job on `maven`, twice. The first item is adopted, its agent
    takes it, and the build ends before a reconcile pass took the agent offline: the agent
    still carries the template's label, and Jenkins gives it the second item the moment its
    executor is free (Queue maintenance on the executor's release). The first build's
    COMPLETED, confirmed by its builtOn, deleted the agent from under the second build (its
    run aborted). Left alone, the agent is the second run's: the COMPLETED takes the agent
    offline and records that run as the build's, and that run's end releases it."""
    client = world.test_client()
    jenkins_fake.add_job("nightly", parameters=None, kind=FREESTYLE_JOB)
    first, agent = adopted_and_running(world, jenkins_fake)
    second = jenkins_fake.queue_build("nightly", label="maven")
    jenkins_fake.finish_build(first.queue_id)
    assert jenkins_fake.dispatch() == [(second.queue_id, agent)]
    assert notify(client, first).status_code == 202
    work(world)
    assert agent in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is not None
    second_runs_then_releases(world, kube, jenkins_fake, second, agent)


def test_a_hand_started_build_discarded_as_it_ended_leaves_its_agent_to_the_next_item(
        world, kube, jenkins_fake):
    """The two "Build Now"s again, of a job that keeps one build (a build discarder), with a
    newer run of it building elsewhere: the first run is deleted as it ends, and its COMPLETED
    is confirmed by Jenkins having named it the build's own (its queue item's run), not by its
    builtOn. That confirmation deleted the agent from under the second run Jenkins gave it."""
    client = world.test_client()
    jenkins_fake.add_job("nightly", parameters=None, kind=FREESTYLE_JOB, num_to_keep=1)
    first, agent = adopted_and_running(world, jenkins_fake, started=True)
    newer = jenkins_fake.queue_build("nightly", label="elsewhere")
    jenkins_fake.start_build(newer.queue_id)  # building on no agent of ours
    second = jenkins_fake.queue_build("nightly", label="maven")
    jenkins_fake.finish_build(first.queue_id, "FAILURE")  # not the last successful: deleted
    assert first.discarded
    assert jenkins_fake.dispatch() == [(second.queue_id, agent)]
    assert notify(client, first, status="FAILURE").status_code == 202
    work(world)
    assert agent in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is not None
    second_runs_then_releases(world, kube, jenkins_fake, second, agent)


@pytest.mark.parametrize("completed", [True, False], ids=["its COMPLETED came", "lost"])
def test_a_hand_started_build_whose_started_came_leaves_its_agent_to_the_next_item(
        world, kube, jenkins_fake, completed):
    """The same two "Build Now"s, the first's STARTED delivered as the Notification plugin
    sends it (it writes the run's number on the build): no pass recorded the second run on
    the agent then, and once CI_AUTOSCALER_LOST_EVENT_SECONDS passed the lost-event check saw
    the first run finished and deleted the agent from under the second (Jenkins aborted it).
    While the agent runs the second, no path releases it (the first's COMPLETED, or the
    lost-event check when that is lost); the second's end does."""
    client, rt = world.test_client(), runtime.current()
    jenkins_fake.add_job("nightly", parameters=None, kind=FREESTYLE_JOB)
    first, agent = adopted_and_running(world, jenkins_fake, started=True)
    second = jenkins_fake.queue_build("nightly", label="maven")
    jenkins_fake.finish_build(first.queue_id)
    assert jenkins_fake.dispatch() == [(second.queue_id, agent)]
    if completed:
        assert notify(client, first).status_code == 202
        work(world)
        assert agent in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is not None

    reconcile.reconcile_once(rt, now=time.time() + LOST_EVENT_SECONDS + 1)
    work(world)
    assert agent in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is not None
    second_runs_then_releases(world, kube, jenkins_fake, second, agent)


def test_a_short_hand_started_build_s_end_releases_its_idle_agent_at_once(
        world, kube, jenkins_fake):
    """The same build with nothing else waiting on `maven`: its COMPLETED, confirmed by its
    builtOn, releases the agent before any pass recorded its run."""
    client = world.test_client()
    jenkins_fake.add_job("nightly", parameters=None, kind=FREESTYLE_JOB)
    first, agent = adopted_and_running(world, jenkins_fake)
    jenkins_fake.finish_build(first.queue_id)
    assert notify(client, first).status_code == 202
    work(world)
    assert agent not in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is None


@pytest.mark.parametrize("taken", [True, False],
                         ids=["its STARTED taken", "its STARTED still in the intake"])
@pytest.mark.parametrize("phases", [("STARTED", "COMPLETED"), ("COMPLETED",)],
                         ids=["started then completed", "completed only"])
def test_a_copy_of_a_running_build_that_ends_first_leaves_the_running_build_its_agent(
        world, kube, jenkins_fake, phases, taken):
    """A Replay or Rebuild of a build still running copies its parameters, build key
    included (workflow-cps ReplayAction.run2 copies the ParametersAction): its node block
    waits on the running build's agent, whose one executor is busy, and a person who aborts
    it ends it first. Its COMPLETED names the build's job and key, and Jenkins confirms that
    run finished with that key: it released the agent under the running build, which then
    died with its pod. The run the build's STARTED named is its run; a copy's is not. Since
    a STARTED goes through the intake (issue 17), the copy's end may come while the build's
    STARTED still waits there (`taken` False): the web cannot tell the copy then, and the
    release job refuses it (workers.core.notifications.other_run)."""
    client = world.test_client()
    state = world.extensions["ci_autoscaler"].state
    key = push(client, "delivery-1").json["build_key"]
    work(world)
    (build,) = jenkins_fake.builds
    agent = build.parameters[AGENT_PARAMETER]
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(build.queue_id, agent)]
    assert notify(client, build, "STARTED").status_code == 200
    if taken:
        work(world)

    copy = jenkins_fake.replay(build.queue_id)  # waits on the busy agent's label
    jenkins_fake.finish_build(copy.run.queue_id, "ABORTED")  # a person aborts it
    for phase in phases:
        answer = notify(client, copy.run, phase, status="ABORTED")
        # not yet taken, the build's run is not known to the web: stored, refused later
        assert answer.json["status"] in (("ignored",) if taken else ("recorded", "queued")), (
            phase, answer.json)
    work(world)
    assert pods(kube) == [agent] and agent in jenkins_fake.nodes
    assert state.get_build(key)["status"] == BuildStatus.RUNNING
    assert state.get_build(key)["jenkins_build"] == str(build.number)

    jenkins_fake.finish_build(build.queue_id)  # the build's own end releases it
    assert notify(client, build).status_code == 202
    work(world)
    assert pods(kube) == [] and agent not in jenkins_fake.nodes


def test_an_item_on_a_label_expression_of_ours_is_told_once_and_shown_but_gets_no_agent(
        world, kube, jenkins_fake, caplog):
    """A Pipeline's node('maven && jdk17') block: Jenkins names the expression, by its normal
    form ("maven&&jdk17", LabelExpression.Binary), which no template's one label is. It
    waited for ever with nothing logged or shown. Now each pass that sees it keeps it on the
    status page, the first logs it, and no agent is made (an agent carries one label)."""
    rt = runtime.current()
    block = jenkins_fake.queue_node_block("nightly", label="maven&&jdk17")
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.unserved"):
        for _ in range(3):
            result = reconcile.reconcile_once(rt)
            assert result["queue_items_adopted"] == 0, result
            assert result["queue_items_unserved"] == 1, result
    work(world)
    assert pods(kube) == [] and agents(jenkins_fake) == []
    told = [r for r in caplog.records if r.getMessage() ==
            "queue item waits on a label expression no template serves"]
    assert [(r.queue_item, r.job, r.expression, r.labels) for r in told] == [
        (block.queue_id, "nightly", "maven&&jdk17", ["maven"])]
    page = world.test_client().get("/status").get_data(as_text=True)
    assert "Jenkins queue items no template serves (1)" in page
    assert "maven&amp;&amp;jdk17" in page and "restrict the job to one such label" in page
    jenkins_fake.node_blocks.remove(block)  # the run aborted: the item leaves the queue
    assert reconcile.reconcile_once(rt)["queue_items_unserved"] == 0
    assert "no template serves" not in world.test_client().get("/status").get_data(
        as_text=True)



def test_a_short_adopted_node_block_done_before_a_pass_is_released_by_the_next_pass(
        world, kube, jenkins_fake):
    """A Pipeline's node('maven') block, adopted, runs on its agent and is done (its run too)
    before a reconcile pass saw the agent take it. The run's COMPLETED names no agent of ours
    (a Pipeline run's queue item is not the block's) and is ignored. The next pass recorded
    the run and took the agent offline, but released it only one pass later (the session it
    wrote was missing from the pass's own copy of the build): its pod stayed two reconcile
    intervals (up to 60 s) after the build ended."""
    client, rt = world.test_client(), runtime.current()
    block, agent = adopted_block_running(world, jenkins_fake)
    jenkins_fake.finish_node_block(block)
    jenkins_fake.finish_build(block.run.queue_id)
    assert notify(client, block.run).json["status"] == "ignored"
    passed = reconcile.reconcile_once(rt)
    assert (passed["adopted_agents_taken"], passed["adopted_agents_done"]) == (1, 1)
    work(world)
    assert agent not in jenkins_fake.nodes and kube.pod(NAMESPACE, agent) is None


def two_build_nows(world, jenkins_fake):
    """Two "Build Now"s of a freestyle job on `maven`, each adopted by a pass, neither agent
    connected yet: (first, second, the first's agent, the second's agent)."""
    rt = runtime.current()
    jenkins_fake.add_job("nightly", parameters=None, kind=FREESTYLE_JOB)
    first = jenkins_fake.queue_build("nightly", label="maven")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(world)
    (own,) = agents(jenkins_fake)
    second = jenkins_fake.queue_build("nightly", label="maven")
    assert reconcile.reconcile_once(rt)["queue_items_adopted"] == 1
    work(world)
    (other,) = [a for a in agents(jenkins_fake) if a != own]
    return first, second, own, other


@pytest.mark.parametrize("waiting", [False, True], ids=["queue empty", "an item waits"])
def test_a_build_now_run_on_another_adopted_agent_releases_its_own_unused_agent_at_once(
        world, kube, jenkins_fake, waiting):
    """Two "Build Now"s of a freestyle job on `maven`, each adopted; the second's agent
    connects first, and Jenkins hands it the oldest item (then the second, once free). The
    first run's COMPLETED names the first build (its queue item), but its builtOn the other
    agent: it was refused, and the first build's agent, which ran nothing, was kept until a
    pass or the lost-event check found it (its pod up to 90 s after the burst had ended).
    Jenkins says the first build's own item left the queue as that run, and nothing waits:
    the build is over, and its unused agent goes at once. The agent running the second run
    is kept. While an item waits in Jenkins' queue, the unused agent may be the one to serve
    it: left to the pass, as before."""
    client = world.test_client()
    first, second, own, other = two_build_nows(world, jenkins_fake)
    jenkins_fake.connect_agent(other)  # connects first: Jenkins hands it the oldest item
    assert jenkins_fake.dispatch() == [(first.queue_id, other)]
    jenkins_fake.finish_build(first.queue_id)
    assert jenkins_fake.dispatch() == [(second.queue_id, other)]
    if waiting:
        jenkins_fake.queue_build("nightly", label="elsewhere")
    assert notify(client, first).status_code == 202
    work(world)
    if waiting:
        assert own in jenkins_fake.nodes and kube.pod(NAMESPACE, own) is not None
        return
    assert own not in jenkins_fake.nodes and kube.pod(NAMESPACE, own) is None
    assert other in jenkins_fake.nodes and kube.pod(NAMESPACE, other) is not None
    jenkins_fake.finish_build(second.queue_id)  # the second's end releases its own agent
    assert notify(client, second).status_code == 202
    work(world)
    assert agents(jenkins_fake) == [] and pods(kube) == []


def test_a_build_now_run_elsewhere_keeps_its_agent_that_just_took_an_item(
        world, kube, jenkins_fake):
    """The run of the build's own item on another adopted agent, as above, and nothing in
    Jenkins' queue: but only because the build's own agent has just taken a third item, its
    Run not made yet. Jenkins takes the item out of its queue (Queue.onStartExecuting) before
    the executor makes the Run (Executor.run: createExecutable after it), and the executor
    is busy from the moment queue maintenance handed it the work unit (Executor.isIdle:
    workUnit == null && executable == null): its `idle` is false, its currentExecutable
    null. The COMPLETED's "nothing waits" is read then; deleting the agent would kill the
    third run as it starts. It is kept (taken offline), and that run goes on on it."""
    client = world.test_client()
    first, second, own, other = two_build_nows(world, jenkins_fake)
    jenkins_fake.connect_agent(other)
    assert jenkins_fake.dispatch() == [(first.queue_id, other)]
    jenkins_fake.finish_build(first.queue_id)
    assert jenkins_fake.dispatch() == [(second.queue_id, other)]
    third = jenkins_fake.queue_build("nightly", label="maven")
    jenkins_fake.connect_agent(own)
    jenkins_fake.begin_start(third.queue_id, own)  # out of the queue, its Run not made yet
    assert notify(client, first).status_code == 202
    work(world)
    assert own in jenkins_fake.nodes and kube.pod(NAMESPACE, own) is not None
    assert jenkins_fake.nodes[own].temporarily_offline
    jenkins_fake.start_build(third.queue_id)
    assert third.node == own and third.state == "running"
