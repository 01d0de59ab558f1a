"""RQ tasks: provision an agent for a build, release it when the build ends (which re-drives
the builds waiting for capacity: workers.engine.redrive).

Every step is idempotent, keyed by the build key: a retried or duplicated job never makes a
second pod or a second Jenkins build. A build whose Jenkins job cannot take it (checked before
its first trigger, or refused by Jenkins) fails for good and leaves nothing behind (`refuse`).

A worker runs many of these at once (workers.concurrency.pool_worker), and within one, calls
that do not depend on each other run side by side (workers.concurrency.side): the pod's create
and the build's trigger, a release's pod and Jenkins node deletes, a re-drive's builds. A
status written after such calls only moves the build forward: one that finished, or whose
Jenkins build started, meanwhile keeps its status (RedisState.advance_build).
"""

import functools
import json
import logging
import time
from typing import Any

from workers import commit_statuses, runtime
from workers.engine import (agent_names, caps, jenkins_quiet, jenkins_sessions, namespace_sizes,
                            retention, run_confirm, scheduling, task_args, terminating)
from workers.adapters.kube_errors import QuotaFull, Refused
from workers.adapters import refused_builds
from workers.adapters.lease import RENEWED, Lease, free_if_stale
from workers.adapters.redis_state import (
    FINISHED, JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_RETRY, JOB_TIMEOUT_SECONDS,
    BuildStatus)
from workers.checks import jobs as job_checks
from workers.concurrency import side
from workers.concurrency.heartbeat import Heartbeat, let_go
from workers.concurrency.turns import NO_TURN, Turn
from workers.core.errors import NotOurs, Overloaded, PermanentError, PermissionMissing, \
    RetryableError, Unauthorized, Unavailable
from workers.core.jenkins_queue import first_triggered
from workers.core.models import BuildRequest, PodTemplate
from workers.core.placement import Wait, WaitReason
from workers.core.pods import agent_pod_manifest, agent_secret_manifest
from workers.core.redaction import redact
from workers.core.routing import AGENT_PARAMETER
from workers.core.stages import FIRST_WAIT_REASON, Stage
from workers.core.waiting_text import JENKINS_WAIT_FIELD, NOT_ANSWERING, refused_reason
from workers.core import warm_quota
from workers.core.start_failures import FailureReason, StartFailure
from workers.job_history import learn as job_history
from workers.telemetry.metrics import EngineMetrics
from workers.stage_timings import ledger
from workers.warm import agents as warm_agents
from workers.warm import claim as warm

log = logging.getLogger("ci_autoscaler.tasks")
PROVISION_TASK = "workers.tasks.provision_agent"
SESSION_MAX_AGE_SECONDS = 5.0  # how old a read of Jenkins' session a trigger may record
# Why the agent of a build whose Jenkins job refused it for good was deleted.
JOB_REFUSED = "job_refused"
# Written before a provision creates the build's pod: only a build that has it can have one.
POD_ATTEMPTED = "pod_attempted_at"
# Written with it: the placement of the pod being made (scheduling.planned). A retry that
# finds the pod (its create's answer lost: a timeout, a 500 on its way back) writes it on the
# record as the create's success would have; without it, the build's node, size and candidates
# were nowhere (the status page, the unschedulable repair's nodes to leave out, its OOM kill's
# size).
POD_PLANNED = "pod_planned"
# What an attempt that may have made the pod leaves in the record (the last three: records
# written before POD_ATTEMPTED was).
_POD_MARKS = (POD_ATTEMPTED, "pod_created_at", "node", "trigger_attempted_at")
# What says a pod was made, or may have been, under the build's current agent name: with no
# pod now, the build is placed again under a new name (workers.engine.agent_names).
_PLACED_MARKS = (POD_ATTEMPTED, "pod_created_at", "node")
# What the last placement (or warm agent) did to the build's size, shown until it is placed
# again: a new placement at its default records nothing (scheduling.place), and the old
# `pressure` or `headroom` was shown beside the new pod's size
_SIZE_MARKS = ("size_moved",)


def engine_metrics(rt: runtime.Runtime) -> EngineMetrics:
    """The cluster-wide counters, kept in the runtime's Redis (see workers.telemetry.metrics)."""
    return EngineMetrics(rt.state.redis, prefix=rt.state.prefix)


def provision_agent(build: dict[str, Any], **newer: Any) -> dict[str, Any]:
    """Decide size and node, register the agent in Jenkins, create its pod, start the build
    on its label; or put the build in the waiting set when it fits nowhere; or, while Jenkins
    quiets down, trigger it with no pod, parked (workers.engine.blocked_builds). `newer`: a newer
    release's arguments, run without (workers.engine.task_args); so are a newer release's fields of
    `build` (BuildRequest.from_dict)."""
    task_args.ignored("provision_agent", newer)
    rt = runtime.current()
    with engine_metrics(rt).errors_counted("provision"):
        request = BuildRequest.from_dict(build)
        try:
            return _provision(rt, request)
        except BeingProvisioned as held:
            if not held.by_task:
                raise  # a repair's or a fail's short step: it provisions nothing (RQ's retry)
            # Another live task holds the lease (a duplicate delivery's job, a re-drive or the
            # reconcile pass's restart racing this one): it decides the build and settles it
            # (placed, or in the waiting set, where re-drives find it), as a re-drive leaves
            # it (workers.engine.redrive). Raised, it was counted a provision error (each try
            # one more in CIProvisioningFailing's ratio, paging through a burst where nothing
            # failed), logged as a warning and retried by RQ up to five times, each retry
            # one more error, for work already done. A dead holder's lease was freed above.
            log.info("build being provisioned by another task; left to it",
                     extra={"build_key": request.build_key})
            return {"build_key": request.build_key, "skipped": "held"}
        except TemplateGone as err:
            # Failed for good, once the lease is let go, as a re-drive fails it (workers.engine.
            # redrive: its queue item cancelled, if it has one). Left queued, the reconcile
            # loop's restart of stalled builds provisioned it again every lease period, for
            # ever, and its commit's run mark held that commit in flight (a push of it again a
            # duplicate, the catch-up taking it for built).
            from workers.engine import failures  # it imports this module
            rt.capacity.remove_waiting(request.build_key)
            failures.fail_unprovisionable(rt, request, err)
            raise


class BeingProvisioned(RetryableError):
    """Another task holds the build's provision lease: it is deciding the build now, and
    settles it (placed, or back in the waiting set). Expected whenever re-drives overlap (a
    release's, the next release's, the reconcile pass's, a provision's once-more), so a
    re-drive leaves the build to that task without counting an error or logging a line for it
    (workers.engine.redrive).

    `by_task`: held by a task that renews it (a provision; a release, which ends the build).
    Not so (a short step of the reconcile pass's repairs, a fail: workers.engine.failures,
    lost_triggers, blocked_builds), the holder provisions nothing: a provision job left the
    build to it, and the build sat with no job until the reconcile pass found it stalled, a
    lease period later (ten while the queue holds jobs); its job is retried instead."""

    def __init__(self, message: str, *, by_task: bool = True):
        super().__init__(message)
        self.by_task = by_task


class TemplateGone(PermanentError):
    """A build's pod template is no longer in the config (renamed or removed while it
    waited)."""


def queue_provision(rt: runtime.Runtime, request: BuildRequest) -> None:
    """Queue a provision of this build (from the reconcile loop; webhooks queue theirs with
    their dedupe, through the intake: workers.engine.intake)."""
    rt.state.queue.enqueue_call(
        PROVISION_TASK, kwargs={"build": request.to_dict()}, timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=JOB_RESULT_TTL_SECONDS, failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY,
        description=f"provision_agent {request.build_key}")


def lease_key(rt: runtime.Runtime, build_key: str) -> str:
    return rt.state.prefix + "provisioning:" + build_key


def provision_lease(rt: runtime.Runtime, build_key: str, *, renewed: bool = False) -> Lease:
    """Held while a task provisions the build: two tasks never provision one build at once, and
    a build whose provision died with its worker is known by the lease having lapsed. Kept by
    a heartbeat for as long as the task runs (workers.concurrency.heartbeat): a provision
    slower than the lease's time to live does not lose it to a second task. `renewed`: taken by
    a task that keeps it so, whose death is then seen within seconds (lease.free_if_stale)."""
    return Lease(rt.state.redis, lease_key(rt, build_key), rt.settings.provision_lease_seconds,
                 renewed=renewed)


def _provision(rt: runtime.Runtime, request: BuildRequest, *, refresh: bool = True,
               turn: Turn = NO_TURN) -> dict[str, Any]:
    """One build, under its lease; `refresh` writes the capacity state after the decision (a
    re-drive pass writes it once at its end instead); `turn` orders its admission after the
    builds before it in a re-drive (workers.concurrency.turns)."""
    from workers.engine import redrive  # it imports this module
    try:
        lease = provision_lease(rt, request.build_key, renewed=True)  # by its Heartbeat
        # A lease its holder stopped renewing is its dead holder's (SIGKILL, an OOM kill):
        # freed and taken now (the reconcile pass's rule: workers.engine.repairs), not left
        # to a holder that will never settle the build.
        if not lease.acquire() and not (
                free_if_stale(rt.state.redis, [lease.key], rt.settings.provision_lease_seconds)
                and lease.acquire()):
            holder = rt.state.redis.get(lease.key)  # None: let go meanwhile (retried)
            raise BeingProvisioned(
                f"build {request.build_key} is being provisioned by another task",
                by_task=(holder.decode() if isinstance(holder, bytes) else holder or "")
                .startswith(RENEWED))
        try:
            asked = redrive.asked(rt.state)  # under the try: a Redis error lets the lease go
            with Heartbeat(lease, what=f"provision {request.build_key}") as beat:
                try:
                    result = _provision_held(rt, request, beat, refresh=refresh, turn=turn)
                except Unauthorized as err:
                    _note_jenkins_wait(rt, request.build_key, refused_reason(redact(str(err))))
                    raise
                except (Unavailable, Overloaded):  # Jenkins' only: the API server's is
                    _note_jenkins_wait(rt, request.build_key, NOT_ANSWERING)  # ApiNotServing
                    raise
        finally:
            let_go(lease, what=f"provision {request.build_key}")  # once Redis answers
    finally:
        turn.end()  # one that returned before its admission holds no later build back
    # Room freed while this one decided on a view that may not have shown it yet (another
    # process's watch saw it; a re-drive that came for it was deferred by this lease): once
    # more, now that the lease is let go (workers.engine.redrive, asked).
    if "waiting" in result and redrive.asked(rt.state) != asked:
        redrive.queue_pass(rt.state)
    return result


def _note_jenkins_wait(rt: runtime.Runtime, key: str, reason: str) -> None:
    """Why the build waits, on its record (JENKINS_WAIT_FIELD): Jenkins refuses us until an
    admin fixes a setting (a token, Agent/Create or Agent/Connect, a proxy's sign-in), or does
    not answer (restarting: no connection, its 503 while it loads; overloaded: read timeouts,
    429), and the build stayed `queued` with no word for its commit status or the status page
    (or `waiting` for the capacity it now has: a re-drive placed it). Best effort: Redis away,
    the next try notes it."""
    try:
        if rt.state.get_build(key).get("status") in (BuildStatus.QUEUED, BuildStatus.WAITING,
                                                      BuildStatus.POD_CREATED):
            rt.state.update_build(key, **{JENKINS_WAIT_FIELD: reason})
            refused_builds.note(rt.state, key, time.time())
            commit_statuses.touch(rt.state, key)
    except RetryableError as noted:
        log.warning("why the build waits on Jenkins not noted on it",
                    extra={"build_key": key, "error": str(noted)})


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


def _trigger_once(rt: runtime.Runtime, request: BuildRequest, state: dict[str, str], *,
                  write_status: bool = True) -> int:
    """Start the build in Jenkins, at most once per build key. The attempt is written down
    before the call: a task that runs again after one died between the call and writing its
    answer (a killed worker, a timeout after Jenkins took the request) first looks for the
    build by its agent parameter, queued or started, and triggers only if there is none. The
    agent, not the build key: another installation sharing the Jenkins that got the same
    push has the same key, never the same agent name (keys.agent_name)."""
    key = request.build_key
    found = None
    # Jenkins' session as it takes the build: one that has not got it later lost it in a
    # crash (workers.engine.lost_triggers). A read of the last seconds serves: a burst's triggers
    # share one, and a controller takes far longer to stop and start again.
    session = rt.jenkins.session(max_age=SESSION_MAX_AGE_SECONDS)
    jenkins_sessions.seen(rt.state, session, time.time())
    # The name its item carries: its first agent's, whatever agent it has now (agent_names).
    carried = request.parameters.get(AGENT_PARAMETER, request.agent_name)
    if state.get("trigger_attempted_at"):
        found = rt.jenkins.find_queue_item(request.job, AGENT_PARAMETER, carried,
                                           since=first_triggered(state),
                                           agent=request.agent_name)
    if found is None:
        job_checks.before_trigger(rt.jenkins, request.job, request.parameters,
                                  context={"build_key": key, "agent": request.agent_name})
        rt.state.update_build(key, trigger_attempted_at=time.time())
        try:
            queue_item = rt.jenkins.trigger_build(request.job, request.parameters,
                                                  find_by=(AGENT_PARAMETER, carried),
                                                  agent=request.agent_name)
        except PermanentError:
            job_checks.forget(rt.jenkins, request.job)  # it let this build through: changed
            raise
    else:
        queue_item = found
    marks = {"queue_item": queue_item, "triggered_at": time.time(), jenkins_sessions.FIELD: session,
             JENKINS_WAIT_FIELD: None}
    if write_status:
        rt.state.advance_build(key, status=BuildStatus.TRIGGERED, **marks)
    else:  # the provision writes it, once its pod's create has ended
        rt.state.update_build(key, **marks)
    log.info("build triggered", extra={"build_key": key, "agent": request.agent_name,
                                       "job": request.job, "queue_item": queue_item,
                                       "found_queued": found is not None})
    return queue_item


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


def redrive_waiting(**newer: Any) -> dict[str, int]:
    """The re-drive's RQ task under the dotted name it has always been queued by
    (workers.engine.redrive.REDRIVE_TASK): jobs queued before an upgrade, and by workers of the
    previous release during a rolling one, run it. The re-drive lives in workers.engine.redrive."""
    from workers.engine import redrive  # it imports this module
    return redrive.redrive_waiting(**newer)
