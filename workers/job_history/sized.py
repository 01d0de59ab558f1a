"""The template with the job's recommended size as its default (workers.core.recommend).

A size hint is applied after this (workers.engine.scheduling), so a hint still wins; headroom and
pressure then move the size from this default as they would from the template's. Best
effort: when Redis cannot be read the template's own default is used.
"""

import logging

import redis

from workers.adapters.usage_store import UsageStore
from workers.core.models import BuildRequest, PodTemplate
from workers.core.recommend import Recommendation, SizeSource, recommend, with_default
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.job_history")
# The build record's `source` of a build started again after its OOM kill (learn.retry)
OOM_RETRY_SOURCE = "oom-retry"


def store(rt: Runtime) -> UsageStore:
    return UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)


def recommendation(rt: Runtime, job: str, template_name: str,
                   template: PodTemplate) -> Recommendation:
    history = store(rt).history(job, template_name)
    return recommend(template, history, min_builds=rt.settings.history_min_builds,
                     memory_margin=rt.settings.history_memory_margin)


def sized(rt: Runtime, request: BuildRequest, template: PodTemplate) -> PodTemplate:
    if not template.history:
        return template
    try:
        rec = recommendation(rt, request.job, request.template, template)
    except redis.RedisError as err:
        log.warning("job history unavailable; template default used",
                    extra={"build_key": request.build_key, "error": type(err).__name__})
        return template
    if rec.source is SizeSource.TEMPLATE:
        return template
    rt.state.update_build(request.build_key, size_source=str(rec.source))
    log.info("default size from the job's history",
             extra={"build_key": request.build_key, "job": request.job,
                    "size_source": str(rec.source), "builds_seen": rec.builds,
                    "cpu_millis": rec.cpu_millis, "memory_bytes": rec.memory_bytes})
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
        floor = store(rt).history(request.job, request.template).oom_floor_bytes
    except redis.RedisError:
        return hinted
    memory = min(floor, template.memory.max)
    if memory <= hinted.memory.default:
        return hinted
    log.info("OOM retry sized past its hint", extra={
        "build_key": request.build_key, "job": request.job,
        "hint_memory_bytes": hinted.memory.default, "memory_bytes": memory})
    return hinted.model_copy(update={
        "memory": hinted.memory.model_copy(update={"default": memory})})
