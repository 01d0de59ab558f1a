"""kmock with only the requests in flight in its history (KubeServer.keep_in_flight_only, used
by bench/provision.py to keep the fake's CPU per request flat): the same answers as with the
whole history, for the calls a provision and a release make, errors included."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.kmock_cluster import ACCESS_REVIEWS_PATH, running_kube

NS = "ci-agents"
VOLATILE = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp")


def _call(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    request = urllib.request.Request(
        url + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _stable(json.loads(response.read() or b"null"))
    except urllib.error.HTTPError as err:
        return err.code, _stable(json.loads(err.read() or b"null"))


def _stable(value: object) -> object:
    """The answer without what differs between two servers (uids, versions, times)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "jnlp", "image": "jenkins/inbound-agent"}]}}


def _session(url: str) -> list[tuple[int, object]]:
    pods = f"/api/v1/namespaces/{NS}/pods"
    return [
        _call(url, "GET", f"/api/v1/namespaces/{NS}"),  # 404: none made
        _call(url, "GET", "/api/v1/namespaces/nowhere"),
        _call(url, "POST", ACCESS_REVIEWS_PATH, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": NS, "verb": "create",
                                            "resource": "pods"}}}),
        _call(url, "POST", pods, _pod("agent-1")),
        _call(url, "POST", pods, _pod("agent-1")),  # 409: it exists
        _call(url, "POST", pods, _pod("agent-2")),
        _call(url, "GET", f"{pods}/agent-1"),
        _call(url, "GET", f"{pods}/agent-9"),  # 404
        _call(url, "GET", pods),
        _call(url, "DELETE", f"{pods}/agent-1"),
        _call(url, "DELETE", f"{pods}/agent-1"),  # 404: gone
        _call(url, "GET", "/api/v1/nodes"),
        _call(url, "GET", "/version"),
    ]


def test_only_in_flight_history_answers_as_the_whole_history(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_kube(tmp_path / "a") as whole:
        whole.add_node("node-0", cpu="4", memory="16Gi")
        expected = _session(whole.url)
        assert len(whole.requests()) == len(expected)
    with running_kube(tmp_path / "b") as kube:
        kube.add_node("node-0", cpu="4", memory="16Gi")
        kube.keep_in_flight_only()
        answers = _session(kube.url)
        assert kube.requests() == []  # each one dropped once answered
    assert [status for status, _ in answers] == [
        404, 404, 201, 200, 409, 200, 200, 404, 200, 200, 404, 200, 200]
    assert answers == expected


def test_a_reaction_that_counts_the_history_refuses_with_only_in_flight_kept(tmp_path: Path):
    with running_kube(tmp_path) as kube:
        kube.keep_in_flight_only()
        with pytest.raises(RuntimeError, match="in flight"):
            kube.fail("post", f"/api/v1/namespaces/{NS}/pods", times=1)
        with pytest.raises(RuntimeError, match="in flight"):
            kube.stall("post", f"/api/v1/namespaces/{NS}/pods", seconds=1)
        kube.fail("post", f"/api/v1/namespaces/{NS}/pods")  # every time: counts nothing
        assert _call(kube.url, "POST", f"/api/v1/namespaces/{NS}/pods", _pod("a"))[0] == 500
