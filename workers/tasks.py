"""RQ tasks: provision an agent for a build, release it when the build ends.

Every step is idempotent, keyed by the build key: a retried or duplicated job never makes a
second pod or a second Jenkins build.
"""

import logging
import time
from typing import Any

from workers import runtime
from workers.adapters.redis_state import FINISHED, BuildStatus
from workers.core.errors import PermanentError
from workers.core.models import BuildRequest
from workers.core.pods import agent_pod_manifest, default_size
from workers.metrics import AGENTS_CREATED_TOTAL, AGENTS_DELETED_TOTAL

log = logging.getLogger("ci_autoscaler.tasks")


def provision_agent(build: dict[str, Any]) -> dict[str, Any]:
    """Register the agent in Jenkins, create its pod, start the build on its label."""
    rt = runtime.current()
    request = BuildRequest.from_dict(build)
    key, agent = request.build_key, request.agent_name
    ctx = {"build_key": key, "agent": agent}
    state = rt.state.get_build(key)
    if state.get("status") in FINISHED:
        log.info("build already finished; nothing to provision", extra=ctx)
        return {"build_key": key, "skipped": state["status"]}
    template = rt.config.templates.get(request.template)
    if template is None:
        raise PermanentError(f"build {key}: unknown pod template {request.template!r}")

    created_node = rt.jenkins.ensure_node(agent, label=agent, remote_fs=template.workdir)
    secret = rt.jenkins.agent_secret(agent)
    size = default_size(template)
    manifest = agent_pod_manifest(build=request, template=template, size=size,
                                  namespace=rt.settings.agent_namespace,
                                  jenkins_url=rt.settings.agent_jenkins_url, secret=secret)
    created_pod = rt.cluster.create_pod(manifest)
    if created_pod:
        AGENTS_CREATED_TOTAL.labels(request.template).inc()
    queue_item = state.get("queue_item")
    rt.state.update_build(key, cpu_millis=size.cpu_millis, memory_bytes=size.memory_bytes,
                          status=None if queue_item else BuildStatus.POD_CREATED,
                          pod_created_at=time.time() if created_pod else None)
    log.info("agent ready", extra={**ctx, "node_created": created_node,
                                   "pod_created": created_pod, "cpu_millis": size.cpu_millis,
                                   "memory_bytes": size.memory_bytes})

    if not queue_item:
        queue_item = rt.jenkins.trigger_build(request.job, request.parameters)
        rt.state.update_build(key, status=BuildStatus.TRIGGERED, queue_item=queue_item,
                              triggered_at=time.time())
        log.info("build triggered", extra={**ctx, "job": request.job, "queue_item": queue_item})
    return {"build_key": key, "agent": agent, "queue_item": int(queue_item)}


def release_agent(build_key: str, agent_name: str, reason: str = "build_completed") -> dict:
    """Delete the agent's pod and Jenkins node; either being gone already is success."""
    rt = runtime.current()
    ctx = {"build_key": build_key, "agent": agent_name, "reason": reason}
    template = rt.state.get_build(build_key).get("template", "unknown")
    pod_deleted = rt.cluster.delete_pod(agent_name)
    if pod_deleted:
        AGENTS_DELETED_TOTAL.labels(template, reason).inc()
    node_deleted = rt.jenkins.delete_node(agent_name)
    rt.state.update_build(build_key, status=BuildStatus.RELEASED, released_at=time.time())
    log.info("agent released", extra={**ctx, "pod_deleted": pod_deleted,
                                      "node_deleted": node_deleted})
    return {"build_key": build_key, "pod_deleted": pod_deleted, "node_deleted": node_deleted}
