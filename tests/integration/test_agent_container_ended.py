"""The container that runs the agent ends while a service container of the same pod runs on
(a database beside the build): the pod stays phase Running (a pod is Failed only once every
container has terminated: kubelet pkg/kubelet/kubelet_pods.go getPhase), and with
restartPolicy Never the agent never comes back. Its build container OOM-killed (reason
OOMKilled, exit 137) is the build's own end: the job's history records the kill; the agent is
released as for a pod that ended (its pod and Jenkins node deleted, which tells Jenkins:
workflow-durable-task-step's RemovedNodeListener ends a Pipeline waiting for a deleted
agent), not held till the pod's activeDeadlineSeconds with its slot, its room and a
Pipeline waiting on an agent that cannot return.

Real redis-server, kmock over HTTP, the Jenkins fake; the set-up of
test_seen_online_killed_before_its_build (a template with a `db` service)."""

from tests.integration import test_start_failures as starts
from tests.integration.test_build_stages import notify
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_seen_online_killed_before_its_build import (
    a_pass_then_the_queue, app_with_a_service, seen_online)
from tests.support.kmock_cluster import running, terminated
from workers.adapters.usage_store import UsageStore
from workers import runtime

assert app_with_a_service  # the fixture, imported for pytest


def test_an_oom_killed_build_container_beside_a_running_service_is_released(
        app_with_a_service, kube, jenkins_fake):
    app = app_with_a_service
    key, agent, _, block = seen_online(app, kube, jenkins_fake, pipeline=True)
    assert jenkins_fake.dispatch() == [(block.queue_id, agent)]  # the agent runs its block
    a_pass_then_the_queue(app)

    jenkins_fake.disconnect_agent(agent)  # its JVM died with the build container
    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        states={"build": terminated("OOMKilled", 137), "db": running()})
    a_pass_then_the_queue(app)
    a_pass_then_the_queue(app)

    assert starts.cleaned_up(kube, jenkins_fake, agent)(), "the pod and its agent were kept"
    build = starts.state_of(app).get_build(key)
    assert build["status"] == "released" and not build.get("fail_reason"), build
    rt = runtime.current()
    history = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix).history("build", "small")
    assert history.oom_kills == 1


def test_a_service_container_s_oom_kill_does_not_grow_the_build_s_memory(
        app_with_a_service, kube, jenkins_fake):
    """The `db` service OOM-killed at its own fixed memory while the build runs and ends
    well: the job's history takes no OOM kill, so its next builds are not given twice the
    build container's memory (nor, with retryOnOOM, started again) for a container whose
    size the history does not set."""
    app = app_with_a_service
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    run = jenkins_fake.start_build(item)
    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        states={"build": running(), "db": terminated("OOMKilled", 137)})
    a_pass_then_the_queue(app)

    run = jenkins_fake.finish_build(run.queue_id, "SUCCESS")
    assert notify(app, agent, run, "COMPLETED") == 202
    starts.work(app)

    assert starts.state_of(app).get_build(key)["status"] == "released"
    rt = runtime.current()
    history = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix).history("build", "small")
    assert history.oom_kills == 0


def test_an_agent_container_that_exits_0_before_connecting_fails_its_build(
        app_with_a_service, kube, jenkins_fake):
    """The agent's container ends (exit 0, reason Completed: remoting gave up, or a template
    whose agent command returns) before its agent ever connected, its `db` service running on:
    the pod stays Running and nothing of it runs the agent again (restartPolicy Never). As for
    a pod that ended whole before its agent connected (phase Succeeded), a start failure: the
    build failed, its queue item cancelled. Released as a pod that ended, the build was marked
    released and its queue item waited for ever on the label of an agent that never comes."""
    app = app_with_a_service
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a",
                        states={"build": terminated("Completed", 0), "db": running()})
    a_pass_then_the_queue(app)

    build = starts.state_of(app).get_build(key)
    assert build["status"] == "failed" and build.get("fail_reason"), build
    assert jenkins_fake.cancelled_items == [item]
    assert starts.cleaned_up(kube, jenkins_fake, agent)()
