"""The real cluster adapter: the ``Cluster`` port of ``workers.core.ports`` over the official
``kubernetes`` client, for agent pods in one namespace.

The code only ever touches its own pods: lists use the managed-by and installation label
selectors and are filtered by those labels (and the installation annotation) again in code (a
selector may be ignored, e.g. by a test server), and a pod is read before it is deleted. A pod
from before installation labels is ours only when `legacy_known` says so (workers.core.
installation_pods, workers.adapters.legacy_pods); a list looks for those (a second request)
until an hour passed without one of ours (core.installation_pods.LegacyLookout). Library
errors become the project's own as ``kube_errors`` says (429, 5xx, timeouts and connection
errors retryable; other 4xx permanent), and so does the client's own validation of a
manifest. Messages name the pod,
the HTTP status and reason only, never the manifest or a response body: the pod's env holds the
agent secret.
"""

import json
import logging
import os
from pathlib import Path
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
import pydantic
from kubernetes.client import ApiClient, CoreV1Api, V1Pod
from kubernetes.client.exceptions import ApiException

from workers.adapters import kube_secrets
from workers.adapters.kube_errors import QuotaFull, api_call
from workers.adapters.kube_limit_ranges import LimitRangeDefaults, list_raw
from workers.adapters.kube_objects import pod_info
from workers.adapters.kube_runtime_classes import RuntimeClasses
from workers.adapters.retry import DEFAULT_BACKOFF, Backoff, retrying
from workers.core.errors import ConfigError, PermanentError, RetryableError
from workers.core.installation_pods import LegacyLookout, Owner, owner, selectors
from workers.core.pods import MANAGED_BY_LABEL, MANAGED_BY_VALUE, is_managed
from workers.core.ports import PodInfo

LABEL_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
# Of the legacy pods (name -> labels) given, the names that are this installation's.
LegacyKnown = Callable[[dict[str, dict[str, str]]], set[str]]
# A bound volume does not move: its node affinity is read again only this often.
CLAIM_TOPOLOGY_TTL_SECONDS = 300.0
log = logging.getLogger("ci_autoscaler.kube")

T = TypeVar("T")


# Connections the ApiClient keeps beyond the callers' threads: the cluster watch's streams
# (nodes, pods, pod metrics) each hold one for as long as they run.
WATCH_CONNECTIONS = 8


def _kubeconfig_exists(path: str) -> None:
    """The client skips a kubeconfig path that does not exist (KUBECONFIG may list several,
    ':'-separated, as kubectl merges them), then says only "Invalid kube-config file. No
    configuration found.": a mistyped path is named here, with where it came from."""
    if any(Path(p).expanduser().exists() for p in path.split(os.pathsep) if p):
        return
    if path == "~/.kube/config":
        raise ConfigError(["Kubernetes client configuration: ~/.kube/config: no such file, "
                           "and KUBECONFIG is not set (in a pod, the in-cluster config is used)"])
    raise ConfigError([f"Kubernetes client configuration: KUBECONFIG {path}: no such file"])


def load_api_client(*, kubeconfig: str | None = None, threads: int = 1) -> ApiClient:
    """A fresh ApiClient: in-cluster service account when running in a pod and no kubeconfig is
    given, else the kubeconfig file (the argument, else $KUBECONFIG, else ~/.kube/config).
    The client library's global default configuration is left alone.

    The client is shared by `threads` threads (a worker's provision concurrency) and the
    watch: its urllib3 pool keeps a connection for each (the library's default is five per
    CPU; a call finding the pool empty opens a connection and closes it after one use)."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            _kubeconfig_exists(path)
            kubernetes.config.load_kube_config(config_file=path, persist_config=False,
                                               client_configuration=configuration)
    except kubernetes.config.ConfigException as err:
        raise ConfigError([f"Kubernetes client configuration: {err}"]) from err
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0,
                                                threads + WATCH_CONNECTIONS)
    # The proxy the environment gives for the API server, pinned: the token's refresh hook
    # (kubeconfig and in-cluster loaders alike) sets `host` again before every request, and
    # while the proxy comes from the environment that setter reads all of os.environ again
    # (urllib's getproxies), 2% of a worker's CPU in a burst (bench/provision.py), more in a
    # pod whose environment lists its namespace's Services. Same value: only the client's
    # pool, made once below, ever uses it (kubernetes.client.rest.RESTClientObject).
    configuration.proxy = configuration.proxy
    return ApiClient(configuration)


class KubeCluster:
    """Agent pods in one namespace (see ``Cluster`` in workers.core.ports)."""

    def __init__(self, *, api_client: ApiClient, namespace: str, request_timeout: float = 10,
                 backoff: Backoff = DEFAULT_BACKOFF, installation: str = "",
                 legacy_known: LegacyKnown | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """`installation`: this installation's identity (settings `installation`);
        `legacy_known`: which pods from before installation labels are its own (None: none)."""
        self._installation = installation
        self._legacy_known = legacy_known
        self._lookout, self._clock = LegacyLookout(installation), clock
        self._selector, self._legacy_selector = selectors(LABEL_SELECTOR, installation)
        self._api = CoreV1Api(api_client)
        self._client = api_client
        self._namespace = namespace
        self._timeout = request_timeout
        self._backoff = backoff
        self._claims: dict[str, tuple[float, list[dict[str, Any]] | None]] = {}
        self._limit_ranges = LimitRangeDefaults(list_raw(self._call, self._api, namespace),
                                                namespace, clock)
        self._runtime_classes = RuntimeClasses(self._call, api_client, clock)

    def container_bounds(self) -> tuple[dict[str, str], dict[str, str]]:
        return self._limit_ranges.extremes()

    def pod_bounds(self) -> tuple[dict[str, str], dict[str, str]]:
        return self._limit_ranges.pod_extremes()

    def default_requests(self) -> dict[str, str]:
        return self._limit_ranges.default_requests()

    def runtime_class(self, name: str) -> dict[str, Any] | None:
        return self._runtime_classes.get(name)

    def create_pod(self, manifest: dict[str, Any],
                   secret: dict[str, Any] | None = None) -> bool:
        name = manifest["metadata"]["name"]
        for obj in (manifest, secret or {}):
            if obj and obj["metadata"].get("namespace", self._namespace) != self._namespace:
                raise PermanentError(f"pod {name}: manifest namespace is not {self._namespace}")
        if secret is not None:  # first: the pod's container reads it when it starts
            kube_secrets.put(self._call, self._api, self._namespace, secret, name, self._mine)
        try:
            # A LimitRange's default limit below a request would have the pod refused (422).
            created, uid = self._limit_ranges.create(lambda sent: self._create(name, sent),
                                                     manifest)
        except (PermanentError, QuotaFull):
            # The name is another's pod, or a full quota refused the pod (admission made none,
            # and a warm agent's next try has a new name): no Secret of ours is left.
            if secret is not None:
                kube_secrets.delete(self._call, self._api, self._namespace, name, self._mine)
            raise
        if secret is not None:
            kube_secrets.own(self._call, self._api, self._namespace, name, uid)
        return created

    def _create(self, name: str, manifest: dict[str, Any]) -> tuple[bool, str | None]:
        try:
            # The answer as JSON, not the client's model: only its uid is read, and making the
            # model of a whole pod took a third of a worker's CPU in a burst (bench/provision.py).
            pod = self._raw(f"{self._pod(name)}: create", self._api.create_namespaced_pod,
                            self._namespace, manifest, let_through=409)
            return True, (pod.get("metadata") or {}).get("uid")
        except ApiException:  # 409: a pod of that name exists already
            pass
        existing = self._read(name)
        if existing is None:
            raise RetryableError(f"{self._pod(name)}: create answered 409 Conflict, "
                                 "then the pod was gone")
        if not self._ours(existing):
            raise PermanentError(f"{self._pod(name)}: a pod of that name exists and is not "
                                 f"managed by this installation of {MANAGED_BY_VALUE}")
        return False, existing.metadata.uid if existing.metadata else None

    def delete_agent_secret(self, name: str) -> bool:
        return kube_secrets.delete(self._call, self._api, self._namespace, name, self._mine)

    def get_pod(self, name: str) -> PodInfo | None:
        pod = self._read(name)
        return self._info(pod) if pod is not None and self._ours(pod) else None

    def delete_pod(self, name: str) -> bool:
        """False when there is no pod of ours by that name: gone, or someone else's pod (which
        is left alone). The agent's Secret goes too (kube_secrets: explicitly, whatever the
        garbage collector does)."""
        self.delete_agent_secret(name)
        pod = self._read(name)
        if pod is None or not self._ours(pod):
            return False
        uid = pod.metadata.uid if pod.metadata else None
        # The uid precondition: never delete a pod that replaced the one just read.
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self._call(f"{self._pod(name)}: delete", self._api.delete_namespaced_pod, name,
                       self._namespace, body=body, let_through=(404, 409))
        except ApiException:  # 404 gone meanwhile; 409 replaced meanwhile: ours is gone
            return False
        return True

    def force_delete_pod(self, name: str) -> bool:
        """Delete our pod that is being deleted already, at once (gracePeriodSeconds=0: the
        API server removes it without the kubelet's word; workers.core.terminating), and
        the agent's Secret. False when there is no pod of ours by that name, or it is not
        being deleted (a live pod is never force-deleted)."""
        pod = self._read(name)
        if pod is None or not self._ours(pod) or pod.metadata.deletion_timestamp is None:
            return False
        self.delete_agent_secret(name)
        uid = pod.metadata.uid
        body = {"gracePeriodSeconds": 0, **({"preconditions": {"uid": uid}} if uid else {})}
        try:
            self._call(f"{self._pod(name)}: force delete", self._api.delete_namespaced_pod,
                       name, self._namespace, body=body, grace_period_seconds=0,
                       let_through=(404, 409))
        except ApiException:  # 404 gone meanwhile; 409 replaced meanwhile: ours is gone
            return False
        return True

    def patch_pod_metadata(self, name: str, *, labels: dict[str, str],
                           annotations: dict[str, str]) -> bool:
        """A merge of metadata.labels and metadata.annotations in one PATCH (the client sends
        a dict as a strategic merge patch: other labels and annotations are kept). False when
        there is no pod of ours by that name: gone, or another's (left alone)."""
        pod = self._read(name)
        if pod is None or not self._ours(pod):
            return False
        try:
            self._raw(f"{self._pod(name)}: patch metadata", self._api.patch_namespaced_pod,
                      name, self._namespace,
                      {"metadata": {"labels": labels, "annotations": annotations}},
                      let_through=404)
        except ApiException:  # 404: gone meanwhile
            return False
        return True

    def claim_node_terms(self, claim: str) -> list[dict[str, Any]] | None:
        """The required node affinity (nodeSelectorTerms) of the PersistentVolume bound to this
        claim of the agent namespace; None when it has none, is not bound yet (a
        WaitForFirstConsumer claim binds where the pod lands) or cannot be read (the scheduler
        still has the last word). Kept CLAIM_TOPOLOGY_TTL_SECONDS."""
        now = time.monotonic()
        cached = self._claims.get(claim)
        if cached is not None and now - cached[0] < CLAIM_TOPOLOGY_TTL_SECONDS:
            return cached[1]
        try:
            pvc = self._raw(f"claim {self._namespace}/{claim}: read",
                            self._api.read_namespaced_persistent_volume_claim, claim,
                            self._namespace)
            volume = (pvc.get("spec") or {}).get("volumeName")
            terms = None
            if volume:
                pv = self._raw(f"volume {volume}: read", self._api.read_persistent_volume, volume)
                required = (((pv.get("spec") or {}).get("nodeAffinity") or {})
                            .get("required") or {})
                terms = required.get("nodeSelectorTerms") or None
        except (PermanentError, RetryableError) as err:
            log.warning("volume topology of claim %s unknown, leaving it to the scheduler: %s",
                        claim, err)
            return None
        self._claims[claim] = (now, terms)
        return terms

    def _raw(self, what: str, fn: Callable[..., Any], *args: Any,
             let_through: int | tuple[int, ...] = ()) -> dict[str, Any]:
        response = self._call(what, fn, *args, _preload_content=False, let_through=let_through)
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def list_pods(self) -> list[PodInfo]:
        pods = [pod for pod in self._list(self._selector)
                if self._owner(pod) == Owner.OURS]
        if self._legacy_selector is not None and self._lookout.wanted():
            legacy = {pod.metadata.name: pod for pod in self._list(self._legacy_selector)
                      if self._owner(pod) == Owner.LEGACY}
            known = self._known(legacy)
            self._lookout.found(len(known), self._clock())  # another's would keep it on
            pods += [pod for name, pod in legacy.items() if name in known]
        return [self._info(pod) for pod in pods]

    def _list(self, selector: str) -> list[V1Pod]:
        return self._call(f"pods in {self._namespace}: list", self._api.list_namespaced_pod,
                          self._namespace, label_selector=selector).items

    def _owner(self, pod: V1Pod) -> Owner | None:
        """Whose a pod is: None when it is not managed by us at all."""
        meta = pod.metadata
        if meta is None or not is_managed(meta.labels):
            return None
        return owner(meta.labels, meta.annotations or {}, self._installation)

    def _known(self, legacy: dict[str, V1Pod]) -> set[str]:
        if not legacy or self._legacy_known is None:
            return set()
        return self._legacy_known({name: dict(pod.metadata.labels or {})
                                   for name, pod in legacy.items()})

    def _ours(self, pod: V1Pod) -> bool:
        return self._mine(pod.metadata, pod.metadata.name if pod.metadata else "")

    def _mine(self, meta: Any, agent: str) -> bool:
        """Whether an object (a pod, an agent's Secret: its metadata) is this installation's:
        labelled so, or from before labels and the agent known to it."""
        if meta is None or not is_managed(meta.labels):
            return False
        whose = owner(meta.labels, meta.annotations or {}, self._installation)
        return whose == Owner.OURS or (
            whose == Owner.LEGACY and self._legacy_known is not None
            and agent in self._legacy_known({agent: dict(meta.labels or {})}))

    def _info(self, pod: V1Pod) -> PodInfo:
        """The client's model back to the JSON the server sent, read as the watch reads it
        (kube_objects.pod_info): one reading of container states for both."""
        return pod_info(self._client.sanitize_for_serialization(pod))

    def _read(self, name: str) -> V1Pod | None:
        try:
            return self._call(f"{self._pod(name)}: read", self._api.read_namespaced_pod, name,
                              self._namespace, let_through=404)
        except ApiException:  # 404
            return None

    def _pod(self, name: str) -> str:
        return f"pod {self._namespace}/{name}"

    def _call(self, what: str, fn: Callable[..., T], *args: Any,
              let_through: int | tuple[int, ...] = (), **kwargs: Any) -> T:
        """``api_call`` with this adapter's timeout, retried on RetryableError (every call here
        is safe to repeat: see create_pod and delete_pod); the client's own validation failing
        becomes PermanentError too."""
        try:
            return retrying(what, lambda: api_call(
                what, fn, *args, let_through=let_through, _request_timeout=self._timeout,
                **kwargs), backoff=self._backoff)
        except pydantic.ValidationError as err:
            # The client validates against its models before sending. Not chained: pydantic's
            # message quotes input values, and an env value may be the agent secret.
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in err.errors()})
            raise PermanentError(f"{what} refused by the client's validation at "
                                 f"{', '.join(fields)}") from None
