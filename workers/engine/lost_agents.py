"""Builds whose agent pod went away while they ran: a node drained (`kubectl drain` evicts
through the Eviction API: the pod is deleted, never Failed), a spot or preemptible node
reclaimed (its pods are deleted with the Node object), a pod deleted by hand. Nothing tells
Jenkins: its computer goes offline and a Pipeline waits for the agent to come back, which a
new pod could never do (its workspace is gone), so the build would hang, holding its agent
slot and reservation, until someone aborts it. A pod the kubelet stops in place (phase
Failed: evicted under node pressure, a graceful node shutdown) is failed the same way, at
once, from the worker's pod watch (workers.engine.failures: core.start_failures.lost_to_disruption);
another pod that ends is released by workers.engine.repairs (`pod_ended`).

A running build whose agent had connected and whose pod is missing from the pass's listing,
or being deleted, is marked
(`pod_missing_at`); still so `lost_event_seconds` later (a listing that lagged, or the build's
own end on its way, has had its time) Jenkins is asked about it once: a build that finished
meanwhile is released as any build whose end was not notified; one still running is failed
with reason `pod_lost` through workers.engine.failures (its Jenkins build aborted, its Jenkins node,
slot and reservation freed), counted in ``ci_autoscaler_agents_lost_total{template}``.

A build whose agent never connected is not lost: its pod is being placed again (an agent that
did not come online, workers.agent_starts.online), or, drained before it connected, is made
again by workers.engine.repairs.restart_stalled (a Pipeline's STARTED comes before any agent
connects, so such a build may be `running`). Connected is as the poll of agents online saw it
(agent_online_at), or, when no poll saw it (the reconcile leader down or busy the while),
as Jenkins shows it once the pod has been missing that long: a run on the agent's executor
(Jenkins hands work to online computers only; a Pipeline's block stays there, waiting for its
agent). Left to restart_stalled, such a build's new agent name was refused for good
(workers.engine.agent_names.busy: the old agent runs the build) and the Pipeline waited for ever.
Nor is one whose agent connected but whose work never reached it (its queue item, or its
Pipeline's `agent` block, still waiting on the agent's label: workers.agent_starts.unreached):
nothing of it ran there, and a drain is no fault of the build, so it is provisioned again at
once, under a new name on that label, as one drained before its agent connected. Failed as
lost, its run was aborted for a build that never started.
"""

import json
import logging
import time
from collections.abc import Iterable

from workers import runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import adopted_done, agent_names, failures, lost_runs, tasks
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.agent_starts import jenkins_away, unreached
from workers.core.errors import Overloaded, RetryableError, Unauthorized, Unavailable
from workers.core.jenkins_queue import first_triggered
from workers.core.models import BuildRequest
from workers.core.ports import BuildState, PodInfo, RunRef
from workers.core.start_failures import LOST_RUN_FIELD, FailureReason, StartFailure

log = logging.getLogger("ci_autoscaler.lost_agents")
FIELD = "pod_missing_at"  # when a pass first found the running build's pod missing
# the reason and message of its DisruptionTarget condition then, if it was being deleted with
# one (EvictionByEvictionAPI: a drain; PreemptionByScheduler; DeletionByPodGC: "PodGC: node
# no longer exists" ...)
DISRUPTION_FIELD = "pod_disruption"


def fail_lost(rt: runtime.Runtime, builds: dict[str, dict[str, str]],
              pods: Iterable[PodInfo], now: float) -> int:
    """Mark, then fail (or release, if Jenkins says it finished) the running builds whose pod
    is gone; `pods`: our pods as the pass listed them. How many were failed or released."""
    pods = list(pods)
    present = {pod.name for pod in pods if not pod.deleting}
    # who took a pod being deleted away, while the pass can still read it (DisruptionTarget)
    # (its reason and message: "DeletionByPodGC" alone told a developer nothing)
    taken = {pod.name: pod.disruption_text for pod in pods if pod.deleting and pod.disruption}
    ended = 0
    for key, build in builds.items():
        run_bound.checkpoint()  # the pass may end before this build
        agent = build.get("agent", "")
        if build.get("status") != BuildStatus.RUNNING or not agent:
            continue
        missing_since = float(build.get(FIELD) or 0)
        if agent in present:
            if missing_since:  # a listing that had lagged: it is back
                rt.state.update_build(key, **{FIELD: "", DISRUPTION_FIELD: ""})
            continue
        if not missing_since:
            # No poll saw it connected: Jenkins is asked (a read a pass for such a build,
            # till restart_stalled gives it a new name), not marked unasked: the mark would
            # touch the build, and put its restart off by a lease period.
            if not build.get("agent_online_at") and not _ran_there(rt, agent):
                continue  # never connected: restart_stalled makes its pod again
            rt.state.update_build(key, **{FIELD: now,
                                          DISRUPTION_FIELD: taken.get(agent, "")})
            log.info("a running build's agent pod is missing", extra={
                "build_key": key, "agent": agent, "disruption": taken.get(agent, "")})
            continue
        if now - missing_since < rt.settings.lost_event_seconds \
                or rt.state.get_build(key).get("status") != BuildStatus.RUNNING:
            continue  # (an earlier repair of this pass may have released it)
        try:
            ended += _end(rt, key, agent, build, now - missing_since, now)
        except (Unavailable, Overloaded, Unauthorized):  # Jenkins away, struggling or
            raise  # refusing our token: asked nothing more this pass (workers.engine.jenkins_steps)
        except RetryableError as err:  # a provision or release holds it: the next pass
            log.info("lost agent left for the next pass", extra={"build_key": key,
                                                                 "error": str(err)})
    return ended


def _ran_there(rt: runtime.Runtime, agent: str) -> bool:
    """Whether Jenkins shows the agent's executor running a run: it had connected, whatever
    our poll saw (one read, for a build missing its pod that no poll saw connected)."""
    activity = rt.jenkins.agent_activity(agent)
    return activity is not None and bool(activity.runs)


def _end(rt: runtime.Runtime, key: str, agent: str, build: dict[str, str],
         missing_for: float, now: float) -> int:
    number = build.get("jenkins_build")
    state, run = rt.jenkins.build_state(build.get("job", ""), int(build["queue_item"]),
                                        int(number) if number else None,
                                        since=first_triggered(build)) \
        if build.get("queue_item") else (BuildState.UNKNOWN, None)
    if state in (BuildState.FINISHED, BuildState.CANCELLED):  # its end was not notified
        lost_runs.record_end(rt, key, build, run)  # a run left to decide: its result
        tasks.release(rt, key, agent, "build_finished")
        return 1
    created = float(build["pod_created_at"]) if build.get("pod_created_at") else None
    # A run left to decide had its block on the agent's executor when its node was deleted
    # (workers.engine.lost_runs): a block waiting on the label since is its retry's, whatever
    # Jenkins did before (a restart then, its resumed block back on the agent since). Taken
    # for a resumed one, its retry got no agent and the run was aborted 10 minutes on.
    # A restart since then: a block waiting may be the one it resumed, until Jenkins gave up
    # on that one (lost_runs.retry_from). Taken for a resumed one for good, its retry got no
    # agent and the run was aborted at our bound.
    # A restart, not any absence: an outage (no connection, a 503, Jenkins' session the same
    # after it) resumes no block and stops no timer of Jenkins' (workers.agent_starts.
    # jenkins_away). Taken for one, a network that drops every few minutes kept a run that
    # never decides from its abort, and held its retry's block from a new agent 6 minutes.
    away = jenkins_away.restarted(rt, now)
    since = max(created or 0.0, lost_runs.retry_from(build, away)) or None
    asked = since is None or now >= since  # a block asking now is no resumed one
    ref = RunRef(build.get("job", ""), run) if run is not None else None
    # (an adopted build's agent takes any item of a shared label: left to the rules above)
    if not build.get("node_label") and asked and unreached.waits_for(
            rt, found=state, names=(agent, *agent_names.previous(build)), since=since,
            away=away, run=ref) and (not lost_runs.handed_over(build) or ref is None
                                     or lost_runs.block_ended(rt, agent, ref)):
        _place_again(rt, key, agent, now=time.time())
        return 0
    if build.get("node_label") and lost_runs.handed_over(build) and ref is not None \
            and asked and lost_runs.adopted_run_retried(rt, key, ref) \
            and lost_runs.block_ended(rt, agent, ref):
        # its block ended (cancelled, and run again: the adoption serves that one)
        tasks.release(rt, key, agent, adopted_done.REASON)
        return 1
    if lost_runs.deciding(build, now, away):  # its Pipeline run may still retry its block
        lost_runs.delete_left_node(rt, key, agent, build, away)  # what tells the run, if not yet
        return 0
    taken_by = rt.state.get_build(key).get(DISRUPTION_FIELD)
    result = failures.fail_build(rt, key, agent, StartFailure(
        str(FailureReason.POD_LOST), build.get(LOST_RUN_FIELD) or
        f"agent pod {agent} gone for {missing_for:.0f}s while its build ran"
        + (f" ({taken_by})" if taken_by else "")),
        run_decides=not lost_runs.handed_over(build))  # its time up: aborted as before
    return 0 if result.get("skipped") or result.get("run_decides") else 1


def _place_again(rt: runtime.Runtime, key: str, agent: str, now: float) -> None:
    """Under the build's provision lease: the build whose work never reached its connected
    agent, whose pod went, is provisioned again as one whose pod went before its agent
    connected (workers.engine.repairs.restart_stalled), at once rather than a lease period later:
    its record forgets that its agent was online and that its pod is missing; the provision
    makes a pod under a new agent name on the label the work waits on (workers.engine.agent_names).
    RetryableError when a task holds the build (the next pass)."""
    lease = tasks.provision_lease(rt, key)
    if not lease.acquire():
        raise RetryableError(f"build {key} is being provisioned or released")
    try:
        build = rt.state.get_build(key)
        if build.get("status") != BuildStatus.RUNNING or build.get("agent") != agent \
                or not build.get("request"):
            return  # released, failed or placed again meanwhile
        retried = lost_runs.handed_over(build)  # a Pipeline's retry(agent()) asks anew
        rt.state.update_build(
            key, agent_online_at=None, restarted_at=now, **{FIELD: ""}, **lost_runs.cleared(),
            decision=f"agent {agent} lost; the Pipeline run retried its node block: placed "
                     "again" if retried else
                     f"agent {agent} gone before its build reached it: placed again")
    finally:  # once Redis answers: a raise lost the build's provision queued below
        let_go(lease, what=f"place again {key}")
    tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(build["request"])))
    log.warning("a running build's agent pod went before its work reached it: placed again",
                extra={"build_key": key, "agent": agent})
