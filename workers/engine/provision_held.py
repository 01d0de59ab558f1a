"""What a provision does once it holds the build's lease: place it (or find the pod an earlier
attempt made), make its pod and trigger it side by side (moved from workers.engine.tasks)."""

import functools
import json
import logging
import time
from typing import Any

from workers import runtime
from workers.adapters.kube_errors import QuotaFull, Refused
from workers.adapters.redis_state import BuildStatus, FINISHED
from workers.concurrency import side
from workers.concurrency.heartbeat import Heartbeat
from workers.concurrency.turns import Turn
from workers.core.errors import NotOurs, PermanentError, PermissionMissing, RetryableError
from workers.core.models import BuildRequest
from workers.core.placement import Wait, WaitReason
from workers.core.pods import agent_pod_manifest, agent_secret_manifest
from workers.core.stages import FIRST_WAIT_REASON, Stage
from workers.core.waiting_text import JENKINS_WAIT_FIELD
from workers.engine import (agent_names, caps, jenkins_quiet, namespace_sizes, scheduling,
                            terminating)
from workers.engine.build_trigger import _trigger_once
from workers.engine.engine_metrics import engine_metrics
from workers.engine.pod_marks import (_PLACED_MARKS, _POD_MARKS, _SIZE_MARKS, POD_ATTEMPTED,
                                      POD_PLANNED)
from workers.engine.provision_outcomes import (_adopted, _agent_refused, _ended_meanwhile,
                                               _name_taken, _park_quieting, _quota_reason,
                                               _refused_pod, _sized_anew, _unreserve,
                                               _wait_for_quota)
from workers.engine.provision_queue import queue_provision
from workers.engine.release import refuse
from workers.stage_timings import ledger
from workers.warm import claim as warm

log = logging.getLogger("ci_autoscaler.tasks")


class TemplateGone(PermanentError):
    """A build's pod template is no longer in the config (renamed or removed while it
    waited)."""


def _provision_held(rt: runtime.Runtime, request: BuildRequest, beat: Heartbeat, *,
                    refresh: bool, turn: Turn) -> dict[str, Any]:
    state = rt.state.get_build(request.build_key)
    if state.get("request"):
        # An earlier provision may have given the build a new agent name (workers.
        # agent_names): the record's request is the latest, an RQ retry's arguments are not.
        latest = BuildRequest.from_dict(json.loads(state["request"]))
        if latest.agent_name != request.agent_name:
            request = latest
    key, agent = request.build_key, request.agent_name
    ctx = {"build_key": key, "agent": agent}
    if state.get("status") in FINISHED:
        rt.capacity.remove_waiting(key)
        log.info("build already finished; nothing to provision", extra=ctx)
        return {"build_key": key, "skipped": state["status"]}
    from workers.engine import blocked_builds  # it imports this module
    if state.get("status") == BuildStatus.TRIGGERED and state.get(blocked_builds.FIELD):
        # Parked: its pod is made once the pass resumes it, which clears the mark before it
        # queues the provision. A job from before the park (an RQ retry: one that lost the
        # lease to the provision that made the first pod, or met a 503) made it now, to idle
        # while Jenkins holds the build back, the pass never parking it again.
        log.info("build parked; its pod is made when Jenkins lets it go", extra=ctx)
        return {"build_key": key, "skipped": "parked"}
    template = rt.config.templates.get(request.template)
    if template is None:
        raise TemplateGone(f"build {key}: unknown pod template {request.template!r}")
    # Sized within the namespace's LimitRanges: a max below the template's default is a
    # smaller pod, not a refused one (workers.engine.namespace_sizes).
    template = namespace_sizes.fitted(rt, template)
    if "request" not in state:  # what a re-drive or a replacement decides from later
        rt.state.update_build(key, request=scheduling.request_json(request))

    # A first provision reads no pod (one API round trip less in every provision): none can
    # exist before a provision went as far as its create.
    pod = rt.cluster.get_pod(agent) if any(state.get(f) for f in _POD_MARKS) else None
    if pod is not None and pod.deleting:
        # Stuck on a node that cannot be reached, it is force-deleted (workers.engine.terminating).
        if not terminating.force_if_stuck(rt, pod, build_key=key,
                                              template=request.template) \
                or rt.cluster.get_pod(agent) is not None:
            raise RetryableError(f"build {key}: the previous pod {agent} is still being deleted")
        pod = None
    if pod is None and not state.get("warm_agent") \
            and any(state.get(f) for f in _PLACED_MARKS):
        # Placed again: under a new agent name, the old one's Jenkins node deleted first, so
        # the old pod's agent process (still running on a node cut off, or in its grace
        # period) can never connect and take the build (workers.engine.agent_names). Not
        # once the lease is lost (this task held up, the build provisioned again meanwhile):
        # from its stale read it renamed the build under the new provision, clearing the
        # marks of the pod that one made.
        beat.check("a new agent name")
        request = agent_names.renamed(rt, request, state,
                                      cleared=_PLACED_MARKS + _SIZE_MARKS)
        agent = request.agent_name
        ctx = {"build_key": key, "agent": agent}
        state = rt.state.get_build(key)
    if pod is None and not state.get("warm_agent") and not _adopted(request) \
            and state.get("status") != BuildStatus.RUNNING and jenkins_quiet.recent(rt):
        # No pod, nor a warm agent, for a build Jenkins would not start: it waits in Jenkins'
        # queue, parked. Parking and resuming are for triggered builds (workers.engine.blocked_builds):
        # a running one (a Pipeline whose pod went before its agent connected) keeps its
        # status and gets its pod as before, and an adopted one is left as the pass leaves it.
        return _park_quieting(rt, request, template.workdir, state)
    create = decision = None
    beat.check("placement")  # lost: another task may be placing this build now
    with turn:  # in a re-drive, the builds before this one have taken their room
        claimed = pod is None and warm.try_claim(rt, request, template, state)
        if claimed:
            request = claimed  # an idle warm agent, online already: no pod to make
        elif pod is not None:
            caps.hold(rt, request)  # made by an earlier attempt: it counts against the caps
        else:
            # Nodes where this build's agent did not come online (workers.agent_starts.online).
            decision = scheduling.place(rt, request, template,
                                        exclude_nodes=scheduling.excluded(state))
    if pod is not None and not state.get("node"):  # made by an attempt whose answer was lost
        if placed := scheduling.planned_fields(state.get(POD_PLANNED), agent):
            rt.state.update_build(key, **placed)
    if decision is not None:
        if isinstance(decision, Wait):
            decision = scheduling.refused_wait(decision, state)
            from workers.agent_starts import no_node_left  # it imports this module
            if no_node_left.fail_if_none(rt, request, state, decision):
                return {"build_key": key, "failed": "no node left"}
            rt.capacity.add_waiting(key, request.received_at,
                                    on_cap=decision.reason == WaitReason.CAP)
            rt.state.update_build(key, status=BuildStatus.WAITING, wait_reason=decision.reason,
                                  wait_detail=decision.detail, **{JENKINS_WAIT_FIELD: None})
            ledger.record(rt.state, key, Stage.WAITING,
                          **{FIRST_WAIT_REASON: str(decision.reason)})
            if refresh:
                scheduling.refresh_capacity_folded(rt)
            if decision.reason != WaitReason.CAP:  # builds always win over idle warm agents
                scheduling.give_way_soon(rt)
            log.info("waiting for capacity", extra={**ctx, "reason": str(decision.reason),
                                                    "detail": decision.detail})
            return {"build_key": key, "waiting": str(decision.reason)}
        try:
            rt.jenkins.ensure_node(agent, label=request.node_label or agent,
                                   remote_fs=template.workdir)
            secret = rt.jenkins.agent_secret(agent)
        except NotOurs as err:
            _unreserve(rt, key)
            return _name_taken(rt, request, err)
        except PermissionMissing as err:  # a Jenkins 403 naming the permission: for good
            _unreserve(rt, key)
            _agent_refused(rt, request, err)
            raise
        except Exception:
            _unreserve(rt, key)
            raise
        rt.state.update_build(key, **{POD_ATTEMPTED: time.time(),
                                      POD_PLANNED: scheduling.planned(agent, decision)})
        manifest = agent_pod_manifest(
            build=request, template=template, size=decision.size,
            namespace=rt.settings.agent_namespace,
            hostnames=[host for _, host in decision.candidates],
            jenkins_url=rt.settings.agent_jenkins_url, installation=rt.settings.installation)
        create = functools.partial(rt.cluster.create_pod, manifest, secret=agent_secret_manifest(
            build=request, namespace=rt.settings.agent_namespace, secret=secret,
            installation=rt.settings.installation))
        if state.get("wait_reason"):  # it waited: a scale-up pod of its own may hold room
            from workers.engine import scale_up  # it imports this module
            create = scale_up.give_way(rt, key, create)

    # The pod and the build's trigger do not wait for each other: a queued build waits for its
    # label's agent to connect. Both have ended when `both` returns.
    # Beside a create, the trigger leaves the status to be written once both have ended: a
    # build "triggered" is one whose pod exists (the reconcile loop releases the reservation of
    # a build past queued whose pod it cannot see, taking the pod for deleted).
    trigger = None if state.get("queue_item") else \
        functools.partial(_trigger_once, rt, request, state, write_status=create is None)
    # Lost here, the reservation stays: under the same key, it may be the new holder's now.
    try:
        beat.check("its pod and trigger")
        if claimed and not state.get("warm_agent"):  # claimed now: no pod to make; its pod's
            # claimed mark goes beside the trigger, never ahead of it (warm.protect_claimed)
            _, triggered = side.both(functools.partial(warm.protect_claimed, rt, request),
                                     trigger)
            made = side.NOT_RUN
        else:
            made, triggered = side.both(create, trigger)
    finally:
        if claimed:
            warm.queue_replacement(rt, request.template)
    quota_full = made.error if isinstance(made.error, QuotaFull) else None
    if quota_full is not None:
        _wait_for_quota(rt, request, quota_full)
        if refresh:
            scheduling.refresh_capacity_folded(rt)
    elif made.ran and not made.ok and not isinstance(made.error, RetryableError):
        _unreserve(rt, key)  # refused: no pod was made
        if isinstance(made.error, Refused) and _sized_anew(rt, request, template) \
                and not isinstance(triggered.error, PermanentError):
            # Sized from LimitRanges read before one was made (cached a minute): the refusal
            # read them anew, and the build is placed again within them, not failed for good.
            queue_provision(rt, request)
            log.info("pod refused; sized again within the namespace's LimitRanges read now",
                     extra=ctx)
            return {"build_key": key, "sized_anew": True}
        if isinstance(made.error, Refused):
            _refused_pod(rt, request, made.error)
    # A create that failed retryably may have made its pod (an answer lost on its way back):
    # the slot and the reservation stay with the build, whose retry finds the pod or makes
    # it. Freed, another build took them, and the retry held the pod over the cap.
    elif made.ok:
        assert decision is not None and not isinstance(decision, Wait)
        if made.value:
            engine_metrics(rt).agent_created(request.template, received_at=request.received_at)
        rt.capacity.remove_waiting(key)
        # A replaced pod's build was triggered already; it waits for the agent again. One
        # whose run started (a Pipeline's STARTED comes before its agent connects, maybe while
        # this create ran) stays running: the status moves forward only.
        status = BuildStatus.TRIGGERED if state.get("queue_item") or triggered.ok \
            else BuildStatus.POD_CREATED
        if not rt.state.advance_build(key, **scheduling.decision_fields(decision),
                                      status=status, pod_created_at=time.time(),
                                      wait_reason=None, wait_detail=None,
                                      **{JENKINS_WAIT_FIELD: None}):
            return _ended_meanwhile(rt, request, ctx)
        if refresh:
            scheduling.refresh_capacity_folded(rt)
        log.info("agent placed", extra={**ctx, "node": decision.node,
                                         "cpu_millis": decision.size.cpu_millis,
                                         "memory_bytes": decision.size.memory_bytes,
                                         "decision": decision.reason})
    elif pod is not None and trigger is None and \
            state.get("status") in (BuildStatus.QUEUED, BuildStatus.WAITING):
        # A retry after a create whose answer was lost, its build triggered by that attempt:
        # pod and trigger exist, and nothing else moves it past queued.
        rt.state.advance_build(key, status=BuildStatus.TRIGGERED, **{JENKINS_WAIT_FIELD: None})
    if pod is not None and state.get("status") == BuildStatus.WAITING:
        # Its pod made by a re-drive's attempt whose answers were lost: placed, it waits no
        # more (left in the waiting set, it was counted waiting, and ahead, until it ended).
        rt.capacity.remove_waiting(key)
        rt.state.update_build(key, wait_reason=None, wait_detail=None)
    if pod is not None or made.ok or claimed:
        ledger.record(rt.state, key, Stage.PLACED)  # the first pod's time, whichever made it
    if isinstance(triggered.error, PermanentError):
        refuse(rt, request, triggered.error)  # the create has ended: its pod goes too
        raise triggered.error
    for outcome in (made, triggered):
        if outcome.error is not None and outcome.error is not quota_full:
            raise outcome.error
    if quota_full is not None:
        return {"build_key": key, "waiting": str(_quota_reason(quota_full))}
    queue_item = state.get("queue_item") or triggered.value
    return {"build_key": key, "agent": request.agent_name, "queue_item": int(queue_item)}
