"""The agent pod (workers.core.pods) of several templates: the injected agent, the form for an
image with its own agent, Pod Security `restricted` rule by rule, the do-not-disrupt
annotations, a DinD patch, and requests that agree with what placement counted."""

import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from workers.adapters.kube_objects import effective_request
from workers.config.config_file import parse_file_config
from workers.core import podsize
from workers.core.cluster import Resources
from workers.core.quantity import cpu_millis, format_memory, memory_bytes
from workers.core.models import DEFAULT_AGENT_IMAGE, BuildRequest, PodTemplate
from workers.core.pod_security import Level, required_level, violations
from workers.core.pods import (
    AGENT_SECRET_KEY, DO_NOT_DISRUPT, agent_pod_manifest, agent_secret_manifest,
    agent_secret_name)
from workers.config.pod_schema import KUBERNETES_SCHEMA_VERSION

SECRET = "0123456789abcdef" * 4
BUILD = BuildRequest(build_key="k" * 20, agent_name="ci-agent-1", source="gitlab",
                     project="g/p", ref="refs/heads/main", sha="a" * 40, user="u", job="build",
                     template="t")
SIZE = Resources(1500, 3 * 2**30)

TEMPLATES = {
    "default": {},
    "maven-and-postgres": {"containers": [
        {"name": "maven", "image": "maven:3.9-eclipse-temurin-21", "build": True,
         "env": {"MAVEN_OPTS": "-Xmx1g"}},
        {"name": "postgres", "image": "postgres:16", "cpu": "250m", "memory": "512Mi"}]},
    "image-with-services": {"image": "maven:3.9-eclipse-temurin-21", "cpuLimitFactor": 2,
                            "containers": [{"name": "redis", "image": "redis:7"}]},
    "own-java-websocket": {"image": "eclipse-temurin:21-jdk", "websocket": True,
                           "agentJava": "/opt/java/openjdk/bin/java", "agentMemory": "512Mi",
                           "runAsUser": 2000, "runAsGroup": 2000, "fsGroup": None},
    "own-agent": {"agentInjection": False, "image": "registry.example.com/agent-maven:1",
                  "containers": [{"name": "postgres", "image": "postgres:16"}]},
    "volumes": {"workspaceVolume": {"ephemeral": {"volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}}},
        "volumes": [{"name": "m2", "mountPath": "/m2", "accessMode": "ReadWriteMany",
                     "persistentVolumeClaim": {"claimName": "m2"}},
                    {"name": "settings", "mountPath": "/etc/maven", "readOnly": True,
                     "configMap": {"name": "maven-settings"}},
                    # restricted allows these too; refused at load, as no volume source
                    {"name": "vault", "mountPath": "/var/run/vault", "readOnly": True,
                     "projected": {"sources": [
                         {"serviceAccountToken": {"audience": "vault", "path": "token"}},
                         {"configMap": {"name": "vault-ca"}}]}},
                    {"name": "podinfo", "mountPath": "/etc/podinfo", "downwardAPI": {
                        "items": [{"path": "labels", "fieldRef": {
                            "fieldPath": "metadata.labels"}}]}},
                    {"name": "creds", "mountPath": "/mnt/creds", "readOnly": True, "csi": {
                        "driver": "secrets-store.csi.k8s.io", "readOnly": True,
                        "volumeAttributes": {"secretProviderClass": "ci"}}}]},
    "memory-volumes": {"workspaceVolume": {"emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                       "volumes": [{"name": "tmp", "mountPath": "/tmp",
                                    "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}},
                                   {"name": "scratch", "mountPath": "/scratch",
                                    "emptyDir": {"sizeLimit": "8Gi"}}],
                       "podSpecPatch": {"volumes": [{"name": "shm", "emptyDir": {
                           "medium": "Memory", "sizeLimit": "256Mi"}}]}},
}


def render(fields: dict[str, Any], size: Resources = SIZE) -> dict[str, Any]:
    template = PodTemplate.model_validate(fields)
    return agent_pod_manifest(build=BUILD, template=template, size=size, namespace="ci",
                              jenkins_url="https://jenkins.example.com", hostname="node-a")


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return (spec.get("initContainers") or []) + spec["containers"]


# The Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards,
# v1.30), every field rule of `baseline` and `restricted`, written out from the profile's
# tables and not with workers.core.pod_security, which test_pod_security checks on its own.
def _sc(c):
    return c.get("securityContext") or {}


def _pod_sc(pod):
    return pod["spec"].get("securityContext") or {}


BASELINE_VOLUMES_FORBIDDEN = {"hostPath"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
RULES = {
    "baseline: HostProcess": lambda pod: not (_pod_sc(pod).get("windowsOptions") or {}).get(
        "hostProcess") and not any((_sc(c).get("windowsOptions") or {}).get("hostProcess")
                                   for c in containers(pod)),
    "baseline: Host Namespaces": lambda pod: not any(
        pod["spec"].get(k) for k in ("hostNetwork", "hostPID", "hostIPC")),
    "baseline: Privileged Containers": lambda pod: not any(
        _sc(c).get("privileged") for c in containers(pod)),
    "baseline: Capabilities": lambda pod: all(
        set((_sc(c).get("capabilities") or {}).get("add") or []) <= {
            "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
            "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
        for c in containers(pod)),
    "baseline: HostPath Volumes": lambda pod: not any(
        "hostPath" in v for v in pod["spec"].get("volumes") or []),
    "baseline: Host Ports": lambda pod: not any(
        p.get("hostPort") for c in containers(pod) for p in c.get("ports") or []),
    "baseline: AppArmor": lambda pod: all(
        (_sc(c).get("appArmorProfile") or {}).get("type") in (None, "RuntimeDefault",
                                                              "Localhost")
        for c in containers(pod)) and not any(
        k.startswith("container.apparmor.security.beta.kubernetes.io/")
        for k in pod["metadata"].get("annotations") or {}),
    "baseline: SELinux": lambda pod: all(
        not (sc.get("seLinuxOptions") or {}).get("user")
        and not (sc.get("seLinuxOptions") or {}).get("role")
        and (sc.get("seLinuxOptions") or {}).get("type", "") in (
            "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
        for sc in [_pod_sc(pod)] + [_sc(c) for c in containers(pod)]),
    "baseline: /proc Mount Type": lambda pod: all(
        _sc(c).get("procMount") in (None, "Default") for c in containers(pod)),
    "baseline: Seccomp": lambda pod: all(
        (sc.get("seccompProfile") or {}).get("type") != "Unconfined"
        for sc in [_pod_sc(pod)] + [_sc(c) for c in containers(pod)]),
    "baseline: Sysctls": lambda pod: not _pod_sc(pod).get("sysctls"),
    "restricted: Volume Types": lambda pod: all(
        set(v) - {"name"} <= RESTRICTED_VOLUMES for v in pod["spec"].get("volumes") or []),
    "restricted: Privilege Escalation": lambda pod: all(
        _sc(c).get("allowPrivilegeEscalation") is False for c in containers(pod)),
    "restricted: Running as Non-root": lambda pod: all(
        _sc(c).get("runAsNonRoot", _pod_sc(pod).get("runAsNonRoot")) is True
        for c in containers(pod)),
    "restricted: Running as Non-root user": lambda pod: _pod_sc(pod).get("runAsUser") != 0
        and all(_sc(c).get("runAsUser") != 0 for c in containers(pod)),
    "restricted: Seccomp": lambda pod: all(
        (_sc(c).get("seccompProfile") or _pod_sc(pod).get("seccompProfile") or {}).get("type")
        in ("RuntimeDefault", "Localhost") for c in containers(pod)),
    "restricted: Capabilities": lambda pod: all(
        "ALL" in ((_sc(c).get("capabilities") or {}).get("drop") or [])
        and set((_sc(c).get("capabilities") or {}).get("add") or []) <= {"NET_BIND_SERVICE"}
        for c in containers(pod)),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", TEMPLATES)
def test_every_rendered_pod_meets_each_rule_of_the_restricted_profile(name, rule):
    pod = render(TEMPLATES[name])
    assert RULES[rule](pod), (name, rule)


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_rendered_pod_is_valid_restricted_and_not_to_be_disrupted(name):
    pod = render(TEMPLATES[name])
    kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
    assert violations(pod, Level.RESTRICTED) == [] and required_level(pod) is Level.RESTRICTED
    annotations = pod["metadata"]["annotations"]
    assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert all(DO_NOT_DISRUPT[k] == annotations[k] for k in DO_NOT_DISRUPT)


def test_a_rule_check_above_fails_on_a_pod_that_breaks_it():
    """The rule table can fail: a pod stripped of its hardening breaks the restricted rules."""
    pod = render({})
    del pod["spec"]["securityContext"]
    for c in containers(pod):
        del c["securityContext"]
    broken = [rule for rule, holds in RULES.items() if not holds(pod)]
    assert broken == ["restricted: Privilege Escalation", "restricted: Running as Non-root",
                      "restricted: Seccomp", "restricted: Capabilities"]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("size", [SIZE, Resources(500, 512 * 2**20)])
def test_the_pods_requests_are_what_placement_counted(name, size):
    """The scheduler's effective request (containers' sum, or an init container if larger)
    equals podsize.pod_total, which sizing and placement fit."""
    template = PodTemplate.model_validate(TEMPLATES[name])
    pod = render(TEMPLATES[name], size)
    assert effective_request(pod["spec"]) == podsize.pod_total(template, size)
    placed = podsize.placement_template(template)
    assert podsize.build_size(template, podsize.pod_total(template, size)) == size.clamp_max(
        Resources(template.cpu.max, template.memory.max)).clamp_min(
        Resources(template.cpu.min, template.memory.min))
    assert placed.memory.max == podsize.pod_total(
        template, Resources(template.cpu.max, template.memory.max)).memory_bytes


def test_memory_backed_volumes_count_in_the_build_container_s_memory():
    """A medium Memory emptyDir is a tmpfs whose pages are charged to the memory cgroup of the
    container that writes them (Kubernetes docs, "Volumes", emptyDir: "files you write count
    against your container's memory limit"); kube-scheduler counts no sizeLimit. Left out, a
    build filling its 512Mi /tmp was OOM-killed at the size sizing gave its own processes.
    The build container asks its size, the agent's and each sizeLimit (not a disk emptyDir's),
    and placement fits that total."""
    template = PodTemplate.model_validate(TEMPLATES["memory-volumes"])
    [build] = render(TEMPLATES["memory-volumes"])["spec"]["containers"]
    tmpfs = (2048 + 512 + 256) * 2**20
    expected = format_memory(SIZE.memory_bytes + 256 * 2**20 + tmpfs)
    assert build["resources"]["requests"]["memory"] == expected
    assert build["resources"]["limits"]["memory"] == expected
    assert podsize.pod_total(template, SIZE).memory_bytes == memory_bytes(expected)


SPLITS = {**TEMPLATES, "own-agent-marked-build": {
    "agentInjection": False, "image": "registry.example.com/agent:1",
    "containers": [{"name": "gradle", "image": "gradle:8", "build": True},
                   {"name": "node", "image": "node:22", "build": True},
                   {"name": "postgres", "image": "postgres:16", "cpu": "250m"}]},
    "own-agent-marked-build-tmpfs": {
        "agentInjection": False, "image": "registry.example.com/agent:1",
        "volumes": [{"name": "tmp", "mountPath": "/tmp",
                     "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
        "containers": [{"name": "gradle", "image": "gradle:8", "build": True},
                       {"name": "node", "image": "node:22", "build": True}]}}


@pytest.mark.parametrize("name", SPLITS)
def test_container_requests_are_the_rendered_pods_container_by_container(name):
    """podsize.container_requests (a scale-up pod's pause containers) is what the agent pod's
    containers ask, one by one (in any order): a LimitRange's per-container max or default
    limit then meets both pods alike, not a scale-up pod summing them in one container."""
    template = PodTemplate.model_validate(SPLITS[name])
    pod = render(SPLITS[name], SIZE)
    asked = sorted((cpu_millis(c["resources"]["requests"]["cpu"]),
                    memory_bytes(c["resources"]["requests"]["memory"]))
                   for c in pod["spec"]["containers"])
    assert sorted((r.cpu_millis, r.memory_bytes)
                  for r in podsize.container_requests(template, SIZE)) == asked
    assert Resources.total(podsize.container_requests(template, SIZE)) == podsize.pod_total(
        template, SIZE)


def test_the_build_container_runs_the_copied_agent_from_its_environment():
    pod = render(TEMPLATES["maven-and-postgres"])
    [init] = pod["spec"]["initContainers"]
    assert init["image"] == DEFAULT_AGENT_IMAGE and ":latest" not in DEFAULT_AGENT_IMAGE
    assert init["command"] == ["cp", "-R", "/opt/java/openjdk", "/usr/share/jenkins/agent.jar",
                               "/jenkins-agent/"]
    maven, postgres = pod["spec"]["containers"]
    assert maven["command"] == ["/jenkins-agent/openjdk/bin/java"]
    assert maven["args"][maven["args"].index("-secret") + 1] == "$(JENKINS_SECRET)"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in maven["env"]}
    # Every $(VAR) in the arguments is defined before use in the same container's env.
    for arg in maven["args"]:
        if arg.startswith("$("):
            assert arg[2:-1] in env, arg
    assert env["JENKINS_SECRET"] == {"secretKeyRef": {"name": f"{BUILD.agent_name}-secret",
                                                      "key": "jenkins-secret"}}
    assert env["MAVEN_OPTS"] == "-Xmx1g"
    # 1.5 cores and 3Gi for the build, plus the agent's 100m and 256Mi
    assert maven["resources"] == {"requests": {"cpu": "1600m", "memory": "3328Mi"},
                                  "limits": {"memory": "3328Mi"}}
    # The secret is in no container: the build container's env refers to the agent's Secret.
    assert "secretKeyRef" not in str(postgres) + str(init) + str(pod["metadata"])
    assert "command" not in postgres and "tty" not in postgres
    assert {"name": "jenkins-agent", "mountPath": "/jenkins-agent", "readOnly": True} \
        in maven["volumeMounts"]
    assert all(m["name"] != "jenkins-agent" for m in postgres["volumeMounts"])


def test_the_images_own_java_the_websocket_and_the_ids_are_the_templates():
    pod = render(TEMPLATES["own-java-websocket"])
    [init] = pod["spec"]["initContainers"]
    assert init["command"] == ["cp", "-R", "/usr/share/jenkins/agent.jar", "/jenkins-agent/"]
    [jnlp] = pod["spec"]["containers"]
    assert jnlp["image"] == "eclipse-temurin:21-jdk"
    assert jnlp["command"] == ["/opt/java/openjdk/bin/java"]
    assert jnlp["args"][0] == f"-XX:MaxRAM={512 * 2**20}" and jnlp["args"][-1] == "-webSocket"
    assert {"name": "JENKINS_WEB_SOCKET", "value": "true"} in jnlp["env"]
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "runAsUser": 2000,
                                              "runAsGroup": 2000,
                                              "seccompProfile": {"type": "RuntimeDefault"}}


def test_a_cpu_limit_counts_the_agent_too():
    [jnlp, redis] = render(TEMPLATES["image-with-services"])["spec"]["containers"]
    assert jnlp["resources"]["limits"] == {"memory": "3328Mi", "cpu": "3200m"}  # 2 x 1.6
    assert redis["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                  "limits": {"memory": "256Mi"}}


def test_without_injection_the_pod_is_the_jnlp_form_field_for_field():
    pod = render({"agentInjection": False, "workdir": "/w", "env": {"TZ": "UTC"},
                  "containers": [{"name": "maven", "image": "maven:3.9", "build": True},
                                 {"name": "db", "image": "postgres:16", "command": ["postgres"]}]})
    hardened = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    mounts = [{"name": "workspace", "mountPath": "/w"}]
    assert pod["spec"] == {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": 3600,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {"name": "jnlp", "image": DEFAULT_AGENT_IMAGE,
             "env": [{"name": "JENKINS_URL", "value": "https://jenkins.example.com"},
                     {"name": "JENKINS_SECRET", "valueFrom": {"secretKeyRef": {
                         "name": "ci-agent-1-secret", "key": "jenkins-secret"}}},
                     {"name": "JENKINS_AGENT_NAME", "value": "ci-agent-1"},
                     {"name": "JENKINS_AGENT_WORKDIR", "value": "/w"},
                     {"name": "TZ", "value": "UTC"}],
             "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                           "limits": {"memory": "256Mi"}},
             "volumeMounts": mounts, "securityContext": hardened},
            {"name": "maven", "image": "maven:3.9", "workingDir": "/w",
             "env": [{"name": "TZ", "value": "UTC"}],
             "resources": {"requests": {"cpu": "1500m", "memory": "3Gi"},
                           "limits": {"memory": "3Gi"}},
             "volumeMounts": mounts, "securityContext": hardened},
            {"name": "db", "image": "postgres:16", "workingDir": "/w",
             "env": [{"name": "TZ", "value": "UTC"}],
             "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                           "limits": {"memory": "256Mi"}},
             "volumeMounts": mounts, "securityContext": hardened, "command": ["postgres"]}],
        "volumes": [{"name": "workspace", "emptyDir": {}}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]}]}]}}},
    }


DIND = """
routes: [{job: build, template: docker}]
templates:
  docker:
    image: maven:3.9-eclipse-temurin-21
    containers:
      - {name: dind, image: "docker:27-dind", args: ["--host=tcp://127.0.0.1:2375", "--tls=false"]}
    podSpecPatch: |
      containers:
        - name: dind
          securityContext:
            privileged: true
            allowPrivilegeEscalation: true
            runAsUser: 0
            runAsNonRoot: false
            capabilities: null
          volumeMounts:
            - {name: docker-data, mountPath: /var/lib/docker}
      volumes:
        - {name: docker-data, emptyDir: {}}
"""


def test_a_pod_spec_patch_still_makes_a_privileged_docker_in_docker_container():
    template = parse_file_config(DIND).templates["docker"]
    pod = agent_pod_manifest(build=BUILD, template=template, size=SIZE, namespace="ci",
                             jenkins_url="https://j")
    kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
    jnlp, dind = pod["spec"]["containers"]
    assert dind["securityContext"] == {"privileged": True, "allowPrivilegeEscalation": True,
                                       "runAsUser": 0, "runAsNonRoot": False}
    assert jnlp["securityContext"] == {"allowPrivilegeEscalation": False,
                                       "capabilities": {"drop": ["ALL"]}}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True  # the pod's stays
    assert required_level(pod) is Level.PRIVILEGED
    other = copy.deepcopy(pod)
    del other["spec"]["containers"][1]
    assert required_level(other) is Level.RESTRICTED  # the DinD container alone relaxes it


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_no_rendered_agent_pod_has_a_literal_jenkins_secret(name):
    """Issue 17: a literal JENKINS_SECRET in a pod's env is read by anyone who may read pods
    in the namespace, and a retained pod kept it. The pod refers to the agent's own Secret."""
    pod = render(TEMPLATES[name])
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        for e in c.get("env", []):
            if e["name"] == "JENKINS_SECRET":
                assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == \
                    agent_secret_name(BUILD.agent_name)
    secret = agent_secret_manifest(build=BUILD, namespace="ci", secret=SECRET)
    kubernetes_validate.validate(secret, KUBERNETES_SCHEMA_VERSION, strict=True)
    assert secret["stringData"] == {AGENT_SECRET_KEY: SECRET}
    assert SECRET not in json.dumps(pod)


PRIORITY = """
routes: [{job: build, template: maven}]
templates:
  maven:
    image: maven:3.9-eclipse-temurin-21
    podSpecPatch: |
      priorityClassName: ci-builds
"""


def test_a_pod_spec_patch_gives_agent_pods_a_priority_class():
    """Agent pods carry no priorityClassName of their own: they take the cluster's default
    (0 without a globalDefault PriorityClass), so kube-scheduler preempts a running build
    for any pod of a higher class (docs/runbooks.md, CIAgentsLost). A template sets one."""
    template = parse_file_config(PRIORITY).templates["maven"]
    pod = agent_pod_manifest(build=BUILD, template=template, size=SIZE, namespace="ci",
                             jenkins_url="https://j")
    kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
    assert pod["spec"]["priorityClassName"] == "ci-builds"


ZONAL = """
routes: [{job: build, template: zonal}]
templates:
  zonal:
    podSpecPatch:
      affinity:
        podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 5,
          podAffinityTerm: {topologyKey: kubernetes.io/hostname,
                            labelSelector: {matchLabels: {app: db}}}}]}
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{key: topology.kubernetes.io/zone, operator: In,
                                    values: [eu-1a, eu-1b]}]
              - matchExpressions: [{key: pool, operator: Exists}]
                matchFields: [{key: metadata.name, operator: NotIn, values: [old-1]}]
              - {}
          preferredDuringSchedulingIgnoredDuringExecution:
            - {weight: 10, preference: {matchExpressions: [{key: disk, operator: In,
                                                            values: [ssd]}]}}
"""


def test_a_template_s_node_affinity_is_kept_with_our_candidates_added_to_each_term():
    """Kubernetes-plugin templates carry a required nodeAffinity: the pod keeps its terms,
    each with our candidate hostnames first (terms are ORed: a term without them would let
    the pod go where placement never counted it; one matching nothing stays left out), and
    its preferred terms after ours. Its other affinities merge as before."""
    template = parse_file_config(ZONAL).templates["zonal"]
    pod = agent_pod_manifest(build=BUILD, template=template, size=SIZE, namespace="ci",
                             jenkins_url="https://j", hostnames=["node-b", "node-a"])
    kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
    affinity = pod["spec"]["affinity"]
    assert affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    ours = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b", "node-a"]}
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [
            {"matchExpressions": [ours, {"key": "topology.kubernetes.io/zone",
                                         "operator": "In", "values": ["eu-1a", "eu-1b"]}]},
            {"matchExpressions": [ours, {"key": "pool", "operator": "Exists"}],
             "matchFields": [{"key": "metadata.name", "operator": "NotIn",
                              "values": ["old-1"]}]}]}
    preferred = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [p["preference"]["matchExpressions"][0]["values"] for p in preferred] == [
        ["node-b"], ["node-a"], ["ssd"]]
    assert [p["weight"] for p in preferred] == [100, 50, 10]
    # not placed (no candidates): the template's own, as written
    bare = agent_pod_manifest(build=BUILD, template=template, size=SIZE, namespace="ci",
                              jenkins_url="https://j")
    assert bare["spec"]["affinity"]["nodeAffinity"] == template.node_affinity


def test_a_patch_naming_a_service_account_leaves_its_token_to_it():
    """The plugin's `serviceAccount` (ours: podSpecPatch serviceAccountName) is for builds
    that call the cluster (kubectl, helm): its token is mounted as on the plugin's pods,
    whose spec leaves automountServiceAccountToken out for the ServiceAccount's own setting
    to decide. Pods without one keep the token out, and a patch may still say false."""
    assert render({})["spec"]["automountServiceAccountToken"] is False
    named = render({"podSpecPatch": {"serviceAccountName": "deployer"}})["spec"]
    assert named["serviceAccountName"] == "deployer"
    assert "automountServiceAccountToken" not in named
    kept = render({"podSpecPatch": {"serviceAccountName": "deployer",
                                    "automountServiceAccountToken": False}})["spec"]
    assert kept["automountServiceAccountToken"] is False


def test_an_extended_resource_goes_to_the_first_build_container_alone():
    """Without agent injection each marked build container is sized, but the template's
    extended resources are the first one's: the marked containers shared one resources dict,
    so a GPU template with two build containers asked 2 GPUs per pod (Unschedulable on a
    1-GPU node) and placement had counted one."""
    pod = render({**SPLITS["own-agent-marked-build"], "resources": {"nvidia.com/gpu": 1}})
    asking = [c["name"] for c in pod["spec"]["containers"]
              if "nvidia.com/gpu" in c["resources"]["limits"]]
    assert asking == ["gradle"]


WINDOWS = {"image": "jenkins/inbound-agent:windowsservercore-ltsc2022", "agentInjection": False,
           "nodeSelector": {"kubernetes.io/os": "windows"},
           "podSpecPatch": {"os": {"name": "windows"}}}


def test_a_windows_pod_has_none_of_the_linux_hardening_the_api_server_refuses_on_it():
    """validateWindows (pkg/apis/core/validation) refuses runAsUser, runAsGroup, fsGroup and
    seccompProfile on the pod, allowPrivilegeEscalation and capabilities on a container, when
    spec.os.name is windows ("cannot be set for a windows pod"): every build of a Windows
    template failed at creation with a 422. runAsNonRoot stays, and Pod Security
    `restricted` still admits the pod (it relaxes the other three controls for Windows)."""
    pod = render(WINDOWS)
    spec = pod["spec"]
    assert spec["securityContext"] == {"runAsNonRoot": True}
    assert [c["securityContext"] for c in spec["containers"]] == [{}]
    assert violations(pod, Level.RESTRICTED) == []
    linux = render({**WINDOWS, "podSpecPatch": {}})
    assert linux["spec"]["securityContext"]["fsGroup"] == 1000


def test_containers_a_patch_adds_are_hardened_like_ours_unless_it_says_otherwise():
    """README: every container, init containers included, has allowPrivilegeEscalation false
    and drops ALL capabilities. A setup init container or a sidecar added in podSpecPatch had
    neither, so a namespace enforcing `restricted` refused every pod of the template (403)."""
    pod = render({"podSpecPatch": {
        "initContainers": [{"name": "setup", "image": "busybox:1.36", "command": ["true"]}],
        "containers": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0",
                        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}},
                       {"name": "fuse", "image": "fuse:1",
                        "securityContext": {"privileged": True, "capabilities": None}}]}})
    assert violations({**pod, "spec": {**pod["spec"], "containers": pod["spec"][
        "containers"][:2]}}, Level.RESTRICTED) == []
    by_name = {c["name"]: c["securityContext"] for c in containers(pod)}
    assert by_name["proxy"] == {"allowPrivilegeEscalation": False, "capabilities": {
        "drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    assert by_name["fuse"] == {"privileged": True}  # the API server needs escalation left on
    kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)


def test_a_windows_template_is_placed_and_selected_on_windows_nodes_alone():
    """kube-scheduler does not read spec.os; the kubelet of a Linux node refuses a pod whose
    os.name is windows (pkg/kubelet/lifecycle/predicate.go: "Failed to admit pod as the OS
    field doesn't match node OS", PodOSNotSupported), and the build fails. Without a
    nodeSelector of its own, the template (README's example) was placed on any node."""
    bare = {k: v for k, v in WINDOWS.items() if k != "nodeSelector"}
    template = PodTemplate.model_validate(bare)
    assert template.node_selector == {"kubernetes.io/os": "windows"}  # what placement reads
    assert render(bare)["spec"]["nodeSelector"] == {"kubernetes.io/os": "windows"}
    # a selector of the template's own is kept, the OS label added beside it
    pool = PodTemplate.model_validate({**bare, "nodeSelector": {"pool": "win"}})
    assert pool.node_selector == {"pool": "win", "kubernetes.io/os": "windows"}


@pytest.mark.parametrize("where", [
    {"workspaceVolume": {"emptyDir": {"medium": "Memory"}}},
    {"volumes": [{"name": "t", "mountPath": "/t", "emptyDir": {"medium": "Memory"}}]},
    {"podSpecPatch": {"os": {"name": "windows"},
                      "volumes": [{"name": "t", "emptyDir": {"medium": "Memory"}}]}},
])
def test_a_windows_template_with_a_memory_backed_volume_is_refused(where):
    """Kubernetes docs, "Windows Storage": Windows nodes do not support "Memory as the
    storage medium (for example, emptyDir.medium set to Memory)"; every pod failed to start."""
    with pytest.raises(ValueError, match="Windows nodes have no memory-backed"):
        PodTemplate.model_validate({**WINDOWS, **where})
