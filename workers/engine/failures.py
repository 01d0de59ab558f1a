"""A build whose agent cannot start fails at once, visibly, and for good (and so does one
whose agent pod went away while it ran: workers.engine.lost_agents).

``fail_build`` first marks the build failed with the reason (status ``failed``,
``fail_reason``, ``error``): from then on nothing provisions it again (a provision, a re-drive,
restart_stalled and an RQ retry all skip a finished build). Then its Jenkins queue item is
cancelled, or its build aborted if it started; its pod and Jenkins node are deleted; its
reservation and agent slot are given back; and
``ci_autoscaler_agent_start_failures_total{template,reason}`` counts it, once. It runs under the
build's provision lease, so it never races a provision, and every step is idempotent: a job run
again (RQ retry, a second worker, the reconcile pass) finishes what is left and counts nothing
twice. ``fail_start`` is the RQ task that workers.agent_starts.watch queues from a watch event.
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from workers import runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import agent_names, lost_runs, task_args, tasks
from workers.adapters import leftover_store
from workers.adapters.kube_errors import Refused
from workers.adapters.redis_state import FINISHED, BuildStatus
from workers.agent_starts import disrupted, unreached
from workers.core.commit_status import redact
from workers.core.errors import PermanentError, RetryableError
from workers.core.jenkins_queue import first_triggered
from workers.core.models import BuildRequest
from workers.core.ports import BuildState, QueueItem, RunRef
from workers.core.routing import AGENT_PARAMETER
from workers.core.start_failures import (
    JUDGED, FailureReason, StartFailure, had_connected, judged, lost_to_disruption)

log = logging.getLogger("ci_autoscaler.failures")
START_FAILED = "start_failed"  # why the pod was deleted (ci_autoscaler_agents_deleted_total)
NOT_STOPPED = "not stopped"  # stop_in_jenkins: Jenkins refused the cancel or abort for good
_NOT_STOPPED_LOG = "failed build: could not stop it in Jenkins; its queue item or run is " \
    "left there"
# stop_in_jenkins: the build's queue item id is another's item or run now (left alone)
ANOTHERS = "its queue item id is another's now"


def fail_start(build_key: str, agent_name: str, reason: str, detail: str,
               only_before_connect: bool = False, disrupted: bool = False,
               **newer: Any) -> dict[str, Any]:
    """The RQ task: fail the build whose agent pod cannot start (see fail_build). `newer`: a
    newer release's arguments, run without (workers.engine.task_args)."""
    task_args.ignored("fail_start", newer)
    rt = runtime.current()
    with tasks.engine_metrics(rt).errors_counted("release"):
        return fail_build(rt, build_key, agent_name,
                          StartFailure(reason, detail, only_before_connect, disrupted))


def fail_build(rt: runtime.Runtime, build_key: str, agent: str,
               failure: StartFailure, run_decides: bool = True) -> dict[str, Any]:
    """Fail the build for good with this reason and clean up after it (module docstring).
    A failure that only counts before the agent connected (a pod that ended) is dropped when
    the agent had connected and its build's work does not wait for it in Jenkins' queue, or
    Jenkins reports the build finished: that end was the build's own. A failure of an agent
    the build no longer has (a late event of its pod before it was placed again under a new
    name: workers.engine.agent_names) is dropped too.
    A Pipeline run whose agent was lost is left to decide, its build not failed
    (workers.engine.lost_runs), unless `run_decides` is False (its time to decide is up).
    RetryableError while a provision holds the build."""
    lease = tasks.provision_lease(rt, build_key)
    if not lease.acquire():
        raise RetryableError(f"build {build_key} is being provisioned; failing it later")
    try:
        result = _fail_held(rt, build_key, agent, failure, run_decides)
    finally:  # once Redis answers: a raise lost the fail's end and a placed-again provision
        let_go(lease, what=f"fail {build_key}")
    if result.get("placed_again"):  # a provision takes the lease itself
        request = rt.state.get_build(build_key).get("request")
        if request:
            tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(request)))
    return result


def fail_unprovisionable(rt: runtime.Runtime, request: BuildRequest,
                         err: PermanentError) -> None:
    """A re-driven build that cannot be provisioned, for good (workers.engine.redrive). Its
    pod refused by the API, or its Jenkins build queued already (before it waited: a replaced
    pod, a resumed park; or beside the create that failed), it is failed as a build whose agent
    cannot start (fail_build): its queue item is cancelled, or its run aborted, and its Jenkins
    node deleted. Marked failed with no fail_reason, its item waited on the label of an agent
    gone for ever, and the adoption took it for a Replay and ran the build after all; a refused
    pod's own fail, queued by the provision, found the build already failed and did nothing.
    One never triggered is marked failed with the error, as before."""
    key = request.build_key
    refused = isinstance(err, Refused)
    state = rt.state.get_build(key)
    # trigger_attempted_at, no queue_item: Jenkins may hold its item, never written down (its
    # worker killed in between); the fail finds it by its agent parameter (stop_in_jenkins)
    if not refused and not state.get("queue_item") and not state.get("trigger_attempted_at"):
        rt.state.update_build(key, status=BuildStatus.FAILED, error=str(err))
        log.error("build cannot be provisioned", extra={"build_key": key, "error": str(err)})
        return
    reason = FailureReason.POD_REFUSED if refused else FailureReason.PROVISION_FAILED
    try:
        # its agent as the provision left it (placed again: a new name, workers.engine.agent_names)
        fail_build(rt, key, state.get("agent") or request.agent_name,
                   StartFailure(str(reason), str(err)))
    except RetryableError as fault:  # held by a task, or Jenkins away: the sweep or a later
        # pass finishes it (workers.engine.jenkins_leftovers), the build being failed already if so
        log.warning("could not fail a build that cannot be provisioned; left for later",
                    extra={"build_key": key, "error": str(fault), "reason": str(reason)})


def _fail_held(rt: runtime.Runtime, key: str, agent: str,
               failure: StartFailure, run_decides: bool = True) -> dict[str, Any]:
    ctx = {"build_key": key, "agent": agent, "reason": failure.reason}
    state = rt.state.get_build(key)
    first = not state.get("fail_reason")
    if first:
        why_not = _not_a_start_failure(rt, key, state, agent, failure)
        if isinstance(why_not, StartFailure):  # its running build's agent taken away
            failure, why_not = why_not, None
        if why_not:
            log.info("not a start failure: %s", why_not, extra=ctx)
            return {"build_key": key, "skipped": why_not}
        if disrupted.place_again(rt, key, agent, state, failure):  # stopped before it ran
            return {"build_key": key, "placed_again": failure.reason}
        if failure.reason == FailureReason.POD_LOST and run_decides:
            if lost_runs.handed_over(state):  # a late sight of the same loss
                return {"build_key": key, "skipped": "its Pipeline run decides already"}
            if lost_runs.hand_over(rt, key, agent, state, failure):
                return {"build_key": key, "run_decides": failure.reason}
    # Before the build is failed: a stop that ends half-way (the pod gone before a sweep
    # comes back, or refused for good) is finished by workers.engine.jenkins_leftovers.
    leftover_store.note(rt.state, key, time.time())
    # The kubelet's message may name a registry mirror as https://user:password@host: kept
    # out of the record (shown on the status page, read by GitLab's status) and the log.
    failure = replace(failure, detail=redact(failure.detail))
    if first:
        rt.state.update_build(key, status=BuildStatus.FAILED, fail_reason=failure.reason,
                              error=failure.detail, failed_at=time.time())
        template = state.get("template", "unknown")
        if failure.reason == FailureReason.POD_LOST:  # it had started: not a start failure
            if not lost_runs.handed_over(state):  # counted when its run was left to decide
                tasks.engine_metrics(rt).agent_lost(template)
            log.error("the build's agent pod went away while it ran: build failed",
                      extra={**ctx, "detail": failure.detail})
        else:
            tasks.engine_metrics(rt).agent_start_failed(template, failure.reason)
            log.error("the build's agent cannot start: build failed",
                      extra={**ctx, "detail": failure.detail})
    jenkins = stop_in_jenkins(rt, state, ctx)
    if jenkins == NOT_STOPPED:  # refused for good: asked again later (jenkins_leftovers)
        leftover_store.later(rt.state, key, time.time() + leftover_store.RETRY_SECONDS)
    else:
        leftover_store.done(rt.state, key)
    # The one clean-up of an agent (pod, Jenkins node, reservation, slot, re-drive); it keeps
    # the status failed, since the build has a fail_reason now.
    released = tasks.release(rt, key, agent, START_FAILED)
    log.info("failed build cleaned up", extra={**ctx, "jenkins": jenkins})
    return {**released, "failed": failure.reason, "jenkins": jenkins}


def _not_a_start_failure(rt: runtime.Runtime, key: str, state: dict[str, str], agent: str,
                         failure: StartFailure) -> str | StartFailure | None:
    """Why this is no start failure after all, or None; or the failure it is instead: a pod
    Kubernetes stopped (evicted, its node shut down: `failure.disrupted`) after its agent
    connected and took the build's work is a lost agent (lost_to_disruption), the build
    failed and aborted in Jenkins as for a drained pod. A pod that ended is the build's own
    end once its agent had connected, seen by our poll (agent_online_at), or, when the pod
    ended before the poll saw it, by Jenkins (its build finished; its agent's computer shows
    it connected: had_connected), unless its build's work still waits in Jenkins' queue for
    that agent (workers.agent_starts.unreached: it never reached it). That end goes the way
    of any agent seen online: its OOM kill recorded (job_history), its pod released as ended
    by the reconcile pass (repairs), or by the build's COMPLETED, and the build's result
    Jenkins' own."""
    if not state:
        return "unknown build"
    if state.get("status") in FINISHED:
        return f"build already {state['status']}"
    if state.get("agent") and agent != state["agent"]:
        # A late event of a pod the build had before it was placed again under a new name
        # (workers.engine.agent_names): that pod is gone, and its failure is not the new one's.
        return f"agent {agent} is no longer the build's (now {state['agent']})"
    if disrupted.replaced(state, agent):  # a late sight of the pod placed again: no new stop
        return f"agent {agent}'s pod was placed again already"
    if not failure.only_before_connect:
        return None
    found, number = None, None
    if state.get("queue_item"):
        found, number = rt.jenkins.build_state(state.get("job", ""), int(state["queue_item"]),
                                               _number(state), since=first_triggered(state))
        if found == BuildState.FINISHED:
            return "Jenkins reports the build finished"
    seen = bool(state.get("agent_online_at"))
    activity = None if seen else rt.jenkins.agent_activity(agent)
    created = float(state["pod_created_at"]) if state.get("pod_created_at") else None
    if seen or had_connected(activity, created):
        # A process that connected is not a build that ran there: one killed after it came
        # online (whether our poll saw it or not: a race of a few seconds must not decide)
        # but before Jenkins handed it the build, or in the handshake before it came online
        # (a JVM OOM-killed as it starts), took nothing and cannot now. Judged as an agent
        # that never connected, whose pod ended: a start failure, as it is fail-fast for
        # those (not re-placed: the agent's own JVM or the node's pressure killed it, and a
        # job's OOM goes to job_history's retry with more memory). Skipped, its item waited
        # for ever on the label of a gone agent (the adoption's Replay ran it after all).
        # An adopted build (node_label) is left out: its agent takes any item of a shared
        # label, not its own item only.
        if not state.get("node_label") and unreached.waits_for(
                rt, found=found, names=(agent, *agent_names.previous(state)), since=created,
                run=_run(state, number)):
            return None
        if failure.disrupted:  # not the build's doing: lost, as a drained agent is
            return lost_to_disruption(agent, failure)
        # Its work not waiting: this end is the build's own, asked no more (the sweep
        # passes it over from now on: agent_starts.watch.worth_failing)
        rt.state.update_build(key, **{JUDGED: judged(agent, failure)})
        if seen:
            return "the agent had connected"
        if activity is not None and not activity.offline:  # what the poll would have marked
            from workers.agent_starts import online  # it imports this module
            online.mark_online(rt, key, agent, state, time.time())
        # Left unmarked once its connection is gone: when it connected is not known, and a
        # time made up would go into its start's and its stages' measures.
        return "Jenkins shows its agent had connected"
    return None


def stop_in_jenkins(rt: runtime.Runtime, state: dict[str, str], ctx: dict[str, Any],
                    queue: list[QueueItem] | None = None) -> str:
    """Cancel the build's queue item, or abort its build if it started; what was done.
    A cancel or abort Jenkins refuses for good (our user lacks Job/Cancel: Queue.doCancelItem
    answers 422, a run's stop 403) is given up on here (NOT_STOPPED): waiting for it would hold the pod, its node's room and the Jenkins
    agent for ever; the item stays in Jenkins' queue, on a label no agent will have, and
    workers.engine.jenkins_leftovers asks again now and then (the adoption leaves a failed build's
    own item alone, and its record is kept till then). A read that fails, for good or
    not (a 401 while the API token is rotated), is raised: it refused no cancel, and the
    fail is finished once Jenkins answers (the sweep, while the pod stands).

    Only an item or a run that is the build's is stopped (`its_own`): after a controller
    killed without its shutdown, an item queued since its last save is lost and its id given
    again (hudson.model.Queue.load sets WaitingItem.COUNTER as queue.xml saved it), maybe to
    a person's build, or another installation's. `queue`: Jenkins' queue as read (read here
    when the item is found queued and not in it)."""
    if not state.get("queue_item"):
        state = _found_item(rt, state, ctx, queue)
        if not state.get("queue_item"):
            return "not triggered"
    job, item = state.get("job", ""), int(state["queue_item"])
    found, number = rt.jenkins.build_state(job, item, _number(state),
                                           since=first_triggered(state))
    if found == BuildState.QUEUED:
        queued = _queued(rt, item, queue)
        if queued is not None and not its_own(queued.job, queued.parameters, state):
            return ANOTHERS
        if not _stopped(rt.jenkins.cancel_queue_item, item, what=f"queue item {item}",
                        ctx=ctx):
            return NOT_STOPPED
        found, number = rt.jenkins.build_state(job, item, _number(state),  # or it started
                                               since=first_triggered(state))
        if found == BuildState.CANCELLED:
            return "queue item cancelled"
        if found == BuildState.QUEUED:  # answered, not done: an older core without Job/Cancel
            # (Queue.doCancelItem before JENKINS-21311 redirects, whether it cancelled or not)
            log.error(_NOT_STOPPED_LOG, extra={**ctx, "error": f"queue item {item} still "
                                                               "queued after its cancel"})
            return NOT_STOPPED
    if found == BuildState.RUNNING and number is None:  # left the queue, no Run made yet
        raise RetryableError(f"queue item {item} has left the queue, its run not numbered "
                             "yet: aborted once it is")
    if found == BuildState.RUNNING and number is not None:
        if _number(state) is None:  # the run its queue item left as: the build's?
            run = rt.jenkins.run_info(job, number)
            if run is not None and not its_own(job, run.parameters, state):
                return ANOTHERS
        if not _stopped(rt.jenkins.abort_build, job, number, what=f"build {number} of job "
                        f"{job!r} (queue item {item})", ctx=ctx):
            return NOT_STOPPED
        return f"build {number} aborted"
    return str(found)


def _found_item(rt: runtime.Runtime, state: dict[str, str], ctx: dict[str, Any],
                queue: list[QueueItem] | None) -> dict[str, str]:
    """The build's state with the queue item of a trigger Jenkins took whose item was never
    written down (its worker killed in between: trigger_attempted_at, no queue_item), found
    by its agent parameter as the provision's retry finds it (tasks._trigger_once), and
    recorded; the state as it was if there is none."""
    # the name its item carries: its first agent's (a build placed again: agent_names)
    carried = next(iter(agent_names.previous(state)), state.get("agent"))
    if not state.get("trigger_attempted_at") or not carried:
        return state
    item = rt.jenkins.find_queue_item(state.get("job", ""), AGENT_PARAMETER, carried, queue,
                                      since=first_triggered(state))
    if item is None:
        return state
    if ctx.get("build_key"):
        rt.state.update_build(ctx["build_key"], queue_item=item)
    return {**state, "queue_item": str(item)}


def _queued(rt: runtime.Runtime, item: int, queue: list[QueueItem] | None) -> QueueItem | None:
    """The queue item of this id, from `queue` if it holds it, else from Jenkins' queue read
    now: one queued after the pass read its queue is new, maybe another's with our lost
    item's id after a hard restart, and must not be cancelled unread."""
    found = next((i for i in queue or () if i.id == item), None)
    return found or next((i for i in rt.jenkins.queue_items() if i.id == item), None)


def its_own(job: str, parameters: dict[str, str], state: dict[str, str]) -> bool:
    """Whether a queue item or run of `job` with these parameters is the build's: its job,
    and its agent parameter (CI_AUTOSCALER_AGENT). An adopted build's item was queued by
    Jenkins itself (by hand, a timer, a Replay): its parameters are not ours, so it goes by
    the id and job alone. One we triggered always carries the parameter (workers.checks.jobs
    refuses a job that does not declare it): an item without it is another's, such as a
    Pipeline's node block (ExecutorStepExecution.PlaceholderTask: no parameters, its task's
    URL the run's, so of the same job), whose id may be the failed build's after a hard
    restart. A build placed again under a new agent name (workers.engine.agent_names) keeps its
    first name in the parameter: any name it had is its own.

    The job is compared in any case (Jenkins finds items so: Jenkins.items is a
    CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), and for one we triggered not at
    all: the item holds the job itself (Queue.Item.task), so a job renamed while the item
    waited (AbstractItem.renameTo; refused only while the job builds, Job.checkRename)
    names its new name, and the item carrying the build's agent, a name no other build has,
    is the build's still."""
    if state.get("node_label"):
        return job.lower() == state.get("job", "").lower()
    agent = parameters.get(AGENT_PARAMETER)
    return agent is not None and agent in {state.get("agent"), *agent_names.previous(state)}


def _stopped(stop: Callable[..., None], *args: Any, what: str, ctx: dict[str, Any]) -> bool:
    """Whether stop(*args) was done: False, logged, when Jenkins refuses it for good
    (PermanentError)."""
    try:
        stop(*args)
    except PermanentError as err:
        log.error(_NOT_STOPPED_LOG, extra={**ctx, "error": f"{err} ({what})"})
        return False
    return True


def _run(state: dict[str, str], number: int | None) -> RunRef | None:
    """The build's run, by the number Jenkins' API gave (its queue item's run), if any."""
    return RunRef(state.get("job", ""), number) if number is not None else None


def _number(state: dict[str, str]) -> int | None:
    number = state.get("jenkins_build")
    return int(number) if number else None
