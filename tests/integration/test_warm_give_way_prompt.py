"""Builds always win (issue 22: "when the cluster is full, warm agents are given up before a
build waits"), promptly and for a full ResourceQuota too, through the real parts: a real
redis-server, kmock over HTTP (the worker's own watch sees the pods; real ResourceQuota
admission, tests.support.resource_quota), the Jenkins fake, the jobs run by RQ's SimpleWorker.

- a warm agent given up stays Terminating for its grace period on a real cluster (kmock's
  `hold_deletions` until the kubelet confirms): the re-drive queued by the give-way finds its
  room still held; once the watch sees the pod gone, a re-drive is queued at once, not left to
  the next reconcile pass (up to 15 s later);
- a build refused by the namespace's ResourceQuota (requests.cpu full) waits beside an idle
  warm agent counting against the same quota: the agent gives way, and the build is placed;
  while the quota still counts an agent gone (its controller lags), no second one goes.
"""

from rq import SimpleWorker

from tests.integration import test_warm_agents
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import (
    MI, ROOMY, WATCH_SECONDS, hinted_push, pod_names, pool_of, reconfigured, record, warm_up_at)
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.adapters.redis_state import SERIALIZER
from workers.core.cluster import Resources
from workers.engine import redrive
from workers.engine.intake import Mover
from workers.warm import agents
from workers.core.warm_pool import WarmState

app = test_warm_agents.app  # the fixture: the web app and the worker's environment


def queued(app) -> list[str]:
    state = app.extensions["ci_autoscaler"].state
    return [job.func_name for job in state.queue.get_jobs()]


def test_a_given_up_warm_pod_gone_from_the_watch_redrives_the_waiting_build_at_once(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent
    kube.hold_deletions("node-a")  # a deleted pod stays Terminating until its kubelet confirms
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    # A build the agent is too small for waits; the agent gives way (the task its wait
    # queued) and the re-drive that queues finds the pod still Terminating, its room held.
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    work(app)
    assert pool_of(rt) == [] and warm not in jenkins_fake.nodes
    assert kube.pod(NAMESPACE, warm)["metadata"].get("deletionTimestamp")
    assert record(app, key)["status"] == "waiting"
    assert queued(app) == []

    kube.kubelet_confirms_deletion(NAMESPACE, warm)
    wait_until(lambda: rt.view.gone(NAMESPACE, [warm]) == {warm}, timeout=WATCH_SECONDS,
               what=f"{warm} gone from the worker's watch")
    wait_until(lambda: redrive.REDRIVE_TASK in queued(app), timeout=WATCH_SECONDS,
               what="a re-drive queued by the watch")
    work(app)
    assert record(app, key)["status"] == "triggered"
    assert record(app, key)["agent"] in pod_names(kube)


def test_a_build_waiting_on_a_full_quota_makes_an_idle_warm_agent_give_way(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="8", memory="32Gi")  # room on nodes for many
    # The namespace's quota holds one agent's cpu (1 core each), not two.
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "1500m", "pods": "20"})
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    # A build the agent is too small for: its own pod, refused by the quota the agent fills.
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    work(app)  # the provision, the give-way its wait queues, the re-drive that queues
    rec = record(app, key)
    assert rec["first_wait_reason"] == "quota", rec
    assert rec["status"] == "triggered", rec
    assert warm not in pod_names(kube) and warm not in jenkins_fake.nodes
    assert [e for e in pool_of(rt) if e.state == WarmState.IDLE] == []
    assert rec["agent"] in pod_names(kube)


def test_a_quota_still_counting_a_given_up_agent_costs_no_second_agent(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The quota controller counts a deleted pod out a moment after it is gone (admission reads
    the quota's status.used, which it lowers asynchronously): the re-drive at the pod's
    DELETED is refused again, its refusal counting the agent that went. That agent's share is
    still on its way back: the other idle agent stays."""
    app = reconfigured(monkeypatch, tmp_path, ROOMY)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    # Two agents (1 core each) and a build's 1 core exceed 2500m; one agent and the build not.
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "2500m", "pods": "20"})
    lag = 3.0
    kube.quota_counts_deletions_late(lag)
    rt = runtime.current()
    template = rt.config.templates["small"]
    agents.start(rt, "small", template, size=Resources(900, 768 * MI))
    idle = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    assert len(idle) == 2
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()
    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER)
    worker.work(burst=True, max_jobs=2)  # the provision (refused), the give-way its wait queued
    [gone] = set(idle) - {e.name for e in pool_of(rt)}
    wait_until(lambda: rt.view.gone(NAMESPACE, [gone]) == {gone}, timeout=WATCH_SECONDS,
               what=f"{gone} gone from the worker's watch")
    work(app)  # the re-drive, refused by the quota still counting it; the give-way that queues
    assert record(app, key)["wait_reason"] == "quota"
    assert [e.name for e in pool_of(rt) if e.state == WarmState.IDLE] == \
        [n for n in idle if n != gone]

    def placed() -> bool:
        if record(app, key)["status"] != "triggered":
            redrive.redrive(rt)  # the reconcile loop's re-drive, once the quota counted it out
        return record(app, key)["status"] == "triggered"

    wait_until(placed, timeout=WATCH_SECONDS, what="the waiting build placed")
    assert [e.name for e in pool_of(rt) if e.state == WarmState.IDLE] == \
        [n for n in idle if n != gone]
