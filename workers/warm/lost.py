"""Claimed warm agents lost before their build started, and their builds placed again.

A build that claims a warm agent is triggered on that agent's label at once (workers.warm.
claim), with no pod of its own coming: if the agent is gone before Jenkins hands it the build,
the queue item waits for that label for ever (a Pipeline's run starts on the controller, its
STARTED comes, and its `agent` block waits so). The connect timeout covers pods on their way
up only (workers.agent_starts.online), the lost-agent repair fails a running build whose pod
went, and leaves one whose agent is offline waiting (workers.engine.lost_agents), and the pool
forgets a claimed agent whose pod is gone, taking it for released (workers.warm.pool). So
each reconcile pass, before the repairs, looks at the builds on a warm agent (pod_created,
triggered, running) whose agent is lost:

- its pod is gone, being deleted, or ended (Failed: evicted, its node lost; Succeeded: its
  agent process exited), whatever Jenkins says: the computer of a dead pod can look online
  until Jenkins' ping notices;
- or its pod is there but its Jenkins computer has been offline for longer than the
  template's agentConnectTimeoutSeconds, counted from the claim or from when Jenkins was last
  seen away (workers.agent_starts.jenkins_away), whichever is later (its agent
  process died, its node lost its network, it never reconnected after a restart).

If the build's work still waits in Jenkins' queue for the agent, never having run on it (its
own queue item; or, its Pipeline run started, an item on the agent's label while Jenkins was
not restarted since the claim: a block resumed after a restart waits so too after running there,
and keeps the lost-agent repair's rules; `_waits_for`), the build, under its provision lease,
goes the normal way: its warm store entry, pod (agents_deleted_total reason ``warm_lost``),
Jenkins node and the warm agent's reservation go; its record forgets the warm agent and that
its agent was online; a provision is queued. The provision makes a fresh pod and Jenkins node
under a new agent name whose label is the warm agent's (workers.engine.agent_names): a node
registered again under the warm agent's name would have its secret (an HMAC of the name:
SlaveComputer.getJnlpMac), and the warm pod's process, still running on a node cut off, could
connect again and take the build. It triggers nothing: the queue item that waits for that
label (the build's, or its Pipeline block) is served by the new agent, and no second Jenkins
build is made. Cancelling the item
and triggering again under a new name would race the item starting, and cannot undo a
Pipeline's run. From then on the build is an agent on its way up like any (connect timeout,
start failures). Counted in ``ci_autoscaler_warm_lost_total{template,reason}``.

Work that ran on the agent is not placed again here: a pod that ended under it (evicted, its
node shut down; a Jenkins restart since the claim or not) is judged as the worker's watch judges a build's own pod
(workers.warm.lost_running: a Pipeline run left to decide, workers.engine.lost_runs); one
deleted is the lost-agent repair's (workers.engine.lost_agents). A fail of a build on a warm
agent that stopped half-way (Jenkins away before its run was aborted or its queue item
cancelled: agent_starts.watch.unfinished; its queue item written down or not) is finished
here, while its pod stands, as the start-failure sweep finishes one of a build's own pod: a
failed build is live no more, so it is found by the warm store's claim of a listed pod.
"""

import json
import logging
from collections.abc import Iterable

from workers.concurrency.heartbeat import let_go
from workers.engine import tasks
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.agent_starts import jenkins_away, unreached
from workers.agent_starts.watch import unfinished
from workers.core.errors import CIAutoscalerError, Overloaded, Unauthorized, Unavailable
from workers.core.jenkins_queue import first_triggered
from workers.core.models import BuildRequest
from workers.core.ports import PodInfo, PodPhase, RunRef
from workers.telemetry.metrics import WARM_LOST_REASONS
from workers.runtime import Runtime
from workers.warm import agents, lost_running, pool

log = logging.getLogger("ci_autoscaler.warm")
DELETED = "warm_lost"  # why the pod was deleted (agents_deleted_total{reason})
POD_GONE, OFFLINE = WARM_LOST_REASONS  # ci_autoscaler_warm_lost_total{reason}
# a running build's pod that ended after a restart since its claim: not placed again, judged
# as an end under its build (lost_running)
RESUMED = "resumed"
CLAIMED_AT = "warm_claimed_at"  # when the build claimed its warm agent (workers.warm.claim)
# A build on its warm agent: before its STARTED, or after a Pipeline's (its run starts on the
# controller before its `agent` block reaches an executor).
_ON_AGENT = frozenset({BuildStatus.POD_CREATED, BuildStatus.TRIGGERED, BuildStatus.RUNNING})
_FIELDS = ("status", "warm_agent", "template", "job", "queue_item", "request", CLAIMED_AT,
           "placed_at", "fail_reason", "error")


def replace_lost(rt: Runtime, pods: Iterable[PodInfo], now: float,
                 replaced: set[str] | None = None) -> dict[str, int]:
    """Place again the builds whose claimed warm agent is lost (module docstring); `pods`:
    the pass's listing. How many; the agents placed again are added to `replaced`: the rest
    of the pass must not judge their pods by that listing (the build's new pod, made under
    the same name by a worker meanwhile, would be taken for the lost one); so are the ended
    pods this pass could not judge (`_leave_ended`)."""
    result = {"warm_claims_lost": 0}
    if not any(t.warm is not None for t in rt.config.templates.values()):
        return result  # no pool: no read of the builds
    pods = list(pods)
    keys = rt.state.live_build_keys()
    # A failed build is live no more: one whose fail stopped half-way, by its pod standing.
    keys += sorted({build for build in pool.known(rt, pods).values() if build} - set(keys))
    rows = rt.state.build_fields(keys, *_FIELDS) if keys else []
    claimed = [(key, {k: v for k, v in zip(_FIELDS, row) if v is not None})
               for key, row in zip(keys, rows)]
    # and those whose fail stopped half-way, to finish (workers.warm.lost_running), with a
    # queue item or not: one never written down (its worker killed after Jenkins took the
    # trigger) is looked for by its agent parameter (failures.stop_in_jenkins)
    claimed = [(key, b) for key, b in claimed if b.get("warm_agent") and (
        (b.get("queue_item") and b.get("status") in _ON_AGENT) or unfinished(b))]
    if not claimed:
        return result
    by_name = {pod.name: pod for pod in pods}
    online: set[str] | None = None
    # Any absence for the connect clock (no agent connects to a Jenkins that is away); a
    # restart only for a block that may have run there (an outage resumes none)
    away = jenkins_away.last(rt.state)
    try:  # (a look at Jenkins' session: a request when no answer of the last seconds showed it)
        restarted = jenkins_away.restarted(rt, now)
    except Exception:  # Jenkins away: no build judged, the ended pods kept from the repairs
        _leave_ended(claimed, by_name, replaced)
        raise
    for n, (key, build) in enumerate(claimed):
        run_bound.checkpoint()  # the pass may end before this build
        agent = build["warm_agent"] or ""
        pod = by_name.get(agent)
        finish = unfinished(build)  # its fail stopped half-way: finished (lost_running)
        reason = ""
        if not finish:
            template = rt.config.templates.get(build.get("template") or "")
            claimed_at = _claimed_at(build, now)
            ended = pod is not None and not pod.deleting \
                and pod.phase in (PodPhase.FAILED, PodPhase.SUCCEEDED)
            if build.get("status") == BuildStatus.RUNNING and restarted >= claimed_at:
                # Its agent block may have run there before a restart (_waits_for): not
                # placed again. A pod that ended is judged as the watch judges a build's own
                # (lost_running: a Pipeline run left to decide); passed over, the repairs
                # released it as `pod_ended`, its run waiting on a gone agent.
                if not ended:
                    continue
                reason = RESUMED
            elif pod is None or pod.deleting or ended:
                reason = POD_GONE
            else:
                if template is None:
                    continue
                if now - max(claimed_at, away) <= template.agent_connect_timeout_seconds:
                    continue  # it may still connect (again): no Jenkins call
                if online is None:
                    online = jenkins_away.online_agents(rt, now)  # one call for the pass
                if agent in online:
                    continue
                reason = OFFLINE
        try:
            if finish:  # released by its fail: not the repairs' pod
                done = int(lost_running.finish_failed(rt, key, build, pod))
            elif reason == RESUMED:
                done = 0  # judged below, as an end under its build
            else:
                done = _replace(rt, key, agent, reason, now, restarted)
                result["warm_claims_lost"] += done
            if not done and not finish and pod is not None and not pod.deleting \
                    and lost_running.ended_under_build(rt, key, pod, now):
                done = 1  # its build's, failed or left to its run: not the repairs' pod
            if done and replaced is not None:
                replaced.add(agent)
        except (Unavailable, Overloaded, Unauthorized):  # Jenkins away, struggling or
            # refusing our token: asked nothing more this pass (workers.engine.jenkins_steps)
            _leave_ended(claimed[n:], by_name, replaced)
            raise
        except CIAutoscalerError as err:  # this one on the next pass; the others now
            _leave_ended([(key, build)], by_name, replaced)
            tasks.engine_metrics(rt).error("reconcile", err)
            log.warning("lost warm agent's build left for the next pass",
                        extra={"build_key": key, "agent": agent, "error": str(err)})
    return result


def _leave_ended(claimed: list[tuple[str, dict[str, str | None]]],
                 by_name: dict[str, PodInfo], replaced: set[str] | None) -> None:
    """The ended pods of these builds' warm agents, not judged this pass (a task held the
    build's lease, Jenkins failed a read): kept from the rest of the pass, whose repairs would
    release them as pods that ended (the start-failure sweep, which keeps a build's own pod
    from them so, finds no build of a warm pod), for the next pass to judge."""
    for _key, build in claimed:
        pod = by_name.get(build.get("warm_agent") or "")
        if replaced is not None and pod is not None and not pod.deleting \
                and pod.phase in (PodPhase.FAILED, PodPhase.SUCCEEDED):
            replaced.add(pod.name)


def _claimed_at(build: dict[str, str | None], now: float) -> float:
    return float(build.get(CLAIMED_AT) or build.get("placed_at") or now)


def _waits_for(rt: Runtime, build: dict[str, str], agent: str, restarted: float) -> bool:
    """Whether the build's work still waits in Jenkins' queue for this agent, never having run
    on it (workers.agent_starts.unreached, the same question a pod that ended or went asks),
    Jenkins' restarts counted from the claim: a block resumed after a restart waits so too
    after it ran there (its workspace is on that agent), and is left to the lost-agent repair
    and the restart's rules."""
    state, run = rt.jenkins.build_state(build.get("job", ""), int(build["queue_item"]),
                                        since=first_triggered(build))
    return unreached.waits_for(rt, found=state, names=(agent,),
                               since=_claimed_at(build, 0.0), away=restarted,
                               run=RunRef(build.get("job", ""), run) if run is not None else None)


def _replace(rt: Runtime, key: str, agent: str, reason: str, now: float,
             restarted: float) -> int:
    """Under the build's provision lease: if the build's work still waits in Jenkins' queue
    for this warm agent, give the agent up and queue the build's provision. 1 if done.
    `restarted`: when Jenkins was last seen restarted (jenkins_away.restarted)."""
    lease = tasks.provision_lease(rt, key)
    if not lease.acquire():  # a provision or release holds it: the next pass
        return 0
    try:
        build = rt.state.get_build(key)
        if build.get("warm_agent") != agent or build.get("status") not in _ON_AGENT \
                or not build.get("request") or not build.get("queue_item"):
            return 0  # released, failed or placed again meanwhile
        if not _waits_for(rt, build, agent, restarted):  # it ran there: not this repair's
            log.info("lost warm agent's build does not wait for it in Jenkins; left alone",
                     extra={"build_key": key, "agent": agent})
            return 0
        template = build.get("template", "unknown")
        # The pod before the store entry: a pod from before installation labels is ours only
        # while the warm store knows it (workers.adapters.legacy_pods).
        if rt.cluster.delete_pod(agent):
            agents.metrics(rt).agent_deleted(template, DELETED)
        agents.store(rt).forget(template, agent)
        rt.jenkins.delete_node(agent)  # the provision makes one of another name, this label
        rt.capacity.release(agent)  # the warm agent's own reservation (its key is its name)
        # The build now goes as one that found no warm agent: its provision (try_claim sees
        # its queue item and claims nothing) makes a pod under a new agent name
        # (workers.engine.agent_names), whose coming online is watched as any agent's.
        rt.state.update_build(key, warm_agent=None, agent_online_at=None, warm_lost=reason,
                              decision=f"warm agent {agent} lost ({reason}): placed again",
                              restarted_at=now)
        agents.metrics(rt).warm_lost(template, reason)
    finally:  # once Redis answers: a raise lost the build's provision queued below
        let_go(lease, what=f"warm lost {key}")
    tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(build["request"])))
    log.warning("claimed warm agent lost before its build started: build placed again",
                extra={"build_key": key, "agent": agent, "reason": reason,
                       "node": build.get("node", "")})
    return 1
