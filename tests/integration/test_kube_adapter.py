"""KubeCluster against kmock's Kubernetes emulator over real HTTP, through the official client.

The emulator ignores label selectors and fills in no status, so these tests also prove that the
adapter filters by label in code and reads a missing status as Pending.
"""

import json
import socket

import kubernetes
import pytest

from tests.support.kmock_cluster import PODS, SECRETS, KubeServer, running, validate_manifest
from workers.adapters.kube import LABEL_SELECTOR, KubeCluster, load_api_client
from workers.adapters.kube_errors import QuotaFull, Refused
from workers.adapters.retry import Backoff
from workers.core.errors import ConfigError, PermanentError, RetryableError
from workers.core.installation_pods import INSTALLATION_LABEL
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import (
    AGENT_SECRET_KEY, MANAGED_BY_LABEL, MANAGED_BY_VALUE, agent_pod_manifest, agent_secret_manifest,
    agent_secret_name)
from workers.core.sizing import template_default
from workers.core.warm_pods import idle_warm
from workers.core.ports import ContainerPhase, PodInfo
from workers.core.start_failures import start_failure

ONE_CALL = Backoff(attempts=1)

NS = "ci-agents"
SECRET = "agent-secret-0f9e8d7c6b5a"
AGENT = "cia-build-app-1a2b3c4d5e6f"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
# read before a create for their default limits (core.limit_ranges), once a minute
LIMIT_RANGES_PATH = f"/api/v1/namespaces/{NS}/limitranges"

BUILD = BuildRequest(
    build_key="1a2b3c4d5e6f7a8b9c0d", agent_name=AGENT, source="gitlab", project="group/app",
    ref="refs/heads/main", sha="c0ffee" * 6 + "c0ff", user="dev", job="build-app",
    template="default",
)

RICH_TEMPLATE = PodTemplate.model_validate({
    "image": "registry.example/agent:1.2",
    "cpu": {"min": "500m", "default": "1500m", "max": "2"},
    "memory": {"min": "1Gi", "default": "3Gi", "max": "4Gi"},
    "nodeSelector": {"pool": "ci"},
    "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "value": "yes", "effect": "NoExecute",
                     "tolerationSeconds": 60}],
    "volumes": [{"name": "cache", "mountPath": "/cache", "readOnly": True,
                 "persistentVolumeClaim": {"claimName": "ci-cache"}}],
    "imagePullSecrets": ["registry"],
    "env": {"GRADLE_OPTS": "-Xmx1g"},
    "websocket": True,
})


def manifest(template: PodTemplate = PodTemplate(), *, name: str = AGENT) -> dict:
    build = BuildRequest(**{**BUILD.to_dict(), "agent_name": name})
    return agent_pod_manifest(build=build, template=template, size=template_default(template),
                              namespace=NS, jenkins_url="http://jenkins.example:8080/")


@pytest.fixture
def cluster(kube: KubeServer) -> KubeCluster:  # noqa: F811
    """The adapter as the chart's ServiceAccount: a call its RBAC does not grant fails the
    test (the kube fixture) even when the adapter swallows the 403."""
    return KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS,
                       backoff=ONE_CALL)


@pytest.mark.parametrize("template", [PodTemplate(), RICH_TEMPLATE], ids=["default", "rich"])
def test_agent_pod_manifest_is_a_valid_kubernetes_pod(template):
    validate_manifest(manifest(template))


def test_validate_manifest_names_the_bad_field():
    bad = manifest()
    bad["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(AssertionError, match=r"Pod/.*spec\.containers\.0\.imagePullPolicy"):
        validate_manifest(bad)


@pytest.mark.parametrize("template", [PodTemplate(), RICH_TEMPLATE], ids=["default", "rich"])
def test_create_pod_stores_exactly_the_manifest_in_the_namespace(
        kube, cluster, template):  # noqa: F811
    sent = manifest(template)

    assert cluster.create_pod(sent) is True

    stored = kube.pod(NS, AGENT)
    assert stored == sent  # nothing dropped or renamed on the way through the client's models
    assert stored["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY_VALUE
    container = stored["spec"]["containers"][0]
    env_names = [e["name"] for e in container["env"]]
    assert env_names[:4] == ["JENKINS_URL", "JENKINS_SECRET", "JENKINS_AGENT_NAME",
                             "JENKINS_AGENT_WORKDIR"]
    assert kube.requests() == [f"GET {LIMIT_RANGES_PATH}", f"POST {PODS_PATH}"]


def test_create_pod_sends_the_requests_and_memory_limit_of_the_size(kube, cluster):  # noqa: F811
    cluster.create_pod(manifest(RICH_TEMPLATE))

    resources = kube.pod(NS, AGENT)["spec"]["containers"][0]["resources"]
    # the build's 1500m and 3Gi, plus the injected agent's own 100m and 256Mi
    assert resources == {"requests": {"cpu": "1600m", "memory": "3328Mi"},
                         "limits": {"memory": "3328Mi"}}


def test_create_pod_twice_returns_false_and_leaves_one_pod(kube, cluster):  # noqa: F811
    assert cluster.create_pod(manifest()) is True

    assert cluster.create_pod(manifest()) is False

    assert [p["metadata"]["name"] for p in kube.pods(NS)] == [AGENT]


def test_create_pod_over_a_foreign_pod_of_that_name_raises_permanent_error(
        kube, cluster):  # noqa: F811
    kube.add_foreign_pod(NS, AGENT, labels={"app": "someone-else"})

    with pytest.raises(PermanentError, match=f"{NS}/{AGENT}.*not managed by"):
        cluster.create_pod(manifest())

    assert kube.pod(NS, AGENT)["metadata"]["labels"] == {"app": "someone-else"}


def test_create_pod_refuses_a_manifest_for_another_namespace(kube, cluster):  # noqa: F811
    other = manifest()
    other["metadata"]["namespace"] = "default"

    with pytest.raises(PermanentError, match="namespace"):
        cluster.create_pod(other)

    assert kube.requests() == []


def test_create_pod_refused_by_the_client_models_raises_permanent_error_without_secret(
        kube, cluster):  # noqa: F811
    bad = manifest()
    bad["spec"]["containers"][0]["env"][1]["valueFrom"] = SECRET  # not an object: refused

    with pytest.raises(PermanentError) as caught:
        cluster.create_pod(bad)

    assert "env.1.valueFrom" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert kube.requests() == [f"GET {LIMIT_RANGES_PATH}"]  # no Secret, no pod sent


def test_get_pod_without_status_from_the_server_is_pending(cluster):
    cluster.create_pod(manifest())

    assert cluster.get_pod(AGENT) == PodInfo(name=AGENT, phase="Pending", node=None,
                                             labels=manifest()["metadata"]["labels"],
                                             annotations=manifest()["metadata"]["annotations"],
                                             agent_container="jnlp",  # JENKINS_AGENT_NAME's
                                             active_deadline_seconds=manifest()["spec"][
                                                 "activeDeadlineSeconds"])


def test_get_pod_reflects_the_phase_and_node_the_kubelet_set(kube, cluster):  # noqa: F811
    cluster.create_pod(manifest())

    kube.set_pod_phase(NS, AGENT, "Running", node="node-a")
    running = cluster.get_pod(AGENT)
    kube.set_pod_phase(NS, AGENT, "Succeeded")
    succeeded = cluster.get_pod(AGENT)

    assert (running.phase, running.node) == ("Running", "node-a")
    assert (succeeded.phase, succeeded.node) == ("Succeeded", "node-a")


def test_get_pod_reads_the_container_states_the_kubelet_wrote(kube, cluster):  # noqa: F811
    cluster.create_pod(manifest())
    kube.image_pull_backoff(NS, AGENT)
    pulling = cluster.get_pod(AGENT)
    kube.kubelet_status(NS, AGENT, phase="Running", node="node-a",
                        states={"jnlp": running(1714557630.0)})
    up = cluster.get_pod(AGENT)

    (state,) = [c for c in pulling.containers if c.name == "jnlp"]
    assert (state.phase, state.reason) == (ContainerPhase.WAITING, "ImagePullBackOff")
    image = next(c["image"] for c in manifest()["spec"]["containers"] if c["name"] == "jnlp")
    assert state.message.startswith(f'Back-off pulling image "{image}": ErrImagePull: ')
    assert state.message.endswith(": not found")  # for good: fails at once
    assert start_failure(pulling).reason == "ImagePullBackOff"
    assert (up.phase, up.node, up.running_since) == ("Running", "node-a", 1714557630.0)
    assert start_failure(up) is None
    kube.evict(NS, AGENT)
    assert start_failure(cluster.get_pod(AGENT)).reason == "Evicted"


def test_get_pod_is_none_for_a_missing_or_foreign_pod(kube, cluster):  # noqa: F811
    kube.add_foreign_pod(NS, "someone-elses-pod")

    assert cluster.get_pod("no-such-pod") is None
    assert cluster.get_pod("someone-elses-pod") is None


def test_delete_pod_removes_it_and_a_second_delete_returns_false(kube, cluster):  # noqa: F811
    cluster.create_pod(manifest())

    assert cluster.delete_pod(AGENT) is True
    assert kube.pod(NS, AGENT) is None
    assert cluster.get_pod(AGENT) is None

    assert cluster.delete_pod(AGENT) is False


def test_delete_pod_never_deletes_a_foreign_pod(kube, cluster):  # noqa: F811
    kube.add_foreign_pod(NS, "someone-elses-pod")

    assert cluster.delete_pod("someone-elses-pod") is False

    assert kube.pod(NS, "someone-elses-pod") is not None
    assert not [r for r in kube.requests() if r.startswith("DELETE")]


def test_patch_pod_metadata_merges_labels_and_annotations_into_our_pod_only(
        kube, cluster):  # noqa: F811
    """workers.warm.protect relabels and annotates a claimed warm agent's pod in one PATCH: the
    other labels and annotations are kept (the budget's selector reads managed-by and
    installation too); another's pod is never patched, and a pod gone answers False."""
    cluster.create_pod(idle_warm(manifest()))
    before = kube.pod(NS, AGENT)["metadata"]
    kube.add_foreign_pod(NS, "someone-elses-pod")
    labels = {"ci-autoscaler.io/warm": "claimed"}
    annotations = {"karpenter.sh/do-not-disrupt": "true",
                   "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
    assert "karpenter.sh/do-not-disrupt" not in before["annotations"]  # the patch adds it

    assert cluster.patch_pod_metadata(AGENT, labels=labels, annotations=annotations) is True
    after = kube.pod(NS, AGENT)["metadata"]
    assert after["labels"] == {**before["labels"], **labels}
    assert after["annotations"] == {**before["annotations"], **annotations}
    assert cluster.patch_pod_metadata("someone-elses-pod", labels=labels,
                                      annotations=annotations) is False
    assert kube.pod(NS, "someone-elses-pod")["metadata"]["labels"] == {"app": "other"}
    assert cluster.patch_pod_metadata("cia-build-gone-000000000000", labels={"a": "b"},
                                      annotations={}) is False
    assert [r.split()[1] for r in kube.requests() if r.startswith("PATCH")] == [
        f"/api/v1/namespaces/{NS}/pods/{AGENT}"]


def test_delete_pod_never_deletes_a_pod_that_only_looks_like_ours(kube, cluster):  # noqa: F811
    kube.add_foreign_pod(NS, "lookalike", labels={MANAGED_BY_LABEL: "helm"})

    assert cluster.delete_pod("lookalike") is False
    assert kube.pod(NS, "lookalike") is not None


def test_list_pods_returns_only_ours_although_the_server_ignores_selectors(
        kube, cluster):  # noqa: F811
    cluster.create_pod(manifest(name="cia-a-000000000001"))
    cluster.create_pod(manifest(name="cia-b-000000000002"))
    kube.set_pod_phase(NS, "cia-b-000000000002", "Running", node="node-b")
    kube.add_foreign_pod(NS, "someone-elses-pod")
    kube.add_foreign_pod(NS, "lookalike", labels={MANAGED_BY_LABEL: "helm"})
    assert len(kube.pods(NS)) == 4  # the server will hand back all of them

    pods = cluster.list_pods()

    assert sorted((p.name, p.phase, p.node) for p in pods) == [
        ("cia-a-000000000001", "Pending", None), ("cia-b-000000000002", "Running", "node-b")]
    # without an installation identity: none of the pods labelled with one
    assert kube.requests()[-1] == \
        f"GET {PODS_PATH}?labelSelector={LABEL_SELECTOR},!{INSTALLATION_LABEL}"


def test_list_pods_only_looks_in_its_namespace(kube, cluster):  # noqa: F811
    kube.add_foreign_pod("other-ns", "x", labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE})

    assert cluster.list_pods() == []


def test_a_500_on_create_raises_retryable_error_naming_pod_and_status_not_secret(
        kube, cluster):  # noqa: F811
    kube.fail("post", PODS_PATH, status=500, times=1)

    with pytest.raises(RetryableError) as caught:
        cluster.create_pod(manifest())

    message = str(caught.value)
    assert AGENT in message and "500" in message
    assert SECRET not in message
    assert isinstance(caught.value.__cause__, kubernetes.client.ApiException)


@pytest.mark.parametrize(("method", "path", "status", "error"), [
    ("get", f"{PODS_PATH}/{AGENT}", 500, RetryableError),
    ("get", f"{PODS_PATH}/{AGENT}", 503, RetryableError),
    ("get", PODS_PATH, 429, RetryableError),
    ("delete", f"{PODS_PATH}/{AGENT}", 403, PermanentError),
    ("post", PODS_PATH, 422, PermanentError),
    ("get", f"{PODS_PATH}/{AGENT}", 401, PermanentError),
])
def test_api_errors_become_retryable_or_permanent(kube, method, path, status, error):  # noqa: F811
    cluster = KubeCluster(api_client=kube.api_client(), namespace=NS, backoff=ONE_CALL)
    if method != "post":
        cluster.create_pod(manifest())
    kube.fail(method, path, status=status, reason="Injected")
    call = {"get": lambda: (cluster.list_pods() if path == PODS_PATH else cluster.get_pod(AGENT)),
            "delete": lambda: cluster.delete_pod(AGENT),
            "post": lambda: cluster.create_pod(manifest())}[method]

    with pytest.raises(error, match=f"HTTP {status}") as caught:
        call()

    assert SECRET not in str(caught.value)


def test_a_timed_out_call_raises_retryable_error(kube):  # noqa: F811
    cluster = KubeCluster(api_client=kube.api_client(), namespace=NS, request_timeout=0.2,
                          backoff=ONE_CALL)
    kube.stall("get", PODS_PATH, seconds=2, times=4)  # the call and urllib3's 3 retries

    with pytest.raises(RetryableError, match=f"pods in {NS}: list failed: ReadTimeoutError"):
        cluster.list_pods()


def test_an_unreachable_api_raises_retryable_error():
    with socket.socket() as sock:  # a port that was free a moment ago: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    api_client = kubernetes.client.ApiClient(config)
    cluster = KubeCluster(api_client=api_client, namespace=NS, request_timeout=2,
                          backoff=ONE_CALL)

    with pytest.raises(RetryableError, match=f"{NS}/{AGENT}: read failed: NewConnectionError"):
        cluster.get_pod(AGENT)
    api_client.close()


def test_load_api_client_reads_the_kubeconfig_file_as_in_production(
        kube, monkeypatch):  # noqa: F811
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # a path given still wins
    default_host = kubernetes.client.Configuration.get_default_copy().host

    api_client = load_api_client(kubeconfig=str(kube.kubeconfig_path))
    cluster = KubeCluster(api_client=api_client, namespace=NS)
    cluster.create_pod(manifest())

    assert [p.name for p in cluster.list_pods()] == [AGENT]
    assert api_client.configuration.host == kube.url
    assert kubernetes.client.Configuration.get_default_copy().host == default_host
    api_client.close()


def test_load_api_client_falls_back_to_the_KUBECONFIG_variable(kube, monkeypatch):  # noqa: F811
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))

    api_client = load_api_client()

    assert api_client.configuration.host == kube.url
    api_client.close()


def test_a_kubeconfig_that_is_not_there_is_named_with_where_it_came_from(tmp_path, monkeypatch):
    """A mistyped KUBECONFIG read "Invalid kube-config file. No configuration found." (the
    client skips a path that does not exist): which file, and from where, was left to guess."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "no-such-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(ConfigError) as err:
        load_api_client()
    [problem] = err.value.problems
    assert f"KUBECONFIG {missing}: no such file" in problem, problem
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    with pytest.raises(ConfigError, match=r"~/.kube/config: no such file, and KUBECONFIG is not set"):
        load_api_client()


def test_load_api_client_in_a_pod_uses_the_service_account(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    # No service account token is mounted here, so in-cluster loading is refused by name.
    with pytest.raises(ConfigError, match="[Ss]ervice token"):
        load_api_client()


def test_load_api_client_without_any_config_raises_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    with pytest.raises(ConfigError, match="Kubernetes client configuration"):
        load_api_client(kubeconfig=str(tmp_path / "missing"))


def test_a_retried_create_finds_its_secret_and_updates_it(cluster, kube):
    """A provision run again (its pod create failed after the Secret was made) finds the
    agent's Secret there: ours, so updated in place (a PATCH: kmock answers a PUT 404, which
    turned every such retry into a permanent failure), and the pod is then made once."""
    build = BuildRequest(**{**BUILD.to_dict(), "agent_name": AGENT})
    first = agent_secret_manifest(build=build, namespace=NS, secret="first-secret")
    again = agent_secret_manifest(build=build, namespace=NS, secret="second-secret")
    api = kubernetes.client.CoreV1Api(kube.api_client())
    api.create_namespaced_secret(NS, first)
    assert cluster.create_pod(manifest(), secret=again) is True
    assert cluster.create_pod(manifest(), secret=again) is False  # the pod is there: ours
    stored = api.read_namespaced_secret(agent_secret_name(AGENT), NS)
    # kmock keeps stringData as sent (an API server folds it into data)
    assert (stored.string_data or {}).get(AGENT_SECRET_KEY) == "second-secret"
    assert stored.metadata.labels[MANAGED_BY_LABEL] == MANAGED_BY_VALUE


# The API server's own words (k8s.io/apiserver: resourcequota/controller.go,
# responsewriters/errors.go; k8s.io/pod-security-admission: "violates PodSecurity").
OVER_QUOTA = (f'pods "{AGENT}" is forbidden: exceeded quota: compute, requested: '
              "requests.cpu=2, used: requests.cpu=8, limited: requests.cpu=8")
# More than the quota's hard limit in all: no pod ending ever makes room (named in the error:
# the plugin's quantities only, nothing of the pod).
OVER_WHOLE_QUOTA = (f'pods "{AGENT}" is forbidden: exceeded quota: compute, requested: '
                    "limits.memory=80Gi,requests.cpu=16, used: limits.memory=0,requests.cpu=4, "
                    "limited: limits.memory=64Gi,requests.cpu=8")
NO_RBAC = ('pods is forbidden: User "system:serviceaccount:ci:ci-autoscaler" cannot create '
           f'resource "pods" in API group "" in the namespace "{NS}"')
POD_SECURITY = (f'pods "{AGENT}" is forbidden: violates PodSecurity "restricted:latest": '
                'allowPrivilegeEscalation != false (container "jnlp" must set '
                "securityContext.allowPrivilegeEscalation=false)")


@pytest.mark.parametrize(("status", "message", "error"), [
    (403, OVER_QUOTA, QuotaFull),  # the namespace is full for now: retryable, a wait
    (403, OVER_WHOLE_QUOTA, Refused),  # never fits: "ResourceQuota compute allows ..."
    (403, NO_RBAC, PermanentError),  # our service account lacks a permission: not the pod's
    (403, POD_SECURITY, Refused),  # the pod itself, every time
    (422, f'Pod "{AGENT}" is invalid: spec.containers[0].image: Required value', Refused),
])
def test_a_refused_create_is_told_apart_by_the_servers_message_which_it_never_repeats(
        kube, status, message, error):  # noqa: F811
    cluster = KubeCluster(api_client=kube.api_client(), namespace=NS, backoff=ONE_CALL)
    kube.fail("post", PODS_PATH, status=status, reason="Forbidden" if status == 403 else
              "Invalid", message=message)

    with pytest.raises(error, match=f"HTTP {status}") as caught:
        cluster.create_pod(manifest())

    assert type(caught.value) is error  # Refused is a PermanentError: the exact class counts
    assert message.split(": ", 1)[1][:20] not in str(caught.value)
    assert SECRET not in str(caught.value)
    if error is QuotaFull:  # what the build waiting on it shows: the plugin's quantities
        assert caught.value.words == ("ResourceQuota compute: requests.cpu 8 of 8 used, the "
                                      "pod asks 2")


def test_a_full_quota_is_asked_once_per_create_not_retried_within_the_call(kube):  # noqa: F811
    """A quota frees when a pod ends and the quota controller has counted it, not within a
    backoff's second: the build waits with reason quota and every release and reconcile pass
    tries it again. Retried in the call like a 503, each attempt sent four creates (three
    refused for nothing; a hundred builds waiting on a paused namespace, four hundred a
    pass) and slept between them. Real ResourceQuota admission (tests.support.resource_quota)."""
    cluster = KubeCluster(api_client=kube.api_client(), namespace=NS,
                          backoff=Backoff(attempts=4, base_seconds=0.0))
    kube.add_resource_quota(NS, "pause", {"pods": "0"})

    with pytest.raises(QuotaFull):
        cluster.create_pod(manifest())

    assert sum(1 for r in kube.requests() if r.startswith(f"POST {PODS_PATH}")) == 1
    assert kube.pod(NS, AGENT) is None


def test_a_pod_made_again_under_its_name_leaves_its_secret_owned_by_the_new_pod_only(
        cluster, kube):
    """A build placed again under the same pod name (its pod drained or deleted by hand: the
    Secret stays until the garbage collector comes) finds its Secret owned by the old pod.
    Owning it by the new one added an owner (the API server merges ownerReferences by uid),
    so the Secret kept the old pod's too, one more at every re-provision."""
    kube.assign_uids()
    secret = agent_secret_manifest(build=BUILD, namespace=NS, secret=SECRET)
    assert cluster.create_pod(manifest(), secret=secret) is True
    old = kube.pod(NS, AGENT)["metadata"]["uid"]
    kube.delete_pod(NS, AGENT)  # the pod only, as a drain does

    assert cluster.create_pod(manifest(), secret=secret) is True

    new = kube.pod(NS, AGENT)["metadata"]["uid"]
    owners = kube.secrets(NS)[agent_secret_name(AGENT)]["metadata"]["ownerReferences"]
    assert old != new and [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("Pod", AGENT, new)]


def test_a_secret_of_a_gone_pod_is_not_collected_under_the_pod_made_again(cluster, kube):
    """The garbage collector deletes an object whose owners are all gone: a Secret still owned
    by the old pod only, when the collector comes between the Secret's update and the new
    pod's owning it, was deleted under the new pod, which then never started
    (CreateContainerConfigError: secret not found); owning it answered 404, and the provision
    failed for good."""
    kube.assign_uids()
    secret = agent_secret_manifest(build=BUILD, namespace=NS, secret=SECRET)
    assert cluster.create_pod(manifest(), secret=secret) is True
    kube.delete_pod(NS, AGENT)  # its Secret left to the collector, which is late
    kube.collect_garbage_before("create", PODS)

    assert cluster.create_pod(manifest(), secret=secret) is True

    new = kube.pod(NS, AGENT)["metadata"]["uid"]
    stored = kube.secrets(NS)[agent_secret_name(AGENT)]
    assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [new]


def test_a_secret_collected_between_its_conflict_and_its_read_is_made_again(cluster, kube):
    """The garbage collector deleting the old pod's Secret after the create found it (409)
    and before the read: the read answered 404, which failed the provision for good."""
    kube.assign_uids()
    secret = agent_secret_manifest(build=BUILD, namespace=NS, secret=SECRET)
    assert cluster.create_pod(manifest(), secret=secret) is True
    kube.delete_pod(NS, AGENT)
    kube.collect_garbage_before("fetch", SECRETS)

    assert cluster.create_pod(manifest(), secret=secret) is True

    new = kube.pod(NS, AGENT)["metadata"]["uid"]
    stored = kube.secrets(NS)[agent_secret_name(AGENT)]
    assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [new]


def test_requests_do_not_read_the_environment_again_and_its_proxy_still_applies(
        kube, monkeypatch):  # noqa: F811
    """The token's refresh hook sets the host before every request; with the proxy pinned at
    load (load_api_client) that no longer walks os.environ for proxies each time, and the
    proxy the environment gave at load is still the one the client uses."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    api_client = load_api_client(kubeconfig=str(kube.kubeconfig_path))
    reads = []
    real = kubernetes.client.configuration.getproxies
    monkeypatch.setattr(kubernetes.client.configuration, "getproxies",
                        lambda: reads.append(1) or real())
    cluster = KubeCluster(api_client=api_client, namespace=NS)
    cluster.create_pod(manifest())
    assert cluster.get_pod(AGENT) is not None
    assert reads == []
    api_client.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens: a call through the proxy cannot connect
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    api_client = load_api_client(kubeconfig=str(kube.kubeconfig_path))
    assert api_client.configuration.proxy == f"http://127.0.0.1:{dead}"
    cluster = KubeCluster(api_client=api_client, namespace=NS, backoff=ONE_CALL)
    with pytest.raises(RetryableError):
        cluster.get_pod(AGENT)
    api_client.close()


def test_kmock_grants_the_charts_service_account_its_rbac_alone(kube):  # noqa: F811
    """A call outside the chart's rights is the API server's 403 for the service account, and
    every other client (the tests' own) is still an admin."""
    api_client = load_api_client(kubeconfig=str(kube.as_chart_service_account(NS)))
    core = kubernetes.client.CoreV1Api(api_client)
    kube.add_pod("default", "theirs")

    assert [p.metadata.name for p in core.list_pod_for_all_namespaces().items] == ["theirs"]
    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.delete_namespaced_pod("theirs", "default")
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        'pods "theirs" is forbidden: User "system:serviceaccount:ci-autoscaler:ci-autoscaler" '
        'cannot delete resource "pods" in API group "" in the namespace "default"')
    assert kube.pod("default", "theirs") is not None
    assert kube.forbidden == [f"DELETE /api/v1/namespaces/default/pods/theirs: "
                              f"{json.loads(refused.value.body)['message']}"]
    kubernetes.client.CoreV1Api(kube.api_client()).delete_namespaced_pod("theirs", "default")
    assert kube.pod("default", "theirs") is None
    api_client.close()
    kube.forbidden.clear()  # refused on purpose: the kube fixture fails a test on any other
