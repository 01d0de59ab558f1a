"""The Procfile's processes (web, worker, reconcile), each line run through a shell as honcho
and foreman run it, on a real Redis, kmock over HTTP and the Jenkins fake: `Stack` starts
them and speaks to the web as GitLab and the Jenkins Notification plugin do; `running_stack`
starts one with an operator's environment and waits for the web to answer."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.kmock_cluster import SERVICE_ACCOUNT_TOKEN
from tests.support.monitoring import wait_until
from tests.support.redis_server import free_port
from tests.support.web_process import answers

ROOT = Path(__file__).resolve().parents[2]
GITLAB_TOKEN, JENKINS_TOKEN = "gl-procfile-token-5d1e", "jk-procfile-token-9a7c"


class Stack:
    """The Procfile's processes, started as a process manager does, with their logs."""

    def __init__(self, env: dict[str, str], logs: Path, port: int):
        self.port, self.logs, self.env = port, logs, env
        lines = (ROOT / "Procfile").read_text().splitlines()
        self.commands = dict((name, command.strip()) for name, command in (
            line.split(":", 1) for line in filter(None, map(str.strip, lines))))
        self.procs: dict[str, subprocess.Popen] = {}
        for name in self.commands:
            self.start_line(name, log_mode="w")

    def start_line(self, line: str, name: str | None = None, *, command: str | None = None,
                   env: dict[str, str] | None = None, log_mode: str = "a") -> subprocess.Popen:
        """The Procfile's line started (again) under its own name or `name`, as a process
        manager starts, restarts or scales it: its command (or `command`, the line as an
        operator may change its arguments), in the stack's environment (with `env` over it),
        its output added to its log."""
        name = name or line
        with (self.logs / f"{name}.log").open(log_mode) as log:
            self.procs[name] = subprocess.Popen(
                ["sh", "-c", command or self.commands[line]], cwd=ROOT,
                env=self.env | (env or {}), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self.procs[name]

    def request(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                         headers=headers or {},
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        status, answer = self.request(path, body, headers)
        return status, json.loads(answer or b"{}")

    def gitlab(self, body: bytes, event: str, delivery: str) -> tuple[int, dict]:
        return self.post("/webhooks/gitlab", body, {
            "Content-Type": "application/json", "X-Gitlab-Event": event,
            "X-Gitlab-Token": GITLAB_TOKEN, "Idempotency-Key": delivery})

    def jenkins(self, note: dict) -> tuple[int, dict]:  # the plugin: token in the URL
        return self.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json.dumps(note).encode(),
                         {"Content-Type": "application/json;charset=UTF-8"})

    def answers(self) -> bool:
        return answers(self.port)

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
        return codes

    def text(self) -> str:
        return "".join((self.logs / f"{name}.log").read_text() for name in self.procs)


def stack_env(*, redis_url: str, kube, jenkins_fake, config: Path, namespace: str,
              spool: Path, port: int, **extra: str) -> dict[str, str]:
    """An operator's environment for the Procfile: the caller's, less its PROMETHEUS_* and
    bind settings and any in-cluster hint, the venv's bin first on PATH, then the service's
    settings (and `extra`). Its kubeconfig is the chart's ServiceAccount's: kmock grants it the
    chart's RBAC alone, as a cluster would (KubeServer.as_chart_service_account)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROMETHEUS_") and k not in ("CI_AUTOSCALER_BIND",
                                                           "KUBERNETES_SERVICE_HOST")}
    return env | {
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "PORT": str(port),
        "REDIS_URL": redis_url, "CI_AUTOSCALER_CONFIG": str(config),
        "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN, "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN,
        "JENKINS_URL": jenkins_fake.url, "JENKINS_USER": jenkins_fake.user,
        "JENKINS_API_TOKEN": jenkins_fake.token, "KUBECONFIG": str(kube.as_chart_service_account(namespace)),
        "AGENT_NAMESPACE": namespace, "CI_AUTOSCALER_SPOOL_DIR": str(spool),
        "WEB_CONCURRENCY": "1"} | extra


@contextmanager
def running_stack(*, redis_url: str, kube, jenkins_fake, config: Path, namespace: str,
                  logs: Path, **extra: str) -> Iterator[Stack]:
    """The Procfile's processes on these parts, the web answering when yielded; stopped after
    (a test that wants their exit codes calls `stop` itself first). A test that ends well
    fails still if a process made a Kubernetes call the chart's RBAC does not grant: on a
    cluster it was a 403 the test could not see (KubeServer.as_chart_service_account)."""
    port = free_port()
    env = stack_env(redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake, config=config,
                    namespace=namespace, spool=logs / "spool", port=port, **extra)
    # a KUBECONFIG in `extra` (one through a proxy) is the ServiceAccount's too: an admin's
    # would let every call outside the chart's RBAC pass unseen
    token = SERVICE_ACCOUNT_TOKEN.format(namespace=namespace)
    assert token in Path(env["KUBECONFIG"]).read_text(), \
        f"the stack's KUBECONFIG {env['KUBECONFIG']} is not the chart's ServiceAccount's"
    running = Stack(env, logs, port)
    try:
        wait_until(lambda: running.answers() or running.procs["web"].poll() is not None,
                   timeout=30, what="the web process answering")
        assert running.answers(), running.text()
        yield running
    finally:
        running.stop()
    assert not kube.forbidden, "calls the chart's RBAC does not grant:\n" + "\n".join(
        kube.forbidden)


def pod_node(pod: dict) -> str:
    """The node kube-scheduler binds a pod of ours to, as these tests play it (kmock schedules
    nothing): our most preferred candidate (README: required affinity on the best candidates,
    preferred weights in our order), else the first required one."""
    affinity = pod["spec"]["affinity"]["nodeAffinity"]
    preferred = affinity.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred:
        best = max(preferred, key=lambda p: p["weight"])
        return best["preference"]["matchExpressions"][0]["values"][0]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return terms[0]["matchExpressions"][0]["values"][0]
