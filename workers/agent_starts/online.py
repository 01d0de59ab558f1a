"""Agents on their way up: seen online in Jenkins, or re-placed and then failed when they
never connect.

``poll`` reads the builds whose agent pod exists and whose agent was not seen online yet, and
only when there are some asks Jenkins which computers are online, in one call. An agent online
is marked once and its start observed into agent_start_duration_seconds (pod created ->
computer online: for a Pipeline, Jenkins' STARTED comes before any agent connects). An agent
whose pod has run longer than its template's agentConnectTimeoutSeconds without coming online
(counted from when Jenkins was last seen away, if later: workers.agent_starts.jenkins_away)
is re-placed once on another node (its node excluded for this build, its pod and Jenkins node
deleted, its queue item kept; its next agent has a new name: workers.engine.agent_names), then
failed with reason ``agent_connect_timeout`` (workers.engine.failures). The reconcile leader polls
for agents online every AGENT_POLL_INTERVAL_SECONDS, and once in each pass (workers.
reconcile), which also checks the connect timeouts: that check reads the pods of agents older
than their timeout, so it runs once per pass, not every poll.
"""

import json
import logging
import time
from dataclasses import dataclass, field

from workers import runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import agent_names, failures, tasks
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.agent_starts import jenkins_away
from workers.core.errors import CIAutoscalerError, Overloaded, Unauthorized, Unavailable
from workers.core.models import BuildRequest
from workers.core.ports import PodPhase
from workers.core.start_failures import connect_timeout
from workers.stage_timings import ledger

log = logging.getLogger("ci_autoscaler.agent_starts.online")
AGENT_POLL_INTERVAL_SECONDS = 2.0
CONNECT_REPLACEMENTS = 1  # re-placements on another node before the build fails
REPLACED = "agent_connect_timeout"  # why the pod was deleted (agents_deleted_total)
_PENDING = frozenset({BuildStatus.POD_CREATED, BuildStatus.TRIGGERED, BuildStatus.RUNNING})
_FIELDS = ("status", "agent", "template", "pod_created_at", "agent_online_at",
           "connect_timeouts", "node", "excluded_nodes", "request")


@dataclass
class Pending:
    build_key: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def agent(self) -> str:
        return self.fields.get("agent", "")


def pending_agents(rt: runtime.Runtime) -> list[Pending]:
    """Builds with an agent pod whose agent was not seen online yet (two round trips)."""
    keys = rt.state.live_build_keys()
    rows = rt.state.build_fields(keys, *_FIELDS) if keys else []
    out = []
    for key, row in zip(keys, rows):
        fields = {k: v for k, v in zip(_FIELDS, row) if v is not None}
        if fields.get("status") in _PENDING and fields.get("agent") \
                and not fields.get("agent_online_at"):
            out.append(Pending(key, fields))
    return out


def poll(rt: runtime.Runtime, now: float | None = None, *,
         connect_timeouts: bool = True) -> dict[str, int]:
    """notice_online, then (with `connect_timeouts`) check_connect_timeouts: what they did,
    by kind. Without `connect_timeouts` it makes no Kubernetes call."""
    now = time.time() if now is None else now
    result = {"agents_online": notice_online(rt, now)}
    if connect_timeouts:
        result.update(check_connect_timeouts(rt, now))
    return result


def notice_online(rt: runtime.Runtime, now: float | None = None) -> int:
    """Mark the pending agents that are online in Jenkins (one call, made only when some
    agent is pending) and observe their start, once each; how many came online."""
    now = time.time() if now is None else now
    pending = pending_agents(rt)
    if not pending:
        return 0  # nothing on its way up: Jenkins is not asked
    online = jenkins_away.online_agents(rt, now)  # away: their clocks wait
    seen = 0
    for build in pending:
        if build.agent in online:
            seen += mark_online(rt, build.build_key, build.agent, build.fields, now)
    return seen


def mark_online(rt: runtime.Runtime, key: str, agent: str, fields: dict[str, str],
                now: float) -> bool:
    """The build's agent was seen connected (`fields`: its record's template and
    pod_created_at); its start is observed the first time only. True that first time."""
    if not rt.state.mark_agent_online(key, at=now):
        return False
    created = float(fields.get("pod_created_at") or now)
    tasks.engine_metrics(rt).agent_online(fields.get("template", "unknown"),
                                          pod_created_at=created, now=now)
    log.info("agent online", extra={"build_key": key, "agent": agent,
                                    "seconds": round(now - created, 3)})
    ledger.record(rt.state, key)  # online (and started, if it came first)
    return True


def check_connect_timeouts(rt: runtime.Runtime, now: float | None = None) -> dict[str, int]:
    """Re-place or fail the pending agents whose pod has run past their template's
    agentConnectTimeoutSeconds (run after notice_online); how many of each."""
    now = time.time() if now is None else now
    result = {"agents_replaced": 0, "agents_timed_out": 0}
    pending = pending_agents(rt)
    away = jenkins_away.last(rt.state) if pending else 0.0
    for build in pending:
        run_bound.checkpoint()  # the pass may end before this build
        try:
            outcome = _check_connect_timeout(rt, build, now, away)
        except (Unavailable, Overloaded, Unauthorized):  # Jenkins away, struggling or
            # refusing our token: the others wait for it too (workers.engine.jenkins_steps; a fail
            # it stopped half-way is finished by the start-failure sweep: agent_starts.watch)
            raise
        except CIAutoscalerError as err:  # this one on the next pass; the others now
            tasks.engine_metrics(rt).error("reconcile", err)
            log.warning("agent connect check deferred", extra={
                "build_key": build.build_key, "error": str(err)})
            continue
        if outcome:
            result[outcome] += 1
    return result


def _check_connect_timeout(rt: runtime.Runtime, build: Pending, now: float,
                           jenkins_away_at: float) -> str | None:
    template = rt.config.templates.get(build.fields.get("template", ""))
    if template is None:
        return None
    limit = template.agent_connect_timeout_seconds
    created = float(build.fields.get("pod_created_at") or now)
    if now - created < limit:  # the pod cannot have run that long yet: no API call
        return None
    pod = rt.cluster.get_pod(build.agent)
    if pod is None or pod.deleting or pod.phase != PodPhase.RUNNING:
        return None  # not up (Pending: the deadline and the start-failure rules have it)
    # an agent cannot connect while Jenkins is away: its clock starts when Jenkins was last
    # seen away, if that is later
    running_since = max(pod.running_since or pod.created_at or created, jenkins_away_at)
    if now - running_since < limit:
        return None
    activity = rt.jenkins.agent_activity(build.agent)
    if activity is not None and (not activity.offline or activity.runs):
        # Connected after all: since the poll, or before it and then taken offline (by hand;
        # Computer.isOffline is temporarilyOffline || no channel), its build on its executor.
        mark_online(rt, build.build_key, build.agent, build.fields, now)
        return None
    attempts = int(build.fields.get("connect_timeouts") or 0) + 1
    if attempts > CONNECT_REPLACEMENTS:
        failures.fail_build(rt, build.build_key, build.agent,
                            connect_timeout(build.agent, now - running_since, attempts))
        return "agents_timed_out"
    return "agents_replaced" if _replace(rt, build, pod.node, attempts) else None


def _replace(rt: runtime.Runtime, build: Pending, node: str | None, attempts: int) -> bool:
    """Delete the pod and its Jenkins node, and provision the build again with its node
    excluded, under a new agent name (workers.engine.agent_names); its queue item stays. The old
    pod's agent process runs on until its grace period ends: with its node gone, a late
    connect is refused (an unknown client), not handed the build. False when a provision
    holds the build, or when its agent took the build after all (the next check marks it)."""
    raw = build.fields.get("request")
    if not raw:
        return False
    lease = tasks.provision_lease(rt, build.build_key)
    if not lease.acquire():
        return False
    try:
        # Offline first, then read, then deleted (as workers.engine.agent_names does): an agent that
        # connects before the deletion is handed nothing, not the build, whose run would
        # lose its node under it. One that took the build since the check is left.
        if agent_names.busy(rt, build.agent, context={"build_key": build.build_key}):
            return False  # it came online since the check: the next one marks it
        rt.jenkins.delete_node(build.agent)
        # the node it ran on (spec.nodeName), not the record's pick: kube-scheduler may have
        # bound it to another of the placement's candidates (core.placement.alternates)
        node = node or build.fields.get("node") or ""
        excluded = {n for n in build.fields.get("excluded_nodes", "").split(",") if n}
        excluded.add(node)
        if rt.cluster.delete_pod(build.agent):
            tasks.engine_metrics(rt).agent_deleted(build.fields.get("template", "unknown"),
                                                   REPLACED)
        rt.capacity.release(build.build_key)
        rt.state.update_build(build.build_key, connect_timeouts=attempts,
                              excluded_nodes=",".join(sorted(n for n in excluded if n)))
    finally:  # once Redis answers: a raise lost the build's provision queued below
        let_go(lease, what=f"replace {build.build_key}")
    tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(raw)))
    log.warning("agent did not come online: re-placing it on another node",
                extra={"build_key": build.build_key, "agent": build.agent, "node": node,
                       "attempt": attempts})
    return True
