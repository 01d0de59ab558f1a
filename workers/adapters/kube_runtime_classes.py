"""RuntimeClasses read from the API server (node.k8s.io/v1, cluster-scoped), cached: what a
template's `runtimeClassName` adds to its pods (core.runtime_class) changes seldom, and it is
read for every decision. The chart's ClusterRole grants `get` on them."""

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient, NodeV1Api
from kubernetes.client.exceptions import ApiException

from workers.core.errors import PermanentError, RetryableError

RUNTIME_CLASSES_TTL_SECONDS = 60.0
log = logging.getLogger("ci_autoscaler.kube")


class RuntimeClasses:
    def __init__(self, call: Callable[..., Any], api_client: ApiClient,
                 clock: Callable[[], float] = time.monotonic):
        """`call`: the adapter's retried api_call."""
        self._call, self._api, self._clock = call, NodeV1Api(api_client), clock
        self._read: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._said: set[str] = set()

    def get(self, name: str) -> dict[str, Any] | None:
        """The RuntimeClass as raw JSON, or None when there is none of that name (admission
        refuses the pod, and its create says so) or it cannot be read (no right to: a
        ClusterRole from before; logged once per name; the last one read is kept while the
        API server is away). Read again a minute after the last try."""
        now = self._clock()
        known = self._read.get(name)
        if known is not None and now - known[0] < RUNTIME_CLASSES_TTL_SECONDS:
            return known[1]
        try:
            response = self._call(f"runtime class {name}: read", self._api.read_runtime_class,
                                   name, _preload_content=False, let_through=404)
            try:
                found: dict[str, Any] | None = json.loads(response.data)
            finally:
                response.release_conn()
        except ApiException:  # 404, let through
            found = None
        except (PermanentError, RetryableError) as err:
            if name not in self._said:
                self._said.add(name)
                log.warning("runtime class %s unknown: its pods are placed without its "
                            "overhead and node selector: %s", name, err)
            # kept (or none) for another while: asked again on every decision, each would
            # wait out the retries while the API server is away
            found = known[1] if known is not None else None
        self._read[name] = (now, found)
        return found
