"""A watched cache of the cluster, so that a placement decision never lists the whole cluster.

``ClusterWatch`` lists nodes and the pods of every namespace (anyone's pod takes room), then keeps
the cache current with watches in daemon threads. A watch that ends for any reason (410 Gone as a
status or an ERROR event, a timeout, a broken stream) is followed by a fresh list, with a backoff
when it keeps failing. Node usage is polled from metrics.k8s.io (no watch there); without it,
usage is None and decisions fall back to requests. Per-node sums follow each pod event and a
node's NodeState is rebuilt only when it changed, so ``snapshot()`` only walks cached values.
Raw JSON is read and only the fields used are kept (see ``kube_objects``): no client models for
100,000 pods, and no pod bodies (their env may hold secrets) in the cache or the logs. Errors
become the project's own (see ``kube_errors``).
"""

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import urllib3.exceptions
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from workers.adapters.kube_errors import api_call, status_error
from workers.adapters.kube_objects import (
    Obj, PodIndex, node_state, node_usage, object_key, parsed, pod_record)
from workers.core.cluster import ZERO, NodeState, Resources
from workers.core.errors import CIAutoscalerError, RetryableError

log = logging.getLogger("ci_autoscaler.snapshot")
_REQUEST_TIMEOUT, _WATCH_GRACE, _PAGE, _MAX_BACKOFF = 30.0, 5.0, 500, 30.0


class ClusterWatch:
    """Nodes, pod requests and node usage, kept current; see the module docstring.

    ``metrics_available``: the last metrics.k8s.io poll succeeded; ``usage_sampled_at``:
    ``clock()`` at the last successful one (None before any)."""

    def __init__(self, *, api_client: ApiClient, metrics_interval_seconds: float = 15.0,
                 watch_timeout_seconds: float = 300, clock: Callable[[], float] = time.monotonic):
        self._core, self._custom = CoreV1Api(api_client), CustomObjectsApi(api_client)
        self._interval, self._watch_timeout, self._clock = (
            metrics_interval_seconds, watch_timeout_seconds, clock)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._synced = {name: threading.Event() for name in ("nodes", "pods", "metrics")}
        self._nodes: dict[str, NodeState] = {}  # as read: requested ZERO, usage None
        self._order: list[str] | None = None  # sorted node names; None: to be sorted again
        self._pods = PodIndex()
        self._usage: dict[str, Resources] = {}
        self._views: dict[str, NodeState] = {}  # finished NodeStates, dropped on any change
        self._streams: set[Any] = set()
        self._threads: list[threading.Thread] = []
        self.metrics_available, self.usage_sampled_at = False, None
        self._metrics_warned = False

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

    def wait_synced(self, timeout: float) -> bool:
        """Whether nodes and pods were listed and metrics tried, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in self._synced.values())

    def __enter__(self) -> "ClusterWatch":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self, *, exclude_build_keys: frozenset[str] = frozenset()) -> list[NodeState]:
        """One NodeState per node, by name, from the cache only; pods labelled with an excluded
        build key are left out of ``requested``. RetryableError before the first full list."""
        with self._lock:
            if not (self._synced["nodes"].is_set() and self._synced["pods"].is_set()):
                raise RetryableError("cluster snapshot: nodes and pods are not listed yet")
            if self._order is None:
                self._order = sorted(self._nodes)
            states = [self._views.get(name) or self._view(name) for name in self._order]
            minus: dict[str, Resources] = {}
            for build_key in exclude_build_keys:
                for key in self._pods.by_build_key.get(build_key, ()):
                    node, request, _ = self._pods.pods[key]
                    minus[node] = minus.get(node, ZERO) + request
        return [replace(s, requested=s.requested - minus[s.name]) if s.name in minus else s
                for s in states] if minus else states

    def pods_on(self, node: str) -> int:
        """Non-terminated pods bound to the node."""
        with self._lock:
            return self._pods.count.get(node, 0)

    def _view(self, name: str) -> NodeState:  # under the lock
        view = self._views[name] = replace(self._nodes[name], usage=self._usage.get(name),
                                           requested=self._pods.requested.get(name, ZERO))
        return view

    # -- the cache, changed by lists and events --------------------------------------------

    def _replace_nodes(self, items: Iterable[Obj]) -> None:
        nodes = {s.name: s for s in (parsed("node", node_state, o) for o in items) if s}
        with self._lock:
            self._nodes, self._order, self._views = nodes, None, {}

    def _apply_node(self, kind: str, obj: Obj) -> None:
        name = object_key(obj)[1]
        state = None if kind == "DELETED" else parsed("node", node_state, obj)
        with self._lock:
            if state is None and kind != "DELETED":
                return  # unreadable: keep what was known
            if (state is None) == (name in self._nodes):
                self._order = None  # a node came or went
            if state is None:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = state
            self._views.pop(name, None)

    def _replace_pods(self, items: Iterable[Obj]) -> None:
        index = PodIndex()
        for obj in items:
            index.put(object_key(obj), parsed("pod", pod_record, obj))
        with self._lock:
            self._pods, self._views = index, {}

    def _apply_pod(self, kind: str, obj: Obj) -> None:
        record = None if kind == "DELETED" else parsed("pod", pod_record, obj)
        with self._lock:
            for node in self._pods.put(object_key(obj), record):
                self._views.pop(node, None)

    # -- list, then watch; again -----------------------------------------------------------

    def _list_watch(self, what: str, fn: Callable[..., Any],
                    replace_all: Callable[[Iterable[Obj]], None],
                    apply: Callable[[str, Obj], None]) -> None:
        failures = 0
        while not self._stop.is_set():
            if failures and self._stop.wait(min(_MAX_BACKOFF, 0.1 * 2 ** (failures - 1))):
                return
            try:
                version = self._list(what, fn, replace_all)
                self._synced[what].set()
                started = time.monotonic()
                self._watch(what, fn, apply, version)
                failures = 0 if time.monotonic() - started >= 1.0 else failures + 1
            except Exception as err:  # a watch thread never dies: log, back off, relist
                if self._stop.is_set():
                    return
                failures += 1
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
               version: str | None) -> None:
        try:  # timeoutSeconds for the server; _request_timeout in case it ignores that
            stream = api_call(f"{what}: watch", fn, watch=True, allow_watch_bookmarks=True,
                              resource_version=version, let_through=410,
                              timeout_seconds=max(1, int(self._watch_timeout)),
                              _preload_content=False,
                              _request_timeout=self._watch_timeout
                              + min(_WATCH_GRACE, self._watch_timeout))
        except ApiException:  # 410: that list is too old already
            log.info("%s: watch answered 410 Gone, relisting", what)
            return
        with self._lock:
            self._streams.add(stream)
        deadline = time.monotonic() + self._watch_timeout
        try:
            if self._stop.is_set():  # stop() came before this stream could be shut down
                return
            for line in _lines(stream):
                if self._stop.is_set():
                    return
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR" and obj.get("code") == 410:
                    log.info("%s: watch expired (410 Gone), relisting", what)
                    return
                if kind == "ERROR":
                    raise status_error(f"{what}: watch", obj.get("code") or 0, obj.get("reason"))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    apply(kind, obj)
                if time.monotonic() >= deadline:  # the server did not end it: end it here
                    return
        except urllib3.exceptions.ReadTimeoutError:
            return  # quiet until the client-side timeout: the watch ended
        except urllib3.exceptions.HTTPError as err:
            if not self._stop.is_set():  # else: stop() shut the stream down
                raise RetryableError(f"{what}: watch broke: {type(err).__name__}") from err
        finally:
            with self._lock:
                self._streams.discard(stream)
            stream.close()
            stream.release_conn()

    # -- metrics.k8s.io, polled ------------------------------------------------------------

    def _run_metrics(self) -> None:
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
        with self._lock:
            old, self._usage = self._usage, usage or {}
            for name in old.keys() | self._usage.keys():
                if old.get(name) != self._usage.get(name):
                    self._views.pop(name, None)
            self.metrics_available = usage is not None
            if usage is not None:
                self.usage_sampled_at = self._clock()
        if usage is None and not self._metrics_warned:
            self._metrics_warned = True
            log.warning("metrics.k8s.io unavailable, placing by requests only: %s", reason)
        elif usage is not None and self._metrics_warned:
            self._metrics_warned = False
            log.info("metrics.k8s.io available again")


def _lines(stream: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in stream.stream(amt=None, decode_content=True):
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line for line in lines if line.strip())
