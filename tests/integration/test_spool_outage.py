"""The web process as production runs it (gunicorn, service/gunicorn.conf.py) through a Redis
outage, and killed with events in its spool: every push is answered 2xx and built once.

Redis is a real redis-server (AOF on, as the chart runs it), stopped and started again; the
builds are made by the worker's mover and RQ tasks in this process against kmock and the
Jenkins fake, as the other push-to-build tests do.
"""

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.app import GITLAB_TOKEN, production_env, work
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.redis_server import RedisServer, free_port
from tests.support.web_process import GUNICORN, web_env, web_process
from service.app import create_app
from workers import runtime
from workers.adapters.spool import Spool
from workers.core.routing import BUILD_KEY_PARAMETER

NAMESPACE = "ci-agents"
PUSHES = 200
OUTAGE_SECONDS = 20
CONFIG = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
templates:
  small:
    cpu: {min: 250m, default: 250m, max: 250m}
    memory: {min: 256Mi, default: 256Mi, max: 256Mi}
"""


def send(port: int, n: int) -> tuple[int, dict]:
    """Push number n as GitLab sends it (its own commit, Idempotency-Key push-n); the status
    and the JSON answer, or (0, {}) when the connection itself failed."""
    body = fixture("gitlab_push_real_lrz.json")
    body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/gitlab", data=json.dumps(body).encode(),
        method="POST", headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
                                "Idempotency-Key": f"push-{n}",
                                "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except OSError:
        return 0, {}


@pytest.fixture
def world(monkeypatch, tmp_path, kube, jenkins_fake):
    store = RedisServer(tmp_path / "redis", appendonly=True).start()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    for i in range(4):
        kube.add_node(f"node-{i}", cpu="64", memory="256Gi")
    production_env(monkeypatch, redis_url=store.url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    runtime.install(None)
    port = free_port()
    env = web_env(store.url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}",
                  CI_AUTOSCALER_CONFIG=str(config),
                  CI_AUTOSCALER_SPOOL_DIR=str(tmp_path / "spool"),
                  CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS="1")
    yield store, env, port, create_app()
    runtime.install(None)
    store.stop()


def spooled(directory: Path, app) -> int:
    """The pushes in the web process's spool: its rows (the web's installation and Redis, as
    the app's settings, from the same environment, name them)."""
    return Spool(directory, owner=app.extensions["ci_autoscaler"].settings.spool_owner
                 ).counts()[0]


def spool_empty(directory: Path, app) -> bool:
    return spooled(directory, app) == 0


def built_once(app, keys: list[str], jenkins_fake) -> dict[str, int]:
    """Make the builds (the worker's mover and tasks, in this process) and count the Jenkins
    builds of each key."""
    work(app)
    return {key: len(jenkins_fake.build_with(BUILD_KEY_PARAMETER, key)) for key in keys}


def test_redis_stopped_20s_mid_burst_every_push_2xx_and_built_exactly_once(
        world, tmp_path, jenkins_fake):
    store, env, port, app = world
    answers: dict[int, int] = {}
    keys: dict[int, str] = {}
    resent: list[int] = []

    def deliver(n: int) -> None:
        status, body = send(port, n)
        answers[status] = answers.get(status, 0) + 1
        if status == 202:
            keys[n] = body["build_key"]

    with web_process(GUNICORN, env, port, tmp_path / "web.log"):
        began = time.monotonic()
        third = PUSHES // 3
        for n in range(third):
            deliver(n)
        store.stop()
        outage_began = time.monotonic()
        # The middle third over the outage, with a resend (the same Idempotency-Key) of a
        # push Redis took before it and of one spooled during it.
        for n in range(third, 2 * third):
            deliver(n)
            if n % 10 == 0:
                resent += [n - third, n]
                deliver(n - third)
                deliver(n)
            time.sleep(max(0.0, outage_began + OUTAGE_SECONDS * (n - third + 1) / third
                           - time.monotonic()))  # paced over the outage, not awaiting anything
        in_spool = spooled(tmp_path / "spool", app)
        store.start()
        outage = time.monotonic() - outage_began
        for n in range(2 * third, PUSHES):
            deliver(n)
        wait_until(lambda: spool_empty(tmp_path / "spool", app), timeout=60,
                   what="the web's drainer moved every spooled push into Redis")
        drained_after = time.monotonic() - began
    counts = built_once(app, list(keys.values()), jenkins_fake)
    print(f"\nspool outage: {PUSHES} pushes + {len(resent)} resends; Redis stopped "
          f"{outage:.1f}s; answers {dict(sorted(answers.items()))}; {in_spool} spooled at the "
          f"outage's end; spool empty after {drained_after:.1f}s; builds per push "
          f"{sorted(set(counts.values()))} for {len(counts)} pushes", flush=True)
    assert outage >= OUTAGE_SECONDS
    assert in_spool >= third  # the outage's pushes went to the spool
    assert set(answers) <= {200, 202} and not any(s >= 500 or s == 0 for s in answers)
    assert sum(answers.values()) == PUSHES + len(resent)
    assert len(keys) == PUSHES and len(set(keys.values())) == PUSHES
    assert set(counts.values()) == {1}, {k: c for k, c in counts.items() if c != 1}
    assert len(jenkins_fake.builds) == PUSHES


def test_web_sigkilled_right_after_a_spooled_202_the_push_is_built_after_restart(
        world, tmp_path, jenkins_fake):
    store, env, port, app = world
    store.stop()
    with web_process(GUNICORN, env, port, tmp_path / "web-1.log") as web:
        status, body = send(port, 1)
        os.killpg(web.pid, signal.SIGKILL)  # no shutdown of any kind: only what is on disk
        web.wait(timeout=30)
    assert status == 202 and body["status"] == "spooled"
    assert not spool_empty(tmp_path / "spool", app)
    store.start()
    with web_process(GUNICORN, env, port, tmp_path / "web-2.log"):
        wait_until(lambda: spool_empty(tmp_path / "spool", app), timeout=60,
                   what="the restarted web drained its spool")
    assert built_once(app, [body["build_key"]], jenkins_fake) == {body["build_key"]: 1}
