"""RQ task: release a build's agent when the build ends, which re-drives the builds waiting for
capacity (workers.engine.redrive); and refusing a build its Jenkins job cannot take (moved from
workers.engine.tasks, which still names release_agent for RQ)."""

import functools
import logging
import time
from typing import Any

from workers import runtime
from workers.adapters.redis_state import BuildStatus
from workers.concurrency import side
from workers.concurrency.heartbeat import Heartbeat, let_go
from workers.core.errors import PermanentError, RetryableError
from workers.core.models import BuildRequest
from workers.core.stages import Stage
from workers.engine import agent_names, caps, retention, run_confirm, task_args
from workers.engine.engine_metrics import engine_metrics
from workers.engine.provision_lease import provision_lease
from workers.job_history import learn as job_history
from workers.stage_timings import ledger
from workers.warm import agents as warm_agents

log = logging.getLogger("ci_autoscaler.tasks")


# Why the agent of a build whose Jenkins job refused it for good was deleted.
JOB_REFUSED = "job_refused"


def refuse(rt: runtime.Runtime, request: BuildRequest, err: PermanentError) -> None:
    """The build cannot be started, for good (its job is missing, disabled, not parameterized,
    or Jenkins refused the request): its pod and Jenkins node go, its slot and reservation
    are freed, and it is marked failed with the reason, so neither the RQ retry nor the
    reconcile loop provisions it again."""
    key = request.build_key
    release(rt, key, request.agent_name, JOB_REFUSED)
    rt.state.update_build(key, status=BuildStatus.FAILED, error=str(err))
    log.error("build refused: Jenkins cannot start it", extra={
        "build_key": key, "agent": request.agent_name, "job": request.job, "error": str(err)})


def release_agent(build_key: str, agent_name: str, reason: str = "build_completed",
                  notification: dict[str, Any] | None = None, **newer: Any) -> dict:
    """Delete the agent's pod and Jenkins node (either being gone already is success), then
    re-drive the builds waiting for the capacity this frees. `notification`: what the Jenkins
    notification that ended the build says (its result, run, time), recorded first.
    `newer`: a newer release's arguments, run without (workers.engine.task_args)."""
    task_args.ignored("release_agent", newer)
    rt = runtime.current()
    with engine_metrics(rt).errors_counted("release"):
        # Not while a provision of the build runs: its pod may be on its way (created beside
        # the build's trigger), and a slot freed now would be taken by another build before
        # this pod is gone. The job is retried (JOB_RETRY) once the provision has ended.
        lease = provision_lease(rt, build_key, renewed=True)  # by its Heartbeat
        if not lease.acquire():
            raise RetryableError(f"build {build_key} is being provisioned: released after it")
        try:
            with Heartbeat(lease, what=f"release {build_key}") as beat:  # a slow one keeps it
                if notification is not None:
                    ended = run_confirm.confirmed(rt, build_key, notification)
                    if ended is None:
                        return {"build_key": build_key, "released": False}
                    # Not once the lease is lost (held up in Jenkins' answer, frozen, cut off
                    # from Redis): the reconcile loop freed it and provisions the build again,
                    # and this release, going on beside it, marked the build released and freed
                    # its room while the new pod was made (left running for a released build).
                    # Retried (JOB_RETRY): it releases the build once the lease is its own.
                    beat.check("its end recorded")
                    rt.state.update_build(build_key, status=BuildStatus.DONE, **ended)
                return release(rt, build_key, _current_agent(rt, build_key, agent_name),
                               reason)
        finally:
            let_go(lease, what=f"release {build_key}")  # once Redis answers


def _current_agent(rt: runtime.Runtime, build_key: str, agent_name: str) -> str:
    """The agent the build has now, if the job's `agent_name` is one it had before: the job
    was queued (the web read the build's agent for a notification) before a provision placed
    the build again under a new name (workers.engine.agent_names) and waited for that provision's
    lease. Released by the old name, the new pod, its Secret and its Jenkins node (with the
    label the build's item waits on) were left behind."""
    state = rt.state.get_build(build_key)
    if state.get("agent") and agent_name in agent_names.previous(state):
        return state["agent"]
    return agent_name


def delete_node_or_leave(rt: runtime.Runtime, agent_name: str) -> bool:
    """Delete the agent's Jenkins node; while Jenkins is away (Unavailable), or fails it
    through every retry (RetryableError: a slow Jenkins timing out, a 500), it is left to the
    reconcile pass's delete_agentless_nodes, which deletes it once Jenkins can (ours, no
    pod, its build over or unknown): what else a release does needs no Jenkins, and a
    reconcile pass releases stray pods through a Jenkins restart (workers.engine.jenkins_steps)."""
    try:
        return rt.jenkins.delete_node(agent_name)
    except RetryableError as err:  # Unavailable included
        log.warning("Jenkins did not delete the agent's node: it is left to a later "
                    "reconcile pass", extra={"agent": agent_name, "error": str(err)})
        return False


def release(rt: runtime.Runtime, build_key: str, agent_name: str, reason: str) -> dict:
    ctx = {"build_key": build_key, "agent": agent_name, "reason": reason}
    build = rt.state.get_build(build_key)
    template = build.get("template", "unknown")
    kept = retention.keep(rt, build_key, reason, agent=agent_name)  # a failed build's pod
    # The pod and the Jenkins node go at the same time; both calls have ended after `both`.
    pod, node = side.both(None if kept else functools.partial(rt.cluster.delete_pod, agent_name),
                          functools.partial(delete_node_or_leave, rt, agent_name))
    pod_deleted = bool(pod.value)
    if kept:  # its agent is deleted in Jenkins here too: a kept pod keeps no secret either
        rt.cluster.delete_agent_secret(agent_name)
    if pod_deleted:
        engine_metrics(rt).agent_deleted(template, reason)
    for outcome in (pod, node):
        if outcome.error is not None:
            raise outcome.error
    node_deleted = bool(node.value)
    rt.capacity.release(build_key)
    if pod_deleted and build.get("warm_agent") == agent_name:
        # its claimed warm agent is gone now, not at the next pool pass: /metrics would count
        # it claimed, and the pool would hold its reservation, for up to a pass (15 s) more
        warm_agents.store(rt).forget(template, agent_name)
        rt.capacity.release(agent_name)  # the warm agent's own reservation (keyed by its name)
    caps.free(rt, build_key)  # before the re-drive below, which may give the slot away
    rt.capacity.remove_waiting(build_key)
    # A build failed for its agent (workers.engine.failures) stays failed: its abort's COMPLETED
    # notification releases it too.
    status = BuildStatus.RETAINED if kept else \
        BuildStatus.FAILED if build.get("fail_reason") else BuildStatus.RELEASED
    rt.state.update_build(build_key, status=status, released_at=time.time())
    job_history.learn(rt, build_key, build, agent_name)  # its usage, for the job's next size
    # The pod's deletion, and what Jenkins' notifications recorded (started, finished).
    ledger.record(rt.state, build_key, Stage.DELETED if pod_deleted else None)
    log.info("agent released", extra={**ctx, "pod_deleted": pod_deleted, "pod_kept": kept,
                                      "node_deleted": node_deleted})
    from workers.engine import redrive  # it imports this module
    redrive.request_redrive(rt)
    return {"build_key": build_key, "pod_deleted": pod_deleted, "node_deleted": node_deleted}
