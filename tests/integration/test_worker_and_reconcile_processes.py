"""The worker and reconcile commands as processes: SIGTERM finishes the job under way (the
reconcile loop: the step of its pass under way), then exits 0; of two reconcile processes only
one acts per period, and the other takes over when the first dies."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_reconcile_repairs import CONFIG, NAMESPACE
from tests.integration.test_reconcile_repairs import app, state_of  # noqa: F401 (fixture)
from tests.support.app import cluster_app, work
from tests.support.gitlab_fake import captured_project_id
from tests.support.monitoring import wait_until
from tests.support.redis_server import free_port
from workers import runtime
from workers.adapters.pass_store import PassStore

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.3


class Process:
    """A `ci-autoscaler` command in its own process, its JSON log lines collected as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                                     env=dict(os.environ), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def said(self, message: str) -> int:
        return sum(1 for line in list(self.lines) if line.get("msg") == message)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


def test_sigterm_lets_the_worker_finish_the_job_under_way_then_exit(app, jenkins_fake):
    key = push(app.test_client(), 1)
    state = state_of(app)
    arrived = jenkins_fake.slow_next("/job/build/buildWithParameters", seconds=2)
    worker = Process("worker")
    try:
        assert arrived.wait(60), "the worker never asked Jenkins for the build"
        worker.proc.send_signal(signal.SIGTERM)  # while the build request is in flight
        code = worker.proc.wait(timeout=30)
    finally:
        worker.stop(signal.SIGKILL)
    assert code == 0, "".join(worker.raw[-20:])
    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state.get_build(key)["status"] == "triggered"
    assert state.queue.failed_job_registry.count == 0
    assert state.queue.started_job_registry.count == 0  # finished, not abandoned


def test_a_worker_started_before_redis_answers_waits_for_it_then_works(
        monkeypatch, tmp_path, own_redis, kube, jenkins_fake):
    """Redis restarting, or a machine booting with the Procfile's processes beside redis-server:
    the web spools and the reconcile loop waits, and so does the worker now. It exited 1 with a
    traceback (RQ's worker asks Redis for its name as it is made), and a process manager
    (honcho, foreman, `ci-autoscaler run`) then stops every process of the Procfile."""
    with cluster_app(monkeypatch, tmp_path, redis_url=own_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as web:
        own_redis.stop()
        worker = Process("worker")
        try:
            wait_until(lambda: worker.said("Redis unavailable: waiting for it"),
                       timeout=30, what="the worker waiting for Redis")
            assert worker.proc.poll() is None, "".join(worker.raw[-20:])
            own_redis.start()
            key = push(web.test_client(), 1)
            wait_until(lambda: jenkins_fake.build_with("CI_AUTOSCALER_BUILD_KEY", key),
                       timeout=60, what="the push built by the worker")
        finally:
            code = worker.stop()
    assert code == 0, "".join(worker.raw[-20:])
    assert worker.said("Redis unavailable: waiting for it") == 1  # once, not every try


def test_a_worker_asked_to_stop_while_it_waits_for_redis_exits_0(
        monkeypatch, tmp_path, own_redis, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=own_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        own_redis.stop()
        worker = Process("worker")
        # a worker's start-up took over 30 s on a test machine at load 10 (a full suite
        # beside other work): the bound is for a wedged process, not a slow one
        wait_until(lambda: worker.said("Redis unavailable: waiting for it"),
                   timeout=90, what="the worker waiting for Redis")
        assert worker.stop(timeout=10) == 0, "".join(worker.raw[-20:])


@pytest.mark.parametrize("command", ["worker", "reconcile"])
def test_a_sigterm_while_the_api_server_cannot_be_reached_ends_the_process_at_once(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, command):
    """Starting waits up to a minute for the cluster snapshot to sync; with the API server
    unreachable (a wrong kubeconfig context, a VPN down), a SIGTERM then (Ctrl-C under the
    Procfile's runner, a rollout) killed the worker outright (exit -15), and the reconcile
    process went on waiting, past a pod's 30 s grace period, to be SIGKILLed."""
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        nowhere = tmp_path / "kubeconfig"
        nowhere.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port()}",
                                  kube.as_chart_service_account(NAMESPACE).read_text()))
        monkeypatch.setenv("KUBECONFIG", str(nowhere))
        process = Process(command)
        wait_until(lambda: any("list failed" in line for line in process.raw), timeout=30,
                   what="the process trying to list the cluster")
        started = time.monotonic()
        code = process.stop(timeout=20)
    assert code == 0, "".join(process.raw[-10:])
    assert time.monotonic() - started < 5


def test_a_worker_whose_api_server_does_not_answer_waits_for_it_then_starts(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """An API server that gives no list of the cluster within a minute (a wrong kubeconfig
    context, a VPN down, the cluster still starting): the worker ended with a traceback
    ("RetryableError: the cluster snapshot did not sync with the API server in 60s"), exit
    1, and a Procfile runner stopped every process with it, the web too, whose refused
    pushes GitLab never sends again. Now it says so and waits, as for Redis, and starts once
    the API server answers (here: the kubeconfig it reads on each try fixed)."""
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        real = kube.as_chart_service_account(NAMESPACE).read_text()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{free_port()}", real))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # each try gives the API server 5 s, not the default minute: the same path, cheaper
        monkeypatch.setenv("CI_AUTOSCALER_SNAPSHOT_SYNC_SECONDS", "5")
        process = Process("worker")
        try:
            wait_until(lambda: process.said("Kubernetes API unavailable: waiting for it")
                       or process.proc.poll() is not None, timeout=90,
                       what="the worker saying it waits for the API server")
            assert process.proc.poll() is None, "".join(process.raw[-10:])
            kubeconfig.write_text(real)
            wait_until(lambda: any("Listening on" in line for line in process.raw)
                       or process.proc.poll() is not None, timeout=90,
                       what="the worker taking jobs")
            assert process.proc.poll() is None, "".join(process.raw[-10:])
        finally:
            code = process.stop()
    assert code == 0, "".join(process.raw[-10:])
    assert not any("Traceback" in line for line in process.raw)


def test_only_one_of_two_reconcile_processes_acts_and_the_other_takes_over(app):
    first = Process("reconcile", "--interval", str(INTERVAL))
    second = Process("reconcile", "--interval", str(INTERVAL))
    try:
        wait_until(lambda: first.said("reconciled") + second.said("reconciled") >= 8,
                   timeout=60, what="eight reconcile passes")
        counts = sorted([first.said("reconciled"), second.said("reconciled")])
        assert counts[0] == 0, f"both acted: {counts}"
        leader, other = (first, second) if first.said("reconciled") else (second, first)
        instances = {line["instance"] for line in leader.lines if line.get("msg") == "reconciled"}
        assert len(instances) == 1

        leader.stop(signal.SIGKILL)  # dies holding the lease: the other waits out its TTL
        killed_at = time.monotonic()
        wait_until(lambda: other.said("reconciled") > 0, timeout=30,
                   what="the second process taking over")
        assert time.monotonic() - killed_at < 3 * INTERVAL * 3 + 5
    finally:
        codes = [p.stop() for p in (first, second)]
    assert codes[0 if leader is second else 1] == 0  # the survivor stops cleanly on SIGTERM


def test_sigterm_mid_pass_ends_the_pass_after_its_step_lets_the_lease_go_and_exits_0(
        app, jenkins_fake):
    """A pass longer than the reconcile pod's grace period (the chart sets none: Kubernetes'
    30 s) went on after SIGTERM to be SIGKILLed (exit 137) holding its lease, and the next
    leader waited out the whole TTL. Now the pass ends after the step under way (the agents
    online, held in Jenkins here), records nothing, lets the lease go and the process exits 0."""
    push(app.test_client(), 1)
    work(app)  # an agent on its way up: the pass's first step asks Jenkins about it
    rt = runtime.current()
    key = rt.state.prefix + "reconcile-lock"
    arrived, release = jenkins_fake.hold_next("/computer")
    reconciler = Process("reconcile", "--interval", "60")  # a 180 s lease
    try:
        assert arrived.wait(60), "the pass never asked Jenkins"
        assert rt.state.redis.exists(key)
        reconciler.proc.send_signal(signal.SIGTERM)  # in the pass's first step
        release.set()
        code = reconciler.proc.wait(timeout=20)
    finally:
        release.set()
        reconciler.stop(signal.SIGKILL)
    assert code == 0, "".join(reconciler.raw[-20:])
    assert reconciler.said("reconcile pass stopped: the process is stopping (the next pass "
                           "does the rest)") == 1, "".join(reconciler.raw[-20:])
    assert reconciler.said("reconciled") == 0  # the steps after it were left
    assert not rt.state.redis.exists(key)  # the next leader need not wait out its TTL
    recorded = PassStore(rt.state.redis, prefix=rt.state.prefix).read()
    assert recorded.last_ok_at is None and recorded.failing_since is None


def test_the_reconcile_process_runs_the_catch_up_when_gitlab_is_configured(
        app, gitlab_fake, monkeypatch):
    config = Path(os.environ["CI_AUTOSCALER_CONFIG"])
    config.write_text(config.read_text() + "catchUp: {projects: [team/app]}\n")
    gitlab_fake.add_project("team/app", branches={"main": "a" * 40})
    monkeypatch.setenv("GITLAB_URL", gitlab_fake.url)
    monkeypatch.setenv("GITLAB_API_TOKEN", gitlab_fake.token)
    monkeypatch.setenv("CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS", str(INTERVAL))
    reconcile = Process("reconcile", "--interval", str(INTERVAL))
    try:
        wait_until(lambda: reconcile.said("caught up") >= 1, timeout=60,
                   what="a catch-up pass (the baseline)")
        gitlab_fake.push("team/app", "feature", "b" * 40)  # its webhook never came
        wait_until(lambda: reconcile.said("missed push built") == 1, timeout=30,
                   what="the missed push built")
        # beside the reconcile passes, not instead: the first may still run (its own thread;
        # the catch-up's first two passes can end within half a second)
        wait_until(lambda: reconcile.said("reconciled") >= 1, timeout=30,
                   what="a reconcile pass beside the catch-up")
    finally:
        code = reconcile.stop()
    assert code == 0, "".join(reconcile.raw[-20:])
    [record] = state_of(app).redis.lrange(state_of(app).intake.key, 0, -1)
    assert json.loads(record)["build"]["ref"] == "refs/heads/feature"
    assert gitlab_fake.token not in "".join(reconcile.raw)


def test_the_reconcile_process_exports_its_catch_up_failing_for_an_expired_token(
        app, gitlab_fake, monkeypatch):
    """The process the Procfile runs: every pass fails for a token past its expiry date (GitLab
    401 "Token is expired"), and /metrics says so (CIGitLabCatchUpFailing reads it)."""
    config = Path(os.environ["CI_AUTOSCALER_CONFIG"])
    config.write_text(config.read_text() + "catchUp: {projects: [team/app]}\n")
    gitlab_fake.add_project("team/app", branches={"main": "a" * 40})
    gitlab_fake.expired_tokens.add(gitlab_fake.token)
    monkeypatch.setenv("GITLAB_URL", gitlab_fake.url)
    monkeypatch.setenv("GITLAB_API_TOKEN", gitlab_fake.token)
    monkeypatch.setenv("CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS", str(INTERVAL))
    reconcile = Process("reconcile", "--interval", str(INTERVAL))
    try:
        wait_until(lambda: reconcile.said("catch-up pass failed") >= 2, timeout=60,
                   what="two failed catch-up passes")
    finally:
        code = reconcile.stop()
    assert code == 0, "".join(reconcile.raw[-20:])
    text = app.test_client().get("/metrics").get_data(as_text=True)
    exported = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("ci_autoscaler_catch_up_")}
    assert exported["ci_autoscaler_catch_up_failing_seconds"] >= INTERVAL
    assert exported["ci_autoscaler_catch_up_pass_age_seconds"] == float("inf")
    assert gitlab_fake.token not in "".join(reconcile.raw)


def test_the_reconcile_process_posts_commit_statuses_when_gitlab_is_configured(
        app, gitlab_fake, monkeypatch):
    """A build in flight when the reconcile process starts gets its status from the sender's
    first sweep; the process stops cleanly and never prints the token."""
    key = push(app.test_client(), 1)
    work(app)
    sha = state_of(app).get_build(key)["sha"]
    gitlab_fake.add_project("hephaestustest/demo-repository", branches={"main": sha},
                            project_id=captured_project_id())
    gitlab_fake.tokens["glpat-process-api-31Kd"] = {"api"}
    monkeypatch.setenv("GITLAB_URL", gitlab_fake.url)
    monkeypatch.setenv("GITLAB_API_TOKEN", "glpat-process-api-31Kd")
    reconcile = Process("reconcile", "--interval", str(INTERVAL))
    try:
        wait_until(lambda: reconcile.said("commit status sent") == 1, timeout=60,
                   what="the build's commit status posted")
    finally:
        code = reconcile.stop()
    assert code == 0, "".join(reconcile.raw[-20:])
    assert gitlab_fake.status_history("hephaestustest/demo-repository") == [
        ("pending", "agent starting on node-a", 201)]
    assert state_of(app).get_build(key)["status_sent"] == "pending"
    assert "glpat-process-api-31Kd" not in "".join(reconcile.raw)


def test_run_stops_every_process_when_one_ends(app, monkeypatch):
    """`ci-autoscaler run` (`make run`): a web that cannot bind its port ends, and the worker and
    the reconcile loop are stopped with it, as honcho and foreman stop a Procfile's processes;
    before, they ran on under a command that never returned."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("CI_AUTOSCALER_BIND", f"127.0.0.1:{taken.getsockname()[1]}")
        run = Process("run")
        children: list[int] = []
        try:
            children = wait_until(lambda: len(kids := _children(run.proc.pid)) == 3 and kids,
                                  timeout=30, what="web, worker and reconcile started")
            code = run.proc.wait(timeout=90)  # gunicorn tries to bind for about 5 s
        finally:
            run.stop(signal.SIGKILL)
            for pid in children:  # what a failed run leaves is not left to the next test
                with contextlib.suppress(OSError):  # gone; its pid checked against reuse
                    if b"service.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
    assert code != 0
    assert any("Connection in use" in line for line in run.raw), "".join(run.raw[-20:])
    for pid in children:  # stopped and reaped by `run`
        assert not Path(f"/proc/{pid}").exists()


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_sigterm_while_the_reconcile_process_starts_ends_it_cleanly(app, kube):
    """Starting lists the cluster (its snapshot must sync first); a SIGTERM then (a rollout,
    the Procfile's runner stopping) used to kill the process outright, exit -15."""
    kube.stall("GET", "/api/v1/nodes", seconds=2, times=4)  # a slow API server
    reconciler = Process("reconcile", "--interval", str(INTERVAL))
    wait_until(lambda: any(r.startswith("GET /api/v1/nodes") for r in kube.requests()),
               timeout=30, what="the reconcile process listing the nodes")

    assert reconciler.stop(timeout=60) == 0, "".join(reconciler.raw)[-2000:]
    assert reconciler.said("reconciled") == 0  # no pass began after it was asked to stop


def test_a_reconcile_loop_asked_to_stop_while_it_waits_for_redis_exits_0(
        monkeypatch, tmp_path, own_redis, kube, jenkins_fake):
    """Since it waits for Redis at start (as the worker does), a SIGTERM then ends it at once."""
    with cluster_app(monkeypatch, tmp_path, redis_url=own_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        own_redis.stop()
        loop = Process("reconcile", "--interval", str(INTERVAL))
        wait_until(lambda: loop.said("Redis unavailable: waiting for it"),
                   timeout=30, what="the reconcile loop waiting for Redis")
        assert loop.stop(timeout=10) == 0, "".join(loop.raw[-20:])
    assert loop.said("reconciled") == 0
    assert not any("Traceback" in line for line in loop.raw)


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("command", ["worker", "reconcile"])
def test_a_sigterm_while_the_process_imports_its_modules_stops_it_cleanly(command):
    """Kubernetes sends SIGTERM on every pod deletion and rollout. Until the command had
    imported its settings, Redis, RQ and Kubernetes modules (a second or two), SIGTERM had its
    default action and the process died of it (exit -15). The SIGTERM is sent as pydantic
    (which the settings need) is loaded: the command's own modules are still to come."""
    process = Process(command)
    try:
        wait_until(lambda: _loaded(process.proc.pid, "pydantic_core") or
                   process.proc.poll() is not None, timeout=30, interval=0.002,
                   what="the process importing its settings")
        started = time.monotonic()
        code = process.stop(timeout=20)
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
    assert code == 0, "".join(process.raw[-10:])
    assert time.monotonic() - started < 5
    assert not any("Traceback" in line for line in process.raw), "".join(process.raw[-20:])


def test_a_build_whose_worker_was_killed_mid_provision_is_provisioned_again_within_seconds(
        app_on_cluster, jenkins_fake):
    """A worker SIGKILLed (an OOM kill, a failed liveness probe) while it provisions a build:
    its provision lease (60 s by default) outlived it, and the reconcile loop then waited a
    lease period more since the build's last touch, so the build waited a minute or more for
    nothing, as did its release's retries ("being provisioned"). A lease its holder stopped
    renewing (every 5 s) is its dead holder's: the build is provisioned again at once, and is
    built once."""
    app = app_on_cluster(CONFIG, namespace=NAMESPACE)  # the default provision lease
    state = state_of(app)
    key = push(app.test_client(), 1)
    arrived, release = jenkins_fake.hold_next("/job/build/buildWithParameters")
    worker = Process("worker")
    reconciler = Process("reconcile", "--interval", "1")
    second = None
    try:
        assert arrived.wait(60), "the worker never asked Jenkins for the build"
        children = [int(pid) for pid in Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}"
                                                "/children").read_text().split()]
        for pid in [worker.proc.pid, *children]:  # the container's processes, all at once
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        worker.proc.wait(timeout=30)
        release.set()  # Jenkins takes the trigger its client is no longer there for
        second = Process("worker")  # the Deployment's new pod
        wait_until(lambda: state.get_build(key).get("status") == "triggered"
                   and state.get_build(key).get("restarted_at"), timeout=120,
                   what=lambda: f"the build provisioned again: {state.get_build(key)}")
        waited = time.monotonic() - killed
    finally:
        release.set()
        worker.stop(signal.SIGKILL)
        for process in (reconciler, second):
            if process is not None:
                process.stop()
    assert waited < 45, waited  # the lease's 60 s, and as long again, before
    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert reconciler.said("provisioning a stalled build again") == 1, reconciler.raw[-20:]
