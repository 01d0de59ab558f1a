"""A Kubernetes API server for tests: kmock's emulator served over real HTTP on 127.0.0.1.

The official client is synchronous, so the emulator and its aiohttp server run on their own
event loop in a background thread. Every read or change of server state is a function run on
that loop (``asyncio.run_coroutine_threadsafe``), never a direct touch from the test thread.

The emulator is not a real API server (see /work/shared/TESTING.md): it ignores label selectors,
fills in no resourceVersion or status (nor a uid unless a test asks: ``assign_uids``; ownership
and the garbage collector are played by tests.support.kmock_owners), and keeps changes made by a
request even when a reaction added with ``fail()`` answers that request with an error.
Namespaces are served (seed them with ``add_namespace``), but a pod may be created in one that
does not exist. A namespace's ``pod-security.kubernetes.io/enforce`` label is enforced on pod
creates as the PodSecurity admission does (tests.support.pod_security_admission).

SelfSubjectAccessReviews are answered as the API server's RBAC authorizer does: the review
back with ``status.allowed`` (and, when allowed, a ``status.reason`` naming the binding), 201
Created. Everything is allowed unless a test denies it (``deny``). Every client is cluster-admin
but the chart's ServiceAccount (``as_chart_service_account``): its requests get the chart's RBAC
alone, else the API server's 403 Forbidden (tests.support.kube_rbac).

kmock removes a deleted pod at once, as if every kubelet confirmed on the spot. For a node
whose kubelet confirms nothing (``hold_deletions``, ``node_unreachable``), a graceful DELETE
of a pod bound there leaves it Terminating, as the API server does, until a force delete
(``KubeServer._before``); ``age_deletion`` lets time pass for it.
"""

from __future__ import annotations

import asyncio
import datetime
import contextlib
import copy
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.test_utils
import aiohttp.web
import kmock
from kmock._internal import rendering as kmock_rendering
import kubernetes
import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest

from tests.support.kmock_owners import Emulator
from tests.support import (kmock_matching, kube_rbac, limit_ranger, pod_security_admission,
                           resource_quota, runtime_class_admission)
from workers.core.rbac import RIGHTS

# Resource objects, not strings: ``key in emu.objects`` compares keys without parsing them,
# so ``("v1/pods", ns, name) in emu.objects`` is always False.
PODS = kmock.resource("v1/pods")
NODES = kmock.resource("v1/nodes")
NODE_METRICS = kmock.resource("metrics.k8s.io/v1beta1/nodes")
POD_METRICS = kmock.resource("metrics.k8s.io/v1beta1/pods")
NAMESPACES = kmock.resource("v1/namespaces")
CLAIMS = kmock.resource("v1/persistentvolumeclaims")
VOLUMES = kmock.resource("v1/persistentvolumes")
SECRETS = kmock.resource("v1/secrets")
LIMIT_RANGES = kmock.resource("v1/limitranges")
RESOURCE_QUOTAS = kmock.resource("v1/resourcequotas")
RUNTIME_CLASSES = kmock.resource("node.k8s.io/v1/runtimeclasses")
ACCESS_REVIEWS = kmock.resource("authorization.k8s.io/v1/selfsubjectaccessreviews")
ACCESS_REVIEWS_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
VALIDATE_VERSION = "1.30.0"
_CALL_TIMEOUT = 10.0
# Requests trim_history keeps: more than are ever in flight at once.
HISTORY_KEPT = 96
# The bearer token of the chart's worker/reconcile ServiceAccount of the installation whose agent
# namespace it names (`as_chart_service_account`): its requests are checked against the chart's
# RBAC there; every other client is cluster-admin.
SERVICE_ACCOUNT_TOKEN = "kmock-chart-service-account-token-{namespace}"


# containerd's error for an image that does not exist, as the kubelet writes it as an
# ErrImagePull's message (the CRI error's text: core/remotes/docker/resolver.go Resolve's
# ErrNotFound, wrapped by the CRI plugin's PullImage "failed to pull and unpack image").
NOT_FOUND = ('rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
             'failed to resolve reference "{image}": {image}: not found')
# a registry's rate limit (Docker Hub's answer; containerd core/remotes/docker/fetcher.go)
RATE_LIMITED = ('rpc error: code = Unknown desc = failed to pull and unpack image "{image}": '
                'failed to copy: httpReadSeeker: failed open: unexpected status code '
                'https://registry-1.docker.io/v2/library/maven/manifests/3.9: 429 Too Many '
                'Requests - Server message: toomanyrequests: You have reached your pull rate '
                'limit. You may increase the limit by authenticating and upgrading: '
                'https://www.docker.com/increase-rate-limit')


class _Recent(list):
    """kmock's request history, bounded: an append drops the oldest beyond `keep`."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def append(self, item: Any) -> None:
        super().append(item)
        if len(self) > self.keep:
            del self[:len(self) - self.keep]


class _InFlight(list):
    """kmock's request history holding only the requests being answered: the server drops each
    one when its answer is sent (`done`, called by _QuickStopServer). kmock matches a request to
    its reactions by walking the history once per reaction (16 of them), so its CPU per request
    grows with the history's length; a request already answered is never matched again, and
    a reaction that only filters (all of kmock's own, and ours but `fail` and `stall`) answers
    the same whatever the history holds. Sliced reactions count matching requests in the
    history (`fail` and `stall` with `times`, `expire_next_watch`): they refuse in this mode."""

    def done(self, raw_request: Any) -> None:
        for i in range(len(self) - 1, -1, -1):
            if self[i]._raw_request is raw_request:
                del self[i]
                return
_SHUTDOWN_TIMEOUT = 0.5
# The emulator's id -> its KubeServer's `_before` (a request answered before kmock sees it).
_BEFORE: dict[int, Callable[[aiohttp.web.BaseRequest], Any]] = {}
_POD_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)")
_POD_METRICS_PATH = re.compile(r"/apis/metrics\.k8s\.io/v1beta1(/namespaces/[^/]+)?/pods(/[^/]+)?")
_PODS_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/pods")

T = TypeVar("T")

# A request matched to kmock's reactions without walking its whole history (kmock_matching).
kmock_matching.install()


@functools.lru_cache(maxsize=None)
def _strict_validator(api_version: str, kind: str, version: str):
    """The jsonschema validator kubernetes_validate.validate(strict=True) builds for this kind,
    built once: the library reads and parses the schema's _definitions.json and builds its
    registry on every call (about 40 ms; 26 access reviews per live check cost a second, more
    under load). The same schema files, the same steps (kubernetes_validate.utils.validate)."""
    from kubernetes_validate import utils
    from referencing import Registry, Resource
    wanted = utils.major_minor(version)
    schema_version = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"kubernetes-json-schema/v{schema_version}-local-strict"
    schema = utils.schema_contents(f"{schema_dir}/{kind.lower()}-{api}.json", version)
    definitions = utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = (Resource.from_contents(definitions)
                @ (Resource.from_contents(schema) @ Registry())).crawl()
    return (jsonschema.validators.Draft202012Validator(schema, registry=registry),
            utils.major_minor(schema_version))


def validate_strict(obj: dict[str, Any], version: str = VALIDATE_VERSION) -> None:
    """kubernetes_validate.validate(obj, version, strict=True), its validator built once per
    kind; whatever the cached path cannot take (no schema, a version beyond the library's) goes
    to the library itself for its own error."""
    try:
        if not isinstance(obj, dict) or \
                kubernetes_validate.utils.major_minor(version) > \
                kubernetes_validate.utils.latest_version():
            raise LookupError
        validator, schema_version = _strict_validator(obj["apiVersion"], obj["kind"], version)
    except Exception:  # the library raises its own error for it
        kubernetes_validate.validate(obj, version, strict=True)
        return
    try:
        validator.validate(obj)
    except jsonschema.ValidationError as err:
        raise kubernetes_validate.ValidationError(err, version=schema_version) from None


def validate_manifest(obj: dict[str, Any], version: str = VALIDATE_VERSION) -> None:
    """Validate an object the code would send against the Kubernetes schema (strict: unknown
    fields are refused); raises AssertionError naming the object, the field path and the reason."""
    try:
        validate_strict(obj, version)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path) or "(top level)"
        raise AssertionError(f"{_describe(obj)} is not a valid Kubernetes {version} object: "
                             f"{where}: {err.message}") from None
    except (kubernetes_validate.SchemaNotFoundError,
            kubernetes_validate.InvalidSchemaError) as err:
        raise AssertionError(f"{_describe(obj)} cannot be validated: {err.message}") from None


def _describe(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


class _QuickStopServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's test server, but it stops within a second even while a watch still streams
    (by default aiohttp waits 60 s for open handlers, and a kmock watch never ends)."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        emulator = self._handler

        async def handler(request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
            try:
                before = _BEFORE.get(id(emulator))  # KubeServer._before: the kubelets' part
                answer = await before(request) if before is not None else None
                return answer if answer is not None else await emulator(request)
            finally:  # answered (a watch: ended): out of an in-flight history (_InFlight)
                if isinstance(history := getattr(emulator, "_requests", None), _InFlight):
                    history.done(request)

        server = aiohttp.web.Server(handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web.ServerRunner(server, debug=debug, shutdown_timeout=_SHUTDOWN_TIMEOUT,
                                        **kwargs)


class KubeServer:
    """What the ``kube`` fixture yields: a running emulator, its URL and kubeconfig, and helpers
    that play the parts of the cluster the code under test does not (nodes, kubelet, metrics)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emulator: kmock.KubernetesEmulator,
                 url: str, kubeconfig_path: Path):
        self._loop = loop
        self._emu = emulator
        self.url = url
        self.kubeconfig_path = kubeconfig_path
        self._clients: list[kubernetes.client.ApiClient] = []
        self._admin: kubernetes.client.ApiClient | None = None  # for the helpers' own API calls
        # (verb, group, resource, subresource, namespace or None for any) a review refuses
        self._denied: set[tuple[str, str, str, str, str | None]] = set()
        self.reviews: list[dict[str, Any]] = []  # the resourceAttributes of every review asked
        self._held: set[str] = set()  # nodes whose kubelet confirms no deletion (hold_deletions)
        # quota_counts_deletions_late: seconds a deleted pod still counts against a quota, and
        # (namespace, name) -> (the pod, when its DELETE came)
        self._quota_lag = 0.0
        self._deleted_late: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        # PodMetrics of pods not Running, held back from metrics.k8s.io until they run
        # (_pod_metrics_labels): stored key -> the PodMetrics as last given
        self._metrics_held: dict[Any, dict[str, Any]] = {}
        # as_chart_service_account: each installation's ServiceAccount token -> the agent
        # namespace its Role is in, and every request of one RBAC refused, "METHOD /path: ..."
        self._service_accounts: dict[str, str] = {}
        self.forbidden: list[str] = []
        # what RBAC grants those ServiceAccounts: the chart's (workers.core.rbac.RIGHTS), or
        # fewer (a test playing a ClusterRole from an older chart: revoke)
        self.rights: tuple[Any, ...] = RIGHTS

    # -- clients ---------------------------------------------------------------------------

    def api_client(self, *, service_account: str | None = None) -> kubernetes.client.ApiClient:
        """A fresh ApiClient for this server (closed by the fixture at teardown): an admin's,
        or with `service_account` (the agent namespace) the chart's ServiceAccount's, granted
        the chart's RBAC alone (as_chart_service_account)."""
        configuration = kubernetes.client.Configuration()
        path = self.kubeconfig_path if service_account is None \
            else self.as_chart_service_account(service_account)
        kubernetes.config.load_kube_config(config_file=str(path),
                                           client_configuration=configuration,
                                           persist_config=False)
        client = kubernetes.client.ApiClient(configuration)
        self._clients.append(client)
        return client

    def as_chart_service_account(self, agent_namespace: str) -> Path:
        """A kubeconfig for the chart's worker/reconcile ServiceAccount: from now on each of its
        requests is granted only what the chart's RBAC grants (workers.core.rbac.RIGHTS, the
        Role's rights in `agent_namespace` alone), else answered 403 Forbidden as the API server
        does (tests.support.kube_rbac) and kept in `forbidden`. Other clients stay admins."""
        path = self.kubeconfig_path.with_name(f"kubeconfig-service-account-{agent_namespace}")
        token = SERVICE_ACCOUNT_TOKEN.format(namespace=agent_namespace)
        _write_kubeconfig(path, self.url, token=token)

        def enable() -> None:  # one per installation (its agent namespace), as the chart makes
            self._service_accounts[f"Bearer {token}"] = agent_namespace
        self._run(enable)
        return path

    def revoke(self, group: str, resource: str) -> None:
        """RBAC grants the chart's ServiceAccounts nothing more on this resource: a
        ClusterRole from an older chart (an image upgraded before its chart), or rights
        granted by hand without it."""
        self.rights = tuple(r for r in self.rights
                            if (r.group, r.resource) != (group, resource))

    def _authorize(self, request: aiohttp.web.BaseRequest) -> dict[str, Any] | None:
        """The 403 Status body for a request of the chart's ServiceAccount RBAC refuses; None:
        granted, or not the service account's (the API server authorizes before admission
        and before any handler: apiserver pkg/server/config.go DefaultBuildHandlerChain)."""
        namespace = self._service_accounts.get(request.headers.get("Authorization", ""))
        if namespace is None:
            return None
        info = kube_rbac.request_info(request.method, request.path, request.query)
        if kube_rbac.allowed(info, self.rights, namespace):
            return None
        status = kube_rbac.forbidden(info)
        self.forbidden.append(f"{request.method} {request.path_qs}: {status['message']}")
        return status

    # -- nodes and metrics -----------------------------------------------------------------

    def add_node(self, name: str, **shape: Any) -> None:
        """Store a node directly, with no watch event (a node from before the code under test
        starts). ``shape``: see ``node_object``."""
        self._put(NODES, None, name, node_object(name, **shape))

    def set_node_usage(self, name: str, *, cpu: str, memory: str) -> None:
        """Store the metrics-server's NodeMetrics for a node (what `kubectl top node` reads)."""
        metrics = {
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "NodeMetrics",
            "metadata": {"name": name},
            "timestamp": "2024-01-01T00:00:00Z",
            "window": "20s",
            "usage": {"cpu": cpu, "memory": memory},
        }
        self._put(NODE_METRICS, None, name, metrics)

    def set_pod_usage(self, namespace: str, name: str, *, cpu: str | list[str],
                      memory: str | list[str], labels: dict[str, str] | None = None,
                      timestamp: str = "2024-01-01T00:00:00Z") -> None:
        """Store the metrics-server's PodMetrics for a pod (what `kubectl top pod` reads): one
        container per entry when cpu and memory are lists. metrics-server copies the pod's
        labels into the PodMetrics metadata; give them here. A new ``timestamp`` is a new
        sample (metrics-server refreshes each pod once per resolution)."""
        cpus = cpu if isinstance(cpu, list) else [cpu]
        memories = memory if isinstance(memory, list) else [memory]
        metrics = {
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "PodMetrics",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "timestamp": timestamp,
            "window": "15s",
            "containers": [{"name": f"c{i}", "usage": {"cpu": c, "memory": m}}
                           for i, (c, m) in enumerate(zip(cpus, memories, strict=True))],
        }
        self._put(POD_METRICS, namespace, name, metrics)

    # -- pods ------------------------------------------------------------------------------

    def pods(self, namespace: str, *, only: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every live pod stored in the namespace, as stored (copies). With `only` (dotted
        paths: "metadata", "spec.affinity"), each pod holds those parts alone: a test that
        samples the pods every few milliseconds then copies a fraction of each, on the loop
        that also answers the code under test."""
        def part(raw: dict[str, Any]) -> dict[str, Any]:
            if not only:
                return copy.deepcopy(raw)
            kept: dict[str, Any] = {}
            for path in only:
                *parents, last = path.split(".")
                source, target = raw, kept
                for key in parents:
                    source = source.get(key) or {}
                    target = target.setdefault(key, {})
                if last in source:
                    target[last] = copy.deepcopy(source[last])
            return kept

        def read() -> list[dict[str, Any]]:
            return [part(obj.raw) for (res, ns, _), obj in self._emu.objects.items()
                    if res == PODS and ns == namespace and not obj.deleted]
        return self._run(read)

    def secrets(self, namespace: str) -> dict[str, dict[str, Any]]:
        """Every live Secret stored in the namespace, by name, as stored (copies)."""
        def read() -> dict[str, dict[str, Any]]:
            return {name: copy.deepcopy(obj.raw)
                    for (res, ns, name), obj in self._emu.objects.items()
                    if res == SECRETS and ns == namespace and not obj.deleted}
        return self._run(read)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            key = (PODS, namespace, name)
            if key not in self._emu.objects or self._emu.objects[key].deleted:
                return None
            return copy.deepcopy(self._emu.objects[key].raw)
        return self._run(read)

    def set_pod_phase(self, namespace: str, name: str, phase: str,
                      node: str | None = None) -> None:
        """Play the kubelet: set status.phase (and spec.nodeName when given) of a stored pod."""
        def change() -> None:
            patch: dict[str, Any] = {"status": {"phase": phase}}
            if node is not None:
                patch["spec"] = {"nodeName": node}
            self._emu.objects[PODS, namespace, name].patch(patch)
        self._run(change)

    def set_pod_unschedulable(self, namespace: str, name: str, *, since: float,
                              message: str = "0/3 nodes are available: 3 Insufficient cpu."
                              ) -> None:
        """Play kube-scheduler failing to fit the pod: it leaves the pod Pending with the
        condition PodScheduled False, reason Unschedulable and its FitError as the message,
        "0/N nodes are available: <count> <reason>, ..." (pkg/scheduler/schedule_one.go,
        handleSchedulingFailure -> updatePod; framework/types.go, FitError.Error)."""
        when = datetime.datetime.fromtimestamp(since, datetime.timezone.utc)
        def change() -> None:
            self._emu.objects[PODS, namespace, name].patch({"status": {
                "phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "message": message}]}})
        self._run(change)

    def bind_pod(self, namespace: str, name: str, node: str, *, at: float | None = None
                 ) -> None:
        """Play kube-scheduler's binding (POST pods/NAME/binding), through the API so that
        every watcher gets MODIFIED events: the API server sets the PodScheduled condition
        True, its lastTransitionTime to the second, and spec.nodeName, in one update
        (pkg/registry/core/pod/storage/storage.go, BindingREST.setPodNodeAndMetadata). kmock
        has no binding subresource: the condition goes first, then the node, so the first event
        a watcher sees already carries the time."""
        when = datetime.datetime.fromtimestamp(time.time() if at is None else at,
                                               datetime.timezone.utc)
        self._core().patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "True",
                "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ")}]}},
            _request_timeout=_CALL_TIMEOUT)
        self._core().patch_namespaced_pod(name, namespace, {"spec": {"nodeName": node}},
                                          _request_timeout=_CALL_TIMEOUT)

    # -- the kubelet's container states, written through the API (watchers get MODIFIED) ---

    def kubelet_status(self, namespace: str, name: str, *, phase: str,
                       states: dict[str, dict[str, Any]] | None = None,
                       init_states: dict[str, dict[str, Any]] | None = None,
                       reason: str | None = None, message: str | None = None,
                       node: str | None = None,
                       conditions: list[dict[str, Any]] | None = None,
                       started: float | None = None, unseen: bool = False) -> None:
        """Play the kubelet: write the pod's status as a kubelet does (PATCH pods/NAME/status,
        so every watcher gets a MODIFIED event): the phase, a containerStatuses entry for every
        container of the spec and an initContainerStatuses entry for every init container,
        each with the state given by name (``waiting()``, ``running()``, ``terminated()``) or
        the one that fits the phase: Pending -> waiting ContainerCreating, Running -> running,
        Failed/Succeeded -> terminated; init containers default to terminated Completed 0.
        With ``node``, the pod is bound to it first (the scheduler's part); ``conditions``
        replace the pod's status conditions (e.g. DisruptionTarget). status.startTime is set
        at the first write and kept after, as the kubelet's status manager does
        (pkg/kubelet/status/status_manager.go updateStatusInternal); `started` sets it
        (Unix time). A status entry
        carries every field the API requires (image, imageID, ready, restartCount): the
        official client refuses an answer without them. `unseen`: the status is stored with
        no watch event, as a write no watcher got (one made while a watch was away: a relist
        shows a pod's state as it is, and one deleted meanwhile only in its DELETED event, or
        in none)."""
        stored = self.pod(namespace, name)
        assert stored is not None, f"no pod {namespace}/{name}"
        if node is not None:
            self._core().patch_namespaced_pod(name, namespace, {"spec": {"nodeName": node}},
                                              _request_timeout=_CALL_TIMEOUT)
        default = {"Pending": waiting("ContainerCreating"), "Running": running()}.get(
            phase, terminated("Completed" if phase == "Succeeded" else "Error",
                              0 if phase == "Succeeded" else 1))
        spec = stored.get("spec") or {}

        def entries(containers: list[dict[str, Any]], given: dict[str, dict[str, Any]],
                    fallback: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"name": c["name"], "image": c.get("image", ""), "imageID": "",
                     "ready": "running" in given.get(c["name"], fallback),
                     "restartCount": 0, "started": "running" in given.get(c["name"], fallback),
                     "state": given.get(c["name"], fallback)} for c in containers]

        status: dict[str, Any] = {
            "phase": phase,
            "containerStatuses": entries(spec.get("containers") or [], states or {}, default)}
        if spec.get("initContainers"):
            status["initContainerStatuses"] = entries(spec["initContainers"], init_states or {},
                                                      terminated("Completed", 0))
        status["reason"], status["message"] = reason, message  # None removes them
        status["startTime"] = _time(started) if started is not None else \
            (stored.get("status") or {}).get("startTime") or _now()
        if conditions is not None:
            status["conditions"] = conditions
        if unseen:
            self._run(lambda: self._emu.objects[PODS, namespace, name].patch(
                {"status": status}))
            return
        self._core().patch_namespaced_pod_status(name, namespace, {"status": status},
                                                 _request_timeout=_CALL_TIMEOUT)

    def image_pull_backoff(self, namespace: str, name: str, container: str | None = None, *,
                           error: str | None = NOT_FOUND, reason: str = "ImagePullBackOff",
                           started: float | None = None) -> None:
        """The kubelet cannot pull a container's image (the first container by default): the
        pod stays Pending, that container waits with the message the kubelet's image manager
        writes (pkg/kubelet/images/image_manager.go pullImage): with reason ErrImagePull right
        after a try, the runtime's error; with ImagePullBackOff between tries, 'Back-off
        pulling image "<image>": ErrImagePull: <error>' (Kubernetes 1.32 and later:
        prevPullErrMsg), or, `error` None, 'Back-off pulling image "<image>"' alone (as
        before 1.32). `error`: a template with {image} (default: the image does not exist;
        RATE_LIMITED: a registry's 429). `started`: the pod's status.startTime (Unix time)."""
        stored = self.pod(namespace, name) or {}
        container = container or stored["spec"]["containers"][0]["name"]
        image = next(c.get("image", "") for c in stored["spec"]["containers"]
                     if c["name"] == container)
        told = error.format(image=image) if error is not None else None
        message = told if reason == "ErrImagePull" else f'Back-off pulling image "{image}"' + (
            f": ErrImagePull: {told}" if told else "")
        self.kubelet_status(namespace, name, phase="Pending", started=started,
                            states={container: waiting(reason, message)})

    def evict(self, namespace: str, name: str) -> None:
        """The kubelet evicts the pod under node pressure: phase Failed, reason Evicted, its
        containers terminated (pkg/kubelet/eviction: "The node was low on resource: ..."),
        and from Kubernetes 1.26 a DisruptionTarget condition, reason TerminationByKubelet
        (eviction_manager.go evictPod)."""
        message = "The node was low on resource: memory. Threshold quantity: 100Mi, " \
            "available: 92Mi."
        self.kubelet_status(namespace, name, phase="Failed", reason="Evicted", message=message,
                            states={c["name"]: terminated("Error", 137) for c in
                                    (self.pod(namespace, name) or {})["spec"]["containers"]},
                            conditions=[{"type": "DisruptionTarget", "status": "True",
                                         "reason": "TerminationByKubelet",
                                         "message": message}])

    def kubelet_rejects(self, namespace: str, name: str, *, node: str,
                        reason: str = "OutOfcpu",
                        message: str = "Node didn't have enough resource: cpu, requested: "
                                       "1100, used: 7500, capacity: 8000") -> None:
        """The pod bound to `node` (the scheduler's part), then refused by that node's kubelet
        at admission: its own fit check found the node short (its view of the node's pods
        ahead of the scheduler's: a pod it still runs, a device plugin that lost its GPU).
        pkg/kubelet/lifecycle/predicate.go Admit: reason "OutOf<resource>" for a resource
        short (OutOfcpu, OutOfmemory, OutOfpods, OutOfnvidia.com/gpu), the predicate's name
        for another (NodeAffinity), UnexpectedAdmissionError when a device allocation
        failed; kubelet.go rejectPod writes phase Failed with that reason and the message
        "Pod was rejected: " + the predicate's, and no container was ever created (no
        containerStatuses)."""
        self._core().patch_namespaced_pod(name, namespace, {"spec": {"nodeName": node}},
                                          _request_timeout=_CALL_TIMEOUT)
        status = {"phase": "Failed", "reason": reason,
                  "message": f"Pod was rejected: {message}", "startTime": _now()}
        self._core().patch_namespaced_pod_status(name, namespace, {"status": status},
                                                 _request_timeout=_CALL_TIMEOUT)

    def add_foreign_pod(self, namespace: str, name: str, *,
                        labels: dict[str, str] | None = None) -> None:
        """A pod someone else made (no managed-by label of ours unless given in labels)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": dict(labels if labels is not None else {"app": "other"})},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }
        self._put(PODS, namespace, name, pod)

    def add_bound_claim(self, namespace: str, name: str, *, zone: str) -> None:
        """A claim bound to a zonal disk, as a CSI provisioner makes it: the PersistentVolume
        carries required node affinity on topology.kubernetes.io/zone (e.g. the EBS CSI
        driver's topology key is its own, the GCE PD driver's the well-known label; both
        are nodeSelectorTerms on the PV), and the claim names it in spec.volumeName."""
        volume = f"pvc-{name}"
        self._put(VOLUMES, None, volume, {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                     "csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": volume},
                     "claimRef": {"namespace": namespace, "name": name},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "topology.kubernetes.io/zone", "operator": "In",
                          "values": [zone]}]}]}}},
            "status": {"phase": "Bound"}})
        self._put(CLAIMS, namespace, name, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": volume,
                     "resources": {"requests": {"storage": "10Gi"}}},
            "status": {"phase": "Bound"}})

    def add_pod(self, namespace: str, name: str, **shape: Any) -> None:
        """Store a pod directly, with no watch event (state from before the code under test
        starts). ``shape``: see ``pod_object``."""
        self._put(PODS, namespace, name, pod_object(namespace, name, **shape))

    # -- ownership: uids and the garbage collector (tests.support.kmock_owners) ------------

    def assign_uids(self) -> None:
        """From now on every object created gets a metadata.uid, as from the API server (kmock
        fills in none: code that owns an object by a pod's uid does nothing without it)."""
        self._run(lambda: setattr(self._emu, "assign_uids", True))

    def collect_garbage(self) -> list[tuple[str, str]]:
        """Play the garbage collector now: every object whose owners are all gone is deleted;
        (namespace, name) of each."""
        async def collect() -> list[tuple[str, str]]:
            return [(ns, name) for _, ns, name in await self._emu.collect_garbage()]
        return asyncio.run_coroutine_threadsafe(collect(), self._loop).result(_CALL_TIMEOUT)

    def collect_garbage_before(self, action: str, resource: kmock.resource) -> None:
        """From now on the garbage collector runs just before each request of this action
        ("create", "fetch", "update", "delete") on this resource (e.g. PODS), and not before: a
        collector that is late, and comes at that moment. Before a pod's create, a provision is
        between making or updating the pod's Secret and owning it by the new pod."""
        def add() -> None:
            self._emu.collect_before = self._emu.collect_before | {
                (kmock.action(action), resource)}
        self._run(add)

    def before_next(self, action: str, resource: kmock.resource, fn: Callable[[], Any]) -> None:
        """Run fn() once, just before the next request of this action ("create", "fetch",
        "update", "delete") on this resource is handled: another actor's move at that moment
        (fn runs on the server's loop: keep it short, no call back into this server)."""
        def add() -> None:
            self._emu.run_before = (*self._emu.run_before, (kmock.action(action), resource, fn))
        self._run(add)

    # -- changes through the API: watchers see an event, as from any other actor -----------
    # These requests show in ``requests()`` like any other.

    def create_pod(self, namespace: str, name: str, **shape: Any) -> None:
        """Create a pod through the API (watchers get ADDED). ``shape``: see ``pod_object``."""
        self._core().create_namespaced_pod(namespace, pod_object(namespace, name, **shape),
                                           _request_timeout=_CALL_TIMEOUT)

    def create_node(self, name: str, **shape: Any) -> None:
        """A node joins the cluster, through the API (watchers get ADDED), as when an operator
        or a cluster autoscaler adds one. ``shape``: see ``node_object``."""
        self._core().create_node(node_object(name, **shape), _request_timeout=_CALL_TIMEOUT)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod through the API (watchers get DELETED)."""
        self._core().delete_namespaced_pod(name, namespace, _request_timeout=_CALL_TIMEOUT)

    def disrupt_through_api(self, namespace: str, name: str,
                            reason: str = "EvictionByEvictionAPI") -> None:
        """A control-plane part takes the pod away: it adds the DisruptionTarget condition
        with its reason, then deletes the pod (Kubernetes 1.26 and later; docs "Pod
        disruption conditions"): the Eviction API (`kubectl drain`; pkg/registry/core/pod/
        storage/eviction.go, once the PodDisruptionBudgets allow it: else 429 and nothing
        changes), kube-scheduler's preemption (PreemptionByScheduler, pkg/scheduler/framework/
        preemption), the taint manager (DeletionByTaintManager: a NoExecute taint)."""
        self._core().patch_namespaced_pod_status(name, namespace, {"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": reason,
            "message": {"EvictionByEvictionAPI": "Eviction API: evicting",
                        "PreemptionByScheduler": "default-scheduler: preempting to "
                                                 "accommodate a higher priority pod",
                        "DeletionByTaintManager": "Taint manager: deleting due to NoExecute "
                                                  "taint"}.get(reason, reason)}]}},
            _request_timeout=_CALL_TIMEOUT)
        self.delete_pod(namespace, name)

    def pod_gc_orphan(self, namespace: str, name: str) -> None:
        """The pod GC finds the pod bound to a node that no longer exists: it applies phase
        Failed with a DisruptionTarget condition (reason DeletionByPodGC, message "PodGC: node
        no longer exists"; no status.reason or status.message), then force-deletes the pod
        (grace period 0: no kubelet is left to confirm). kubernetes pkg/controller/podgc/
        gc_controller.go gcOrphaned and markFailedAndDeletePodWithCondition (1.26 and later)."""
        self._core().patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Failed", "conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists"}]}}, _request_timeout=_CALL_TIMEOUT)
        self._core().delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                           _request_timeout=_CALL_TIMEOUT)

    def kubelet_confirms_deletion(self, namespace: str, name: str) -> None:
        """The kubelet of a Terminating pod's node has stopped its containers (the grace
        period ended): it deletes the pod with gracePeriodSeconds=0, which removes it from the
        API (kubelet status_manager: once the pod can be deleted, a DELETE with
        GracePeriodSeconds 0, preconditioned on its uid)."""
        self._core().delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                           _request_timeout=_CALL_TIMEOUT)

    def hold_deletions(self, node: str) -> None:
        """The kubelet of `node` confirms no deletion from now on (stopped, partitioned, or
        still stopping the containers): a graceful DELETE of a pod bound there only marks it
        Terminating, as the API server does, and only a DELETE with gracePeriodSeconds=0 (a
        force delete) removes it (see `_before`). kmock alone removes every pod at once, as
        if each kubelet confirmed on the spot."""
        self._run(lambda: self._held.add(node))

    def node_unreachable(self, name: str) -> None:
        """The node stops posting its status: the node lifecycle controller sets its Ready
        condition Unknown ("Kubelet stopped posting node status.", reason NodeStatusUnknown)
        and taints it node.kubernetes.io/unreachable, NoSchedule and NoExecute (kubernetes
        pkg/controller/nodelifecycle). Its kubelet confirms no deletion (hold_deletions)."""
        self.hold_deletions(name)
        self.patch_node(name, {
            "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": effect}
                                for effect in ("NoSchedule", "NoExecute")]},
            "status": {"conditions": [{
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status."}]}})

    def delete_held_by_finalizer(self, namespace: str, name: str,
                                 finalizer: str = "example.com/cleanup") -> None:
        """A DELETE of a pod that carries a finalizer another controller holds: the API server
        sets deletionTimestamp (now, for one not bound: grace 0) and keeps the pod until its
        finalizers are removed (apiserver pkg/registry/generic/registry/store.go, Delete ->
        updateForGracefulDeletionAndFinalizers; pods: pkg/registry/core/pod/strategy.go,
        CheckGracefulDelete); MODIFIED is sent. kube-scheduler binds no such pod
        (pkg/scheduler/schedule_one.go, skipPodSchedule: a pod being deleted). kmock has no
        finalizers: the fields are patched in, through the API for watchers' events."""
        self._core().patch_namespaced_pod(name, namespace, {"metadata": {
            "finalizers": [finalizer], "deletionTimestamp": _time(time.time()),
            "deletionGracePeriodSeconds": 0}}, _request_timeout=_CALL_TIMEOUT)

    def drop_pod_label(self, namespace: str, name: str, label: str) -> None:
        """A stored pod without this label, as a release before it made the pod (or as a
        patch that never reached the server left it); no watch event: it was so all along."""
        def change() -> None:
            raw = copy.deepcopy(self._emu.objects[PODS, namespace, name].raw)
            raw["metadata"].get("labels", {}).pop(label, None)
            self._emu.objects[PODS, namespace, name] = raw
        self._run(change)

    def age_deletion(self, namespace: str, name: str, seconds: float) -> None:
        """Time passes for a Terminating pod without the test waiting: its deletionTimestamp
        moves `seconds` earlier, as if the DELETE had come that much sooner (no watch event:
        a real server sends none as time passes)."""
        def change() -> None:
            obj = self._emu.objects[PODS, namespace, name]
            due = _parse_time(obj.raw["metadata"]["deletionTimestamp"])
            obj.patch({"metadata": {"deletionTimestamp": _time(due - seconds)}})
        self._run(change)

    async def _before(self, request: aiohttp.web.BaseRequest
                      ) -> aiohttp.web.StreamResponse | None:
        """A request of the chart's ServiceAccount its RBAC refuses (as_chart_service_account),
        a pod create admission refuses (_admit_pod), or a DELETE of a pod bound to a node whose
        kubelet confirms nothing (hold_deletions), answered as the API server does (kmock would
        grant, admit or remove it); None: kmock answers.

        The API server (apiserver pkg/registry/rest/delete.go BeforeDelete, pod strategy
        CheckGracefulDelete in pkg/registry/core/pod/strategy.go): the grace period is the
        request's gracePeriodSeconds (query or body), else the pod's
        terminationGracePeriodSeconds (30 when defaulted); a pod not bound to a node or in
        phase Succeeded or Failed is removed at once, and so is one deleted with grace 0. A
        graceful delete sets deletionTimestamp to now plus the grace period and
        deletionGracePeriodSeconds, answers 200 with the pod and sends a MODIFIED event; a
        pod being deleted keeps its deletionTimestamp, unless the new grace period ends
        sooner (it is moved earlier). Only the kubelet's own DELETE (grace 0, once the
        containers stopped) or a force delete removes it then."""
        if (refused := self._authorize(request)) is not None:
            # In the request history as a request kmock answered is (see _admit_pod)
            history = self._emu._requests
            history.append(await kmock_rendering.Request._parse(request, id=len(history)))
            return aiohttp.web.json_response(refused, status=403)
        if request.method == "POST" and (create := _PODS_PATH.fullmatch(request.path)):
            return await self._admit_pod(request, create[1])
        if request.method == "GET" and _POD_METRICS_PATH.fullmatch(request.path):
            self._pod_metrics_labels()  # then kmock answers (and any failure injected)
        match = _POD_PATH.fullmatch(request.path)
        if request.method == "DELETE" and match is not None and self._quota_lag:
            key = (PODS, match[1], match[2])
            if key in self._emu.objects and not self._emu.objects[key].deleted:
                self._deleted_late[match[1], match[2]] = (
                    copy.deepcopy(self._emu.objects[key].raw), time.time())
        if request.method != "DELETE" or match is None or not self._held:
            return None
        key = (PODS, match[1], match[2])
        if key not in self._emu.objects or self._emu.objects[key].deleted:
            return None
        pod = self._emu.objects[key].raw
        if (pod.get("spec") or {}).get("nodeName") not in self._held \
                or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        body = await request.read()
        options = json.loads(body) if body else {}
        grace = request.query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        if grace is None:
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        grace = int(grace)
        if grace == 0:
            return None  # removed at once: kmock's own delete, with its DELETED event
        meta = pod.get("metadata") or {}
        due = time.time() + grace
        if meta.get("deletionTimestamp"):
            old_grace = int(meta.get("deletionGracePeriodSeconds") or 0)
            if grace >= old_grace:
                return aiohttp.web.json_response(copy.deepcopy(pod))
            due = _parse_time(meta["deletionTimestamp"]) - old_grace + grace
        self._emu.objects[key].patch({"metadata": {"deletionTimestamp": _time(due),
                                                   "deletionGracePeriodSeconds": grace}})
        raw = copy.deepcopy(self._emu.objects[key].raw)
        await self._emu._buses[PODS].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    def _pod_metrics_labels(self) -> None:
        """metrics-server's PodMetrics carry its pod's labels as they are when asked, not as
        they were at the scrape: each request lists the pods from its informer and copies
        their labels (metrics-server pkg/api/pod.go, getPodMetrics: `Labels: pod.Labels`), so
        a label patched on a pod (a warm agent claimed, a failed build's pod kept) is on its
        next PodMetrics with the usage of the last scrape. Stored PodMetrics of a pod that
        exists get its labels now; one without a pod keeps the labels the test gave (kinder
        than metrics-server, which lists none for it: tests of the watch alone use that).
        Nor does metrics-server serve PodMetrics for a pod that is not Running (Pending: its
        image pulling; Succeeded or Failed: its containers ended, the kubelet reports none):
        metrics-server pkg/api/pod.go, getPodMetrics, "ignore pod not in Running phase"
        (later releases: the kubelet's /metrics/resource has running containers only). Those
        of a pod not Running are held back, and served again once it runs."""
        objects = self._emu.objects
        for key, raw in list(self._metrics_held.items()):
            pod_key = (PODS, key[1], key[2])
            if pod_key in objects and not objects[pod_key].deleted and (
                    objects[pod_key].raw.get("status") or {}).get("phase") == "Running":
                if objects[key].deleted:  # else given anew since
                    objects[key] = raw
                del self._metrics_held[key]
        for key, obj in list(objects.items()):
            pod_key = (PODS, key[1], key[2])
            if key[0] != POD_METRICS or obj.deleted or pod_key not in objects \
                    or objects[pod_key].deleted:
                continue
            if (objects[pod_key].raw.get("status") or {}).get("phase") != "Running":
                self._metrics_held[key] = copy.deepcopy(obj.raw)
                obj.delete()
                continue
            labels = (objects[pod_key].raw.get("metadata") or {}).get("labels") or {}
            if (obj.raw.get("metadata") or {}).get("labels") != labels:
                raw = copy.deepcopy(obj.raw)
                raw.setdefault("metadata", {})["labels"] = copy.deepcopy(labels)
                objects[key] = raw

    async def _admit_pod(self, request: aiohttp.web.BaseRequest, namespace: str
                         ) -> aiohttp.web.StreamResponse | None:
        """A pod create in a namespace with LimitRanges, ResourceQuotas or a Pod Security
        enforce label, admitted as the API server does: LimitRanger's defaults set on the pod
        kmock stores, then PodSecurity, then ResourceQuota (the last plugin), or the refusal
        (tests.support.limit_ranger, pod_security_admission and resource_quota have the
        sources). None: kmock answers."""
        def stored(resource: kmock.resource) -> list[dict[str, Any]]:
            return [o.raw for k, o in self._emu.objects.items()
                    if k[0] == resource and k[1] == namespace and not o.deleted]
        ranges, quotas = stored(LIMIT_RANGES), stored(RESOURCE_QUOTAS)
        ns_key = (NAMESPACES, None, namespace)
        ns = self._emu.objects[ns_key].raw if ns_key in self._emu.objects \
            and not self._emu.objects[ns_key].deleted else None
        guarded = (((ns or {}).get("metadata") or {}).get("labels") or {}).get(
            pod_security_admission.ENFORCE, "privileged") != "privileged"
        pod = json.loads(await request.read())
        if not ranges and not quotas and not guarded \
                and not (pod.get("spec") or {}).get("runtimeClassName"):
            return None
        # RuntimeClass (a mutating plugin; LimitRanger's and ResourceQuota's checks of the
        # pod's sum, which count its overhead, run after it)
        classes = {k[2]: o.raw for k, o in self._emu.objects.items()
                   if k[0] == RUNTIME_CLASSES and not o.deleted}
        pod, refusal = runtime_class_admission.admit(pod, classes)
        if refusal is None and ranges:
            pod, refusal = limit_ranger.admit(pod, ranges)
        # PodSecurity validates the pod as the mutating plugins (LimitRanger) left it, before
        # ResourceQuota, the last plugin (kube-apiserver's admission order, options/plugins.go)
        if refusal is None and guarded:
            refusal = pod_security_admission.refusal(pod, ns)
        if refusal is None and quotas:
            pods = stored(PODS)
            live = {(p.get("metadata") or {}).get("name") for p in pods}
            now = time.time()
            pods += [raw for (ns, name), (raw, at) in self._deleted_late.items()
                     if ns == namespace and name not in live and now - at < self._quota_lag]
            refusal = resource_quota.admit(pod, quotas, pods)
        if refusal is not None:
            # In the request history as a request kmock answered is (kmock's own parse and
            # append, KMock.__call__): a refused create was still asked.
            history = self._emu._requests
            history.append(await kmock_rendering.Request._parse(request, id=len(history)))
            status, reason, message = refusal
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": status}, status=status)
        # The body kmock reads next (aiohttp keeps a request's body once read): the pod as the
        # API server stores it, after admission.
        request._read_bytes = json.dumps(pod).encode()
        return None

    def add_limit_range(self, namespace: str, name: str,
                        limits: list[dict[str, Any]]) -> None:
        """A LimitRange in the namespace, stored with the API server's defaults."""
        self._put(LIMIT_RANGES, namespace, name, limit_ranger.defaulted({
            "apiVersion": "v1", "kind": "LimitRange",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"limits": limits}}))

    def add_runtime_class(self, name: str, handler: str, *, overhead: dict[str, str] | None = None,
                          node_selector: dict[str, str] | None = None,
                          tolerations: list[dict[str, Any]] | None = None) -> None:
        """A RuntimeClass (node.k8s.io/v1): pods naming it are admitted with its overhead and
        scheduling (tests.support.runtime_class_admission)."""
        obj: dict[str, Any] = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                               "metadata": {"name": name}, "handler": handler}
        if overhead:
            obj["overhead"] = {"podFixed": dict(overhead)}
        if node_selector or tolerations:
            obj["scheduling"] = {k: v for k, v in (("nodeSelector", node_selector),
                                                   ("tolerations", tolerations)) if v}
        self._put(RUNTIME_CLASSES, None, name, obj)

    def add_resource_quota(self, namespace: str, name: str, hard: dict[str, str], *,
                           counted: bool = True) -> None:
        """A ResourceQuota in the namespace with these hard limits (`requests.cpu`, ...);
        `counted` False: the quota controller has not synced it yet (status.hard set, no
        status.used), so admission refuses pods "status unknown" (tests.support.
        resource_quota) until it is stored again counted."""
        self._put(RESOURCE_QUOTAS, namespace, name, {
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"hard": dict(hard)},
            **({} if counted else {"status": {"hard": dict(hard)}})})

    def quota_counts_deletions_late(self, seconds: float) -> None:
        """From now on a deleted pod still counts against the namespace's quotas for `seconds`:
        admission checks a pod against the quota's status.used (apiserver resourcequota/
        controller.go checkRequest), which only the quota controller lowers, once it has seen
        the pod go (pkg/controller/resourcequota/resource_quota_controller.go, replenishment
        on the pod informer's delete, then syncResourceQuota writes the status): a create
        sent right after a delete meets the old use."""
        def change() -> None:
            self._quota_lag = seconds
        self._run(change)

    def patch_node(self, name: str, patch: dict[str, Any]) -> None:
        """Merge a patch into a node through the API (watchers get MODIFIED); kmock replaces
        lists (e.g. spec.taints) and merges dicts."""
        self._core().patch_node(name, patch, _request_timeout=_CALL_TIMEOUT)

    def remove_node_metrics(self) -> None:
        """Take metrics.k8s.io away, as in a cluster without metrics-server: its list answers 404."""
        def remove() -> None:
            del self._emu.resources[NODE_METRICS]
            for key in [k for k in self._emu.objects if k[0] == NODE_METRICS]:
                del self._emu.objects[key]
        self._run(remove)

    def expire_next_watch(self, resource: kmock.resource, *, as_status: bool = False,
                          gone_meanwhile: Iterable[tuple[str | None, str]] = ()) -> None:
        """The next watch request of ``resource`` (e.g. PODS) answers 410 Gone: by default as an
        ERROR event in a stream that then stays open; with ``as_status``, as an HTTP 410 answer.
        ``gone_meanwhile``: (namespace, name) objects of that resource removed when that watch
        comes, with no event: only a fresh list can tell the client they are gone."""
        gone = list(gone_meanwhile)

        def forget() -> None:
            for namespace, name in gone:
                self._emu.objects[resource, namespace, name].delete()

        status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                  "code": 410, "reason": "Expired", "message": "injected by the test: too old"}

        def add() -> None:
            view = self._emu[kmock.action.WATCH][resource]
            self._counts_history()
            start = len(list(view))
            if as_status:
                view[start:start + 1] << (lambda: forget() or kmock.KubernetesError(
                    status=410, reason="Expired", message=status["message"]))
            else:
                # The stream stays open after the event (``...``: a live tail never fed), so
                # only a client that reads the ERROR itself goes and relists.
                view[start:start + 1] << (forget, {"type": "ERROR", "object": status}, ...)
        self._run(add)

    def bookmark_next_watch(self, resource: kmock.resource, kind: str, version: str) -> None:
        """The next watch request of ``resource`` (e.g. PODS, "Pod") sends a BOOKMARK at `version`,
        then stays open: what the API server sends a watch that asked allowWatchBookmarks
        (Kubernetes docs, "Kubernetes API Concepts", Watch bookmarks: an object of the
        watched kind holding nothing but metadata.resourceVersion; apiserver
        storage/cacher/cacher.go sends them about once a minute and before a watch's
        timeout). kmock never sends one by itself."""
        bookmark = {"type": "BOOKMARK", "object": {
            "kind": kind, "apiVersion": "v1",
            "metadata": {"resourceVersion": version}}}

        def add() -> None:
            view = self._emu[kmock.action.WATCH][resource]
            self._counts_history()
            start = len(list(view))
            view[start:start + 1] << (bookmark, ...)
        self._run(add)

    # -- namespaces and access reviews -----------------------------------------------------

    def add_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """Store a namespace, e.g. with ``pod-security.kubernetes.io/enforce: restricted``."""
        self._put(NAMESPACES, None, name, {
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name,
                                                  **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

    def _namespace(self, request: kmock.Request) -> dict[str, Any]:
        """GET /api/v1/namespaces/NAME (kmock reads that path as a namespace prefix with no
        resource): the stored namespace, or the API server's 404 NotFound."""
        name = request.url.path.rsplit("/", 1)[-1]
        key = (NAMESPACES, None, name)
        if key not in self._emu.objects or self._emu.objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound",
                                        message=f'namespaces "{name}" not found',
                                        details={"name": name, "kind": "namespaces"})
        return copy.deepcopy(self._emu.objects[key].raw)

    def deny(self, verb: str, resource: str, *, group: str = "", namespace: str | None = None
             ) -> None:
        """SelfSubjectAccessReviews for this verb on this resource ("pods", "pods/log") answer
        allowed: false, in `namespace` (None: in every namespace and cluster-wide)."""
        resource, _, subresource = resource.partition("/")
        def add() -> None:
            self._denied.add((verb, group, resource, subresource, namespace))
        self._run(add)

    def _review(self, request: kmock.Request) -> kmock.Response:
        """POST .../selfsubjectaccessreviews, as the API server answers it: the review with its
        status (k8s.io/apiserver authorizer + RBAC: allowed with the binding as reason, or not
        allowed with no reason), 201 Created; a malformed review 422 Invalid."""
        # The API server keeps no review; kmock stores every create (unnamed: the next would
        # conflict), so it is dropped here.
        for key in [k for k in self._emu.objects if k[0] == ACCESS_REVIEWS]:
            del self._emu.objects[key]
        review = request.data if isinstance(request.data, dict) else {}
        try:
            validate_strict(review)
        except kubernetes_validate.ValidationError as err:
            raise kmock.KubernetesError(status=422, reason="Invalid",
                                        message=f"SelfSubjectAccessReview is invalid: {err.message}")
        attrs = (review.get("spec") or {}).get("resourceAttributes") or {}
        self.reviews.append(dict(attrs))
        key = (attrs.get("verb", ""), attrs.get("group", ""), attrs.get("resource", ""),
               attrs.get("subresource", ""))
        denied = any(key == d[:4] and (d[4] is None or d[4] == attrs.get("namespace", ""))
                     for d in self._denied)
        status = {"allowed": False} if denied else {
            "allowed": True, "reason": 'RBAC: allowed by ClusterRoleBinding "kmock-admin" of '
                                       'ClusterRole "cluster-admin" to User "kmock"'}
        body = {**review, "metadata": {"creationTimestamp": None}, "status": status}
        return kmock.Response(status=201, payload=body)

    # -- failures and requests -------------------------------------------------------------

    def fail(self, method: str, path: str, *, status: int = 500,
             reason: str = "InternalError", times: int | None = None,
             message: str | None = None) -> None:
        """Answer requests of this HTTP method to this path (a glob, e.g. ``/api/v1/*``) with a
        Kubernetes Status error, every time or only the next ``times`` ones; its message is
        `message` (as the API server words it) or says the test injected it. Beware: kmock still
        applies a create/patch/delete to its stored objects before it answers with the error."""
        def add() -> None:
            view = self._emu[f"{method.lower()} {path}"]
            if times is not None:
                self._counts_history()
                start = len(list(view))
                view = view[start:start + times]
            view << kmock.KubernetesError(status=status, reason=reason,
                                          message=message or f"injected by the test: {reason}",
                                          details={"injected": True})
        self._run(add)

    def stall(self, method: str, path: str, *, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` requests of this method to this path (a glob) for ``seconds``,
        then answer 504: for client timeouts. Mind that urllib3 retries a timed-out GET 3 times
        on its own, so stall 4 requests to make one call of the client time out."""
        async def hold() -> Any:
            await asyncio.sleep(seconds)
            raise kmock.KubernetesError(status=504, reason="Timeout",
                                        message="stalled by the test")

        def add() -> None:
            view = self._emu[f"{method.lower()} {path}"]
            self._counts_history()
            start = len(list(view))
            view[start:start + times] << hold
        self._run(add)

    def _counts_history(self) -> None:
        if isinstance(self._emu._requests, _InFlight):
            raise RuntimeError("a reaction for the next requests counts kmock's history, which "
                               "keeps only the requests in flight (keep_in_flight_only)")

    def trim_history(self, keep: int = HISTORY_KEPT) -> None:
        """From now on keep only the last `keep` requests. kmock keeps every request it served
        and matches each new one to its reactions by walking that whole history (kmock 0.8,
        ``Chained.__contains__``): thousands of calls (a chaos or load test) then cost CPU
        quadratically, most of a 2-core machine. `requests()` sees the kept ones only; `keep`
        must exceed the requests in flight at once (one being matched must still be there)."""
        def bound() -> None:
            recent = _Recent(keep)
            recent.extend(self._emu._requests[-keep:])
            object.__setattr__(self._emu, "_requests", recent)
        self._run(bound)

    def keep_in_flight_only(self) -> None:
        """From now on kmock's history holds only the requests it is answering (_InFlight): its
        CPU per request no longer grows with the requests it has served (a benchmark's), for
        the same answers. `requests()` then sees those in flight only; `fail` and `stall` with
        `times` and `expire_next_watch` refuse (they count the history)."""
        def bound() -> None:
            object.__setattr__(self._emu, "_requests", _InFlight())
        self._run(bound)

    def requests(self) -> list[str]:
        """Every request the server saw (since `trim_history`: the last ones), oldest first, as ``"METHOD /path"`` or
        ``"METHOD /path?query"`` (the query decoded, e.g. ``labelSelector=a=b``)."""
        def read() -> list[str]:
            return [f"{r.method.value} {r.url.path}"
                    + ("?" + "&".join(f"{k}={v}" for k, v in r.params.items()) if r.params else "")
                    for r in self._emu]
        return self._run(read)

    # -- plumbing --------------------------------------------------------------------------

    def _put(self, resource: kmock.resource, namespace: str | None, name: str,
             obj: dict[str, Any]) -> None:
        def put() -> None:
            self._emu.objects[resource, namespace, name] = copy.deepcopy(obj)
        self._run(put)

    def _core(self) -> kubernetes.client.CoreV1Api:
        if self._admin is None:
            self._admin = self.api_client()
        return kubernetes.client.CoreV1Api(self._admin)

    def _run(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(_CALL_TIMEOUT)

    def _close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._admin = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(at: float) -> str:
    """Unix time as the API server writes it (RFC 3339, seconds)."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    """A container state: waiting (e.g. ContainerCreating, ErrImagePull, ImagePullBackOff,
    InvalidImageName, CreateContainerConfigError). An ErrImagePull without a message given
    gets the one a kubelet writes for an image that does not exist (it always writes one)."""
    if reason == "ErrImagePull" and message is None:
        message = NOT_FOUND.format(image="registry.example.com/ci/agent:missing")
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running(started_at: float | None = None) -> dict[str, Any]:
    """A container state: running since ``started_at`` (Unix time; default now)."""
    when = _now() if started_at is None else datetime.datetime.fromtimestamp(
        started_at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"running": {"startedAt": when}}


def terminated(reason: str, exit_code: int) -> dict[str, Any]:
    """A container state: terminated, e.g. ("OOMKilled", 137), ("Error", 1), ("Completed", 0)."""
    now = _now()
    return {"terminated": {"reason": reason, "exitCode": exit_code, "startedAt": now,
                           "finishedAt": now}}


def node_object(name: str, *, cpu: str = "4", memory: str = "16Gi",
                labels: dict[str, str] | None = None, taints: list[dict[str, Any]] | None = None,
                unschedulable: bool = False, ready: bool = True, pods: str = "110",
                extended: dict[str, str] | None = None) -> dict[str, Any]:
    """A node with this allocatable CPU, memory and pods (the kubelet's --max-pods, 110 by
    default), Ready unless told otherwise; ``extended``: extended resources a device plugin
    advertises, e.g. {"nvidia.com/gpu": "1"} (in capacity and allocatable alike)."""
    more = dict(extended or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                              **(labels or {})}},
        "spec": {"unschedulable": unschedulable, "taints": list(taints or [])},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": pods, **more},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods, **more},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod_object(namespace: str, name: str, *, node: str | None = None,
               requests: Iterable[dict[str, str]] = ({"cpu": "100m", "memory": "128Mi"},),
               init_requests: Iterable[dict[str, str]] = (), overhead: dict[str, str] | None = None,
               phase: str | None = "Running", labels: dict[str, str] | None = None,
               daemon_set: str | None = None, mirror: bool = False,
               ports: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """A pod with one container per entry of ``requests`` (and one init container per entry
    of ``init_requests``), bound to ``node`` when given, in ``phase`` as a kubelet would set;
    ``daemon_set``: the DaemonSet that owns it (its controller ownerReference, as the
    DaemonSet controller sets it); ``mirror``: the mirror of a static pod of ``node``'s
    kubelet (pkg/kubelet/pod/mirror_client.go CreateMirrorPod: the kubernetes.io/config.mirror
    annotation holding the pod's hash, and the Node as its controller owner); ``ports``: the
    first container's ports (a hostPort bound on the node)."""
    def containers(prefix: str, all_requests: Iterable[dict[str, str]]) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}{i}", "image": "busybox",
                 "resources": {"requests": dict(r)}} for i, r in enumerate(all_requests)]

    spec: dict[str, Any] = {"containers": containers("main", requests)}
    if ports:
        spec["containers"][0]["ports"] = [dict(p) for p in ports]
    if init := containers("init", init_requests):
        spec["initContainers"] = init
    if overhead:
        spec["overhead"] = dict(overhead)
    if node is not None:
        spec["nodeName"] = node
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": dict(labels if labels is not None else {"app": "other"})},
        "spec": spec,
    }
    if daemon_set is not None:
        pod["metadata"]["ownerReferences"] = [{
            "apiVersion": "apps/v1", "kind": "DaemonSet", "name": daemon_set,
            "uid": f"uid-{daemon_set}", "controller": True, "blockOwnerDeletion": True}]
    if mirror:
        pod["metadata"]["annotations"] = {"kubernetes.io/config.mirror": f"hash-{name}"}
        pod["metadata"]["ownerReferences"] = [{
            "apiVersion": "v1", "kind": "Node", "name": node, "uid": f"uid-{node}",
            "controller": True}]
    if phase is not None:
        pod["status"] = {"phase": phase}
    return pod


def _write_kubeconfig(path: Path, url: str, token: str = "kmock-test-token") -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": token}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: loads as any kubeconfig


@contextlib.contextmanager
def running_kube(tmp_path: Path) -> Iterator[KubeServer]:
    """Start the emulator on a fresh loop in a thread; stop and join it on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kmock-loop", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[kmock.KubernetesEmulator, str]:
        emu = Emulator()  # kmock's, with the API server's ownership (kmock_owners)
        emu.resources[PODS] = kmock.ResourceInfo(namespaced=True, kind="Pod")
        emu.resources[NODES] = kmock.ResourceInfo(namespaced=False, kind="Node")
        emu.resources[NODE_METRICS] = kmock.ResourceInfo(namespaced=False, kind="NodeMetrics")
        emu.resources[POD_METRICS] = kmock.ResourceInfo(namespaced=True, kind="PodMetrics")
        emu.resources[NAMESPACES] = kmock.ResourceInfo(namespaced=False, kind="Namespace")
        emu.resources[CLAIMS] = kmock.ResourceInfo(namespaced=True,
                                                   kind="PersistentVolumeClaim")
        emu.resources[VOLUMES] = kmock.ResourceInfo(namespaced=False, kind="PersistentVolume")
        emu.resources[SECRETS] = kmock.ResourceInfo(namespaced=True, kind="Secret")
        emu.resources[LIMIT_RANGES] = kmock.ResourceInfo(namespaced=True, kind="LimitRange")
        emu.resources[RESOURCE_QUOTAS] = kmock.ResourceInfo(namespaced=True,
                                                            kind="ResourceQuota")
        emu.resources[RUNTIME_CLASSES] = kmock.ResourceInfo(namespaced=False,
                                                            kind="RuntimeClass")
        await stack.enter_async_context(emu)
        # Listening once entered: no polling or sleeping for readiness.
        server = await stack.enter_async_context(kmock.Server(emu, server_cls=_QuickStopServer))
        return emu, str(server.url).rstrip("/")

    try:
        emu, url = asyncio.run_coroutine_threadsafe(start(), loop).result(_CALL_TIMEOUT)
        kubeconfig_path = tmp_path / "kubeconfig"
        _write_kubeconfig(kubeconfig_path, url)
        kube = KubeServer(loop, emu, url, kubeconfig_path)
        _BEFORE[id(emu)] = kube._before
        kube._run(lambda: emu[f"post {ACCESS_REVIEWS_PATH}"] << kube._review)
        kube._run(lambda: emu["get", re.compile(r"/api/v1/namespaces/[^/]+")] << kube._namespace)
        try:
            yield kube
        finally:
            kube._close_clients()
            _BEFORE.pop(id(emu), None)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(_CALL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT)
        loop.close()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeServer]:
    """A kmock Kubernetes API over real HTTP, ready when yielded, stopped after the test; the
    test fails if the chart's ServiceAccount made a call its RBAC refused (a 403 the code may
    have swallowed: on a cluster, something it meant to do was not done)."""
    with running_kube(tmp_path) as server:
        yield server
        assert not server.forbidden, "calls the chart's RBAC does not grant:\n" + "\n".join(
            server.forbidden)
