"""A watched cache of the cluster, so that a placement decision never lists the whole cluster.

``ClusterWatch`` lists nodes and the pods of every namespace (anyone's pod takes room) once, then
keeps the cache current with watches in daemon threads. A watch asks for bookmarks
(allowWatchBookmarks) and the next one resumes from the last resourceVersion it saw, so a watch
that times out or breaks costs one request, not a list of every pod; only 410 Gone (as a status
or an ERROR event: that version is too old) or an unexpected error lists again, with a backoff
when it keeps failing. Node usage is polled from metrics.k8s.io (no watch there); without it,
usage is None and decisions fall back to requests. Per-node sums follow each pod event and a
node's NodeState is rebuilt only when it changed, so ``snapshot()`` only walks cached values.
A ``PlacementIndex`` (workers.core.placement) follows the same changes, so that ``decide()`` and
``capacity_state()`` examine a few nodes, not every node, with the same result as the reference
functions on ``snapshot()``. Our agents' usage is polled too (PodMetrics in the agent namespace,
each metrics interval): the recent samples per template give ``expected_use()``.
Pod listeners (``add_pod_listener``) see every pod event and every pod of a relist, in the
watch thread, beside the cache: the worker fails a build whose agent pod cannot start
from there (workers.agent_starts.watch), within one event.
Raw JSON is read and only the fields used are kept (see ``kube_objects``): no client models for
100,000 pods, and no pod bodies (their env may hold secrets) in the cache or the logs. Errors
become the project's own (see ``kube_errors``).
"""

import functools
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import urllib3.exceptions
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from workers.adapters.kube_errors import api_call, status_error
from workers.adapters.kube_objects import (
    Obj, PodIndex, agent_ended, agent_usage, node_state, node_usage, object_key,
    on_every_node, parsed, pod_memory, pod_record)
from workers.core.capacity import CapacityState, WaitingBuild, capacity_state_on_index
from workers.core.cluster import ZERO, Holding, NodeState, Resources
from workers.core.fit import NOTHING_HELD, Held, Limits
from workers.core.installation_pods import label_value
from workers.core.errors import CIAutoscalerError, RetryableError
from workers.core.models import PodTemplate
from workers.core.placement import (
    DEFAULT_TARGET_UTILISATION, Decision, Placement, reservation_room)
from workers.core.placement_index import NodeRow, PlacementIndex, template_key
from workers.core.usage import (
    USAGE_HISTORY, expected_use, memory_over_requests, node_memory_fallback)

log = logging.getLogger("ci_autoscaler.snapshot")
_REQUEST_TIMEOUT, _WATCH_GRACE, _PAGE, _MAX_BACKOFF = 30.0, 5.0, 500, 30.0
_POLL_BATCH = 128  # nodes whose new usage is applied at once, under the lock
# How often a wait for the first sync looks whether the process was asked to stop.
SYNC_POLL_SECONDS = 0.2
LISTED = "LISTED"  # the event kind a pod listener gets for each pod of a (re)list
PodListener = Callable[[str, Obj], None]  # (ADDED, MODIFIED, DELETED or LISTED; the raw pod)


class ClusterWatch:
    """Nodes, pod requests and node usage, kept current; see the module docstring.

    ``metrics_available``: the last metrics.k8s.io poll succeeded; ``usage_sampled_at``:
    ``clock()`` at the last successful one (None before any). ``agent_namespace``: where our
    agents' PodMetrics are polled (None: not polled until ``watch_agent_usage`` names it)."""

    def __init__(self, *, api_client: ApiClient, metrics_interval_seconds: float = 15.0,
                 watch_timeout_seconds: float = 300, clock: Callable[[], float] = time.monotonic,
                 agent_namespace: str | None = None, installation: str = ""):
        self._core, self._custom = CoreV1Api(api_client), CustomObjectsApi(api_client)
        self._interval, self._watch_timeout, self._clock = (
            metrics_interval_seconds, watch_timeout_seconds, clock)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._synced = {name: threading.Event() for name in ("nodes", "pods", "metrics")}
        self._nodes: dict[str, NodeState] = {}  # as read: requested ZERO, usage None
        self._order: list[str] | None = None  # sorted node names; None: to be sorted again
        self._pods = PodIndex()
        self._deleting: set[tuple[str, str]] = set()  # pods with a deletionTimestamp
        self._present: set[tuple[str, str]] = set()  # every pod, bound or not (see gone)
        self._ended: set[tuple[str, str]] = set()  # pods Succeeded or Failed
        # pods whose agent container ended while another runs on (see agent_ended)
        self._agent_ended: set[tuple[str, str]] = set()
        self._usage: dict[str, Resources] = {}
        self._views: dict[str, NodeState] = {}  # finished NodeStates, dropped on any change
        # node -> (its view, its in-flight sums, the NodeState they made): see _in_flight
        self._flying: dict[str, tuple[NodeState, tuple, NodeState]] = {}
        self._index = PlacementIndex()  # the same nodes, for decide() and capacity_state()
        self._streams: set[Any] = set()
        self._threads: list[threading.Thread] = []
        self.metrics_available, self.usage_sampled_at = False, None
        self._metrics_warned = False
        self.agent_namespace = agent_namespace
        # Our agents' usage and build keys are this installation's pods' only; every pod's
        # requests and use count on its node (workers.core.installation_pods).
        self.installation = installation
        self._pod_record = functools.partial(pod_record,
                                             installation_value=label_value(installation),
                                             agent_namespace=agent_namespace)
        self._agent_usage = functools.partial(agent_usage, installation=installation)
        self._samples: dict[str, deque[tuple[float, int]]] = {}  # template -> (cores, bytes)
        self._sampled: dict[tuple[str, str], str] = {}  # agent pod -> stamp of its last sample
        self._agents_warned = False
        self._pod_listeners: list[PodListener] = []
        self._usage_listeners: list[UsageListener] = []

    def add_usage_listener(self, listener: "UsageListener") -> None:
        """Call ``listener(samples)`` after each poll of the agents' PodMetrics with the
        samples new to this process: (pod name, stamp, CPU millicores, memory bytes)."""
        self._usage_listeners.append(listener)

    def add_pod_listener(self, listener: PodListener) -> None:
        """Call ``listener(kind, pod)`` for every pod event and every pod of a relist, in the
        watch thread (keep it short; what it raises is logged and dropped). Pods of every
        namespace and owner come through: a listener filters them itself."""
        self._pod_listeners.append(listener)

    def _notify(self, kind: str, obj: Obj) -> None:
        for listener in self._pod_listeners:
            try:
                listener(kind, obj)
            except Exception as err:  # never kill the watch; never quote the pod
                log.warning("pod listener failed on %s: %s",
                            "/".join(filter(None, object_key(obj))), type(err).__name__)

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("ClusterWatch is started once")
        loops = {"nodes": lambda: self._list_watch("nodes", self._core.list_node,
                                                   self._replace_nodes, self._apply_node),
                 "pods": lambda: self._list_watch("pods", self._core.list_pod_for_all_namespaces,
                                                  self._replace_pods, self._apply_pod),
                 "metrics": self._run_metrics}
        for name, loop in loops.items():
            self._threads.append(threading.Thread(target=loop, name=f"cluster-watch-{name}",
                                                  daemon=True))
            self._threads[-1].start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:  # wake a thread blocked reading a quiet watch
            try:
                stream.shutdown()
            except (OSError, ValueError, RuntimeError):
                pass
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_synced(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Whether nodes and pods were listed and metrics tried, within ``timeout`` seconds;
        False at once when ``stop`` is set (the process was asked to end meanwhile)."""
        deadline = time.monotonic() + timeout
        for synced in self._synced.values():
            while not synced.wait(min(SYNC_POLL_SECONDS, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or stop is not None and stop.is_set():
                    return False
        return True

    def __enter__(self) -> "ClusterWatch":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self, *, exclude_build_keys: Collection[str] | Mapping[str, str] = frozenset()
                 ) -> list[NodeState]:
        """One NodeState per node, by name, from the cache only; pods labelled with an excluded
        build key are left out of ``requested`` (with a mapping of build key -> node, only
        on that node: see ports.ClusterView). RetryableError before the first full list."""
        with self._lock:
            if not (self._synced["nodes"].is_set() and self._synced["pods"].is_set()):
                raise RetryableError("cluster snapshot: nodes and pods are not listed yet")
            if self._order is None:
                self._order = sorted(self._nodes)
            states = [self._views.get(name) or self._view(name) for name in self._order]
            minus: dict[str, Resources] = {}
            pods: dict[str, int] = {}
            where = exclude_build_keys if isinstance(exclude_build_keys, Mapping) else None
            for build_key in exclude_build_keys:
                for key in self._pods.by_build_key.get(build_key, ()):
                    node, request, _, _ = self._pods.pods[key]
                    if where is not None and where[build_key] != node:
                        continue  # bound elsewhere than reserved: counted where it is
                    minus[node] = minus.get(node, ZERO) + request
                    pods[node] = pods.get(node, 0) + 1
        # An excluded build's pod is counted in flight by the caller, pod and size: left out
        # here (what else it holds, a GPU, stays counted: scheduling.observe counts a
        # reservation's holds beside it; ClusterWatch._in_flight, deciding, counts each once).
        return [replace(s, requested=s.requested - minus[s.name],
                        held=s.held - Held(pods=pods[s.name])) if s.name in minus else s
                for s in states] if minus else states

    def build_keys(self) -> frozenset[str]:
        """The build keys of the pods in the cache that carry one: our agents' (builds' and
        warm), so that ``snapshot(exclude_build_keys=...)`` leaves only what is not ours."""
        with self._lock:
            return frozenset(self._pods.by_build_key)

    def deleting(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods of the namespace, those being deleted (deletionTimestamp set: a
        DELETE, an eviction, a drain), as the cache has them."""
        with self._lock:
            return frozenset(n for n in names if (namespace, n) in self._deleting)

    def agent_ended(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods of the namespace, those whose agent container has ended while the
        pod runs on (a service container keeps it Running), as the cache has them."""
        with self._lock:
            return frozenset(n for n in names if (namespace, n) in self._agent_ended)

    def gone(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods of the namespace, those gone from the cache (deleted: a DELETE the
        kubelet confirmed, a force delete) or ended (Succeeded; Failed: evicted under node
        pressure), as the cache has them; none before the first list."""
        with self._lock:
            if not self._synced["pods"].is_set():
                return frozenset()
            return frozenset(n for n in names if (namespace, n) not in self._present
                             or (namespace, n) in self._ended)

    def pods_on(self, node: str) -> int:
        """Non-terminated pods bound to the node."""
        with self._lock:
            return self._pods.count.get(node, 0)

    def decide(self, template: PodTemplate, *, reserved: Mapping[str, tuple[str, Resources]],
               waiting_ahead: int = 0,
               target_utilisation: float = DEFAULT_TARGET_UTILISATION,
               expected_use: Resources | None = None,
               exclude_nodes: frozenset[str] = frozenset(), candidates: int = 1
               ) -> tuple[Decision, Resources | None]:
        """``placement.decide(template, nodes, ...)`` where nodes is what
        ``workers.engine.scheduling.observe`` makes of ``snapshot()`` and the reservations (build key
        -> (node, size)): the same decision, from the index, looking at a few nodes. With it,
        the room its reservation is checked against (placement.reservation_room). A placement carries up to ``candidates`` - 1 other
        nodes (``placement.alternates``)."""
        with self._lock:
            self._check_synced()
            changed = self._in_flight(reserved)
            decision = self._index.decide(template, changed=changed, waiting_ahead=waiting_ahead,
                                          target_utilisation=target_utilisation,
                                          expected_use=expected_use,
                                          exclude_nodes=exclude_nodes)
            if not isinstance(decision, Placement):
                return decision, None
            decision = self._index.alternates(template, decision, candidates - 1,
                                              changed=changed, exclude_nodes=exclude_nodes)
            node = changed.get(decision.node) or self._views.get(decision.node) \
                or self._view(decision.node)
            return decision, reservation_room(node, decision, target_utilisation)

    def capacity_state(self, waiting: Sequence[WaitingBuild], *,
                       reserved: Mapping[str, tuple[str, Resources]],
                       reference: Resources | None = None,
                       target_utilisation: float = DEFAULT_TARGET_UTILISATION,
                       per_node: Resources = ZERO,
                       fresh_limits: Limits | None = None) -> CapacityState:
        """``capacity.capacity_state(waiting, nodes, reference)`` for the same nodes as
        ``decide``, from the index."""
        with self._lock:
            self._check_synced()
            return capacity_state_on_index(waiting, self._index, reference,
                                           changed=self._in_flight(reserved),
                                           target_utilisation=target_utilisation,
                                           per_node=per_node, fresh_limits=fresh_limits)

    def daemon_requests(self, templates: Sequence[PodTemplate] = ()) -> Resources:
        """What the DaemonSets' and static pods request on a node joining for builds of
        `templates` (fresh_node)."""
        return self.fresh_node(templates)[1]

    def fresh_node(self, templates: Sequence[PodTemplate] = (),
                   reference: Resources | None = None
                   ) -> tuple[Resources | None, Resources, Limits | None]:
        """What a node joining for builds of `templates` brings: its shape (`reference`, else
        the reference shape: capacity.reference_shape), what the DaemonSets' and static pods
        request on it, and what it has for builds beside cpu and memory (its allocatable:
        `pods` less the DaemonSets' and static pods, ephemeral-storage, extended resources;
        capacity._onto_fresh). The last two are the commonest pair (ties to the larger
        requests, then the fewer slots; none before a node has one) over the nodes of that
        shape among those one of `templates` (the waiting builds') may use; when none has
        the shape (one from config: a bigger instance type has more max-pods), the
        commonest requests over every such node and no limits (None: not known); over every
        Ready node when none may. Over every Ready node, a shared cluster's app nodes, more than the tainted CI
        pool and running DaemonSets that tolerate no taint, gave a CI node added their
        DaemonSets; taken apart from the shape, a mixed pool's commonest DaemonSet sum could
        be another shape's (a DaemonSet on one instance family only)."""
        unique = list({template_key(t): t for t in templates}.values())
        with self._lock:
            names = {name for t in unique for name, _ in self._index.in_name_order(t)} or [
                name for name, node in self._nodes.items() if node.ready]
            if reference is None and names:
                reference = self._index.reference_shape(unique)
            shaped = [n for n in names if self._nodes[n].allocatable == reference]
            pairs = Counter((self._pods.daemons.get(name, ZERO),
                             self._for_builds(name) if shaped else None)
                            for name in shaped or names)
        if not pairs:
            return reference, ZERO, None
        daemons, limits = max(pairs, key=lambda p: (
            pairs[p], p[0].cpu_millis, p[0].memory_bytes,
            -(p[1].pods if p[1] is not None and p[1].pods is not None else 1 << 30)))
        return reference, daemons, limits

    def _for_builds(self, name: str) -> Limits:  # under the lock
        """The node's limits beside cpu and memory less what its DaemonSets' and static pods
        (those a node joining runs too) take of them: pod slots, ephemeral-storage (a log
        shipper's buffer) and extended resources (kube-scheduler's NodeResourcesFit counts
        their requests as any pod's). With the ephemeral-storage of every node joining
        counted whole, nodes_needed planned two 40Gi builds onto a fresh node of 80Gi whose
        DaemonSets asked 2Gi: it takes one."""
        limits = self._nodes[name].limits
        held = self._pods.daemon_held.get(name)
        if held is not None:
            taken = dict(held.extended)
            limits = replace(
                limits, ephemeral_bytes=None if limits.ephemeral_bytes is None
                else max(0, limits.ephemeral_bytes - held.ephemeral_bytes),
                extended=tuple((k, max(0, v - taken.get(k, 0))) for k, v in limits.extended),
                bound_ports=held.host_ports)  # node-local-dns' 53, an agent's 8125 ...
        if limits.pods is None:
            return limits
        return replace(limits, pods=max(0, limits.pods - self._pods.daemon_pods.get(name, 0)))

    def node_rows(self, *, reserved: Mapping[str, tuple[str, Resources]],
                  target_utilisation: float = DEFAULT_TARGET_UTILISATION) -> list[NodeRow]:
        """A row per node (placement.NodeRow) of the same nodes as ``decide``."""
        with self._lock:
            self._check_synced()
            self._index.retarget(target_utilisation)
            return self._index.rows(self._in_flight(reserved))

    def node_states(self, *, reserved: Mapping[str, tuple[str, Resources]]
                    ) -> list[NodeState]:
        """Every node as ``decide`` counts it: a reserved build's pod once, on its
        reservation's node (``_in_flight``; scheduling.observe, without this view of which
        pods exist, counts what a reservation holds beside cpu and memory beside its pod)."""
        with self._lock:
            self._check_synced()
            changed = self._in_flight(reserved)
            if self._order is None:
                self._order = sorted(self._nodes)
            return [changed.get(name) or self._views.get(name) or self._view(name)
                    for name in self._order]

    def _check_synced(self) -> None:  # under the lock
        if not (self._synced["nodes"].is_set() and self._synced["pods"].is_set()):
            raise RetryableError("cluster snapshot: nodes and pods are not listed yet")

    def _in_flight(self, reserved: Mapping[str, tuple[str, Resources]]
                   ) -> dict[str, NodeState]:  # under the lock
        """The nodes as observe() changes them: the pods of reserved builds left out of
        requested on the node of their reservation (one bound to another of its candidates
        counts where it is), the reservations counted in flight. Only those nodes.

        Summed as plain integers, and a node whose view and sums are those of an earlier call
        gets that call's NodeState back (`_flying`): in a burst every reservation is one
        node's, so from one decision to the next one node changes, and adding Resources and
        remaking every reserved node's state three times a build (decide, capacity_state,
        node_rows) was the most of a worker's CPU in placement (bench/provision.py). A view
        is a new object on any change of its node (`_views`), so its identity is its content."""
        sums: dict[str, list[int]] = {}  # node -> in flight cpu, memory, count; pods' the same
        # node -> what reservations hold beside cpu and memory (a GPU: Holding), and what the
        # pods of those reservations hold on it (bound, or not yet on their first candidate:
        # kube_objects.pod_record), left out so that each counts once
        flying_held: dict[str, Held] = {}
        pods_held: dict[str, Held] = {}
        for node, size in reserved.values():
            if (s := sums.get(node)) is None:
                s = sums[node] = [0, 0, 0, 0, 0, 0]
            s[0] += size.cpu_millis
            s[1] += size.memory_bytes
            s[2] += 1
            if isinstance(size, Holding):
                flying_held[node] = flying_held.get(node, NOTHING_HELD) + size.held
        by_build_key, pods = self._pods.by_build_key, self._pods.pods
        for build_key, (where, size) in reserved.items():
            for key in by_build_key.get(build_key, ()):
                node, request, _, held = pods[key]
                if node != where:
                    continue
                if (s := sums.get(node)) is None:
                    s = sums[node] = [0, 0, 0, 0, 0, 0]
                s[3] += request.cpu_millis
                s[4] += request.memory_bytes
                s[5] += 1
                if isinstance(size, Holding):  # an older release's reservation holds none
                    pods_held[node] = pods_held.get(node, NOTHING_HELD) + Held(
                        0, held.ephemeral_bytes, held.extended)
        changed = {}
        for name, s in sums.items():
            if name not in self._nodes:
                continue
            view = self._views.get(name) or self._view(name)
            fh, ph = flying_held.get(name, NOTHING_HELD), pods_held.get(name, NOTHING_HELD)
            key = (*s, fh, ph)
            known = self._flying.get(name)
            if known is not None and known[0] is view and known[1] == key:
                changed[name] = known[2]
                continue
            state = replace(view, requested=view.requested - Resources(s[3], s[4]),
                            in_flight=Resources(s[0], s[1]),
                            held=view.held - Held(pods=s[5]) - ph + fh, in_flight_held=fh,
                            in_flight_pods=s[2])
            self._flying[name] = (view, key, state)
            changed[name] = state
        return changed

    def _view(self, name: str) -> NodeState:  # under the lock
        view = self._views[name] = replace(self._nodes[name], usage=self._usage.get(name),
                                           requested=self._pods.requested.get(name, ZERO),
                                           held=self._pods.held.get(name, NOTHING_HELD))
        return view

    def _load(self, name: str) -> tuple[str, Resources, Resources | None, Resources]:
        return name, self._pods.requested.get(name, ZERO), self._usage.get(name), ZERO

    # -- what our agents use ---------------------------------------------------------------

    def watch_agent_usage(self, namespace: str) -> None:
        """Poll our agents' PodMetrics in this namespace from the next metrics interval on
        (when the watch was built without it)."""
        if self.agent_namespace is None:
            self.agent_namespace = namespace

    def expected_use(self, template: str) -> Resources | None:
        """What agents of this template were seen to use (workers.core.usage.expected_use of
        the recent samples of its running agents); None until there are enough."""
        with self._lock:
            samples = list(self._samples.get(template, ()))
        return expected_use(samples)

    # -- the cache, changed by lists and events --------------------------------------------

    def _replace_nodes(self, items: Iterable[Obj]) -> None:
        nodes = {s.name: s for s in (parsed("node", node_state, o) for o in items) if s}
        with self._lock:
            self._nodes, self._order, self._views = nodes, None, {}
            self._index.replace_all(self._view(name) for name in nodes)

    def _apply_node(self, kind: str, obj: Obj) -> None:
        name = object_key(obj)[1]
        state = None if kind == "DELETED" else parsed("node", node_state, obj)
        with self._lock:
            if state is None and kind != "DELETED":
                return  # unreadable: keep what was known
            old = self._nodes.get(name)
            if state is not None and old is not None and state == old \
                    and state.labels == old.labels:
                return  # a status heartbeat: nothing a decision reads has changed
            if (state is None) == (name in self._nodes):
                self._order = None  # a node came or went
            self._views.pop(name, None)
            if state is None:
                self._nodes.pop(name, None)
                self._index.remove(name)
            else:
                self._nodes[name] = state
                self._index.put(self._view(name))

    def _replace_pods(self, items: Iterable[Obj]) -> None:
        index, deleting, present, ended, agents_ended = PodIndex(), set(), set(), set(), set()
        for obj in items:
            index.put(object_key(obj), parsed("pod", self._pod_record, obj),
                      on_every_node(obj))
            present.add(object_key(obj))
            if _being_deleted(obj):
                deleting.add(object_key(obj))
            if _ended(obj):
                ended.add(object_key(obj))
            if agent_ended(obj):
                agents_ended.add(object_key(obj))
            if self._pod_listeners:
                self._notify(LISTED, obj)
        with self._lock:
            self._pods, self._views, self._deleting = index, {}, deleting
            self._present, self._ended, self._agent_ended = present, ended, agents_ended
            self._index.set_loads(self._load(name) for name in self._nodes)
            self._index.set_held((name, index.held.get(name, NOTHING_HELD))
                                 for name in self._nodes)

    def _apply_pod(self, kind: str, obj: Obj) -> None:
        record = None if kind == "DELETED" else parsed("pod", self._pod_record, obj)
        with self._lock:
            key, alive = object_key(obj), kind != "DELETED"
            for known, holds in ((self._deleting, alive and _being_deleted(obj)),
                                 (self._ended, alive and _ended(obj)), (self._present, alive),
                                 (self._agent_ended, alive and agent_ended(obj))):
                (known.add if holds else known.discard)(key)
            nodes = self._pods.put(object_key(obj), record, on_every_node(obj))
            for node in nodes:
                self._views.pop(node, None)
            if nodes:
                self._index.set_loads(self._load(node) for node in nodes)
                self._index.set_held((node, self._pods.held.get(node, NOTHING_HELD))
                                     for node in nodes)
        if self._pod_listeners:
            self._notify(kind, obj)

    # -- list, then watch; again -----------------------------------------------------------

    def _list_watch(self, what: str, fn: Callable[..., Any],
                    replace_all: Callable[[Iterable[Obj]], None],
                    apply: Callable[[str, Obj], None]) -> None:
        failures, version, listed = 0, None, False
        while not self._stop.is_set():
            if failures and self._stop.wait(min(_MAX_BACKOFF, 0.1 * 2 ** (failures - 1))):
                return
            try:
                if not listed:
                    version, listed = self._list(what, fn, replace_all), True
                    self._synced[what].set()
                started = time.monotonic()
                version, listed = self._watch(what, fn, apply, version)
                failures = 0 if time.monotonic() - started >= 1.0 else failures + 1
            except RetryableError as err:  # a broken stream: watch again from where it was
                if self._stop.is_set():
                    return
                failures += 1
                log.warning("%s; will watch again", err)
            except Exception as err:  # a watch thread never dies: log, back off, relist
                if self._stop.is_set():
                    return
                failures, listed = failures + 1, False
                log.warning("%s; will relist", err if isinstance(err, CIAutoscalerError)
                            else f"{what}: list/watch failed: {type(err).__name__}")

    def _list(self, what: str, fn: Callable[..., Any],
              replace_all: Callable[[Iterable[Obj]], None]) -> str | None:
        meta: Obj = {}

        def items() -> Iterator[Obj]:  # page by page, never all raw objects at once
            nonlocal meta
            token = None
            while True:
                response = api_call(f"{what}: list", fn, limit=_PAGE, _continue=token,
                                    _preload_content=False, _request_timeout=_REQUEST_TIMEOUT)
                try:
                    body = json.loads(response.data)
                finally:
                    response.release_conn()
                yield from body.get("items") or []
                meta = body.get("metadata") or {}
                if not (token := meta.get("continue")):
                    return

        replace_all(items())
        return meta.get("resourceVersion") or None

    def _watch(self, what: str, fn: Callable[..., Any], apply: Callable[[str, Obj], None],
               version: str | None) -> tuple[str | None, bool]:
        """Watch from `version` until the stream ends; returns the last resourceVersion seen
        (of an event or a BOOKMARK) and whether the cache still follows it (False after 410
        Gone: list again)."""
        try:  # timeoutSeconds for the server; _request_timeout in case it ignores that
            stream = api_call(f"{what}: watch", fn, watch=True, allow_watch_bookmarks=True,
                              resource_version=version, let_through=410,
                              timeout_seconds=max(1, int(self._watch_timeout)),
                              _preload_content=False,
                              _request_timeout=self._watch_timeout
                              + min(_WATCH_GRACE, self._watch_timeout))
        except ApiException:  # 410: that list is too old already
            log.info("%s: watch answered 410 Gone, relisting", what)
            return version, False
        with self._lock:
            self._streams.add(stream)
        deadline = time.monotonic() + self._watch_timeout
        try:
            if self._stop.is_set():  # stop() came before this stream could be shut down
                return version, True
            for line in _lines(stream):
                if self._stop.is_set():
                    return version, True
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR" and obj.get("code") == 410:
                    log.info("%s: watch expired (410 Gone), relisting", what)
                    return version, False
                if kind == "ERROR":
                    raise status_error(f"{what}: watch", obj.get("code") or 0, obj.get("reason"))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    apply(kind, obj)
                # a BOOKMARK carries only this: where to resume (Kubernetes docs, "Efficient
                # detection of changes", Watch bookmarks)
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if time.monotonic() >= deadline:  # the server did not end it: end it here
                    return version, True
        except urllib3.exceptions.ReadTimeoutError:
            return version, True  # quiet until the client-side timeout: the watch ended
        except urllib3.exceptions.HTTPError as err:
            if not self._stop.is_set():  # else: stop() shut the stream down
                raise RetryableError(f"{what}: watch broke: {type(err).__name__}") from err
        finally:
            with self._lock:
                self._streams.discard(stream)
            stream.close()
            stream.release_conn()
        return version, True  # the server ended it (timeoutSeconds): watch on from there

    # -- metrics.k8s.io, polled ------------------------------------------------------------

    def _run_metrics(self) -> None:
        # The first poll after the first list of pods: memory beyond requests needs them.
        while not self._synced["pods"].wait(0.1):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            try:
                self._poll_metrics()
            except Exception as err:  # never dies; our own errors are handled in the poll
                log.warning("metrics.k8s.io: poll failed: %s", type(err).__name__)
            self._synced["metrics"].set()
            self._stop.wait(self._interval)

    def _poll_metrics(self) -> None:
        usage: dict[str, Resources] | None = {}
        try:
            body = api_call("metrics.k8s.io nodes: list",
                            self._custom.list_cluster_custom_object, "metrics.k8s.io", "v1beta1",
                            "nodes", _request_timeout=_REQUEST_TIMEOUT)
            usage = dict(filter(None, (parsed("node metrics", node_usage, item)
                                       for item in body.get("items") or [])))
        except CIAutoscalerError as err:  # 404 not served, 503 metrics-server down, ...
            usage, reason = None, str(err)
        pods = self._poll_pod_usage() if usage is not None else None
        # Only this thread writes _usage: it may read it unlocked. The new sample goes in by
        # batches of nodes, each under the lock, so that a decision waits for one batch at
        # most, not for the whole cluster to be sorted again (each moment is still a state
        # that snapshot() and the index agree on: samples of nodes arrive apart anyway).
        new = usage or {}
        names = list(self._usage.keys() | new.keys())
        for start in range(0, len(names), _POLL_BATCH):
            with self._lock:
                moved = []
                for name in names[start:start + _POLL_BATCH]:
                    value = self._in_use(name, new.get(name), pods)
                    if self._usage.get(name) == value:
                        continue
                    if value is not None:
                        self._usage[name] = value
                    else:
                        self._usage.pop(name, None)
                    self._views.pop(name, None)
                    moved.append(name)
                if moved:
                    self._index.set_loads([self._load(name) for name in moved])
        with self._lock:
            self.metrics_available = usage is not None
            if usage is not None:
                self.usage_sampled_at = self._clock()
        if usage is None and not self._metrics_warned:
            self._metrics_warned = True
            log.warning("metrics.k8s.io unavailable, placing by requests only: %s", reason)
        elif usage is not None and self._metrics_warned:
            self._metrics_warned = False
            log.info("metrics.k8s.io available again")

    def _in_use(self, name: str, sample: Resources | None,
                pods: dict[tuple[str, str], int] | None) -> Resources | None:  # under the lock
        """A node's usage as decisions count it: its CPU, and the memory its pods use beyond
        their requests (core.usage.memory_over_requests); without pod metrics, from the node's
        working set less capacity - allocatable and the requests (node_memory_fallback). The
        node's own working set also counts system daemons and page cache (issue 18)."""
        if sample is None:
            return None
        if pods is None:
            node = self._nodes.get(name)
            alloc = node.allocatable.memory_bytes if node is not None else 0
            reserved = node.reserved.memory_bytes if node is not None else 0
            requested = self._pods.requested.get(name, ZERO).memory_bytes
            return Resources(sample.cpu_millis, node_memory_fallback(
                sample.memory_bytes, alloc + reserved, alloc, requested))
        records = self._pods.pods
        return Resources(sample.cpu_millis, memory_over_requests(
            (records[key][1].memory_bytes, pods.get(key))
            for key in self._pods.by_node.get(name, ())))

    def _poll_pod_usage(self) -> dict[tuple[str, str], int] | None:
        """Every pod's PodMetrics, in one list: the working set of each pod (for the memory
        nodes' pods hold), and our agents' samples (a sample per agent of the agent namespace
        each time metrics-server has a new one, its stamp changed; the latest USAGE_HISTORY
        kept per template). None when pod metrics cannot be read."""
        try:
            body = api_call("metrics.k8s.io pods: list",
                            self._custom.list_cluster_custom_object, "metrics.k8s.io",
                            "v1beta1", "pods", _request_timeout=_REQUEST_TIMEOUT)
        except CIAutoscalerError as err:  # e.g. 403: the role may not read pod metrics
            if not self._agents_warned:
                self._agents_warned = True
                log.warning("agents' usage unavailable, placing by their requests; node memory "
                            "from node metrics: %s", err)
            return None
        if self._agents_warned:
            self._agents_warned = False
            log.info("agents' usage available again")
        items = body.get("items") or []
        memory = {object_key(item): m for item in items
                  if (m := parsed("pod metrics", pod_memory, item)) is not None}
        namespace = self.agent_namespace
        samples = [] if namespace is None else [
            s for s in (parsed("pod metrics", self._agent_usage, item) for item in items
                        if object_key(item)[0] == namespace) if s]
        self._record_agent_samples(samples)
        return memory

    def _record_agent_samples(self, samples: list) -> None:
        fresh = []
        with self._lock:
            sampled = {}
            for pod, template, stamp, cores, memory, idle in samples:
                sampled[pod] = stamp
                if self._sampled.get(pod) != stamp:
                    if not idle:  # an idle warm agent's JVM waits: no build's use
                        self._samples.setdefault(template, deque(maxlen=USAGE_HISTORY)
                                                 ).append((cores, memory))
                    fresh.append((pod[1], stamp, round(cores * 1000), memory))
            self._sampled = sampled
        for listener in self._usage_listeners:
            try:
                listener(fresh)
            except Exception as err:  # never kill the metrics poll
                log.warning("usage listener failed: %s", type(err).__name__)


UsageListener = Callable[[list[tuple[str, str, int, int]]], None]


def _being_deleted(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _ended(obj: Obj) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _lines(stream: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in stream.stream(amt=None, decode_content=True):
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line for line in lines if line.strip())
