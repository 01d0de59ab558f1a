"""The re-drive moved out of workers.tasks into a module of its own (workers.engine.redrive now);
RQ jobs name their task by its dotted path, and jobs already queued in Redis before an upgrade
(or by workers of the previous release during a rolling one) name
`workers.tasks.redrive_waiting`. Such a job still
runs, through the real path (a GitLab push to the webhook, the worker's mover, an RQ
SimpleWorker, kmock over HTTP and the Jenkins fake)."""

import pytest

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, run_worker)
from tests.integration.test_jenkins_token_refused import state_of
from tests.integration.test_placement_on_cluster import push
from workers.engine import redrive, tasks
from workers.adapters.redis_state import JOB_FAILURE_TTL_SECONDS


@pytest.mark.parametrize("task", ["workers.tasks.redrive_waiting",
                                  "workers.engine.redrive.redrive_waiting"])
def test_a_redrive_job_queued_by_either_task_name_runs(app, kube, jenkins_fake, task):
    jenkins_fake.add_job("build", parameters=OURS)
    first, _, third = (push(app.test_client(), n) for n in (1, 2, 3))
    run_worker(app)
    state = state_of(app)
    assert state.get_build(third)["status"] == "waiting"  # the template's cap: 2

    tasks.release_agent(first, state.get_build(first)["agent"])
    # what this release queued is what every release queues: the name of earlier releases
    [queued] = state.queue.get_jobs()
    assert queued.func_name == redrive.REDRIVE_TASK == "workers.tasks.redrive_waiting"
    # kept as long as every other failed job, not RQ's default of a year (README: 7 days)
    assert queued.failure_ttl == JOB_FAILURE_TTL_SECONDS == 7 * 24 * 3600
    queued.delete()
    state.queue.enqueue(task, description="redrive waiting builds")  # as an older worker did
    run_worker(app)

    assert state.get_build(third)["status"] == "triggered"
    assert state.queue.failed_job_registry.count == 0
