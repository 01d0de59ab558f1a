"""Issue 15 ("re-runs, expiry, hardened pods and examples that run") as an operator meets it,
read from the issue and README.md alone: the Procfile's processes (gunicorn web,
`ci-autoscaler worker`, `ci-autoscaler reconcile`, the last with `--interval 2`, as an operator
may pass) on a real redis-server, kmock over HTTP whose agent namespace enforces Pod Security
`restricted`, and the Jenkins fake (undeclared parameters dropped).

Inputs unlike the other tests': a job in a folder (`team-a/pipeline`), templates with a
service container, with `agentInjection: false`, with their own uid/gid/fsGroup and with
`runAsUser: null`; deliveries told apart by `X-Gitlab-Event-UUID` alone (a GitLab before
17.4 sends no `Idempotency-Key`) as well as by `Idempotency-Key`; a commit pushed to a second
branch while its first build runs; a revert of a revert (A, B, A); windows of a few seconds
(`CI_AUTOSCALER_DEDUPE_TTL_SECONDS`, `CI_AUTOSCALER_BUILD_TTL_SECONDS`) with a GitLab "Resend"
after the window; a Replay of a build whose state has already expired (the first route's
template) and a Rebuild of one whose state is kept (its own template); a Pipeline's
`node('label')` block with a second block of another run queued behind it; check-config on
claims shared by two capped templates, pinned to one host, or set in `workspaceVolume`.
The test plays kube-scheduler, the kubelet, the agents connecting, Jenkins' queue and the
Notification plugin, in the polls that await each step (no thread).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from tests.support.jenkins_fake import FREESTYLE_JOB, FakeBuild, JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.pod_security_admission import ENFORCE
from tests.support.procfile import GITLAB_TOKEN, ROOT, Stack, running_stack
from tests.support.redis_server import RedisServer
from workers.core.pods import BUILD_KEY_LABEL, TEMPLATE_LABEL, is_managed
from workers.core.routing import BUILD_KEY_PARAMETER

NAMESPACE = "ci-agents-i15"
SOON = 60
DEDUPE_TTL = 18  # long enough for the checks inside the window, short enough to see it pass
RUN_SECONDS = 8  # how long the build whose delivery expires runs
BUILD_TTL = 10  # the Rebuild of a kept build is adopted well within it
CONFIG = {
    "routes": [
        {"project": "web/*", "ref": "refs/heads/*", "job": "team-a/pipeline",
         "template": "with-db", "parameters": {"GIT_COMMIT": "{sha}"}},
        {"project": "*", "ref": "refs/tags/*", "job": "build", "template": "own-agent",
         "parameters": {"GIT_TAG": "{tag}"}},
        {"project": "*", "ref": "refs/heads/debug/*", "job": "build", "template": "kept",
         "parameters": {"GIT_COMMIT": "{sha}", "GIT_BRANCH": "{branch}"}},
        {"project": "*", "ref": "refs/heads/*", "job": "build", "template": "plain",
         "parameters": {"GIT_COMMIT": "{sha}", "GIT_BRANCH": "{branch}"}},
    ],
    "templates": {
        "plain": {"cpu": {"min": "100m", "default": "200m", "max": "200m"},
                  "memory": {"min": "128Mi", "default": "256Mi", "max": "256Mi"},
                  "label": "i15-plain",
                  "volumes": [{"name": "home", "mountPath": "/home/jenkins", "emptyDir": {}},
                              {"name": "cache", "mountPath": "/cache", "readOnly": True,
                               "persistentVolumeClaim": {"claimName": "cache"},
                               "accessMode": "ReadOnlyMany"}]},
        "kept": {"inherit": "plain", "podRetention": "onFailure", "podRetentionSeconds": 6},
        "with-db": {"cpu": {"min": "100m", "default": "300m", "max": "300m"},
                    "memory": {"min": "128Mi", "default": "512Mi", "max": "512Mi"},
                    "runAsUser": 4242, "runAsGroup": 4343, "fsGroup": 4444,
                    "label": "i15-db",
                    "containers": [{"name": "db", "image": "postgres:16", "cpu": "100m",
                                    "memory": "256Mi"}]},
        "own-agent": {"agentInjection": False, "runAsUser": None,
                      "image": "jenkins/inbound-agent:3355.v388858a_47b_33-3-jdk21",
                      "cpu": {"min": "100m", "default": "200m", "max": "200m"},
                      "memory": {"min": "128Mi", "default": "256Mi", "max": "256Mi"}},
    },
}
JOB_PARAMETERS = ["CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT",
                  "GIT_BRANCH", "GIT_TAG"]


class Parts:
    """The stack and the parts it runs on; `play` is one round of the cluster and Jenkins."""

    def __init__(self, stack: Stack, kube, jenkins: JenkinsFake, redis_url: str):
        self.stack, self.kube, self.jenkins = stack, kube, jenkins
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.bound: set[str] = set()
        self.seen_pods: dict[str, dict] = {}  # every pod of ours, as first seen
        self.landed: list[tuple[int, str]] = []  # (queue id, node) of every dispatch

    # -- GitLab --------------------------------------------------------------------------

    def push(self, project: str, ref: str, sha: str, *, delivery: str,
             header: str = "Idempotency-Key") -> tuple[int, dict]:
        body = fixture("gitlab_push_real_lrz.json") | {"ref": ref, "after": sha,
                                                       "checkout_sha": sha}
        body["project"] = body["project"] | {"path_with_namespace": project,
                                             "name": project.rsplit("/", 1)[-1]}
        return self.stack.post("/webhooks/gitlab", json.dumps(body).encode(), {
            "Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Token": GITLAB_TOKEN, header: delivery})

    # -- the cluster, the agents and Jenkins' queue ---------------------------------------

    def our_pods(self) -> list[dict]:
        return [p for p in self.kube.pods(NAMESPACE)
                if is_managed(p["metadata"].get("labels"))
                and not p["metadata"].get("deletionTimestamp")]

    def play(self) -> None:
        """kube-scheduler binds each new pod of ours, the kubelet runs it, its agent connects
        once its Jenkins node exists; Jenkins' queue hands out what may start."""
        for pod in self.our_pods():
            name = pod["metadata"]["name"]
            self.seen_pods.setdefault(name, pod)
            if name not in self.bound:
                self.kube.bind_pod(NAMESPACE, name, "node-a")
                self.kube.kubelet_status(NAMESPACE, name, phase="Running")
                self.bound.add(name)
            node = self.jenkins.nodes.get(name)
            if node is not None and node.offline:
                self.jenkins.connect_agent(name)
        for queue_id, node in self.jenkins.dispatch():
            self.landed.append((queue_id, node))
            build = next((b for b in self.jenkins.builds if b.queue_id == queue_id), None)
            if build is not None:
                self.notify(build, "STARTED")

    def notify(self, build: FakeBuild, phase: str) -> None:
        status, answer = self.stack.jenkins(self.jenkins.notification(build, phase))
        assert status in (200, 202), (status, answer)

    def builds(self, key: str) -> list[FakeBuild]:
        return self.jenkins.build_with(BUILD_KEY_PARAMETER, key)

    def running(self, key: str) -> FakeBuild | None:
        self.play()
        return next((b for b in self.builds(key) if b.state == "running"), None)

    def run_of(self, key: str) -> FakeBuild:
        return wait_until(lambda: self.running(key), timeout=SOON,
                          what=lambda: f"a running build of {key}: {self.left()}")

    def finish(self, key: str) -> FakeBuild:
        """The build of `key` ends; the plugin sends COMPLETED; its agent is released."""
        run = self.run_of(key)
        agent = run.parameters["CI_AUTOSCALER_AGENT"]
        self.notify(self.jenkins.finish_build(run.queue_id), "COMPLETED")
        wait_until(lambda: self.gone(agent), timeout=SOON,
                   what=lambda: f"{agent} released: {self.left()}")
        return run

    def gone(self, agent: str) -> bool:
        self.play()
        return agent not in self.jenkins.nodes and self.kube.pod(NAMESPACE, agent) is None

    def pod_for(self, key: str) -> dict | None:
        self.play()
        return next((p for p in self.our_pods()
                     if p["metadata"]["labels"].get(BUILD_KEY_LABEL) == key), None)

    def mentions(self, text: str, *, but: tuple[str, ...] = ("rq:",)) -> list[str]:
        """Redis keys, but those starting with `but` (RQ's own, with their own TTLs), that
        name `text`, in their name or their content."""
        found = []
        for name in self.redis.scan_iter(count=1000):
            if name.startswith(but):
                continue
            kind = self.redis.type(name)
            content = {"string": lambda: self.redis.get(name),
                       "hash": lambda: self.redis.hgetall(name),
                       "set": lambda: self.redis.smembers(name),
                       "zset": lambda: self.redis.zrange(name, 0, -1),
                       "list": lambda: self.redis.lrange(name, 0, -1)}.get(kind, lambda: "")()
            if text in name or text in repr(content):
                found.append(name)
        return found

    def left(self) -> str:
        return (f"pods {[p['metadata']['name'] for p in self.our_pods()]}, agents "
                f"{ {n: (a.offline, a.temporarily_offline) for n, a in self.jenkins.nodes.items()} }"
                f"; logs: {self.stack.text()[-2500:]}")


def sha(tag: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, tag).hex + uuid.uuid5(uuid.NAMESPACE_DNS, tag).hex[:8]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Iterator[Parts]:
    base = tmp_path_factory.mktemp("issue15")
    server = RedisServer(base / "redis").start()
    config = base / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = base / "logs"
    logs.mkdir()
    try:
        with running_kube(base) as kube, JenkinsFake(jobs=set()) as jenkins:
            kube.add_namespace(NAMESPACE, labels={ENFORCE: "restricted"})
            kube.add_node("node-a", cpu="16", memory="64Gi")
            kube.set_node_usage("node-a", cpu="0", memory="0")
            for job in ("build", "team-a/pipeline"):
                jenkins.add_job(job, parameters=JOB_PARAMETERS)
            jenkins.add_job("nightly", parameters=None, kind=FREESTYLE_JOB)  # by hand, a timer
            with running_stack(redis_url=server.url, kube=kube, jenkins_fake=jenkins,
                               config=config, namespace=NAMESPACE, logs=logs,
                               CI_AUTOSCALER_DEDUPE_TTL_SECONDS=str(DEDUPE_TTL),
                               CI_AUTOSCALER_BUILD_TTL_SECONDS=str(BUILD_TTL),
                               # no agent here is released by the lost-event backstop: each
                               # by what ends its build, as README says
                               CI_AUTOSCALER_LOST_EVENT_SECONDS="600") as stack:
                # the reconcile line as an operator may pass it a shorter pass interval
                reconcile = stack.procs["reconcile"]
                reconcile.terminate()
                reconcile.wait(60)
                stack.start_line("reconcile", command="exec ci-autoscaler reconcile --interval 2")
                yield Parts(stack, kube, jenkins, server.url)
    finally:
        server.stop()


# -- re-runs -----------------------------------------------------------------------------------

def test_a_commit_pushed_again_after_its_build_builds_again_and_a_delivery_stays_a_duplicate(
        parts):
    """A, then the same A from another delivery while its build runs (duplicate), the same A
    on a second branch (a build of its own), GitLab's Resend of the first delivery
    (duplicate); A's build ends; B; A again (a revert of a revert: a second build of A, on a
    new agent); the first delivery resent once more, still within its window: a duplicate."""
    a, b = sha("revert-a"), sha("revert-b")
    first = f"i15-{uuid.uuid4()}"
    status, answer = parts.push("apps/billing", "refs/heads/main", a, delivery=first)
    assert status == 202, answer
    key = answer["build_key"]
    status, dup = parts.push("apps/billing", "refs/heads/main", a,
                             delivery=str(uuid.uuid4()), header="X-Gitlab-Event-UUID")
    assert (status, dup.get("status")) == (200, "duplicate"), dup
    status, other = parts.push("apps/billing", "refs/heads/release-1", a,
                               delivery=str(uuid.uuid4()))
    assert status == 202 and other["build_key"] != key, other
    status, resent = parts.push("apps/billing", "refs/heads/main", a, delivery=first)
    assert (status, resent.get("status")) == (200, "duplicate"), resent

    run = parts.finish(key)
    parts.finish(other["build_key"])
    status, answer_b = parts.push("apps/billing", "refs/heads/main", b,
                                  delivery=str(uuid.uuid4()))
    assert status == 202, answer_b
    parts.finish(answer_b["build_key"])
    status, again = parts.push("apps/billing", "refs/heads/main", a,
                               delivery=str(uuid.uuid4()), header="X-Gitlab-Event-UUID")
    assert status == 202, again
    second = parts.run_of(again["build_key"])
    assert second.queue_id != run.queue_id
    assert second.parameters["CI_AUTOSCALER_AGENT"] != run.parameters["CI_AUTOSCALER_AGENT"]
    assert second.parameters["GIT_COMMIT"] == a
    assert second.parameters[BUILD_KEY_PARAMETER] != run.parameters[BUILD_KEY_PARAMETER]
    status, resent = parts.push("apps/billing", "refs/heads/main", a, delivery=first)
    assert (status, resent.get("status")) == (200, "duplicate"), resent
    parts.finish(again["build_key"])
    commits = [x.parameters.get("GIT_COMMIT") for x in parts.jenkins.builds
               if x.job == "build" and x.parameters.get("GIT_BRANCH") == "main"]
    assert commits == [a, b, a], commits


def test_build_state_and_delivery_ids_expire_and_a_resend_after_the_window_builds(parts):
    """A build that ended is gone from Redis BUILD_TTL seconds later (nothing outside RQ's
    own keys names it); its delivery id DEDUPE_TTL seconds after it came: GitLab's Resend
    then is a new build, whose COMPLETED releases its agent (it was taken for the old run's,
    whose release was deduped for DEDUPE_TTL after that run's end: the same key)."""
    delivery = f"i15-expiry-{uuid.uuid4()}"
    status, answer = parts.push("libs/expiring", "refs/heads/topic", sha("expiry"),
                                delivery=delivery)
    assert status == 202, answer
    key = answer["build_key"]
    mark = f"cia:delivery:gitlab:{delivery}"
    assert 0 < parts.redis.ttl(mark) <= DEDUPE_TTL, "the delivery id is recorded, for its window"
    # GitLab's Resend within the window: answered by the delivery's mark (checked before the
    # commit's run in flight, so whatever that run's state), with the run it made. Checked
    # now, not after the run's end: that comes RUN_SECONDS and a release later, and on a
    # loaded machine (2 shared cores) past the window's end, 3 s before it under 2 busy loops.
    status, dup = parts.push("libs/expiring", "refs/heads/topic", sha("expiry"),
                             delivery=delivery)
    assert (status, dup.get("status"), dup.get("reason"), dup.get("build_key")) == \
        (200, "duplicate", "delivery already taken", key), dup
    parts.run_of(key)
    # the build runs RUN_SECONDS: its end (and its release's dedupe mark) comes that much
    # after its delivery's mark
    wait_until(lambda: parts.redis.ttl(mark) <= DEDUPE_TTL - RUN_SECONDS, timeout=SOON,
               what="the build ran")
    parts.finish(key)
    # the delivery's mark names its build, and has a window of its own
    state = lambda: parts.mentions(key, but=("rq:", "cia:delivery:"))  # noqa: E731
    wait_until(lambda: not state(), timeout=SOON,
               what=lambda: f"the build's state expired: {state()}")
    wait_until(lambda: not parts.mentions(delivery), timeout=DEDUPE_TTL + 10,
               what=lambda: f"the delivery id expired: {parts.mentions(delivery)}")
    status, again = parts.push("libs/expiring", "refs/heads/topic", sha("expiry"),
                               delivery=delivery)
    assert status == 202, again
    parts.finish(again["build_key"])


def test_a_failed_run_keeps_its_pod_while_the_commit_pushed_again_builds_on_a_new_one(parts):
    """A run that fails on a template that keeps failed pods (podRetention onFailure, 6 s):
    its pod stays, its Jenkins node goes; the commit pushed again meanwhile (another delivery)
    is a new build on a new agent and pod, the kept one untouched; the kept pod goes after
    its retention."""
    commit = sha("kept-on-failure")
    status, answer = parts.push("apps/flaky", "refs/heads/debug/flaky", commit,
                                delivery=str(uuid.uuid4()))
    assert status == 202, answer
    key = answer["build_key"]
    run = parts.run_of(key)
    kept = run.parameters["CI_AUTOSCALER_AGENT"]
    parts.notify(parts.jenkins.finish_build(run.queue_id, "FAILURE"), "COMPLETED")
    wait_until(lambda: parts.play() or kept not in parts.jenkins.nodes, timeout=SOON,
               what=lambda: f"the failed run's Jenkins node deleted: {parts.left()}")
    assert parts.kube.pod(NAMESPACE, kept) is not None, "its pod kept for debugging"
    status, again = parts.push("apps/flaky", "refs/heads/debug/flaky", commit,
                               delivery=str(uuid.uuid4()))
    assert status == 202, again
    second = parts.run_of(again["build_key"])
    assert second.parameters["CI_AUTOSCALER_AGENT"] != kept
    assert parts.kube.pod(NAMESPACE, kept) is not None, "the kept pod is left alone"
    parts.finish(again["build_key"])
    wait_until(lambda: parts.kube.pod(NAMESPACE, kept) is None, timeout=SOON,
               what=lambda: f"the kept pod deleted after its retention: {parts.left()}")


def test_a_build_replayed_twice_at_once_runs_both_replays(parts):
    """A person presses Replay twice on a finished build: two items wait on the old agent's
    label. Both run, each on an agent of its own (an agent goes after the one block it
    took), and both agents are released; neither waits for ever."""
    status, answer = parts.push("libs/twice", "refs/heads/feature/twice", sha("twice"),
                                delivery=str(uuid.uuid4()))
    assert status == 202, answer
    old = parts.finish(answer["build_key"])
    blocks = [parts.jenkins.replay(old.queue_id) for _ in range(2)]
    done: set[str] = set()

    def both_ran() -> bool:
        parts.play()
        for block in blocks:
            if block.state == "running":
                done.add(block.node)
                parts.jenkins.finish_node_block(block)
                parts.notify(parts.jenkins.finish_build(block.run.queue_id), "COMPLETED")
        return all(b.state == "done" for b in blocks)
    wait_until(both_ran, timeout=SOON, what=lambda: f"both replays ran: {parts.left()}")
    assert len(done) == 2, done
    for agent in done:
        wait_until(lambda: parts.gone(agent), timeout=SOON,
                   what=lambda: f"{agent} released: {parts.left()}")


# -- Replay, Rebuild, adopted node blocks -----------------------------------------------------

def test_a_replay_of_an_expired_build_and_a_rebuild_of_a_kept_one_get_new_agents(parts):
    """Two branch builds of `plain`. The Replay of the one whose state has expired gets an
    agent of the first route to its job (the tag route's `own-agent`: README, its template
    is not known any more); the Rebuild of the one still kept, of its own template (`plain`),
    and so the Replay of a build of a job in a folder (`team-a/pipeline`, `with-db`).
    Each new agent carries the old agent's label, its block runs on it, and it is released
    once the block is done."""
    status, answer = parts.push("libs/replayed", "refs/heads/feature/x", sha("replay"),
                                delivery=str(uuid.uuid4()))
    assert status == 202, answer
    parts.finish(answer["build_key"])
    # the oldest build of `plain` this module ran: its state long gone when the module runs
    # as a whole
    expired = next(b for b in parts.jenkins.builds if b.job == "build" and b.state ==
                   "finished" and parts.seen_pods[b.parameters["CI_AUTOSCALER_AGENT"]][
                       "metadata"]["labels"][TEMPLATE_LABEL] == "plain")
    wait_until(lambda: not parts.mentions(expired.parameters[BUILD_KEY_PARAMETER],
                                          but=("rq:", "cia:delivery:")),
               timeout=SOON, what="the replayed build's state expired")
    status, other = parts.push("libs/replayed", "refs/heads/feature/y", sha("rebuild"),
                               delivery=str(uuid.uuid4()))
    assert status == 202, other
    kept = parts.finish(other["build_key"])
    status, folder = parts.push("web/portal", "refs/heads/main", sha("folder-replay"),
                                delivery=str(uuid.uuid4()))
    assert status == 202, folder
    in_folder = parts.finish(folder["build_key"])
    assert in_folder.job == "team-a/pipeline"
    wanted = {"plain": kept, "with-db": in_folder, "own-agent": expired}
    blocks = {template: parts.jenkins.replay(old.queue_id) for template, old in wanted.items()}

    def took() -> bool:
        parts.play()
        return all(block.state == "running" for block in blocks.values())
    wait_until(took, timeout=SOON, what=lambda: f"the replays ran: {parts.left()}")
    for template, block in blocks.items():
        label = wanted[template].parameters["CI_AUTOSCALER_AGENT"]
        agent = parts.jenkins.nodes[block.node]
        assert block.node != label and label in agent.label.split(), (block.node, agent.label)
        pod = parts.seen_pods[block.node]
        assert pod["metadata"]["labels"][TEMPLATE_LABEL] == template, pod["metadata"]
        parts.jenkins.finish_node_block(block)
        parts.notify(parts.jenkins.finish_build(block.run.queue_id), "COMPLETED")
    for block in blocks.values():
        wait_until(lambda: parts.gone(block.node), timeout=SOON,
                   what=lambda: f"the replay's agent released: {parts.left()}")


def test_an_adopted_node_block_is_released_when_it_ends_and_no_second_lands_on_it(parts):
    """A Pipeline's `node('i15-db')` block is adopted; another run's block on that label
    queued while the first runs never lands on the first's agent (taken offline once it
    took its block), gets one of its own, and each agent goes once its block is done."""
    first = parts.jenkins.queue_node_block("team-a/pipeline", label="i15-db")

    def ran(block) -> bool:
        parts.play()
        return block.state == "running"
    wait_until(lambda: ran(first), timeout=SOON,
               what=lambda: f"the first block adopted: {parts.left()}")
    agent = first.node
    pod = parts.seen_pods[agent]
    assert pod["metadata"]["labels"][TEMPLATE_LABEL] == "with-db"
    second = parts.jenkins.queue_node_block("team-a/pipeline", label="i15-db")
    wait_until(lambda: parts.jenkins.nodes[agent].temporarily_offline, timeout=SOON,
               what=lambda: f"the adopted agent taken offline: {parts.left()}")
    parts.jenkins.finish_node_block(first)  # its block is done; its run goes on
    wait_until(lambda: parts.gone(agent), timeout=SOON,
               what=lambda: f"the first block's agent released: {parts.left()}")
    wait_until(lambda: ran(second), timeout=SOON,
               what=lambda: f"the second block on an agent of its own: {parts.left()}")
    assert second.node != agent
    assert [n for q, n in parts.landed if n == agent] == [agent], parts.landed
    parts.jenkins.finish_node_block(second)
    for run in (first.run, second.run):
        parts.notify(parts.jenkins.finish_build(run.queue_id), "COMPLETED")
    wait_until(lambda: parts.gone(second.node), timeout=SOON,
               what=lambda: f"the second block's agent released: {parts.left()}")


def test_a_build_started_by_hand_on_a_label_is_adopted_and_released_at_its_end(parts):
    """"Build Now" of a freestyle job (no parameters) restricted to `i15-plain`, twice: the
    first item gets an agent, runs on it, and the agent goes when its build ends (its
    COMPLETED, sent before any reconcile pass saw the run); the second, queued while the
    first runs, never lands on the first's agent."""
    first = parts.jenkins.queue_build("nightly", label="i15-plain")

    def runs(build: FakeBuild) -> bool:
        parts.play()
        return build.state == "running"
    wait_until(lambda: runs(first), timeout=SOON,
               what=lambda: f"the first item adopted: {parts.left()}")
    agent = first.node
    assert parts.seen_pods[agent]["metadata"]["labels"][TEMPLATE_LABEL] == "plain"
    second = parts.jenkins.queue_build("nightly", label="i15-plain")
    wait_until(lambda: runs(second), timeout=SOON,
               what=lambda: f"the second item on an agent of its own: {parts.left()}")
    assert second.node != agent
    parts.notify(parts.jenkins.finish_build(first.queue_id), "COMPLETED")
    wait_until(lambda: parts.gone(agent), timeout=SOON,
               what=lambda: f"the first item's agent released: {parts.left()}")
    assert [n for _, n in parts.landed].count(agent) == 1, parts.landed
    parts.notify(parts.jenkins.finish_build(second.queue_id), "COMPLETED")
    wait_until(lambda: parts.gone(second.node), timeout=SOON,
               what=lambda: f"the second item's agent released: {parts.left()}")


# -- hardened pods ----------------------------------------------------------------------------

def test_every_pod_made_meets_the_restricted_profile_and_carries_both_annotations(parts):
    """Every pod of ours this module made (three templates: a service container, the agent
    not injected, a template's own ids, `runAsUser: null`) was admitted by the namespace's
    `restricted` Pod Security, and holds each of its rules, read here from the profile's
    list; both do-not-disrupt annotations are on each."""
    status, answer = parts.push("web/shop", "refs/heads/main", sha("hardened"),
                                delivery=str(uuid.uuid4()))
    assert status == 202, answer
    parts.finish(answer["build_key"])
    templates = {p["metadata"]["labels"][TEMPLATE_LABEL] for p in parts.seen_pods.values()}
    assert "with-db" in templates, templates  # the others' with the module's other checks
    assert "forbidden" not in parts.stack.text()
    for name, pod in parts.seen_pods.items():
        template = pod["metadata"]["labels"][TEMPLATE_LABEL]
        notes = pod["metadata"].get("annotations") or {}
        assert notes.get("karpenter.sh/do-not-disrupt") == "true", (name, notes)
        assert notes.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "false", notes
        spec = pod["spec"]
        sc = spec.get("securityContext") or {}
        ids = {"with-db": (4242, 4343, 4444), "own-agent": (None, 1000, 1000)}.get(
            template, (1000, 1000, 1000))
        assert (sc.get("runAsUser"), sc.get("runAsGroup"), sc.get("fsGroup")) == ids, sc
        assert sc.get("runAsNonRoot") is True, sc
        assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", sc
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), spec
        assert not any("hostPath" in v for v in spec.get("volumes") or []), spec["volumes"]
        containers = spec["containers"] + (spec.get("initContainers") or [])
        assert len(containers) >= 2 or template == "own-agent", containers
        for container in containers:
            csc = container.get("securityContext") or {}
            assert csc.get("allowPrivilegeEscalation") is False, (name, container["name"])
            assert csc.get("capabilities", {}).get("drop") == ["ALL"], csc
            assert not csc.get("capabilities", {}).get("add"), csc
            assert not csc.get("privileged"), csc
            assert csc.get("runAsUser", 1) != 0 and csc.get("runAsNonRoot") is not False
            assert not any(p.get("hostPort") for p in container.get("ports") or []), container


# -- check-config and the examples ------------------------------------------------------------

def check_config(parts: Parts, path: Path, *live: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ci-autoscaler", "check-config", *live, str(path)], cwd=ROOT,
                          env=parts.stack.env, capture_output=True, text=True, timeout=120)


def test_check_config_warns_of_a_readwriteonce_claim_shared_across_nodes(parts, tmp_path):
    """Two templates each capped at 1 share one claim with no accessMode (taken as
    ReadWriteOnce): two pods, maybe on two nodes. A workspaceVolume claim of a template with no
    cap. Not warned: a ReadWriteMany claim, one pinned to one host, one of a template capped at
    1 used by it alone."""
    claim = lambda name, **more: {"name": name, "mountPath": f"/{name}",  # noqa: E731
                                  "persistentVolumeClaim": {"claimName": name}, **more}
    cpu = {"min": "100m", "default": "100m", "max": "100m"}
    memory = {"min": "128Mi", "default": "128Mi", "max": "128Mi"}
    templates = {
        "left": {"maxConcurrent": 1, "volumes": [claim("twice-used")]},
        "right": {"maxConcurrent": 1, "volumes": [claim("twice-used"), claim("alone-one")]},
        "wide": {"workspaceVolume": {"persistentVolumeClaim": {"claimName": "ws-claim"}},
                 "volumes": [claim("rwx", accessMode="ReadWriteMany")]},
        "pinned": {"nodeSelector": {"kubernetes.io/hostname": "node-a"},
                   "volumes": [claim("pinned-one")]},
    }
    config = {"routes": [{"project": "*", "ref": f"refs/heads/{t}/*", "job": "build",
                          "template": t} for t in templates],
              "templates": {t: {"cpu": cpu, "memory": memory} | v for t, v in templates.items()}}
    path = tmp_path / "shared-claims.yaml"
    path.write_text(yaml.safe_dump(config))
    done = check_config(parts, path)
    out = done.stdout + done.stderr
    lines = [line for line in out.splitlines() if "ReadWriteOnce" in line]
    assert any("twice-used" in line for line in lines), out
    assert any("ws-claim" in line for line in lines), out
    for quiet in ("rwx", "pinned-one", "alone-one"):
        assert not any(quiet in line for line in lines), (quiet, out)


def test_the_example_file_runs_and_the_readme_jenkinsfile_declares_what_it_passes(parts):
    """examples/ci-autoscaler.yaml loads and its maven-docker template is said to need a
    `privileged` namespace; its routes pass only parameters the README's Jenkinsfile declares,
    and --live against a Jenkins whose `build` job declares exactly those finds none missing,
    while the agent namespace's `restricted` level refuses maven-docker's pod and no other."""
    readme = (ROOT / "README.md").read_text()
    jenkinsfile = next(block for block in re.findall(r"```groovy\n(.*?)```", readme, re.S)
                       if "CI_AUTOSCALER_AGENT" in block)
    declared = re.findall(r"string\(name: '([A-Z_]+)'", jenkinsfile)
    assert "CI_AUTOSCALER_BUILD_KEY" in declared, jenkinsfile
    example = ROOT / "examples" / "ci-autoscaler.yaml"
    routes = yaml.safe_load(example.read_text())["routes"]
    passed = {name for route in routes for name in route.get("parameters") or {}}
    assert passed <= set(declared), passed - set(declared)
    offline = check_config(parts, example)
    assert offline.returncode == 0, offline.stdout + offline.stderr
    said = offline.stdout + offline.stderr
    assert re.search(r"maven-docker.*privileged|privileged.*maven-docker", said), said
    parts.jenkins.add_job("build", parameters=declared)  # the README's Jenkinsfile, as is
    live = check_config(parts, example, "--live")
    said = live.stdout + live.stderr
    problems = [line for line in said.splitlines() if "build" in line and "parameter" in line]
    assert not problems, said
    refused = [line for line in said.splitlines() if "restricted" in line]
    assert any("maven-docker" in line for line in refused), said
    assert not any(re.search(r"\bmaven\b(?!-)", line) for line in refused), said
