"""A claimed warm agent's build whose queue item was never written down (its provision's
worker killed after Jenkins took the trigger: trigger_attempted_at, no queue_item), failed
half-way as a re-drive fails a build it cannot provision for good (workers.engine.failures.
fail_unprovisionable: Jenkins struggling as the fail looks for its item by its agent
parameter), is finished by the next pass's lost warm agents' look (workers.warm.lost ->
lost_running.finish_failed): its item found and cancelled, its warm pod and Jenkins node
gone. Before, that look went only by builds with a queue item: the claimed warm pod stood
until the build's record expired (the start-failure sweep finds no build of a warm pod, whose
build-key label is its own name), and its item waited in Jenkins on the label of an agent
whose build had failed.

Real redis-server, kmock over HTTP, the Jenkins fake; the set-up of test_warm_lost."""

import json

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import pool_of, record
from tests.integration.test_warm_lost import CONFIG, claimed, queue_item
from workers import runtime
from workers.core.errors import PermanentError
from workers.core.models import BuildRequest
from workers.engine import failures, reconcile


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE,
                          nodes=(("node-a", "8", "32Gi"), ("node-b", "8", "32Gi")))


def test_a_half_way_fail_of_a_warm_build_with_no_queue_item_is_finished_by_the_next_pass(
        app, kube, jenkins_fake):
    [(key, agent)] = claimed(app, kube, jenkins_fake)
    item = queue_item(jenkins_fake, agent)
    rt = runtime.current()
    # its worker was killed after Jenkins took the trigger: the item never written down
    rt.state.redis.hdel(f"{rt.state.prefix}build:{key}", "queue_item")
    rt.state.update_build(key, status="pod_created")
    assert record(app, key).get("trigger_attempted_at")
    request = BuildRequest.from_dict(json.loads(record(app, key)["request"]))
    # Jenkins struggles as the fail looks for the item by its agent (its queue read)
    jenkins_fake.fail_next(429, times=20, path_prefix="/queue/",
                           headers={"Retry-After": "120"})
    failures.fail_unprovisionable(rt, request, PermanentError("job refused"))
    build = record(app, key)
    assert (build["status"], build["fail_reason"]) == ("failed", "provision_failed"), build
    assert "queue_item" not in build and kube.pod(NAMESPACE, agent) is not None
    jenkins_fake.clear_failures()

    passed, error = reconcile.reconcile_pass(rt)

    assert error is None, error
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert agent not in {e.name for e in pool_of(rt)}
    assert [b.state for b in jenkins_fake.builds if b.queue_id == item] == ["cancelled"]
    assert record(app, key)["fail_reason"] == "provision_failed"
