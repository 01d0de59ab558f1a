"""The web's Redis user, as the Helm chart makes it: a real redis-server started with the
StatefulSet's own command and environment, the web app on the URL the chart gives the web.

The web path (a push, a Jenkins STARTED and COMPLETED, /healthz, /readyz, /metrics, /status)
runs without one refusal in Redis's ACL LOG; the web's user is refused CONFIG, EVAL, SCRIPT,
FUNCTION LOAD, EVALSHA, and any access to rq:job:*, directly or through a function. Issue 17: a
web pod with the full Redis password could write a job for the worker to run. Both shapes of the
bundled Redis are started: the one instance, and a pod of redis.sentinel.enabled (whose master
the web finds through the sentinels, and logs in to as its own user all the same)."""

import base64
import logging
import shlex
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import helm_python
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service import startup
from tests.integration.test_webhooks import gitlab, jenkins
from tests.support.app import make_app
from tests.support.browser import parse
from tests.support.helm_chart import (
    REQUIRED_VALUES, env_of, objects_of, one, option_sets, render, render_files)
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from workers.adapters import agent_counts
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState
from workers.checks import redis_eviction
from workers.concurrency.pool_worker import PoolWorker
from workers.core.routing import AGENT_PARAMETER
from workers.core.waiting_text import MEANING
from workers.engine.intake import Mover
from workers.telemetry.metrics import WAIT_REASONS
from workers.engine.spool_drain import Drainer


# The option sets whose bundled Redis the web logs in to as its own user.
REDIS_SHAPES = ("default", "redis-sentinel")


def _chart_redis(option_set: str = "default", **redis_values):
    """The bundled Redis's container, the web's REDIS_URL and the Secret's values (with
    `redis_values` given to the chart's redis values)."""
    if redis_values:
        values = option_sets()[option_set]
        objs = objects_of(render_files(values | {"redis": {**values.get("redis", {}),
                                                           **redis_values}}))
    else:
        objs = render(option_set)
    container = one(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    web = one(objs, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]
    secret = {k: base64.b64decode(v).decode() for k, v in
              one(objs, "Secret", "redis")["data"].items()}
    return container, env_of(web)["REDIS_URL"]["value"], secret


@pytest.fixture(params=REDIS_SHAPES)
def chart_redis(request, tmp_path):
    """(admin URL, web URL) of a redis-server started as the chart starts it, for each shape
    of the bundled Redis."""
    yield from _started(*_chart_redis(request.param), tmp_path)


def _started(container, web_url, secret, tmp_path):
    env = env_of(container)
    values = {"REDIS_PASSWORD": secret["redis-password"],
              "REDIS_WEB_PASSWORD": secret["redis-web-password"],
              "REDIS_WEB_USER": env["REDIS_WEB_USER"]["value"],
              "REDIS_WEB_ACL": env["REDIS_WEB_ACL"]["value"]}
    port = free_port()
    # The container's command, with this machine's paths and port, daemonised.
    # (With Sentinel the script ends in a newline: the options go on its exec line.)
    command = container["args"][0].rstrip("\n") \
        .replace("/tmp/redis.conf", str(tmp_path / "redis.conf")) \
        .replace("--port 6379", f"--port {port} --bind 127.0.0.1") \
        .replace("--dir /data", f"--dir {tmp_path}") + \
        f" --daemonize yes --pidfile {shlex.quote(str(tmp_path / 'redis.pid'))}" \
        f" --logfile {shlex.quote(str(tmp_path / 'redis.log'))}"
    assert container["command"] == ["sh", "-c"]
    subprocess.run(["sh", "-c", command], env=values, check=True)
    # No retry: redis-py's default retries a command whose connection closed, with backoff, and
    # SHUTDOWN's always does (3 retries, about 3.5 s a test: the suite's slowest teardown).
    admin = redis.Redis(port=port, password=values["REDIS_PASSWORD"], retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + 10
    while True:
        try:
            admin.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, (tmp_path / "redis.log").read_text()
            time.sleep(0.01)
    # A Sentinel pod that finds no sentinel follows pod 0 (not this machine): it is made the
    # master here, as the sentinels would make it (writes to a replica are refused).
    admin.replicaof("NO", "ONE")
    web = urlparse(web_url.replace("$(REDIS_WEB_PASSWORD)", values["REDIS_WEB_PASSWORD"]))
    yield (f"redis://:{values['REDIS_PASSWORD']}@127.0.0.1:{port}/0",
           web._replace(netloc=f"{web.username}:{web.password}@127.0.0.1:{port}").geturl())
    admin.shutdown(nosave=True)


def test_the_chart_gives_the_web_its_own_user_and_the_worker_the_password():
    _container, web_url, secret = _chart_redis()
    assert web_url.startswith("redis://cia-web:$(REDIS_WEB_PASSWORD)@")
    assert secret["redis-password"] == REQUIRED_VALUES["redis"]["password"]
    assert secret["redis-web-password"] != secret["redis-password"]
    assert len(secret["redis-web-password"]) == 64  # derived: a sha256, stable per password


def test_the_web_path_runs_under_its_user_without_one_refusal(chart_redis):
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state = RedisState(admin)
    worker_state.intake.load_functions()  # what a worker does at start
    app = make_app(web_url)
    client = app.test_client()

    push = gitlab(client, **{"Idempotency-Key": "acl-1"})
    assert push.status_code == 202, push.json
    Mover(worker_state).drain()
    build_key = push.json["build_key"]
    agent = worker_state.get_build(build_key)["agent"]
    payload = fixture("jenkins_notification_completed_unstable.json")
    payload["build"]["parameters"][AGENT_PARAMETER] = agent
    payload.update(name="build", url="job/build/")  # the job the example's routes start
    payload["build"].update(phase="STARTED")
    assert jenkins(client, payload).status_code == 200
    payload["build"].update(phase="COMPLETED", status="SUCCESS")
    # another job's COMPLETED: ignored, and counted in Redis (workers.core.notifications)
    assert jenkins(client, payload | {"name": "other", "url": "job/other/"}).json[
        "status"] == "ignored"
    assert jenkins(client, payload).status_code == 202
    Mover(worker_state).drain()
    assert [j.func_name for j in worker_state.queue.get_jobs()] == [
        "workers.tasks.provision_agent", "workers.tasks.release_agent"]
    worker = PoolWorker([worker_state.queue], connection=admin)
    worker.register_birth()  # /metrics reads its beat (exposition.beating_workers)
    for path in ("/healthz", "/readyz", "/metrics", "/status"):
        assert client.get(path).status_code == 200, path
    metrics = client.get("/metrics").text
    assert 'ci_autoscaler_workers{queue="ci-autoscaler"} 1.0' in metrics
    assert "ci_autoscaler_redis_memory_used_bytes" in metrics
    # the chart's Redis evicts nothing (maxmemory-policy noeviction), as its web user reads
    assert 'ci_autoscaler_redis_evicting{policy="noeviction"} 0.0' in metrics
    assert "ci_autoscaler_redis_evicted_keys_total 0.0" in metrics
    assert 'ci_autoscaler_queue_jobs{queue="ci-autoscaler",state="queued"} 2.0' in metrics
    assert 'ci_autoscaler_notifications_ignored_total{reason="job_mismatch"} 1.0' in metrics
    assert admin.acl_log() == []


def test_the_web_masters_eviction_check_runs_under_its_user_and_is_quiet(
        chart_redis, monkeypatch, caplog):
    admin_url, web_url = chart_redis
    monkeypatch.setenv("REDIS_URL", web_url)
    caplog.set_level(logging.INFO)

    startup.warn_if_evicting()  # what gunicorn's master runs at start (gunicorn.conf.py)

    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.getMessage() == redis_eviction.NOT_CHECKED]
    assert redis.Redis.from_url(admin_url).acl_log() == []


def test_the_web_user_is_refused_config_scripts_and_jobs(chart_redis):
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    admin.hset("rq:job:planted", "data", b"x")
    admin.function_load("#!lua name=foreign\nredis.register_function('foreign_job', "
                        "function(KEYS, ARGV) return redis.call('HGETALL', 'rq:job:planted') end)")
    sha = admin.script_load("return 1")
    web = redis.Redis.from_url(web_url)
    assert web.ping()
    refused = {
        "CONFIG GET": lambda: web.config_get("*"),
        "CONFIG SET": lambda: web.config_set("appendonly", "no"),
        "EVAL": lambda: web.eval("return 1", 0),
        "EVALSHA": lambda: web.evalsha(sha, 0),
        "SCRIPT LOAD": lambda: web.script_load("return 2"),
        "FUNCTION LOAD": lambda: web.function_load(
            "#!lua name=mine\nredis.register_function('mine', function() return 1 end)"),
        "HGETALL rq:job": lambda: web.hgetall("rq:job:planted"),
        "HSET rq:job": lambda: web.hset("rq:job:new", "data", "x"),
        "RPUSH rq:queue": lambda: web.rpush("rq:queue:ci-autoscaler", "new"),
        "FCALL reading rq:job": lambda: web.fcall("foreign_job", 0),
        "KEYS": lambda: web.keys("*"),
        "FLUSHALL": lambda: web.flushall(),
    }
    outcomes = {}
    for name, call in refused.items():
        try:
            call()
            outcomes[name] = "allowed"
        except redis.ResponseError as err:  # NoPermissionError, or a script's ACL error
            outcomes[name] = "refused" if ("NOPERM" in str(err) or "no permissions" in str(err)
                                           or "can't access" in str(err)
                                           or isinstance(err, redis.exceptions.NoPermissionError)
                                           ) else f"error: {err}"
    assert outcomes == {name: "refused" for name in refused}


def test_without_its_functions_a_push_is_spooled_until_a_worker_loads_them(chart_redis):
    """The web may not load the functions itself: a push is kept in the pod's spool (202),
    and the spool's drainer moves it into the intake once a worker has loaded them."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    admin.function_flush()
    app = make_app(web_url)
    client = app.test_client()
    spooled = gitlab(client, **{"Idempotency-Key": "acl-2"})
    assert spooled.status_code == 202 and spooled.json["status"] == "spooled"
    ctx = app.extensions["ci_autoscaler"]
    assert ctx.state.intake.counts()[0] == 0 and ctx.spool.counts()[0] == 1
    Mover(RedisState(admin)).drain()  # a worker (re)loads them
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 1  # the web's drainer, one pass
    assert ctx.spool.counts()[0] == 0 and ctx.state.intake.counts()[0] == 1
    assert gitlab(client, **{"Idempotency-Key": "acl-2"}).json["status"] == "duplicate"


def test_the_readme_gives_the_charts_acl_line_for_an_external_redis():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- redis-web-acl -->\n```\n", 1)[1].split("\n```", 1)[0]
    container, _web_url, _secret = _chart_redis()
    env = env_of(container)
    assert block == (f"ACL SETUSER {env['REDIS_WEB_USER']['value']} on >WEB_PASSWORD "
                     f"{env['REDIS_WEB_ACL']['value']}")


def test_an_external_redis_gives_the_web_its_web_url():
    web = one(render("external-redis"), "Deployment", "web")["spec"]["template"]["spec"]
    assert env_of(web["containers"][0])["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == \
        "redis-web-url"


def test_the_status_page_tells_every_wait_reason_in_words_under_the_web_user(chart_redis):
    """A build waiting for `contention` (a lost race for a node's room) showed "waiting:
    contention" and nothing more: an operator could not tell it from a lack of nodes. Every
    reason /metrics counts (WAIT_REASONS) has its meaning on the page: a reason added without
    one fails here. Read as the web reads, under its Redis user, without one refusal."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state, capacity = RedisState(admin), CapacityStore(admin)
    for n, reason in enumerate(WAIT_REASONS):
        key = f"acl-wait-{reason}"
        worker_state.update_build(key, status="waiting", project="team/app", job="build",
                                  ref=f"refs/heads/{reason}", template="small",
                                  wait_reason=reason, received_at=1000 + n)
        capacity.add_waiting(key, 1000 + n)
    # and one whose pod's pull the kubelet retries (workers.agent_starts.pulls), as /metrics
    # counts it: read with the same commands
    worker_state.update_build("acl-pulling", status="triggered", template="small",
                              job="build", pull_error="ErrImagePull: 429 Too Many Requests")
    client = make_app(web_url).test_client()

    metrics = client.get("/metrics").text
    assert 'ci_autoscaler_image_pull_retrying{template="small"} 1.0' in metrics
    assert "ci_autoscaler_redis_up 1.0" in metrics
    answer = client.get("/status")
    assert answer.status_code == 200
    header, *rows = parse(answer.get_data(as_text=True)).tables["waiting-builds"]
    why = {row[header.index("Ref")]: row[header.index("Why")] for row in rows}
    for reason in WAIT_REASONS:
        assert reason in MEANING, f"wait reason {reason!r} has no text for the status page"
        assert MEANING[reason] in why[f"refs/heads/{reason}"], reason
    assert admin.acl_log() == []


def live_builds(state: RedisState, count: int) -> None:
    """`count` triggered builds acl-live-N of template small, every fourth retrying its image
    pull."""
    for n in range(count):
        state.update_build(f"acl-live-{n}", status="triggered", template="small", job="build",
                           **({"pull_error": "ErrImagePull: 429"} if n % 4 == 0 else {}))


def test_a_scrape_reads_each_live_build_once_under_the_web_user(chart_redis):
    """/metrics read every live build's record twice per scrape: once for
    ci_autoscaler_agents and once more (SMEMBERS live-agents again, an HMGET per build) for
    ci_autoscaler_image_pull_retrying. With thousands of agents, every web pod's every
    scrape did that work twice. Now one read gives both, counted by Redis itself (INFO
    commandstats), under the web's Redis user."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state, live = RedisState(admin), 40
    live_builds(worker_state, live)
    worker_state.update_build("acl-kept", status="failed", template="small", job="build",
                              pull_error="ErrImagePull: 429")  # a retained pod pulls nothing
    client = make_app(web_url).test_client()
    client.get("/metrics")  # the app's start-up reads are not the scrape's
    admin.config_resetstat()

    metrics = client.get("/metrics").text

    assert 'ci_autoscaler_image_pull_retrying{template="small"} 10.0' in metrics
    assert 'ci_autoscaler_agents{phase="pending",template="small"} 40.0' in metrics
    calls = {name: stats["calls"] for name, stats in admin.info("commandstats").items()}
    assert calls.get("cmdstat_hmget", 0) <= live + 1, calls
    assert admin.acl_log() == []


def test_a_scrape_reads_only_the_builds_written_since_the_recount_under_the_web_user(
        chart_redis):
    """Each scrape of every web pod read every live build's record (an HMGET each: 10,000
    a scrape at 10,000 builds, bench/results/agent_counts.md). The reconcile pass counts them
    (workers.adapters.agent_counts); a scrape reads those counts and only the builds written
    since, under the web's Redis user, without one refusal, and exports the truth."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state, live = RedisState(admin), 300
    live_builds(worker_state, live)
    agent_counts.recount(worker_state)  # the reconcile pass's
    client = make_app(web_url).test_client()
    client.get("/metrics")  # the app's start-up reads are not the scrape's
    # since the recount: one starts running, one more arrives (through the web: STARTED)
    worker_state.update_build("acl-live-0", status="running")
    worker_state.update_build("acl-new", status="pod_created", template="large", job="build")
    admin.config_resetstat()

    metrics = client.get("/metrics").text

    assert 'ci_autoscaler_agents{phase="pending",template="small"} 299.0' in metrics
    assert 'ci_autoscaler_agents{phase="running",template="small"} 1.0' in metrics
    assert 'ci_autoscaler_agents{phase="pending",template="large"} 1.0' in metrics
    assert 'ci_autoscaler_image_pull_retrying{template="small"} 74.0' in metrics
    calls = {name: stats["calls"] for name, stats in admin.info("commandstats").items()}
    assert calls.get("cmdstat_hmget", 0) <= 3, calls  # the two written since, and theirs
    assert admin.acl_log() == []


def test_a_pull_error_of_the_builds_former_pod_is_not_shown_for_its_new_one(chart_redis):
    """A build whose pod was stopped while its pull failed (evicted, drained: placed again
    once) kept the old pod's pull_error until its new pod ran: the status page said "image
    pull failing for 12m" and ci_autoscaler_image_pull_retrying counted it for a pod that had
    pulled nothing yet. The record names the pod the error is of (pull_error_agent,
    workers.agent_starts.pulls); only the build's own pod's counts."""
    admin_url, web_url = chart_redis
    worker_state = RedisState(redis.Redis.from_url(admin_url))
    for ref, agent, pull_agent in (("refs/heads/moved", "pod-b", "pod-a"),
                                   ("refs/heads/pulling", "pod-c", "pod-c")):
        worker_state.update_build(f"acl-{agent}", status="triggered", template="small",
                                  job="build", project="team/app", ref=ref, agent=agent,
                                  received_at=1000, pull_error="ErrImagePull: 429 Too Many",
                                  pull_error_agent=pull_agent, pull_error_since=1000)
    client = make_app(web_url).test_client()

    assert 'ci_autoscaler_image_pull_retrying{template="small"} 1.0' in \
        client.get("/metrics").text
    header, *rows = parse(client.get("/status").get_data(as_text=True)).tables[
        "in-flight-builds"]
    stage = {row[header.index("Ref")]: row[header.index("Stage")] for row in rows}
    assert "image pull failing" in stage["refs/heads/pulling"]
    assert "image pull failing" not in stage["refs/heads/moved"]


@pytest.mark.parametrize("shape", REDIS_SHAPES)
def test_the_bundled_redis_starts_with_a_web_password_holding_a_quote(shape, tmp_path):
    """The web user's line of redis.conf (`user NAME on >PASSWORD ACL`) was written
    unquoted: redis.webPassword may hold a `'` (the schema refuses only `"`, `\\` and white
    space), which opens a quoted string anywhere in an unquoted word of Redis's config
    (sdssplitargs), and redis-server refused its config ("Unbalanced quotes"): no Redis."""
    password = "it's-$HOME-web"
    container, web_url, secret = _chart_redis(shape, webPassword=password)
    assert secret["redis-web-password"] == password
    started = _started(container, web_url, secret, tmp_path)
    _admin_url, web = next(started)
    try:
        client = redis.Redis.from_url(web)
        assert client.ping()
        assert client.connection_pool.connection_kwargs["password"] == password
    finally:
        next(started, None)


@pytest.mark.parametrize("key", ["password", "webPassword"])
@pytest.mark.parametrize("bad", ["ab#c", "ab/c", "ab?c", "ab%41c"])
def test_a_redis_password_its_url_cannot_carry_is_refused(key, bad):
    """The processes' REDIS_URL is redis://USER:$(PASSWORD)@HOST: a `#`, `/` or `?` in the
    password ends the URL's authority (redis-py: "Port could not be cast to integer value"),
    every process stopped at start; a `%41` was unquoted to `A`, another password than
    Redis's. The chart refuses such a password by name, before anything is installed."""
    values = option_sets()["default"]
    with pytest.raises(helm_python.HelmError, match=f"redis.{key}"):
        render_files(values | {"redis": {**values.get("redis", {}), key: bad}})
    redis.ConnectionPool.from_url("redis://u:it's-$x@h:6379/0")  # what it lets through parses


def test_a_status_page_of_thousands_of_live_builds_reads_only_the_rows_it_shows(chart_redis):
    """The status page read every live build's record (SMEMBERS live-agents, an HMGET per
    build) to keep the first 500: with 5,000 live builds, each load of it (every 10 s, per
    open browser) sent thousands of commands under the web's Redis user. Now the order comes
    from the ``builds`` index and the count from cardinalities, and only the rows shown are
    read (counted by Redis itself, INFO commandstats); the heading still counts them all, the
    retained pods (workers.engine.retention: on ``retained``, status retained) not among them."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state, live, retained = RedisState(admin), 2000, 7
    for n in range(live):
        key = f"acl-many-{n}"
        worker_state.add_build(key, {"received_at": 1000 + n, "agent": f"pod-{n}",
                                     "project": "team/app", "ref": f"refs/heads/b{n}",
                                     "job": "build", "template": "small"})
        if n % 3 == 0 and n // 3 < retained:  # among the oldest: skipped, and more read
            admin.zadd("cia:retained", {key: 10**10})  # as workers.engine.retention.keep does
            worker_state.update_build(key, status="retained")
        else:
            worker_state.update_build(key, status="running" if n % 2 else "triggered")
    client = make_app(web_url).test_client()
    client.get("/status")  # the app's start-up reads are not the page's
    admin.config_resetstat()

    html = client.get("/status").get_data(as_text=True)

    header, *rows = parse(html).tables["in-flight-builds"]
    refs = [row[header.index("Ref")] for row in rows]
    expected = [f"refs/heads/b{n}" for n in range(live)
                if not (n % 3 == 0 and n // 3 < retained)][:500]
    assert refs == expected
    assert f"Builds in flight ({live - retained})" in html
    assert f"and {live - retained - 500} more." in html
    calls = {name: stats["calls"] for name, stats in admin.info("commandstats").items()}
    assert calls.get("cmdstat_hmget", 0) <= 500 + retained + 20, calls  # 20: the failures
    assert "cmdstat_smembers" not in calls, calls
    assert sum(calls.values()) <= 600, calls
    assert admin.acl_log() == []


def test_a_status_page_of_thousands_of_waiting_builds_reads_only_the_rows_it_shows(
        chart_redis):
    """The status page read every waiting build's key (ZRANGE waiting 0 -1) to show the first
    200: with thousands waiting (a cluster out of nodes), each load, every 10 s per open
    browser, sent them all. Now it asks Redis for the count and the first 200 (the commands
    Redis ran, from its SLOWLOG with every command logged); the rows are the 200 that have
    waited longest, the heading counts them all."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state, capacity, waiting = RedisState(admin), CapacityStore(admin), 1200
    for n in reversed(range(waiting)):  # written newest first: the order is Redis's
        key = f"acl-wait-{n}"
        worker_state.update_build(key, status="waiting", project="team/app", job="build",
                                  ref=f"refs/heads/w{n}", template="small",
                                  wait_reason="capacity", received_at=1000 + n)
        capacity.add_waiting(key, 1000 + n)
    client = make_app(web_url).test_client()
    client.get("/status")  # the app's start-up reads are not the page's
    admin.config_set("slowlog-max-len", 100000)
    admin.config_set("slowlog-log-slower-than", 0)
    admin.slowlog_reset()
    try:
        html = client.get("/status").get_data(as_text=True)
        logged = admin.slowlog_get(100000)
    finally:
        admin.config_set("slowlog-log-slower-than", 10000)
        admin.config_set("slowlog-max-len", 128)

    header, *rows = parse(html).tables["waiting-builds"]
    assert [row[header.index("Ref")] for row in rows] == [f"refs/heads/w{n}" for n in range(200)]
    assert f"Builds waiting ({waiting})" in html
    assert f"and {waiting - 200} more." in html
    ranges = [[_text(a) for a in entry["command"].split()] if isinstance(entry["command"], bytes)
              else entry["command"].split() for entry in logged]
    waiting_reads = [c for c in ranges if c[0].upper() == "ZRANGE" and c[1] == "cia:waiting"]
    assert waiting_reads and all(c[2:4] == ["0", "199"] for c in waiting_reads), waiting_reads
    assert admin.acl_log() == []


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_a_web_user_without_scard_and_zinter_still_gets_the_status_page(chart_redis):
    """An external Redis's web user made from the README's line before the status page
    counted live builds by cardinality has no SCARD nor ZINTER: the page reads every live
    build as it did then, rather than answering 503 until someone fixes the user."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    admin.execute_command("ACL", "SETUSER", "cia-web", "-scard", "-zinter")
    worker_state = RedisState(admin)
    for n in (2, 0, 1):
        worker_state.add_build(f"acl-old-{n}", {"received_at": 1000 + n, "agent": f"pod-{n}",
                                                "ref": f"refs/heads/b{n}", "job": "build",
                                                "template": "small"})
        worker_state.update_build(f"acl-old-{n}", status="running")
    client = make_app(web_url).test_client()

    answer = client.get("/status")

    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    header, *rows = parse(html).tables["in-flight-builds"]
    assert [row[header.index("Ref")] for row in rows] == [f"refs/heads/b{n}" for n in range(3)]
    assert "Builds in flight (3)" in html


# Keys only the worker, the mover and the reconcile pass write, which the web reads (the status
# page, /metrics) or never touches: a stolen web pod's user may not plant any of them.
WORKER_ONLY_KEYS = {
    "cia:capacity": "hash", "cia:capacity-nodes": "hash", "cia:warm:small": "hash",
    "cia:warm-sizes": "hash", "cia:agents": "hash", "cia:jenkins-runs": "hash",
    "cia:queue-items": "hash", "cia:metrics:ci_autoscaler_warm_hits_total": "hash",
    "cia:builds": "zset", "cia:ended": "zset", "cia:failures": "zset", "cia:retained": "zset",
    "cia:waiting": "zset", "cia:intake:failed": "list", "cia:intake:claimed:m1": "list",
    "cia:intake:movers": "set", "cia:intake:mover:m1": "string", "cia:commit-status:on": "string",
    "cia:catchup:last": "string",
    # the builds' records, and what their writes mark: the worker's mover writes a STARTED
    "cia:build:k": "hash", "cia:live-agents": "set", "cia:agents-dirty": "set",
    "cia:commit-status:due": "zset"}


def _refused(call) -> str:
    try:
        call()
        return "allowed"
    except redis.exceptions.NoPermissionError:
        return "refused"
    except redis.ResponseError as err:  # a function's ACL error
        return "refused" if "no permission" in str(err).lower() else f"error: {err}"


def test_the_web_user_reads_but_may_not_write_the_workers_keys(chart_redis):
    """Issue 17: the web's user had ~cia:*: a stolen web pod could write any worker record
    (a capacity row, a warm agent, a mover's claimed list the mover pushes back to the
    intake). It reads them (%R~cia:*) and writes only the keys the web path writes: every
    write, directly or through the intake's own functions (whose declared keys the ACL
    checks as read-write: Redis's fcall.json key spec), is refused and nothing changes."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    intake = RedisState(admin).intake
    intake.load_functions()
    push = intake.library.function("push")  # the web's own function, loaded by a worker
    for key, kind in WORKER_ONLY_KEYS.items():
        {"hash": lambda k: admin.hset(k, "f", "1"), "zset": lambda k: admin.zadd(k, {"m": 1}),
         "list": lambda k: admin.rpush(k, "r"), "set": lambda k: admin.sadd(k, "m"),
         "string": lambda k: admin.set(k, "1")}[kind](key)
    before = {key: admin.dump(key) for key in WORKER_ONLY_KEYS}
    web = redis.Redis.from_url(web_url)
    outcomes = {}
    for key, kind in WORKER_ONLY_KEYS.items():
        read = {"hash": web.hgetall, "zset": lambda k: web.zrange(k, 0, -1),
                "list": web.llen, "set": web.smembers, "string": web.get}[kind]
        assert read(key), key  # the status page and /metrics read them
        writes = {"hash": [lambda k: web.hset(k, "request", "{}"), lambda k: web.hdel(k, "f")],
                  "zset": [lambda k: web.zadd(k, {"x": 1}),
                           lambda k: web.zremrangebyrank(k, 0, -1)],
                  "list": [lambda k: web.rpush(k, "x")],
                  "set": [lambda k: web.sadd(k, "x"), lambda k: web.srem(k, "m")],
                  "string": [lambda k: web.set(k, "x")]}[kind]
        writes += [lambda k: web.execute_command("DEL", k),
                   lambda k: web.execute_command("RENAME", k, "cia:intake"),
                   lambda k: web.fcall(push, 2, "cia:delivery:x", k, "m", "60", "r"),
                   lambda k: web.fcall(push, 2, k, "cia:intake", "m", "60", "r")]
        for n, write in enumerate(writes):
            outcomes[f"{key} #{n}"] = _refused(lambda: write(key))
    assert outcomes == {name: "refused" for name in outcomes}
    assert {key: admin.dump(key) for key in WORKER_ONLY_KEYS} == before
    assert admin.llen("cia:intake") == 0


JENKINS = "https://jenkins.example.com"


def test_a_started_marks_its_build_running_though_the_web_user_may_not_write_it(chart_redis):
    """Issue 17: the web's user could write every build's record (`~cia:build:*`), only
    because a STARTED's mark_running was the web's own: a stolen web pod could HSET a build's
    `request` (which the worker's repairs trigger Jenkins from, any job and parameters) and
    plant live agents. Now a STARTED goes into the intake and the worker's mover marks the
    build running, its run's page recorded and its commit status queued (a sender is on:
    cia:commit-status:on); the web's user is refused every write of a build's record, of
    live-agents, agents-dirty and commit-status:due, and its path gets no refusal."""
    admin_url, web_url = chart_redis
    admin = redis.Redis.from_url(admin_url)
    worker_state = RedisState(admin)
    worker_state.intake.load_functions()
    admin.set("cia:commit-status:on", "1", px=60_000)  # a sender is alive (switch_on)
    client = make_app(web_url).test_client()
    push = gitlab(client, **{"Idempotency-Key": "acl-status"})
    assert push.status_code == 202, push.json
    Mover(worker_state).drain()
    build_key = push.json["build_key"]
    build = f"cia:build:{build_key}"
    request = admin.hget(build, "request")
    payload = fixture("jenkins_notification_completed_unstable.json")
    payload["build"]["parameters"][AGENT_PARAMETER] = worker_state.get_build(build_key)["agent"]
    payload.update(name="build", url="job/build/")
    payload["build"].update(phase="STARTED", full_url=f"{JENKINS}/job/build/3885/")

    assert jenkins(client, payload).json["status"] == "recorded"
    assert jenkins(client, payload).json["status"] == "duplicate"  # the plugin's retry
    assert admin.hget(build, "status") == b"queued"  # stored, not written by the web

    Mover(worker_state, jenkins_url=JENKINS).drain()

    record = worker_state.get_build(build_key)
    assert (record["status"], record["jenkins_build"], record["build_url"]) == (
        "running", "3885", f"{JENKINS}/job/build/3885/")
    assert admin.sismember("cia:live-agents", build_key)
    assert admin.zscore("cia:commit-status:due", build_key) is not None
    assert admin.llen("cia:intake") == 0 and admin.llen("cia:intake:failed") == 0
    assert admin.acl_log() == []
    web = redis.Redis.from_url(web_url)
    forged = '{"job": "deploy-prod", "parameters": {"TARGET": "prod"}}'
    writes = {
        "HSET build request": lambda: web.hset(build, "request", forged),
        "HSET new build": lambda: web.hset("cia:build:x", mapping={"request": forged,
                                                                   "status": "waiting"}),
        "HDEL build": lambda: web.hdel(build, "status"),
        "HSETNX build": lambda: web.hsetnx("cia:build:x", "request", forged),
        "SADD live-agents": lambda: web.sadd("cia:live-agents", "x"),
        "SADD agents-dirty": lambda: web.sadd("cia:agents-dirty", "x"),
        "ZADD commit-status:due": lambda: web.zadd("cia:commit-status:due", {"x": 1}),
    }
    assert {name: _refused(write) for name, write in writes.items()} == dict.fromkeys(
        writes, "refused")
    assert admin.hget(build, "request") == request and not admin.exists("cia:build:x")
    assert web.hget(build, "status") == b"running"  # the status page still reads it
