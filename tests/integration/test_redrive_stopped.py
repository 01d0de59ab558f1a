"""A re-drive ended at a chunk's checkpoint (SIGTERM, or the reconcile lease lost:
workers.adapters.run_bound) after one build's provision failed unexpectedly. That first error
is kept to be raised once every build is tried, and counted by whoever runs the pass; the stop
ended the re-drive first, and the error went uncounted, its trace never logged. Now it is
counted and logged before the stop goes on. A real redis-server whose ACL refuses RQ's
scheduled registry (test_redrive_redis_refusal), kmock over HTTP, the Jenkins fake."""

import logging

import pytest
import redis

from tests.integration.test_jenkins_token_refused import state_of
from tests.integration.test_job_refusals import OURS, run_worker
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_redrive_redis_refusal import REFUSED_PREFIX, TRIGGER, app, \
    every_key_but  # noqa: F401 (app: the fixture)
from tests.integration.test_start_failures import exported
from workers import runtime
from workers.engine import reconcile, redrive, tasks
from workers.adapters import run_bound

COUNTED = 'ci_autoscaler_errors_total{component="provision",kind="redis_unavailable"}'


def test_a_redrive_stopped_after_a_build_error_counts_and_logs_it(
        app, own_redis, kube, jenkins_fake, caplog):
    jenkins_fake.add_job("build", parameters=OURS)
    first, second, refused, after = (push(app.test_client(), n) for n in (1, 2, 3, 4))
    run_worker(app)
    state, rt = state_of(app), runtime.current()
    assert [state.get_build(k)["status"] for k in (refused, after)] == ["waiting"] * 2
    for key in (first, second):
        tasks.release_agent(key, state.get_build(key)["agent"])
    before = exported(app, COUNTED) if COUNTED in app.test_client().get(
        "/metrics").get_data(as_text=True) else 0.0
    # the first chunk's build (provision concurrency 1) fails: its retry cannot be queued
    jenkins_fake.fail_next(429, times=1, path_prefix=TRIGGER, headers={"Retry-After": "3600"})
    checkpoints = []

    def stop_at_the_second_chunk() -> None:
        checkpoints.append(1)
        if len(checkpoints) == 2:
            raise reconcile.Stopped()

    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "default", "resetkeys", *every_key_but(REFUSED_PREFIX))
    caplog.set_level(logging.ERROR, logger="ci_autoscaler.tasks")
    try:
        with run_bound.bounded(stop_at_the_second_chunk), pytest.raises(reconcile.Stopped):
            redrive.redrive(rt)
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "allkeys")

    assert state.get_build(refused)["status"] == "pod_created"  # its error was met
    assert state.get_build(after)["status"] == "waiting"  # the stop came before it
    # fails without the fix: nothing counted it, nor logged its trace
    assert exported(app, COUNTED) == before + 1
    assert any(r.exc_info and isinstance(r.exc_info[1], redis.RedisError)
               for r in caplog.records), caplog.records
