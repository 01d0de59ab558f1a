"""A Jenkins STARTED goes through the intake (issue 17: the web's Redis user may no longer
write a build's record), and the worker's mover applies it (workers.engine.started). The web's
Redis user may append any record to the intake, so the mover checks a STARTED record as the
webhook checks the notification: these records are the ones a stolen web pod could write.
Real redis-server, the mover as the worker runs it."""

import logging
import time

import orjson
import pytest
import redis

from tests.integration.test_webhooks import jenkins
from tests.support.app import make_app
from tests.support.payloads import fixture
from workers.adapters.redis_state import RedisState
from workers.core.routing import AGENT_PARAMETER
from workers.engine import started
from workers.engine.intake import Mover, record

JENKINS = "https://jenkins.example.com"
KEY, AGENT, JOB = "0123456789abcdef0123", "cia-build-0123456789ab", "team/build"


@pytest.fixture
def state(redis_conn) -> RedisState:
    state = RedisState(redis_conn)
    state.intake.load_functions()
    state.add_build(KEY, {"received_at": 1000.0, "agent": AGENT, "job": JOB,
                          "template": "small", "project": "team/app"})
    state.update_build(KEY, status="triggered")
    return state


def _apply(state: RedisState, n: int = 1, **fields) -> dict[str, str]:
    """A STARTED record (the web's, with `fields` changed) in the intake, the mover run; the
    build's record after."""
    values = {"build_key": KEY, "job": JOB, "number": 7, "agent": AGENT, "queue_id": None,
              "build_url": f"{JENKINS}/job/team/job/build/7/", "received_at": 1001.5} | fields
    delivery = f"jenkins:started:test-{n}"
    assert state.intake.push(delivery_id=delivery, mark=KEY, ttl_seconds=60,
                             record=started.record(delivery, **values))
    assert Mover(state, jenkins_url=JENKINS).drain() == 0  # no job made of a STARTED
    assert state.intake.counts() == (0, 0)
    return state.get_build(KEY)


def test_a_started_builds_stage_is_when_the_web_received_it_not_when_the_mover_ran(state):
    """A fast build's COMPLETED (finished_at: the web's receipt) could be received before the
    mover applied its STARTED: stamped at the mover's time, `started` came after `finished`
    (test_issue20_operator saw it). A record of an older web, without the time, takes now."""
    assert float(_apply(state)["started_at"]) == 1001.5
    state.redis.hdel("cia:build:" + KEY, "started_at", "jenkins_build")
    state.update_build(KEY, status="triggered")
    before = time.time()
    assert float(_apply(state, 2, received_at=None, number=7)["started_at"]) >= before


def test_a_started_record_marks_its_build_running_with_its_page(state):
    build = _apply(state)
    assert (build["status"], build["jenkins_build"], build["build_url"]) == (
        "running", "7", f"{JENKINS}/job/team/job/build/7/")
    assert build["started_at"]
    assert KEY in state.live_build_keys()


@pytest.mark.parametrize("fields,reason", [
    ({"job": "deploy-prod"}, "names job 'deploy-prod'"),
    ({"agent": "cia-build-other"}, "names build None"),
    ({"build_key": "ffffffffffffffffffff"}, "not the record's 'ffffffffffffffffffff'"),
])
def test_a_forged_started_record_marks_nothing(state, caplog, fields, reason):
    """A record of another job's run, of an agent not ours, or naming another build than the
    run's: ignored and logged, as the webhook ignores such a notification; the build stays
    as it was."""
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.intake")
    build = _apply(state, **fields)
    assert build["status"] == "triggered" and "jenkins_build" not in build
    assert [r.getMessage() for r in caplog.records if reason in getattr(r, "reason", "")] \
        == ["started notification ignored"]


def test_a_started_of_another_run_than_the_builds_marks_nothing(state):
    """A Replay copies the build's agent parameter: its STARTED is not the build's run."""
    _apply(state)
    build = _apply(state, 2, number=8)
    assert (build["status"], build["jenkins_build"]) == ("running", "7")


def test_a_started_record_links_no_page_but_under_the_workers_jenkins(state):
    """The record's page is anyone's who holds the web's Redis user: one off Jenkins is
    replaced by the run's page under the worker's Jenkins URL."""
    build = _apply(state, build_url="https://evil.example.net/job/team/job/build/7/")
    assert build["build_url"] == f"{JENKINS}/job/team/job/build/7/"


def test_a_started_record_does_not_make_a_gone_builds_record_again(state):
    state.redis.delete(f"cia:build:{KEY}")
    assert _apply(state) == {}


def test_a_late_started_leaves_an_ended_build_ended(state):
    state.update_build(KEY, status="released")
    assert _apply(state)["status"] == "released"


@pytest.mark.parametrize("fields", [{"number": "7"}, {"number": True}, {"job": None},
                                    {"build_key": 5}, {"queue_id": "1"}, {"agent": 3},
                                    {"received_at": "1001.5"}, {"received_at": False}])
def test_a_started_record_of_the_wrong_shape_is_set_aside(state, fields):
    record = orjson.loads(started.record("jenkins:started:bad", build_key=KEY, job=JOB,
                                         number=7, agent=AGENT, queue_id=None, build_url="",
                                         received_at=1001.5))
    record["started"].update(fields)
    state.redis.rpush("cia:intake", orjson.dumps(record))
    Mover(state, jenkins_url=JENKINS).drain()
    assert state.intake.counts() == (0, 1)
    assert state.get_build(KEY)["status"] == "triggered"


def test_the_webhook_ignores_and_counts_another_jobs_started(redis_url):
    """The webhook checks the job as the mover does: another job's STARTED naming our agent
    is not stored at all, and is counted as an ignored notification."""
    state = RedisState(redis.Redis.from_url(redis_url))
    state.add_build(KEY, {"received_at": 1000.0, "agent": AGENT, "job": "build"})
    client = make_app(redis_url).test_client()
    payload = fixture("jenkins_notification_completed_unstable.json")
    payload["build"]["parameters"][AGENT_PARAMETER] = AGENT
    payload.update(name="deploy-prod", url="job/deploy-prod/")
    payload["build"].update(phase="STARTED")

    answer = jenkins(client, payload).json

    assert answer["status"] == "ignored" and "deploy-prod" in answer["reason"]
    assert state.intake.counts() == (0, 0)
    assert 'ci_autoscaler_notifications_ignored_total{reason="job_mismatch"} 1.0' in \
        client.get("/metrics").text


# A STARTED record as the web writes it since 2026-12-06 (workers.engine.started.record), byte
# for byte, on the failed list where a worker of an earlier release (before that web's records,
# e.g. 5af0c86f) put it during a rolling upgrade: "intake record is not an event; set aside"
# (KeyError: 'build'), seen with that release's worker beside today's web.
OLD_WORKER_SET_ASIDE = (
    b'{"delivery":"jenkins:started:0123456789abcdef0123:7","started":{"build_key":'
    b'"0123456789abcdef0123","job":"team/build","number":7,"agent":"cia-build-0123456789ab",'
    b'"queue_id":4,"build_url":"https://jenkins.example.com/job/team/job/build/7/",'
    b'"received_at":1001.5}}')


def test_a_started_set_aside_behind_a_thousand_kept_records_is_applied_too(state):
    """Each pass looked at the failed list's first 1,000 records only: behind 1,000 this
    release keeps there (pushes set aside for what they hold, left for the runbook), a
    STARTED an earlier release's worker set aside was never applied, and the build stayed
    `triggered`. A pass reads on from where the last one ended."""
    kept = [record(f"gitlab:late-{n}", {
        "build_key": f"{n:020x}", "agent_name": "cia-x", "source": "gitlab",
        "project": "team/app", "ref": "refs/heads/main", "sha": "b" * 40, "user": "u",
        "job": "build", "template": "small", "parameters": {}, "received_at": 1000.0,
        "node_label": ""}) for n in range(1_000)]
    state.redis.rpush("cia:intake:failed", *kept, OLD_WORKER_SET_ASIDE)
    mover = Mover(state, jenkins_url=JENKINS)
    for _ in range(2):  # its first two passes (one each HEARTBEAT_SECONDS)
        assert mover.drain() == 0
    assert state.get_build(KEY)["status"] == "running"
    assert state.redis.lrange("cia:intake:failed", 0, -1) == kept
    for _ in range(3):  # round the list again: nothing more is taken, nothing is lost
        assert mover.drain() == 0
    assert state.redis.lrange("cia:intake:failed", 0, -1) == kept
    assert state.intake.counts() == (0, 1_000) and state.queue.count == 0


def test_a_started_an_earlier_releases_worker_set_aside_is_applied_by_this_one(state):
    """Left on the failed list, the build stayed `triggered` and CIWebhookIntakeFailed paged
    for a push "not made a job" until someone moved the record back by hand. What this
    release cannot read either stays there, once (no loop through the intake)."""
    unreadable = orjson.dumps({"delivery": "x", "started": {"build_key": KEY, "number": "7"}})
    push = record("gitlab:late", {"build_key": "fedcba9876543210fedc", "agent_name": "cia-x",
                                  "source": "gitlab", "project": "team/app",
                                  "ref": "refs/heads/main", "sha": "b" * 40, "user": "u",
                                  "job": "build", "template": "small", "parameters": {},
                                  "received_at": 1000.0, "node_label": ""})
    state.redis.rpush("cia:intake:failed", OLD_WORKER_SET_ASIDE, unreadable, push)

    assert Mover(state, jenkins_url=JENKINS).drain() == 0
    build = state.get_build(KEY)
    assert (build["status"], build["jenkins_build"], build["started_at"]) == (
        "running", "7", "1001.5")
    assert state.redis.lrange("cia:intake:failed", 0, -1) == [unreadable, push]
    assert Mover(state, jenkins_url=JENKINS).drain() == 0
    assert state.intake.counts() == (0, 2) and state.queue.count == 0
