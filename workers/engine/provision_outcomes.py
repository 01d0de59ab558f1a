"""How a provision ends other than with a placed pod: parked while Jenkins quiets down, waiting
on a ResourceQuota, its pod or agent refused, its agent's name taken, its build ended meanwhile
(moved from workers.engine.tasks)."""

import functools
import logging
import time
from typing import Any

from workers import runtime
from workers.adapters.kube_errors import QuotaFull, Refused
from workers.adapters.redis_state import BuildStatus
from workers.concurrency import side
from workers.core import warm_quota
from workers.core.errors import NotOurs, PermanentError, PermissionMissing
from workers.core.models import BuildRequest, PodTemplate
from workers.core.placement import WaitReason
from workers.core.routing import AGENT_PARAMETER
from workers.core.stages import FIRST_WAIT_REASON, Stage
from workers.core.start_failures import FailureReason, StartFailure
from workers.engine import caps, namespace_sizes, scheduling
from workers.engine.build_trigger import _trigger_once
from workers.engine.engine_metrics import engine_metrics
from workers.engine.pod_marks import POD_ATTEMPTED
from workers.engine.release import refuse
from workers.stage_timings import ledger

log = logging.getLogger("ci_autoscaler.tasks")


def _park_quieting(rt: runtime.Runtime, request: BuildRequest, workdir: str,
                   state: dict[str, str]) -> dict[str, Any]:
    """Jenkins quiets down (workers.engine.jenkins_quiet): the build's node is registered and the
    build triggered as always, and it is parked with no pod (workers.engine.blocked_builds), no
    reservation and no slot; the reconcile pass provisions it again once Jenkins lets it go.
    A pod made now would idle, holding its node's room, until the pass parked it."""
    from workers.engine import blocked_builds  # it imports this module
    key, agent = request.build_key, request.agent_name
    try:
        rt.jenkins.ensure_node(agent, label=request.node_label or agent, remote_fs=workdir)
    except NotOurs as err:
        return _name_taken(rt, request, err)
    queue_item = state.get("queue_item")
    if not queue_item:
        try:
            queue_item = _trigger_once(rt, request, state, write_status=False)
        except PermanentError as err:
            refuse(rt, request, err)
            raise
    if not blocked_builds.park_unplaced(rt, key, blocked_builds.QUIETING_DOWN, time.time()):
        return _ended_meanwhile(rt, request, {"build_key": key, "agent": agent})
    return {"build_key": key, "agent": agent, "queue_item": int(queue_item), "parked": True}


def _sized_anew(rt: runtime.Runtime, request: BuildRequest, sized: PodTemplate) -> bool:
    """Whether the namespace's LimitRanges, as read now (a refusal reads them anew:
    workers.adapters.kube_limit_ranges), size the build's template otherwise than `sized`, the
    template its refused pod was sized from (workers.engine.namespace_sizes)."""
    template = rt.config.templates.get(request.template)
    return template is not None and namespace_sizes.fitted(rt, template) != sized


def _refused_pod(rt: runtime.Runtime, request: BuildRequest, err: Refused) -> None:
    """The API refused the build's pod for good (Pod Security admission, a LimitRange, a
    policy webhook, an invalid manifest; workers.adapters.kube_errors): the same pod would be
    refused on every try, and the reconcile loop took the build for stalled and provisioned
    it again every lease period while its Jenkins build waited in the queue for an agent that
    never came. Its failure is queued (workers.engine.failures, once the provision has let go of the
    build): the build fails with the reason, its queue item is cancelled, its Jenkins node and
    slot go."""
    from workers.agent_starts.watch import queue_failure  # it imports this module
    queue_failure(rt.state, request.build_key, request.agent_name,
                  StartFailure(str(FailureReason.POD_REFUSED), str(err)))


def _agent_refused(rt: runtime.Runtime, request: BuildRequest, err: PermissionMissing) -> None:
    """Jenkins refused for good to register the build's agent or to give its secret (a 403
    naming a permission that is not Jenkins-wide: one a plugin's authorization strategy
    defines). Agent/Create and Agent/Connect (REALITY.md "Agent state"), refused alike for
    every build until an admin grants them, are Unauthorized (workers.adapters.jenkins): the
    build waits, as for a 403 that names none (a proxy's, a WAF's). Every try is refused the same, and the build stayed `queued` for ever,
    its Jenkins node left registered, the RQ job failed with no word on the build. Its
    failure is queued as a refused pod's is (workers.engine.failures, once the provision has let go
    of the build): the build fails with Jenkins' answer, its queue item (a build triggered
    before, its pod replaced) is cancelled, its Jenkins node and slot go."""
    from workers.agent_starts.watch import queue_failure  # it imports this module
    queue_failure(rt.state, request.build_key, request.agent_name,
                  StartFailure(str(FailureReason.PROVISION_FAILED), str(err)))


def _name_taken(rt: runtime.Runtime, request: BuildRequest, err: NotOurs) -> dict[str, Any]:
    """A Jenkins node of another's has the agent's name (the name is the build's for good):
    the build fails with the reason, before anything of its own was made or triggered; that
    node is left alone (a release would delete it by name), as nothing else lists it."""
    key = request.build_key
    rt.capacity.remove_waiting(key)
    rt.state.update_build(key, status=BuildStatus.FAILED, error=str(err))
    log.error("build cannot be provisioned: its agent's name is taken in Jenkins",
              extra={"build_key": key, "agent": request.agent_name, "error": str(err)})
    return {"build_key": key, "failed": "agent_name_taken"}


def _ended_meanwhile(rt: runtime.Runtime, request: BuildRequest,
                     ctx: dict[str, str]) -> dict[str, Any]:
    """The build ended while its pod was being made (its end was handled first: a release
    found no pod yet): the pod and the Jenkins node go, with the reservation and the slot;
    the status stays. Best effort: what a failed call leaves, the reconcile loop deletes."""
    key = request.build_key
    pod, _node = side.both(functools.partial(rt.cluster.delete_pod, request.agent_name),
                           functools.partial(rt.jenkins.delete_node, request.agent_name))
    if pod.value:
        engine_metrics(rt).agent_deleted(request.template, "build_completed")
    _unreserve(rt, key)
    status = rt.state.get_build(key).get("status", "")
    log.warning("build ended while its agent was made: pod deleted",
                extra={**ctx, "status": status})
    return {"build_key": key, "skipped": status}


def _adopted(request: BuildRequest) -> bool:
    """A build found waiting in Jenkins' queue (workers.engine.adoption): its label is not the name
    of its own first agent (a build placed again keeps that as its label: agent_names)."""
    return bool(request.node_label) \
        and request.node_label != request.parameters.get(AGENT_PARAMETER)


def _wait_for_quota(rt: runtime.Runtime, request: BuildRequest, err: QuotaFull) -> None:
    """A ResourceQuota of the agent namespace is full for now: the build waits as any build
    waiting for room does (the waiting set, re-driven in arrival order by every reconcile pass
    and after every release, which is when a quota frees), with its reason and the quota named,
    so that its developer sees why in GitLab and the capacity metrics count it; not raised for
    RQ's retries, which came later and later (5 s to 2 min) and left it `queued`, no reason.
    Admission refused the pod, so none was made: its reservation and slot are given back, and
    the attempt's mark goes, or every re-drive would take the build for placed before and
    register its agent under a new name (workers.engine.agent_names), one more per try."""
    key, reason = request.build_key, _quota_reason(err)
    _unreserve(rt, key)
    rt.capacity.add_waiting(key, request.received_at, on_quota=True,
                            paused=reason is WaitReason.PAUSED)
    rt.state.advance_build(key, status=BuildStatus.WAITING, wait_reason=reason,
                           wait_detail=err.words or "exceeded quota",
                           quota_exceeded=warm_quota.dump(err.exceeded),
                           **{POD_ATTEMPTED: None})
    ledger.record(rt.state, key, Stage.WAITING, **{FIRST_WAIT_REASON: str(reason)})
    log.info("waiting for room in a ResourceQuota", extra={
        "build_key": key, "agent": request.agent_name, "detail": err.words})
    if reason is WaitReason.QUOTA:
        # Builds always win: idle warm agents count against the same quota (what the refusal
        # lacked, its quota_exceeded, says which would make room: workers.warm.giving_way).
        # Left out, a build waited on the quota beside idle agents until one expired.
        scheduling.give_way_soon(rt)


def _quota_reason(err: QuotaFull) -> WaitReason:
    """paused for a pod count of 0 (an admin's pause, which alerts leave alone), else quota."""
    return WaitReason.PAUSED if err.paused else WaitReason.QUOTA


def _unreserve(rt: runtime.Runtime, key: str) -> None:
    """A provision that failed before its pod was made gives back its reservation and slot."""
    rt.capacity.release(key)
    caps.free(rt, key)
