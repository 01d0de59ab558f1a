"""The web's Redis user under the chart's Redis with Sentinel (redis.sentinel.enabled): every
Redis pod, started with the StatefulSet's own command and environment, knows the web's user.

The web's REDIS_URL names the user cia-web whatever the mode, and Redis does not replicate ACL
users (they live in each server's config: https://redis.io/docs/latest/operate/oss_and_stack/
management/security/acl/), so the master and every replica a failover may promote must each
be started with it. Without it every web connection was refused (WRONGPASS): no push reached
the intake, each waited in the web pod's spool that nothing could drain."""

import base64
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from tests.integration.test_webhooks import gitlab
from tests.support.app import make_app
from tests.support.helm_chart import env_of, one, render
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from workers.adapters.redis_state import RedisState
from workers.engine.intake import Mover


def _chart():
    objs = render("redis-sentinel")
    spec = one(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "redis")
    web = one(objs, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]
    secret = {k: base64.b64decode(v).decode() for k, v in
              one(objs, "Secret", "redis")["data"].items()}
    return container, env_of(web)["REDIS_URL"]["value"], secret


def _start_pod(container, env, directory: Path, port: int, *, replica_of: int | None) -> None:
    """The pod's command with this machine's paths and port, daemonised. No sentinel answers
    (a first install): pod 0 is the master, the other follows it, as the script decides."""
    script = container["args"][0]
    first = script.split('[ -n "$master" ] || master="', 1)[1].split('"', 1)[0]
    self_line = next(line for line in script.splitlines() if line.startswith("self="))
    script = script.replace(self_line, f'self="{first if replica_of is None else "pod-1"}"') \
        .replace("master=$(redis-cli", "master=$(false") \
        .replace("printf 'replicaof %s 6379\\n' \"$master\"",
                 f"printf 'replicaof 127.0.0.1 {replica_of}\\n'") \
        .replace("/tmp/redis.conf", str(directory / "redis.conf")) \
        .replace("--port 6379", f"--port {port} --bind 127.0.0.1") \
        .replace("--dir /data", f"--dir {directory}").rstrip() + \
        f" --daemonize yes --pidfile {shlex.quote(str(directory / 'redis.pid'))}" \
        f" --logfile {shlex.quote(str(directory / 'redis.log'))}"
    assert container["command"] == ["sh", "-c"]
    subprocess.run(["sh", "-c", script], env=env, check=True)


def _await(check, log: Path, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


@pytest.fixture
def sentinel_pods(tmp_path):
    """(admin client, web URL) for pod 0 (the master) and pod 1 (its replica)."""
    container, web_url, secret = _chart()
    env = {k: v["value"] for k, v in env_of(container).items() if "value" in v} | {
        "REDIS_PASSWORD": secret["redis-password"],
        "REDIS_WEB_PASSWORD": secret["redis-web-password"]}
    web = urlparse(web_url.replace("$(REDIS_WEB_PASSWORD)", env["REDIS_WEB_PASSWORD"]))
    pods = []
    for n in range(2):
        directory = tmp_path / f"pod-{n}"
        directory.mkdir()
        port = free_port()
        _start_pod(container, env, directory, port, replica_of=pods[0][2] if pods else None)
        admin = redis.Redis(port=port, password=env["REDIS_PASSWORD"])
        _await(admin.ping, directory / "redis.log")
        # the replica's first sync at once, not after Redis's default 5 s wait for others
        admin.config_set("repl-diskless-sync-delay", 0)
        pods.append((admin, web._replace(
            netloc=f"{web.username}:{web.password}@127.0.0.1:{port}").geturl(), port))
    _await(lambda: pods[1][0].info("replication")["master_link_status"] == "up",
           tmp_path / "pod-1" / "redis.log")
    yield [(admin, url) for admin, url, _port in pods]
    for n in range(2):  # those the test has not shut down
        pid = tmp_path / f"pod-{n}" / "redis.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)


def test_every_sentinel_pod_takes_the_webs_user_before_and_after_a_failover(sentinel_pods):
    (master, master_url), (replica, replica_url) = sentinel_pods
    RedisState(master).intake.load_functions()  # what a worker does at start
    push = gitlab(make_app(master_url).test_client(), **{"Idempotency-Key": "sentinel-1"})
    assert push.status_code == 202 and push.json["status"] == "queued", push.json
    Mover(RedisState(master)).drain()
    assert master.acl_log() == []

    # The sentinels promote the replica (REPLICAOF NO ONE); the web's next connection is to it.
    assert master.wait(1, 5000) == 1  # the replica has it all
    master.shutdown(nosave=True, now=True)
    replica.replicaof("NO", "ONE")
    client = make_app(replica_url).test_client()
    again = gitlab(client, **{"Idempotency-Key": "sentinel-2"})  # the same commit, pushed again
    assert again.json["status"] == "duplicate", again.json  # what the master had is read
    body = fixture("gitlab_push_real_lrz.json")
    body.update(after="a" * 40, checkout_sha="a" * 40)
    push = gitlab(client, json.dumps(body), **{"Idempotency-Key": "sentinel-3"})
    assert push.status_code == 202 and push.json["status"] == "queued", push.json
    assert replica.acl_log() == []
    Mover(RedisState(replica)).drain()
    assert [j.func_name for j in RedisState(replica).queue.get_jobs()] == [
        "workers.tasks.provision_agent"] * 2
