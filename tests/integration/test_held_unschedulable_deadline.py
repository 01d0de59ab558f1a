"""A build kube-scheduler refused on every candidate, every try, waits as `unschedulable`,
its last pod left Pending to the scheduler, which binds it when a candidate frees up
(workers.agent_starts.unschedulable; issue 18). That pod's activeDeadlineSeconds has not begun
to run: the kubelet counts it from status.startTime, which only a kubelet that took the pod
sets, and a pod with no startTime is never past it (pkg/kubelet/active_deadline.go,
pastActiveDeadline). The repair that fails a pod still Pending past its deadline (one a node's
loss left bound, workers.engine.repairs) failed such a build as pod_failed, "no kubelet
started it", an hour after its pod was made, while its candidates ran long builds. Real
redis-server, kmock over HTTP, the Jenkins fake."""

import time

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import CONFIG, LEASE_SECONDS, \
    LOST_EVENT_SECONDS, pod_names, state_of
from tests.support.app import work
from workers import runtime
from workers.engine import reconcile
from workers.engine.repairs import DEADLINE_GRACE_SECONDS

DEADLINE = 600  # CONFIG's activeDeadlineSeconds
MESSAGE = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, CI_AUTOSCALER_PLACEMENT_CANDIDATES="1",
                          CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS),
                          CI_AUTOSCALER_PROVISION_LEASE_SECONDS=str(LEASE_SECONDS))


def test_a_pod_held_for_the_scheduler_is_not_failed_at_its_deadline(app, kube, jenkins_fake):
    key = push(app.test_client(), 1)
    work(app)
    (agent,) = pod_names(kube)
    made = time.time()
    kube.set_pod_unschedulable(NAMESPACE, agent, since=made, message=MESSAGE)
    rt = runtime.current()
    reconcile.reconcile_once(rt, now=made + 61)  # refused on its one candidate: held
    work(app)
    assert rt.capacity.unschedulable() == [key]
    assert state_of(app).get_build(key)["wait_reason"] == "unschedulable"

    past = made + DEADLINE + DEADLINE_GRACE_SECONDS + 60
    reconcile.reconcile_once(rt, now=past)
    work(app)

    state = state_of(app).get_build(key)
    assert state["status"] != "failed", state  # pod_failed, "no kubelet started it", before
    assert pod_names(kube) == [agent]  # left to the scheduler still
    assert rt.capacity.unschedulable() == [key]
    (build,) = jenkins_fake.builds
    assert build.state != "cancelled"
