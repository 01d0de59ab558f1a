"""An agent namespace with a ResourceQuota: a pod that takes the namespace past the quota is
refused, 403 "exceeded quota". While other pods hold the room, that is for now (a pod ending
frees it) and the build waits; but an agent that asks more than the quota's hard limit in all
can never be admitted, and its build was retried for ever, its pod asked for again and again
and its node's room held, while the developer saw it queued with no reason. Real
redis-server, kmock over HTTP with the API server's ResourceQuota admission
(tests.support.resource_quota), the Jenkins fake; pushes through the webhook and the queue."""

import logging
import time

import pytest

from tests.integration import test_limit_range_defaults
from tests.integration.test_limit_range_defaults import build_container, state_of
from tests.integration.test_limit_range_ratio import FACTOR_3
from tests.integration.test_push_to_pod import NAMESPACE, completed
from tests.integration.test_start_failures import (
    exported, failures_counted, pod_creates, push, until)
from tests.support.app import JENKINS_TOKEN, work
from workers import runtime
from workers.engine import reconcile, scheduling
from workers.core.quantity import cpu_millis

make_app = test_limit_range_defaults.make_app  # the fixture

@pytest.fixture
def app(make_app):
    return make_app(node_cpu="16", node_memory="64Gi")


def test_an_agent_bigger_than_the_whole_quota_fails_its_build_at_once(app, kube, jenkins_fake):
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "1", "pods": "20"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "failed")
    build = state.get_build(key)
    assert build["fail_reason"] == "pod_refused"
    assert "requests.cpu" in build["error"] and "compute" in build["error"], build["error"]
    until(app, lambda: jenkins_fake.nodes == {})
    assert [b.state for b in jenkins_fake.builds] == ["cancelled"]
    assert failures_counted(app, "pod_refused") == 1
    # No pass, however late, asks for the pod again.
    later = runtime.current().settings.provision_lease_seconds * 10
    reconcile.reconcile_once(runtime.current(), now=time.time() + later)
    until(app, lambda: True)
    assert pod_creates(kube) == 1 and kube.pods(NAMESPACE) == []


def test_a_quota_full_for_now_keeps_the_build_waiting_with_its_reason(app, kube, jenkins_fake):
    """Room for one agent: the second build's pod is refused while the first holds the room.
    The build is kept, not failed, and waits as builds waiting for room do: its reason names
    the quota (a developer sees it in GitLab), the capacity metrics count it, and no node is
    asked for it (room in a quota is not room on nodes). It sat `queued` with no reason, left
    to RQ's retries. Once the first build ends, the release's re-drive makes its pod."""
    kube.add_resource_quota(NAMESPACE, "compute", {"requests.cpu": "3"})
    state = state_of(app)
    client = app.test_client()
    first = push(client, 0)
    until(app, lambda: state.get_build(first).get("status") == "triggered")
    second = push(client, 1)
    until(app, lambda: state.get_build(second).get("status") == "waiting")
    build = state.get_build(second)
    assert build["wait_reason"] == "quota" and not build.get("fail_reason"), build
    # 2.1 cores asked (2 and the agent's 100m) with 2.1 of 3 used: the plugin's quantities.
    assert build["wait_detail"] == ("ResourceQuota compute: requests.cpu 2100m of 3 used, "
                                    "the pod asks 2100m"), build["wait_detail"]
    reconcile.reconcile_once(runtime.current())  # the re-drive: refused again, still waiting
    work(app)
    assert state.get_build(second)["status"] == "waiting" and pod_creates(kube) == 3
    assert exported(app, 'ci_autoscaler_builds_waiting{reason="quota"}') == 1
    # Room in the quota is not room on nodes: with node-a cordoned (no node left for it), the
    # capacity state still asks no node for this build.
    kube.patch_node("node-a", {"spec": {"unschedulable": True}})
    rt = runtime.current()
    until(app, lambda: all(n.unschedulable for n in rt.view.snapshot()))
    scheduling.refresh_capacity(rt)
    assert exported(app, "ci_autoscaler_nodes_needed ") == 0
    kube.patch_node("node-a", {"spec": {"unschedulable": False}})
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == \
        [state.get_build(first)["agent"]]

    agent = state.get_build(first)["agent"]
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    for phase in ("COMPLETED", "FINALIZED"):
        client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                    json=completed(jenkins_fake, agent, phase))
    until(app, lambda: state.get_build(second).get("status") == "triggered")
    assert not state.get_build(second).get("wait_reason")
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == \
        [state.get_build(second)["agent"]]

def passed(app, done):
    """done() after a reconcile pass (the loop's re-drive of the waiting builds) and the jobs
    it queued, as the worker and the reconcile loop run in production."""
    def check():
        reconcile.reconcile_once(runtime.current())
        return done()
    return check


@pytest.mark.parametrize("count", ["pods", "count/pods"])
def test_a_pod_count_of_zero_pauses_builds_it_does_not_fail_them(app, kube, jenkins_fake, count):
    """An admin pausing CI in the namespace (`pods: 0`) is no pod's size: every pod asks 1 pod,
    more than 0 in all, and each build failed for good as pod_refused. It waits, and gets its
    pod once the admin lifts the pause (the next reconcile pass's re-drive)."""
    kube.add_resource_quota(NAMESPACE, "pause", {count: "0"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: pod_creates(kube) >= 1)
    until(app, passed(app, lambda: pod_creates(kube) >= 2))  # refused, and tried again
    build = state.get_build(key)
    assert build["status"] == "waiting" and not build.get("fail_reason"), build
    assert build["wait_detail"] == (f"ResourceQuota pause: {count} 0 of 0 used, the pod asks 1")
    # The admin's pause, told apart from a full quota: CIBuildsWaitingTooLong leaves it alone.
    assert build["wait_reason"] == "paused"
    assert exported(app, 'ci_autoscaler_builds_waiting{reason="paused"}') == 1
    assert exported(app, 'ci_autoscaler_builds_waiting{reason="quota"}') == 0
    # Its age is not the one the alert pages on (beside it, a build waiting minutes for
    # anything else paged with the pause's hours).
    assert exported(app, "ci_autoscaler_oldest_waiting_build_age_seconds ") > 0
    assert exported(app, "ci_autoscaler_oldest_unpaused_waiting_build_age_seconds ") == 0
    assert failures_counted(app, "pod_refused") == 0 and kube.pods(NAMESPACE) == []

    kube.add_resource_quota(NAMESPACE, "pause", {count: "10"})  # the admin lifts the pause
    until(app, passed(app, lambda: state.get_build(key).get("status") == "triggered"))
    # One agent name through every try: no pod was made, so none was placed again renamed.
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent"]]


def test_a_quota_on_cpu_limits_names_what_the_containers_lack_in_the_build_error(
        app, kube, jenkins_fake):
    """A quota on limits.cpu needs every container to name a CPU limit (pods.go
    Constraints); ours name none without cpuLimitFactor, so every pod is refused, 403 'failed
    quota: compute: must specify limits.cpu for: ...'. The build failed with a bare 'HTTP 403
    Forbidden' its developer could not act on; its error now says what the quota needs and
    what gives it."""
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "20"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "failed")
    build = state.get_build(key)
    assert build["fail_reason"] == "pod_refused"
    assert "ResourceQuota compute needs limits.cpu on every container" in build["error"], \
        build["error"]
    assert "cpuLimitFactor" in build["error"] and pod_creates(kube) == 1


def test_a_limit_range_default_meets_a_quota_on_cpu_limits(app, kube, jenkins_fake):
    """LimitRanger runs before ResourceQuota: its default CPU limit is on every container the
    quota counts, and the pod is admitted."""
    kube.add_limit_range(NAMESPACE, "defaults", [{"type": "Container", "default": {"cpu": "4"}}])
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "20"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "triggered")
    assert len(kube.pods(NAMESPACE)) == 1


def test_a_quota_on_cpu_limits_below_the_factor_s_limit_lowers_it_not_fails_the_build(
        make_app, kube, caplog):
    """A quota's limits.cpu below request x cpuLimitFactor (6300m over a 5 in all) refused
    the pod whatever else ran (checkRequest: requested above limited), and the build failed
    as never fitting, where a lower limit fits: the limit is lowered to the quota's (never
    below the request) and said."""
    app = make_app(text=FACTOR_3, node_cpu="16", node_memory="64Gi")
    # the agent's init container names no CPU limit: a default gives it one (the quota
    # needs one on every container, pods.go Constraints)
    kube.add_limit_range(NAMESPACE, "defaults", [{"type": "Container", "default": {"cpu": "1"}}])
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "5"})
    state = state_of(app)
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.kube")
    key = push(app.test_client(), 0)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))
    assert state.get_build(key)["status"] == "triggered", state.get_build(key).get("error")
    [pod] = kube.pods(NAMESPACE)
    resources = build_container(pod)["resources"]
    assert resources["requests"]["cpu"] == "2100m"  # the build's 2, the agent's 100m
    assert cpu_millis(resources["limits"]["cpu"]) == 5000, resources  # not 6300m
    assert pod_creates(kube) == 2  # refused once, sent again lowered
    said = [r.getMessage() for r in caplog.records if "ResourceQuota" in r.getMessage()]
    assert said == [f"cpu limits lowered to a ResourceQuota's limits.cpu of 5 in {NAMESPACE} "
                    "(down to the requests; the template's cpuLimitFactor above it had every "
                    "pod refused)"], said


def test_two_quotas_on_cpu_limits_lower_it_to_the_lower_one_not_fail_the_first_build(
        make_app, kube):
    """The plugin names the first quota a pod goes over and no other (checkRequest returns on
    it): lowered to the first's limits.cpu (5), the pod was refused by the second's (4), that
    refusal stood and the build failed as never fitting; one lowered again fits both."""
    app = make_app(text=FACTOR_3, node_cpu="16", node_memory="64Gi")
    kube.add_limit_range(NAMESPACE, "defaults", [{"type": "Container", "default": {"cpu": "1"}}])
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "5"})
    kube.add_resource_quota(NAMESPACE, "team", {"limits.cpu": "4"})
    state = state_of(app)
    key = push(app.test_client(), 0)
    until(app, lambda: state.get_build(key).get("status") in ("triggered", "failed"))
    assert state.get_build(key)["status"] == "triggered", state.get_build(key).get("error")
    [pod] = kube.pods(NAMESPACE)
    assert cpu_millis(build_container(pod)["resources"]["limits"]["cpu"]) == 4000
    assert pod_creates(kube) == 3  # refused by each quota once


def test_a_quota_on_cpu_limits_below_the_request_still_fails_the_build(
        make_app, kube):
    """Below the request (2100m) no limit fits: never, as before."""
    app = make_app(text=FACTOR_3)
    kube.add_limit_range(NAMESPACE, "defaults", [{"type": "Container", "default": {"cpu": "1"}}])
    kube.add_resource_quota(NAMESPACE, "compute", {"limits.cpu": "2"})
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "failed")
    build = state.get_build(key)
    assert build["fail_reason"] == "pod_refused" and "limits.cpu" in build["error"], build


def test_a_started_pipeline_held_by_a_quota_is_re_driven_not_restarted_as_stalled(
        app, kube, jenkins_fake):
    """The build is triggered beside its create, so the quota's refusal leaves it queued in
    Jenkins, and a Pipeline's run starts on the controller at once: its STARTED (REALITY.md,
    Notification plugin) makes it running, with no pod and no agent online, while it waits in
    the waiting set that every pass re-drives. restart_stalled took it for a provision that
    stopped half-way: one more provision queued and a "stalled build" warning every lease
    period, for each build the quota held, beside the re-drive's own try."""
    kube.add_resource_quota(NAMESPACE, "pause", {"pods": "0"})
    client = app.test_client()
    key = push(client, 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") == "waiting")
    [queued] = jenkins_fake.builds
    run = jenkins_fake.start_build(queued.queue_id)
    client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                json=jenkins_fake.notification(run, "STARTED"))
    until(app, lambda: state.get_build(key).get("status") == "running")
    assert state.get_build(key)["wait_reason"] == "paused"

    rt = runtime.current()
    later = time.time() + rt.settings.provision_lease_seconds * 20
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 0
    assert key in rt.capacity.waiting()  # the pass's re-drive tries it: that is enough


def test_a_quota_not_counted_yet_holds_the_build_it_does_not_fail_it(app, kube, jenkins_fake):
    """A quota made or changed moments ago, before the quota controller counted it: admission
    refuses every pod "status unknown for quota" (controller.go checkRequest, hasUsageStats)
    for the seconds until it syncs. Taken for the pod's own refusal, each build that met it
    failed for good as pod_refused; it waits, and the next pass places it."""
    kube.add_resource_quota(NAMESPACE, "compute", {"pods": "10"}, counted=False)
    key = push(app.test_client(), 0)
    state = state_of(app)
    until(app, lambda: state.get_build(key).get("status") in ("waiting", "failed"))
    build = state.get_build(key)
    assert build["status"] == "waiting" and build["wait_reason"] == "quota", build
    assert build["wait_detail"] == "ResourceQuota compute: use not counted yet"
    assert failures_counted(app, "pod_refused") == 0

    kube.add_resource_quota(NAMESPACE, "compute", {"pods": "10"})  # the controller synced it
    until(app, passed(app, lambda: state.get_build(key).get("status") == "triggered"))
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent"]]


def test_builds_paused_before_the_upgrade_are_left_out_of_the_wait_that_pages(
        monkeypatch, make_app, kube):
    """Builds a pause held before the upgrade that brought the `waiting-paused` mark have
    none, and a re-drive re-marks only those it tries: the first `provision_concurrency` of a
    template, as one that waits makes the template full for the rest of the pass. The others'
    age paged CIBuildsWaitingTooLong for the admin's pause, once the new rule was installed,
    until the pause was lifted (the rule before the upgrade stayed quiet while every waiting
    build was paused)."""
    monkeypatch.setenv("CI_AUTOSCALER_PROVISION_CONCURRENCY", "1")
    app = make_app(node_cpu="16", node_memory="64Gi")
    kube.add_resource_quota(NAMESPACE, "pause", {"pods": "0"})
    keys = [push(app.test_client(), n) for n in range(2)]
    state = state_of(app)
    until(app, lambda: all(state.get_build(k).get("wait_reason") == "paused"
                           for k in keys))
    rt = runtime.current()
    rt.state.redis.delete(rt.state.prefix + "waiting-paused")  # as written before
    reconcile.reconcile_once(rt)
    assert exported(app, 'ci_autoscaler_builds_waiting{reason="paused"}') == 2
    assert exported(app, "ci_autoscaler_oldest_unpaused_waiting_build_age_seconds ") == 0
