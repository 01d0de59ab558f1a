"""A running Pipeline build on a claimed warm agent that has seen a Jenkins restart since its
claim, whose pod Kubernetes then stops (evicted, its node shut down), goes the lost-agent way
as a build on an agent of its own does (workers.warm.lost -> workers.warm.lost_running ->
workers.engine.failures -> workers.engine.lost_runs): its run is left to decide, its Jenkins
node deleted so that its `retry(conditions: [agent()])` runs the block again. Before, the lost
warm agents' look passed over every running build that had seen a restart since its claim,
and the pass's repairs released it as a pod that ended (`pod_ended`): its run waited in
Jenkins for an agent that never came back, and GitLab was told nothing of why.

Real redis-server, kmock over HTTP, the Jenkins fake (its restart resumes the block on the
agent's own label; Jenkins' away is recorded by the reconcile passes that meet it)."""

import time

import pytest

from tests.integration.test_disrupted_agents import LOST, disrupt
from tests.integration.test_jenkins_restart import away_for
from tests.integration.test_lost_warm_pipeline_runs import pipeline_on_warm_agent, shown
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported
from tests.integration.test_warm_agents import pool_of, record
from tests.integration.test_warm_lost import CONFIG
from tests.support.app import work
from workers import runtime
from workers.agent_starts import jenkins_away
from workers.engine import lost_runs, reconcile


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE,
                          nodes=(("node-a", "8", "32Gi"), ("node-b", "8", "32Gi")))


def test_a_pipeline_on_a_warm_agent_evicted_after_a_restart_is_left_to_decide(
        app, kube, jenkins_fake):
    key, agent, block = pipeline_on_warm_agent(app, kube, jenkins_fake, agent_retry_count=2)
    run = block.run
    rt = runtime.current()
    returned = away_for(rt, jenkins_fake, time.time() + 1, 5)
    assert jenkins_away.last(rt.state) >= float(record(app, key)["warm_claimed_at"])
    jenkins_fake.connect_agent(agent)  # the agent reconnects; its block resumes there
    [(_, node)] = jenkins_fake.dispatch()
    assert node == agent

    disrupt(kube, jenkins_fake, agent, "evicted")
    work(app)  # the worker's watch sees no build of a warm pod
    reconcile.reconcile_once(rt, now=returned + 1)

    build = record(app, key)
    assert build["status"] == "running" and not build.get("fail_reason"), build
    assert "Evicted" in build.get(lost_runs.LOST_RUN_FIELD, ""), build
    assert "warm_agent" not in build, build
    assert jenkins_fake.stopped_builds == [] and run.state == "running"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert agent not in {e.name for e in pool_of(rt)}
    assert shown(app, key).state == "running"
    assert exported(app, LOST) == 1
    (again,) = jenkins_fake.removed_node_timeout()  # Jenkins ends the block: the retry's
    assert again.run is run and again.label == agent
