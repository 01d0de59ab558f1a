"""Issue 18's "Done when", checked as an operator would: the Procfile's processes (gunicorn web,
`ci-autoscaler worker`, `ci-autoscaler reconcile`) set up as README.md says, on a real
redis-server, kmock over HTTP and the Jenkins fake, with a cluster of our own making.

One stack serves every check; each check has a node pool of its own (a `nodeSelector` label
in its template), so they do not see each other's builds. K comes from the environment
(`CI_AUTOSCALER_PLACEMENT_CANDIDATES=2`), not the default 3.

kube-scheduler's behaviours played here, and where they come from:
- it counts the pod limit, extended resources, taints and node selectors (pkg/scheduler/
  framework/plugins: noderesources/fit.go counts `pods` and every scalar resource in
  allocatable; tainttoleration, nodeaffinity); terminal pods (Succeeded, Failed) are not in
  its cache (pkg/scheduler/scheduler.go newPodInformer: field selector
  status.phase!=Succeeded,status.phase!=Failed);
- a pod's effective request is max(sum of containers, each init container) plus
  spec.overhead (pkg/api/v1/resource/helpers.go PodRequests);
- a pod it cannot fit stays Pending with PodScheduled False, reason Unschedulable, and the
  FitError's message, one count per failing predicate, then the preemption's
  (framework/types.go FitError.Error; schedule_one.go handleSchedulingFailure).
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml

from tests.support.jenkins_fake import JenkinsFake
from tests.support.kmock_cluster import KubeServer, running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import Stack, running_stack
from tests.support.redis_server import RedisServer

NAMESPACE = "ci-agents"
OTHERS = "team-apps"  # pods that are not ours
POOL = "ci.example.com/pool"
K = 2
GI = 1024 ** 3
TEMPLATE_LABEL = "ci-autoscaler.io/template"
MANAGED_BY = "app.kubernetes.io/managed-by"  # scale-up pods: ci-autoscaler-scale-up
HOSTNAME = "kubernetes.io/hostname"

CONFIG = {
    "routes": [{"project": f"ops18/{name}", "ref": "refs/heads/*", "job": "build",
                "template": name} for name in ("podlimit", "fpga", "gpu2", "sched", "mem")],
    "templates": {
        "base": {"image": "maven:3.9-eclipse-temurin-21",
                 "cpu": {"min": "500m", "default": "1", "max": "1"},
                 "memory": {"min": "512Mi", "default": "1Gi", "max": "1Gi"}},
        "podlimit": {"inherit": "base", "nodeSelector": {POOL: "pods"}},
        "fpga": {"inherit": "base", "nodeSelector": {POOL: "accel"},
                 "resources": {"example.com/fpga": 1}},
        "gpu2": {"inherit": "base", "nodeSelector": {POOL: "accel"},
                 "resources": {"nvidia.com/gpu": 2}},
        "sched": {"inherit": "base", "nodeSelector": {POOL: "sched"},
                  "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ci",
                                   "effect": "NoSchedule"}]},
        "mem": {"inherit": "base", "nodeSelector": {POOL: "mem"},
                "memory": {"min": "4Gi", "default": "5Gi", "max": "5Gi"}},
    },
}

# kube-scheduler 1.30's words for a pod none of whose candidates fit, several predicates at
# once, and the preemption's verdict after them (FitError.Error).
SCHEDULER_MESSAGES = [
    "0/9 nodes are available: 1 Insufficient cpu, 1 Too many pods, 1 node(s) had untolerated "
    "taint {gpu: true}, 6 node(s) didn't match Pod's node affinity/selector. preemption: 0/9 "
    "nodes are available: 2 No preemption victims found for incoming pod, 7 Preemption is "
    "not helpful for scheduling.",
    "0/9 nodes are available: 1 Insufficient memory, 1 node(s) had volume node affinity "
    "conflict, 7 node(s) didn't match Pod's node affinity/selector. preemption: 0/9 nodes are "
    "available: 1 No preemption victims found for incoming pod, 8 Preemption is not helpful "
    "for scheduling.",
]


# -- the cluster as it is before the processes start ----------------------------------------

def node(name: str, pool: str, *, cpu: str, memory: str, pods: str = "110",
         capacity_memory: str | None = None, extended: dict[str, str] | None = None,
         taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A Ready node as the kubelet reports it; capacity above allocatable where the kubelet
    reserves memory for the system (--system-reserved, --kube-reserved, eviction threshold)."""
    allocatable = {"cpu": cpu, "memory": memory, "pods": pods, **(extended or {})}
    capacity = dict(allocatable, memory=capacity_memory or memory)
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {HOSTNAME: name, POOL: pool}},
            "spec": {"taints": list(taints or [])},
            "status": {"capacity": capacity, "allocatable": allocatable,
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def other_pod(name: str, node_name: str, *, containers: list[dict[str, str]],
              init: list[dict[str, str]] = (), overhead: dict[str, str] | None = None,
              phase: str = "Running") -> dict[str, Any]:
    """A pod of another team's, bound to a node; extended resources are asked as the API
    server demands, limits equal to requests."""
    def container(prefix: str, i: int, requests: dict[str, str]) -> dict[str, Any]:
        limits = {k: v for k, v in requests.items() if "/" in k}
        return {"name": f"{prefix}{i}", "image": "busybox",
                "resources": {"requests": dict(requests), **({"limits": limits} if limits else {})}}
    spec: dict[str, Any] = {"nodeName": node_name,
                            "containers": [container("c", i, r) for i, r in enumerate(containers)]}
    if init:
        spec["initContainers"] = [container("i", i, r) for i, r in enumerate(init)]
    if overhead:
        spec["overhead"] = overhead
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": OTHERS, "labels": {"app": name}},
            "spec": spec, "status": {"phase": phase}}


SMALL = {"cpu": "100m", "memory": "128Mi"}
NODES = [
    # The pod limit: pods-full is the idlest by far, and full; pods-one has one pod slot left;
    # pods-done's slots are held by finished Job pods, which the scheduler does not count.
    node("pods-full", "pods", cpu="64", memory="256Gi", pods="3"),
    node("pods-one", "pods", cpu="32", memory="128Gi", pods="4"),
    node("pods-done", "pods", cpu="16", memory="64Gi", pods="3"),
    node("pods-small", "pods", cpu="4", memory="16Gi"),
    # Extended resources other than nvidia.com/gpu.
    node("accel-idle", "accel", cpu="64", memory="256Gi"),
    node("accel-zero", "accel", cpu="64", memory="256Gi", extended={"example.com/fpga": "0"}),
    node("accel-fpga", "accel", cpu="8", memory="32Gi", extended={"example.com/fpga": "2"}),
    node("accel-gpu", "accel", cpu="8", memory="32Gi", extended={"nvidia.com/gpu": "1"}),
    # The scheduler's refusals: sched-bad's taint is not tolerated, sched-a's is.
    node("sched-bad", "sched", cpu="64", memory="256Gi",
         taints=[{"key": "gpu", "value": "true", "effect": "NoSchedule"}]),
    node("sched-a", "sched", cpu="16", memory="64Gi",
         taints=[{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}]),
    node("sched-b", "sched", cpu="12", memory="48Gi"),
    node("sched-c", "sched", cpu="8", memory="32Gi"),
    node("sched-d", "sched", cpu="6", memory="24Gi"),
    # Memory: 2Gi of 16Gi reserved for the system, and the node's working set (system
    # daemons and page cache) above allocatable, while its pods hold well within their asks.
    node("mem-1", "mem", cpu="8", memory="14Gi", capacity_memory="16Gi"),
]
OTHER_PODS = [
    *(other_pod(f"full-{i}", "pods-full", containers=[SMALL]) for i in range(3)),
    *(other_pod(f"one-{i}", "pods-one", containers=[SMALL]) for i in range(3)),
    *(other_pod(f"done-{i}", "pods-done", containers=[SMALL], phase="Succeeded")
      for i in range(3)),
    other_pod("fpga-user", "accel-fpga", containers=[{**SMALL, "example.com/fpga": "1"}]),
    other_pod("mem-app", "mem-1", containers=[{"cpu": "500m", "memory": "2Gi"},
                                              {"cpu": "500m", "memory": "2Gi"}]),
    # 1Gi containers after a 3Gi init container, on a RuntimeClass with 512Mi overhead: 3.5Gi
    other_pod("mem-init", "mem-1", containers=[{"cpu": "100m", "memory": "1Gi"}],
              init=[{"cpu": "100m", "memory": "3Gi"}], overhead={"cpu": "50m", "memory": "512Mi"}),
    other_pod("mem-job-done", "mem-1", containers=[{"cpu": "1", "memory": "4Gi"}],
              phase="Succeeded"),
]
# what kube-scheduler counts of mem-1's memory: 4Gi + 3.5Gi (the finished pod: nothing)
MEM_SCHEDULER_FREE = 14 * GI - (4 * GI + 3 * GI + GI // 2)


def seed(kube: KubeServer) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    kube.add_namespace(NAMESPACE)
    kube.add_namespace(OTHERS)
    for obj in NODES:
        core.create_node(obj, _request_timeout=10)
        name = obj["metadata"]["name"]
        usage = ("15Gi", "1") if name == "mem-1" else ("1Gi", "200m")
        kube.set_node_usage(name, cpu=usage[1], memory=usage[0])
    for pod in OTHER_PODS:
        core.create_namespaced_pod(OTHERS, pod, _request_timeout=10)
    # metrics-server's view of the pods: mem-app holds 1Gi and 1.5Gi of its 2Gi + 2Gi;
    # mem-init has no sample yet (just started); the others hold little.
    kube.set_pod_usage(OTHERS, "mem-app", cpu=["200m", "200m"], memory=["1Gi", "1536Mi"],
                       labels={"app": "mem-app"})
    for pod in OTHER_PODS:
        name = pod["metadata"]["name"]
        if not name.startswith("mem-") and pod["status"]["phase"] == "Running":
            kube.set_pod_usage(OTHERS, name, cpu="10m", memory="64Mi", labels={"app": name})


# -- the stack ------------------------------------------------------------------------------

class Operator:
    """The stack, the cluster and what an operator reads of them."""

    def __init__(self, stack: Stack, kube: KubeServer, jenkins: JenkinsFake):
        self.stack, self.kube, self.jenkins = stack, kube, jenkins
        self.core = kubernetes.client.CoreV1Api(kube.api_client())
        self.lists_synced: tuple[int, float] | None = None  # (lists, when) once both listed

    def lists(self) -> int:
        """Lists of every pod or every node the API server answered (not watches)."""
        return sum(1 for r in self.kube.requests()
                   if re.match(r"GET /api/v1/(pods|nodes)(\?|$)", r) and "watch=" not in r)

    def mark_synced(self) -> None:
        """The worker placed a build and a reconcile pass ended: both have listed."""
        if self.lists_synced is None:
            self.pass_ended_after(0)
            self.lists_synced = (self.lists(), time.time())

    def push(self, project: str) -> None:
        body = copy.deepcopy(fixture("gitlab_push_real_lrz.json"))
        sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        body.update(after=sha, checkout_sha=sha, ref="refs/heads/main")
        body["project"]["path_with_namespace"] = project
        body["project"]["name"] = project.rsplit("/", 1)[1]
        status, answer = self.stack.gitlab(json.dumps(body).encode(), "Push Hook",
                                           str(uuid.uuid4()))
        assert status == 202, (status, answer)

    def agent_pods(self, template: str) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.kube.pods(NAMESPACE)
                if p["metadata"].get("labels", {}).get(TEMPLATE_LABEL) == template
                and p["metadata"]["labels"].get(MANAGED_BY) == "ci-autoscaler"}

    def new_pod(self, template: str, seen: set[str]) -> dict[str, Any]:
        pods = wait_until(lambda: [p for n, p in self.agent_pods(template).items()
                                   if n not in seen],
                          timeout=30, what=lambda: f"a new {template} pod\n{self.stack.text()}")
        assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
        return pods[0]

    def metrics(self) -> str:
        status, body = self.stack.request("/metrics")
        assert status == 200
        return body.decode()

    def metric(self, name: str, **labels: str) -> float | None:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            sample, _, value = line.rpartition(" ")
            metric, _, rest = sample.partition("{")
            if metric == name and ",".join(sorted(rest.rstrip("}").split(","))) == want:
                return float(value)
        return None

    def unschedulable(self, pod: dict[str, Any], message: str) -> None:
        """Play kube-scheduler: it has found no candidate fits for over a minute."""
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=61)
        self.core.patch_namespaced_pod_status(pod["metadata"]["name"], NAMESPACE, {"status": {
            "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ")}]}},
            _request_timeout=10)

    def pass_ended_after(self, since: float) -> float:
        """Await a reconcile pass that ends after `since` (time.time()); when it ended."""
        def ended() -> float | None:
            age = self.metric("ci_autoscaler_reconcile_pass_age_seconds")
            now = time.time()
            return now - age if age is not None and now - age > since else None
        return wait_until(ended, timeout=40, interval=0.5,
                          what=lambda: "a reconcile pass\n" + self.stack.text()[-3000:])

    def two_reconcile_passes(self) -> None:
        """Await a reconcile pass that starts after now and ends."""
        self.pass_ended_after(self.pass_ended_after(time.time()))


def candidates(pod: dict[str, Any]) -> list[str]:
    """The nodes a pod may go to: its required node affinity's hostnames (or nodeName)."""
    spec = pod["spec"]
    if spec.get("nodeName"):
        return [spec["nodeName"]]
    terms = (spec.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {})
             .get("nodeSelectorTerms", []))
    hosts = [v for t in terms for e in t.get("matchExpressions", [])
             if e["key"] == HOSTNAME and e["operator"] == "In" for v in e["values"]]
    assert hosts, f"{pod['metadata']['name']} names no candidate nodes: {spec.get('affinity')}"
    return hosts


def build_container(pod: dict[str, Any]) -> dict[str, Any]:
    for c in pod["spec"]["containers"]:
        if "agent.jar" in " ".join(c.get("command", []) + c.get("args", [])):
            return c
    return pod["spec"]["containers"][0]


@pytest.fixture(scope="module")
def operator(tmp_path_factory) -> Iterator[Operator]:
    base = tmp_path_factory.mktemp("issue18")
    redis = RedisServer(base / "redis").start()
    config = base / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = base / "logs"
    logs.mkdir()
    try:
        with running_kube(base) as kube, JenkinsFake() as jenkins:
            seed(kube)
            with running_stack(redis_url=redis.url, kube=kube, jenkins_fake=jenkins,
                               config=config, namespace=NAMESPACE, logs=logs,
                               CI_AUTOSCALER_PLACEMENT_CANDIDATES=str(K)) as stack:
                yield Operator(stack, kube, jenkins)
    finally:
        redis.stop()


def pod_room(op: Operator) -> dict[str, int]:
    """Pods each node may still take, as kube-scheduler counts: its allocatable `pods` less
    the pods bound to it that have not finished."""
    bound: dict[str, int] = {}
    for ns in (NAMESPACE, OTHERS):
        for p in op.kube.pods(ns):
            where = p["spec"].get("nodeName")
            if where and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                bound[where] = bound.get(where, 0) + 1
    return {n["metadata"]["name"]: int(n["status"]["allocatable"]["pods"])
            - bound.get(n["metadata"]["name"], 0) for n in NODES}


# -- the checks -------------------------------------------------------------------------------

def test_a_node_at_its_pod_limit_is_never_a_candidate(operator):
    op, seen = operator, set()
    chosen = []
    for _ in range(3):
        room = pod_room(op)
        op.push("ops18/podlimit")
        pod = op.new_pod("podlimit", seen)
        seen.add(pod["metadata"]["name"])
        hosts = candidates(pod)
        assert 1 <= len(hosts) <= K, hosts
        full = [h for h in hosts if room[h] <= 0]
        assert not full, f"candidates {hosts} include nodes at their pod limit: {full}"
        # the scheduler binds it to the first candidate that still has a pod slot
        op.kube.bind_pod(NAMESPACE, pod["metadata"]["name"], hosts[0])
        chosen.append(hosts)
        op.mark_synced()
    assert all("pods-full" not in h for h in chosen)
    # finished pods hold no slot: pods-done, with 3 Succeeded pods of 3, takes builds
    assert any("pods-done" in h for h in chosen), chosen


def test_an_extended_resource_lands_only_where_it_is_free_else_waits(operator):
    op = operator
    # accel-fpga has 2, another team's pod holds 1: one build lands there, and the next,
    # pushed while that one's pod is not bound yet, waits; accel-zero's device plugin
    # reports none, accel-idle has none
    op.push("ops18/fpga")
    op.new_pod("fpga", set())
    op.push("ops18/fpga")
    # and two GPUs fit on no node of the pool (accel-gpu has one)
    op.push("ops18/gpu2")
    waiting = {"insufficient_example.com/fpga": 1, "insufficient_nvidia.com/gpu": 1}
    wait_until(lambda: all(op.metric("ci_autoscaler_builds_waiting", reason=r) == n
                           for r, n in waiting.items()),
               timeout=30, what=lambda: "fpga and gpu builds waiting by their resource\n"
               + "\n".join(line for line in op.metrics().splitlines()
                           if "builds_waiting" in line)
               + f"\nfpga pods: {[(n, candidates(p)) for n, p in op.agent_pods('fpga').items()]}")
    pods = list(op.agent_pods("fpga").values())
    assert len(pods) == 1 and not op.agent_pods("gpu2"), list(op.agent_pods("fpga"))
    assert candidates(pods[0]) == ["accel-fpga"], candidates(pods[0])
    asked = build_container(pods[0])["resources"]
    assert asked["requests"].get("example.com/fpga") == "1", asked
    assert asked["limits"].get("example.com/fpga") == "1", asked
    # the scheduler binds it: the other still waits, and gets no pod
    op.kube.bind_pod(NAMESPACE, pods[0]["metadata"]["name"], "accel-fpga")
    op.two_reconcile_passes()
    assert list(op.agent_pods("fpga")) == [pods[0]["metadata"]["name"]]
    assert all(op.metric("ci_autoscaler_builds_waiting", reason=r) == n
               for r, n in waiting.items())


def test_unschedulable_is_placed_again_elsewhere_then_waits_never_loops(operator):
    op, seen = operator, set()
    op.push("ops18/sched")
    first = op.new_pod("sched", seen)
    seen.add(first["metadata"]["name"])
    tried = candidates(first)
    assert len(tried) == K and "sched-bad" not in tried, tried
    op.unschedulable(first, SCHEDULER_MESSAGES[0])

    second = op.new_pod("sched", seen)  # the reconcile pass places it again
    seen.add(second["metadata"]["name"])
    again = candidates(second)
    assert not set(again) & set(tried), (tried, again)
    assert "sched-bad" not in again, again
    assert op.kube.pod(NAMESPACE, first["metadata"]["name"]) is None
    wait_until(lambda: SCHEDULER_MESSAGES[0] in op.stack.text(), timeout=10,
               what="the scheduler's message in the logs")

    op.unschedulable(second, SCHEDULER_MESSAGES[1])  # K refusals: it waits now
    wait_until(lambda: op.metric("ci_autoscaler_builds_waiting", reason="unschedulable") == 1,
               timeout=40, what=lambda: "the build waiting as unschedulable\n" + op.stack.text())
    assert SCHEDULER_MESSAGES[1] in op.stack.text()
    # Passes go on; the last pod is left to the scheduler, never deleted and made again.
    op.two_reconcile_passes()
    assert set(op.agent_pods("sched")) == {second["metadata"]["name"]}
    assert op.metric("ci_autoscaler_agents_deleted_total", template="sched",
                     reason="unschedulable") == 1
    # the scheduler binds it at last: the build waits no more
    op.kube.bind_pod(NAMESPACE, second["metadata"]["name"], again[0])
    wait_until(lambda: op.metric("ci_autoscaler_builds_waiting", reason="unschedulable") == 0,
               timeout=40, what=lambda: "the bound build no longer waiting\n" + op.stack.text()[-3000:])


def test_page_cache_and_reserved_memory_never_lower_free_memory(operator):
    op = operator
    free = wait_until(lambda: op.metric("ci_autoscaler_node_free_bytes", node="mem-1"),
                      timeout=30, what="mem-1's free memory on /metrics")
    assert free == MEM_SCHEDULER_FREE, (free / GI, MEM_SCHEDULER_FREE / GI)
    op.push("ops18/mem")  # 5Gi + the agent's 256Mi: kube-scheduler takes it on mem-1
    pod = op.new_pod("mem", set())
    assert candidates(pod) == ["mem-1"]


def test_no_periodic_relist_of_the_cluster(operator):
    """One list per process at start, then watches: none again over the passes since (the
    checks above ran over several; run alone, over one that starts after now)."""
    op = operator
    if op.lists_synced is None:
        op.mark_synced()
        op.two_reconcile_passes()
    before, since = op.lists_synced
    op.pass_ended_after(since + 15)  # at least one whole pass and a metrics read since
    assert before >= 2, op.kube.requests()[:40]  # the worker's and the reconcile loop's
    assert op.lists() == before, [r for r in op.kube.requests() if "watch" not in r][-20:]
