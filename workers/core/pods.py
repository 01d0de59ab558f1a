"""The agent pod manifest, computed as a plain dict from a build, its template and its size.

With agent injection (the default), an init container copies the Jenkins agent (agent.jar and
the Java runtime it runs on) from the agent image into a shared volume, and the build
container runs it as its command, so the build's `sh` steps run beside its tools; the other
containers are services. Every pod is hardened to Pod Security `restricted` and asks cluster
autoscalers not to disrupt it; a template's podSpecPatch may relax any of it."""

from collections.abc import Sequence
from typing import Any

from workers.core import node_affinity
from workers.core.cluster import Resources
from workers.core.containers import AGENT_CONTAINER, AGENT_INIT_CONTAINER, AGENT_VOLUME
from workers.core.containers import Container
from workers.core.installation_pods import stamp
from workers.core.models import WORKSPACE_VOLUME, BuildRequest, PodTemplate
from workers.core.templates import merge
from workers.core.podsize import memory_volumes
from workers.core.quantity import format_cpu, format_memory, memory_bytes, times_factor

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ci-autoscaler"
BUILD_KEY_LABEL = "ci-autoscaler.io/build-key"
TEMPLATE_LABEL = "ci-autoscaler.io/template"
WARM_LABEL = "ci-autoscaler.io/warm"  # a warm agent's pod (workers.warm)
WARM_IDLE = "true"  # its value until a build claims the agent: the agents' budget skips it
WARM_CLAIMED = "claimed"  # its value once a build holds it (workers.warm.protect)
# A failed build's pod kept for debugging (workers.engine.retention): it runs no build
RETAINED_LABEL, RETAINED = "ci-autoscaler.io/retained", "true"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Karpenter leaves a pod with the first alone, Cluster Autoscaler one with the second: a
# consolidation must not kill a running build (REALITY.md, "Autoscalers").
DO_NOT_DISRUPT = {"karpenter.sh/do-not-disrupt": "true",
                  "cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}

# Where jenkins/inbound-agent keeps the agent and its Java runtime (jenkinsci/docker-agent,
# debian/Dockerfile: agent.jar in /usr/share/jenkins, JAVA_HOME=/opt/java/openjdk), and where
# the init container copies them to: one `cp`, so the agent image needs no shell.
AGENT_JAR_SOURCE = "/usr/share/jenkins/agent.jar"
AGENT_JAVA_HOME_SOURCE = "/opt/java/openjdk"
AGENT_MOUNT_PATH = "/jenkins-agent"
COPIED_AGENT_JAR = f"{AGENT_MOUNT_PATH}/agent.jar"
COPIED_JAVA = f"{AGENT_MOUNT_PATH}/openjdk/bin/java"
# The agent's environment (read by the inbound-agent image's entry point, and by the injected
# command through Kubernetes' $(VAR) expansion, so no shell is needed in the build image).
AGENT_ENV_NAMES = frozenset({"JENKINS_URL", "JENKINS_SECRET", "JENKINS_AGENT_NAME",
                             "JENKINS_AGENT_WORKDIR", "JENKINS_WEB_SOCKET"})
AGENT_SECRET_KEY = "jenkins-secret"  # the key of JENKINS_SECRET in the agent's own Secret


def is_managed(labels: dict[str, str] | None) -> bool:
    """Whether a pod carries our managed-by label; checked in code whatever a list returned."""
    return (labels or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def _resources(cpu: int, memory: int, cpu_limit_factor: float | None) -> dict[str, Any]:
    """Requests, and limits: memory = request (no node-level memory overcommit); a CPU limit
    only with a factor."""
    limits = {"memory": format_memory(memory)}
    if cpu_limit_factor is not None:
        limits["cpu"] = format_cpu(times_factor(cpu, cpu_limit_factor))
    return {"requests": {"cpu": format_cpu(cpu), "memory": format_memory(memory)},
            "limits": limits}


def _mounts(template: PodTemplate) -> list[dict[str, Any]]:
    """The shared workspace at workdir, then every template volume: the same in each container."""
    return [{"name": WORKSPACE_VOLUME, "mountPath": template.workdir}] + [
        {"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only}
        for v in template.volumes]


def container_security_context() -> dict[str, Any]:
    """What Pod Security `restricted` asks of every container (init containers too); the
    pod-level part is in pod_security_context."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_security_context(template: PodTemplate) -> dict[str, Any]:
    """Non-root, the template's ids (fsGroup makes fresh volumes writable to them), and the
    runtime's default seccomp profile."""
    ids = {"runAsUser": template.run_as_user, "runAsGroup": template.run_as_group,
           "fsGroup": template.fs_group}
    return {"runAsNonRoot": True, **{k: v for k, v in ids.items() if v is not None},
            "seccompProfile": {"type": "RuntimeDefault"}}


# What the API server refuses on a pod with spec.os.name windows ("cannot be set for a
# windows pod": pkg/apis/core/validation validateWindows), ours among them; runAsNonRoot
# stays (Windows checks it against the image's user). Pod Security `restricted` relaxes
# privilege escalation, capabilities and seccomp for such pods (pod-security-admission
# policy checks, 1.25+), so a Windows pod without them is still `restricted`.
WINDOWS_REFUSED_POD = ("runAsUser", "runAsGroup", "fsGroup", "seccompProfile")
WINDOWS_REFUSED_CONTAINER = ("allowPrivilegeEscalation", "capabilities")


def is_windows(spec: dict[str, Any]) -> bool:
    return (spec.get("os") or {}).get("name") == "windows"


def _for_windows(spec: dict[str, Any], template: PodTemplate) -> None:
    """Our Linux hardening taken off a pod whose podSpecPatch says `os: {name: windows}`
    (values the patch set itself are left for check-config to name)."""
    if not is_windows(spec):
        return
    ours_pod, ours_container = pod_security_context(template), container_security_context()
    pod_sc = spec.get("securityContext") or {}
    for key in WINDOWS_REFUSED_POD:
        if key in pod_sc and pod_sc[key] == ours_pod.get(key):
            del pod_sc[key]
    for c in (spec.get("initContainers") or []) + spec.get("containers", []):
        sc = c.get("securityContext") or {}
        for key in WINDOWS_REFUSED_CONTAINER:
            if key in sc and sc[key] == ours_container[key]:
                del sc[key]


def _harden_added(spec: dict[str, Any], ours: set[str]) -> None:
    """The hardened container context (container_security_context) under that of each
    container the podSpecPatch adds (a setup init container, a sidecar), so the promise of
    `restricted` holds for them too: left bare, a namespace enforcing it refused every pod of
    the template (403). What the patch sets wins (`null` removes ours); a privileged or
    CAP_SYS_ADMIN container keeps privilege escalation, which the API server requires of it
    (ValidateSecurityContext, which takes SYS_ADMIN so spelled with escalation false)."""
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if not isinstance(c, dict) or c.get("name") in ours:
            continue
        theirs = c.get("securityContext") or {}
        defaults = container_security_context()
        added = (theirs.get("capabilities") or {}).get("add") or []
        if theirs.get("privileged") or "CAP_SYS_ADMIN" in added:  # as pod_schema
            del defaults["allowPrivilegeEscalation"]
        c["securityContext"] = merge(defaults, theirs)


def agent_secret_name(agent: str) -> str:
    """The Secret that holds an agent's JENKINS_SECRET (agent_secret_manifest)."""
    return f"{agent}-secret"


def agent_secret_manifest(*, build: BuildRequest, namespace: str,
                          secret: str, installation: str = "") -> dict[str, Any]:
    """The agent's Secret: its Jenkins secret, which the pod reads by secretKeyRef, so the
    pod's spec holds no secret (anyone who may read pods there would read it, and a retained
    pod would keep it). Created before the pod and deleted with it (workers.adapters.
    kube_secrets); the Role grants Secrets in the agent namespace only. It carries the
    installation as its pod does (core.installation_pods)."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": stamp({"name": agent_secret_name(build.agent_name),
                           "namespace": namespace,
                           "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                                      BUILD_KEY_LABEL: build.build_key}}, installation),
        "stringData": {AGENT_SECRET_KEY: secret},
    }


def _agent_env(build: BuildRequest, template: PodTemplate,
               jenkins_url: str) -> list[dict[str, Any]]:
    """The agent's connection settings; its secret by reference to its own Secret."""
    env = [
        {"name": "JENKINS_URL", "value": jenkins_url},
        {"name": "JENKINS_SECRET", "valueFrom": {"secretKeyRef": {
            "name": agent_secret_name(build.agent_name), "key": AGENT_SECRET_KEY}}},
        {"name": "JENKINS_AGENT_NAME", "value": build.agent_name},
        {"name": "JENKINS_AGENT_WORKDIR", "value": template.workdir},
    ]
    if template.websocket:
        env.append({"name": "JENKINS_WEB_SOCKET", "value": "true"})
    return env


def agent_command(template: PodTemplate) -> tuple[list[str], list[str]]:
    """The injected agent's command and args: remoting's launcher, as the inbound-agent image's
    own jenkins-agent script runs it, with the settings from the environment. Its JVM sizes
    itself as if it had agentMemory alone (-XX:MaxRAM), so it stays within what is added to
    the container for it."""
    args = [f"-XX:MaxRAM={template.agent_memory}", "-jar", COPIED_AGENT_JAR,
            "-url", "$(JENKINS_URL)", "-secret", "$(JENKINS_SECRET)",
            "-name", "$(JENKINS_AGENT_NAME)", "-workDir", "$(JENKINS_AGENT_WORKDIR)"]
    if template.websocket:
        args.append("-webSocket")
    return [template.agent_java or COPIED_JAVA], args


def _agent_init(template: PodTemplate) -> dict[str, Any]:
    """Copies agent.jar (and, unless the build image's own Java runs it, the Java runtime)."""
    sources = [AGENT_JAR_SOURCE] if template.agent_java else [AGENT_JAVA_HOME_SOURCE,
                                                               AGENT_JAR_SOURCE]
    return {
        "name": AGENT_INIT_CONTAINER,
        "image": template.agent_image,
        "command": ["cp", "-R", *sources, f"{AGENT_MOUNT_PATH}/"],
        # Within the build container's own requests, so the pod's effective request (the
        # larger of the containers' sum and each init container) is the containers' sum.
        "resources": _resources(template.agent_cpu, template.agent_memory, None),
        "volumeMounts": [{"name": AGENT_VOLUME, "mountPath": AGENT_MOUNT_PATH}],
        "securityContext": container_security_context(),
    }


def _env(template: PodTemplate, own: dict[str, str]) -> list[dict[str, Any]]:
    env = {**template.env, **own}
    return [{"name": k, "value": v} for k, v in sorted(env.items()) if k not in AGENT_ENV_NAMES]


def _container(template: PodTemplate, c: Container, resources: dict[str, Any]
               ) -> dict[str, Any]:
    """A declared container: a service running its image's command, or a build container."""
    container: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "workingDir": c.working_dir or template.workdir,
        "env": _env(template, c.env),
        "resources": resources,
        "volumeMounts": _mounts(template),
        "securityContext": container_security_context(),
    }
    if c.command is not None:
        container["command"] = list(c.command)
    if c.args is not None:
        container["args"] = list(c.args)
    if c.tty is not None:
        container["tty"] = c.tty
    return container


def _jnlp(template: PodTemplate, resources: dict[str, Any]) -> dict[str, Any]:
    """The container running the template's image."""
    return {"name": AGENT_CONTAINER, "image": template.image, "env": _env(template, {}),
            "resources": resources, "volumeMounts": _mounts(template),
            "securityContext": container_security_context()}


def _injected(template: PodTemplate, size: Resources, agent_env: list[dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """The build container (the one marked build, or jnlp) runs the agent, with the agent's
    requests added to the build's size; the others are services at their fixed requests."""
    build = _resources(size.cpu_millis + template.agent_cpu,
                       size.memory_bytes + template.agent_memory, template.cpu_limit_factor)
    marked = template.build_containers
    containers = [_container(template, c, build if c.build else
                             _resources(c.cpu, c.memory, None)) for c in template.containers]
    if not marked:
        containers.insert(0, _jnlp(template, build))
    agent = next(c for c in containers if c["name"] == (marked[0].name if marked
                                                         else AGENT_CONTAINER))
    agent["command"], agent["args"] = agent_command(template)
    agent["env"] = agent_env + agent["env"]
    agent["volumeMounts"].append({"name": AGENT_VOLUME, "mountPath": AGENT_MOUNT_PATH,
                                  "readOnly": True})
    return containers


def _own_agent(template: PodTemplate, size: Resources, agent_env: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """agentInjection false: jnlp runs the image's own agent, and is the build's unless
    containers are marked build (each then sized, jnlp at agentCpu/agentMemory)."""
    def sized() -> dict[str, Any]:  # one dict each: _add_extras adds to the first alone
        return _resources(size.cpu_millis, size.memory_bytes, template.cpu_limit_factor)

    jnlp = _jnlp(template, _resources(template.agent_cpu, template.agent_memory, None)
                 if template.build_containers else sized())
    jnlp["env"] = agent_env + jnlp["env"]
    return [jnlp] + [_container(template, c, sized() if c.build else
                                _resources(c.cpu, c.memory, None)) for c in template.containers]


def _add_extras(containers: list[dict[str, Any]], template: PodTemplate) -> None:
    """The template's ephemeral-storage and extended resources go to its (first) build
    container: extended resources as limits equal to requests, as the API requires
    (Kubernetes docs, "Manage extended resources for a node": they cannot be overcommitted).
    So do its memory-backed volumes' sizeLimits, to its memory (podsize.memory_volumes)."""
    tmpfs = memory_volumes(template)
    if not template.ephemeral_storage and not template.resources and not tmpfs:
        return
    marked = template.build_containers
    name = marked[0].name if marked else AGENT_CONTAINER
    resources = next(c for c in containers if c["name"] == name)["resources"]
    if tmpfs:
        for kind in ("requests", "limits"):
            resources[kind]["memory"] = format_memory(
                memory_bytes(resources[kind]["memory"]) + tmpfs)
    if template.ephemeral_storage:
        resources["requests"]["ephemeral-storage"] = format_memory(template.ephemeral_storage)
    for resource, amount in sorted(template.resources.items()):
        resources["requests"][resource] = resources["limits"][resource] = str(amount)


def candidate_affinity(hostnames: Sequence[str]) -> dict[str, Any]:
    """Required node affinity to these hosts, and preferred weights that keep their order
    (100 for the first, down by equal steps): kube-scheduler chooses among them and, all else
    equal, takes ours; when ours no longer fits it takes the next instead of failing."""
    count = len(hostnames)
    return {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In",
                                   "values": list(hostnames)}]}]},
        **({"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": max(1, 100 * (count - i) // count), "preference": {"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [host]}]}}
            for i, host in enumerate(hostnames)]} if count > 1 else {})}}


def _names_its_account(patch: dict[str, Any]) -> bool:
    """Whether a podSpecPatch names a service account and leaves the token's mount to it."""
    return bool(patch.get("serviceAccountName") or patch.get("serviceAccount")) \
        and "automountServiceAccountToken" not in patch


def _without_node_affinity(patch: dict[str, Any]) -> dict[str, Any]:
    """The patch without its nodeAffinity, which is combined with placement's instead of
    merged over it (its terms list would replace our candidates)."""
    affinity = patch.get("affinity")
    if not isinstance(affinity, dict) or "nodeAffinity" not in affinity:
        return patch
    rest = {k: v for k, v in affinity.items() if k != "nodeAffinity"}
    return {**{k: v for k, v in patch.items() if k != "affinity"},
            **({"affinity": rest} if rest else {})}


def agent_pod_manifest(*, build: BuildRequest, template: PodTemplate, size: Resources,
                       namespace: str, jenkins_url: str,
                       hostname: str | None = None,
                       hostnames: Sequence[str] = (), installation: str = "") -> dict[str, Any]:
    """The pod that runs one Jenkins inbound agent for one build, then stops for good.

    `size` is the build's (see core.podsize for what each container gets). Every container
    shares the workspace volume. With a hostname (or several candidates, ours first), the pod
    gets required node affinity on them (not nodeName), so the scheduler and the kubelet still
    check that it fits, and may take the next candidate when the first does not. A template's
    own nodeAffinity (its podSpecPatch's) is kept, with the candidates added to each of its
    required terms (core.node_affinity.combined).
    `installation`: this installation's identity, on the pod (core.installation_pods)."""
    agent_env = _agent_env(build, template, jenkins_url)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(template),
    }
    volumes = [{"name": WORKSPACE_VOLUME, **template.workspace_source}] + [
        {"name": v.name, **v.source} for v in template.volumes]
    if template.agent_injection:
        spec["initContainers"] = [_agent_init(template)]
        spec["containers"] = _injected(template, size, agent_env)
        volumes.append({"name": AGENT_VOLUME, "emptyDir": {}})
    else:
        spec["containers"] = _own_agent(template, size, agent_env)
    spec["volumes"] = volumes
    _add_extras(spec["containers"], template)
    hosts = list(hostnames) or ([hostname] if hostname is not None else [])
    if hosts:
        spec["affinity"] = candidate_affinity(hosts)
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True)
                               for t in template.tolerations]
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in template.image_pull_secrets]
    if template.pod_spec_patch:
        ours = {c["name"] for c in spec.get("initContainers", []) + spec["containers"]}
        spec = merge(spec, _without_node_affinity(template.pod_spec_patch))
        _harden_added(spec, ours)
        if _names_its_account(template.pod_spec_patch):
            # A patch naming the pod's service account (the plugin's `serviceAccount`) wants
            # its token: builds that run kubectl or helm against the cluster. Left out, as the
            # plugin's pods leave it, the ServiceAccount's own automountServiceAccountToken
            # decides (true unless set false there); ours, false, kept the token out and
            # every in-cluster call of the build failed (no .../serviceaccount/token).
            spec.pop("automountServiceAccountToken", None)
    _for_windows(spec, template)
    if template.node_affinity:
        ours = (spec.get("affinity") or {}).get("nodeAffinity")
        spec.setdefault("affinity", {})["nodeAffinity"] = node_affinity.combined(
            template.node_affinity, ours)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": stamp({
            "name": build.agent_name,
            "namespace": namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                BUILD_KEY_LABEL: build.build_key,
                TEMPLATE_LABEL: build.template,
            },
            "annotations": {
                "ci-autoscaler.io/job": build.job,
                "ci-autoscaler.io/project": build.project,
                "ci-autoscaler.io/ref": build.ref,
                "ci-autoscaler.io/sha": build.sha,
                **DO_NOT_DISRUPT,
            },
        }, installation),
        "spec": spec,
    }
