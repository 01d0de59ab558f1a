"""kmock enforces a namespace's Pod Security level on pod creates, as the API server's
PodSecurity admission does (REALITY.md "Pod Security restricted"; tests.support.
pod_security_admission has the sources): our agent pods are admitted under `restricted`, and a
pod with one container left unhardened (an init container too) is refused 403 with the
plugin's words, which the adapter reads as Refused."""

import copy
import json

import kubernetes
import pytest

from tests.support.kmock_cluster import KubeServer
from workers.adapters.kube import KubeCluster
from workers.adapters.kube_errors import Refused
from workers.adapters.retry import Backoff
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import agent_pod_manifest
from workers.core.sizing import template_default

NS = "ci-agents"
AGENT = "cia-build-app-1a2b3c4d5e6f"
BUILD = BuildRequest(
    build_key="1a2b3c4d5e6f7a8b9c0d", agent_name=AGENT, source="gitlab", project="group/app",
    ref="refs/heads/main", sha="c0ffee" * 6 + "c0ff", user="dev", job="build-app",
    template="default")
# The agent injected by an init container (the default), with a service container beside the
# build, and an image that brings its own agent (no init container).
TEMPLATES = {"default": PodTemplate(),
             "services": PodTemplate.model_validate({
                 "image": "maven:3.9", "containers": [{"name": "db", "image": "postgres:16"}]}),
             "own-agent": PodTemplate.model_validate({
                 "image": "jenkins/inbound-agent:3283.v92c105e0f819-1", "agentInjection": False})}


def _manifest(template: PodTemplate) -> dict:
    return agent_pod_manifest(build=BUILD, template=template, size=template_default(template),
                              namespace=NS, jenkins_url="http://jenkins.example:8080/")


@pytest.fixture
def cluster(kube: KubeServer) -> KubeCluster:
    kube.add_namespace(NS, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    return KubeCluster(api_client=kube.api_client(), namespace=NS, backoff=Backoff(attempts=1))


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_our_agent_pods_are_admitted_in_a_restricted_namespace(kube, cluster, name):
    assert cluster.create_pod(_manifest(TEMPLATES[name])) is True
    assert kube.pod(NS, AGENT) is not None


@pytest.mark.parametrize("group", ["containers", "initContainers"])
def test_a_container_without_its_hardening_is_refused_with_the_admissions_words(
        kube, cluster, group):
    pod = copy.deepcopy(_manifest(TEMPLATES["services"]))
    victim = pod["spec"][group][0]
    del victim["securityContext"]["allowPrivilegeEscalation"]

    with pytest.raises(Refused, match="HTTP 403"):
        cluster.create_pod(pod)

    assert kube.pod(NS, AGENT) is None
    created = [r for r in kube.requests() if r.startswith(f"POST /api/v1/namespaces/{NS}/pods")]
    assert created  # asked, and refused by admission


def test_the_refusal_names_each_broken_rule_and_container_as_the_api_server_does(kube):
    kube.add_namespace(NS, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    api = kube.api_client()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
           "spec": {"initContainers": [{"name": "agent", "image": "busybox"}],
                    "containers": [{"name": "build", "image": "busybox",
                                    "ports": [{"containerPort": 80, "hostPort": 80}]}]}}
    with pytest.raises(kubernetes.client.ApiException) as caught:
        kubernetes.client.CoreV1Api(api).create_namespaced_pod(NS, pod)

    assert caught.value.status == 403
    status = json.loads(caught.value.body)
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        'pods "p" is forbidden: violates PodSecurity "restricted:latest": hostPort '
        '(container "build" uses hostPort 80), '
        'allowPrivilegeEscalation != false (containers "agent", "build" must set '
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
        '(containers "agent", "build" must set securityContext.capabilities.drop=["ALL"]), '
        'runAsNonRoot != true (pod or containers "agent", "build" must set '
        'securityContext.runAsNonRoot=true), seccompProfile (pod or containers "agent", '
        '"build" must set securityContext.seccompProfile.type to "RuntimeDefault" or '
        '"Localhost")')


def test_a_namespace_without_an_enforce_label_admits_any_pod(kube):
    kube.add_namespace(NS)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
           "spec": {"containers": [{"name": "build", "image": "busybox",
                                    "securityContext": {"privileged": True}}]}}
    kubernetes.client.CoreV1Api(kube.api_client()).create_namespaced_pod(NS, pod)
    assert kube.pod(NS, "p") is not None


HARDENED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize(("pod_context", "container_extra", "refused"), [
    # the pod's runAsNonRoot and seccomp are inherited by containers that set none
    ({"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}, {}, None),
    # a pod-level Unconfined is a bad setter even beside containers' own RuntimeDefault
    # (check_seccompProfile_restricted.go); at restricted, the baseline seccomp check is not
    # run as well (registry.go: an Overlap check runs at baseline only)
    ({"runAsNonRoot": True, "seccompProfile": {"type": "Unconfined"}},
     {"seccompProfile": {"type": "RuntimeDefault"}},
     'seccompProfile (pod must not set securityContext.seccompProfile.type to "Unconfined")'),
    # a container's explicit false is not saved by the pod's true (check_runAsNonRoot.go)
    ({"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
     {"runAsNonRoot": False},
     'runAsNonRoot != true (container "build" must not set securityContext.runAsNonRoot=false)'),
])
def test_pod_level_settings_are_inherited_and_explicit_bad_values_named(
        kube, pod_context, container_extra, refused):
    kube.add_namespace(NS, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NS},
           "spec": {"securityContext": pod_context,
                    "containers": [{"name": "build", "image": "busybox",
                                    "securityContext": {**HARDENED, **container_extra}}]}}
    api = kubernetes.client.CoreV1Api(kube.api_client())
    if refused is None:
        api.create_namespaced_pod(NS, pod)
        assert kube.pod(NS, "p") is not None
        return
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.create_namespaced_pod(NS, pod)
    assert caught.value.status == 403
    assert json.loads(caught.value.body)["message"] == (
        f'pods "p" is forbidden: violates PodSecurity "restricted:latest": {refused}')
