"""The scale-up pods of workers.core.scale_up in the agent namespace, over the official client.

Like the agent adapter (workers.adapters.kube) it touches only its own pods: listed by their
managed-by value and this installation's label and checked again in code (with the installation
annotation), read before each delete (with a uid precondition); one from before installation
labels only when `legacy_known` says it is ours. Errors become the project's own as kube_errors
says.
"""

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from workers.adapters.kube_errors import api_call
from workers.adapters.kube_limit_ranges import LimitRangeDefaults, list_raw
from workers.adapters.retry import DEFAULT_BACKOFF, Backoff, retrying
from workers.core.installation_pods import LegacyLookout, Owner, owner, selectors
from workers.core.pods import BUILD_KEY_LABEL
from workers.core.quota_usage import pod_usage
from workers.core.scale_up import SCALE_UP_SELECTOR, Existing, is_scale_up

LegacyKnown = Callable[[dict[str, dict[str, str]]], set[str]]
Items = list[dict[str, Any]]  # raw pods (`list` is a method's name in the class)


class ScaleUpPods:
    def __init__(self, *, api_client: ApiClient, namespace: str, request_timeout: float = 10,
                 backoff: Backoff = DEFAULT_BACKOFF, installation: str = "",
                 legacy_known: LegacyKnown | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._installation = installation
        self._legacy_known = legacy_known
        self._lookout, self._clock = LegacyLookout(installation), clock
        self._selector, self._legacy_selector = selectors(SCALE_UP_SELECTOR, installation)
        self._api = CoreV1Api(api_client)
        self._namespace = namespace
        self._timeout = request_timeout
        self._backoff = backoff
        # Its one container asks the agent pod's whole requests: above a LimitRange default
        # limit more often than any agent container is, and refused (422) as they would be.
        self._limit_ranges = LimitRangeDefaults(list_raw(self._call, self._api, namespace),
                                                namespace, clock)

    def list(self) -> list[Existing]:
        """This installation's scale-up pods that are not being deleted."""
        items = [pod for pod in self._list(self._selector)
                 if self._owner(pod.get("metadata") or {}) == Owner.OURS]
        if self._legacy_selector is not None and self._lookout.wanted():
            legacy = {pod["metadata"].get("name", ""): pod
                      for pod in self._list(self._legacy_selector)
                      if self._owner(pod.get("metadata") or {}) == Owner.LEGACY}
            known = self._known({name: pod["metadata"].get("labels") or {}
                                 for name, pod in legacy.items()})
            self._lookout.found(len(known), self._clock())  # another's would keep it on
            items += [pod for name, pod in legacy.items() if name in known]
        out = []
        for pod in items:
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            if meta.get("deletionTimestamp"):
                continue
            out.append(Existing(meta.get("name", ""), (meta.get("labels") or {}).get(
                BUILD_KEY_LABEL, ""), bound=bool(spec.get("nodeName"))))
        return out

    def _list(self, selector: str) -> Items:
        pods = self._call(f"scale-up pods in {self._namespace}: list",
                          self._api.list_namespaced_pod, self._namespace,
                          label_selector=selector, _preload_content=False)
        try:
            return json.loads(pods.data).get("items") or []
        finally:
            pods.release_conn()

    def _owner(self, meta: dict[str, Any]) -> Owner | None:
        """Whose a pod is (its metadata): None when it is no scale-up pod at all."""
        if not is_scale_up(meta.get("labels")):
            return None
        return owner(meta.get("labels"), meta.get("annotations") or {}, self._installation)

    def _known(self, legacy: dict[str, Any]) -> set[str]:
        if not legacy or self._legacy_known is None:
            return set()
        return self._legacy_known(legacy)

    def create(self, manifest: dict[str, Any]) -> bool:
        """False when a pod of that name exists already (made by an earlier pass)."""
        name = manifest["metadata"]["name"]
        return self._limit_ranges.create(lambda sent: self._create(name, sent), manifest)

    def _create(self, name: str, manifest: dict[str, Any]) -> bool:
        try:
            self._call(f"pod {self._namespace}/{name}: create",
                       self._api.create_namespaced_pod, self._namespace, manifest,
                       let_through=409, _preload_content=False).release_conn()
        except ApiException:  # 409
            return False
        return True

    def delete(self, name: str) -> bool:
        """False when there is no scale-up pod by that name (another's is left alone)."""
        return self.delete_counted(name) is not None

    def delete_counted(self, name: str) -> dict[str, Decimal] | None:
        """delete; what the deleted pod counted against a ResourceQuota (as stored: after
        LimitRanger's defaults; core.quota_usage.pod_usage), None when none was deleted."""
        what = f"pod {self._namespace}/{name}"
        try:
            pod = self._read(what, name)
        except ApiException:
            return None
        meta = pod.get("metadata") or {}
        whose = self._owner(meta)
        if whose != Owner.OURS and not (
                whose == Owner.LEGACY and name in self._known({name: meta.get("labels") or {}})):
            return None
        uid = meta.get("uid")
        try:
            self._call(f"{what}: delete", self._api.delete_namespaced_pod, name,
                       self._namespace, body={"preconditions": {"uid": uid}} if uid else None,
                       grace_period_seconds=0, let_through=(404, 409))
        except ApiException:
            return None
        return pod_usage(pod)

    def _read(self, what: str, name: str) -> dict[str, Any]:
        raw = self._call(f"{what}: read", self._api.read_namespaced_pod, name, self._namespace,
                         let_through=404, _preload_content=False)
        try:
            return json.loads(raw.data)
        finally:
            raw.release_conn()

    def _call(self, what: str, fn: Any, *args: Any, let_through: int | tuple[int, ...] = (),
              **kwargs: Any) -> Any:
        return retrying(what, lambda: api_call(what, fn, *args, let_through=let_through,
                                               _request_timeout=self._timeout, **kwargs),
                        backoff=self._backoff)
