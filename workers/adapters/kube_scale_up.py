"""The scale-up pods of workers.core.scale_up in the agent namespace, over the official client.

Like the agent adapter (workers.adapters.kube) it touches only its own pods: listed by their
managed-by value and checked again in code, read before each delete (with a uid
precondition). Errors become the project's own as kube_errors says.
"""

import json
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from workers.adapters.kube_errors import api_call
from workers.adapters.retry import DEFAULT_BACKOFF, Backoff, retrying
from workers.core.pods import BUILD_KEY_LABEL
from workers.core.scale_up import SCALE_UP_SELECTOR, Existing, is_scale_up


class ScaleUpPods:
    def __init__(self, *, api_client: ApiClient, namespace: str, request_timeout: float = 10,
                 backoff: Backoff = DEFAULT_BACKOFF):
        self._api = CoreV1Api(api_client)
        self._namespace = namespace
        self._timeout = request_timeout
        self._backoff = backoff

    def list(self) -> list[Existing]:
        pods = self._call(f"scale-up pods in {self._namespace}: list",
                          self._api.list_namespaced_pod, self._namespace,
                          label_selector=SCALE_UP_SELECTOR, _preload_content=False)
        try:
            items = json.loads(pods.data).get("items") or []
        finally:
            pods.release_conn()
        out = []
        for pod in items:
            meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
            if not is_scale_up(meta.get("labels")) or meta.get("deletionTimestamp"):
                continue
            out.append(Existing(meta.get("name", ""), (meta.get("labels") or {}).get(
                BUILD_KEY_LABEL, ""), bound=bool(spec.get("nodeName"))))
        return out

    def create(self, manifest: dict[str, Any]) -> bool:
        """False when a pod of that name exists already (made by an earlier pass)."""
        name = manifest["metadata"]["name"]
        try:
            self._call(f"pod {self._namespace}/{name}: create",
                       self._api.create_namespaced_pod, self._namespace, manifest,
                       let_through=409, _preload_content=False).release_conn()
        except ApiException:  # 409
            return False
        return True

    def delete(self, name: str) -> bool:
        """False when there is no scale-up pod by that name (another's is left alone)."""
        what = f"pod {self._namespace}/{name}"
        try:
            pod = self._call(f"{what}: read", self._api.read_namespaced_pod, name,
                             self._namespace, let_through=404)
        except ApiException:
            return False
        if not is_scale_up(pod.metadata.labels if pod.metadata else None):
            return False
        uid = pod.metadata.uid if pod.metadata else None
        try:
            self._call(f"{what}: delete", self._api.delete_namespaced_pod, name,
                       self._namespace, body={"preconditions": {"uid": uid}} if uid else None,
                       grace_period_seconds=0, let_through=(404, 409))
        except ApiException:
            return False
        return True

    def _call(self, what: str, fn: Any, *args: Any, let_through: int | tuple[int, ...] = (),
              **kwargs: Any) -> Any:
        return retrying(what, lambda: api_call(what, fn, *args, let_through=let_through,
                                               _request_timeout=self._timeout, **kwargs),
                        backoff=self._backoff)
