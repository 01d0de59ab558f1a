"""Kubernetes objects as the cluster cache keeps them: only the fields a decision needs.

Raw JSON nodes, pods, node metrics and our agents' pod metrics are read into ``NodeState``s, pod
records (node, effective request, build key), node usage and agent usage samples, and
``PodIndex`` keeps per-node sums of the pod records current. Our own pods are also read into
``PodInfo``s with their container states (``pod_info``), for the kube adapter and for the
watch that fails a build whose agent cannot start.
No client models and no pod bodies (their env may hold secrets) are kept, nor quoted in logs.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from workers.core.cluster import REFUSING_CONDITIONS, ZERO, NodeState, Resources, Taint
from workers.core.fit import (
    EPHEMERAL_STORAGE, NOTHING_HELD, STANDARD_RESOURCES, Held, Limits, container_extras,
    spec_host_ports, with_init_containers)
from workers.core import pod_anti_affinity
from workers.core.installation_pods import INSTALLATION_LABEL, Owner, owner
from workers.core.pods import (BUILD_KEY_LABEL, HOSTNAME_LABEL, RETAINED, RETAINED_LABEL,
                               TEMPLATE_LABEL, WARM_IDLE, WARM_LABEL, is_managed)
from workers.core.ports import ContainerPhase, ContainerState, PodInfo, PodPhase
from workers.core.quantity import cpu_millis as _cpu_millis, memory_bytes as _memory_bytes
from workers.core.quantity import parse_quantity

log = logging.getLogger("ci_autoscaler.snapshot")
Obj = dict[str, Any]
# The same few quantities ("250m", "1Gi") recur across 100,000 pods: parse each once.
cpu_millis, memory_bytes = lru_cache(4096)(_cpu_millis), lru_cache(4096)(_memory_bytes)
# node, effective request, build key, what it holds beside cpu and memory (core.fit)
PodRecord = tuple[str, Resources, str | None, Held]
_CPU_MEMORY = frozenset({"cpu", "memory"})
_ONE_POD = Held(pods=1)


class PodIndex:
    """Non-terminated pods bound to a node, and per-node sums kept current pod by pod."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], PodRecord] = {}
        self.requested: dict[str, Resources] = {}
        self.count: dict[str, int] = {}
        self.held: dict[str, Held] = {}
        self.by_node: dict[str, set[tuple[str, str]]] = {}
        self.by_build_key: dict[str, set[tuple[str, str]]] = {}
        # the requests of the DaemonSets' and static pods, per node (what a node joining
        # holds too: on_every_node)
        self.daemons: dict[str, Resources] = {}
        self.daemon_pods: dict[str, int] = {}  # and how many they are (pod slots they take)
        # and what they hold beside cpu and memory (ephemeral-storage, extended resources)
        self.daemon_held: dict[str, Held] = {}
        self._daemon_keys: set[tuple[str, str]] = set()

    def put(self, key: tuple[str, str], record: PodRecord | None,
            daemon: bool = False) -> list[str]:
        """Set (None: forget) a pod's record (`daemon`: one a node joining runs too,
        on_every_node); returns the nodes whose sums changed."""
        old = self.pods.pop(key, None)
        if record is not None:
            self.pods[key] = record
        was_daemon, daemon = key in self._daemon_keys, daemon and record is not None
        if was_daemon:
            self._daemon_keys.discard(key)
            self._add_daemon(old[0], ZERO - old[1], -1, old[3])
        if daemon:
            self._daemon_keys.add(key)
            self._add_daemon(record[0], record[1], 1, record[3])
        if old == record:
            return []
        if old is not None:
            keys = self.by_node.get(old[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_node[old[0]]
        if record is not None:
            self.by_node.setdefault(record[0], set()).add(key)
        for rec, sign in ((old, -1), (record, 1)):
            if rec is None:
                continue
            node, request, build_key, held = rec
            self.count[node] = self.count.get(node, 0) + sign
            self.requested[node] = self.requested.get(node, ZERO) + (
                request if sign > 0 else ZERO - request)
            was = self.held.get(node, NOTHING_HELD)
            self.held[node] = was + held if sign > 0 else was - held
            if not self.count[node]:
                del self.count[node], self.requested[node], self.held[node]
            if build_key:
                keys = self.by_build_key.setdefault(build_key, set())
                if sign > 0:
                    keys.add(key)
                else:
                    keys.discard(key)
                if not keys:
                    del self.by_build_key[build_key]
        return [rec[0] for rec in (old, record) if rec is not None]

    def _add_daemon(self, node: str, request: Resources, pods: int, held: Held) -> None:
        if held.ephemeral_bytes or held.extended or held.host_ports:
            extras = Held(0, held.ephemeral_bytes, held.extended, held.host_ports)
            was_held = self.daemon_held.get(node, NOTHING_HELD)
            now = was_held + extras if pods > 0 else was_held - extras
            if now.ephemeral_bytes or now.extended or now.host_ports:
                self.daemon_held[node] = now
            else:
                self.daemon_held.pop(node, None)
        was = self.daemons.get(node, ZERO)
        total = Resources(was.cpu_millis + request.cpu_millis,
                          was.memory_bytes + request.memory_bytes)
        if total == ZERO:
            self.daemons.pop(node, None)
        else:
            self.daemons[node] = total
        count = self.daemon_pods.get(node, 0) + pods
        if count:
            self.daemon_pods[node] = count
        else:
            self.daemon_pods.pop(node, None)


# The annotation the kubelet puts on a static pod's mirror (pkg/kubelet/types
# ConfigMirrorAnnotationKey; pkg/kubelet/pod/mirror_client.go CreateMirrorPod)
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


def on_every_node(obj: Obj) -> bool:
    """The pod is one a node joining runs too: a DaemonSet's (its controller owner), or the
    mirror of a static pod (kube-proxy on GKE's nodes; the kubelet runs it from its own
    disk), and not being deleted; as Cluster Autoscaler fills its template node
    (simulator/node_info_utils.go podsExpectedOnFreshNode: IsMirrorPod or IsDaemonSetPod,
    no deletionTimestamp)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    return MIRROR_ANNOTATION in (meta.get("annotations") or {}) or any(
        ref.get("kind") == "DaemonSet" and ref.get("controller")
        for ref in meta.get("ownerReferences") or ())


def node_state(obj: Obj) -> NodeState:
    meta, spec, status = (obj.get(k) or {} for k in ("metadata", "spec", "status"))
    allocatable = status.get("allocatable") or {}
    capacity = status.get("capacity") or {}
    alloc = Resources(cpu_millis(allocatable.get("cpu", 0)),
                      memory_bytes(allocatable.get("memory", 0)))
    pods, ephemeral = allocatable.get("pods"), allocatable.get(EPHEMERAL_STORAGE)
    limits = Limits(
        pods=int(parse_quantity(pods)) if pods is not None else None,
        ephemeral_bytes=memory_bytes(ephemeral) if ephemeral is not None else None,
        extended=tuple(sorted((k, int(parse_quantity(v))) for k, v in allocatable.items()
                              if k not in STANDARD_RESOURCES and "/" in k)))
    reserved = Resources(cpu_millis(capacity["cpu"]) if "cpu" in capacity else alloc.cpu_millis,
                         memory_bytes(capacity["memory"]) if "memory" in capacity
                         else alloc.memory_bytes) - alloc
    conditions = status.get("conditions") or []
    condition = next((c for c in conditions if c.get("type") == "Ready"), {})
    ready = condition.get("status") == "True"
    pressure = ",".join(sorted(c["type"] for c in conditions if c.get("type") in
                               REFUSING_CONDITIONS and c.get("status") == "True"))
    return NodeState(
        limits=limits, reserved=reserved.clamp_min(ZERO),
        name=meta["name"], labels=dict(meta.get("labels") or {}),
        allocatable=alloc,
        taints=tuple(Taint(t.get("key", ""), t.get("effect", ""), t.get("value"))
                     for t in spec.get("taints") or []),
        unschedulable=bool(spec.get("unschedulable")), ready=ready,
        # only a status change moves it (kubelet nodestatus setters.go ReadyCondition; the
        # node lifecycle controller's tryUpdateNodeHealth when it marks the node Unknown):
        # a heartbeat leaves the NodeState equal, and the watch skips it
        not_ready_since=None if ready else timestamp(condition.get("lastTransitionTime")),
        pressure=pressure)


def object_key(obj: Obj) -> tuple[str, str]:
    """(namespace, name); "" for what is missing."""
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def pod_record(obj: Obj, installation_value: str = "",
               agent_namespace: str | None = None) -> PodRecord | None:
    """None for a pod that takes no room: not bound to a node yet, or terminated. Every pod
    counts; its build key only when it has no installation label or this one's
    (`installation_value`, core.installation_pods.label_value): another installation
    sharing the namespace may run a build of the same key (the same push).

    One of our agents' pods not bound yet that asks what kube-scheduler counts beside cpu and
    memory (a GPU, ephemeral-storage, a hostPort) holds it, and its pod slot, on its first
    candidate (our choice; its required node affinity, core.pods.candidate_affinity): a
    reservation carries its cpu, memory and pod count only (workers.engine.scheduling), so
    without this, builds placed in a burst, or once their reservations settled, all took
    the same last GPU until the scheduler bound one and refused the others. Its cpu and
    memory stay the reservation's part. Its pod anti-affinity is counted only in the
    `agent_namespace` (when given): a term without namespaces selects its own namespace's
    pods alone."""
    spec = obj.get("spec") or {}
    phase = (obj.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return None
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    key = labels.get(BUILD_KEY_LABEL) if labels.get(
        INSTALLATION_LABEL, installation_value) == installation_value else None
    # our agents' pod anti-affinity is counted (core.pod_anti_affinity; warm ones' too, in
    # the agent namespace), others' left to kube-scheduler
    own = labels if spec.get("affinity") and is_managed(labels) and labels.get(
        INSTALLATION_LABEL, installation_value) == installation_value and (
        agent_namespace is None or meta.get("namespace") == agent_namespace) else None
    if not spec.get("nodeName"):
        if key is None or (held := pod_held(spec, own)) is _ONE_POD \
                or (first := first_candidate(spec)) is None:
            return None
        return first, ZERO, key, held
    return spec["nodeName"], effective_request(spec), key, pod_held(spec, own)


def first_candidate(spec: Obj) -> str | None:
    """The first hostname of an agent pod's required node affinity (core.pods
    candidate_affinity: ours first), taken as the node's name (kubernetes.io/hostname is the
    node's name unless a kubelet overrides it; one that does is then counted nowhere)."""
    terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
              .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
             .get("nodeSelectorTerms") or [])
    for term in terms[:1]:
        for e in term.get("matchExpressions") or []:
            if e.get("key") == HOSTNAME_LABEL and e.get("operator") == "In" and e.get("values"):
                return str(e["values"][0])
    return None


def pod_held(spec: Obj, labels: dict[str, str] | None = None) -> Held:
    """One pod, its ephemeral-storage and extended resource requests (requests default to
    limits; the larger of the containers' sum and each init container, as for cpu) and the
    hostPorts it binds; with its `labels`, the tokens of its own pod anti-affinity too
    (core.pod_anti_affinity). Most pods ask for none of it: they share one value."""
    groups = (spec.get("containers") or [], spec.get("initContainers") or [])
    anti = pod_anti_affinity.tokens(spec, labels) if labels is not None else frozenset()
    special = any(c.get("ports") or any(
        part and not part.keys() <= _CPU_MEMORY
        for part in ((c.get("resources") or {}).get("requests"),
                     (c.get("resources") or {}).get("limits")))
        for group in groups for c in group)
    if not special:
        return Held(1, host_ports=anti) if anti else _ONE_POD

    total: dict[str, int] = {}
    for c in groups[0]:
        for k, v in container_extras(c).items():
            total[k] = total.get(k, 0) + v
    if groups[1]:  # a native sidecar's requests add to the containers' (as for cpu)
        total = with_init_containers(spec, total)
    ephemeral = total.pop(EPHEMERAL_STORAGE, 0)
    return Held(1, ephemeral, tuple(sorted((k, v) for k, v in total.items() if v)),
                frozenset(spec_host_ports(spec)) | anti)


def effective_request(spec: Obj) -> Resources:
    """As the scheduler counts, per resource: max(containers + sidecars, each init container
    plus the sidecars started before it); pod-level requests win; plus the overhead.
    (Plain ints inside: this runs for every pod of every list.)"""
    def requests(c: Obj) -> tuple[int, int]:  # requests default to limits, as on create
        res = c.get("resources") or {}
        r, limits = res.get("requests") or {}, res.get("limits") or {}
        return (cpu_millis(r["cpu"] if "cpu" in r else limits.get("cpu", 0)),
                memory_bytes(r["memory"] if "memory" in r else limits.get("memory", 0)))

    cpu = mem = side_cpu = side_mem = init_cpu = init_mem = 0
    for c in spec.get("containers") or []:
        c_cpu, c_mem = requests(c)
        cpu, mem = cpu + c_cpu, mem + c_mem
    for c in spec.get("initContainers") or []:
        c_cpu, c_mem = requests(c)
        if c.get("restartPolicy") == "Always":  # a sidecar: keeps running beside what follows
            side_cpu, side_mem, c_cpu, c_mem = side_cpu + c_cpu, side_mem + c_mem, 0, 0
        init_cpu, init_mem = max(init_cpu, side_cpu + c_cpu), max(init_mem, side_mem + c_mem)
    cpu, mem = max(cpu + side_cpu, init_cpu), max(mem + side_mem, init_mem)
    pod = (spec.get("resources") or {}).get("requests") or {}
    overhead = spec.get("overhead") or {}
    return Resources(
        (cpu_millis(pod["cpu"]) if "cpu" in pod else cpu) + cpu_millis(overhead.get("cpu", 0)),
        (memory_bytes(pod["memory"]) if "memory" in pod else mem)
        + memory_bytes(overhead.get("memory", 0)))


def node_usage(item: Obj) -> tuple[str, Resources]:
    """(node name, usage) from a metrics.k8s.io NodeMetrics item."""
    return item["metadata"]["name"], Resources(cpu_millis(item["usage"]["cpu"]),
                                               memory_bytes(item["usage"]["memory"]))


AgentSample = tuple[tuple[str, str], str, str, float, int, bool]


def pod_memory(item: Obj) -> int:
    """The working set of a PodMetrics item, summed over its containers."""
    return sum(memory_bytes(c["usage"]["memory"]) for c in item.get("containers") or [])


def agent_usage(item: Obj, installation: str = "") -> AgentSample | None:
    """((namespace, name), template, sample stamp, cores, memory bytes, idle) from a
    metrics.k8s.io PodMetrics item of one of this installation's agents (metrics-server copies
    the pod's labels, not its annotations), summed over its containers; `idle`: an idle warm
    agent's (its warm label's value until a build claims it), which runs no build and is no
    sample of what the template's builds use; so is a failed build's pod kept for debugging
    (workers.engine.retention). None for a pod that is not
    ours (checked here, whatever the list was asked for; one from before installation
    labels is not counted by an installation with an identity), has no template label, or
    has no container sampled yet."""
    meta = item.get("metadata") or {}
    labels = meta.get("labels") or {}
    template = labels.get(TEMPLATE_LABEL)
    containers = item.get("containers") or []
    if not is_managed(labels) or owner(labels, None, installation) != Owner.OURS \
            or not template or not containers:
        return None
    cores = float(sum(parse_quantity(c["usage"]["cpu"]) for c in containers))
    memory = sum(memory_bytes(c["usage"]["memory"]) for c in containers)
    # metrics-server refreshes a sample once per resolution: the same stamp is the same sample
    stamp = f"{item.get('timestamp') or ''}/{item.get('window') or ''}"
    if stamp == "/":
        stamp = f"{cores}/{memory}"
    idle = labels.get(WARM_LABEL) == WARM_IDLE or labels.get(RETAINED_LABEL) == RETAINED
    return object_key(item), template, stamp, cores, memory, idle


def timestamp(value: Any) -> float | None:
    """An RFC 3339 time as the API server writes it ("2024-01-01T00:00:00Z"), as Unix time."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def container_state(status: Obj, *, init: bool, sidecar: bool = False) -> ContainerState:
    """One containerStatuses entry: the state the kubelet set (waiting, running, terminated;
    a status with none of them counts as waiting, as kubectl shows it)."""
    state = status.get("state") or {}
    for phase in (ContainerPhase.TERMINATED, ContainerPhase.RUNNING, ContainerPhase.WAITING):
        if phase.value in state and state[phase.value] is not None:
            detail = state[phase.value] or {}
            break
    else:
        phase, detail = ContainerPhase.WAITING, {}
    code = detail.get("exitCode")
    return ContainerState(
        name=str(status.get("name") or ""), phase=phase, init=init,
        reason=str(detail.get("reason") or ""), message=str(detail.get("message") or ""),
        exit_code=int(code) if code is not None else None, sidecar=sidecar,
        started_at=timestamp(detail.get("startedAt")) if phase == ContainerPhase.RUNNING
        else None)


def _unschedulable(status: Obj) -> tuple[float | None, str]:
    """Since when, and why, kube-scheduler found no node (PodScheduled False, Unschedulable)."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" \
                and condition.get("reason") == "Unschedulable":
            return timestamp(condition.get("lastTransitionTime")), \
                str(condition.get("message") or "")
    return None, ""


def _disruption(status: Obj, field: str = "reason") -> str:
    """The reason (or `field`) of the pod's DisruptionTarget condition when it is True: the
    API server, kube-scheduler, the taint manager, the pod GC or the kubelet writes it before
    it takes the pod away (Kubernetes docs, "Pod disruption conditions"; k8s.io/api core/v1
    DisruptionTarget and its PodReason* constants)."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return str(condition.get(field) or ("DisruptionTarget" if field == "reason" else ""))
    return ""


def _agent_container(spec: Obj) -> str:
    """The container given the agent's name (workers.core.pods: the agent's environment)."""
    for c in spec.get("containers") or []:
        if any(e.get("name") == "JENKINS_AGENT_NAME" for e in c.get("env") or []):
            return str(c.get("name") or "")
    return ""


def agent_ended(obj: Obj) -> bool:
    """Whether the pod's agent container has terminated (PodInfo.agent_ended, of the raw
    object): a service container may keep the pod Running after it, and with restartPolicy
    Never the agent never runs again."""
    agent = _agent_container(obj.get("spec") or {})
    return bool(agent) and any(
        c.get("name") == agent and (c.get("state") or {}).get("terminated")
        for c in (obj.get("status") or {}).get("containerStatuses") or [])


def pod_scheduled(obj: Obj) -> tuple[bool, float | None]:
    """Whether the pod is bound to a node, and since when if the API server says so. A
    binding sets spec.nodeName and the PodScheduled condition True, with its
    lastTransitionTime (kubernetes pkg/registry/core/pod/storage/storage.go, BindingREST
    setPodNodeAndMetadata); a pod made with nodeName set has no such time."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            return True, timestamp(condition.get("lastTransitionTime"))
    return bool(spec.get("nodeName")), None


def pod_info(obj: Obj) -> PodInfo:
    """A pod as the engine sees one of its agents: phase, node, labels, scheduling, deletion,
    and the state of each container (init containers first)."""
    meta, spec, status = (obj.get(k) or {} for k in ("metadata", "spec", "status"))
    # a sidecar is told by its spec only: its status has no restartPolicy
    sidecars = {c.get("name") for c in spec.get("initContainers") or []
                if c.get("restartPolicy") == "Always"}
    containers = tuple(
        [container_state(c, init=True, sidecar=c.get("name") in sidecars)
         for c in status.get("initContainerStatuses") or []]
        + [container_state(c, init=False) for c in status.get("containerStatuses") or []])
    since, message = _unschedulable(status)
    return PodInfo(name=meta["name"], phase=status.get("phase") or PodPhase.PENDING.value,
                   node=spec.get("nodeName"), labels=dict(meta.get("labels") or {}),
                   annotations=dict(meta.get("annotations") or {}),
                   unschedulable_since=since, scheduling_message=message,
                   deleting=meta.get("deletionTimestamp") is not None,
                   deletion_due=timestamp(meta.get("deletionTimestamp")),
                   created_at=timestamp(meta.get("creationTimestamp")),
                   start_time=timestamp(status.get("startTime")),
                   active_deadline_seconds=_deadline(spec),
                   reason=str(status.get("reason") or ""),
                   message=str(status.get("message") or ""),
                   disruption=_disruption(status),
                   disruption_message=_disruption(status, "message"), containers=containers,
                   agent_container=_agent_container(spec))


def _deadline(spec: Obj) -> int | None:
    value = spec.get("activeDeadlineSeconds")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parsed(what: str, parse: Callable[[Obj], Any], obj: Obj) -> Any:
    """parse(obj), or None with a warning naming the object (never quoting it)."""
    try:
        return parse(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        log.warning("%s %s: skipped, unreadable (%s)", what,
                    "/".join(filter(None, object_key(obj))), type(err).__name__)
        return None
