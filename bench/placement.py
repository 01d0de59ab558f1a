"""Placement benchmark: the cost of one placement decision on 100, 1,000 and 5,000 nodes.

Run it from the project root (a script, not a test; pytest never collects it):

    .venv/bin/python bench/placement.py [--sizes 100,1000,5000] [--decisions 200] [--seed 1]

What one decision is here, as production runs it (workers/engine/scheduling.place): the reservations
read, then ``ClusterWatch.decide(template, reserved=...)``: the nodes with reservations (or
with pods of reserved builds) rebuilt as ``workers.engine.scheduling.observe`` would, and the
decision taken by the watch's ``PlacementIndex`` (workers/core/placement.py). The reference
path, ``observe`` + ``workers.core.placement.decide`` over every node (what production ran
before, and what the simulator runs), is timed on the same states and must give the same
decision every time. The ClusterWatch is never started: it is fed in memory through its own list path (``_list`` with
``_replace_nodes``/``_replace_pods``, from JSON pages as the API server sends them), its own
metrics poll (``_poll_metrics``) and its own event handler (``_apply_pod``, from JSON lines as
the watch stream yields them). No HTTP, no Redis: the reservations come from an in-memory
stand-in for ``CapacityStore.reservations()``.

The baseline, in the same run and on the same cluster state, is the naive decision without the
watched cache: NodeStates built from the full raw node, pod and metrics lists on every decision
(the production parsers ``_node_state``/``_pod_record``/``_usage``, requests summed from raw pod
dicts), then the same ``decide``. It does no HTTP and no JSON decoding, so it is a lower bound
of what listing the cluster per decision costs. Each baseline decision is checked to equal the
decision taken from the cache.

Everything the cluster holds is drawn from ``random.Random(seed)``; only the times vary.
"""

import argparse
import cProfile
import dataclasses
import datetime
import gc
import io
import json
import math
import os
import platform
import pstats
import shlex
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from random import Random
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes.client import ApiClient  # noqa: E402

from workers.adapters.kube_snapshot import ClusterWatch  # noqa: E402

try:  # the readers of raw objects, in their own module since it was split out
    from workers.adapters import kube_objects as readers
    _node_state, _pod_record, _usage = (
        readers.node_state, readers.pod_record, readers.node_usage)
except ImportError:  # before: private to kube_snapshot
    from workers.adapters import kube_snapshot as readers
    _node_state, _pod_record, _usage = (
        readers._node_state, readers._pod_record, readers._usage)
from workers.core.capacity import (  # noqa: E402
    WaitingBuild, capacity_state, capacity_state_on_index)
from workers.core.cluster import ZERO, NodeState, Resources  # noqa: E402
from workers.core.models import CpuRange, MemoryRange, PodTemplate, Toleration  # noqa: E402
from workers.core.placement import decide  # noqa: E402
from workers.core.placement_index import PlacementIndex  # noqa: E402
from workers.core.pods import BUILD_KEY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE  # noqa: E402
from workers.core.quantity import cpu_millis, memory_bytes  # noqa: E402
from workers.core.sizing import template_min  # noqa: E402
from workers.engine.scheduling import observe  # noqa: E402

PODS_PER_NODE = 30
RESERVATIONS = 5  # in flight at any time: placed, not yet seen running
WAITING = 50  # builds waiting for capacity, for capacity_state()
TARGET_MS, TARGET_NODES = 2.0, 5000
MI, GI = 2**20, 2**30
# The previous run of this bench (bench/results/placement.md at 7701a29, 2026-11-26, same kind
# of machine): observe + decide over every node was production's decision path then.
BEFORE = {"code": "7701a29", "date": "2026-11-26",
          "decision": {100: 1.95, 1000: 14.0, 5000: 84.6},
          "p99": {100: 2.49, 1000: 31.1, 5000: 172.0},
          "after_poll": {100: 2.64, 1000: 21.2, 5000: 123.0},
          "cap": {100: 2.12, 1000: 9.68, 5000: 74.4},
          "cap_full": {100: 5.74, 1000: 46.3, 5000: 603.0},
          "event_us": {100: 130, 1000: 115, 5000: 138},
          "bytes_per_node": {100: 18647, 1000: 18371, 5000: 18090}}

# The template a decision is for: the CI pool, tolerating its dedicated taint.
TEMPLATE = PodTemplate(cpu=CpuRange(min="500m", default="1", max="4"),
                       memory=MemoryRange(min="1Gi", default="2Gi", max="8Gi"),
                       node_selector={"pool": "ci"},
                       tolerations=(Toleration(key="ci-only", operator="Exists",
                                               effect="NoSchedule"),))
WAITING_TEMPLATES = (
    TEMPLATE,
    PodTemplate(cpu=CpuRange(min="2", default="4", max="8"),
                memory=MemoryRange(min="8Gi", default="16Gi", max="32Gi"),
                node_selector={"pool": "ci"}),
    PodTemplate(cpu=CpuRange(min="250m", default="500m", max="1"),
                memory=MemoryRange(min="512Mi", default="1Gi", max="2Gi")),
)

# instance type, cpu capacity, allocatable cpu, allocatable memory, weight (EKS-like figures)
SHAPES = (("m6i.xlarge", "4", "3920m", "14918872Ki", 2),
          ("m6i.2xlarge", "8", "7910m", "31369560Ki", 4),
          ("m6i.4xlarge", "16", "15890m", "63512760Ki", 3),
          ("c6i.8xlarge", "32", "31850m", "62289692Ki", 1),
          ("r6i.2xlarge", "8", "7910m", "63879256Ki", 1))
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
# daemonset pods on every node: namespace, app, cpu, memory (None: not set)
DAEMONSETS = (("kube-system", "kube-proxy", "100m", None),
              ("kube-system", "aws-node", "25m", None),
              ("kube-system", "ebs-csi-node", "30m", "120Mi"),
              ("monitoring", "node-exporter", "10m", "32Mi"))
APP_NAMESPACES = (("team-payments", 4), ("team-search", 3), ("team-web", 5), ("team-data", 3),
                  ("platform", 2), ("monitoring", 2), ("ingress-nginx", 1), ("ci-agents", 6))
# Shared by every raw pod of the bench's own lists (never by the cache, which is fed from JSON):
# keeps 150,000 raw pods within a few hundred MB.
POD_TOLERATIONS = [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 300},
                   {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                    "effect": "NoExecute", "tolerationSeconds": 300}]
POD_CONDITIONS = [{"type": t, "status": "True", "lastTransitionTime": "2024-11-20T10:00:05Z"}
                  for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]
ENV = [{"name": "LOG_LEVEL", "value": "info"}, {"name": "GOMAXPROCS", "value": "2"},
       {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


# -- a synthetic cluster, as the API server would list it -----------------------------------

def _cpu(millis: int) -> str:
    if millis and millis % 1000 == 0:
        return str(millis // 1000)
    if millis % 500 == 0 and millis > 1000:
        return f"{millis / 1000:g}"
    return f"{millis}m"


def _mem(mib: int, rng: Random) -> str:
    if mib and mib % 1024 == 0:
        return f"{mib // 1024}Gi"
    if rng.random() < 0.1:
        return f"{round(mib * 1.048576)}M"
    return f"{mib}Mi"


class Synth:
    """Raw node, pod and metrics objects, drawn from one seeded Random."""

    def __init__(self, rng: Random) -> None:
        self.rng, self.version, self.build = rng, 1000, 0

    def _uid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _rv(self) -> str:
        self.version += 1
        return str(self.version)

    def node(self, i: int) -> dict:
        rng = self.rng
        itype, cap_cpu, cpu, mem, _ = rng.choices(SHAPES, [s[4] for s in SHAPES])[0]
        name = f"ip-10-{(i >> 16) & 255}-{(i >> 8) & 255}-{i & 255}.eu-west-1.compute.internal"
        zone = ZONES[i % len(ZONES)]
        pool = rng.choices(("ci", "general", "gpu"), (70, 25, 5))[0]
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": itype,
                  "beta.kubernetes.io/os": "linux", "eks.amazonaws.com/nodegroup": f"{pool}-ng",
                  "failure-domain.beta.kubernetes.io/region": "eu-west-1",
                  "failure-domain.beta.kubernetes.io/zone": zone, "kubernetes.io/arch": "amd64",
                  "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                  "node.kubernetes.io/instance-type": itype,
                  "topology.kubernetes.io/region": "eu-west-1",
                  "topology.kubernetes.io/zone": zone, "pool": pool}
        spec: dict[str, Any] = {"providerID": f"aws:///{zone}/i-{rng.getrandbits(64):016x}"}
        taints = []
        if pool == "gpu":
            taints.append({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})
        elif pool == "ci" and rng.random() < 0.04:
            taints.append({"key": "ci-only", "value": "true", "effect": "NoSchedule"})
        elif rng.random() < 0.02:
            taints.append({"key": "spot", "value": "true", "effect": "PreferNoSchedule"})
        ready, r = True, rng.random()
        if r < 0.01:  # cordoned, as kubectl cordon leaves it
            spec["unschedulable"] = True
            taints.append({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule",
                           "timeAdded": "2024-11-20T09:00:00Z"})
        elif r < 0.015:
            ready = False
            taints.append({"key": "node.kubernetes.io/not-ready", "effect": "NoExecute",
                           "timeAdded": "2024-11-20T09:00:00Z"})
        if taints:
            spec["taints"] = taints
        conditions = [{"type": t, "status": "False", "reason": f"KubeletHas{t}"}
                      for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
        conditions.append({"type": "Ready", "status": "True" if ready else "Unknown",
                           "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                           "lastHeartbeatTime": "2024-11-20T10:00:00Z"})
        return {"metadata": {"name": name, "uid": self._uid(), "resourceVersion": self._rv(),
                             "creationTimestamp": "2024-11-01T08:00:00Z", "labels": labels,
                             "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
                "spec": spec,
                "status": {"capacity": {"cpu": cap_cpu, "memory": mem, "pods": "110"},
                           "allocatable": {"cpu": cpu, "memory": mem, "pods": "110",
                                           "ephemeral-storage": "95491281146"},
                           "conditions": conditions,
                           "addresses": [{"type": "InternalIP", "address": f"10.0.{i % 250}.1"},
                                         {"type": "Hostname", "address": name}],
                           "nodeInfo": {"kubeletVersion": "v1.30.4-eks-a737599",
                                        "containerRuntimeVersion": "containerd://1.7.22",
                                        "osImage": "Amazon Linux 2", "architecture": "amd64"}}}

    def pods_for(self, node: dict) -> list[dict]:
        """PODS_PER_NODE pods bound to the node: daemonsets, then workloads filling it to 35-95%
        of its allocatable (requests on a 50m / 64Mi grid, as people write them)."""
        rng, name = self.rng, node["metadata"]["name"]
        pool = node["metadata"]["labels"]["pool"]
        alloc = node["status"]["allocatable"]
        fill = rng.uniform(0.35, 0.95)
        cpu_budget = cpu_millis(alloc["cpu"]) * fill - 165
        mem_budget = memory_bytes(alloc["memory"]) / MI * min(0.95, fill + rng.uniform(-.15, .1))
        pods = [self._pod(ns, app, name, [self._container(app, cpu, mem)], phase="Running")
                for ns, app, cpu, mem in DAEMONSETS]
        count = PODS_PER_NODE - len(pods)
        weights = [rng.expovariate(1.0) for _ in range(count)]
        total = sum(weights)
        for w in weights:
            cpu = max(0, round(cpu_budget * w / total / 50) * 50)
            mem = max(64, round((mem_budget - 152) * w / total / 64) * 64)
            pods.append(self.workload(name, pool, cpu, mem))
        return pods

    def workload(self, node: str, pool: str, cpu: int, mem: int,
                 build_key: str | None = None) -> dict:
        rng = self.rng
        names, weights = zip(*APP_NAMESPACES)
        ns = "ci-agents" if build_key else rng.choices(names, weights)[0]
        if ns == "ci-agents" and pool != "ci":
            ns = "team-web"
        labels: dict[str, str] = {}
        if ns == "ci-agents":
            self.build += 1
            build_key = build_key or f"gitlab-{self.build % 97}-{self.build}"
            labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, BUILD_KEY_LABEL: build_key}
            app = f"agent-{build_key}"
        else:
            app = f"{ns.split('-')[-1]}-svc{rng.randrange(40)}"
        r = rng.random()
        init: list[dict] = []
        overhead = None
        if r < 0.05:  # BestEffort
            containers = [{"name": "app", "image": f"registry.example.com/{app}:1",
                           "resources": {}}]
        elif r < 0.10:  # limits only: requests default to them
            containers = [{"name": "app", "image": f"registry.example.com/{app}:1",
                           "resources": {"limits": {"cpu": _cpu(cpu),
                                                    "memory": _mem(mem, rng)}}}]
        elif r < 0.25 and cpu > 100 and mem > 128:  # app + istio-proxy
            containers = [self._container(app, _cpu(cpu - 100), _mem(mem - 128, rng)),
                          self._container("istio-proxy", "100m", "128Mi")]
        else:
            containers = [self._container(app, _cpu(cpu), _mem(mem, rng))]
        r = rng.random()
        if r < 0.12:  # an init container, sometimes bigger than the app
            init.append(self._container("init-schema", _cpu(rng.choice((100, 250, 500, 1000))),
                                        _mem(rng.choice((128, 256, 512)), rng)))
        elif r < 0.15:  # a native sidecar
            init.append({**self._container("log-shipper", "50m", "64Mi"),
                         "restartPolicy": "Always"})
        if rng.random() < 0.01:  # a sandboxed runtime
            overhead = {"cpu": "250m", "memory": "160Mi"}
        phase = rng.choices(("Running", "Pending", "Succeeded", "Failed"), (94, 2, 3, 1))[0]
        return self._pod(ns, app, node, containers, init=init, labels=labels, phase=phase,
                         overhead=overhead)

    def _container(self, name: str, cpu: str | None, mem: str | None) -> dict:
        requests = {k: v for k, v in (("cpu", cpu), ("memory", mem)) if v is not None}
        return {"name": name, "image": f"registry.example.com/{name}:1.{self.rng.randrange(9)}",
                "imagePullPolicy": "IfNotPresent", "env": ENV,
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": requests}}

    def _pod(self, ns: str, app: str, node: str, containers: list[dict], *,
             init: list[dict] | None = None, labels: dict | None = None, phase: str,
             overhead: dict | None = None) -> dict:
        suffix = f"{self.rng.getrandbits(40):010x}"
        spec: dict[str, Any] = {"nodeName": node, "containers": containers,
                                "restartPolicy": "Always", "schedulerName": "default-scheduler",
                                "serviceAccountName": "default", "priority": 0,
                                "tolerations": POD_TOLERATIONS}
        if init:
            spec["initContainers"] = init
        if overhead:
            spec["overhead"], spec["runtimeClassName"] = overhead, "kata"
        return {"metadata": {"name": f"{app}-{suffix[:5]}-{suffix[5:]}", "namespace": ns,
                             "uid": self._uid(), "resourceVersion": self._rv(),
                             "creationTimestamp": "2024-11-20T10:00:00Z",
                             "labels": {"app": app, "pod-template-hash": suffix[:8],
                                        **(labels or {})},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": app, "uid": "owner",
                                                  "controller": True}]},
                "spec": spec,
                "status": {"phase": phase, "hostIP": "10.0.0.1", "podIP": "10.1.0.1",
                           "qosClass": "Burstable", "startTime": "2024-11-20T10:00:01Z",
                           "conditions": POD_CONDITIONS}}

    def metrics(self, nodes: list[dict]) -> list[dict]:
        """metrics.k8s.io NodeMetrics for every node (nanocores and Ki, as metrics-server)."""
        items = []
        for node in nodes:
            alloc = node["status"]["allocatable"]
            cpu_n = int(cpu_millis(alloc["cpu"]) * self.rng.uniform(0.05, 0.85) * 1e6)
            mem_k = int(memory_bytes(alloc["memory"]) * self.rng.uniform(0.2, 0.9) / 1024)
            items.append({"metadata": {"name": node["metadata"]["name"],
                                       "creationTimestamp": "2024-11-20T10:00:00Z"},
                          "timestamp": "2024-11-20T10:00:00Z", "window": "20.05s",
                          "usage": {"cpu": f"{cpu_n}n", "memory": f"{mem_k}Ki"}})
        return items


class _Response:
    """What the client returns with _preload_content=False: the body, unread."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def release_conn(self) -> None:
        pass


def json_pages(kind: str, items: list[dict], size: int = 500) -> list[bytes]:
    """A list as the API server answers it: JSON pages of ``size`` (the watch asks for 500)
    chained by continue tokens."""
    pages = []
    for start in range(0, len(items), size) or [0]:
        meta = {"resourceVersion": "424242"}
        if start + size < len(items):
            meta["continue"] = str(len(pages) + 1)
        pages.append(json.dumps({"kind": kind, "apiVersion": "v1", "metadata": meta,
                                 "items": items[start:start + size]}).encode())
    return pages


def _paged_list(pages: list[bytes]) -> Callable[..., _Response]:
    """A list_* call (limit/continue, _preload_content=False) answering with those pages."""
    def fn(*, _continue: str | None = None, **_: Any) -> _Response:
        return _Response(pages[int(_continue or 0)])
    return fn


class _Metrics:
    """CustomObjectsApi for metrics.k8s.io: the body decoded afresh, as the client returns it."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def list_cluster_custom_object(self, group: str, version: str, plural: str,
                                   **__: Any) -> dict:
        if plural == "pods":  # PodMetrics: none sampled, no pod beyond its request
            return {"kind": "PodMetricsList", "items": []}
        return json.loads(json.dumps({"kind": "NodeMetricsList", "items": self.items}))


class _HoldTimer:
    """The ClusterWatch's lock, timing how long it is held while ``on``: what a decision
    arriving meanwhile could wait for."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.on, self.holds, self._t = lock, False, [], 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self._t = time.perf_counter_ns()

    def __exit__(self, *exc: object) -> None:
        if self.on:
            self.holds.append((time.perf_counter_ns() - self._t) / 1e6)
        self.lock.release()


class _Reservations:
    """CapacityStore.reservations() without Redis: build key -> (node, size), a fresh dict."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[str, Resources]] = {}

    def reservations(self) -> dict[str, tuple[str, Resources]]:
        return dict(self.items)


# -- the two ways to a decision ----------------------------------------------------------

def naive_nodes(raw_nodes: list[dict], raw_pods: dict[tuple[str, str], dict],
                raw_metrics: list[dict], reserved: dict[str, tuple[str, Resources]]
                ) -> list[NodeState]:
    """Without the cache: every node, pod and sample parsed and summed for this decision, with
    observe()'s semantics (reserved builds' pods left out of requested, counted in flight).
    Node memory usage is what pods use beyond their requests: none here (no pod metrics)."""
    requested: dict[str, Resources] = {}
    for pod in raw_pods.values():
        record = _pod_record(pod)
        if record is None or record[2] in reserved:
            continue
        requested[record[0]] = requested.get(record[0], ZERO) + record[1]
    usage = {name: Resources(u.cpu_millis, 0)
             for name, u in (_usage(item) for item in raw_metrics)}
    in_flight: dict[str, Resources] = {}
    for node, size in reserved.values():
        in_flight[node] = in_flight.get(node, ZERO) + size
    states = []
    for obj in raw_nodes:
        s = _node_state(obj)
        states.append(dataclasses.replace(s, requested=requested.get(s.name, ZERO),
                                          usage=usage.get(s.name),
                                          in_flight=in_flight.get(s.name, ZERO)))
    states.sort(key=lambda s: s.name)
    return states


# -- API requests per worker --------------------------------------------------------------

WATCH_TIMEOUT_S, METRICS_INTERVAL_S = 300.0, 15.0  # ClusterWatch's defaults


class _CountingApi:
    """CoreV1Api and CustomObjectsApi as the API server answers a ClusterWatch, counting each
    request: a list in pages of the cluster's size (empty pages: the count is the point), a
    watch that streams one BOOKMARK and ends at its timeout, metrics lists."""

    def __init__(self, nodes: int, pods: int, watch_s: float):
        self.pages = {"nodes": math.ceil(nodes / 500), "pods": math.ceil(pods / 500)}
        self.watch_s, self.counts = watch_s, {}
        self.list_node = self._lister("nodes")
        self.list_pod_for_all_namespaces = self._lister("pods")

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _lister(self, kind: str) -> Callable[..., Any]:
        def call(**kw: Any) -> Any:
            if kw.get("watch"):
                self._count(f"{kind} watch")
                return _Stream(self.watch_s, kw.get("resource_version"))
            self._count(f"{kind} list page")
            page = int(kw.get("_continue") or 0) + 1
            more = str(page) if page < self.pages[kind] else None
            return _Response(json.dumps({"items": [], "metadata": {
                "resourceVersion": "1", **({"continue": more} if more else {})}}).encode())
        return call

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **_: Any):
        self._count(f"metrics {plural} list")
        return {"items": []}


class _Response:
    def __init__(self, data: bytes):
        self.data = data

    def release_conn(self) -> None:
        pass


class _Stream:
    """A watch stream: a BOOKMARK (where to resume), then quiet until its timeout."""

    def __init__(self, seconds: float, version: str | None):
        self.seconds, self.version, self._closed = seconds, version, False

    def stream(self, **_: Any):
        yield json.dumps({"type": "BOOKMARK", "object": {"metadata": {
            "resourceVersion": str(int(self.version or 0) + 1)}}}).encode() + b"\n"
        deadline = time.monotonic() + self.seconds
        while not self._closed and time.monotonic() < deadline:
            time.sleep(0.005)

    def shutdown(self) -> None:
        self._closed = True

    close = shutdown

    def release_conn(self) -> None:
        pass


def api_rate(nodes: int, pods: int, wall_s: float = 8.0, scale: float = 150.0) -> dict:
    """A real ClusterWatch (its threads, its loops) against _CountingApi with time compressed
    `scale` times (watch timeout and metrics interval divided alike), for `wall_s` seconds:
    requests by kind, as per minute of real time, and those made at start."""
    api = _CountingApi(nodes, pods, WATCH_TIMEOUT_S / scale)
    watch = ClusterWatch(api_client=ApiClient(), metrics_interval_seconds=METRICS_INTERVAL_S
                         / scale, watch_timeout_seconds=WATCH_TIMEOUT_S / scale)
    watch._core = watch._custom = api  # (a watch under 1 s counts as failing: scale <= 300)
    with watch:
        watch.wait_synced(5)
        at_start = dict(api.counts)
        time.sleep(wall_s)
        counts = dict(api.counts)
    minutes = wall_s * scale / 60
    per_minute = {k: (counts.get(k, 0) - at_start.get(k, 0)) / minutes for k in counts}
    return {"at_start": at_start, "per_minute": per_minute, "pages": api.pages,
            "simulated_minutes": minutes, "scale": scale}


def api_report(rate: dict, nodes: int, pods: int) -> list[str]:
    pages = rate["pages"]["nodes"] + rate["pages"]["pods"]
    now = sum(rate["per_minute"].values())
    relists = 60 / WATCH_TIMEOUT_S  # before: every watch ended in a list of both
    metrics = 2 * 60 / METRICS_INTERVAL_S  # node metrics, agents' pod metrics
    before = pages * relists + 2 * relists + metrics
    rows = "\n".join(f"| {k} | {rate['at_start'].get(k, 0):,} | {v:.2f} |"
                      for k, v in sorted(rate["per_minute"].items()))
    return ["## API requests per worker", "",
            f"A ClusterWatch started for real (its threads and loops) against a counting stand-in "
            f"of the API server holding {nodes:,} nodes and {pods:,} pods (lists in pages of 500; "
            f"a watch streams a BOOKMARK and ends at its timeout), time compressed "
            f"{rate['scale']:g} times: {rate['simulated_minutes']:.0f} simulated minutes. "
            f"Defaults: watch timeout {WATCH_TIMEOUT_S:g} s, metrics every "
            f"{METRICS_INTERVAL_S:g} s.", "",
            "| request | at start | per minute after |", "|---|---:|---:|", rows, "",
            f"**{now:.1f} requests per minute per worker**, none of them a list of nodes or pods "
            f"after the {pages} pages at start. Before (computed, not measured: the old loop "
            f"listed both again after every watch): {pages} pages every {WATCH_TIMEOUT_S:g} s, "
            f"{before:.1f} requests per minute, {before / now:.1f}x as many. The one-list "
            f"behaviour is pinned by tests/integration/test_kube_snapshot.py "
            f"(test_a_watch_that_ends_is_followed_by_a_watch_from_its_last_version_never_a_"
            f"relist).", ""]


# -- one size ------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def median(values: list[float]) -> float:
    ordered, n = sorted(values), len(values)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed(pod: dict) -> dict:
    """A pod with only the fields its cache record is read from (see feed)."""
    meta, spec = pod["metadata"], pod["spec"]
    labels = {k: v for k, v in meta["labels"].items() if k == BUILD_KEY_LABEL}
    return {"metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels},
            "spec": {k: [{f: c[f] for f in ("resources", "restartPolicy") if f in c}
                         for c in spec[k]] if k.endswith("ontainers") else spec[k]
                     for k in ("nodeName", "containers", "initContainers", "overhead",
                               "resources") if k in spec},
            "status": {"phase": pod["status"]["phase"]}}


def feed(watch: ClusterWatch, node_pages: list[bytes], pod_pages: list[bytes]) -> None:
    """The ClusterWatch filled as its loops fill it: the node and pod lists through ``_list``
    (then marked synced, as ``_list_watch`` does), then a metrics poll."""
    watch._list("nodes", _paged_list(node_pages), watch._replace_nodes)
    watch._synced["nodes"].set()
    watch._list("pods", _paged_list(pod_pages), watch._replace_pods)
    watch._synced["pods"].set()
    watch._poll_metrics()
    watch._synced["metrics"].set()


class Events:
    """The pod events of a live cluster, applied to the raw lists and returned as watch lines:
    a pod created, a pod deleted, now and then one finishing (MODIFIED to Succeeded)."""

    def __init__(self, synth: Synth, raw_nodes: list[dict], raw_pods: dict) -> None:
        self.synth, self.raw_pods = synth, raw_pods
        self.nodes = [(n["metadata"]["name"], n["metadata"]["labels"]["pool"]) for n in raw_nodes]
        self.keys = list(raw_pods)
        self.n = 0

    def _key(self, obj: dict) -> tuple[str, str]:
        return obj["metadata"]["namespace"], obj["metadata"]["name"]

    def next(self, agent: tuple[str, str] | None = None) -> bytes:
        """agent: (node, build key) of a reserved build whose pod is created now."""
        rng, self.n = self.synth.rng, self.n + 1
        if agent or self.n % 2:
            node, pool = (agent[0], "ci") if agent else rng.choice(self.nodes)
            obj = self.synth.workload(node, pool, rng.choice((250, 500, 1000)),
                                      rng.choice((256, 512, 1024)),
                                      build_key=agent[1] if agent else None)
            if agent:
                obj["status"] = {**obj["status"], "phase": "Pending"}
            kind = "ADDED"
            self.raw_pods[self._key(obj)] = obj
            self.keys.append(self._key(obj))
        elif self.n % 10 == 0:
            key = rng.choice(self.keys)
            old = self.raw_pods[key]
            obj = {**old, "status": {**old["status"], "phase": "Succeeded"}}
            kind = "MODIFIED"
            self.raw_pods[key] = obj
        else:
            i = rng.randrange(len(self.keys))
            key, self.keys[i] = self.keys[i], self.keys[-1]
            self.keys.pop()
            obj, kind = self.raw_pods.pop(key), "DELETED"
        return json.dumps({"type": kind, "object": obj}).encode()


def apply_line(watch: ClusterWatch, line: bytes) -> None:
    """What ClusterWatch._watch does with one line of the pod watch."""
    event = json.loads(line)
    watch._apply_pod(event.get("type"), event.get("object") or {})


def _clear_parse_caches() -> None:
    readers.cpu_millis.cache_clear()
    readers.memory_bytes.cache_clear()


def run_size(n_nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = Random(f"{args.seed}/{n_nodes}")
    synth = Synth(rng)
    t = time.perf_counter()
    raw_nodes = [synth.node(i) for i in range(n_nodes)]
    raw_pods: dict[tuple[str, str], dict] = {}
    for node in raw_nodes:
        for pod in synth.pods_for(node):
            raw_pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
    metrics = _Metrics()
    metrics.items = synth.metrics(raw_nodes)
    generated = time.perf_counter() - t

    # The cache, fed under tracemalloc: what stays allocated is the ClusterWatch state.
    # Pods are listed trimmed to the fields their record is read from: the cache is the same as
    # from full bodies, and decoding 150,000 full bodies under tracemalloc would take minutes.
    node_pages = json_pages("NodeList", raw_nodes)
    pod_pages = json_pages("PodList", [trimmed(p) for p in raw_pods.values()])
    watch = ClusterWatch(api_client=ApiClient(), clock=lambda: 0.0)  # never started
    watch._custom = metrics
    _clear_parse_caches()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    feed(watch, node_pages, pod_pages)
    watch.snapshot()  # the finished NodeStates, as after the first decision
    watch.decide(TEMPLATE, reserved={})  # and the template's index, as after the first decision
    fed = time.perf_counter() - t
    _clear_parse_caches()  # bounded and shared by the process: not the cache's
    gc.collect()
    cache_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del node_pages, pod_pages

    ci_nodes = [n["metadata"]["name"] for n in raw_nodes
                if n["metadata"]["labels"]["pool"] == "ci"]
    held = watch._lock = _HoldTimer(watch._lock)
    store = _Reservations()
    rt = SimpleNamespace(view=watch, capacity=store)
    events = Events(synth, raw_nodes, raw_pods)
    size = Resources(1000, 2 * GI)
    for i in range(RESERVATIONS):
        store.items[f"reserved-{i}"] = (rng.choice(ci_nodes), size)

    n_base = args.baseline_decisions or min(
        args.decisions, max(10, 1_500_000 // (n_nodes * PODS_PER_NODE)))
    stride = max(1, args.decisions // n_base)
    ours, after_poll, base, base_ours, event_us = [], [], [], [], []
    reference, poll_ms, poll_hold_ms = [], [], []
    placed = 0
    gc.collect()
    gc.freeze()  # the bench's own raw lists are not the process's: keep them out of GC scans
    try:
        for i in range(args.decisions):
            # The cluster moves between decisions: a reservation is taken and an old one
            # released, a pod event arrives (every other time, the pod of a reserved build).
            oldest = next(iter(store.items))
            del store.items[oldest]
            key = f"build-{n_nodes}-{i}"
            store.items[key] = (rng.choice(ci_nodes), size)
            line = events.next(agent=(store.items[key][0], key) if i % 4 == 0 else None)
            t0 = time.perf_counter_ns()
            apply_line(watch, line)
            event_us.append((time.perf_counter_ns() - t0) / 1e3)
            polled = args.metrics_every and i and i % args.metrics_every == 0
            if polled:  # a fresh metrics.k8s.io sample for every node, as the poll thread
                metrics.items = synth.metrics(raw_nodes)  # applies it (timed on its own)
                held.on, held.holds = True, []
                t0 = time.perf_counter_ns()
                watch._poll_metrics()
                poll_ms.append((time.perf_counter_ns() - t0) / 1e6)
                held.on = False
                poll_hold_ms.append(max(held.holds))
            ahead = rng.randrange(0, 20)

            t0 = time.perf_counter_ns()
            decision, _ = watch.decide(TEMPLATE, reserved=store.reservations(),
                                       waiting_ahead=ahead)
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            (after_poll if polled else ours).append(elapsed)
            placed += hasattr(decision, "node")

            t0 = time.perf_counter_ns()  # the reference path, on the same state
            slow = decide(TEMPLATE, observe(rt), waiting_ahead=ahead)
            reference.append((time.perf_counter_ns() - t0) / 1e6)
            if slow != decision:
                raise AssertionError(f"{n_nodes} nodes, decision {i}: the index decided "
                                     f"{decision}, the reference {slow}")

            if i % stride == 0 and len(base) < n_base:
                t0 = time.perf_counter_ns()
                reserved = store.reservations()
                naive = decide(TEMPLATE, naive_nodes(raw_nodes, raw_pods, metrics.items,
                                                     reserved), waiting_ahead=ahead)
                base.append((time.perf_counter_ns() - t0) / 1e6)
                base_ours.append(elapsed)
                if naive != decision:
                    raise AssertionError(f"{n_nodes} nodes, decision {i}: the cache decided "
                                         f"{decision}, the full lists {naive}")

        burst_us = []  # the same kind of events, back to back (warm CPU caches)
        for line in [events.next() for _ in range(100)]:
            t0 = time.perf_counter_ns()
            apply_line(watch, line)
            burst_us.append((time.perf_counter_ns() - t0) / 1e3)

        snapshot_ms = []  # ClusterWatch.snapshot alone, every NodeState already built
        for _ in range(max(20, args.decisions // 2)):
            reserved = frozenset(store.reservations())
            t0 = time.perf_counter_ns()
            watch.snapshot(exclude_build_keys=reserved)
            snapshot_ms.append((time.perf_counter_ns() - t0) / 1e6)

        nodes = observe(rt)
        decide_ms = []
        for i in range(max(20, args.decisions // 2)):
            t0 = time.perf_counter_ns()
            decide(TEMPLATE, nodes, waiting_ahead=i % 20)
            decide_ms.append((time.perf_counter_ns() - t0) / 1e6)

        waiting = [WaitingBuild(f"waiting-{i}", tpl, template_min(tpl))
                   for i, tpl in enumerate(WAITING_TEMPLATES[j % 3] for j in range(WAITING))]
        full = [dataclasses.replace(n, in_flight=n.allocatable) for n in nodes]
        full_index = PlacementIndex()  # the same state as an index (built untimed)
        full_index.replace_all(full)
        reps = max(5, min(50, 2_000_000 // (n_nodes * WAITING)))
        cap_ms, cap_full_ms, cap_ref_ms, cap_full_ref_ms = [], [], [], []
        reserved = store.reservations()
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            fast = watch.capacity_state(waiting, reserved=reserved)
            cap_ms.append((time.perf_counter_ns() - t0) / 1e6)
        for _ in range(max(3, reps // 5)):
            t0 = time.perf_counter_ns()
            fast_full = capacity_state_on_index(waiting, full_index)
            cap_full_ms.append((time.perf_counter_ns() - t0) / 1e6)
        for _ in range(max(3, reps // 5)):
            t0 = time.perf_counter_ns()
            slow = capacity_state(waiting, observe(rt))
            cap_ref_ms.append((time.perf_counter_ns() - t0) / 1e6)
        t0 = time.perf_counter_ns()
        slow_full = capacity_state(waiting, full)
        cap_full_ref_ms.append((time.perf_counter_ns() - t0) / 1e6)
        if (fast, fast_full) != (slow, slow_full):
            raise AssertionError(f"{n_nodes} nodes: capacity state from the index "
                                 f"{fast}/{fast_full}, the reference {slow}/{slow_full}")

        profile = None
        if n_nodes == max(args.sizes) and args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for i in range(args.profile):
                watch.decide(TEMPLATE, reserved=store.reservations(), waiting_ahead=i % 20)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
            stats.print_stats(12)
            profile = _trim_profile(out.getvalue(), args.profile)
    finally:
        gc.unfreeze()

    return {"nodes": n_nodes, "pods": len(raw_pods), "generated_s": generated, "fed_s": fed,
            "ours": ours, "after_poll": after_poll, "placed": placed, "reference": reference,
            "poll_ms": poll_ms, "poll_hold_ms": poll_hold_ms,
            "base": base, "base_ours": base_ours, "decide": decide_ms, "snapshot": snapshot_ms,
            "event_us": event_us,
            "burst_us": burst_us,
            "cap": cap_ms, "cap_full": cap_full_ms, "cap_ref": cap_ref_ms,
            "cap_full_ref": cap_full_ref_ms, "cache_bytes": cache_bytes,
            "cached_pods": len(watch._pods.pods), "profile": profile}


def _trim_profile(text: str, decisions: int) -> str:
    stdlib = os.path.dirname(os.__file__) + "/"
    lines = [line.rstrip().replace(str(ROOT) + "/", "").replace(stdlib, "")
             for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    head = [line.strip() for line in lines[:start] if "function calls" in line]
    body = [line for line in lines[start:] if line.strip()
            and not line.lstrip().startswith(("Ordered by", "List reduced"))]
    return "\n".join([f"cProfile, {decisions} decisions (ClusterWatch.decide), by tottime:",
                      *head, *body])


# -- report --------------------------------------------------------------------------------

def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {os.cpu_count()} cores ({usable} usable); "
            f"{platform.python_implementation()} {platform.python_version()} on "
            f"{platform.system()} {platform.release()}")


def revision() -> str:
    def git(*argv: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *argv], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "workers")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}" + (" with uncommitted changes under workers/" if dirty else "")


def ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _before_after(results: list[dict]) -> list[str]:
    rows = []
    for r in results:
        n = r["nodes"]
        if n not in BEFORE["decision"]:
            continue
        per_node = r["cache_bytes"] / r["nodes"]
        rows.append(
            f"| {n:,} | {ms(BEFORE['decision'][n])} | **{ms(median(r['ours']))}** "
            f"| {ms(BEFORE['p99'][n])} | {ms(percentile(r['ours'], .99))} "
            f"| {ms(BEFORE['after_poll'][n])} "
            f"| {ms(median(r['after_poll'])) if r['after_poll'] else '-'} "
            f"| {ms(BEFORE['cap'][n])} | {ms(median(r['cap']))} "
            f"| {ms(BEFORE['cap_full'][n])} | {ms(median(r['cap_full']))} "
            f"| {BEFORE['event_us'][n]} | {median(r['event_us']):.0f} "
            f"| {BEFORE['bytes_per_node'][n]:,} | {per_node:,.0f} |")
    if not rows:
        return []
    return [f"## Before and after", "",
            f"Before: this bench at {BEFORE['code']} ({BEFORE['date']}, quoted from its "
            "results file; the same kind of machine), when production decided with `observe` + "
            "`decide()` over every node. After: this run, `ClusterWatch.decide` on its "
            "placement index. Milliseconds unless said.", "",
            "| nodes | decision median, before | after | p99 before | after "
            "| after a metrics poll, before | after | capacity_state (50 waiting), before "
            "| after | same, no room, before | after | pod event us, before | after "
            "| cache bytes per node, before | after |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows, ""]


def report(results: list[dict], args: argparse.Namespace, command: str, started: str,
           wall: float) -> str:
    largest = max(results, key=lambda r: r["nodes"])
    target = next((r for r in results if r["nodes"] == TARGET_NODES), None)
    out = ["# Placement decision benchmark", "",
           f"- Date: {started}",
           f"- Machine: {machine()}",
           f"- Code: {revision()}",
           f"- Command: `{command}`",
           f"- Seed {args.seed}; {args.decisions} decisions per size; {PODS_PER_NODE} pods per "
           f"node; {RESERVATIONS} reservations in flight; a pod event between decisions; a "
           f"fresh metrics.k8s.io sample every {args.metrics_every} decisions; run took "
           f"{wall:.0f} s.",
           "",
           "Absolute times on this shared machine are noisy (other jobs run on the same cores); "
           "the ratios to the baseline and to the reference path, measured in the same run on "
           "the same cluster state, are the figures to quote.", ""]
    if target:
        med = median(target["ours"])
        verdict = "PASS" if med <= TARGET_MS else "FAIL"
        out += [f"**Target: median <= {TARGET_MS:g} ms per decision at {TARGET_NODES:,} nodes: "
                f"{verdict}** (median {ms(med)} ms, {med / TARGET_MS:.2f}x the target; p99 "
                f"{ms(percentile(target['ours'], .99))} ms; right after a metrics poll "
                f"{ms(median(target['after_poll'])) if target['after_poll'] else '-'} ms).", ""]
    out += _before_after(results)
    out += ["## Decision time (ms)", "",
            "One decision = the reservations read + `ClusterWatch.decide` (the nodes with "
            "reservations rebuilt as `observe` does, then `PlacementIndex.decide`). Reference "
            "path = `workers.engine.scheduling.observe` + `placement.decide()` over every node, timed "
            "right after on the same state; every one of its decisions equalled the index's. "
            "Baseline = the same decision from the full raw node/pod/metrics lists, parsed and "
            "summed per decision (no HTTP, no JSON decoding: a lower bound).", "",
            "| nodes | pods | decision median | p95 | p99 | after a metrics poll (median, n) "
            "| metrics poll applied (median, n) | longest lock hold in a poll (max, ms) "
            "| reference path median | reference / ours "
            "| baseline median (n) | baseline / ours | decide() alone median "
            "| snapshot() alone median |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = median(r["base"]) / median(r["base_ours"])
        poll = (f"{ms(median(r['after_poll']))} ({len(r['after_poll'])})"
                if r["after_poll"] else "-")
        applied = (f"{ms(median(r['poll_ms']))} ({len(r['poll_ms'])})"
                   if r["poll_ms"] else "-")
        out.append(f"| {r['nodes']:,} | {r['pods']:,} | {ms(median(r['ours']))} "
                   f"| {ms(percentile(r['ours'], .95))} | {ms(percentile(r['ours'], .99))} "
                   f"| {poll} | {applied} "
                   f"| {ms(max(r['poll_hold_ms'])) if r['poll_hold_ms'] else '-'} "
                   f"| {ms(median(r['reference']))} "
                   f"| {median(r['reference']) / median(r['ours']):.0f}x "
                   f"| {ms(median(r['base']))} ({len(r['base'])}) | {ratio:.0f}x "
                   f"| {ms(median(r['decide']))} | {ms(median(r['snapshot']))} |")
    out += ["", "Decision percentiles leave out the decisions right after a metrics poll (their "
            "own column). A poll changes most nodes' usage; the poll thread decodes and parses "
            "the metrics list without the cache's lock, then applies it by batches of nodes, "
            "each under the lock ('metrics poll applied': all of it; 'longest lock hold': the "
            "longest batch, what a decision arriving meanwhile could wait for). The baseline "
            "ratio compares the baseline with the decisions taken "
            "on the same states in the same loop; every baseline decision equalled the "
            "index's. Decisions that placed the build: " + ", ".join(
                f"{r['placed']} of {len(r['ours']) + len(r['after_poll'])} at {r['nodes']:,} "
                "nodes" for r in results) + ". `decide()` alone: the reference function on "
            "the observed node list, for comparison.", "",
            "## Capacity state and events", "",
            f"| nodes | capacity_state, {WAITING} waiting, on the index, median ms "
            "| reference (observe + capacity_state), median ms | same, no room on any node, "
            "on the index (median ms, n) | reference, no room (ms, n) | pod event applied "
            "(JSON line -> cache and index) between decisions, median us | p99 us "
            "| same, 100 back to back, median us |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        out.append(f"| {r['nodes']:,} | {ms(median(r['cap']))} | {ms(median(r['cap_ref']))} "
                   f"| {ms(median(r['cap_full']))} ({len(r['cap_full'])}) "
                   f"| {ms(median(r['cap_full_ref']))} ({len(r['cap_full_ref'])}) "
                   f"| {median(r['event_us']):.0f} | {percentile(r['event_us'], .99):.0f} "
                   f"| {median(r['burst_us']):.0f} |")
    out += ["", "Both capacity states (with room, and with none) equalled the reference's.", "",
            "## Memory of the cache", "",
            "tracemalloc: bytes still allocated after feeding a ClusterWatch (the node and "
            "pod lists as JSON pages of 500 through `_list`, one metrics poll, one snapshot "
            "so that every NodeState is built, one decision so that the template's index is "
            "built), without the bounded quantity-parse caches (cleared before and after). "
            "Pods are listed trimmed to the fields their record is read from: the cache is "
            "the same as from full bodies, which would only cost decoding time under "
            "tracemalloc.", "",
            "| nodes | pods cached | cache MiB | bytes per node | bytes per pod |",
            "|---:|---:|---:|---:|---:|"]
    for r in results:
        out.append(f"| {r['nodes']:,} | {r['cached_pods']:,} | {r['cache_bytes'] / MI:.1f} "
                   f"| {r['cache_bytes'] / r['nodes']:,.0f} "
                   f"| {r['cache_bytes'] / r['cached_pods']:,.0f} |")
    per_node = [r["cache_bytes"] / r["nodes"] for r in results]
    out += ["", f"Bytes per node range {min(per_node):,.0f}-{max(per_node):,.0f} "
            f"({(max(per_node) / min(per_node) - 1) * 100:.0f}% spread): memory is linear in "
            "the nodes (and their pods).", ""]
    if largest["profile"]:
        out += [f"## Profile at {largest['nodes']:,} nodes", "", "```", largest["profile"],
                "```", ""]
    out += ["## Method", "",
            "- Cluster: node shapes m6i.xlarge/2xlarge/4xlarge, c6i.8xlarge, r6i.2xlarge "
            "(EKS-like allocatable, 13 labels); pools ci 70% / general 25% / gpu 5% (gpu "
            "tainted dedicated=gpu:NoSchedule); ~4% of ci nodes tainted ci-only:NoSchedule "
            "(tolerated), ~2% PreferNoSchedule, ~1% cordoned, ~0.5% NotReady. Per node 4 "
            "daemonset pods + 26 workload pods in 8 namespaces, requests filling 35-95% of the "
            "node; 15% with an init container or native sidecar, 15% with two containers, 5% "
            "limits only, 5% BestEffort, 1% with runtime overhead, 3% Succeeded / 1% Failed / "
            "2% Pending; CI agent pods labelled with a build key. metrics.k8s.io usage for "
            "every node (5-85% cpu, 20-90% memory).",
            "- The template: cpu 500m/1/4, memory 1Gi/2Gi/8Gi, nodeSelector pool=ci, tolerates "
            "ci-only. waiting_ahead drawn in 0-19.",
            "- Between decisions: one reservation released and one taken, and one pod event "
            "(created, deleted, or finished; every 4th decision the created pod is the agent "
            "of a reserved build, so the decision has pods to leave out). The event is timed "
            "apart from the decision, as the watch thread applies it.",
            "- Garbage collection stays on; the bench's own raw lists are moved out of its "
            "scans with gc.freeze() (a production process does not hold them). That also "
            "freezes the cache as it was fed, which a production process would scan in its "
            "full collections.",
            f"- capacity_state: {WAITING} waiting builds over 3 templates, reference shape "
            "from the nodes (no reference_node set); 'no room' = every node's room taken by "
            "in-flight agents, the state in which builds actually wait (as an index built "
            "from those nodes, untimed).",
            "- Pod events are applied from their full JSON body, as the watch stream sends "
            "them (json.loads + `_apply_pod`); between decisions the CPU caches are cold, "
            "hence the back-to-back column.",
            f"- Cluster generation and feeding are not timed as decisions; at "
            f"{largest['nodes']:,} nodes they took {largest['generated_s']:.1f} s and "
            f"{largest['fed_s']:.1f} s (the latter under tracemalloc).", ""]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000",
                        help="comma-separated node counts (default: 100,1000,5000)")
    parser.add_argument("--decisions", type=int, default=200,
                        help="timed decisions per size (default: 200)")
    parser.add_argument("--baseline-decisions", type=int, default=0,
                        help="baseline decisions per size (default: as many as fit about "
                             "1,500,000 pods parsed, at least 10)")
    parser.add_argument("--metrics-every", type=int, default=50,
                        help="a fresh metrics sample every N decisions; 0: never (default 50)")
    parser.add_argument("--profile", type=int, default=20,
                        help="decisions profiled at the largest size; 0: no profile")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "placement.md")
    args = parser.parse_args(argv)
    args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not args.sizes or min(args.sizes) < 1 or args.decisions < 1:
        parser.error("sizes and decisions must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    python = sys.executable
    if python.startswith(os.getcwd() + os.sep):
        python = os.path.relpath(python)
    command = f"cd {os.getcwd()} && {shlex.join([python, *sys.argv])}"
    t = time.perf_counter()
    results = []
    for n in args.sizes:
        print(f"{n:,} nodes ...", file=sys.stderr, flush=True)
        results.append(run_size(n, args))
        gc.collect()
    print("API requests ...", file=sys.stderr, flush=True)
    pods = TARGET_NODES * PODS_PER_NODE
    text = report(results, args, command, started, time.perf_counter() - t)
    text += "\n" + "\n".join(api_report(api_rate(TARGET_NODES, pods), TARGET_NODES, pods))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
