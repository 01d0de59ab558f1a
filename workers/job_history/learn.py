"""When a build's agent is released: its run folded into the job's history.

A run with samples adds its peak memory and CPU p90 to the job's decaying histogram (the
pod's: the sum over its containers). A run whose build container was OOM-killed instead sets
the floor of the job's next memory (twice what the killed pod asked in total, up to what a
pod asks at the template's max: a pod total, as the recommendation it floors is:
workers.job_history.sized), counts ``oom_kills_total{template}``, and, with the template's
``retryOnOOM``, starts the build once more (unless it had the most memory the template
allows already: the same size again would die the same way): a new build key
derived from the first (so a second release of the same agent, or a second worker, cannot
start it twice: the build record is created with HSETNX), the same parameters but its own
agent. The first build is marked ``replaced_by`` the new one. A retry is not retried again.
Best effort: Redis errors are logged; the release itself never fails for them.
"""

import json
import logging
import time
from dataclasses import replace
from typing import Any

import redis

from workers import commit_statuses, runtime
from workers.engine import namespace_sizes, task_args
from workers.core import podsize, recommend
from workers.core.commit_status import (
    NAME_FIELD, OOM_AGENT_FIELD, OOM_FIELD, OOM_RESULT, PIPELINE_FIELD, PROJECT_ID_FIELD)
from workers.core.keys import agent_name, build_key
from workers.adapters.redis_state import BuildStatus
from workers.core.models import BuildRequest
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER
from workers.job_history.sized import OOM_RETRY_SOURCE, store
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.job_history")
# The build record's field set when its run was folded into its job's history (once)
FOLDED_FIELD = "usage_folded_at"


def learn(rt: runtime.Runtime, build_key_: str, build: dict[str, str], agent: str) -> None:
    try:
        _learn(rt, build_key_, build, agent)
    except redis.RedisError as err:
        log.warning("job history not updated", extra={
            "build_key": build_key_, "error": type(err).__name__})


def learn_late(build_key: str, agent_name: str, **newer: Any) -> dict[str, object]:
    """The RQ task: the OOM kill of a build's agent that the pod watch saw after the build's
    release had folded its run (workers.job_history.watch), folded now as the release would
    have (the record, the job's history, retryOnOOM), and its commit status looked at again.
    A run taken already (the release took the kill after all, or another worker's job did)
    is nothing to fold. `newer`: a newer release's arguments, run without
    (workers.engine.task_args)."""
    task_args.ignored("learn_late", newer)
    rt = runtime.current()
    build = rt.state.get_build(build_key)
    if not build.get("released_at") or build.get(OOM_FIELD):
        return {"build_key": build_key, "learned": False}
    learn(rt, build_key, build, agent_name)
    commit_statuses.touch(rt.state, build_key)
    return {"build_key": build_key, "learned": True}


def _learn(rt: runtime.Runtime, key: str, build: dict[str, str], agent: str) -> None:
    run = store(rt).take_run(agent)
    job, template_name = build.get("job", ""), build.get("template", "")
    if run is not None and run.oom_limit_bytes and _folded(rt, key):
        # The kill was folded already: the pod watch marked the run again (an event of the
        # pod read before the first release recorded the kill, written after it took the
        # run), and a second release of the agent found that mark. Folded again, the one
        # kill counted twice in oom_kills_total and the job's history.
        log.info("OOM kill folded already", extra={"build_key": key, "agent": agent})
        return
    if run is not None and run.oom_limit_bytes:  # whether or not the template learns
        _record_oom(rt, key, build, run.oom_limit_bytes, agent_only=run.oom_agent)
        # counted for every template, `history: off` too: a kill is an operator's to see
        # (README, "Sizing each job from its history"), whether or not the job learns from it
        EngineMetrics(rt.state.redis, prefix=rt.settings.key_prefix).oom_killed(template_name)
        if run.oom_agent:
            # jnlp at agentMemory (workers.job_history.watch.own_agent_container): the build's
            # size does not size it, so neither a bigger next build nor a retry would help
            log.warning("build's Jenkins agent OOM-killed at the template's agentMemory; "
                        "raise agentMemory", extra={
                            "build_key": key, "template": template_name,
                            "memory_limit_bytes": run.oom_limit_bytes})
            return
    template = rt.config.templates.get(template_name)
    if run is None or not job or template is None or not template.history:
        return
    if (old := _renamed_from(build)) and store(rt).carry_history(old, job, template_name):
        log.info("job renamed: its history carried to its new name", extra={
            "build_key": key, "job": job, "renamed_from": old})
    if run.oom_limit_bytes:
        # the build's size; a record without it (a provision retried after its pod's create
        # answer was lost writes none) has it from the killed container's limit, which holds
        # the agent's share and any tmpfs: pod_memory below adds those again
        given = int(build.get("memory_bytes") or 0) \
            or podsize.limit_build_memory(template, run.oom_limit_bytes)
        # doubled as a pod total, as the recommendation it floors (workers.job_history.sized)
        killed = podsize.pod_memory(template, given)
        # (a floor stored by a release before, the build's size, made the pod's first)
        history = store(rt).update_history(job, template_name, lambda h: podsize.pod_history(
            template, h).add_oom_kill(memory_limit_bytes=killed,
            max_bytes=podsize.placement_template(template).memory.max))
        log.warning("build OOM-killed; the job's next memory at least doubles", extra={
            "build_key": key, "job": job, "memory_bytes": given, "pod_memory_bytes": killed,
            "next_pod_memory_floor_bytes": history.oom_floor_bytes})
        if template.retry_on_oom and build.get("source") != OOM_RETRY_SOURCE:
            # The retry is sized from the raised floor, capped at the most the template (and
            # the namespace's LimitRanges: workers.engine.namespace_sizes) allow: at the cap already,
            # it would run at the same size and be OOM-killed again.
            fitted = namespace_sizes.fitted(rt, template)
            most = fitted.memory.max
            if podsize.build_memory(fitted, history.oom_floor_bytes) > given:
                retry(rt, key, build)
            else:
                log.warning("OOM-killed build not started again: it had the most memory its "
                            "template allows", extra={"build_key": key, "job": job,
                                                      "memory_bytes": given,
                                                      "max_memory_bytes": most})
        return
    if run.peak_memory_bytes <= 0:
        return
    # the result as recorded now (the release records Jenkins' at its start)
    [[result]] = rt.state.build_fields([key], "result")
    if not recommend.teaches(podsize.pod_history(template, store(rt).history(
            job, template_name)), peak_memory_bytes=run.peak_memory_bytes,
            result=result or build.get("result") or ""):
        log.info("run ended early by Jenkins: not folded into the job's history", extra={
            "build_key": key, "job": job, "result": result,
            "peak_memory_bytes": run.peak_memory_bytes})
        return
    if not rt.state.redis.hsetnx(f"{rt.state.prefix}build:{key}", FOLDED_FIELD, time.time()):
        # Folded already, by an earlier release of this agent: this run is a sample taken
        # after that release took the run (metrics-server serves a deleted pod's last sample
        # for a while; the run's key went with the first release, so the stamp was new), and
        # a second release (the reconcile pass's for a finished build, beside the
        # notification's) found it: folded, the job counted one build twice.
        log.info("build's usage folded already", extra={"build_key": key, "agent": agent})
        return
    store(rt).update_history(job, template_name, lambda h: podsize.pod_history(
        template, h).add_build(
        peak_memory_bytes=run.peak_memory_bytes, cpu_p90_millis=run.cpu_p90_millis,
        now=time.time(), half_life_seconds=rt.settings.history_half_life_seconds))


def _renamed_from(build: dict[str, str]) -> str:
    """The job's name when the build was triggered, if a person renamed or moved the job since
    (the reconcile pass or a COMPLETED naming its new name recorded it: workers.engine
    .run_confirm); "" if not. The history learned under the old name is the job's: left there,
    the renamed job (its route changed to the new name) started over at its template's
    default, and one sized up by an OOM kill was killed again at the size that killed it."""
    try:
        first = json.loads(build.get("request") or "{}").get("job") or ""
    except (ValueError, AttributeError):
        return ""
    return first if isinstance(first, str) and first != build.get("job") else ""


def _folded(rt: runtime.Runtime, key: str) -> bool:
    """Whether the build's record has its OOM kill already (read now, not at the release's
    start)."""
    [[recorded]] = rt.state.build_fields([key], OOM_FIELD)
    return bool(recorded)


def _record_oom(rt: runtime.Runtime, key: str, build: dict[str, str], limit: int,
                agent_only: bool = False) -> None:
    """The build's end is its OOM kill, whatever Jenkins says of it (its agent gone, a
    Pipeline reads ABORTED) or if it says nothing before the release (the pass releases the
    pod that ended): the record says so (OOM_FIELD, and the result if Jenkins gave none), and
    so does its commit status (failed, out of memory: workers.core.commit_status), which read
    "canceled" before."""
    # the killed container's own limit (what kubectl describe shows, the agent's share in
    # it), else the build's size
    fields: dict[str, object] = {OOM_FIELD: limit or int(build.get("memory_bytes") or 0)}
    if agent_only:  # the agent's own container (its commit status names agentMemory)
        fields[OOM_AGENT_FIELD] = 1
    if not build.get("result"):
        fields["result"] = OOM_RESULT
    rt.state.update_build(key, **fields)


# What a retry takes of its first build's record for its GitLab commit status: the commit,
# the delivery that says it came from a push, and the status's name and pipeline, so that its
# states follow the killed build's failed one on the same status (GitLab starts a new status
# of that name after a finished one, in that pipeline: lib/api/commit_statuses.rb). Without
# them the retry posted nothing: the commit kept the red status of a build whose retry, with
# more memory, the developer never saw.
_COMMIT_FIELDS = ("project", "ref", "sha", "delivery", PROJECT_ID_FIELD, NAME_FIELD,
                  PIPELINE_FIELD)


def _commit_fields(build: dict[str, str]) -> dict[str, str]:
    return {f: build[f] for f in _COMMIT_FIELDS if build.get(f)}


def retry(rt: runtime.Runtime, key: str, build: dict[str, str]) -> str | None:
    """Start the OOM-killed build once more; its sizing reads the raised floor."""
    from workers.engine import tasks  # tasks imports this module's caller
    if "request" not in build:
        return None
    first = BuildRequest.from_dict(json.loads(build["request"]))
    # (a build placed again has its first agent's name as label: workers.engine.agent_names)
    if first.node_label not in ("", first.agent_name, first.parameters.get(AGENT_PARAMETER)):
        return None  # a pipeline's own node() item we adopted: Jenkins decides its re-run
    new_key = build_key(OOM_RETRY_SOURCE, key)
    # The job's name now: renamed or moved since the request, the pass recorded its new name
    # (run_confirm.job_renamed, confirm_moved), which holds its raised floor; the old name
    # is no job (the trigger refused) or a new one's, whose run would not be the build's.
    job = build.get("job") or first.job
    agent = agent_name(job, new_key, rt.settings.installation)
    now = time.time()
    request = replace(first, job=job, build_key=new_key, agent_name=agent, received_at=now,
                      node_label="",
                      parameters={**first.parameters, AGENT_PARAMETER: agent,
                                  BUILD_KEY_PARAMETER: new_key})
    if not rt.state.add_build(new_key, {
            "status": BuildStatus.QUEUED, "agent": agent, "job": job,
            "template": first.template, "received_at": now, "queued_at": now,
            "source": OOM_RETRY_SOURCE, "retry_of": key,
            "request": json.dumps(request.to_dict()), **_commit_fields(build)}):
        return None  # started already
    rt.state.update_build(key, replaced_by=new_key)
    tasks.queue_provision(rt, request)
    log.info("OOM-killed build started again at a bigger size", extra={
        "build_key": key, "retry_build_key": new_key, "agent": agent, "job": job})
    return new_key
