"""Stable chart secrets on an installed release: Helm's SDK renders the chart against an API
server (kmock, see tests/support/helm_cluster.py) holding the release's Secrets from an earlier
install, and `lookup` keeps every token and the Redis password the values leave out, render
after render; without them in the cluster or the values, the render fails naming the value.
(Offline renders, as `helm template` and Argo CD make them, are in test_helm_chart.py: there
every secret must be given, since lookup finds nothing.)"""

import base64
import hashlib
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.support.helm_chart import RELEASE, one, option_sets
from tests.support.helm_cluster import KINDS, helm_cluster

FULLNAME = f"{RELEASE}-ci-autoscaler"
INSTALLED = {"gitlab-webhook-token": "installed-gitlab-7d1e", "jenkins-api-token": "api-3f2a",
             "jenkins-webhook-token": "installed-jenkins-90bc"}
REDIS_PASSWORD = "installed-redis-55aa"


def _values_without_secrets() -> dict[str, Any]:
    values = dict(option_sets()["minimal"])
    values["secrets"] = {}
    values["redis"] = {}
    return values


def _data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.fixture
def cluster(tmp_path):
    with helm_cluster(tmp_path) as server:
        yield server


def test_an_installed_releases_secrets_are_kept_render_after_render(cluster):
    cluster.seed_secret(FULLNAME, INSTALLED)
    cluster.seed_secret(f"{FULLNAME}-redis", {"redis-password": REDIS_PASSWORD})
    renders = [cluster.render(_values_without_secrets()) for _ in range(2)]
    for objs in renders:
        assert {o["kind"] for o in objs} <= set(KINDS), "a kind the test server does not serve"
        assert _data(one(objs, "Secret", "config")) == INSTALLED
        assert _data(one(objs, "Secret", "redis")) == {
            "redis-password": REDIS_PASSWORD, "redis-web-password": hashlib.sha256(
                f"ci-autoscaler redis web user:{REDIS_PASSWORD}".encode()).hexdigest()}
        for obj in objs:
            kubernetes_validate.validate(obj, "1.30.0", strict=True)
    assert [o for o in renders[0] if o["kind"] == "Secret"] == \
        [o for o in renders[1] if o["kind"] == "Secret"]
    # Helm read the release's Secrets (lookup), and wrote nothing (a dry run).
    seen = cluster.requests()
    assert f"GET /api/v1/namespaces/ci/secrets/{FULLNAME}" in seen
    assert f"GET /api/v1/namespaces/ci/secrets/{FULLNAME}-redis" in seen
    assert not [r for r in seen if not r.startswith("GET ")]


def test_a_value_given_wins_over_the_installed_one(cluster):
    cluster.seed_secret(FULLNAME, INSTALLED)
    cluster.seed_secret(f"{FULLNAME}-redis", {"redis-password": REDIS_PASSWORD})
    values = _values_without_secrets() | {"secrets": {"gitlabWebhookToken": "rotated-on-purpose"}}
    data = _data(one(cluster.render(values), "Secret", "config"))
    assert data == INSTALLED | {"gitlab-webhook-token": "rotated-on-purpose"}


def test_a_fresh_install_without_tokens_fails_and_names_the_first_missing(cluster):
    with pytest.raises(helm_python.HelmError, match="secrets.gitlabWebhookToken is required"):
        cluster.render(_values_without_secrets())
    # With the tokens but not the Redis password: that one is named.
    values = _values_without_secrets() | {"secrets": option_sets()["minimal"]["secrets"]}
    with pytest.raises(helm_python.HelmError, match="redis.password is required"):
        cluster.render(values)


def test_an_upgrade_that_keeps_the_secrets_restarts_no_pod(cluster):
    """checksum/secrets (pods restart when an upgrade changes a Secret they read) is a digest
    of the Secrets' data: an upgrade whose values leave the secrets out reads them back
    (lookup) and must give the install's digest, or every `helm upgrade` would restart every
    web, worker, reconcile and Redis pod."""
    given = _values_without_secrets() | {
        "secrets": {"gitlabWebhookToken": INSTALLED["gitlab-webhook-token"],
                    "jenkinsWebhookToken": INSTALLED["jenkins-webhook-token"],
                    "jenkinsApiToken": INSTALLED["jenkins-api-token"]},
        "redis": {"password": REDIS_PASSWORD}}

    def digests(objs: list[dict[str, Any]]) -> dict[str, str]:
        return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
            "checksum/secrets"] for o in objs if o["kind"] in ("Deployment", "StatefulSet")}
    installed = digests(cluster.render(given))
    cluster.seed_secret(FULLNAME, INSTALLED)
    cluster.seed_secret(f"{FULLNAME}-redis", {"redis-password": REDIS_PASSWORD})
    assert digests(cluster.render(_values_without_secrets())) == installed
    assert len(installed) == 4
