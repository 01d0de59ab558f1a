"""Expiry on a real redis-server: a build's state and every index entry naming it are deleted
by the reconcile pass once CI_AUTOSCALER_BUILD_TTL_SECONDS has passed since it ended (driven
with an explicit `now`); delivery ids expire by their own TTL (set to one second here)."""

import time

from tests.integration.test_caps import complete
from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reruns import push
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile, retention
from workers.adapters import agent_counts
from workers.adapters.expiry import expire_ended
from workers.config.settings import RUN_MARK_MIN_TTL_SECONDS
from workers.adapters.redis_state import BuildStatus, RedisState
from workers.agent_starts.watch import queue_failure
from workers.core.start_failures import StartFailure

TTL_SECONDS = 600
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    podRetention: onFailure
    podRetentionSeconds: 60
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""
INDEXES = ("agents", "queue-items", "builds", "ended", "live-agents")


def mentions(redis_conn, key: str) -> list[str]:
    """Every place under our prefix that still names the build: keys, hash fields and values,
    set members."""
    found = []
    for name in redis_conn.scan_iter(match="cia:*"):
        name = name.decode()
        if key in name:
            found.append(name)
        kind = redis_conn.type(name).decode()
        if kind == "string" and redis_conn.get(name) == key.encode() and key not in name:
            found.append(f"{name}={key}")
        elif kind == "hash":
            found += [f"{name}[{f.decode()}]" for f, v in redis_conn.hgetall(name).items()
                      if key.encode() in (f, v)]
        elif kind in ("zset", "set"):
            members = redis_conn.zrange(name, 0, -1) if kind == "zset" \
                else redis_conn.smembers(name)
            found += [f"{name}{{{key}}}" for m in members if m == key.encode()]
    return found


def run_and_release(app, kube, jenkins_fake, key: str, status: str) -> str:
    agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    complete(app.test_client(), jenkins_fake, agent, status=status)
    work(app)
    return agent


def test_an_ended_builds_state_and_index_entries_go_after_the_ttl_and_its_delivery_id_sooner(
        make_world, kube, jenkins_fake, redis_conn):
    app = make_world(CONFIG, CI_AUTOSCALER_BUILD_TTL_SECONDS=str(TTL_SECONDS),
                     CI_AUTOSCALER_DEDUPE_TTL_SECONDS="1")
    key = push(app.test_client(), "delivery-1").json["build_key"]
    assert redis_conn.pttl("cia:delivery:gitlab:delivery-1") in range(1, 1001)
    work(app)
    run_and_release(app, kube, jenkins_fake, key, "SUCCESS")
    assert app.extensions["ci_autoscaler"].state.get_build(key)["status"] == "released"
    ended_at = redis_conn.zscore("cia:ended", key)
    [mark] = redis_conn.keys("cia:commit:*")  # the commit's latest run: this one
    assert sorted(m for m in mentions(redis_conn, key) if not m.startswith("cia:delivery:")) \
        == sorted([f"cia:build:{key}", "cia:builds{%s}" % key, "cia:ended{%s}" % key,
                   # written since the live agents were counted (none yet): the next
                   # pass's recount takes it off (workers.adapters.agent_counts)
                   "cia:agents-dirty{%s}" % key,
                   f"cia:queue-items[{jenkins_fake.builds[0].queue_id}]",
                   f"cia:agents[{app.extensions['ci_autoscaler'].state.get_build(key)['agent']}]",
                   f"{mark.decode()}={key}"])

    # The delivery ids (the push's, the release's) go by their own TTL, in real time.
    wait_until(lambda: not redis_conn.keys("cia:delivery:*"), timeout=10,
               what="the delivery ids expiring after their one-second TTL")
    # The commit's run mark goes with the run's state (its own TTL is a backstop, longer
    # than the build TTL: workers.config.settings.RUN_MARK_MIN_TTL_SECONDS).
    assert TTL_SECONDS < redis_conn.ttl(mark) <= RUN_MARK_MIN_TTL_SECONDS

    rt = runtime.current()
    assert reconcile.reconcile_once(rt, now=ended_at + TTL_SECONDS - 1)["builds_expired"] == 0
    assert f"cia:build:{key}" in mentions(redis_conn, key)
    assert reconcile.reconcile_once(rt, now=ended_at + TTL_SECONDS + 1)["builds_expired"] == 1
    assert mentions(redis_conn, key) == []
    assert reconcile.reconcile_once(rt, now=ended_at + TTL_SECONDS + 2)["builds_expired"] == 0


def test_a_retained_build_outlives_its_ttl_until_its_pod_is_deleted(
        make_world, kube, jenkins_fake, redis_conn):
    app = make_world(CONFIG, CI_AUTOSCALER_BUILD_TTL_SECONDS="30")
    key = push(app.test_client(), "delivery-1").json["build_key"]
    work(app)
    agent = run_and_release(app, kube, jenkins_fake, key, "FAILURE")
    state = app.extensions["ci_autoscaler"].state
    assert state.get_build(key)["status"] == "retained"
    rt = runtime.current()

    # The build ended more than a TTL ago, but its pod is kept for another 60 s: not expired.
    soon = time.time() + 31
    assert reconcile.reconcile_once(rt, now=soon)["builds_expired"] == 0
    assert state.get_build(key)["status"] == "retained" and kube.pod(NAMESPACE, agent)

    # Past the retention time its pod is deleted (the build ends again); a TTL after that,
    # its state goes.
    assert retention.delete_expired(rt, now=time.time() + 61) == 1
    assert state.get_build(key)["status"] == "released"
    released_at = redis_conn.zscore("cia:ended", key)
    assert expire_ended(state, now=released_at + 29, ttl_seconds=30) == 0
    assert expire_ended(state, now=released_at + 31, ttl_seconds=30) == 1
    assert state.get_build(key) == {}
    # the pass's next step: the live agents counted again, where the build was counted (when
    # retained) and marked written since (when released): a scrape meanwhile takes it off
    agent_counts.recount(state)
    # (the delivery ids go by their own TTL: the test above)
    assert [m for m in mentions(redis_conn, key) if not m.startswith("cia:delivery:")] == []


def test_expiry_goes_in_bounded_batches_oldest_first(redis_conn):
    state = RedisState(redis_conn)
    keys = [f"build-{i}" for i in range(5)]
    for i, key in enumerate(keys):  # build-0 failed: on the status page's failures too
        state.update_build(key, agent=f"agent-{i}",
                           status=BuildStatus.FAILED if i == 0 else BuildStatus.RELEASED)
        redis_conn.hset("cia:agents", f"agent-{i}", key)
        redis_conn.zadd("cia:ended", {key: 1000 + i})  # ended one second apart
    redis_conn.hset("cia:agents", "agent-4", "a-newer-build")  # no longer names build-4

    assert [k for k, _ in state.recent_failures(20)] == ["build-0"]
    assert expire_ended(state, now=1000 + 3 + 60, ttl_seconds=60, batch=2, max_batches=1) == 2
    assert state.recent_failures(20) == []
    assert [k.decode() for k in redis_conn.zrange("cia:ended", 0, -1)] == keys[2:]
    assert expire_ended(state, now=1000 + 9 + 60, ttl_seconds=60, batch=2, max_batches=5) == 3
    assert redis_conn.zcard("cia:ended") == 0
    assert redis_conn.hgetall("cia:agents") == {b"agent-4": b"a-newer-build"}
    assert not redis_conn.keys("cia:build:*")


def test_a_failed_builds_start_failure_mark_goes_with_its_state(redis_conn):
    """A build failed because its pod could not start: the workers' dedupe of its fail
    (start-failure:<key>, an hour's TTL) went only by that TTL, outliving a shorter build TTL
    (issue 15: the build's state gone after its expiry); it goes with the build's state now."""
    state = RedisState(redis_conn)
    state.update_build("failed-start", agent="agent-f", status=BuildStatus.POD_CREATED)
    assert queue_failure(state, "failed-start", "agent-f",
                         StartFailure("ImagePullBackOff", "pull refused"))
    state.update_build("failed-start", status=BuildStatus.FAILED, fail_reason="ImagePullBackOff")
    ended = redis_conn.zscore("cia:ended", "failed-start")
    assert redis_conn.exists("cia:start-failure:failed-start")
    assert expire_ended(state, now=ended + 60, ttl_seconds=60) == 1
    # (agents-dirty is the agent counts' to drain: agent_counts)
    assert [m for m in mentions(redis_conn, "failed-start") if "agents-dirty" not in m] == []
