"""A Redis whose maxmemory-policy evicts (every policy but noeviction; managed Redis services
default to volatile-lru) deletes keys at maxmemory, ours among them: a build's record, claim
or RQ job, a delivery's dedupe mark (redis.io, "Key eviction"). On a real redis-server: the
worker's and the web's start-up say so in one warning each and run on, `check-config --live`
names it as a problem in the same words, and /metrics exports ci_autoscaler_redis_evicting and
the keys Redis evicted; with noeviction none of it, and a full Redis refuses instead."""

import json
import logging
import os
import shlex
import socket
import subprocess
import threading
import sys
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_check_config_live import (  # noqa: F401 (env: a fixture)
    ROOT, check_live, check_live_in_process, env, errors)
from tests.integration.test_worker_and_reconcile_processes import Process
from tests.support.app import make_app
from tests.support.monitoring import wait_until
from tests.support.redis_server import free_port
from tests.support.web_process import web_env, web_process
from service import startup
from workers.adapters.redis_connect import SENTINEL_TIMEOUT_SECONDS

MAXMEMORY = "20mb"
JUNK_VALUE = b"x" * 100_000  # 200 of these fill 20 MB
MOST_JUNK_KEYS = 1000
PROBLEM_START = "Redis: maxmemory-policy allkeys-lru evicts: at maxmemory Redis deletes"
WARNING = "start-up check found a problem"
NOT_CHECKED = "Redis's maxmemory-policy not checked"


def with_policy(server, policy: str) -> redis.Redis:
    """The server set as a managed Redis would be: a maxmemory, and the policy given."""
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory", MAXMEMORY)
    admin.config_set("maxmemory-policy", policy)
    return admin


def fill(admin: redis.Redis) -> None:
    """Junk keys past maxmemory: until Redis has evicted some, or refuses the write (OOM)."""
    for i in range(MOST_JUNK_KEYS):
        try:
            admin.set(f"junk:{i}", JUNK_VALUE)
        except redis.exceptions.OutOfMemoryError:  # OOM command not allowed ...
            return
        if admin.info("stats")["evicted_keys"]:
            return
    pytest.fail(f"{MOST_JUNK_KEYS} junk keys of {len(JUNK_VALUE)} bytes neither evicted nor "
                f"refused under maxmemory {MAXMEMORY}")


def scraped(app) -> dict[tuple[str, tuple], float]:
    text = app.test_client().get("/metrics").get_data(True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("ci_autoscaler_redis_")}


# ---- /metrics ----------------------------------------------------------------------------

def test_metrics_say_the_policy_evicts_and_count_the_keys_redis_evicted(own_redis):
    admin = with_policy(own_redis, "allkeys-lru")
    app = make_app(own_redis.url)

    before = scraped(app)
    assert before["ci_autoscaler_redis_evicting", (("policy", "allkeys-lru"),)] == 1
    assert before["ci_autoscaler_redis_evicted_keys_total", ()] == 0

    fill(admin)
    # Redis 7 may go on evicting a little after the last write (its eviction time proc).
    low = admin.info("stats")["evicted_keys"]
    after = scraped(app)
    high = admin.info("stats")["evicted_keys"]
    assert low > 0
    assert low <= after["ci_autoscaler_redis_evicted_keys_total", ()] <= high
    assert [k for k in after if k[0] == "ci_autoscaler_redis_evicting"] == [
        ("ci_autoscaler_redis_evicting", (("policy", "allkeys-lru"),))]


def test_a_volatile_policy_evicts_too(own_redis):
    with_policy(own_redis, "volatile-lru")  # the managed services' default

    values = scraped(make_app(own_redis.url))

    assert values["ci_autoscaler_redis_evicting", (("policy", "volatile-lru"),)] == 1


def test_with_noeviction_nothing_is_evicted_and_a_full_redis_refuses(own_redis):
    admin = with_policy(own_redis, "noeviction")  # the chart's
    app = make_app(own_redis.url)

    fill(admin)

    values = scraped(app)
    assert values["ci_autoscaler_redis_evicting", (("policy", "noeviction"),)] == 0
    assert values["ci_autoscaler_redis_evicted_keys_total", ()] == 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("one-more", JUNK_VALUE)


# ---- start-up: the worker, check-config --live, the web ------------------------------------

@pytest.fixture
def worker_env(env, own_redis, monkeypatch):  # noqa: F811 (the fixture imported above)
    config, values = env
    values["REDIS_URL"] = own_redis.url
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GITLAB_WEBHOOK_TOKEN", "t-gitlab")
    monkeypatch.setenv("JENKINS_WEBHOOK_TOKEN", "t-jenkins")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return config, values


def test_the_worker_warns_once_at_start_and_works_on(worker_env, own_redis):
    with_policy(own_redis, "allkeys-lru")
    worker = Process("worker")
    try:
        wait_until(lambda: worker.said(WARNING), timeout=60, what="the start-up warning")
        assert worker.proc.poll() is None, "".join(worker.raw[-20:])  # not refused
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.raw[-20:])
    [warning] = [line for line in worker.lines if line.get("msg") == WARNING]
    assert warning["level"] == "warning" and warning["component"] == "worker"
    assert warning["problem"].startswith(PROBLEM_START)
    assert "noeviction" in warning["problem"] and "README" in warning["problem"]


def test_with_noeviction_the_worker_does_not_warn(worker_env, own_redis):
    with_policy(own_redis, "noeviction")
    worker = Process("worker")
    try:
        wait_until(lambda: worker.said("start-up checks passed"), timeout=60,
                   what="the start-up checks passing")
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.raw[-20:])
    assert not worker.said(WARNING)
    [passed] = [line for line in worker.lines if line.get("msg") == "start-up checks passed"]
    assert "Redis evicts no key (maxmemory-policy noeviction)" in passed["checked"]


def test_check_config_live_names_the_policy_in_the_same_words(env, own_redis,  # noqa: F811
                                                              monkeypatch, capsys):
    config, values = env
    with_policy(own_redis, "volatile-lru")

    # in-process (check_live_in_process says why); the process itself, and that a URL's
    # password never shows, are the next test's
    result = check_live_in_process(config, values | {"REDIS_URL": own_redis.url},
                                   monkeypatch, capsys)

    assert result.returncode == 2, result.stderr
    [line] = errors(result)
    assert line.startswith("Redis: maxmemory-policy volatile-lru evicts: at maxmemory Redis "
                           "deletes keys that have a TTL")
    assert "set maxmemory-policy noeviction" in line


def test_check_config_live_names_a_redis_that_does_not_answer(env):  # noqa: F811
    config, values = env
    url = f"redis://:never-shown-9c1@127.0.0.1:{free_port()}/0"  # nothing listens there

    result = check_live(config, values | {"REDIS_URL": url})

    assert result.returncode == 2, result.stderr
    assert errors(result) == ["Redis: cannot read its maxmemory-policy (INFO): ConnectionError"]
    assert "never-shown-9c1" not in result.stdout + result.stderr


def _web(url: str, tmp_path, **extra: str) -> list[dict]:
    """The web process under gunicorn on Redis `url`, started and stopped: its JSON log
    lines."""
    port = free_port()
    log = tmp_path / "web.log"
    line = f"{shlex.quote(sys.executable)} -m gunicorn -c service/gunicorn.conf.py " \
           "service.wsgi:app"
    with web_process(line, web_env(url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}",
                                   **extra), port, log):
        pass
    lines = []
    for raw in log.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass  # gunicorn's own lines
    return lines


def test_the_web_warns_once_from_its_master(own_redis, tmp_path):
    with_policy(own_redis, "allkeys-lru")

    lines = _web(own_redis.url, tmp_path)

    [warning] = [line for line in lines if line.get("msg") == WARNING]
    assert warning["level"] == "warning" and warning["component"] == "web"
    assert warning["problem"].startswith(PROBLEM_START)


def test_a_web_user_refused_info_starts_without_the_check(own_redis, tmp_path):
    admin = with_policy(own_redis, "allkeys-lru")
    admin.execute_command("ACL", "SETUSER", "web", "on", ">web-pass-3f9", "~*", "&*",
                          "+@all", "-info")

    lines = _web(own_redis.url.replace("redis://", "redis://web:web-pass-3f9@"), tmp_path)

    assert not [line for line in lines if line.get("msg") == WARNING]
    [skipped] = [line for line in lines if line.get("msg") == NOT_CHECKED]
    assert skipped["level"] == "info" and skipped["reason"] == "INFO refused"


def test_the_web_masters_check_through_sentinels_that_never_answer_holds_up_no_start(
        monkeypatch, caplog):
    # Sentinels that take the connection and never answer (a hung or SIGSTOPped process: the
    # kernel accepts into the listen backlog). gunicorn's master opens no listener until
    # on_starting returns, so this check's time is the web's start's.
    hung = [socket.create_server(("127.0.0.1", 0), backlog=16) for _ in range(3)]
    try:
        monkeypatch.setenv("REDIS_SENTINELS",
                           ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in hung))
        monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
        monkeypatch.setenv("REDIS_URL", "redis://:never-shown-7d2@127.0.0.1:1/0")
        caplog.set_level(logging.INFO)
        began = time.monotonic()
        startup.warn_if_evicting()
        took = time.monotonic() - began
    finally:
        for s in hung:
            s.close()
    # each sentinel asked once, for its timeout (redis_connect.SENTINEL_TIMEOUT_SECONDS)
    assert took < len(hung) * SENTINEL_TIMEOUT_SECONDS + 1.0, took
    [skipped] = [r for r in caplog.records if r.getMessage() == NOT_CHECKED]
    assert skipped.reason == "Redis does not answer"
    assert "never-shown-7d2" not in caplog.text


def test_check_config_live_without_a_redis_setting_checks_no_redis(env):  # noqa: F811
    # README, "Install on a cluster": check-config --live before `helm install`, when the
    # chart's Redis does not exist yet (nor, after, is it reachable from the operator's
    # machine). With no REDIS_URL nor REDIS_SENTINELS the default (127.0.0.1:6379) is no
    # Redis of the service's: neither a problem (exit 2) nor a policy to report.
    config, values = env
    values = {k: v for k, v in values.items() if not k.startswith("REDIS_")}
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("JENKINS_", "KUBERNETES_SERVICE", "REDIS_"))} | values

    result = subprocess.run([sys.executable, "-m", "service.cli", "check-config", "--live",
                             str(config)], cwd=ROOT, env=environ, capture_output=True,
                            text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "Redis" not in result.stdout
    assert "note: Redis not checked: neither REDIS_URL nor REDIS_SENTINELS is set" \
        in result.stderr.splitlines()


def test_the_web_masters_check_meeting_an_info_it_cannot_read_holds_up_no_start(
        monkeypatch, caplog):
    """A Redis-compatible server whose INFO says what redis-py leaves as text where Redis
    gives a number ("maxmemory:unlimited"): read as no limit, the policy judged as usual, and
    gunicorn's master goes on to start (an exception out of on_starting stops it; the check
    also gives up with one line on any error it did not foresee)."""
    info = ("# Memory\r\nused_memory:1024\r\nmaxmemory:unlimited\r\n"
            "maxmemory_policy:noeviction\r\n").encode()
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer_every_command_with_info() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.is_set() and (data := conn.recv(65536)):
                if b"HELLO" in data:  # redis-py's handshake: RESP3, as Redis 6+ answers it
                    conn.sendall(b"%1\r\n$5\r\nproto\r\n:3\r\n")
                    continue
                if b"INFO" not in data.upper():  # the rest of the handshake (CLIENT ...)
                    conn.sendall(b"+OK\r\n" * data.count(b"*"))  # one per command sent
                    continue
                bulk = b"$%d\r\n%s\r\n" % (len(info), info)
                conn.sendall(bulk * data.upper().count(b"INFO"))

    thread = threading.Thread(target=answer_every_command_with_info, daemon=True)
    thread.start()
    try:
        monkeypatch.delenv("REDIS_SENTINELS", raising=False)
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        caplog.set_level(logging.INFO)
        startup.warn_if_evicting()
    finally:
        stop.set()
        server.close()
    assert not [r for r in caplog.records if r.getMessage() == NOT_CHECKED]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # noeviction: fine
