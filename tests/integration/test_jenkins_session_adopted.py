"""An adopted agent whose block is done (workers.engine.adopted_done) is kept to its run's end
only after a Jenkins restart (a resumed block waits for it), told by Jenkins' session
(workers.agent_starts.jenkins_away); an outage resumes no block. Before, any failed call since
its pod was made kept it, idle, through every later stage of the run.
Real parts as in test_adoption (web app, redis-server, RQ worker, kmock, the Jenkins fake)."""

import time

import pytest

from tests.integration.test_adoption import (  # noqa: F401 (the fixtures)
    adopted_block_running, world)
from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_reruns import pods
from workers import runtime
from workers.core.errors import Unavailable
from workers.engine import reconcile


def test_an_outage_keeps_no_adopted_agent_whose_block_is_done(world, kube, jenkins_fake):
    rt = runtime.current()
    first, agent = adopted_block_running(world, jenkins_fake)
    reconcile.reconcile_once(rt)  # taken offline, its run and Jenkins' session recorded
    jenkins_fake.cut_off()  # Jenkins cannot be reached for a pass, and runs on
    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt, now=time.time() + 1)
    jenkins_fake.reachable()
    jenkins_fake.finish_node_block(first)  # stage one done; the run goes on
    jenkins_fake.next_node_block(first.run, "maven")

    assert reconcile.reconcile_once(rt, now=time.time() + 2)["adopted_agents_done"] == 1
    assert agent not in jenkins_fake.nodes and agent not in pods(kube)
    assert first.run.state == "running" and jenkins_fake.stopped_builds == []
