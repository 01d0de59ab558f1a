"""The intake on a real redis-server: a stored push becomes one provision job and its build
state, exactly once, whichever mover takes it, whenever a mover dies, whatever fails halfway."""

import logging
import threading

import orjson
import pytest
import redis

from tests.support.app import GITLAB_TOKEN
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture_bytes
from workers.adapters.catchup_store import CatchUpStore
from workers.adapters.redis_state import BuildStatus, RedisState
from workers.core.catchup import delivery_id as catch_up_delivery
from workers.core.errors import RetryableError
from workers.core.keys import agent_name
from workers.core.models import BuildRequest, EventKind, Route
from workers.core.routing import (
    AGENT_PARAMETER, BUILD_KEY_PARAMETER, Push, push_commit_key, route_push)
from workers.engine.intake import PROVISION_TASK, Mover, record
from workers.engine.spool_drain import SpooledPush

BUILD = {"build_key": "gitlab-p-q-main-1", "agent_name": "build-abc", "source": "gitlab",
         "project": "p/q", "ref": "refs/heads/main", "sha": "a" * 40, "user": "u",
         "job": "build", "template": "maven", "parameters": {"X": "1"},
         "received_at": 1700000000.5, "node_label": ""}


@pytest.fixture
def state(redis_conn):
    return RedisState(redis_conn)


def push(state, n: int, *, delivery: str = "d") -> list[str]:
    keys = []
    for i in range(n):
        build = BUILD | {"build_key": f"bk-{delivery}-{i}", "agent_name": f"agent-{i}"}
        assert state.intake.push(delivery_id=f"gitlab:{delivery}-{i}", mark=build["build_key"],
                                 record=record(f"gitlab:{delivery}-{i}", build), ttl_seconds=60)
        keys.append(build["build_key"])
    return keys


def provision_jobs(state) -> list[str]:
    """The build key of each provision job in the queue, in queue order."""
    return [job.kwargs["build"]["build_key"] for job in state.queue.get_jobs()
            if job.func_name == PROVISION_TASK]


def test_a_push_becomes_one_job_with_its_build_state(state, redis_conn):
    [key] = push(state, 1)
    assert state.queue.count == 0 and state.intake.counts() == (1, 0)
    assert Mover(state).drain() == 1
    [job] = state.queue.get_jobs()
    assert job.func_name == PROVISION_TASK
    assert job.kwargs == {"build": BUILD | {"build_key": key, "agent_name": "agent-0"}}
    build = state.get_build(key)
    assert build["status"] == "queued" and build["agent"] == "agent-0"
    assert orjson.loads(build["request"]) == job.kwargs["build"]
    assert state.build_for_agent("agent-0") == key and state.builds_since(0) == [key]
    assert state.intake.counts() == (0, 0)
    assert [k for k in redis_conn.keys("cia:intake*")] == []  # nothing claimed, no mover left


def test_the_same_delivery_is_stored_once(state):
    push(state, 1)
    assert not state.intake.push(delivery_id="gitlab:d-0", mark="bk-d-0",
                                 record=record("gitlab:d-0", BUILD), ttl_seconds=60)
    assert state.intake.counts() == (1, 0)


def test_movers_racing_over_the_intake_make_each_job_once(state, redis_url, redis_conn):
    keys = push(state, 300)
    movers = [Mover(RedisState(redis.Redis.from_url(redis_url)), batch=7) for _ in range(4)]
    made: list[int] = []
    barrier = threading.Barrier(len(movers))

    def run(mover: Mover) -> None:
        barrier.wait()
        made.append(mover.drain())

    threads = [threading.Thread(target=run, args=(m,)) for m in movers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(made) == 300 and len(made) == 4
    assert sorted(provision_jobs(state)) == sorted(keys)  # each once
    assert redis_conn.keys("cia:intake*") == []


def test_the_records_of_a_mover_that_died_go_to_another_and_become_jobs_once(state, redis_conn):
    keys = push(state, 5)
    dead = Mover(state, name="dead")
    state.intake.heartbeat(dead.name, 60)
    held = state.intake.claim(dead.name, 3)  # then it dies: no job made, no heartbeat renewed
    assert len(held) == 3 and state.intake.counts() == (2, 0)
    assert state.intake.recover() == 0  # its heartbeat still lives: nothing is taken from it
    redis_conn.delete(state.intake.heartbeat_key(dead.name))  # the heartbeat lapses
    assert state.intake.recover() == 3
    assert state.intake.counts() == (5, 0)
    assert Mover(state, name="other").drain() == 5
    assert sorted(provision_jobs(state)) == sorted(keys)
    # the "dead" mover was only slow: it wakes and converts what it held, and nothing happens
    assert [dead.convert(raw) for raw in held] == [False, False, False]
    assert len(provision_jobs(state)) == 5


def test_a_conversion_that_fails_halfway_keeps_the_record_for_the_next_try(state, redis_conn):
    [key] = push(state, 1)
    redis_conn.set(state.queue.key, "not a list")  # RQ's RPUSH fails inside the script
    mover = Mover(state, name="m")
    with pytest.raises(RetryableError):
        mover.drain()
    assert state.intake.counts() == (1, 0)  # back in the intake: the mover left
    redis_conn.delete(state.queue.key)
    assert mover.drain() == 1
    assert provision_jobs(state) == [key]
    assert state.get_build(key)["status"] == "queued"


def test_a_record_that_is_not_an_event_is_set_aside_and_logged(state, redis_conn, caplog):
    redis_conn.rpush("cia:intake", b"{not json", orjson.dumps({"build": {}}))
    push(state, 1)
    caplog.set_level(logging.ERROR, logger="ci_autoscaler.intake")
    assert Mover(state).drain() == 1
    assert state.intake.counts() == (0, 2)
    assert len([r for r in caplog.records if "set aside" in r.getMessage()]) == 2


def test_a_running_mover_makes_jobs_as_pushes_come_and_leaves_on_stop(state, redis_url,
                                                                        redis_conn):
    mover = Mover(RedisState(redis.Redis.from_url(redis_url)), name="live", block_seconds=0.2)
    thread, stop = mover.start()
    try:
        keys = push(state, 20)
        wait_until(lambda: len(provision_jobs(state)) == 20, timeout=30,
                   what="the running mover making 20 jobs")
        assert redis_conn.exists(state.intake.heartbeat_key("live"))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert sorted(provision_jobs(state)) == sorted(keys)
    assert not redis_conn.exists(state.intake.heartbeat_key("live"))
    assert state.intake.recover() == 0


def test_the_webhook_push_is_what_the_mover_reads(client, jobs):
    response = client.post("/webhooks/gitlab", data=fixture_bytes("gitlab_push_real_lrz.json"),
                           headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token":
                                    GITLAB_TOKEN, "Idempotency-Key": "w-1"})
    assert response.status_code == 202
    [job] = jobs()
    assert job.kwargs["build"]["build_key"] == response.json["build_key"]
    assert job.kwargs["build"]["project"] and job.kwargs["build"]["parameters"]


def _written(state, redis_conn, keys: list[str]) -> list[tuple]:
    """What the conversion wrote, without its times and ids: each build's state and job."""
    out = []
    for job in state.queue.get_jobs():
        build = state.get_build(job.kwargs["build"]["build_key"])
        out.append((job.func_name, job.kwargs, job.retries_left, job.timeout,
                    {k: v for k, v in build.items() if k not in ("queued_at",)}))
    return out + [redis_conn.zrange("cia:builds", 0, -1)]


def test_a_batch_converted_in_one_round_trip_writes_what_one_record_at_a_time_does(
        redis_conn):
    """The batched mover against its reference, `convert` one record at a time."""
    seen = []
    for way in ("one at a time", "batched"):
        redis_conn.flushdb()
        state = RedisState(redis_conn)
        keys = push(state, 20)
        mover = Mover(state, name="m")
        records = state.intake.claim("m", 64)
        made = sum(mover.convert(raw) for raw in records) if way == "one at a time" \
            else mover._convert_all(records)
        assert made == 20 and state.intake.counts() == (0, 0)
        assert redis_conn.llen(state.intake.claimed_key("m")) == 0
        seen.append(_written(state, redis_conn, keys))
    assert seen[0] == seen[1]


def test_a_batch_makes_each_record_once_when_part_was_made_already(state, redis_conn):
    keys = push(state, 6)
    mover = Mover(state, name="m")
    records = state.intake.claim("m", 64)
    assert mover.convert(records[2])  # made alone first (a conversion cut short, say)
    assert mover._convert_all(records) == 5
    assert sorted(provision_jobs(state)) == sorted(keys)


def test_a_push_the_catch_up_built_is_not_built_again_when_its_delivery_comes_late(state):
    """The catch-up built a commit whose push it never heard of (workers.engine.catchup); that push's
    delivery then arrives (spooled while Redis was away and drained late, or sent late) after
    the catch-up's build ended: a duplicate of that build, not a second one. The same commit
    pushed after the catch-up's run was made is a new run."""
    commit, made_at = "commit-key-1", 1700000100.0
    delivery = catch_up_delivery(commit)
    caught = BUILD | {"build_key": "run-catch-up", "received_at": made_at}
    assert state.intake.push(delivery_id=delivery, mark="run-catch-up",
                             record=record(delivery, caught), ttl_seconds=60, commit=commit,
                             run_ttl_seconds=60)
    assert Mover(state).drain() == 1
    state.update_build("run-catch-up", status=BuildStatus.RELEASED)  # its build ended

    def webhook(name: str, received_at: float):
        build = BUILD | {"build_key": f"run-{name}", "received_at": received_at}
        return state.intake.push(delivery_id=f"gitlab:{name}", mark=build["build_key"],
                                 record=record(f"gitlab:{name}", build), ttl_seconds=60,
                                 commit=commit, run_ttl_seconds=60, received_at=received_at)
    late = webhook("late", made_at - 30)
    assert not late
    assert (late.build_key, late.reason) == ("run-catch-up",
                                             "the catch-up built this push already")
    assert not webhook("at-zero", 0.0)  # any time before the catch-up's run: its duplicate
    pushed_again = webhook("again", made_at + 30)
    assert pushed_again and pushed_again.build_key == "run-again"
    assert state.intake.counts() == (1, 0)  # only the later push is waiting to be made a job


def test_a_spooled_push_keeps_when_it_was_received():
    event = SpooledPush(delivery_id="gitlab:d", mark="m", record=b"{}", ttl_seconds=60,
                        commit="c", run_ttl_seconds=60, received_at=1700000000.25)
    assert SpooledPush.from_bytes(event.to_bytes()) == event
    older = orjson.loads(event.to_bytes())
    del older["received_at"]  # a row spooled by the version before this field
    assert SpooledPush.from_bytes(orjson.dumps(older)).received_at is None


# The worker's routes now, and a config of before them (a new release renamed the job and
# moved its parameter) under which the web took the push that waited in the intake.
ROUTES_NOW = (Route(project="team/*", ref="refs/heads/*", job="team-build", template="maven",
                    parameters={"GIT_BRANCH": "{branch}"}),
              Route(project="*", ref="refs/tags/*", job="release", template="maven",
                    parameters={"TAG": "{tag}"}))
ROUTES_BEFORE = (Route(project="team/*", ref="refs/heads/*", job="build", template="small",
                       parameters={"BRANCH": "{ref}"}),
                 Route(project="gone/*", ref="refs/heads/*", job="build", template="small"))
SHA = "0123456789abcdef" * 2 + "01234567"


def _taken(state, push: Push, routes=ROUTES_BEFORE, *, delivery="d1", change=None) -> str:
    """A push the web took under `routes`, its record (changed by `change`) in the intake."""
    build = route_push(push, routes, received_at=1700000000.5, delivery=delivery).to_dict()
    build |= change or {}
    assert state.intake.push(delivery_id=f"gitlab:{delivery}", mark=build["build_key"],
                             record=record(f"gitlab:{delivery}", build), ttl_seconds=60)
    return build["build_key"]


@pytest.mark.parametrize("push, job, parameters", [
    (Push(EventKind.PUSH, "team/app", "refs/heads/feature/x", SHA, "alice",
          hints={"CI_AUTOSCALER_CPU": "4"}),
     "team-build", {"GIT_BRANCH": "feature/x", "CI_AUTOSCALER_CPU": "4"}),
    (Push(EventKind.TAG_PUSH, "team/app", "refs/tags/v1.0", SHA, ""), "release", {"TAG": "v1.0"}),
], ids=["branch", "tag"])
def test_a_push_taken_under_other_routes_is_built_as_the_routes_say_now(state, push, job,
                                                                        parameters):
    """A push that waited in the intake (or a web pod's spool) while the routes changed is
    built, as the worker's routes make it now: not set aside (issue 16: no push is lost)."""
    before = ROUTES_BEFORE + (Route(project="*", ref="refs/tags/*", job="tags", template="small"),)
    key = _taken(state, push, before)
    assert Mover(state, routes=ROUTES_NOW, installation="prod").drain() == 1
    assert state.intake.counts() == (0, 0)
    [queued] = state.queue.get_jobs()
    build = queued.kwargs["build"]
    agent = agent_name(job, key, "prod")
    assert (build["build_key"], build["job"], build["template"], build["agent_name"]) == \
        (key, job, "maven", agent)
    assert build["parameters"] == parameters | {AGENT_PARAMETER: agent, BUILD_KEY_PARAMETER: key}
    stored = state.get_build(key)
    assert (stored["job"], stored["agent"]) == (job, agent)
    assert orjson.loads(stored["request"]) == build


def test_a_forged_job_template_parameter_or_label_is_not_used(state):
    """The web's Redis user may append any record: of a push's record, only the push's own
    fields are taken; its job, template, parameters and agent label are the routes'."""
    push = Push(EventKind.PUSH, "team/app", "refs/heads/main", SHA, "mallory")
    key = _taken(state, push, ROUTES_NOW, change={
        "job": "deploy-prod", "template": "privileged", "node_label": "built-in",
        "agent_name": "cia-deploy-prod-000000000000",
        "parameters": {"TARGET": "prod", "GIT_BRANCH": "$(id)", "CI_AUTOSCALER_CPU": "2 $(id)"}})
    assert Mover(state, routes=ROUTES_NOW).drain() == 1
    [queued] = state.queue.get_jobs()
    agent = agent_name("team-build", key)
    assert queued.kwargs["build"] | {"received_at": 0} == BuildRequest(
        build_key=key, agent_name=agent, source="gitlab", project="team/app",
        ref="refs/heads/main", sha=SHA, user="mallory", job="team-build", template="maven",
        parameters={"GIT_BRANCH": "main", AGENT_PARAMETER: agent, BUILD_KEY_PARAMETER: key},
    ).to_dict()


def test_a_push_no_route_takes_any_more_is_ignored_and_logged(state, redis_conn, caplog):
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.intake")
    key = _taken(state, Push(EventKind.PUSH, "gone/app", "refs/heads/main", SHA, "bob"))
    assert Mover(state, routes=ROUTES_NOW).drain() == 0
    assert state.intake.counts() == (0, 0) and state.queue.count == 0  # not set aside
    assert state.get_build(key) == {}
    assert list(redis_conn.keys("cia:intake*")) == []
    [line] = [r for r in caplog.records if "no route takes" in r.getMessage()]
    assert line.reason == "no route for project 'gone/app' ref 'refs/heads/main'"


def test_a_push_no_route_takes_any_more_does_not_hold_its_commit_in_flight(state):
    """A push the web routed but the worker's routes do not (a rolling upgrade: the web's
    config has the route first) is dropped with no build state: its commit's run mark went
    with it, so that once the worker has the route the same commit pushed again (another
    delivery) builds, and the catch-up (which reads that mark as "built") builds the head.
    Kept, the mark named a run that never was, "in flight" until its TTL (7 days)."""
    push = Push(EventKind.PUSH, "gone/app", "refs/heads/main", SHA, "bob")
    commit = push_commit_key(push)

    def webhook(delivery: str):
        build = route_push(push, ROUTES_BEFORE, received_at=1700000000.5, delivery=delivery,
                           commit=commit).to_dict()
        return state.intake.push(delivery_id=f"gitlab:{delivery}", mark=build["build_key"],
                                 record=record(f"gitlab:{delivery}", build), ttl_seconds=60,
                                 commit=commit, run_ttl_seconds=60)
    assert webhook("d1")
    assert Mover(state, routes=ROUTES_NOW).drain() == 0  # no route in the worker: dropped
    assert CatchUpStore(state.redis).built([commit]) == set()
    again = webhook("d2")
    assert again, again.reason
    assert Mover(state, routes=ROUTES_BEFORE).drain() == 1  # the worker has the route now


def test_a_push_set_aside_does_not_hold_its_commit_in_flight(state):
    """A push the web took (its commit's run mark written) whose record the worker sets aside
    (its checks refuse it: a web of another release, whose rules differ) has no build state:
    its commit's run mark goes with it. Kept (30 days: RUN_MARK_MIN_TTL_SECONDS), it held
    the commit "in flight", a push of it again a duplicate, and the catch-up, which reads the
    mark as "built", never built it: the push was lost for good."""
    push = Push(EventKind.PUSH, "team/app", "refs/heads/main", SHA, "bob")
    commit = push_commit_key(push)

    def webhook(delivery: str, change: dict):
        build = route_push(push, ROUTES_NOW, received_at=1700000000.5, delivery=delivery,
                           commit=commit).to_dict() | change
        return state.intake.push(delivery_id=f"gitlab:{delivery}", mark=build["build_key"],
                                 record=record(f"gitlab:{delivery}", build), ttl_seconds=60,
                                 commit=commit, run_ttl_seconds=60)
    assert webhook("d1", {"received_at": "now"})
    assert Mover(state, routes=ROUTES_NOW).drain() == 0
    assert state.intake.counts() == (0, 1)  # set aside
    assert CatchUpStore(state.redis).built([commit]) == set()
    again = webhook("d2", {})
    assert again, again.reason
    assert Mover(state, routes=ROUTES_NOW).drain() == 1


@pytest.mark.parametrize("change", [
    {"ref": "refs/heads/a\nb"}, {"sha": "A" * 40}, {"project": "team/../ci"},
    {"user": "a\x00b"}, {"ref": 5}, {"build_key": "../x"}, {"source": "jenkins"},
    {"received_at": "now"},
])
def test_a_record_the_webhook_would_not_have_written_is_set_aside(state, change):
    _taken(state, Push(EventKind.PUSH, "team/app", "refs/heads/main", SHA, "eve"), ROUTES_NOW,
           change=change)
    assert Mover(state, routes=ROUTES_NOW).drain() == 0
    assert state.intake.counts() == (0, 1) and state.queue.count == 0
