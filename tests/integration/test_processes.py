"""The shipped commands as a user runs them: the demo, gunicorn with the shipped config, and
the RQ worker command, each as its own process."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
from tests.support.payloads import EXAMPLE_CONFIG, fixture_bytes
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO_LIMIT_SECONDS = 60


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    return env | extra


@pytest.mark.parametrize("backend", ["redis-server", "fakeredis"])
def test_demo_runs_to_its_summary_in_under_a_minute(redis_url, backend):
    url = redis_url if backend == "redis-server" else f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "service.cli", "demo"], cwd=ROOT,
                            env=_env(REDIS_URL=url), capture_output=True, text=True,
                            timeout=DEMO_LIMIT_SECONDS + 30)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert elapsed < DEMO_LIMIT_SECONDS
    assert backend in result.stdout
    assert "summary: 24 builds queued (1x 200, 24x 202); 24 ran and released; " \
           "0 pods and 0 Jenkins agents left" in result.stdout
    for status in ("queued", "pod pending", "running", "waiting", "done, pod deleted"):
        assert status in result.stdout
    waited = re.search(r"capacity: (\d+) builds waited for a free slot; nodes_needed "
                       r"peaked at (\d+)", result.stdout)
    assert waited and int(waited[1]) > 0 and int(waited[2]) > 0
    assert GITLAB_TOKEN not in result.stdout + result.stderr


def test_demo_stops_cleanly_on_ctrl_c(redis_url):
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "demo"], cwd=ROOT,
                            env=_env(REDIS_URL=redis_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # await the first build on a pod, then press Ctrl-C
        seen.append(line)
        if "pod pending" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(seen) + out + err
    assert "interrupted" in out and "summary:" in out
    assert "Traceback" not in err
    assert redis.Redis.from_url(redis_url).keys("cia-demo-*") == []  # its keys cleaned up


def _wait_http(url: str, proc: subprocess.Popen, deadline_seconds: float = 30) -> None:
    deadline = time.monotonic() + deadline_seconds
    while True:  # awaiting readiness of a process we started
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer in {deadline_seconds}s") from None
            time.sleep(0.05)


def test_gunicorn_serves_webhooks_and_metrics_add_up_across_workers(redis_url, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = _env(REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(EXAMPLE_CONFIG),
               GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN, JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN,
               CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2",
               PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c",
                             "service/gunicorn.conf.py", "service.wsgi:app"],
                            cwd=ROOT, env=env, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/healthz", proc)
        body = fixture_bytes("gitlab_push_real_lrz.json")
        codes = []
        for i in range(20):
            req = urllib.request.Request(f"{base}/webhooks/gitlab", data=body, method="POST",
                                         headers={"X-Gitlab-Event": "Push Hook",
                                                  "X-Gitlab-Token": GITLAB_TOKEN,
                                                  "Idempotency-Key": f"k-{i % 10}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                codes.append(resp.status)
        assert codes.count(202) == 10 and codes.count(200) == 10  # 10 deliveries, each twice
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line.startswith("ci_autoscaler_webhooks_total{")}
        pushes = {k: v for k, v in counts.items() if 'event="push"' in k and v}
        assert sum(pushes.values()) == 20, pushes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_web_refuses_to_start_on_a_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - job: build\n    templat: x\n")
    env = _env(CI_AUTOSCALER_CONFIG=str(bad), GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN,
               JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN)
    result = subprocess.run([sys.executable, "-c", "import service.wsgi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{bad}:3: routes[0].templat: unknown field" in result.stderr
