"""The web paths test_web_redis_acl.py does not take, under the chart's narrowed web user
(writes only to the keys the web writes, %R~ on the rest): a GitLab Resend (same
Idempotency-Key) and a duplicate delivery, a system hook's push, tag and branch deletes, a push
no route takes or from another GitLab, pushes and Jenkins notifications spooled while Redis
could not take them and drained by the web's own drainer, QUEUED, an end of a build not ours,
/status with warm agents and waiting builds, and /metrics across a counter's drop. Redis's own
ACL LOG (a real redis-server started with the chart's command) must stay empty."""

import json

import redis

from service.app import drainer
from tests.integration.test_web_redis_acl import _chart_redis, chart_redis  # noqa: F401
from tests.integration.test_webhooks import PUSH, gitlab, jenkins
from tests.support.app import make_app
from tests.support.helm_chart import env_of
from tests.support.payloads import fixture, fixture_bytes
from tests.support.sentinel import MASTER_NAME, sentinel_set  # noqa: F401 (the fixture)
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState
from workers.core.routing import AGENT_PARAMETER
from workers.engine.intake import Mover
from workers.engine.spool_drain import spool_note
from workers.telemetry.metrics import EngineMetrics

ZERO = "0" * 40


def _note(agent: str, phase: str, **build) -> dict:
    payload = fixture("jenkins_notification_completed_unstable.json")
    payload["build"]["parameters"][AGENT_PARAMETER] = agent
    payload.update(name="build", url="job/build/")
    payload["build"].update(phase=phase, **build)
    return payload


def test_the_web_paths_the_other_tests_skip_get_no_refusal(chart_redis, tmp_path):  # noqa: F811
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state = RedisState(admin)
    worker_state.intake.load_functions()
    admin.set("cia:commit-status:on", "1", px=600_000)  # a commit-status sender is alive
    app = make_app(web_url, spool_dir=str(tmp_path / "spool"))
    client = app.test_client()
    ctx = app.extensions["ci_autoscaler"]
    answers = {}

    # a push, GitLab's Resend of it (same Idempotency-Key), another delivery of the commit
    first = gitlab(client, **{"Idempotency-Key": "more-1"})
    answers["push"] = first.status_code
    answers["resend"] = gitlab(client, **{"Idempotency-Key": "more-1"}).json["status"]
    answers["redelivery"] = gitlab(client, **{"Idempotency-Key": "more-2"}).json["status"]
    # a system hook's push: no object_kind, no user_username
    push = json.loads(PUSH)
    system = {k: v for k, v in push.items() if k not in ("object_kind", "user_username")}
    answers["system"] = gitlab(client, json.dumps(system | {"after": "1" * 40,
                                                            "checkout_sha": "1" * 40}),
                               event="System Hook", **{"Idempotency-Key": "more-3"}).status_code
    # tag delete, branch delete, a push no route takes
    answers["tag delete"] = gitlab(client, fixture_bytes("gitlab_tag_push_delete_real_lrz.json"),
                                   event="Tag Push Hook").status_code
    answers["branch delete"] = gitlab(client, json.dumps(push | {
        "after": ZERO, "checkout_sha": None, "commits": [], "total_commits_count": 0}),
        **{"Idempotency-Key": "more-4"}).status_code
    answers["no route"] = gitlab(client, json.dumps(push | {"ref": "refs/merge-requests/1/head"}),
                                 **{"Idempotency-Key": "more-5"}).status_code
    # another GitLab's push, to an installation that serves one
    served = make_app(web_url, gitlab_instance="https://gitlab.example.org").test_client()
    answers["foreign"] = gitlab(served, **{"Idempotency-Key": "more-6",
                                           "X-Gitlab-Instance": "https://other.example.org"}
                                ).status_code
    Mover(worker_state).drain()
    build_key = first.json["build_key"]
    agent = worker_state.get_build(build_key)["agent"]

    # QUEUED, and an end of a build not on our agents
    answers["queued"] = jenkins(client, _note(agent, "QUEUED")).json["status"]
    answers["unknown end"] = jenkins(client, _note("cia-build-000000000000", "COMPLETED",
                                                   number=99999)).json["status"]

    # Redis could not take them: spooled, then drained by the web's own drainer
    admin.function_flush()
    answers["spooled push"] = gitlab(client, json.dumps(push | {"after": "2" * 40,
                                                                "checkout_sha": "2" * 40}),
                                     **{"Idempotency-Key": "more-7"}).json["status"]
    for n, phase in enumerate(("STARTED", "COMPLETED", "FINALIZED")):
        spool_note(ctx.spool, f"jenkins:more-{n}", _note(agent, phase, status="SUCCESS"),
                   received_at=1000.0 + n)
    Mover(worker_state).drain()  # a worker loads the functions again
    answers["drained"] = drainer(ctx).drain()
    Mover(worker_state).drain()

    # /status with warm agents and waiting builds; /metrics across a counter's drop
    admin.hset("cia:warm:small", "cia-warm-small-1", json.dumps({"state": "ready"}))
    admin.hset("cia:warm-sizes", "small", 2)
    worker_state.update_build("more-waiting", status="waiting", project="team/app", job="build",
                              ref="refs/heads/w", template="small", wait_reason="capacity",
                              received_at=1000)
    CapacityStore(admin).add_waiting("more-waiting", 1000)
    worker_metrics = EngineMetrics(admin)
    for _ in range(3):
        worker_metrics.agent_created("small", received_at=1000)
    answers["status"] = client.get("/status").status_code
    answers["metrics"] = client.get("/metrics").status_code
    admin.delete("cia:metrics:ci_autoscaler_agents_created_total")  # Redis lost them
    worker_metrics.agent_created("small", received_at=1000)
    second = client.get("/metrics").get_data(as_text=True)

    assert answers == {
        "push": 202, "resend": "duplicate", "redelivery": "duplicate", "system": 202,
        "tag delete": 200, "branch delete": 200, "no route": 200, "foreign": 200,
        "queued": "ignored", "unknown end": "ignored", "spooled push": "spooled", "drained": 4,
        "status": 200, "metrics": 200}, answers
    assert 'ci_autoscaler_agents_created_total{template="small"} 3.0' in second  # 1 read + 2 lost
    # the spooled STARTED, drained into the intake, marked it running through the worker's
    # mover (the web's user may only read a build's record); its end waits as a release job
    assert admin.hget(f"cia:build:{build_key}", "status") == b"running"
    # The one refusal: the web's try to load the functions Redis lost (FUNCTION LOAD, which
    # its user never had, before this ACL either; the push is spooled, as designed). Not
    # one key refused.
    assert [(e["reason"], e["object"]) for e in admin.acl_log()] == [("command", "function|load")]


def test_the_web_in_sentinel_mode_gets_no_refusal_under_the_charts_user(sentinel_set):
    """The web started with REDIS_SENTINELS (the master found through the sentinels, and a
    push's WAIT for a replica: redis_min_replicas 1 with Sentinel), logged in to the master as
    the chart's web user with the chart's rules: a push, a STARTED and a COMPLETED, /readyz,
    /status and /metrics, without one refusal in the master's ACL LOG."""
    container, _web_url, _secret = _chart_redis("redis-sentinel")
    env = env_of(container)
    user, rules = env["REDIS_WEB_USER"]["value"], env["REDIS_WEB_ACL"]["value"]
    for node in (sentinel_set.master, sentinel_set.replica):  # ACL SETUSER is not replicated
        node.client().execute_command("ACL", "SETUSER", user, "on", ">web-pw", *rules.split())
    admin = sentinel_set.master.client()
    worker_state = RedisState(admin)
    worker_state.intake.load_functions()
    admin.set("cia:commit-status:on", "1", px=600_000)
    # REDIS_URL's host is not used with sentinels (port 1 answers nothing); its user is
    client = make_app(f"redis://{user}:web-pw@127.0.0.1:1/0",
                      redis_sentinels=sentinel_set.addresses,
                      redis_sentinel_master=MASTER_NAME).test_client()

    push = gitlab(client, **{"Idempotency-Key": "sentinel-more-1"})
    assert push.status_code == 202 and push.json["status"] == "queued", push.json
    Mover(worker_state).drain()
    agent = worker_state.get_build(push.json["build_key"])["agent"]
    assert jenkins(client, _note(agent, "STARTED")).json["status"] == "recorded"
    assert jenkins(client, _note(agent, "COMPLETED", status="SUCCESS")).json["status"] == "queued"
    for path in ("/readyz", "/status", "/metrics"):
        assert client.get(path).status_code == 200, path

    assert admin.acl_log() == []
