"""The agent pod manifest, computed as a plain dict from a build, its template and its size."""

import math
from typing import Any

from workers.core.cluster import Resources
from workers.core.models import BuildRequest, PodTemplate
from workers.core.quantity import format_cpu, format_memory

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ci-autoscaler"
BUILD_KEY_LABEL = "ci-autoscaler.io/build-key"
TEMPLATE_LABEL = "ci-autoscaler.io/template"
AGENT_CONTAINER = "jnlp"


HOSTNAME_LABEL = "kubernetes.io/hostname"


def is_managed(labels: dict[str, str] | None) -> bool:
    """Whether a pod carries our managed-by label; checked in code whatever a list returned."""
    return (labels or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def agent_pod_manifest(*, build: BuildRequest, template: PodTemplate, size: Resources,
                       namespace: str, jenkins_url: str, secret: str,
                       hostname: str | None = None) -> dict[str, Any]:
    """The pod that runs one Jenkins inbound agent for one build, then stops for good.

    With a hostname, the pod gets required node affinity on it (not nodeName), so the
    scheduler and the kubelet still check that it fits."""
    env = [
        {"name": "JENKINS_URL", "value": jenkins_url},
        {"name": "JENKINS_SECRET", "value": secret},
        {"name": "JENKINS_AGENT_NAME", "value": build.agent_name},
        {"name": "JENKINS_AGENT_WORKDIR", "value": template.workdir},
    ]
    if template.websocket:
        env.append({"name": "JENKINS_WEB_SOCKET", "value": "true"})
    env += [{"name": k, "value": v} for k, v in sorted(template.env.items())]
    memory = format_memory(size.memory_bytes)
    limits = {"memory": memory}  # memory limit = request: no node-level memory overcommit
    if template.cpu_limit_factor is not None:
        limits["cpu"] = format_cpu(math.ceil(size.cpu_millis * template.cpu_limit_factor))
    container: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": template.image,
        "env": env,
        "resources": {
            "requests": {"cpu": format_cpu(size.cpu_millis), "memory": memory},
            "limits": limits,
        },
        "volumeMounts": [{"name": "workspace", "mountPath": template.workdir}] + [
            {"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only}
            for v in template.volumes
        ],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [{"name": "workspace", "emptyDir": {}}]
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
