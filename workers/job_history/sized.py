"""The template with the job's recommended size as its default (workers.core.recommend).

The job's history holds the whole pod's use (metrics-server's sum over its containers: the
agent's JVM and any service included), so the recommendation is for the pod's total
(podsize.pod_recommendation), and the build gets what is left of it beside the agent's and
the services' requests (podsize.history_share): the pod asks p95 x margin of its peaks, not
that plus the agent's share again. The OOM floor is a pod total too (workers.job_history.learn).
A size hint is applied after this (workers.engine.scheduling), so a hint still wins; headroom and
pressure then move the size from this default as they would from the template's. Best
effort: when Redis cannot be read the template's own default is used.
"""

import logging

import redis

from workers.adapters.usage_store import UsageStore
from workers.core import podsize
from workers.core.models import BuildRequest, PodTemplate
from workers.core.recommend import Recommendation, SizeSource, with_default
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.job_history")
# The build record's `source` of a build started again after its OOM kill (learn.retry)
OOM_RETRY_SOURCE = "oom-retry"


def store(rt: Runtime) -> UsageStore:
    return UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)


def recommendation(rt: Runtime, job: str, template_name: str,
                   template: PodTemplate) -> Recommendation:
    """What the job's pods should ask in total (the build's share: podsize.history_share)."""
    history = store(rt).history(job, template_name)
    return podsize.pod_recommendation(template, history,
                                      min_builds=rt.settings.history_min_builds,
                                      memory_margin=rt.settings.history_memory_margin)


def sized(rt: Runtime, request: BuildRequest, template: PodTemplate) -> PodTemplate:
    if not template.history:
        return template
    try:
        pod = recommendation(rt, request.job, request.template, template)
    except redis.RedisError as err:
        log.warning("job history unavailable; template default used",
                    extra={"build_key": request.build_key, "error": type(err).__name__})
        return template
    if pod.source is SizeSource.TEMPLATE:
        return template
    rec = podsize.history_share(template, pod)
    rt.state.update_build(request.build_key, size_source=str(rec.source))
    log.info("default size from the job's history",
             extra={"build_key": request.build_key, "job": request.job,
                    "size_source": str(rec.source), "builds_seen": rec.builds,
                    "cpu_millis": rec.cpu_millis, "memory_bytes": rec.memory_bytes,
                    "pod_cpu_millis": pod.cpu_millis, "pod_memory_bytes": pod.memory_bytes})
    return with_default(template, rec)


def past_hint(rt: Runtime, request: BuildRequest, template: PodTemplate,
              hinted: PodTemplate) -> PodTemplate:
    """The hinted template, its memory raised to what the job's OOM kill taught when this
    build is the retry of an OOM-killed build (retryOnOOM). The retry has the killed build's
    parameters, its size hint among them: sized by the hint again, it ran at the very size
    that was killed, to die the same way, where issue 21 starts it "once at the bigger
    size". Otherwise (and when Redis cannot be read) the hint wins, as always."""
    if not template.history:
        return hinted
    try:
        [[source]] = rt.state.build_fields([request.build_key], "source")
        if source != OOM_RETRY_SOURCE:
            return hinted
        floor = podsize.pod_history(
            template, store(rt).history(request.job, request.template)).oom_floor_bytes
    except redis.RedisError:
        return hinted
    if not floor:
        return hinted
    memory = podsize.build_memory(template, floor)  # the floor is the pod's (learn)
    if memory <= hinted.memory.default:
        return hinted
    log.info("OOM retry sized past its hint", extra={
        "build_key": request.build_key, "job": request.job,
        "hint_memory_bytes": hinted.memory.default, "memory_bytes": memory})
    return hinted.model_copy(update={
        "memory": hinted.memory.model_copy(update={"default": memory})})
