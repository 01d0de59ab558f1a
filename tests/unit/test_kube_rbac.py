"""tests.support.kube_rbac: kmock's RBAC reads a request as the API server's resolver does
(requestinfo.go) and grants the chart's service account what workers.core.rbac.RIGHTS grants."""

import pytest

from tests.support.kube_rbac import allowed, forbidden, request_info
from workers.core.rbac import RIGHTS

NS = "ci-agents"


@pytest.mark.parametrize("method, path, query, expected", [
    ("GET", "/api/v1/namespaces/ci-agents/pods", {}, ("list", "", "ci-agents", "pods", "", "")),
    ("GET", "/api/v1/pods", {"watch": "true"}, ("watch", "", "", "pods", "", "")),
    ("GET", "/api/v1/pods", {"watch": "false"}, ("list", "", "", "pods", "", "")),
    # conversion.go Convert_Slice_string_To_bool: all but "0" and "false" (any case) watch
    ("GET", "/api/v1/pods", {"watch": "yes"}, ("watch", "", "", "pods", "", "")),
    ("GET", "/api/v1/pods", {"watch": ""}, ("watch", "", "", "pods", "", "")),
    ("GET", "/api/v1/pods", {"watch": "FaLsE"}, ("list", "", "", "pods", "", "")),
    ("GET", "/api/v1/pods", {"watch": "0"}, ("list", "", "", "pods", "", "")),
    # path.IsValidPathSegmentName refuses "%": no name, a list of every pod
    ("GET", "/api/v1/namespaces/ci-agents/pods", {"fieldSelector": "metadata.name=a%b"},
     ("list", "", "ci-agents", "pods", "", "")),
    ("GET", "/api/v1/watch/nodes", {}, ("watch", "", "", "nodes", "", "")),
    ("GET", "/api/v1/namespaces/ci-agents/pods/a", {}, ("get", "", "ci-agents", "pods", "", "a")),
    ("GET", "/api/v1/namespaces/ci-agents/pods", {"fieldSelector": "metadata.name=a"},
     ("list", "", "ci-agents", "pods", "", "a")),
    ("GET", "/api/v1/namespaces/ci-agents/pods/a/log", {},
     ("get", "", "ci-agents", "pods", "log", "a")),
    ("POST", "/api/v1/namespaces/ci-agents/pods/a/eviction", {},
     ("create", "", "ci-agents", "pods", "eviction", "a")),
    ("PUT", "/api/v1/namespaces/ci-agents/pods/a/status", {},
     ("update", "", "ci-agents", "pods", "status", "a")),
    ("PATCH", "/api/v1/namespaces/ci-agents/secrets/s", {},
     ("patch", "", "ci-agents", "secrets", "", "s")),
    ("DELETE", "/api/v1/namespaces/ci-agents/pods/a", {},
     ("delete", "", "ci-agents", "pods", "", "a")),
    ("DELETE", "/api/v1/namespaces/ci-agents/pods", {},
     ("deletecollection", "", "ci-agents", "pods", "", "")),
    ("GET", "/api/v1/namespaces/ci-agents", {},
     ("get", "", "ci-agents", "namespaces", "", "ci-agents")),
    ("PUT", "/api/v1/namespaces/ci-agents/finalize", {},
     ("update", "", "ci-agents", "namespaces", "finalize", "ci-agents")),
    ("GET", "/apis/metrics.k8s.io/v1beta1/nodes", {}, ("list", "metrics.k8s.io", "", "nodes", "", "")),
])
def test_a_request_is_read_as_the_api_servers_resolver_reads_it(method, path, query, expected):
    info = request_info(method, path, query)
    assert info.resource_request
    assert (info.verb, info.group, info.namespace, info.resource, info.subresource,
            info.name) == expected


@pytest.mark.parametrize("method, path, query, granted", [
    ("POST", "/api/v1/namespaces/ci-agents/pods", {}, True),
    ("POST", "/api/v1/namespaces/default/pods", {}, False),  # the Role is in ci-agents alone
    ("GET", "/api/v1/pods", {"watch": "1"}, True),  # the ClusterRole: every pod's requests
    ("DELETE", "/api/v1/namespaces/default/pods/a", {}, False),
    ("DELETE", "/api/v1/namespaces/ci-agents/pods", {}, False),  # deletecollection
    ("GET", "/api/v1/namespaces/ci-agents/pods/a/log", {}, True),
    ("POST", "/api/v1/namespaces/ci-agents/pods/a/eviction", {}, False),
    ("PATCH", "/api/v1/namespaces/ci-agents/pods/a/status", {}, False),
    ("GET", "/api/v1/namespaces/ci-agents/secrets", {}, False),  # never listed
    ("GET", "/api/v1/namespaces/ci-agents", {}, True),
    ("GET", "/api/v1/namespaces/default", {}, False),  # resourceNames: the agent namespace
    ("GET", "/api/v1/namespaces", {}, False),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {}, True),
    ("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/x/pods", {}, True),
    ("GET", "/version", {}, True),
    # metrics.k8s.io is read (get, list), never watched: "watch=on" is a watch to the API server
    ("GET", "/apis/metrics.k8s.io/v1beta1/nodes", {"watch": "on"}, False),
    ("GET", "/.well-known/openid-configuration", {}, True),  # every service account's
    ("GET", "/metrics", {}, False),
])
def test_the_service_account_gets_the_charts_rights_alone(method, path, query, granted):
    assert allowed(request_info(method, path, query), RIGHTS, NS) is granted


def test_a_refusal_is_the_api_servers_forbidden_status():
    status = forbidden(request_info("DELETE", "/api/v1/namespaces/ci-agents/pods/x", {}),
                       user="system:serviceaccount:ci:ci-autoscaler")
    assert status == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "x" is forbidden: User "system:serviceaccount:ci:ci-autoscaler" cannot '
                   'delete resource "pods" in API group "" in the namespace "ci-agents"',
        "reason": "Forbidden", "details": {"name": "x", "kind": "pods"}, "code": 403}
    listed = forbidden(request_info("GET", "/apis/metrics.k8s.io/v1beta1/nodes",
                                    {"watch": "true"}), user="u")
    assert listed["message"] == ('nodes.metrics.k8s.io is forbidden: User "u" cannot watch '
                                 'resource "nodes" in API group "metrics.k8s.io" at the '
                                 'cluster scope')
    evicted = forbidden(request_info("POST", "/api/v1/namespaces/n/pods/p/eviction", {}), user="u")
    assert evicted["message"] == ('pods "p" is forbidden: User "u" cannot create resource '
                                  '"pods/eviction" in API group "" in the namespace "n"')
