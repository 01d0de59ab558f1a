"""What the live checks ask the Kubernetes API: whether this identity may do a verb
(SelfSubjectAccessReview, which every authenticated user may create), the agent namespace's
labels, and whether metrics.k8s.io answers. Task-shaped calls; errors translated as in
workers.adapters.kube_errors, retried as every call at the boundary is.
"""

import json
from typing import Any

from kubernetes.client import (ApiClient, AuthorizationV1Api, CoreV1Api, CustomObjectsApi,
                               NodeV1Api)
from kubernetes.client.exceptions import ApiException

from workers.adapters.kube_errors import api_call
from workers.adapters.retry import DEFAULT_BACKOFF, Backoff, retrying
from workers.core.rbac import Right

REQUEST_TIMEOUT_SECONDS = 10


def allowed(*, api_client: ApiClient, right: Right, namespace: str,
            backoff: Backoff = DEFAULT_BACKOFF) -> tuple[bool, str]:
    """Whether the API server lets us do `right` (in `namespace` when it is namespaced, on the
    namespace object itself for `agent_namespace_only`), and its reason."""
    resource, _, subresource = right.resource.partition("/")
    attributes: dict[str, Any] = {"verb": right.verb, "group": right.group,
                                  "resource": resource}
    if subresource:
        attributes["subresource"] = subresource
    if right.namespaced:
        attributes["namespace"] = namespace
    if right.agent_namespace_only:
        attributes["name"] = namespace
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": attributes}}
    api = AuthorizationV1Api(api_client)
    what = f"access review of {right}"
    answer = retrying(what, lambda: api_call(
        what, api.create_self_subject_access_review, review,
        _request_timeout=REQUEST_TIMEOUT_SECONDS), backoff=backoff)
    status = answer.status
    return bool(status and status.allowed), (status.reason or "") if status else ""


def namespace_labels(*, api_client: ApiClient, name: str,
                     backoff: Backoff = DEFAULT_BACKOFF) -> dict[str, str] | None:
    """The namespace's labels; None when it does not exist."""
    api = CoreV1Api(api_client)
    what = f"namespace {name}: read"
    try:
        namespace = retrying(what, lambda: api_call(
            what, api.read_namespace, name, let_through=404,
            _request_timeout=REQUEST_TIMEOUT_SECONDS), backoff=backoff)
    except ApiException:  # 404
        return None
    return dict(namespace.metadata.labels or {}) if namespace.metadata else {}


def claim_exists(*, api_client: ApiClient, namespace: str, name: str,
                 backoff: Backoff = DEFAULT_BACKOFF) -> bool:
    """Whether the PersistentVolumeClaim exists in the namespace."""
    api = CoreV1Api(api_client)
    what = f"claim {namespace}/{name}: read"
    try:
        retrying(what, lambda: api_call(
            what, api.read_namespaced_persistent_volume_claim, name, namespace, let_through=404,
            _request_timeout=REQUEST_TIMEOUT_SECONDS), backoff=backoff)
    except ApiException:  # 404
        return False
    return True


def runtime_class_exists(*, api_client: ApiClient, name: str,
                         backoff: Backoff = DEFAULT_BACKOFF) -> bool:
    """Whether the RuntimeClass (node.k8s.io/v1, cluster-scoped) exists."""
    api = NodeV1Api(api_client)
    what = f"runtime class {name}: read"
    try:
        retrying(what, lambda: api_call(
            what, api.read_runtime_class, name, let_through=404,
            _request_timeout=REQUEST_TIMEOUT_SECONDS), backoff=backoff)
    except ApiException:  # 404
        return False
    return True


def node_metrics_count(*, api_client: ApiClient, backoff: Backoff = DEFAULT_BACKOFF) -> int:
    """How many nodes metrics.k8s.io reports (what metrics-server serves)."""
    api = CustomObjectsApi(api_client)
    what = "metrics.k8s.io nodes: list"
    answer = retrying(what, lambda: api_call(
        what, api.list_cluster_custom_object, "metrics.k8s.io", "v1beta1", "nodes",
        _request_timeout=REQUEST_TIMEOUT_SECONDS), backoff=backoff)
    return len(answer.get("items") or []) if isinstance(answer, dict) else 0


def limit_ranges(*, api_client: ApiClient, namespace: str,
                 backoff: Backoff = DEFAULT_BACKOFF) -> list[dict[str, Any]]:
    """The namespace's LimitRanges, as raw JSON objects (core.limit_ranges reads them so)."""
    api = CoreV1Api(api_client)
    what = f"limit ranges in {namespace}: list"
    response = retrying(what, lambda: api_call(
        what, api.list_namespaced_limit_range, namespace, _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT_SECONDS), backoff=backoff)
    try:
        return json.loads(response.data).get("items") or []
    finally:
        response.release_conn()
