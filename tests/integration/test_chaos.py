"""Chaos: 200 pushes while a worker is SIGKILLed mid-provision 3 times, the Kubernetes API
and Jenkins answer 500 or 429 to 20% of calls, and Redis (AOF on) is restarted once.

At the end every push has exactly one Jenkins build; after the COMPLETED notifications, pods
created (seen by an independent proxy) equal pods deleted and no Jenkins agent is left.
The web app runs in-process; two workers and the reconcile loop are the shipped commands, each
in its own process, restarted when they exit (as Kubernetes restarts a container).
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from rq import Worker

from tests.integration.test_push_to_pod import NAMESPACE, completed
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, one_template_config, production_env
from tests.support.fault_proxy import FaultProxy
from tests.support.kmock_cluster import _write_kubeconfig
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.redis_server import RedisServer
from workers.adapters.redis_state import SERIALIZER
from service.app import create_app, start_spool_drainer
from workers import runtime
from workers.core.routing import BUILD_KEY_PARAMETER

ROOT = Path(__file__).resolve().parents[2]
PUSHES = 200
KILLS = 3
WORKERS = 2
FAULT_RATIO = 0.2
SEED = 7
CONFIG = one_template_config("""
    cpu: {min: 250m, default: 250m, max: 250m}
    memory: {min: 256Mi, default: 256Mi, max: 256Mi}
""")


class Supervised:
    """A `ci-autoscaler` command kept running: started again whenever it exits."""

    def __init__(self, *args: str, log: Path):
        self.args, self.log = args, log
        self.starts = 0
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._keep, daemon=True)

    def start(self) -> "Supervised":
        self._thread.start()
        return self

    def _keep(self) -> None:
        with open(self.log, "a") as out:
            while not self._stop.is_set():
                with self._lock:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-m", "service.cli", *self.args], cwd=ROOT,
                        env=dict(os.environ), stdout=out, stderr=out)
                    self.starts += 1
                self.proc.wait()
                self._stop.wait(0.2)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
        self._thread.join(30)


def deliver(client, path: str, body: dict, headers: dict, counts: dict) -> None:
    """Send as GitLab or the Jenkins plugin would, again until stored: a 503 (or no answer)
    means "not stored", and this sender retries (GitLab would not: a push is stored in the
    web's spool while Redis is away; a Jenkins notification still gets 503 then)."""
    while True:
        response = client.post(path, json=body, headers=headers)
        assert response.status_code < 500 or response.status_code == 503, response.json
        if response.status_code != 503:
            assert response.status_code in (200, 202), response.json
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
            return
        counts[503] = counts.get(503, 0) + 1
        time.sleep(0.05)


def test_nothing_lost_nothing_duplicated_nothing_leaked(monkeypatch, tmp_path, kube, jenkins_fake):
    store = RedisServer(tmp_path / "redis", appendonly=True).start()
    # Thousands of calls: kmock matches each by walking its whole history, and its loop, busy
    # with that, made the test's own reads of the pods time out on a loaded machine.
    kube.trim_history()
    kube_proxy = FaultProxy(kube.url, ratio=FAULT_RATIO, seed=SEED, kubernetes=True).start()
    jenkins_proxy = FaultProxy(jenkins_fake.url, ratio=FAULT_RATIO, seed=SEED + 1,
                               kubernetes=False).start()
    kubeconfig = tmp_path / "kubeconfig"
    _write_kubeconfig(kubeconfig, kube_proxy.url)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    for i in range(4):
        kube.add_node(f"node-{i}", cpu="64", memory="256Gi")
    production_env(monkeypatch, redis_url=store.url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, KUBECONFIG=str(kubeconfig),
                   JENKINS_URL=jenkins_proxy.url, CI_AUTOSCALER_PROVISION_LEASE_SECONDS="3",
                   CI_AUTOSCALER_LOST_EVENT_SECONDS="30",
                   CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="1")
    runtime.install(None)
    app = create_app()
    client = app.test_client()
    # What gunicorn's workers run beside the app (service.wsgi): pushes spooled while Redis
    # restarts are moved into it once it is back.
    drainer = start_spool_drainer(app)
    probe = redis.Redis.from_url(store.url, socket_timeout=1)
    workers = [Supervised("worker", log=tmp_path / f"worker-{i}.log").start()
               for i in range(WORKERS)]
    reconciler = Supervised("reconcile", "--interval", "1", log=tmp_path / "reconcile.log")
    reconciler.start()
    counts: dict[int, int] = {}
    kills: list[float] = []
    began = time.monotonic()
    try:
        keys = []

        def pushes() -> None:
            for n in range(PUSHES):
                body = fixture("gitlab_push_real_lrz.json")
                body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
                headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
                           "X-Gitlab-Event-UUID": f"delivery-{n}"}
                deliver(client, "/webhooks/gitlab", body, headers, counts)
                if n % 10 == 0:  # GitLab may deliver the same event twice
                    deliver(client, "/webhooks/gitlab", body, headers, counts)
                if n == PUSHES // 2:  # Redis restarts once, mid-run; AOF keeps what it took
                    store.stop()
                    threading.Timer(1.0, store.start).start()
        sender = threading.Thread(target=pushes)
        sender.start()

        # SIGKILL a worker while it runs a provision job (RQ says which job each worker runs).
        def provisioning() -> Supervised | None:
            try:
                live = {w.pid: w for w in workers if w.pid is not None}
                # dead ones stay listed a while
                for rq_worker in Worker.all(connection=probe, serializer=SERIALIZER):
                    job = rq_worker.get_current_job()
                    if rq_worker.pid in live and job is not None \
                            and job.func_name.endswith("provision_agent"):
                        return live[rq_worker.pid]
            except redis.RedisError:
                pass
            return None
        for _ in range(KILLS):
            victim = wait_until(provisioning, timeout=120, interval=0.005,
                                what="a worker running a provision")
            starts, pid = victim.starts, victim.pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                kills.append(time.monotonic())
            wait_until(lambda: victim.starts > starts, timeout=30, what="the worker restarted")
        sender.join(300)
        assert not sender.is_alive()
        print(f"\nchaos: pushes sent in {time.monotonic() - began:.0f}s", flush=True)

        state = runtime.current().state
        # The workers' movers make each stored push a job and a build (workers.engine.intake).
        wait_until(lambda: probe.zcard("cia:builds") >= PUSHES, timeout=120,
                   what="every stored push made a build by a mover")
        keys = [k.decode() for k in probe.zrange("cia:builds", 0, -1)]
        assert len(keys) == PUSHES
        wait_until(lambda: set(keys) <= jenkins_fake.parameter_values(BUILD_KEY_PARAMETER),
                   timeout=300, what="a Jenkins build for every push")
        per_push = [len(jenkins_fake.build_with(BUILD_KEY_PARAMETER, k)) for k in keys]
        print(f"chaos: every push triggered after {time.monotonic() - began:.0f}s", flush=True)
        # Jenkins starts a build only once its agent connects: its pod first. (A provision
        # triggers the build beside its pod's create; a create that failed is retried.)
        # Its pod is made under the build's current agent name: a build whose create failed
        # (a fault answered for the API server) is placed again under a new name, the one its
        # record names (workers.engine.agent_names); its Jenkins build keeps the first as its label.
        def current_agents() -> set[str]:
            return {state.get_build(k).get("agent", "") for k in keys}
        wait_until(lambda: current_agents() <= set(kube_proxy.pods_created), timeout=300,
                   what="an agent pod made for every build")

        for build in list(jenkins_fake.builds):
            jenkins_fake.start_build(build.queue_id)
            jenkins_fake.finish_build(build.queue_id)
            deliver(client, f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                    completed(jenkins_fake, build.parameters["CI_AUTOSCALER_AGENT"]), {},
                    counts)
        print(f"chaos: notified after {time.monotonic() - began:.0f}s", flush=True)
        # Polled with the pods' metadata alone: 200 whole pods copied ten times a second on
        # kmock's loop held up the very deletes awaited here.
        wait_until(lambda: not kube.pods(NAMESPACE, only=("metadata",))
                   and not jenkins_fake.nodes, timeout=300,
                   what=lambda: f"every pod and Jenkins agent gone (left: "
                                f"{len(kube.pods(NAMESPACE))} pods, {len(jenkins_fake.nodes)} "
                                "agents)")
        print(f"chaos: all released after {time.monotonic() - began:.0f}s", flush=True)
        created, deleted = len(kube_proxy.pods_created), len(kube_proxy.pods_deleted)
        print(f"\nchaos: {PUSHES} pushes ({counts.get(202, 0)} answered 202, "
              f"{counts.get(200, 0)} 200, {counts.get(503, 0)} 503 while Redis restarted); "
              f"workers killed {len(kills)}x, started {sum(w.starts for w in workers)}x; "
              f"reconcile started "
              f"{reconciler.starts}x; faults injected: kubernetes {dict(kube_proxy.faults)} "
              f"of {kube_proxy.requests} calls, jenkins {dict(jenkins_proxy.faults)} of "
              f"{jenkins_proxy.requests} calls; builds triggered {len(jenkins_fake.builds)} "
              f"(per push: min {min(per_push)}, max {max(per_push)}); pods created {created}, "
              f"deleted {deleted}; Jenkins agents left {len(jenkins_fake.nodes)}")
        assert per_push == [1] * PUSHES
        assert len(jenkins_fake.builds) == PUSHES
        assert created == deleted
        assert len(set(kube_proxy.pods_created)) == PUSHES  # one agent per build
        assert not jenkins_fake.nodes
        assert len(kills) == KILLS and sum(w.starts for w in workers) >= WORKERS + KILLS
        assert state.queue.failed_job_registry.count == 0
    finally:
        for worker in workers:
            worker.stop()
        reconciler.stop()
        drainer[1].set()
        runtime.install(None)
        kube_proxy.stop()
        jenkins_proxy.stop()
        store.stop()
