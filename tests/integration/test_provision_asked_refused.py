"""A provision whose first Redis call under its lease fails lets the lease go.

The provision reads the re-drive counter (workers.engine.redrive.ASKED) once it holds its
build's lease; that read came before the try whose finally lets the lease go, so a Redis error
there (a dropped connection, a failover's READONLY or LOADING, an ACL) left the lease held for
its whole time to live: every provision of the build until then (RQ's retries of this one, the
next re-drive) met "being provisioned by another task". Here a real redis-server's ACL refuses
that counter's key; the webhook, the worker's mover, an RQ SimpleWorker, kmock over HTTP and
the Jenkins fake make the waiting build.
"""

import json

import pytest
import redis

from tests.integration.test_jenkins_token_refused import state_of
from tests.integration.test_job_refusals import OURS, run_worker
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_redrive_redis_refusal import app, every_key_but  # noqa: F401
from workers import runtime
from workers.core.models import BuildRequest
from workers.engine import redrive, tasks


def test_a_redis_error_reading_the_counter_lets_the_lease_go(app, own_redis, jenkins_fake):
    jenkins_fake.add_job("build", parameters=OURS)
    keys = [push(app.test_client(), n) for n in (1, 2, 3)]
    run_worker(app)
    state, rt = state_of(app), runtime.current()
    waiting = keys[-1]
    assert state.get_build(waiting)["status"] == "waiting"  # room for two
    request = BuildRequest.from_dict(json.loads(state.get_build(waiting)["request"]))
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "default", "resetkeys",
                          *every_key_but(rt.state.prefix + redrive.ASKED))
    try:
        with pytest.raises(redis.RedisError):
            tasks._provision(rt, request)
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "allkeys")
    # fails without the fix: held until its time to live (20 s here, 60 s by default)
    assert not admin.exists(tasks.lease_key(rt, waiting))
    assert "waiting" in tasks._provision(rt, request)  # the next one is not turned away
