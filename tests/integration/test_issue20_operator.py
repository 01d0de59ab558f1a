"""Issue 20 ("every build's way in sight") as an operator meets it, read from the issue and
README.md alone: the Procfile's processes (gunicorn web, `ci-autoscaler worker`,
`ci-autoscaler reconcile`) with GITLAB_URL, GITLAB_API_TOKEN (scope api) and an admin port
(CI_AUTOSCALER_ADMIN_BIND), on a real redis-server, kmock over HTTP, the Jenkins fake and the
GitLab API fake over HTTP (tests/support/gitlab_fake.py: GitLab's commit status state
machine, its 255-character limits, 429 with Retry-After, 500s). The test plays
kube-scheduler, the kubelet, the agents connecting, Jenkins running the builds and its
Notification plugin.

Inputs unlike the other tests': a project in a subgroup with dots in every part of its path
(`platform.team/backend.core/svc.api`), an annotated tag push (its `after` the tag object,
`checkout_sha` the commit) routed to a job in a folder, one commit pushed to two branches
routed to two jobs, an image whose registry refuses it with a long message carrying a
credential in a URL, a build Jenkins aborts, one cancelled in its queue, one whose COMPLETED
notification was lost, GitLab answering 500, and 429 with Retry-After.
One stack serves the module; each check has a node pool (nodeSelector) of its own.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gitlab_fake import GitLabFake
from tests.support.jenkins_fake import FREESTYLE_JOB, JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import GITLAB_TOKEN, JENKINS_TOKEN, Stack, running_stack
from tests.support.redis_server import RedisServer, free_port

NAMESPACE = "ci-agents-i20"
PROJECT = "platform.team/backend.core/svc.api"
PROJECT_ID = 20_4711
API_TOKEN = "glpat-issue20-operator-Qx81"
SOON = 40  # a reconcile pass (15 s) and its work
SENT = 30  # a status reaches GitLab: the sender's poll, its settle times
LOST_EVENT_SECONDS = 5  # CI_AUTOSCALER_LOST_EVENT_SECONDS
FOLDER_JOB = "releases/svc.api/publish"
REGISTRY_PASSWORD = "s3cr3t-registry-pw"
CONFIG = {
    "routes": [
        {"project": "platform.team/**", "ref": "refs/tags/v*", "job": FOLDER_JOB,
         "template": "roomy"},
        {"project": "*", "ref": "refs/heads/wait/*", "job": "build", "template": "one"},
        {"project": "*", "ref": "refs/heads/pull/*", "job": "build", "template": "broken"},
        {"project": "*", "ref": "refs/heads/lint/*", "job": "lint", "template": "roomy"},
        {"project": "*", "ref": "refs/heads/*", "job": "build", "template": "roomy"},
    ],
    "templates": {
        # node-one has room for one: 900m + the injected agent's 100m of its 1 core
        "one": {"cpu": {"min": "900m", "default": "900m", "max": "900m"},
                "memory": {"min": "768Mi", "default": "768Mi", "max": "768Mi"},
                "nodeSelector": {"pool": "one"}},
        "roomy": {"cpu": {"min": "500m", "default": "500m", "max": "500m"},
                  "memory": {"min": "512Mi", "default": "512Mi", "max": "512Mi"},
                  "nodeSelector": {"pool": "roomy"}},
        "broken": {"inherit": "roomy", "image": "registry.example.com/team/missing-image:1"},
    },
}
STAGES = ["received", "queued", "waiting", "placed", "scheduled", "online", "started",
          "finished", "deleted"]
FIELDS = {"received": "received_at", "queued": "queued_at", "waiting": "waiting_at",
          "placed": "placed_at", "scheduled": "scheduled_at", "online": "agent_online_at",
          "started": "started_at", "finished": "finished_at", "deleted": "pod_deleted_at"}


class Operator:
    def __init__(self, stack: Stack, kube, jenkins: JenkinsFake, gitlab: GitLabFake,
                 redis_url: str, admin_port: int):
        self.stack, self.kube, self.jenkins, self.gitlab = stack, kube, jenkins, gitlab
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.admin_port = admin_port

    def admin(self, path: str) -> tuple[int, str]:
        """GET on the admin port (CI_AUTOSCALER_ADMIN_BIND), where /metrics and /status are."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}",
                                        timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def push(self, ref: str, sha: str, *, tag_object: str | None = None) -> str:
        name = "gitlab_tag_push_create_real_lrz.json" if tag_object else \
            "gitlab_push_real_lrz.json"
        body = fixture(name) | {"ref": ref, "after": tag_object or sha, "checkout_sha": sha,
                                "project_id": PROJECT_ID}
        body["project"] = body["project"] | {"id": PROJECT_ID, "path_with_namespace": PROJECT,
                                             "name": "svc.api", "namespace": "backend.core"}
        event = "Tag Push Hook" if tag_object else "Push Hook"
        status, answer = self.stack.gitlab(json.dumps(body).encode(), event, str(uuid.uuid4()))
        assert status == 202, answer
        return answer["build_key"]

    def record(self, key: str) -> dict[str, str]:
        return self.redis.hgetall(f"cia:build:{key}")

    def placed(self, key: str) -> dict[str, str]:
        return wait_until(lambda: (lambda r: r if r.get("agent") and r.get("queue_item")
                                   and self.kube.pod(NAMESPACE, r["agent"]) else None)(
                              self.record(key)),
                          timeout=SOON, what=lambda: f"build {key} placed: {self.record(key)}")

    def scheduled_and_online(self, key: str, node: str) -> dict[str, str]:
        """kube-scheduler binds the pod, the kubelet runs it, its agent connects."""
        rec = self.placed(key)
        agent = rec["agent"]
        self.kube.bind_pod(NAMESPACE, agent, node)
        self.kube.kubelet_status(NAMESPACE, agent, phase="Running")
        self.jenkins.connect_agent(agent)
        return wait_until(lambda: (lambda r: r if r.get("agent_online_at") else None)(
            self.record(key)), timeout=SOON, what=f"build {key}'s agent seen online")

    def started(self, key: str):
        rec = self.record(key)
        run = self.jenkins.start_build(int(rec["queue_item"]))
        assert self.stack.jenkins(self.jenkins.notification(run, "STARTED"))[0] == 200
        return run

    def finished(self, key: str, run, result: str = "SUCCESS") -> None:
        run = self.jenkins.finish_build(run.queue_id, result)
        assert self.stack.jenkins(self.jenkins.notification(run, "COMPLETED"))[0] in (200, 202)
        agent = self.record(key)["agent"]
        wait_until(lambda: self.kube.pod(NAMESPACE, agent) is None
                   and self.record(key).get("pod_deleted_at"), timeout=SOON,
                   what=f"build {key}'s pod deleted")

    def statuses(self, sha: str) -> list[tuple[str, str, int]]:
        return self.gitlab.status_history(PROJECT, sha)

    def stored(self, sha: str) -> dict[str, dict]:
        return {s["name"]: s for s in self.gitlab.projects[PROJECT].statuses if s["sha"] == sha}

    def arrives(self, sha: str, state: str, name: str = "ci-autoscaler/build") -> dict:
        return wait_until(lambda: (lambda s: s if s and s["status"] == state else None)(
            self.stored(sha).get(name)), timeout=SENT,
            what=lambda: f"{name} {state} on {sha[:8]}: {self.statuses(sha)}\n"
            + self.stack.text()[-3000:])

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        status, body = self.admin("/metrics")
        assert status == 200
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}


def sha(tag: str) -> str:
    return tag.encode().hex().ljust(40, "0")[:40]


@pytest.fixture(scope="module")
def op(tmp_path_factory) -> Iterator[Operator]:
    base = tmp_path_factory.mktemp("issue20")
    server = RedisServer(base / "redis").start()
    config = base / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = base / "logs"
    logs.mkdir()
    admin_port = free_port()
    try:
        with running_kube(base) as kube, JenkinsFake() as jenkins, GitLabFake() as gitlab:
            kube.add_namespace(NAMESPACE)
            kube.add_node("node-one", cpu="1", memory="2Gi", labels={"pool": "one"})
            kube.add_node("node-roomy", cpu="16", memory="64Gi", labels={"pool": "roomy"})
            for node in ("node-one", "node-roomy"):
                kube.set_node_usage(node, cpu="0", memory="0")
            for job in ("build", "lint"):
                jenkins.add_job(job, kind=FREESTYLE_JOB)
            jenkins.add_job(FOLDER_JOB)
            gitlab.tokens[API_TOKEN] = {"api"}
            gitlab.add_project(PROJECT, project_id=PROJECT_ID)
            with running_stack(redis_url=server.url, kube=kube, jenkins_fake=jenkins,
                               config=config, namespace=NAMESPACE, logs=logs,
                               GITLAB_URL=gitlab.url, GITLAB_API_TOKEN=API_TOKEN,
                               CI_AUTOSCALER_ADMIN_BIND=f"127.0.0.1:{admin_port}",
                               CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS="3600",
                               CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS)
                               ) as stack:
                operator = Operator(stack, kube, jenkins, gitlab, server.url, admin_port)
                wait_until(lambda: operator.admin("/healthz")[0] == 200, timeout=30,
                           what="the admin port answering")
                yield operator
    finally:
        server.stop()


# -- the checks -------------------------------------------------------------------------------

def test_pushes_that_wait_are_placed_in_arrival_order_with_every_stage_and_status(op):
    """node-one has room for one build: the first runs, the next two wait for capacity and
    are shown, and placed, in the order they came; the second's commit status goes pending
    (with the reason), running (with the Jenkins build), success, in that order, and its
    record and the histogram hold every stage, in order. The third's branch has characters
    git allows and HTML does not take as text."""
    shas = [sha("wait-first"), sha("wait-second"), sha("wait-third")]
    branches = ["wait/a", "wait/b", "wait/<em>&x"]
    for s, branch in zip(shas, branches):
        op.gitlab.push(PROJECT, branch, s)
    first = op.push(f"refs/heads/{branches[0]}", shas[0])
    op.placed(first)
    second = op.push(f"refs/heads/{branches[1]}", shas[1])
    wait_until(lambda: op.record(second).get("status") == "waiting", timeout=SOON,
               what=lambda: f"the second build waiting: {op.record(second)}")
    third = op.push(f"refs/heads/{branches[2]}", shas[2])
    wait_until(lambda: op.record(third).get("status") == "waiting", timeout=SOON,
               what=lambda: f"the third build waiting: {op.record(third)}")
    pending = op.arrives(shas[1], "pending")
    assert pending["description"].startswith("waiting for capacity: insufficient cpu"), pending
    assert pending["ref"] == "wait/b"
    assert op.arrives(shas[2], "pending")["ref"] == "wait/<em>&x"

    # The status page (admin port): both waiting, in arrival order, with the reason; the
    # branch as text, never as markup.
    status, page = op.admin("/status")
    assert status == 200, page
    waiting = page[page.index('id="waiting-builds"'):].split("</table>")[0]
    assert waiting.count("waiting for capacity") == 2, waiting
    assert waiting.index("wait/b") < waiting.index("wait/&lt;em&gt;&amp;x"), waiting
    assert "<em>" not in page
    assert PROJECT in waiting

    op.scheduled_and_online(first, "node-one")
    run = op.started(first)
    status, page = op.admin("/status")
    flight = page[page.index('id="in-flight-builds"'):].split("</table>")[0]
    assert "node-one" in flight and "wait/a" in flight, flight
    op.finished(first, run)
    op.scheduled_and_online(second, "node-one")  # placed once the first's pod went
    assert op.record(third)["status"] == "waiting", op.record(third)
    run = op.started(second)
    op.arrives(shas[1], "running")
    op.finished(second, run)
    final = op.arrives(shas[1], "success")
    assert final["target_url"] == f"{op.jenkins.url}/job/build/{run.number}/", final
    assert [s for s, _, a in op.statuses(shas[1]) if a == 201] == [
        "pending", "running", "success"], op.statuses(shas[1])
    op.scheduled_and_online(third, "node-one")
    op.finished(third, op.started(third))
    op.arrives(shas[2], "success")

    for key in (second, third):
        rec = op.record(key)
        times = [(stage, float(rec[FIELDS[stage]])) for stage in STAGES]
        for (a, ta), (b, tb) in zip(times, times[1:]):
            assert ta <= tb + (1.0 if "scheduled" in (a, b) else 0.0), (key, a, ta, b, tb)
    counts = {dict(labels)["stage"]: v for (name, labels), v in op.metrics().items()
              if name == "ci_autoscaler_build_stage_seconds_count"
              and dict(labels)["template"] == "one"}
    assert counts == {"queued": 3, "waiting": 2, "placed": 3, "scheduled": 3, "online": 3,
                      "started": 3, "finished": 3, "deleted": 3}, counts


def test_an_annotated_tag_of_a_folder_job_posts_on_the_commit_under_the_tag_and_job_name(op):
    commit, tag_object = sha("tag-commit"), sha("tag-object")
    op.gitlab.tag(PROJECT, "v2.0.1-rc.1", commit)
    key = op.push("refs/tags/v2.0.1-rc.1", commit, tag_object=tag_object)
    name = f"ci-autoscaler/{FOLDER_JOB}"
    op.arrives(commit, "pending", name)
    # a Pipeline: STARTED comes before its agent connects
    op.placed(key)
    run = op.started(key)
    op.scheduled_and_online(key, "node-roomy")
    op.arrives(commit, "running", name)
    op.finished(key, run)
    final = op.arrives(commit, "success", name)
    assert final["ref"] == "v2.0.1-rc.1", final
    assert final["target_url"] == \
        f"{op.jenkins.url}/job/releases/job/svc.api/job/publish/{run.number}/", final
    assert all(a == 201 for _, _, a in op.statuses(commit)), op.statuses(commit)
    assert not [p for p in op.gitlab.projects[PROJECT].status_posts if p["sha"] == tag_object]


def test_one_commit_on_two_branches_of_two_jobs_has_two_statuses(op):
    commit = sha("twin")
    op.gitlab.push(PROJECT, "lint/x", commit)
    op.gitlab.push(PROJECT, "feature/x", commit)
    lint = op.push("refs/heads/lint/x", commit)
    build = op.push("refs/heads/feature/x", commit)
    assert lint != build
    for key in (lint, build):
        op.scheduled_and_online(key, "node-roomy")
    runs = {key: op.started(key) for key in (lint, build)}
    op.finished(lint, runs[lint], "UNSTABLE")
    op.finished(build, runs[build], "SUCCESS")
    failed = op.arrives(commit, "failed", "ci-autoscaler/lint")
    success = op.arrives(commit, "success", "ci-autoscaler/build")
    assert (failed["ref"], success["ref"]) == ("lint/x", "feature/x")
    assert "UNSTABLE" in failed["description"]
    assert all(a == 201 for _, _, a in op.statuses(commit)), op.statuses(commit)


def test_an_aborted_build_is_canceled(op):
    commit = sha("aborted")
    op.gitlab.push(PROJECT, "feature/abort", commit)
    key = op.push("refs/heads/feature/abort", commit)
    op.scheduled_and_online(key, "node-roomy")
    run = op.started(key)
    op.arrives(commit, "running")
    op.finished(key, run, "ABORTED")
    final = op.arrives(commit, "canceled")
    assert "ABORTED" in final["description"], final


def test_a_build_whose_completed_notification_was_lost_posts_jenkins_result(op):
    """The Notification plugin ignores our answer (REALITY.md): a COMPLETED the web did not
    take is lost, and the reconcile loop finds the build's end by asking Jenkins (README,
    "a triggered build not heard of for CI_AUTOSCALER_LOST_EVENT_SECONDS that Jenkins
    reports finished"). Jenkins' API has the run's result, FAILURE: GitLab is told `failed`,
    from it, not `canceled` ("ended without a result")."""
    commit = sha("lost-completed")
    op.gitlab.push(PROJECT, "feature/lost", commit)
    key = op.push("refs/heads/feature/lost", commit)
    op.scheduled_and_online(key, "node-roomy")
    run = op.started(key)
    op.arrives(commit, "running")
    op.jenkins.finish_build(run.queue_id, "FAILURE")  # its COMPLETED never arrives
    final = wait_until(lambda: (lambda s: s if s and s["status"] in ("success", "failed",
                                                                     "canceled") else None)(
        op.stored(commit).get("ci-autoscaler/build")), timeout=LOST_EVENT_SECONDS + 60,
        what=lambda: f"a final status: {op.statuses(commit)}")
    assert (final["status"], final["description"]) == \
        ("failed", "build failed (Jenkins: FAILURE)"), final
    assert final["target_url"] == f"{op.jenkins.url}/job/build/{run.number}/", final


def test_a_build_cancelled_in_jenkins_queue_before_it_ran_is_canceled(op):
    """Someone cancels the queued build in Jenkins (the queue widget's "x"): no notification
    comes (the run never started); the reconcile loop finds the item cancelled and releases
    the build, and GitLab is told `canceled`."""
    commit = sha("cancelled-item")
    op.gitlab.push(PROJECT, "feature/cancel", commit)
    key = op.push("refs/heads/feature/cancel", commit)
    rec = op.placed(key)
    op.arrives(commit, "pending")
    op.jenkins.cancel_by_hand(int(rec["queue_item"]))
    final = wait_until(lambda: (lambda s: s if s and s["status"] != "pending" else None)(
        op.stored(commit).get("ci-autoscaler/build")), timeout=LOST_EVENT_SECONDS + 90,
        what=lambda: f"a final status: {op.statuses(commit)}")
    assert final["status"] == "canceled", final
    wait_until(lambda: op.kube.pod(NAMESPACE, rec["agent"]) is None, timeout=SOON,
               what="its pod deleted")


def test_an_image_the_registry_refuses_posts_failed_with_the_reason_cut_and_no_secret(op):
    commit = sha("pull")
    op.gitlab.push(PROJECT, "pull/x", commit)
    key = op.push("refs/heads/pull/x", commit)
    rec = op.placed(key)
    op.kube.bind_pod(NAMESPACE, rec["agent"], "node-roomy")
    # containerd's words for a registry that refuses the image, a long one naming the
    # registry's token endpoint with the credential the node's config put in its URL
    error = ('rpc error: code = Unknown desc = failed to pull and unpack image "{image}": '
             'failed to resolve reference "{image}": failed to authorize: failed to fetch '
             f'oauth token: unexpected status from GET request to https://robot:'
             f'{REGISTRY_PASSWORD}@registry.example.com/service/token?scope=repository%3A'
             'team%2Fmissing-image%3Apull&service=harbor-registry: 401 Unauthorized ' + 
             "x" * 300)
    op.kube.image_pull_backoff(NAMESPACE, rec["agent"], error=error, reason="ErrImagePull")
    final = op.arrives(commit, "failed")
    assert final["description"].startswith("agent could not start"), final
    assert len(final["description"]) <= 255
    assert REGISTRY_PASSWORD not in final["description"], final
    status, page = op.admin("/status")
    assert status == 200 and REGISTRY_PASSWORD not in page
    failures = page[page.index('id="failed-builds"'):].split("</table>")[0]
    assert "svc.api" in failures and "401 Unauthorized" in failures, failures
    nodes = page[page.index('id="node-table"'):].split("</table>")[0]
    assert "node-one" in nodes and "node-roomy" in nodes, nodes


def test_gitlab_failing_delays_no_build_and_the_final_state_arrives(op):
    commit = sha("outage")
    op.gitlab.push(PROJECT, "feature/outage", commit)
    failed_before = op.gitlab.answered(500, "/statuses/")
    op.gitlab.outage(6, status=500)
    pushed = time.monotonic()
    key = op.push("refs/heads/feature/outage", commit)
    op.placed(key)
    assert time.monotonic() - pushed < 6, "provisioning waited for GitLab"
    op.scheduled_and_online(key, "node-roomy")
    op.finished(key, op.started(key))
    # it did try meanwhile: awaited, the sender looks at a touched build within its poll (1 s)
    # and the build can be pushed, placed and finished in less (it was asserted at once)
    wait_until(lambda: op.gitlab.answered(500, "/statuses/") > failed_before, timeout=SENT,
               what=lambda: f"a status post answered 500: {op.statuses(commit)}")
    wait_until(lambda: (op.stored(commit).get("ci-autoscaler/build") or {}).get("status")
               == "success", timeout=60, what=lambda: f"success after the outage: "
               f"{op.statuses(commit)}")
    taken = [s for s, _, a in op.statuses(commit) if a == 201]
    assert taken[-1] == "success", op.statuses(commit)


def test_a_429_is_not_followed_by_a_post_before_its_retry_after(op):
    commit = sha("throttled")
    op.gitlab.push(PROJECT, "feature/throttled", commit)
    retry_after = 6
    throttled_before = op.gitlab.answered(429)
    op.gitlab.throttle_next(1, retry_after)
    key = op.push("refs/heads/feature/throttled", commit)
    wait_until(lambda: op.gitlab.answered(429) > throttled_before, timeout=SENT,
               what="GitLab's 429", interval=0.02)
    refused_at, seen = time.monotonic(), len(op.gitlab.requests)
    wait_until(lambda: len(op.gitlab.requests) > seen, timeout=SENT,
               what="the next request to GitLab", interval=0.02)
    assert time.monotonic() - refused_at >= retry_after - 0.5
    op.arrives(commit, "pending")
    op.scheduled_and_online(key, "node-roomy")
    op.finished(key, op.started(key))
    op.arrives(commit, "success")


def test_the_status_page_and_metrics_are_on_the_admin_port_only_and_hold_no_secret(op):
    assert op.stack.request("/status")[0] == 404
    assert op.stack.request("/metrics")[0] == 404
    status, page = op.admin("/status")
    assert status == 200
    for secret in (API_TOKEN, GITLAB_TOKEN, JENKINS_TOKEN, op.jenkins.token, REGISTRY_PASSWORD):
        assert secret not in page
    metrics = op.metrics()
    assert metrics[("ci_autoscaler_nodes_needed", frozenset())] == 0
    assert ("ci_autoscaler_commit_status_total", frozenset({("result", "sent")})) in metrics
