"""The API server's RBAC check of a request, for kmock (tests.support.kmock_cluster): a request
of the chart's service account is granted what workers.core.rbac.RIGHTS grants (the chart's
Role and ClusterRole, held equal to it by tests/integration/test_helm_chart.py) and what every
authenticated user is granted, and anything else is answered 403 Forbidden, as on a cluster.
Pure.

Sources (Kubernetes 1.30):
- the request's attributes: k8s.io/apiserver pkg/endpoints/request/requestinfo.go,
  RequestInfoFactory.NewRequestInfo (`request_info` follows it line by line);
- a rule's match: pkg/apis/rbac/v1/evaluation_helpers.go (VerbMatches, APIGroupMatches,
  ResourceMatches with "resource/subresource", ResourceNameMatches), a Role's rules counting
  in its own namespace only (plugin/pkg/auth/authorizer/rbac/rbac.go, RuleResolver);
- what every authenticated user may do: the bootstrap ClusterRoles system:basic-user
  (create selfsubjectaccessreviews, selfsubjectrulesreviews, selfsubjectreviews),
  system:discovery and system:public-info-viewer (GET /api, /apis, /version, /healthz, ...):
  plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go;
- the answer: k8s.io/apiserver pkg/endpoints/handlers/responsewriters/errors.go
  (forbiddenMessage, Forbidden) and k8s.io/apimachinery pkg/api/errors/errors.go (NewForbidden).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.core.rbac import Right

# The chart's worker/reconcile ServiceAccount as the API server names its user: release
# namespace and fullname as `helm install ci-autoscaler` into namespace ci-autoscaler makes them.
SERVICE_ACCOUNT_USER = "system:serviceaccount:ci-autoscaler:ci-autoscaler"

_SPECIAL_VERBS = ("proxy", "watch")
_SPECIAL_VERBS_NO_SUBRESOURCES = ("proxy",)
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update",
                 "PATCH": "patch", "DELETE": "delete"}
# system:basic-user: (group, resource) every authenticated user may create
_EVERYONE_CREATES = (("authorization.k8s.io", "selfsubjectaccessreviews"),
                     ("authorization.k8s.io", "selfsubjectrulesreviews"),
                     ("authentication.k8s.io", "selfsubjectreviews"))
# system:discovery and system:public-info-viewer: non-resource URLs ("*" ends a prefix),
# and system:service-account-issuer-discovery, bound to the group system:serviceaccounts
_EVERYONE_GETS = ("/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version",
                  "/version/", "/healthz", "/livez", "/readyz",
                  "/.well-known/openid-configuration", "/.well-known/openid-configuration/",
                  "/openid/v1/jwks", "/openid/v1/jwks/")


@dataclass(frozen=True)
class RequestInfo:
    """The attributes RBAC decides on (requestinfo.go's RequestInfo, the parts it reads)."""

    resource_request: bool
    path: str
    verb: str
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def _watch(query: Mapping[str, str]) -> bool:
    """ListOptions.Watch as the API server decodes the `watch` parameter (its first value):
    k8s.io/apimachinery pkg/runtime/conversion.go Convert_Slice_string_To_bool, where only no
    value, "0" or "false" (any case) is false; "yes", "on" or "" is a watch (not
    strconv.ParseBool, which would read them as no boolean, a list)."""
    if "watch" not in query:
        return False
    value = query["watch"]
    return not (value == "0" or value.lower() == "false")


def _exact_name(selector: str) -> str | None:
    """fields.Selector.RequiresExactMatch("metadata.name") of a field selector: the value of a
    `metadata.name=` or `==` term (terms are ANDed by commas)."""
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            continue
        field, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if sep and field.strip() == "metadata.name":
            return value.strip()
    return None


def request_info(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """The request as the API server's resolver reads it (requestinfo.go NewRequestInfo)."""
    parts = [p for p in path.strip("/").split("/")] if path.strip("/") else []
    non_resource = RequestInfo(False, path, method.lower())
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix != "api":  # "api" is the groupless prefix
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in _SPECIAL_VERBS:
        verb, parts = parts[0], parts[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts and parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in _SPECIAL_VERBS_NO_SUBRESOURCES \
        else ""
    if not name and verb == "get":
        verb = "watch" if _watch(query) else "list"
        selected = _exact_name(query.get("fieldSelector", ""))
        # path.IsValidPathSegmentName: not "." or "..", no "/" nor "%"
        if selected and not {"/", "%"} & set(selected) and selected not in (".", ".."):
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, path, verb, group, version, namespace, resource, subresource, name)


def allowed(info: RequestInfo, rights: Iterable[Right], agent_namespace: str) -> bool:
    """Whether RBAC grants the request to the chart's service account: a namespaced right (the
    chart's Role) in the agent namespace only; a cluster right (the ClusterRole, bound by a
    ClusterRoleBinding) in every namespace and cluster-wide; one `agent_namespace_only`
    (resourceNames: [agent namespace]) on a request naming that object alone."""
    if not info.resource_request:
        return info.verb == "get" and any(
            info.path == url or (url.endswith("*") and info.path.startswith(url[:-1]))
            for url in _EVERYONE_GETS)
    if info.verb == "create" and (info.group, info.resource) in _EVERYONE_CREATES \
            and not info.subresource:
        return True
    resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    for right in rights:
        if (right.group, right.resource, right.verb) != (info.group, resource, info.verb):
            continue
        if right.namespaced and info.namespace != agent_namespace:
            continue
        if right.agent_namespace_only and info.name != agent_namespace:
            continue
        return True
    return False


def forbidden(info: RequestInfo, user: str = SERVICE_ACCOUNT_USER) -> dict[str, Any]:
    """The API server's 403 Status body for a request RBAC refuses (errors.go Forbidden:
    forbiddenMessage wrapped by NewForbidden of the group and resource, without subresource)."""
    if not info.resource_request:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": f'forbidden: User "{user}" cannot {info.verb} path "{info.path}"',
                "reason": "Forbidden", "details": {}, "code": 403}
    resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    where = (f'in the namespace "{info.namespace}"' if info.namespace
             else "at the cluster scope")
    why = (f'User "{user}" cannot {info.verb} resource "{resource}" in API group '
           f'"{info.group}" {where}')
    qualified = f"{info.resource}.{info.group}" if info.group else info.resource
    message = (f'{qualified} "{info.name}" is forbidden: {why}' if info.name
               else f"{qualified} is forbidden: {why}")
    details = {k: v for k, v in (("name", info.name), ("group", info.group),
                                 ("kind", info.resource)) if v}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden", "details": details, "code": 403}
