"""The shipped commands as a user runs them: the demo, gunicorn with the shipped config, and
the RQ worker command, each as its own process."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
import redis

from prometheus_client.multiprocess import MultiProcessCollector

from tests.integration.test_procfile import _procfile_line
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG, fixture_bytes
from tests.support.redis_server import RedisServer, free_port
from tests.support.web_process import mapped_metrics_dir

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
    # every agent start measured to its computer online (workers.agent_starts.online)
    assert "agents online: 24 of 24 (pod created -> agent online: median" in result.stdout
    for status in ("queued", "pod pending", "running", "waiting", "done, pod deleted"):
        assert status in result.stdout
    waited = re.search(r"capacity: (\d+) builds waited for a free slot; nodes_needed "
                       r"peaked at (\d+)", result.stdout)
    assert waited and int(waited[1]) > 0 and int(waited[2]) > 0
    # the live table says why each build waits: tag builds over their template's cap
    assert "waiting: cap" in result.stdout and re.search(r"waiting reasons seen: cap \d",
                                                         result.stdout)
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
    left = redis.Redis.from_url(redis_url)
    assert left.keys("cia-demo-*") == []  # its keys cleaned up
    # and its queue's name out of RQ's set of queues: on a shared Redis (`make demo` beside
    # `make run`) each run's dead queue stayed listed by `rq info` for ever
    assert [q for q in left.smembers("rq:queues") if b"cia-demo-" in q] == []
    assert [k for k in left.keys("rq:*") if b"cia-demo-" in k] == []


def test_the_demo_names_its_redis_without_the_password(tmp_path):
    """The demo's first line names the Redis it runs on: with REDIS_URL's password it printed
    the URL whole ("redis-server at redis://:<password>@host:6379/0") to the terminal."""
    password = "demo-Redis-pw-5e0b"
    server = RedisServer(tmp_path / "redis").start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", password)
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "demo", "--pushes", "1"], cwd=ROOT,
            env=_env(REDIS_URL=f"redis://:{password}@127.0.0.1:{server.port}/0"),
            capture_output=True, text=True, timeout=DEMO_LIMIT_SECONDS + 30)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"redis-server at 127.0.0.1:{server.port}/0" in result.stdout, result.stdout
    assert password not in result.stdout + result.stderr


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


def _push_counts(base: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ci_autoscaler_webhooks_total{") and 'event="push"' in line)


def _send_pushes(base: str, deliveries: range) -> list[int]:
    """Each delivery twice (queued, then duplicate), 8 deliveries at a time: concurrent
    connections, so every gunicorn worker gets some. Each delivery is a commit of its own
    (a second push of a commit whose build is in flight is a duplicate too)."""
    body = fixture_bytes("gitlab_push_real_lrz.json")
    sha = json.loads(body)["checkout_sha"].encode()

    def deliver(i: int) -> list[int]:
        codes = []
        data = body.replace(sha, f"{i + 1:040x}".encode())
        for _ in range(2):
            req = urllib.request.Request(f"{base}/webhooks/gitlab", data=data, method="POST",
                                         headers={"X-Gitlab-Event": "Push Hook",
                                                  "X-Gitlab-Token": GITLAB_TOKEN,
                                                  "Idempotency-Key": f"k-{i}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                codes.append(resp.status)
        return codes

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [code for codes in pool.map(deliver, deliveries) for code in codes]


def _pushes_per_worker(metrics_dir: Path) -> dict[int, float]:
    """Push deliveries counted by each worker process, from its own multiprocess file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[int(path.stem.rsplit("_", 1)[1])] = sum(
            s.value for f in families if f.name == "ci_autoscaler_webhooks"
            for s in f.samples if s.labels.get("event") == "push")
    return counts


def _every_scrape_counts_both_workers(base: str, metrics_dir: Path) -> tuple[int, dict]:
    """Pushes (each sent twice: a 202, then a 200 duplicate) until both gunicorn workers have
    answered some; then every scrape, whichever worker answers it, counts all of them. How
    many were sent, and each worker's count."""
    wait_until(lambda: len(_pushes_per_worker(metrics_dir)) == 2, timeout=30,
               what="both gunicorn workers booted")  # each writes its file as it boots
    # Batches of 20 until both workers have answered some: a webhook is quick enough now
    # that one worker can keep up with this client alone.
    sent = 0
    while sent < 400 and not (len(per_worker := _pushes_per_worker(metrics_dir)) == 2
                              and all(per_worker.values())):
        codes = _send_pushes(base, range(sent, sent + 20))
        assert codes.count(202) == 20 and codes.count(200) == 20
        sent += 20
    assert len(per_worker) == 2 and all(per_worker.values()), \
        f"both workers should have answered: {per_worker}"
    scrapes = [_push_counts(base) for _ in range(6)]  # whichever worker answers
    assert scrapes == [2 * sent] * 6, scrapes
    return sent, per_worker


def test_gunicorn_serves_webhooks_and_metrics_add_up_across_workers(redis_url, tmp_path):
    """N deliveries over 2 gunicorn workers read N on /metrics, from either worker, and still
    after a worker is restarted; the values read from Redis are the same on every worker."""
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    # What a crashed earlier run left in the emptyDir: gunicorn's on_starting wipes it.
    stale = MmapedDict(str(metrics_dir / "counter_1.db"))
    stale.write_value(mmap_key("ci_autoscaler_webhooks_total", "ci_autoscaler_webhooks_total",
                               ["source", "event", "result"], ["gitlab", "push", "queued"], ""),
                      1000.0, 0.0)
    stale.close()
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
        sent, per_worker = _every_scrape_counts_both_workers(base, metrics_dir)

        # The gauges read from Redis at scrape time agree on every worker.
        texts = [urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
                 for _ in range(6)]
        waiting = {line for t in texts for line in t.splitlines()
                   if line.startswith("ci_autoscaler_intake_events{") and "waiting" in line}
        assert waiting == {f'ci_autoscaler_intake_events{{state="waiting"}} {sent}.0'}

        # A worker restarts (gunicorn replaces it; child_exit marks it dead): nothing is lost.
        os.kill(min(per_worker), signal.SIGTERM)
        wait_until(lambda: set(_pushes_per_worker(metrics_dir)) - set(per_worker), timeout=30,
                   what="gunicorn starting a new worker")  # its file appears as it boots
        codes = _send_pushes(base, range(sent, sent + 10))
        assert codes.count(202) == 10 and codes.count(200) == 10
        assert _push_counts(base) == 2 * sent + 20
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_the_images_gunicorn_command_adds_metrics_up_without_a_metrics_dir_given(
        redis_url, tmp_path):
    """The image's default command (Dockerfile CMD: gunicorn with the shipped config) run
    without PROMETHEUS_MULTIPROC_DIR (a `docker run`, compose file or systemd unit that does
    not set it): each of the 2 workers counted its own webhooks, each scrape read the one
    that answered, and Prometheus took every switch for a counter reset (rate() and the
    webhook alerts read nonsense). The config makes a directory then, as `ci-autoscaler web`
    does, and removes it as the web stops."""
    port = free_port()
    env = _env(REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(EXAMPLE_CONFIG),
               GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN, JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN,
               CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2")
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c",
                             "service/gunicorn.conf.py", "service.wsgi:app"],
                            cwd=ROOT, env=env, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/healthz", proc)
        metrics_dir = wait_until(lambda: mapped_metrics_dir(proc.pid), timeout=10,
                                 what="the workers counting in a metrics directory")
        _every_scrape_counts_both_workers(base, metrics_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert not metrics_dir.exists()  # made for this web, removed as it ends


def test_the_gunicorn_master_makes_no_metric_values_its_workers_would_inherit():
    """What the master imports (the config file, the worker class it names) makes no metric:
    a value made in the master is a file named by its pid, and every forked worker wrote into
    that one shared file and made none of its own (the worker class once imported the webhook
    edge, and with it the metrics)."""
    probe = ("import runpy, sys; runpy.run_path('service/gunicorn.conf.py'); "
             "import service.http_worker; "
             "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', "
             "'workers.telemetry'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", "service.wsgi:app"],
    ["sh", "-c", _procfile_line("web")]], ids=["gunicorn", "procfile"])
def test_the_web_leaves_no_metrics_dir_when_it_cannot_listen(redis_url, tmp_path, command):
    """gunicorn that cannot bind its address (the port taken: a second web on a host network,
    an old process not gone yet) exits 1 from its start, past on_starting and with no on_exit
    (gunicorn sock.create_sockets: sys.exit). The metrics directory made in on_starting was
    left under /tmp on every such start, a container restarted in a loop gathering one a
    try; it is made once the sockets are bound (when_ready), before the first worker. The
    Procfile's web line made its own with `mktemp -d` before gunicorn started, left on each
    such start too; `ci-autoscaler web` leaves it to the master's when_ready."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(EXAMPLE_CONFIG),
                   GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN, JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN,
                   CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", TMPDIR=str(temp),
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1 and "Connection in use" in result.stderr, result.stderr[-1500:]
    # no directory left in $TMPDIR (mktemp's tmp.XXXXXXXXXX, ours) but the spool, kept on purpose
    assert [p.name for p in temp.iterdir() if p.is_dir()
            and not p.name.startswith("ci-autoscaler-spool-")] == []


def test_web_refuses_to_start_on_a_bad_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - job: build\n    templat: x\n")
    env = _env(CI_AUTOSCALER_CONFIG=str(bad), GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN,
               JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN)
    result = subprocess.run([sys.executable, "-c", "import service.wsgi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{bad}:3: routes[0].templat: unknown field" in result.stderr


def test_the_web_command_adds_metrics_up_across_workers_without_a_metrics_dir_given(
        redis_url, tmp_path):
    """`ci-autoscaler web` (what `ci-autoscaler run` and `make run` start) without
    PROMETHEUS_MULTIPROC_DIR: it makes one, so every scrape reads both workers' counts, as
    under the Procfile's web line (before, each scrape read the one worker that answered)."""
    port = free_port()
    env = _env(REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(EXAMPLE_CONFIG),
               GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN, JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN,
               CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="2")
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "web"], cwd=ROOT, env=env,
                            stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/healthz", proc)
        metrics_dir = wait_until(lambda: mapped_metrics_dir(proc.pid), timeout=10,
                                 what="the workers counting in a metrics directory")
        _every_scrape_counts_both_workers(base, metrics_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert not metrics_dir.exists()  # made for this web, removed as it ends
