"""The liveness probes of the worker and the reconcile pods (workers.telemetry.liveness), as the chart
renders them, against the real loops: the RQ worker's (a process of its own, on a real
redis-server) and the reconcile loop's (kmock over HTTP and the Jenkins fake). They had none, so
a process wedged in a call that never returns was never restarted. The probe passes while the
loop goes round (idle, or waiting for a Redis that is away) and fails once it stops, although
the process still exists."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.test_pass_without_jenkins import CONFIG, placed
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import cluster_app
from tests.support.helm_chart import one, render
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.telemetry import liveness

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "liveness"
MAX_AGE_SECONDS = 3  # the chart's are minutes; the loops here go round every second or two
# The worker as `ci-autoscaler worker` makes it (service.cli._worker), without the runtime, its
# idle wait for a job cut to 1 s (the chart's: 30 s, against a 180 s probe).
WORKER = f"""
import sys, redis
from workers.telemetry import liveness
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker
PoolWorker([{QUEUE!r}], connection=redis.Redis.from_url(sys.argv[1]), concurrency=2,
           alive=liveness.from_env(), dequeue_seconds=1, serializer=SERIALIZER).work()
"""


def _probe(component: str, path: Path) -> list[str]:
    """The chart's liveness probe of `component`, on `path` and MAX_AGE_SECONDS."""
    pod = one(render("default"), "Deployment", component)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:3] == ["python", "-m", "workers.telemetry.liveness"]
    assert command[3] == env["CI_AUTOSCALER_LIVENESS_FILE"]
    return [sys.executable, *command[1:3], str(path), str(MAX_AGE_SECONDS)]


def _passes(command: list[str]) -> bool:
    return subprocess.run(command, cwd=ROOT, capture_output=True, timeout=30).returncode == 0


def _touched_after(path: Path, moment: float) -> bool:
    return path.exists() and path.stat().st_mtime > moment


def test_the_worker_probe_follows_its_loop_not_its_process(own_redis, tmp_path):
    path = tmp_path / "worker.alive"
    probe = _probe("worker", path)
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, own_redis.url], cwd=ROOT,
                              env={**os.environ, liveness.ENV: str(path)},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        # Idle for longer than the probe's age: the loop goes round, the probe passes.
        wait_until(path.exists, timeout=30, what="the worker starting its liveness file")
        started = path.stat().st_mtime
        wait_until(lambda: _touched_after(path, started + MAX_AGE_SECONDS), timeout=30,
                   what="the idle worker's loop touching its file")
        assert _passes(probe)
        # Redis away: the loop waits for it and goes round; not wedged, not restarted.
        own_redis.stop()
        stopped = path.stat().st_mtime
        wait_until(lambda: _touched_after(path, stopped + MAX_AGE_SECONDS), timeout=30,
                   what="the worker's loop going round while Redis is away")
        assert _passes(probe)
        own_redis.start()
        # Wedged: the process exists (signal 0 reaches it) but its loop does not go round.
        worker.send_signal(signal.SIGSTOP)
        os.kill(worker.pid, 0)
        wait_until(lambda: not _passes(probe), timeout=30, what="the probe failing")
        worker.send_signal(signal.SIGCONT)
        wait_until(lambda: _passes(probe), timeout=30, what="the probe passing again")
    finally:
        worker.send_signal(signal.SIGCONT)
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        yield app


def test_the_reconcile_probe_fails_while_a_pass_hangs_in_a_call(app, jenkins_fake, tmp_path):
    """Jenkins holds the leader's first call of its pass (which agents are online?) and never
    answers: the process and its thread exist, the loop does not move."""
    path = tmp_path / "reconcile.alive"
    probe = _probe("reconcile", path)
    placed(app, 1)  # an agent on its way up: the pass asks Jenkins about it
    rt = runtime.current()
    arrived, release = jenkins_fake.hold_next("/computer")
    stop = threading.Event()
    thread = threading.Thread(target=reconcile.run_forever, args=(rt, stop),
                              kwargs={"interval": 0.2, "alive": liveness.Beat(str(path))},
                              daemon=True)
    thread.start()
    try:
        assert arrived.wait(30), "the pass never asked Jenkins"
        assert thread.is_alive()
        wait_until(lambda: not _passes(probe), timeout=30, what="the probe failing")
        release.set()
        wait_until(lambda: _passes(probe), timeout=30, what="the probe passing again")
    finally:
        release.set()
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
