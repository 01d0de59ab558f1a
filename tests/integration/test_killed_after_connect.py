"""An agent pod killed (OOM) after its agent connected, but before the reconcile leader's poll
saw it online (every 2 s, and not at all while that process is down or busy), ends as one the
poll saw: not as a start failure (no start-failure count, no fail_reason, its Jenkins run not
aborted by us), its OOM kill in the job's history, its agent released by the build's
COMPLETED or, without one, by the reconcile pass as a pod that ended. Jenkins tells: the
agent's computer shows its channel closed under it (OfflineCause$ChannelTermination) since
the pod was made. One whose agent never connected (its JVM OOM-killed at start) still fails
as a start failure, and so does one whose computer's closed channel is an earlier pod's, and
one whose build never got to its agent (its queue item, or its Pipeline's agent block, still
waiting in Jenkins' queue): a closed channel says a process opened it, not that it took work.

Real redis-server, kmock over HTTP (the kubelet's status written through the API, seen by the
worker's own watch), the Jenkins fake; the set-up of test_start_failures."""

import pytest

from tests.integration import test_start_failures as starts
from tests.integration.test_build_stages import notify
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from tests.support.kmock_cluster import terminated
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters.usage_store import UsageStore
from workers.core.pods import AGENT_CONTAINER

app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching
WATCH_SECONDS = starts.FAIL_FAST_SECONDS


def connected_and_running(app, kube, jenkins_fake):
    """A build whose agent connected and took its run, with no poll of agents online since:
    (key, agent, the Jenkins run)."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    run = jenkins_fake.start_build(item)  # its agent took it
    assert not starts.state_of(app).get_build(key).get("agent_online_at")
    return key, agent, run


def oom_killed(app, kube, jenkins_fake, agent: str, *, jenkins_noticed: bool = True) -> None:
    """The build container (the agent's JVM in it) is OOM-killed: Jenkins' end of the
    connection closes at once (the kernel closes the dead process's sockets; unless not
    `jenkins_noticed` yet), then the kubelet reports the pod Failed. Awaited: the worker's
    watch queued its start failure and recorded the OOM kill (job_history.watch.OomWatch)."""
    if jenkins_noticed:
        jenkins_fake.disconnect_agent(agent)
    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    rt = runtime.current()
    runs = f"{rt.settings.key_prefix}usage:run:{agent}"
    wait_until(lambda: starts.state_of(app).queue.count
               and rt.state.redis.hget(runs, "oom_limit") is not None,
               timeout=WATCH_SECONDS, what="the kill seen by the worker's watch")


def history():
    rt = runtime.current()
    return UsageStore(rt.state.redis, prefix=rt.settings.key_prefix).history("build", "small")


def not_failed(app, key: str, jenkins_fake, run) -> None:
    build = starts.state_of(app).get_build(key)
    assert build["status"] != "failed" and not build.get("fail_reason"), build
    assert starts.failures_counted(app, "OOMKilled") == 0
    assert jenkins_fake.stopped_builds == [] and run.state == "running"


def test_killed_after_connecting_before_the_poll_ends_as_the_build_s_own_end(
        app, kube, jenkins_fake):
    key, agent, run = connected_and_running(app, kube, jenkins_fake)

    oom_killed(app, kube, jenkins_fake, agent)
    work(app)  # its fail_start job: Jenkins shows the agent had connected

    not_failed(app, key, jenkins_fake, run)
    # Jenkins ends the run as it does for an agent gone (the test plays it), and its
    # COMPLETED releases the agent as for any build
    run = jenkins_fake.finish_build(run.queue_id, "FAILURE")
    assert notify(app, agent, run, "COMPLETED") == 202
    work(app)
    build = starts.state_of(app).get_build(key)
    assert (build["status"], build["result"]) == ("released", "FAILURE")
    assert not build.get("fail_reason")
    assert starts.cleaned_up(kube, jenkins_fake, agent)()
    assert starts.failures_counted(app, "OOMKilled") == 0
    assert history().oom_kills == 1  # the job's next memory doubles


def test_without_a_notification_the_pass_releases_it_as_a_pod_that_ended(
        app, kube, jenkins_fake):
    key, agent, run = connected_and_running(app, kube, jenkins_fake)
    oom_killed(app, kube, jenkins_fake, agent)

    reconcile.reconcile_once(runtime.current())  # its sweep, then its stray pods
    work(app)

    not_failed(app, key, jenkins_fake, run)
    assert starts.state_of(app).get_build(key)["status"] == "released"
    assert starts.cleaned_up(kube, jenkins_fake, agent)()
    assert starts.exported(app, 'ci_autoscaler_agents_deleted_total{reason="pod_ended",'
                                'template="small"}') == 1
    assert history().oom_kills == 1


def test_a_kill_jenkins_has_not_noticed_yet_marks_the_agent_online_as_the_poll_would(
        app, kube, jenkins_fake):
    key, agent, run = connected_and_running(app, kube, jenkins_fake)

    oom_killed(app, kube, jenkins_fake, agent, jenkins_noticed=False)
    work(app)

    not_failed(app, key, jenkins_fake, run)
    assert starts.state_of(app).get_build(key).get("agent_online_at")


def test_an_agent_oom_killed_before_it_ever_connected_is_still_a_start_failure(
        app, kube, jenkins_fake):
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    run = jenkins_fake.start_build(item)  # a Pipeline runs on the controller first

    kube.kubelet_status(NAMESPACE, agent, phase="Failed", node="node-a",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    starts.until(app, starts.cleaned_up(kube, jenkins_fake, agent))

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "OOMKilled")
    assert starts.failures_counted(app, "OOMKilled") == 1
    assert jenkins_fake.stopped_builds == [("build", run.number)]


def test_a_closed_channel_of_an_earlier_pod_of_the_same_name_is_no_connect(
        app, kube, jenkins_fake):
    """A stalled build's restart makes its pod again under the same name and reuses its
    Jenkins node: the computer's ChannelTermination from before this pod was made is the
    earlier pod's, and this one's JVM, killed at start, never connected."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    made = float(starts.state_of(app).get_build(key)["pod_created_at"])
    jenkins_fake.connect_agent(agent)
    jenkins_fake.disconnect_agent(agent)
    jenkins_fake.nodes[agent].channel_lost_at = made - 60  # the earlier pod's, a minute before

    kube.kubelet_status(NAMESPACE, agent, phase="Failed", node="node-a",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    starts.until(app, starts.cleaned_up(kube, jenkins_fake, agent))

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "OOMKilled")
    assert jenkins_fake.cancelled_items == [item]


@pytest.mark.parametrize("dies", ["after it came online", "in its handshake"])
def test_an_agent_killed_before_its_build_got_to_it_is_a_start_failure(
        app, kube, jenkins_fake, dies):
    """Jenkins shows the agent's channel closed since its pod was made, but the build's queue
    item never left the queue: the agent took nothing, and is dead. A process killed in its
    handshake leaves that closed channel too, on a computer never online (SlaveComputer.
    setChannel; the fake's agent_dies_connecting): a JVM OOM-killed as it starts. Taken for
    the build's own end, the pod was released as one that ended and the item left waiting on
    the label of a gone agent, for the adoption to take for a Replay and run the build after
    all (beside retryOnOOM's retry); a start failure cancels it, as before the Jenkins read."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    if dies == "after it came online":
        jenkins_fake.connect_agent(agent)
    else:
        jenkins_fake.agent_dies_connecting(agent)

    oom_killed(app, kube, jenkins_fake, agent, jenkins_noticed=dies == "after it came online")
    work(app)
    reconcile.reconcile_once(runtime.current())  # its sweep, its stray pods, the adoption
    work(app)

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build.get("fail_reason")) == ("failed", "OOMKilled"), build
    assert jenkins_fake.cancelled_items == [item]
    assert starts.failures_counted(app, "OOMKilled") == 1
    assert starts.cleaned_up(kube, jenkins_fake, agent)()
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == []  # nothing adopted


def test_a_pipeline_whose_agent_block_never_got_to_the_killed_agent_is_a_start_failure(
        app, kube, jenkins_fake):
    """A Pipeline's run starts on the controller (its item leaves the queue as a run: Jenkins
    reports it running) and its `agent` block waits in the queue on the agent's label; the
    agent connects and is killed before the block reaches it. The run is aborted as for any
    start failure, not left waiting on a label no agent will carry."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    block = jenkins_fake.start_pipeline(item)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)

    oom_killed(app, kube, jenkins_fake, agent)
    starts.until(app, starts.cleaned_up(kube, jenkins_fake, agent))

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build.get("fail_reason")) == ("failed", "OOMKilled"), build
    assert jenkins_fake.stopped_builds == [("build", block.run.number)]
