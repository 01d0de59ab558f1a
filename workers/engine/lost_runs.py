"""A Pipeline run whose agent was lost after it connected decides itself what comes next.

Jenkins has its own answer to an agent that goes: once the agent's node is deleted,
workflow-durable-task-step's ExecutorStepExecution.RemovedNodeListener cancels the node block
that ran there with a RemovedNodeCause (after ExecutorStepExecution.TIMEOUT_WAITING_FOR_NODE_
MILLIS, 5 minutes by default, the agent's computer still offline), which `retry(conditions:
[agent()])` (workflow-basic-steps' RetryStep with AgentErrorCondition) takes as an agent error
and answers with the block run again: a new ExecutorStepExecution.PlaceholderTask in the queue
on the block's label, in the same run. Our abort was a user's interruption
(CauseOfInterruption.UserInterruption, no AgentErrorCondition.Retryable cause), which no
retry retries: the Pipeline's designed recovery was defeated and the build failed.

So for such a run (its node block on the lost agent's executor, as Jenkins shows it) the
build is not failed nor its run aborted: the agent's pod and Jenkins node are deleted, its
reservation given back, and the build stays running with why its agent went (LOST_RUN_FIELD)
and when. From there the reconcile pass (workers.engine.lost_agents) goes the ways it has: a block
waiting on the agent's label gets a new pod under a new name (its `_place_again`, which
clears the fields: GitLab shows it running on, and its end is the run's COMPLETED); a run
that ends is released with Jenkins' result, which GitLab shows failed with the loss's reason
unless it is SUCCESS (core.commit_status); a run that neither retries nor ends within
RUN_DECIDES_SECONDS (node removal detection off, an older plugin) is aborted and failed
`pod_lost` as before. A Jenkins restart after the hand-over starts that time again: Jenkins'
cancel of the block was a timer of the process that stopped, and the restarted one resumes the
block on the gone node's own label and gives up on it 5 minutes later
(ExecutorStepDynamicContext.resume, the same RemovedNodeCause); a block waiting on the label
is taken for the retry's only once that one has had its time (retry_from). A node that
Jenkins failed to delete (a 500, a timeout) is deleted again by each reconcile pass while the
run is left to decide, its time counted from then (from a restart since the hand-over, if one
came: the resume's 5 minutes, not the deletion's, then end the block): until it is deleted,
nothing tells the run. A freestyle build has no such recovery (its steps fail with the agent's
channel closed): it is aborted and failed at once, as before (workers.engine.failures).

A run on a claimed warm agent goes the same way: the agent is given up (its store entry and
reservation), and the build, no longer on it, has its retried block placed again as any
build's (a pod of its own under a new name on the warm agent's label; not a second claim).
Its pod's eviction is found by workers.warm.lost (the pod's build-key label is its own name,
no build's: the worker's watch sees no build of it).

An adopted build's run too, but its block is not placed again: its agent's label is shared
with other items (a template's), and Jenkins hands the oldest item on it to whichever agent
is free, so a new agent of the build's could serve another run's block. Its agent served one
block (workers.engine.adopted_done); the retried block is an item like any on the label,
which the adoption serves (workers.engine.adoption). So once the run has asked for a node
again (`adopted_run_retried`: a block of the run in Jenkins' queue, or taken by another
adopted agent of ours), the build is released; a run that ends is released with it; one
that does neither within RUN_DECIDES_SECONDS is aborted and failed as before. A run's other
blocks already waiting when its agent was lost (its parallel branches' `node('maven')`,
each a PlaceholderTask of its own), and the build that had taken the run then, are no such
ask (recorded at the hand-over: WAITING_FIELD, TAKEN_FIELD): counted, the lost block's build
was released before its run decided anything, and a run that never did (node removal
detection off) hung with nothing to abort it. Nor is a block a branch queues while the lost
block is still on the deleted agent's executor (Jenkins keeps that computer until then:
block_ended), for an adopted build or one of ours: only a block asked once the lost one has
ended is its retry, or its next block in sequence (after a `catchError`, in a `finally`):
the queue shows both alike, and both are served alike.
"""

import logging
import time

from workers import runtime
from workers.engine import tasks
from workers.agent_starts import jenkins_away
from workers.agent_starts.disrupted import DELETED
from workers.core.errors import RetryableError
from workers.core.jenkins_queue import first_triggered
from workers.core.ports import BuildState, RunRef
from workers.core.redaction import redact
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER
from workers.core.start_failures import (LOST_RUN_AT_FIELD, LOST_RUN_FIELD,
                                         LOST_RUN_NODE_LEFT_FIELD, StartFailure)
from workers.warm import agents as warm_agents

log = logging.getLogger("ci_autoscaler.lost_runs")
# Jenkins cancels the lost block 5 minutes after its node is deleted (ExecutorStepExecution.
# TIMEOUT_WAITING_FOR_NODE_MILLIS, ExecutorPickle's default), and a retry queues its block at
# once: twice that, then the run is taken for one that will not decide.
RUN_DECIDES_SECONDS = 600.0
# After a restart, the resumed block waits on the gone node's label until the restarted
# Jenkins gives up on it (ExecutorStepDynamicContext.resume: TIMEOUT_WAITING_FOR_NODE_MILLIS
# after the resume), and a minute more: the resume comes once Jenkins has loaded, after the
# last pass that saw it away.
RESUMED_BLOCK_SECONDS = 360.0
# An adopted build's run at its hand-over: the ids of its blocks then waiting in Jenkins'
# queue (comma-separated), and the build of ours the run's record named (adopted_run_retried)
WAITING_FIELD = "lost_run_waiting"
TAKEN_FIELD = "lost_run_taken_by"


def deciding(build: dict[str, str], now: float, away: float = 0.0) -> bool:
    """Whether the build's run was left to decide after its agent was lost, and may still;
    `away`: when Jenkins was last seen restarted (workers.agent_starts.jenkins_away.restarted:
    an outage is no restart, and keeps no run from its bound). A restart
    since the hand-over starts the run's time again: Jenkins' own cancel of the block was a
    timer of the process that stopped (RemovedNodeListener), and the restarted one gives up
    on the resumed block only TIMEOUT_WAITING_FOR_NODE_MILLIS after the resume."""
    since = handed_over_at(build)
    return bool(since) and now - max(since, _restarted_since(build, away)) < RUN_DECIDES_SECONDS


def retry_from(build: dict[str, str], away: float) -> float:
    """From when a block of the build's run waiting on its lost agent's label is its retry's
    (0: the build's run was not left to decide). From the hand-over; after a restart since,
    RESUMED_BLOCK_SECONDS after it: until then the block the restart resumed on the gone
    node's own label (ExecutorStepDynamicContext.resume: its PlaceholderTask scheduled again,
    its label the node's since the block ran there) may be the one waiting, and its
    workspace was on the lost agent (a new agent would run the rest of it in an empty one)."""
    restarted = _restarted_since(build, away)
    return restarted + RESUMED_BLOCK_SECONDS if restarted else handed_over_at(build)


def block_ended(rt: runtime.Runtime, agent: str, run: RunRef) -> bool:
    """Whether the run's block is off the lost agent's executor: only then is a block of the
    run asking for a node its retry's, or its next block's in sequence (a `node` after a
    `catchError`, a `finally`), both served as one. Jenkins keeps a deleted node's computer,
    executors and all, until they are done (AbstractCIBase.updateComputerList: "when all
    executors exit, it will be removed from the computers map"), the block on one until
    Jenkins cancels it; a block queued meanwhile is another parallel branch's next one. One
    read, for a build left to decide with a block of its run asking."""
    activity = rt.jenkins.agent_activity(agent)
    return activity is None or run not in activity.blocks


def _restarted_since(build: dict[str, str], away: float) -> float:
    """When Jenkins was last seen restarted (`away`: jenkins_away.restarted; an outage is no
    restart), if that was since the build's hand-over; else 0."""
    since = handed_over_at(build)
    return away if since and away >= since else 0.0


def handed_over(build: dict[str, str]) -> bool:
    """Whether the build's run was left to decide (its time up or not)."""
    return bool(build.get(LOST_RUN_AT_FIELD))


def handed_over_at(build: dict[str, str]) -> float:
    """When the build's run was left to decide (its node deleted); 0 if it was not."""
    return float(build.get(LOST_RUN_AT_FIELD) or 0)


def cleared() -> dict[str, str]:
    """The fields of a build whose run retried its block (placed again): not lost any more."""
    return {LOST_RUN_FIELD: "", LOST_RUN_AT_FIELD: "", LOST_RUN_NODE_LEFT_FIELD: ""}


def _node_deleted(rt: runtime.Runtime, agent: str) -> bool:
    """Whether Jenkins answered the node's delete (deleted, or no such node of ours); False
    when it failed it through every retry (a 500, a timeout, Jenkins away)."""
    try:
        rt.jenkins.delete_node(agent)
    except RetryableError as err:  # Unavailable included
        log.warning("Jenkins did not delete a lost agent's node: the next reconcile pass "
                    "deletes it", extra={"agent": agent, "error": str(err)})
        return False
    return True


def delete_left_node(rt: runtime.Runtime, key: str, agent: str,
                     build: dict[str, str], away: float) -> None:
    """For a run left to decide whose node Jenkins failed to delete at the hand-over: delete
    it now. The run's time to decide counts from this deletion, when Jenkins' own 5 minutes
    start (RemovedNodeListener). Not after a restart since the hand-over (`away`: when
    Jenkins was last seen restarted, jenkins_away.restarted): the restarted Jenkins resumed
    the block on the node's own label, in its queue, and gives up on it 5 minutes after the
    resume, the node there or not (ExecutorStepDynamicContext.resume); the deletion cancels nothing (RemovedNodeListener
    cancels a block on the deleted computer's executors). Its time stays the restart's
    (retry_from): counted from the deletion, the resumed block was taken for the retry's at
    once, and a new agent carrying its label ran its rest without its workspace."""
    if build.get(LOST_RUN_NODE_LEFT_FIELD) and _node_deleted(rt, agent):
        at = {} if _restarted_since(build, away) else {LOST_RUN_AT_FIELD: time.time()}
        rt.state.update_build(key, **{LOST_RUN_NODE_LEFT_FIELD: ""}, **at)


def hand_over(rt: runtime.Runtime, key: str, agent: str, state: dict[str, str],
              failure: StartFailure) -> bool:
    """Under the build's provision lease: leave the run to decide (module docstring) if it is
    a Pipeline run whose node block Jenkins shows on the lost agent; False, nothing done,
    otherwise (the caller fails the build as before). A claimed warm agent is given up too
    (its store entry, its own reservation), the build no longer on it: its retried block gets
    a pod of its own under a new name, as any build's. (An adopted build's, the adoption's.)"""
    if not state.get("queue_item"):
        return False
    job = state.get("job", "")
    number = int(state["jenkins_build"]) if state.get("jenkins_build") else None
    if number is None:
        found, number = rt.jenkins.build_state(job, int(state["queue_item"]), None,
                                               since=first_triggered(state))
        if found != BuildState.RUNNING or number is None:
            return False
    activity = rt.jenkins.agent_activity(agent)
    # RemovedNodeListener cancels only the body of a PlaceholderExecutable on the deleted
    # node's executors: no block of the run there (a freestyle build's run, a run between
    # its blocks), nothing would tell the run
    if activity is None or RunRef(job, number) not in activity.blocks:
        return False
    # (read before the node goes: a read that fails leaves the agent to the next try)
    asked = _asked_before(rt, key, RunRef(job, number)) if state.get("node_label") else {}
    # A restart before this hand-over, not yet noticed, is not one since it: noticed now
    # (the answers just read show the session), it is not taken for one that came after
    jenkins_away.notice(rt, time.time())
    node_left = not _node_deleted(rt, agent)  # its deletion makes Jenkins end the block
    if rt.cluster.delete_pod(agent):
        tasks.engine_metrics(rt).agent_deleted(state.get("template", "unknown"), DELETED)
    rt.capacity.release(key)
    warm = state.get("warm_agent") == agent
    if warm:  # the pod before the store entry (warm.lost: a pod from before installation
        # labels is ours only while the store knows it)
        warm_agents.store(rt).forget(state.get("template", ""), agent)
        rt.capacity.release(agent)  # the warm agent's own reservation (its key is its name)
    detail = redact(failure.detail)
    # Off the warm agent: placed again, a build still on one would take that agent's name
    # again (warm.claim.try_claim) and be left to warm.lost's rules, not its run's
    rt.state.update_build(key, **{LOST_RUN_FIELD: detail, LOST_RUN_AT_FIELD: time.time(),
                                  LOST_RUN_NODE_LEFT_FIELD: "1" if node_left else ""},
                          **({"warm_agent": None} if warm else {}), **asked,
                          decision=f"agent lost while the build ran ({detail}): its node "
                                   "deleted, the Pipeline run decides (retry(agent()))")
    tasks.engine_metrics(rt).agent_lost(state.get("template", "unknown"))
    log.warning("a Pipeline run's agent was lost while it ran: its node deleted, the run "
                "decides whether to retry its block", extra={
                    "build_key": key, "agent": agent, "jenkins_build": number,
                    "detail": detail, "node_left": node_left})
    return True


def _blocks_waiting(rt: runtime.Runtime, run: RunRef) -> list[int]:
    """The ids of the run's node blocks in Jenkins' queue (items naming the run, no build's
    parameters: ExecutorStepExecution.PlaceholderTask)."""
    return [item.id for item in rt.jenkins.queue_items()
            if item.run == run and AGENT_PARAMETER not in item.parameters]


def _asked_before(rt: runtime.Runtime, key: str, run: RunRef) -> dict[str, str]:
    """An adopted build's run as its agent is lost (the fields to record): its blocks
    already waiting (parallel branches), and the other build of ours that had taken it."""
    taken_by = rt.state.build_for_notification(job=run.job, number=run.number, agent=None,
                                               queue_id=None)
    return {WAITING_FIELD: ",".join(map(str, _blocks_waiting(rt, run))),
            TAKEN_FIELD: taken_by if taken_by not in (None, key) else ""}


def adopted_run_retried(rt: runtime.Runtime, key: str, run: RunRef) -> bool:
    """For an adopted build left to decide: whether its run has asked for a node again (its
    retry(agent()) ran the block again): a block of that run waits in Jenkins' queue (an
    item naming that run, no build's parameters), or an adopted agent of another build of
    ours took the run since (the run's notifications name that build now). Neither a block
    that waited already at the hand-over, nor a build adopted for one, nor the build that
    had taken the run then, is such an ask: another branch of a parallel (module docstring)."""
    build = rt.state.get_build(key)
    before = {int(i) for i in (build.get(WAITING_FIELD) or "").split(",") if i}
    taken_by = rt.state.build_for_notification(job=run.job, number=run.number, agent=None,
                                               queue_id=None)
    if taken_by is not None and taken_by not in (key, build.get(TAKEN_FIELD)):
        item = rt.state.get_build(taken_by).get("queue_item")
        if not item or int(item) not in before:  # not the agent made for a waiting branch
            return True
    return any(item not in before for item in _blocks_waiting(rt, run))


def record_end(rt: runtime.Runtime, key: str, build: dict[str, str],
               number: int | None) -> None:
    """Before a build whose end was not notified is released (its COMPLETED lost): its run
    keeps its result as Jenkins' API gives it, so GitLab gets `success`, `failed` or
    `canceled` from Jenkins' result (core.commit_status), not `canceled` "ended without a
    result" (a lost COMPLETED of a passed build showed its merge request's pipeline
    canceled); a run left to decide, so that GitLab says the loss's reason for an end other
    than SUCCESS. A run that is not the build's own by Jenkins' word is not read as the
    build's result: its queueId is not the build's queue item (a number a STARTED named,
    which anyone with the shared token can send; a Replay, which copies the parameters), or
    its CI_AUTOSCALER_BUILD_KEY is not the build's key (a controller killed before it saved
    its queue gives the lost item's id to the next item, workers.engine.lost_triggers, and
    behind a proxy that strips X-Jenkins-Session nothing triggers the build again: another
    build's run, a passed one, took its id)."""
    if number is None:
        return
    handed = handed_over(build)
    item = build.get("queue_item") or ""
    if not handed and not item.isdigit():
        return
    run = rt.jenkins.run_info(build.get("job", ""), number)
    if run is None or not run.finished or not run.result:
        return
    if not handed and (run.queue_id != int(item)
                       or run.parameters.get(BUILD_KEY_PARAMETER) != key):
        return
    rt.state.update_build(key, result=run.result, jenkins_build=number,
                          **({"build_url": run.url} if run.url else {}))
