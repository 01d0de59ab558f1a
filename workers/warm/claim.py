"""What a provision asks first (workers.engine.tasks): is there an idle warm agent that covers the
size this build wants? Then the build takes it (one atomic claim, workers.adapters.warm_store)
and becomes that agent's: its record, the agents mapping the notifications read, its
request's agent name and CI_AUTOSCALER_AGENT all name the warm agent, whose label the job is
triggered on at once; its replacement is queued once the trigger has ended (queue_replacement). No pod is made. The build takes its agent slot
first (workers.engine.caps): a warm agent never lets a template exceed its maxConcurrent or maxAgents.
The wanted size is its size hint, else its job's history size, else the template's max memory
(no more than the pod may have on the biggest node it may use: scheduling.largest_node)
(scheduling.sized_for, then workers.core.warm_claim.wanted); an agent with less memory (or,
for a hint, fewer cores) is never taken, a bigger one is. Of those that cover it, the build
takes the one whose node has the most room by use (claim_order), as the simulator's e does,
never one on a node that is cordoned, NotReady, tainted against the template or being removed
by a node autoscaler (claimable_on: its pod would be evicted moments later, and the build lost
with it), nor one whose pod is being deleted, gone or ended. Each is judged by the node its pod is bound to
(WarmEntry.where, recorded when it turned idle), read with the deletions from the watched
cache: no API call on the claim's path.
What it wanted is kept on its record (warm_want_memory): the pool makes agents at the most a
recent build wanted (workers.warm.pool).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from workers.engine import caps, scheduling
from workers.adapters.capacity_store import SLOT_TAKEN, TEMPLATE_FULL
from workers.adapters.redis_state import BuildStatus
from workers.adapters.warm_store import WarmEntry
from workers.core import podsize
from workers.core.cluster import NodeState, Resources
from workers.core.errors import RetryableError
from workers.core.hints import apply_hint
from workers.core.sizing import moved_by, template_default
from workers.core.models import BuildRequest, PodTemplate
from workers.core.routing import AGENT_PARAMETER
from workers.core.stages import Stage
from workers.core.warm_claim import (Candidate, Want, claim_order, claimable_on, covers,
                                     load_after, retire_on, wanted)
from workers.core.warm_pool import WarmState
from workers.job_history.sized import store as usage_store
from workers.runtime import Runtime
from workers.stage_timings import ledger
from workers.warm import agents, protect

log = logging.getLogger("ci_autoscaler.warm")
REPLENISH_TASK = "workers.warm.tasks.replenish"


def try_claim(rt: Runtime, request: BuildRequest, template: PodTemplate,
              state: dict[str, str]) -> BuildRequest | None:
    """The build's request on a warm agent it now holds alone, or None: no pool, the build
    was triggered already (its queue item asks for its own agent's label), or no idle warm
    agent that covers its size (a miss: it goes the normal way). A task run again after one that
    took a warm agent (the job retried from its first arguments) gets that agent again."""
    if state.get("warm_agent"):
        return on_agent(request, state["warm_agent"])
    if template.warm is None or template.warm.max <= 0 or request.node_label \
            or state.get("queue_item") or state.get("trigger_attempted_at"):
        return None
    sized = scheduling.sized_for(rt, request, template)
    want = wanted(template, sized,
                  hinted=sized is not template and
                  apply_hint(template, request.parameters)[0] is not template,
                  # (read from the watched cache only when it counts: no API call)
                  largest=scheduling.largest_node(rt, template) if sized is template else None)
    rt.state.update_build(request.build_key, warm_want_memory=want.size.memory_bytes)
    # over its template's cap it waits the normal way; over maxAgents it may still take an
    # idle agent, whose slot of maxAgents becomes its own (a warm agent holds one: caps)
    if caps.take_code(rt, request, template) == TEMPLATE_FULL:
        _count_once(rt, request, hit=False)
        return None
    order, avoid = preferred(rt, request.template, template, want)
    entry = agents.store(rt).claim(request.template, size=want.size, cpu=want.cpu,
                                   build_key=request.build_key, order=order, avoid=avoid)
    if entry is not None and rt.capacity.hand_over_slot(
            entry.name, build_key=request.build_key, template=request.template,
            max_concurrent=template.max_concurrent,
            max_agents=rt.config.max_agents) != SLOT_TAKEN:
        # its template's cap reached since (a racing build), or an agent of an older
        # release that holds no slot with maxAgents full: the agent is left idle
        agents.store(rt).unclaim(request.template, entry.name)
        entry = None
    _count_once(rt, request, hit=entry is not None)
    if entry is None:
        return None
    return take(rt, request, entry, default=template_default(sized))


def preferred(rt: Runtime, template_name: str, template: PodTemplate,
              want: Want) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The idle agents that cover the build, the one whose node has most room by use first
    (the capacity rows of the last decision); the claim takes the first still idle. And the
    idle agents it must not take: those on a node no build may take one on (claimable_on),
    and those whose pod is being deleted, gone or ended (both from the watched cache: no
    API call)."""
    everyone = [e for e in agents.store(rt).agents(template_name) if e.state == WarmState.IDLE]
    # each judged by the node its pod is bound to (WarmEntry.where): kube-scheduler picks one
    # of placement's candidates, not always the node the entry was placed on
    off = unclaimable_nodes(rt, template, {e.where for e in everyone})
    # and never one whose pod is being deleted (a DELETE, an eviction): its build would go
    # with it; the pool's pass retires it (workers.warm.pool)
    going = rt.view.deleting(rt.settings.agent_namespace, [e.name for e in everyone])
    # nor one whose pod (seen running when it turned idle) is gone from the cache or ended:
    # deleted (the inbound agent's java exits on the SIGTERM, and the kubelet confirms a
    # DELETE or an eviction within seconds: Terminating is brief) or ended (Failed: evicted
    # under node pressure); the pool's pass retires it (workers.warm.pool)
    going |= rt.view.gone(rt.settings.agent_namespace, [e.name for e in everyone if e.bound])
    # nor one whose agent container ended while a service container keeps its pod Running
    # (its JVM OOM-killed while idle, say): its agent never runs again (restartPolicy Never),
    # and its build would wait on a dead agent's label for the lost-agent repair
    going |= rt.view.agent_ended(rt.settings.agent_namespace, [e.name for e in everyone])
    # nor one made under another pod spec of its template (an image changed since): the
    # build would run on what the file no longer says; the pool's pass retires it
    going |= {e.name for e in everyone if agents.outdated(rt, e)}
    avoid = tuple(e.name for e in everyone if e.where in off or e.name in going)
    idle = [e for e in everyone if e.name not in avoid and covers(e.size, want)]
    if len(idle) < 2:  # no choice to make: no need to read the capacity rows
        return tuple(e.name for e in idle), avoid
    nodes = rt.capacity.read_state()[1]
    candidates = []
    for e in idle:
        row = nodes.get(e.where)
        # what its build will use beyond the pod's requests now counts on the node
        held = podsize.pod_total(template, e.size)
        extra = ((e.in_flight or held) - held).clamp_min(Resources())
        load = None if row is None else load_after(
            Resources(*row["allocatable"]), Resources(*row["free"]), extra)
        candidates.append(Candidate(e.name, e.size, e.since, load))
    return claim_order(candidates, want), avoid


def unclaimable_nodes(rt: Runtime, template: PodTemplate, nodes: set[str]) -> frozenset[str]:
    """Of these nodes, those a build of `template` may not take an idle warm agent on
    (workers.core.warm_claim.claimable_on), from the watched cache; none while the cluster is
    not listed yet (the claim then goes as it would)."""
    return _nodes_where(rt, nodes, lambda n: not claimable_on(n, template))


def closing_nodes(rt: Runtime, template: PodTemplate, nodes: set[str],
                  now: float) -> frozenset[str]:
    """Of these nodes, those the pool retires an idle warm agent of `template` on
    (workers.core.warm_claim.retire_on: as unclaimable_nodes, but a node NotReady only
    for a moment is not one), from the watched cache; none while it is not listed yet."""
    return _nodes_where(rt, nodes, lambda n: retire_on(n, template, now))


def _nodes_where(rt: Runtime, nodes: set[str],
                 pick: Callable[[NodeState], bool]) -> frozenset[str]:
    if not nodes:
        return frozenset()
    try:
        cluster = rt.view.snapshot()
    except RetryableError:
        return frozenset()
    return frozenset(n.name for n in cluster if n.name in nodes and pick(n))


def _count_once(rt: Runtime, request: BuildRequest, *, hit: bool) -> None:
    """warm_hits_total once per build: a build re-driven while it waits is one miss (one
    that missed and later took an agent that came online counts in both)."""
    field = rt.state.prefix + "build:" + request.build_key
    if rt.state.redis.hsetnx(field, "warm", "hit" if hit else "miss"):
        agents.metrics(rt).warm_claim(request.template, hit=hit)
    elif hit:  # a miss before, a hit now (an agent came online while it waited)
        rt.state.redis.hset(field, "warm", "hit")
        agents.metrics(rt).warm_claim(request.template, hit=True)


def on_agent(request: BuildRequest, agent: str) -> BuildRequest:
    """The build's request with the warm agent as its agent, in its name and its parameter."""
    return replace(request, agent_name=agent, parameters={**request.parameters,
                                                          AGENT_PARAMETER: agent})


def take(rt: Runtime, request: BuildRequest, entry: WarmEntry, *,
         default: Resources) -> BuildRequest:
    """The build becomes the agent's (module docstring). `default`: the build's default size
    (its hint's, its job history's or its template's); an agent bigger than it moved it, as
    headroom would have (the status page and the log say so, as for a placed build)."""
    key, now = request.build_key, time.time()
    claimed = on_agent(request, entry.name)
    moved = moved_by(default, entry.size)
    # The agents mapping the notifications read names the warm agent; the name the build was
    # given at intake names no agent now (nor any entry the build's expiry would delete).
    with rt.state.redis.pipeline() as pipe:
        pipe.hset(rt.state.prefix + "agents", entry.name, key)
        if request.agent_name != entry.name:
            pipe.hdel(rt.state.prefix + "agents", request.agent_name)
        pipe.execute()
    rt.capacity.remove_waiting(key)
    rt.state.update_build(key, agent=entry.name, request=scheduling.request_json(claimed),
                          node=entry.where, cpu_millis=entry.size.cpu_millis,
                          memory_bytes=entry.size.memory_bytes, status=BuildStatus.POD_CREATED,
                          pod_created_at=entry.created, warm_agent=entry.name,
                          warm_claimed_at=now,  # its agent's connect clock (workers.warm.lost)
                          decision=f"warm agent {entry.name}, online on {entry.where}",
                          size_moved=moved, wait_reason=None, wait_detail=None)
    scheduling.log_moved(key, moved, default, entry.size, agent=entry.name)
    usage_store(rt).take_run(entry.name)  # what it used while idle is not the build's
    # Its pod marked the build's (protect_claimed) beside the trigger, not here: see there.
    ledger.record(rt.state, key, Stage.PLACED, at=now)
    ledger.record(rt.state, key, Stage.ONLINE, at=now)  # online already: no start to measure
    log.info("warm agent taken", extra={"build_key": key, "agent": entry.name,
                                        "node": entry.where, "replaces": request.agent_name})
    return claimed


def protect_claimed(rt: Runtime, request: BuildRequest) -> bool:
    """The claimed agent's pod marked its build's (workers.warm.protect): the agents' budget
    then holds a drain for it, and the autoscalers leave it be. Run beside the build's
    trigger (workers.engine.tasks), not before it: its read and PATCH of the pod held the
    trigger back by two API round trips, over issue 22's "under 1 s" on a slow API server.
    The agent is the build's already; a patch that fails is logged and counted, never fails
    the claim, and the pool's pass tries it again."""
    return protect.mark_claimed(rt, request.agent_name, request.template, request.build_key)


def queue_replacement(rt: Runtime, template: str) -> None:
    """The claimed agent's replacement, queued once the build's trigger has ended: queued at
    the claim, another of the worker's threads made its pod while the trigger was under way
    (the pool pass would top the pool up later anyway)."""
    rt.state.enqueue_task(REPLENISH_TASK, template,
                          description=f"replenish warm pool {template}")
