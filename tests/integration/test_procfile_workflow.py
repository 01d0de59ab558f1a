"""The everyday workflow through the Procfile's three processes, each line run through a shell
as honcho and foreman run it, on a real Redis, kmock over HTTP and the Jenkins fake: a push, its
build, its end, a second push to the same branch, a tag push, a branch and a tag deleted. Every
answer is what the sender's rules expect, every agent goes when its build ends, and no process
logs an error or a secret (the webhook tokens, the Jenkins API token, an agent's secret)."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG, fixture, fixture_bytes
from tests.support.redis_server import free_port
from workers.core.routing import AGENT_PARAMETER

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ci-agents"
GITLAB_TOKEN, JENKINS_TOKEN = "gl-procfile-token-5d1e", "jk-procfile-token-9a7c"
ZERO = "0" * 40


class Stack:
    """The Procfile's processes, started as a process manager does, with their logs."""

    def __init__(self, env: dict[str, str], logs: Path, port: int):
        self.port, self.logs = port, logs
        lines = (ROOT / "Procfile").read_text().splitlines()
        self.procs = {}
        for line in filter(None, map(str.strip, lines)):
            name, command = line.split(":", 1)
            with (logs / f"{name}.log").open("w") as log:
                self.procs[name] = subprocess.Popen(
                    ["sh", "-c", command.strip()], cwd=ROOT, env=env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def gitlab(self, body: bytes, event: str, delivery: str) -> tuple[int, dict]:
        return self.post("/webhooks/gitlab", body, {
            "Content-Type": "application/json", "X-Gitlab-Event": event,
            "X-Gitlab-Token": GITLAB_TOKEN, "Idempotency-Key": delivery})

    def jenkins(self, note: dict) -> tuple[int, dict]:  # the plugin: token in the URL
        return self.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json.dumps(note).encode(),
                         {"Content-Type": "application/json;charset=UTF-8"})

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2).close()
            return True
        except OSError:
            return False

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


@pytest.fixture
def stack(redis_url, kube, jenkins_fake, tmp_path):
    for node in ("node-a", "node-b"):  # the example's template selects Linux nodes
        kube.add_node(node, cpu="8", memory="32Gi", labels={"kubernetes.io/os": "linux"})
        kube.set_node_usage(node, cpu="500m", memory="2Gi")
    kube.add_namespace(NAMESPACE)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROMETHEUS_") and k not in ("CI_AUTOSCALER_BIND",
                                                           "KUBERNETES_SERVICE_HOST")}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "PORT": str(port),
            "REDIS_URL": redis_url, "CI_AUTOSCALER_CONFIG": str(EXAMPLE_CONFIG),
            "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN, "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN,
            "JENKINS_URL": jenkins_fake.url, "JENKINS_USER": jenkins_fake.user,
            "JENKINS_API_TOKEN": jenkins_fake.token, "KUBECONFIG": str(kube.kubeconfig_path),
            "AGENT_NAMESPACE": NAMESPACE, "CI_AUTOSCALER_SPOOL_DIR": str(tmp_path / "spool"),
            "WEB_CONCURRENCY": "1"}
    running = Stack(env, tmp_path, port)
    try:
        wait_until(lambda: running.answers() or running.procs["web"].poll() is not None,
                   timeout=30, what="the web process answering")
        assert running.answers(), running.text()
        yield running
    finally:
        running.stop()


def _push(sha: str, **change) -> bytes:
    return json.dumps(fixture("gitlab_push_real_lrz.json")
                      | {"after": sha, "checkout_sha": sha} | change).encode()


def test_push_build_end_second_push_tag_and_deletions_through_the_procfile(
        stack, kube, jenkins_fake):
    pods = lambda: sorted(p["metadata"]["name"] for p in kube.pods(NAMESPACE))  # noqa: E731

    def build_of(sha: str):
        return wait_until(lambda: jenkins_fake.build_with("GIT_COMMIT", sha), timeout=60,
                          what=f"the build of {sha[:8]} in Jenkins")[0]

    first_sha = fixture("gitlab_push_real_lrz.json")["checkout_sha"]
    assert stack.gitlab(fixture_bytes("gitlab_push_real_lrz.json"), "Push Hook", "d-1")[0] == 202
    first = build_of(first_sha)
    agent = first.parameters[AGENT_PARAMETER]
    wait_until(lambda: agent in pods() and agent in jenkins_fake.nodes, timeout=60,
               what="the first build's pod and Jenkins agent")
    agent_secrets = [jenkins_fake.nodes[agent].secret]
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(first.queue_id, agent)]
    assert stack.jenkins(jenkins_fake.notification(first, "QUEUED"))[1]["status"] == "ignored"
    assert stack.jenkins(jenkins_fake.notification(first, "STARTED"))[1]["status"] == "recorded"

    # A second push to the same branch while the first build runs: a build of its own.
    assert stack.gitlab(_push("b" * 40, before=first_sha), "Push Hook", "d-2")[0] == 202
    second = build_of("b" * 40)
    assert second.parameters[AGENT_PARAMETER] != agent

    jenkins_fake.finish_build(first.queue_id, "SUCCESS")
    assert stack.jenkins(jenkins_fake.notification(first, "COMPLETED"))[0] == 202
    assert stack.jenkins(jenkins_fake.notification(first, "FINALIZED"))[1]["status"] \
        == "duplicate"
    wait_until(lambda: agent not in pods() and agent not in jenkins_fake.nodes, timeout=60,
               what="the first build's pod and agent deleted")

    tag = fixture("gitlab_tag_push_create_real_lrz.json")
    assert stack.gitlab(fixture_bytes("gitlab_tag_push_create_real_lrz.json"),
                        "Tag Push Hook", "d-3")[0] == 202
    tagged = build_of(tag["checkout_sha"])
    assert tagged.parameters["GIT_TAG"] == "v0.2.0-test"

    deleted = _push(ZERO, before="b" * 40, checkout_sha=None, commits=[], total_commits_count=0)
    assert stack.gitlab(deleted, "Push Hook", "d-4") == (
        200, {"status": "ignored", "reason": "branch deleted"})
    assert stack.gitlab(fixture_bytes("gitlab_tag_push_delete_real_lrz.json"),
                        "Tag Push Hook", "d-5")[1]["status"] == "ignored"

    # The other two builds run and end: nothing of ours is left.
    for build in (second, tagged):
        name = build.parameters[AGENT_PARAMETER]
        wait_until(lambda: name in jenkins_fake.nodes, timeout=60, what=f"agent {name}")
        agent_secrets.append(jenkins_fake.nodes[name].secret)
        jenkins_fake.connect_agent(name)
    jenkins_fake.dispatch()
    for build in (second, tagged):
        jenkins_fake.finish_build(build.queue_id, "FAILURE")
        assert stack.jenkins(jenkins_fake.notification(build, "COMPLETED"))[0] == 202
    wait_until(lambda: not pods() and not jenkins_fake.nodes, timeout=60,
               what="every pod and agent deleted")
    assert len(jenkins_fake.builds) == 3

    codes = stack.stop()
    assert codes == {"web": 0, "worker": 0, "reconcile": 0}, stack.text()[-3000:]
    text = stack.text()
    errors = [line for line in text.splitlines() if '"level":"error"' in line]
    assert errors == [], errors
    secrets = [GITLAB_TOKEN, JENKINS_TOKEN, jenkins_fake.token, *agent_secrets]
    assert [s for s in secrets if s in text] == []
