"""An in-process cluster: nodes with capacity, pods that go Pending -> Running -> Succeeded,
with the container state a kubelet would report for each phase (one container, `jnlp`).

It schedules like kube-scheduler's LeastAllocated on requests: a pod goes to the node with
the most free requested capacity that fits it, and stays Pending while none does.
"""

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.adapters.kube_objects import effective_request
from workers.core.cluster import NodeState, Resources
from workers.core.errors import PermanentError
from workers.core.pods import BUILD_KEY_LABEL, HOSTNAME_LABEL, is_managed
from workers.core.ports import ContainerPhase, ContainerState, PodInfo, PodPhase
from workers.core.quantity import cpu_millis, memory_bytes

POD_START_SECONDS = 1.0


@dataclass
class SimNode:
    name: str
    cpu_millis: int
    memory_bytes: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class SimPod:
    name: str
    labels: dict[str, str]
    cpu_millis: int
    memory_bytes: int
    created_at: float
    phase: PodPhase = PodPhase.PENDING
    node: str | None = None
    # from required node affinity on kubernetes.io/hostname: the candidates, ours first
    required_hosts: tuple[str, ...] = ()
    started_at: float | None = None  # Unix time its container started running (PodInfo's
    # times are Unix times, whatever clock drives the simulation)
    annotations: dict[str, str] = field(default_factory=dict)


def required_hosts(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The hosts of the pod's required node affinity, in the order of its preferred weights
    (the order we ranked them)."""
    terms = (manifest["spec"].get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {})
             .get("nodeSelectorTerms", []))
    for term in terms:
        for expr in term.get("matchExpressions", []):
            if expr["key"] == HOSTNAME_LABEL and expr["operator"] == "In":
                return tuple(expr["values"])
    return ()


def pod_requests(manifest: dict[str, Any]) -> tuple[int, int]:
    """CPU (millicores) and memory (bytes) a pod manifest requests, as kube-scheduler counts
    them: its containers' sum, or an init container's if larger (the agent's copy step)."""
    total = effective_request(manifest["spec"])
    return total.cpu_millis, total.memory_bytes


class SimCluster:
    """Implements the Cluster and ClusterView ports in memory; thread-safe. It has no
    metrics-server: decisions fall back to requests, as on a real cluster without one."""

    metrics_available = False

    def __init__(self, nodes: list[SimNode], *, pod_start_seconds: float = POD_START_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.nodes = {n.name: n for n in nodes}
        self.pod_start_seconds = pod_start_seconds
        self.clock = clock
        self._pods: dict[str, SimPod] = {}
        self._lock = threading.Lock()

    def _requested(self, node: str) -> tuple[int, int]:
        pods = [p for p in self._pods.values() if p.node == node
                and p.phase in (PodPhase.PENDING, PodPhase.RUNNING)]
        return sum(p.cpu_millis for p in pods), sum(p.memory_bytes for p in pods)

    def _schedule(self, pod: SimPod) -> None:
        best, best_score = None, -1.0
        if pod.required_hosts:  # the preferred weights dominate: the first candidate that fits
            for host in pod.required_hosts:
                node = self.nodes.get(host)
                if node is None:
                    continue
                cpu, mem = self._requested(node.name)
                if node.cpu_millis - cpu >= pod.cpu_millis \
                        and node.memory_bytes - mem >= pod.memory_bytes:
                    pod.node = node.name
                    return
            pod.node = None
            return
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            cpu, mem = self._requested(node.name)
            free_cpu, free_mem = node.cpu_millis - cpu, node.memory_bytes - mem
            if free_cpu < pod.cpu_millis or free_mem < pod.memory_bytes:
                continue
            score = (free_cpu - pod.cpu_millis) / node.cpu_millis \
                + (free_mem - pod.memory_bytes) / node.memory_bytes
            if score > best_score:
                best, best_score = node.name, score
        pod.node = best

    def container_bounds(self) -> tuple[dict[str, str], dict[str, str]]:
        return {}, {}  # the simulated namespace has no LimitRange

    def pod_bounds(self) -> tuple[dict[str, str], dict[str, str]]:
        return {}, {}

    def default_requests(self) -> dict[str, str]:
        return {}

    def runtime_class(self, name: str) -> dict[str, Any] | None:
        return None  # the simulated cluster has no RuntimeClass

    def delete_agent_secret(self, name: str) -> bool:
        return False  # the simulated cluster keeps no Secrets

    def create_pod(self, manifest: dict[str, Any],
                   secret: dict[str, Any] | None = None) -> bool:
        meta = manifest["metadata"]
        with self._lock:
            existing = self._pods.get(meta["name"])
            if existing is not None:
                if not is_managed(existing.labels):
                    raise PermanentError(f"pod {meta['name']} exists and is not ours")
                return False
            cpu, mem = pod_requests(manifest)
            pod = SimPod(name=meta["name"], labels=dict(meta.get("labels", {})),
                         annotations=dict(meta.get("annotations", {})), cpu_millis=cpu, memory_bytes=mem, created_at=self.clock(),
                         required_hosts=required_hosts(manifest))
            self._schedule(pod)
            self._pods[pod.name] = pod
            return True

    def get_pod(self, name: str) -> PodInfo | None:
        with self._lock:
            pod = self._pods.get(name)
            return self._info(pod) if pod and is_managed(pod.labels) else None

    def delete_pod(self, name: str) -> bool:
        with self._lock:
            pod = self._pods.get(name)
            if pod is None or not is_managed(pod.labels):
                return False
            del self._pods[name]
            return True

    def force_delete_pod(self, name: str) -> bool:
        """Its deletes take effect at once: no pod of it is ever being deleted."""
        return False

    def patch_pod_metadata(self, name: str, *, labels: dict[str, str],
                           annotations: dict[str, str]) -> bool:
        with self._lock:
            pod = self._pods.get(name)
            if pod is None or not is_managed(pod.labels):
                return False
            pod.labels.update(labels)
            pod.annotations.update(annotations)
            return True

    def list_pods(self) -> list[PodInfo]:
        with self._lock:
            return [self._info(p) for p in self._pods.values() if is_managed(p.labels)]

    def finish_pod(self, name: str, *, succeeded: bool = True) -> None:
        """The agent process exited (its build ended): the pod stops for good."""
        with self._lock:
            pod = self._pods.get(name)
            if pod is not None:
                pod.phase = PodPhase.SUCCEEDED if succeeded else PodPhase.FAILED

    def tick(self, now: float | None = None) -> None:
        """Play scheduler and kubelet: place Pending pods, start them after pod_start_seconds."""
        now = self.clock() if now is None else now
        with self._lock:
            for pod in self._pods.values():
                if pod.phase != PodPhase.PENDING:
                    continue
                if pod.node is None:
                    self._schedule(pod)
                elif now - pod.created_at >= self.pod_start_seconds:
                    pod.phase, pod.started_at = PodPhase.RUNNING, time.time()

    def snapshot(self, *, exclude_build_keys: Collection[str] | Mapping[str, str] = frozenset()
                 ) -> list[NodeState]:
        where = exclude_build_keys if isinstance(exclude_build_keys, Mapping) else None

        def excluded(pod: SimPod) -> bool:
            key = pod.labels.get(BUILD_KEY_LABEL)
            return key in exclude_build_keys and (where is None or where[key] == pod.node)
        with self._lock:
            out = []
            for node in sorted(self.nodes.values(), key=lambda n: n.name):
                pods = [p for p in self._pods.values() if p.node == node.name
                        and p.phase in (PodPhase.PENDING, PodPhase.RUNNING)
                        and not excluded(p)]
                out.append(NodeState(
                    name=node.name, allocatable=Resources(node.cpu_millis, node.memory_bytes),
                    requested=Resources(sum(p.cpu_millis for p in pods),
                                        sum(p.memory_bytes for p in pods)),
                    labels={HOSTNAME_LABEL: node.name, **node.labels}))
            return out

    def deleting(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Its deletes take effect at once: no pod of it is ever being deleted."""
        return frozenset()

    def agent_ended(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Its pods are one container each: the agent's end is the pod's (gone)."""
        return frozenset()

    def gone(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods, those deleted or ended."""
        with self._lock:
            return frozenset(n for n in names if (pod := self._pods.get(n)) is None
                             or pod.phase not in (PodPhase.PENDING, PodPhase.RUNNING))

    @staticmethod
    def _info(pod: SimPod) -> PodInfo:
        return PodInfo(name=pod.name, phase=str(pod.phase), node=pod.node,
                       labels=dict(pod.labels), annotations=dict(pod.annotations),
                       containers=(_container(pod),))


def _container(pod: SimPod) -> ContainerState:
    """The agent container's state as the kubelet reports it in each phase."""
    if pod.phase == PodPhase.PENDING:
        return ContainerState("jnlp", ContainerPhase.WAITING, reason="ContainerCreating")
    if pod.phase == PodPhase.RUNNING:
        return ContainerState("jnlp", ContainerPhase.RUNNING, started_at=pod.started_at)
    ok = pod.phase == PodPhase.SUCCEEDED
    return ContainerState("jnlp", ContainerPhase.TERMINATED, reason="Completed" if ok
                          else "Error", exit_code=0 if ok else 1)


def uniform_nodes(count: int, *, cpu: str = "4", memory: str = "16Gi",
                  prefix: str = "node") -> list[SimNode]:
    return [SimNode(name=f"{prefix}-{i}", cpu_millis=cpu_millis(cpu),
                    memory_bytes=memory_bytes(memory)) for i in range(1, count + 1)]
