"""Kubernetes takes a running build's agent pod away without deleting it: the kubelet evicts
it under node pressure, or stops it for a graceful node shutdown (a spot or preemptible node
reclaimed). Either leaves the pod object in phase Failed with the kubelet's reason and
message, and (Kubernetes 1.26 and later) a DisruptionTarget condition with reason
TerminationByKubelet:

- node-pressure eviction: pkg/kubelet/eviction/eviction_manager.go evictPod sets phase
  Failed, reason "Evicted", message "The node was low on resource: memory. Threshold
  quantity: ..., available: ...", and the DisruptionTarget condition (Kubernetes docs,
  "Node-pressure Eviction" and "Pod disruption conditions");
- graceful node shutdown: pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go sets phase
  Failed, reason "Terminated", message "Pod was terminated in response to imminent node
  shutdown." and the same condition (Kubernetes docs, "Node Shutdowns").

The build's agent had connected and was running the build: its workspace went with the pod,
and Jenkins is told nothing (its computer goes offline; a Pipeline waits for the agent, and
only gives up some minutes after its node is deleted: workflow-durable-task-step's
ExecutorStepExecution.RemovedNodeListener). This is no end of the build's own (as an OOM kill
of its container is): it is failed as a drained agent is (workers.engine.lost_agents): aborted in
Jenkins at once, ``fail_reason`` pod_lost with the kubelet's words, counted in
``ci_autoscaler_agents_lost_total``. Released as a pod that ended, the build read "ended
without a result from Jenkins" (canceled) and nothing said why.

Real redis-server, kmock over HTTP (the kubelet's status written through the API and seen
by the worker's own watch), the Jenkins fake; the set-up of test_start_failures."""

import pytest

from tests.integration import test_start_failures as starts
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import JENKINS_TOKEN, mover
from tests.support.kmock_cluster import terminated
from workers import runtime
from workers.engine import reconcile
from workers.agent_starts import online as agent_start
from workers.core import commit_status
from workers.core.pods import AGENT_CONTAINER

app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching
LOST = 'ci_autoscaler_agents_lost_total{template="small"}'


def running_build(app, kube, jenkins_fake):
    """A build whose agent connected (seen by the poll) and runs its Jenkins build, STARTED
    notified: (key, agent, the Jenkins run)."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    assert agent_start.notice_online(runtime.current()) == 1
    run = jenkins_fake.start_build(item)
    started = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                     json=jenkins_fake.notification(run, "STARTED"))
    assert started.status_code == 200, started.get_json()
    mover(app).drain()  # the worker's intake mover applies it (workers.engine.started)
    assert starts.state_of(app).get_build(key)["status"] == "running"
    return key, agent, run


DISRUPTIONS = {
    "evicted": ("Evicted", "The node was low on resource: memory. Threshold quantity: 100Mi, "
                           "available: 92Mi. Container build was using 1800Mi, request is 1Gi, "
                           "has larger consumption of memory. "),
    "node_shutdown": ("Terminated", "Pod was terminated in response to imminent node "
                                    "shutdown."),
}


def disrupt(kube, jenkins_fake, agent: str, how: str) -> str:
    """The kubelet stops every container (SIGTERM, then SIGKILL: exit 137) and writes the
    pod Failed with its reason, message and DisruptionTarget condition; Jenkins' end of the
    agent's connection closes. The kubelet's message."""
    reason, message = DISRUPTIONS[how]
    containers = kube.pod(NAMESPACE, agent)["spec"]["containers"]
    kube.kubelet_status(NAMESPACE, agent, phase="Failed", reason=reason, message=message,
                        states={c["name"]: terminated("Error", 137) for c in containers},
                        conditions=[{"type": "DisruptionTarget", "status": "True",
                                     "reason": "TerminationByKubelet", "message": message}])
    jenkins_fake.disconnect_agent(agent)
    return message


def lost(app, key: str) -> dict[str, str]:
    return starts.state_of(app).get_build(key)


@pytest.mark.parametrize("how", sorted(DISRUPTIONS))
def test_a_running_build_whose_pod_the_kubelet_stopped_is_aborted_and_failed_with_its_reason(
        app, kube, jenkins_fake, how):
    key, agent, run = running_build(app, kube, jenkins_fake)

    message = disrupt(kube, jenkins_fake, agent, how)
    starts.until(app, starts.cleaned_up(kube, jenkins_fake, agent))  # the watch's job

    build = lost(app, key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert DISRUPTIONS[how][0] in build["error"] and message.strip() in build["error"]
    assert jenkins_fake.stopped_builds == [("build", run.number)]
    assert starts.exported(app, LOST) == 1
    assert starts.failures_counted(app, "Evicted") == 0  # not a start failure
    status = commit_status.wanted(build)  # what GitLab shows for the push
    assert status.state == "failed" and DISRUPTIONS[how][0] in status.description, status
    # The abort's COMPLETED and later passes change nothing, count nothing again.
    aborted = jenkins_fake.notification(run, "COMPLETED")
    app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=aborted)
    starts.work(app)
    reconcile.reconcile_once(runtime.current())
    assert lost(app, key)["status"] == "failed"
    assert starts.exported(app, LOST) == 1


def test_the_pass_fails_a_disrupted_build_whose_event_no_worker_saw(app, kube, jenkins_fake):
    """The reconcile pass's sweep is the backstop: it fails the build, not its stray pods
    repair releasing it as a pod that ended."""
    key, agent, run = running_build(app, kube, jenkins_fake)
    disrupt(kube, jenkins_fake, agent, "evicted")

    reconcile.reconcile_once(runtime.current())  # the watch's job never run

    build = lost(app, key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [("build", run.number)]
    assert starts.cleaned_up(kube, jenkins_fake, agent)()
    assert starts.exported(app, LOST) == 1


def test_a_disrupted_pod_whose_build_had_finished_is_released_as_before(
        app, kube, jenkins_fake):
    """Its build ended just before the eviction (its COMPLETED on its way): nothing lost."""
    key, agent, run = running_build(app, kube, jenkins_fake)
    jenkins_fake.finish_build(run.queue_id, "SUCCESS")

    disrupt(kube, jenkins_fake, agent, "evicted")
    reconcile.reconcile_once(runtime.current())
    starts.work(app)

    build = lost(app, key)
    assert not build.get("fail_reason"), build
    assert jenkins_fake.stopped_builds == []
    assert starts.exported(app, LOST) == 0


def test_an_oom_killed_build_container_is_still_the_build_s_own_end(app, kube, jenkins_fake):
    """The kubelet's OOM kill is the build's own doing, not a disruption: its Jenkins result
    stands, its kill goes into the job's history (test_killed_after_connect)."""
    key, agent, run = running_build(app, kube, jenkins_fake)
    jenkins_fake.disconnect_agent(agent)
    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})

    reconcile.reconcile_once(runtime.current())
    starts.work(app)

    assert not lost(app, key).get("fail_reason")
    assert jenkins_fake.stopped_builds == []
    assert starts.exported(app, LOST) == 0


def test_a_pod_the_pass_placed_again_is_not_released_by_its_own_listing(
        app, kube, jenkins_fake):
    """The reconcile pass lists its pods once: its sweep places again the build of a pod
    evicted before its agent connected (the watch's job not run yet: a backlog, or a worker
    restarted), then its stray pods repair meets the same pod in that listing, phase Failed.
    Released there as a pod that ended, the build was marked released: its provision and the
    watch's queued fail found it over, no pod was made, and its Jenkins queue item waited for
    ever on a gone agent's label. And the watch's queued fail of that same eviction, run
    before the build's next pod was made, took it for the second stop and failed the build."""
    key, agent, item = starts.one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    kube.evict(NAMESPACE, agent)

    reconcile.reconcile_once(runtime.current())  # the watch's job (if queued) not run yet
    assert lost(app, key)["status"] != "released", lost(app, key)
    starts.until(app, lambda: kube.pod(NAMESPACE, agent) is None
                 and len(kube.pods(NAMESPACE)) == 1)

    build = lost(app, key)
    again = build["agent"]
    assert again != agent and build["status"] == "triggered", build
    assert not build.get("fail_reason") and jenkins_fake.cancelled_items == []
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [again]
    assert starts.failures_counted(app, "Evicted") == 0


def test_a_build_whose_pod_the_pod_gc_took_says_why(app, kube, jenkins_fake):
    """The pod GC takes the pod of a node that no longer exists (a node deleted by the cloud
    or an operator): phase Failed and a DisruptionTarget condition, DeletionByPodGC, whose
    message alone says why, the pod's status.message left empty; then a forced deletion.
    The lost build read only "pod: DeletionByPodGC", which told a developer nothing."""
    key, agent, run = running_build(app, kube, jenkins_fake)

    kube.pod_gc_orphan(NAMESPACE, agent)
    jenkins_fake.disconnect_agent(agent)
    starts.until(app, starts.cleaned_up(kube, jenkins_fake, agent))  # the watch's job

    build = lost(app, key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert "DeletionByPodGC: PodGC: node no longer exists" in build["error"], build
    assert "node no longer exists" in commit_status.wanted(build).description
    assert jenkins_fake.stopped_builds == [("build", run.number)]
