"""The agent pod manifest, computed as a plain dict from a build, its template and its size."""

import math
from typing import Any

from workers.core.cluster import Resources
from workers.core.containers import AGENT_CONTAINER, IDLE_COMMAND, Container
from workers.core.models import WORKSPACE_VOLUME, BuildRequest, PodTemplate
from workers.core.templates import merge
from workers.core.quantity import format_cpu, format_memory

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ci-autoscaler"
BUILD_KEY_LABEL = "ci-autoscaler.io/build-key"
TEMPLATE_LABEL = "ci-autoscaler.io/template"


HOSTNAME_LABEL = "kubernetes.io/hostname"


def is_managed(labels: dict[str, str] | None) -> bool:
    """Whether a pod carries our managed-by label; checked in code whatever a list returned."""
    return (labels or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def _resources(cpu: int, memory: int, cpu_limit_factor: float | None) -> dict[str, Any]:
    """Requests, and limits: memory = request (no node-level memory overcommit); a CPU limit
    only with a factor."""
    limits = {"memory": format_memory(memory)}
    if cpu_limit_factor is not None:
        limits["cpu"] = format_cpu(math.ceil(cpu * cpu_limit_factor))
    return {"requests": {"cpu": format_cpu(cpu), "memory": format_memory(memory)},
            "limits": limits}


def _mounts(template: PodTemplate) -> list[dict[str, Any]]:
    """The shared workspace at workdir, then every template volume: the same in each container."""
    return [{"name": WORKSPACE_VOLUME, "mountPath": template.workdir}] + [
        {"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only}
        for v in template.volumes]


def _tool(template: PodTemplate, tool: Container, size: Resources) -> dict[str, Any]:
    env = {**template.env, **tool.env}
    container: dict[str, Any] = {
        "name": tool.name,
        "image": tool.image,
        "workingDir": tool.working_dir or template.workdir,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": _resources(size.cpu_millis, size.memory_bytes, template.cpu_limit_factor)
        if tool.build else _resources(tool.cpu, tool.memory, None),
        "volumeMounts": _mounts(template),
    }
    if tool.idle:
        container["command"], container["tty"] = list(IDLE_COMMAND), True
    else:
        if tool.command is not None:
            container["command"] = list(tool.command)
        if tool.args is not None:
            container["args"] = list(tool.args)
    if tool.tty is not None:
        container["tty"] = tool.tty
    return container


def agent_pod_manifest(*, build: BuildRequest, template: PodTemplate, size: Resources,
                       namespace: str, jenkins_url: str, secret: str,
                       hostname: str | None = None) -> dict[str, Any]:
    """The pod that runs one Jenkins inbound agent for one build, then stops for good.

    `size` is the build's: the agent container's, or each `build` tool container's when the
    template marks some (the agent then gets its fixed agentCpu/agentMemory). Every container
    shares the workspace volume. With a hostname, the pod gets required node affinity on it
    (not nodeName), so the scheduler and the kubelet still check that it fits."""
    env = [
        {"name": "JENKINS_URL", "value": jenkins_url},
        {"name": "JENKINS_SECRET", "value": secret},
        {"name": "JENKINS_AGENT_NAME", "value": build.agent_name},
        {"name": "JENKINS_AGENT_WORKDIR", "value": template.workdir},
    ]
    if template.websocket:
        env.append({"name": "JENKINS_WEB_SOCKET", "value": "true"})
    env += [{"name": k, "value": v} for k, v in sorted(template.env.items())]
    agent = _resources(template.agent_cpu, template.agent_memory, None) \
        if template.build_containers else \
        _resources(size.cpu_millis, size.memory_bytes, template.cpu_limit_factor)
    container: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": template.image,
        "env": env,
        "resources": agent,
        "volumeMounts": _mounts(template),
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "containers": [container] + [_tool(template, t, size) for t in template.containers],
        "volumes": [{"name": WORKSPACE_VOLUME, **template.workspace_volume}]
        + [{"name": v.name, **v.source} for v in template.volumes],
    }
    if hostname is not None:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [hostname]}]}]}}}
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.tolerations:
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True)
                               for t in template.tolerations]
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in template.image_pull_secrets]
    if template.pod_spec_patch:
        spec = merge(spec, template.pod_spec_patch)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
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
            },
        },
        "spec": spec,
    }
