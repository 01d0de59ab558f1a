"""Issue 19 ("a burst of pushes gets its agents in seconds: concurrent provisioning") as an
operator meets it, read from the issue and README.md alone: the Procfile's processes (gunicorn
web, `ci-autoscaler worker`, `ci-autoscaler reconcile`) plus a second worker process, as an
operator scales the worker line, on a real redis-server, kmock over HTTP and the Jenkins fake,
both reached through a proxy that answers 20% of the calls 500 or 429 (a quarter of the 429s
with Retry-After) and is slow on every other (tests/support/fault_proxy.py).

Inputs unlike the other tests': the two workers at the edges of
CI_AUTOSCALER_PROVISION_CONCURRENCY as operators set it (64 threads, and 1: one job after
another), a provision lease of 3 s (shorter than a timed-out call), a bot pushing to 40
different projects at once onto a template capped at 3 (maxConcurrent), a burst packed onto
three small nodes that hold two agents each, a worker SIGTERMed in a burst, deliveries of one
push racing each other, 40 COMPLETED and 40 FINALIZED notifications arriving at once, calls
held or timed out, and a build that ends while its pod's create is in flight. The test plays
kube-scheduler (it binds each pod where our affinity prefers), the kubelet, the agents
connecting, Jenkins' queue handing each build to its agent, and the Notification plugin.
Sampled all along: our pods of the capped template, and the requests of our pods on each node
against its allocatable.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor


import pytest
import redis
import yaml
from kubernetes.utils.quantity import parse_quantity

from tests.support.fault_proxy import FaultProxy
from tests.support.jenkins_fake import JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.played import PlayedOnAThread
from tests.support.procfile import JENKINS_TOKEN, Stack, pod_node, running_stack
from tests.support.redis_server import RedisServer
from workers.core.pods import BUILD_KEY_LABEL, TEMPLATE_LABEL, is_managed
from workers.core.routing import BUILD_KEY_PARAMETER

NAMESPACE = "ci-agents-i19"
FAULT_RATIO = 0.2
CAP = 3
NODE_CPU = "1300m"  # room for two agents of 500m + the injected agent's 100m
SOON = 180  # awaited: faults, Retry-After and RQ's retry backoff (5, 15, 30 s) on 2 busy cores
AGENT_UP_SECONDS = 0.3  # an agent connects this long after its pod runs
RUN_SECONDS = 0.5  # a build runs this long before Jenkins ends it
CONFIG = {
    "routes": [
        {"project": "*", "ref": "refs/heads/bot/*", "job": "build", "template": "capped"},
        {"project": "*", "ref": "refs/heads/packed/*", "job": "build", "template": "packed"},
        {"project": "*", "ref": "refs/heads/*", "job": "build", "template": "wide"},
    ],
    "templates": {
        "capped": {"maxConcurrent": CAP,
                   "cpu": {"min": "250m", "default": "250m", "max": "250m"},
                   "memory": {"min": "256Mi", "default": "256Mi", "max": "256Mi"},
                   "nodeSelector": {"pool": "capped"}},
        "packed": {"cpu": {"min": "500m", "default": "500m", "max": "500m"},
                   "memory": {"min": "512Mi", "default": "512Mi", "max": "512Mi"},
                   "nodeSelector": {"pool": "packed"}},
        "wide": {"cpu": {"min": "200m", "default": "200m", "max": "200m"},
                 "memory": {"min": "256Mi", "default": "256Mi", "max": "256Mi"},
                 "nodeSelector": {"pool": "wide"}},
    },
}
NODES = {"capped-0": ("16", "64Gi", "capped"),
         "packed-0": (NODE_CPU, "8Gi", "packed"), "packed-1": (NODE_CPU, "8Gi", "packed"),
         "packed-2": (NODE_CPU, "8Gi", "packed"),
         "wide-0": ("32", "128Gi", "wide"), "wide-1": ("32", "128Gi", "wide")}


def pod_requests(spec: dict) -> tuple[float, float]:
    """(cpu cores, memory bytes) a pod asks, as kube-scheduler counts it
    (pkg/api/v1/resource PodRequests): its containers' sum plus its restartable (sidecar)
    init containers', or an init container's own with the sidecars before it, if more."""
    def ask(container: dict) -> tuple[float, float]:
        requests = (container.get("resources") or {}).get("requests") or {}
        return (float(parse_quantity(requests.get("cpu", "0"))),
                float(parse_quantity(requests.get("memory", "0"))))
    total = [0.0, 0.0]
    for container in spec.get("containers", []):
        total = [a + b for a, b in zip(total, ask(container))]
    sidecars, most = [0.0, 0.0], [0.0, 0.0]
    for container in spec.get("initContainers") or []:
        asked = ask(container)
        if container.get("restartPolicy") == "Always":
            sidecars = [a + b for a, b in zip(sidecars, asked)]
            total = [a + b for a, b in zip(total, asked)]
        else:
            most = [max(m, s + a) for m, s, a in zip(most, sidecars, asked)]
    return max(total[0], most[0]), max(total[1], most[1])


class Cluster(PlayedOnAThread):
    """kube-scheduler, the kubelets, the agents and Jenkins' queue, played on a thread: a pod of
    ours is bound to the node our affinity prefers and runs; its agent connects a moment later;
    Jenkins hands the build to it (dispatch) and the plugin sends STARTED; a build of an
    `auto` template ends RUN_SECONDS later with its COMPLETED. Samples the pods meanwhile."""

    def __init__(self, stack: Stack, kube, jenkins: JenkinsFake):
        self.stack, self.kube, self.jenkins = stack, kube, jenkins
        self.auto: set[str] = set()
        self.most = Counter()  # "template:<t>", "node-cpu:<n>", "node-mem:<n>", "one build"
        self.samples = 0
        self.notes: Counter[int] = Counter()  # web answers to the plugin's notifications
        self._bound: dict[str, float] = {}  # pod -> when its agent may connect
        self._ends: dict[int, float] = {}  # queue id -> when its run ends
        super().__init__()  # the thread starts

    def notify(self, build, phase: str) -> None:
        self.notes[self.stack.jenkins(self.jenkins.notification(build, phase))[0]] += 1

    def _round(self) -> None:
        try:
            pods = self.kube.pods(NAMESPACE, only=("metadata", "spec"))
        except TimeoutError:  # kmock's loop busy: the next round
            return
        self._step([p for p in pods if is_managed(p["metadata"].get("labels"))
                    and not p["metadata"].get("deletionTimestamp")])

    def _step(self, pods: list[dict]) -> None:
        now = time.monotonic()
        per_node: dict[str, list[float]] = {}
        per_template, per_build = Counter(), Counter()
        for pod in pods:
            name, labels = pod["metadata"]["name"], pod["metadata"]["labels"]
            node = pod_node(pod)
            if name not in self._bound:
                self.kube.bind_pod(NAMESPACE, name, node)
                self.kube.kubelet_status(NAMESPACE, name, phase="Running")
                self._bound[name] = now + AGENT_UP_SECONDS
            elif self._bound[name] <= now and name in self.jenkins.nodes \
                    and self.jenkins.nodes[name].offline:
                self.jenkins.connect_agent(name)
            cpu, memory = pod_requests(pod["spec"])
            room = per_node.setdefault(node, [0.0, 0.0])
            room[0], room[1] = room[0] + cpu, room[1] + memory
            per_template[labels.get(TEMPLATE_LABEL)] += 1
            per_build[labels.get(BUILD_KEY_LABEL)] += 1
        seen = Counter({f"template:{t}": n for t, n in per_template.items()})
        for node, (cpu, memory) in per_node.items():
            seen[f"node-cpu:{node}"], seen[f"node-mem:{node}"] = round(cpu, 3), memory
        seen["one build"] = max(per_build.values(), default=0)
        for key, value in seen.items():
            self.most[key] = max(self.most[key], value)
        self.samples += 1
        for queue_id, _ in self.jenkins.dispatch():
            [build] = [b for b in self.jenkins.builds if b.queue_id == queue_id]
            self.notify(build, "STARTED")
            if self._template(build, pods) in self.auto:
                self._ends[queue_id] = now + RUN_SECONDS
        for queue_id, at in list(self._ends.items()):
            if at <= now:
                del self._ends[queue_id]
                self.notify(self.jenkins.finish_build(queue_id), "COMPLETED")

    @staticmethod
    def _template(build, pods: list[dict]) -> str | None:
        key = build.parameters.get(BUILD_KEY_PARAMETER)
        return next((p["metadata"]["labels"].get(TEMPLATE_LABEL) for p in pods
                     if p["metadata"]["labels"].get(BUILD_KEY_LABEL) == key), None)


class Parts:
    def __init__(self, stack: Stack, kube, jenkins: JenkinsFake, kube_proxy: FaultProxy,
                 jenkins_proxy: FaultProxy, redis_url: str, cluster: Cluster):
        self.stack, self.kube, self.jenkins = stack, kube, jenkins
        self.kube_proxy, self.jenkins_proxy, self.cluster = kube_proxy, jenkins_proxy, cluster
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def push(self, project: str, ref: str, sha: str) -> str:
        body = fixture("gitlab_push_real_lrz.json") | {"ref": ref, "after": sha,
                                                       "checkout_sha": sha}
        project_id = 190_000 + int(sha[:4], 16)
        body["project_id"] = project_id
        body["project"] = body["project"] | {"id": project_id, "path_with_namespace": project,
                                             "name": project.rsplit("/", 1)[-1]}
        status, answer = self.stack.gitlab(json.dumps(body).encode(), "Push Hook",
                                           str(uuid.uuid4()))
        assert status == 202, answer
        return answer["build_key"]

    def burst(self, pushes: list[tuple[str, str, str]]) -> list[str]:
        """Every push at once, from as many senders (a bot updating many repositories)."""
        with ThreadPoolExecutor(len(pushes)) as senders:
            return list(senders.map(lambda p: self.push(*p), pushes))

    def builds(self, key: str) -> list:
        return self.jenkins.build_with(BUILD_KEY_PARAMETER, key)

    def pod_of(self, key: str) -> dict | None:
        return next((p for p in self.our_pods()
                     if p["metadata"].get("labels", {}).get(BUILD_KEY_LABEL) == key), None)

    def our_pods(self) -> list[dict]:
        return self.kube.pods(NAMESPACE, only=("metadata",))

    def settled(self) -> bool:
        """No pod of ours or scale-up pod left, no Jenkins agent, no slot or reservation."""
        self.cluster.check()
        return not self.our_pods() and not self.jenkins.nodes \
            and not self.redis.hlen("cia:slots")

    def left(self) -> str:
        return (f"pods {[p['metadata']['name'] for p in self.our_pods()]}, agents "
                f"{list(self.jenkins.nodes)}, slots {self.redis.hgetall('cia:slots')}; "
                f"logs: {self.stack.text()[-3000:]}")

    def assert_once_each(self, keys: list[str]) -> None:
        """Every push exactly one Jenkins build; every pod created was deleted, once."""
        assert len(set(keys)) == len(keys)
        per_push = Counter(len(self.builds(k)) for k in keys)
        assert per_push == {1: len(keys)}, per_push
        created = Counter(self.kube_proxy.pods_created)
        deleted = Counter(self.kube_proxy.pods_deleted)
        assert created == deleted, (created - deleted, deleted - created)
        # A build's agent pod once. Its scale-up pod may come again (README: made when the
        # build starts waiting, deleted once bound; a build whose bound room another took
        # waits again), each one deleted (above).
        agents = Counter({name: n for name, n in created.items()
                          if not name.startswith("scale-up-")})
        assert max(agents.values()) == 1, agents.most_common(3)




def sha(tag: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, tag).hex + uuid.uuid5(uuid.NAMESPACE_DNS, tag).hex[:8]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Iterator[Parts]:
    base = tmp_path_factory.mktemp("issue19")
    server = RedisServer(base / "redis").start()
    config = base / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = base / "logs"
    logs.mkdir()
    try:
        with running_kube(base) as kube, JenkinsFake() as jenkins:
            kube.trim_history()  # thousands of calls
            kube.add_namespace(NAMESPACE)
            for name, (cpu, memory, pool) in NODES.items():
                kube.add_node(name, cpu=cpu, memory=memory, labels={"pool": pool})
                kube.set_node_usage(name, cpu="0", memory="0")
            # issue 19's latencies, cut: a real API answers in tens of milliseconds
            kube_proxy = FaultProxy(kube.url, ratio=FAULT_RATIO, seed=1901, kubernetes=True,
                                    latency_seconds=0.01).start()
            jenkins_proxy = FaultProxy(jenkins.url, ratio=FAULT_RATIO, seed=1902,
                                       kubernetes=False, latency_seconds=0.03).start()
            kubeconfig = base / "kubeconfig-through-faults"
            # the chart's ServiceAccount's, through the proxy: an admin's would hide a 403
            kubeconfig.write_text(kube.as_chart_service_account(NAMESPACE).read_text()
                                  .replace(kube.url, kube_proxy.url))
            try:
                with running_stack(redis_url=server.url, kube=kube, jenkins_fake=jenkins,
                                   config=config, namespace=NAMESPACE, logs=logs,
                                   KUBECONFIG=str(kubeconfig), JENKINS_URL=jenkins_proxy.url,
                                   JENKINS_PUBLIC_URL=jenkins.url,
                                   CI_AUTOSCALER_PROVISION_CONCURRENCY="64",
                                   # at its edge: README says a running provision renews
                                   # it every third, so only a dead worker's lapses, however
                                   # slow its calls (here up to a 10 s timeout)
                                   CI_AUTOSCALER_PROVISION_LEASE_SECONDS="3",
                                   CI_AUTOSCALER_LOST_EVENT_SECONDS="30") as stack:
                    # the worker line scaled to two, the second one job at a time
                    stack.start_line(
                        "worker", "worker-2", log_mode="w",
                        env={"CI_AUTOSCALER_PROVISION_CONCURRENCY": "1"})
                    cluster = Cluster(stack, kube, jenkins)
                    try:
                        yield Parts(stack, kube, jenkins, kube_proxy, jenkins_proxy,
                                    server.url, cluster)
                    finally:
                        cluster.stop()
            finally:
                kube_proxy.stop()
                jenkins_proxy.stop()
    finally:
        server.stop()


# -- the checks -------------------------------------------------------------------------------

def test_a_bot_pushing_to_40_projects_at_once_never_has_more_than_the_cap(parts):
    """40 pushes at once to a template of maxConcurrent 3: never more than 3 of its pods at
    any sampled moment, every push one build, every pod deleted once its build ended."""
    parts.cluster.auto.add("capped")
    keys = parts.burst([(f"bots/renovate-target-{i:02d}", f"refs/heads/bot/deps-{i}",
                         sha(f"bot-{i}")) for i in range(40)])
    wait_until(lambda: parts.cluster.check() or all(parts.builds(k) for k in keys),
               timeout=SOON, what=lambda: f"a Jenkins build for every push: {parts.left()}")
    wait_until(lambda: all(b.state == "finished" for k in keys for b in parts.builds(k))
               and parts.settled(), timeout=SOON,
               what=lambda: f"every build ended and released: {parts.left()}")
    most = parts.cluster.most
    print(f"\nissue19 cap: {parts.cluster.samples} samples, most at once {dict(most)}; "
          f"faults kubernetes {dict(parts.kube_proxy.faults)}, jenkins "
          f"{dict(parts.jenkins_proxy.faults)}")
    assert most["template:capped"] == CAP, dict(most)  # reached, never passed
    assert most["one build"] == 1, dict(most)
    parts.assert_once_each(keys)
    assert parts.kube_proxy.faults and parts.jenkins_proxy.faults


def test_a_burst_onto_small_nodes_never_overcommits_one(parts):
    """24 pushes at once onto three nodes of 1300m: no sampled moment has our pods on a node
    asking more than its allocatable (CPU or memory)."""
    parts.cluster.auto.add("packed")
    keys = parts.burst([(f"platform/svc-{i % 5}", f"refs/heads/packed/change-{i}",
                         sha(f"packed-{i}")) for i in range(24)])
    wait_until(lambda: parts.cluster.check() or all(parts.builds(k) for k in keys),
               timeout=SOON, what=lambda: f"a Jenkins build for every push: {parts.left()}")
    wait_until(lambda: all(b.state == "finished" for k in keys for b in parts.builds(k))
               and parts.settled(), timeout=SOON,
               what=lambda: f"every build ended and released: {parts.left()}")
    most = parts.cluster.most
    print(f"\nissue19 nodes: most at once {dict(most)}")
    allocatable = float(parse_quantity(NODE_CPU))
    for node in ("packed-0", "packed-1", "packed-2"):
        assert most[f"node-cpu:{node}"] <= allocatable, (node, dict(most))
        assert most[f"node-mem:{node}"] <= float(parse_quantity("8Gi")), (node, dict(most))
    assert sum(most[f"node-cpu:packed-{i}"] > 0 for i in range(3)) >= 2, dict(most)
    parts.assert_once_each(keys)


def test_a_worker_stopped_in_a_burst_loses_no_push_and_builds_none_twice(parts):
    """A rolling restart of the 64-thread worker in a burst: SIGTERM to its process, as the
    kubelet sends it (README, "Shutdown": it finishes the jobs under way and exits, within the
    chart's worker grace period, 120 s); started again, as a Deployment starts a new pod. Every
    push gets one build, every pod is deleted, the nodes stay within their room."""
    parts.cluster.auto.add("packed")
    keys = parts.burst([(f"tools/cli-{i % 3}", f"refs/heads/packed/restart-{i}",
                         sha(f"restart-{i}")) for i in range(14)])
    wait_until(lambda: sum(bool(parts.builds(k)) for k in keys) >= 4, timeout=SOON,
               what=lambda: f"some builds triggered: {parts.left()}")
    worker = parts.stack.procs["worker"]
    os.kill(worker.pid, signal.SIGTERM)
    stopped = time.monotonic()
    assert worker.wait(timeout=120) == 0, parts.stack.text()[-3000:]
    print(f"\nissue19 restart: the worker took {time.monotonic() - stopped:.1f}s to stop")
    parts.stack.start_line("worker")
    wait_until(lambda: parts.cluster.check() or all(parts.builds(k) for k in keys),
               timeout=SOON, what=lambda: f"a Jenkins build for every push: {parts.left()}")
    wait_until(lambda: all(b.state == "finished" for k in keys for b in parts.builds(k))
               and parts.settled(), timeout=SOON,
               what=lambda: f"every build ended and released: {parts.left()}")
    for node in ("packed-0", "packed-1", "packed-2"):
        assert parts.cluster.most[f"node-cpu:{node}"] <= float(parse_quantity(NODE_CPU))
    assert parts.cluster.most["one build"] == 1
    parts.assert_once_each(keys)


def test_one_push_delivered_by_two_hooks_and_resent_at_once_is_built_once(parts):
    """A project hook and a group hook both send each push (two delivery ids), and the first
    delivery is resent at the same moment (GitLab's "Resend", the same Idempotency-Key): all
    at once, for 8 commits. One 202 per commit, one build."""
    commits = [(f"shared/lib-{i}", f"refs/heads/packed/twice-{i}", sha(f"twice-{i}"))
               for i in range(8)]
    deliveries = [(c, d) for c in commits for d in ("hook-a", "hook-a", "hook-b")]

    def send(item) -> tuple[int, dict]:
        (project, ref, commit), delivery = item
        body = fixture("gitlab_push_real_lrz.json") | {"ref": ref, "after": commit,
                                                       "checkout_sha": commit}
        body["project"] = body["project"] | {"path_with_namespace": project}
        return parts.stack.gitlab(json.dumps(body).encode(), "Push Hook",
                                  f"{commit[:12]}-{delivery}")
    builds_before = len(parts.jenkins.builds)
    with ThreadPoolExecutor(len(deliveries)) as senders:
        answers = list(senders.map(send, deliveries))
    assert Counter(status for status, _ in answers) == {202: 8, 200: 16}, answers
    keys = [a["build_key"] for status, a in answers if status == 202]
    wait_until(lambda: parts.cluster.check() or all(parts.builds(k) for k in keys),
               timeout=SOON, what=lambda: f"a Jenkins build for every push: {parts.left()}")
    wait_until(lambda: all(b.state == "finished" for k in keys for b in parts.builds(k))
               and parts.settled(), timeout=SOON,
               what=lambda: f"every build ended and released: {parts.left()}")
    assert len(parts.jenkins.builds) - builds_before == len(commits)
    parts.assert_once_each(keys)


def test_40_completed_notifications_at_once_release_every_agent_once(parts):
    """40 builds running at once; their COMPLETED and FINALIZED notifications (the plugin
    sends both at a run's end: REALITY.md) all arrive together: every pod and Jenkins agent is
    deleted, every slot freed, nothing twice."""
    keys = parts.burst([(f"apps/mono-{i % 7}", f"refs/heads/feature/x-{i}", sha(f"rel-{i}"))
                        for i in range(40)])
    running = wait_until(
        lambda: parts.cluster.check() or (lambda bs: bs if len(bs) == len(keys) and all(
            b.state == "running" for b in bs) else None)(
            [b for k in keys for b in parts.builds(k)]),
        timeout=SOON, what=lambda: f"every build running on its agent: {parts.left()}")
    finished = [parts.jenkins.finish_build(b.queue_id) for b in running]
    notes = [parts.jenkins.notification(b, phase) for phase in ("COMPLETED", "FINALIZED")
             for b in finished]
    random.Random(19).shuffle(notes)
    with ThreadPoolExecutor(len(notes)) as plugin:
        answers = list(plugin.map(lambda note: parts.stack.jenkins(note)[0], notes))
    assert set(answers) <= {200, 202}, Counter(answers)
    wait_until(parts.settled, timeout=SOON,
               what=lambda: f"every agent released: {parts.left()}")
    parts.assert_once_each(keys)


def test_both_workers_ran_and_no_process_died_or_leaked_a_secret(parts):
    """Both worker processes took jobs (the 64-thread one and the one-at-a-time one); none
    of the Procfile's processes exited; no log line holds a secret."""
    for name, proc in parts.stack.procs.items():
        assert proc.poll() is None, (name, parts.stack.text()[-3000:])
    text = parts.stack.text()
    for secret in (parts.jenkins.token, JENKINS_TOKEN):
        assert secret not in text
    for name in ("worker", "worker-2"):
        log = (parts.stack.logs / f"{name}.log").read_text()
        assert "build triggered" in log, (name, log[-2000:])


def test_the_pod_and_the_trigger_do_not_wait_for_each_other_nor_the_two_deletes(parts):
    """Issue 19: once the agent is registered and its secret read, the pod's create and the
    build's trigger are independent, and so are a release's pod and agent deletes. Each call
    is held in turn at the proxy (a slow API server, a slow Jenkins): the other goes on."""
    parts.kube_proxy.set_ratio(0.0)
    parts.jenkins_proxy.set_ratio(0.0)
    try:
        arrived, release = parts.jenkins_proxy.hold_next("POST", "/job/build/buildWithParameters")
        [first] = parts.burst([("apps/held", "refs/heads/feature/held-trigger",
                                sha("held-trigger"))])
        try:
            assert arrived.wait(SOON), parts.left()
            wait_until(lambda: parts.pod_of(first), timeout=30,
                       what=lambda: f"its pod created while the trigger is held: {parts.left()}")
        finally:
            release.set()
        arrived, release = parts.kube_proxy.hold_next("POST",
                                                      f"/api/v1/namespaces/{NAMESPACE}/pods")
        [second] = parts.burst([("apps/held", "refs/heads/feature/held-pod", sha("held-pod"))])
        try:
            assert arrived.wait(SOON), parts.left()
            wait_until(lambda: parts.builds(second), timeout=30,
                       what=lambda: f"its build triggered while the pod is held: {parts.left()}")
        finally:
            release.set()
        [run] = wait_until(lambda: parts.cluster.check() or (lambda bs: bs if bs and all(
            b.state == "running" for b in bs) else None)(parts.builds(first)), timeout=SOON,
            what=lambda: f"the first build running: {parts.left()}")
        agent = parts.pod_of(first)["metadata"]["name"]
        arrived, release = parts.kube_proxy.hold_next(
            "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{agent}")
        parts.cluster.notify(parts.jenkins.finish_build(run.queue_id), "COMPLETED")
        try:
            assert arrived.wait(SOON), parts.left()
            wait_until(lambda: agent not in parts.jenkins.nodes, timeout=30,
                       what=lambda: f"its agent deleted while its pod's delete is held: "
                                    f"{parts.left()}")
        finally:
            release.set()
        [run] = wait_until(lambda: parts.cluster.check() or (lambda bs: bs if bs and all(
            b.state == "running" for b in bs) else None)(parts.builds(second)), timeout=SOON,
            what=lambda: f"the second build running: {parts.left()}")
        agent = parts.pod_of(second)["metadata"]["name"]
        arrived, release = parts.jenkins_proxy.hold_next("POST", f"/computer/{agent}/doDelete")
        parts.cluster.notify(parts.jenkins.finish_build(run.queue_id), "COMPLETED")
        try:
            assert arrived.wait(SOON), parts.left()
            wait_until(lambda: parts.kube.pod(NAMESPACE, agent) is None, timeout=30,
                       what=lambda: f"its pod deleted while its agent's delete is held: "
                                    f"{parts.left()}")
        finally:
            release.set()
        wait_until(lambda: all(b.state == "finished" for k in (first, second)
                               for b in parts.builds(k)) and parts.settled(), timeout=SOON,
                   what=lambda: f"both released: {parts.left()}")
    finally:
        parts.kube_proxy.set_ratio(FAULT_RATIO)
        parts.jenkins_proxy.set_ratio(FAULT_RATIO)


def test_answers_lost_to_timeouts_in_a_burst_make_no_second_build_or_pod(parts):
    """A slow Jenkins and a slow API server: the answers to three build triggers and three pod
    creates come back after the client's 10 s timeout (the call was made; its answer never
    reached us in time). The retried provisions find the build and the pod they made: each push
    one build, one pod at a time, every pod deleted once."""
    parts.cluster.auto.add("packed")
    held = [parts.jenkins_proxy.hold_next("POST", "/job/build/buildWithParameters", answer=True)
            for _ in range(3)]
    held += [parts.kube_proxy.hold_next("POST", f"/api/v1/namespaces/{NAMESPACE}/pods",
                                        answer=True) for _ in range(3)]
    timeouts = timed_out(parts.stack)
    keys = parts.burst([(f"slow/app-{i}", f"refs/heads/packed/slow-{i}", sha(f"slow-{i}"))
                        for i in range(8)])
    try:
        for arrived, _ in held:
            assert arrived.wait(SOON), parts.left()
        wait_until(lambda: timed_out(parts.stack) >= timeouts + len(held), timeout=60,
                   what=lambda: f"the six calls timed out: {parts.stack.text()[-3000:]}")
    finally:
        for _, release in held:
            release.set()
    wait_until(lambda: parts.cluster.check() or all(parts.builds(k) for k in keys),
               timeout=SOON, what=lambda: f"a Jenkins build for every push: {parts.left()}")
    wait_until(lambda: all(b.state == "finished" for k in keys for b in parts.builds(k))
               and parts.settled(), timeout=SOON,
               what=lambda: f"every build ended and released: {parts.left()}")
    assert parts.cluster.most["one build"] == 1
    parts.assert_once_each(keys)


def timed_out(stack: Stack) -> int:
    return sum(("timed out" in line or "Timeout" in line) for line in stack.text().splitlines()
               if '"job failed' in line or '"error"' in line)


def test_a_build_that_ends_while_its_pod_create_is_in_flight_leaves_no_pod(parts):
    """The pod's create and the trigger run side by side (issue 19), so Jenkins can run and end
    the build before the pod's create has answered: a Pipeline whose Jenkinsfile does not parse
    fails on the controller (STARTED then COMPLETED, REALITY.md: a Pipeline's STARTED is before
    any agent connects) while a slow API server still holds the create (held here before it
    reaches the server: it lands only after the client gave up at 10 s and its retry made the
    pod, and even after the release deleted that one, as a create slowed by an admission
    webhook, up to 30 s, may). Whatever the order, no pod, agent or slot is left."""
    parts.kube_proxy.set_ratio(0.0)
    parts.jenkins_proxy.set_ratio(0.0)
    try:
        arrived, release = parts.kube_proxy.hold_next("POST",
                                                      f"/api/v1/namespaces/{NAMESPACE}/pods")
        [key] = parts.burst([("apps/bad-jenkinsfile", "refs/heads/feature/syntax-error",
                              sha("syntax-error"))])
        try:
            assert arrived.wait(SOON), parts.left()
            [build] = wait_until(lambda: parts.builds(key), timeout=30,
                                 what=lambda: f"its build triggered: {parts.left()}")
            run = parts.jenkins.start_build(build.queue_id)  # on the controller
            parts.cluster.notify(run, "STARTED")
            parts.cluster.notify(parts.jenkins.finish_build(run.queue_id, "FAILURE"),
                                 "COMPLETED")
            wait_until(lambda: parts.redis.hget(f"cia:build:{key}", "status") in (
                "released", "failed", "done"), timeout=30,
                what=lambda: f"the build released: {parts.redis.hgetall(f'cia:build:{key}')}")
        finally:
            release.set()
        wait_until(parts.settled, timeout=60,
                   what=lambda: f"no pod, agent or slot left: {parts.left()}")
        created = Counter(parts.kube_proxy.pods_created)
        assert created == Counter(parts.kube_proxy.pods_deleted), created
    finally:
        parts.kube_proxy.set_ratio(FAULT_RATIO)
        parts.jenkins_proxy.set_ratio(FAULT_RATIO)
