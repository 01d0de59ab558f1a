"""A re-drive whose handling of one build meets a Redis error goes on with the others.

Redis can refuse a write in the middle of a pass (an ACL, a READONLY replica after a
failover, OOM under maxmemory with noeviction). Here a real redis-server's ACL refuses RQ's
scheduled registry (``rq:scheduled:*``), which in a re-drive only the retry of a placed
build's failed trigger writes (workers.engine.trigger_retry): that build's retry cannot be queued.
The builds after it were then never tried until the next release or reconcile pass; now they
are placed in the same pass, and the failed one is provisioned again by the reconcile pass's
restart of stalled builds. Through the real path: GitLab pushes to the webhook, the worker's
mover, an RQ SimpleWorker, kmock over HTTP and the Jenkins fake."""

import pytest
import redis

from tests.integration.test_job_refusals import LEASE_SECONDS, OURS, pod_creates, run_worker
from tests.integration.test_jenkins_token_refused import state_of
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import cluster_app
from workers import runtime
from workers.engine import redrive, repairs, tasks
from workers.core.routing import BUILD_KEY_PARAMETER

TRIGGER = "/job/build/buildWithParameters"
REFUSED_PREFIX = "rq:scheduled:"


def every_key_but(prefix: str) -> list[str]:
    """ACL key patterns for every key not starting with `prefix` (Redis ACLs only allow: the
    glob's [^c] reads "any character but c", util.c stringmatchlen)."""
    patterns = [f"~{prefix[:i]}[^{prefix[i]}]*" for i in range(len(prefix))]
    return patterns + [f"~{prefix[:i]}" for i in range(1, len(prefix))]


@pytest.fixture
def app(monkeypatch, tmp_path, own_redis, kube, jenkins_fake):
    """test_job_refusals' app on a redis-server of its own (its ACL changed), one build
    provisioned at a time: a re-drive's chunks are one build each, in arrival order."""
    from tests.integration.test_job_refusals import CONFIG
    with cluster_app(monkeypatch, tmp_path, redis_url=own_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE,
                     CI_AUTOSCALER_PROVISION_LEASE_SECONDS=str(LEASE_SECONDS),
                     CI_AUTOSCALER_PROVISION_CONCURRENCY="1") as app:
        yield app


def test_a_redis_refusal_for_one_build_does_not_stop_the_rest_of_the_redrive(
        app, own_redis, kube, jenkins_fake):
    jenkins_fake.add_job("build", parameters=OURS)
    first, second, refused, after = (push(app.test_client(), n) for n in (1, 2, 3, 4))
    run_worker(app)
    state, rt = state_of(app), runtime.current()
    assert [state.get_build(k)["status"] for k in (refused, after)] == ["waiting"] * 2
    for key in (first, second):  # two slots free: both waiting builds fit
        tasks.release_agent(key, state.get_build(key)["agent"])
    # The first one's trigger is refused by a rate-limiting proxy for longer than the adapter
    # blocks: its retry goes to RQ's scheduled registry, which Redis refuses now.
    jenkins_fake.fail_next(429, times=1, path_prefix=TRIGGER, headers={"Retry-After": "3600"})
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "default", "resetkeys", *every_key_but(REFUSED_PREFIX))
    try:
        with pytest.raises(redis.RedisError):  # still told, once every build was tried
            redrive.redrive(rt)
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "allkeys")

    assert state.get_build(refused)["status"] == "pod_created"  # placed, not triggered
    # fails without the fix: the pass stopped at the refused build, this one still waits
    assert state.get_build(after)["status"] == "triggered"
    assert after not in rt.capacity.waiting()

    # Not lost: the reconcile pass's restart of stalled builds provisions it again.
    # (ten lease periods: the releases' own re-drive job is still queued)
    later = float(state.get_build(refused)["updated_at"]) \
        + LEASE_SECONDS * repairs.STALL_PERIODS_WHILE_QUEUED + 1
    assert repairs.restart_stalled(rt, repairs.open_builds(rt, later),
                                   rt.cluster.list_pods(), later) == 1
    run_worker(app)
    assert state.get_build(refused)["status"] == "triggered"
    keys = sorted(b.parameters[BUILD_KEY_PARAMETER] for b in jenkins_fake.builds)
    assert keys == sorted([first, second, refused, after])  # each triggered once
    assert len(pod_creates(kube)) == 4  # the refused build's pod found, not made again

