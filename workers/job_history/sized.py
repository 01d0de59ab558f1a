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
