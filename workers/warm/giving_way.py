"""Builds always win (issue 22): while builds wait for room that some node could give them,
idle warm agents whose room makes them fit are given up, oldest first (the decision:
workers.core.warm_pool.give_way). Called by the worker's task queued when a build must wait
(workers.warm.tasks.give_way) and by the reconcile pass's pool pass (workers.warm.pool.run).

One waiting build costs one agent, however many callers see it waiting: one decides at a
time (a lease; the others wait for it), and an agent given up is recorded with its room (the
capacity store's given-way), counted free until its pod is gone from the cluster view. A
build already placed (it holds a reservation) and still in the waiting set while its pod is
made is no need either. A build waiting on the namespace's ResourceQuota is a need too: the
agents count against the same quota (workers.core.warm_quota).
"""

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol, runtime_checkable

from workers.adapters.lease import Lease, held as lease_held
from workers.adapters.warm_store import WarmEntry
from workers.concurrency.heartbeat import let_go
from workers.core import fit, podsize, warm_quota
from workers.core.cluster import NodeState, Resources
from workers.core.errors import RetryableError
from workers.core.give_way_fit import common_held, gives_room
from workers.core.keys import is_agent_name_of
from workers.core.models import PodTemplate
from workers.core.placement import WaitReason, free, why_not
from workers.core.placement_index import node_row
from workers.core.sizing import template_min
from workers.core.warm_pool import IdleAgent, Need, WarmState, give_way as decide_give_way
from workers.core.warm_quota import QuotaNeed, give_way as decide_quota_give_way
from workers.engine import namespace_sizes, scheduling
from workers.runtime import Runtime
from workers.warm import agents

log = logging.getLogger("ci_autoscaler.warm")
# One give-way at a time (give_way): its decision takes milliseconds (Redis and the view's
# cache; a LimitRange read at most), and a second caller waits for it, longer than the TTL
# of a holder that died.
GIVE_WAY_LEASE_SECONDS = 10
GIVE_WAY_WAIT_SECONDS = GIVE_WAY_LEASE_SECONDS + 2
GIVE_WAY_POLL_SECONDS = 0.02
# An agent given up whose pod is gone from the view still counts in the namespace's
# ResourceQuota until the quota controller has seen it go (admission reads the quota's
# status.used, which pkg/controller/resourcequota lowers asynchronously, within seconds): a
# build the quota refused meanwhile counts the agent's share as used. Its share is counted
# free this long (node COUNTED_OUT: none of a node's room), or the re-drive at its DELETED
# (workers.warm.gone_watch), refused so, gave up a second agent for the same build.
COUNTED_OUT_SECONDS = 10
COUNTED_OUT = ""  # the node of a pod gone from this view: no node's room (as an older
# release's records of one gone name it)
# Before a record's node once a view saw its pod gone (never in a node's name, a DNS
# subdomain): an older release's worker reads it as a node no row has, no node's room.
GONE = "gone:"


def room_waiting(rt: Runtime, nodes: Mapping[str, dict]) -> list[Need]:
    """The builds waiting for room (not for a cap, nor for a node that matches them) that
    some node they may use could hold at all (`nodes`: the capacity rows), in arrival order,
    each its pod's min size and those nodes: the builds warm agents give way to, and start
    nothing for. With several node pools, room in another pool does not place a build; nor
    does room on a node the build is kept off (its record's excluded_nodes: the scheduler
    refused its pod there, or its agent never connected there; its claims' volumes).
    A build that holds a reservation was placed (its room is counted in flight) and waits
    only until its pod is made: no need either, or an agent gave way for it again."""
    keys = rt.capacity.waiting()
    if keys:
        placed = rt.capacity.reservations()
        keys = [key for key in keys if key not in placed]
    fields = rt.state.build_fields(keys, "template", "wait_reason", "excluded_nodes") \
        if keys else []
    # Each at the size the namespace lets it have (a LimitRange min raises its min), as its
    # provision and nodes_needed size it (workers.engine.namespace_sizes).
    templates = namespace_sizes.fitted_all(rt, rt.config.templates) if keys else {}
    waiting = [(templates.get(name or ""), excluded)
               for name, reason, excluded in fields if gives_room(reason or "")]
    if not any(template is not None for template, _ in waiting):
        return []
    try:
        cluster = rt.view.snapshot()
    except RetryableError:  # not listed yet: any node, as the rows alone tell
        cluster = None
    out, by_template = [], {}
    for template, excluded in waiting:
        if template is None:
            continue
        placed = podsize.placement_template(template)
        if id(template) not in by_template:  # once a pass for all its builds
            by_template[id(template)] = frozenset(nodes) if cluster is None else frozenset(
                n.name for n in cluster if why_not(n, placed) is None) - \
                scheduling.off_volume_nodes(rt, template)
        off = scheduling.excluded({"excluded_nodes": excluded or ""})
        usable = None if cluster is None and not off else by_template[id(template)] - off
        need = Need(template_min(placed), usable, fit.needs(placed))
        if not nodes or any(need.size.fits_in(Resources(*row["allocatable"]))
                            for name, row in nodes.items() if need.may_use(name)):
            out.append(need)
    return out


def quota_waiting(rt: Runtime) -> list[QuotaNeed]:
    """The builds waiting for room in the agent namespace's ResourceQuota (reason quota; not an
    admin's pause), in arrival order, each with what its refusal lacked: idle warm agents count
    against the same quota, and their going may let it admit them (workers.core.warm_quota).
    A build holding a reservation was placed since: no need."""
    keys = rt.capacity.waiting()
    if keys:
        placed = rt.capacity.reservations()
        keys = [key for key in keys if key not in placed]
    if not keys:
        return []
    fields = rt.state.build_fields(keys, "wait_reason", "quota_exceeded")
    return [QuotaNeed(exceeded) for reason, text in fields
            if reason == WaitReason.QUOTA and (exceeded := warm_quota.load(text))]


def give_way(rt: Runtime) -> int:
    """Give up the idle warm agents whose room makes waiting builds fit (oldest first:
    workers.core.warm_pool.give_way); how many were given up.

    The worker's task (workers.warm.tasks.give_way) and the reconcile pass both call this,
    from several threads and processes: the decision is taken under a lease (`give_way_lease`),
    which a second caller waits for (a build arriving meanwhile is given way to now, not a
    pass later), and each agent given up is recorded with its room (the capacity store's
    given-way), so a later decision counts that room free while the pod still holds it. Seen
    before: a build waiting with two idle agents beside it, the worker gave one up and the
    reconcile pass 13 ms later another, reading capacity rows that did not show the first
    one's room (written by an earlier refresh; and a deleted pod holds its room until its
    kubelet confirms): two agents for a build that needed one. Its pods and Jenkins nodes are
    deleted after the lease is let go (the store entries are gone already)."""
    lease = give_way_lease(rt)
    if not _take(lease):
        log.warning("warm give-way lease not taken: another give-way holds it",
                    extra={"waited_seconds": GIVE_WAY_WAIT_SECONDS})
        return 0
    try:
        chosen = _give_up(rt)
    finally:  # once Redis answers: a raise left the chosen agents' pods standing
        let_go(lease, what="warm give-way")
    for entry in chosen:
        agents.delete(rt, entry, "warm_gave_way")
    return len(chosen)


def give_way_lease(rt: Runtime) -> Lease:
    return Lease(rt.state.redis, f"{rt.state.prefix}warm-give-way-lock", GIVE_WAY_LEASE_SECONDS)


def _take(lease: Lease) -> bool:
    """Take the lease, waiting up to GIVE_WAY_WAIT_SECONDS for its holder (a holder that
    died holds it no longer than its TTL, which this outlasts)."""
    deadline = time.monotonic() + GIVE_WAY_WAIT_SECONDS
    while not lease.acquire():
        if time.monotonic() >= deadline:
            return False
        time.sleep(GIVE_WAY_POLL_SECONDS)
    return True


def _give_up(rt: Runtime) -> list[WarmEntry]:
    """Under the give-way lease: decide, record and give up (in the warm store) the agents
    that give way now; their entries."""
    from workers.warm import pool  # it imports this module
    templates = pool.warm_templates(rt)
    if not templates:
        return []
    pools = agents.store(rt).all_agents(templates)  # read before the records (`_pending`)
    pending = _held_too(templates, _pending(
        rt, {e.name for entries in pools.values() for e in entries}))
    nodes = current_rows(rt)  # after the pods' presence: a pod gone between counts twice,
    # which may leave a build waiting a moment, never costs an agent more
    needs = room_waiting(rt, nodes)
    on_quota = quota_waiting(rt)
    idle = {e.name: IdleAgent(e.name, e.where, podsize.pod_total(templates[e.template], e.size),
                              e.since,
                              fit.needs(podsize.placement_template(templates[e.template])).held)
            for entries in pools.values() for e in entries if e.state == WarmState.IDLE}
    if not (needs or on_quota) or not idle:
        return []
    chosen = decide_give_way(list(idle.values()),
                             {name: Resources(*row["free"]) for name, row in nodes.items()},
                             needs, pending, beside_rows(rt)) if needs else ()
    # The agents going for room on nodes (and those gone before) leave the quota too.
    chosen += decide_quota_give_way([a for n, a in idle.items() if n not in chosen], on_quota,
                                    [*pending, *(idle[n] for n in chosen)])
    by_name = {e.name: e for entries in pools.values() for e in entries}
    given = []
    for name in chosen:
        entry = by_name[name]
        # recorded first: a worker killed between the two leaves a record of an agent still
        # idle, which counts for nothing (`_pending`) and expires
        rt.capacity.record_given_way(name, node=entry.where,
                                     size=podsize.pod_total(templates[entry.template],
                                                            entry.size))
        if agents.store(rt).give_up(entry.template, name, WarmState.IDLE):
            given.append(entry)
        else:  # a build claimed it meanwhile (the claim takes no lease)
            rt.capacity.forget_given_way(name)
    if given:
        log.info("warm agents gave way to waiting builds", extra={
            "given_up": len(given), "waiting": len(needs), "waiting_on_quota": len(on_quota),
            "room_given_before": len(pending)})
    return given


def _held_too(templates: Mapping[str, PodTemplate], given: list[IdleAgent]
              ) -> list[IdleAgent]:
    """The agents given up, each with what its template's pod holds beside cpu and memory
    (its name tells the template: agents.new_name), which its pod still holds while the view
    has it. Left out, a build waiting for the anti-affinity token (or GPU, host port) of an
    agent given up for it still found the token held, and the next caller (the reconcile
    pass) gave up an agent on another node for it too."""
    held = {name: fit.needs(podsize.placement_template(t)).held
            for name, t in templates.items()}
    out = []
    for a in given:
        of = [h for name, h in held.items()
              if is_agent_name_of(a.name, f"{agents.WARM_JOB}-{name}")]
        out.append(replace(a, held=common_held(of)) if of else a)
    return out


def _pending(rt: Runtime, in_store: set[str]) -> list[IdleAgent]:
    """The agents given up earlier whose pods this process's view still holds (their room
    not yet free in its rows): not in the warm store any more (a record of one still there was
    left by a worker that stopped before giving it up), and not gone from the view. And those
    gone from it, at node COUNTED_OUT (their room on nodes is in the view's rows: they count
    only in the quota, which counts them out later); a record of a pod gone is kept
    COUNTED_OUT_SECONDS from when a view first saw it gone, then dropped.

    Gone is this view's word, never a record's: the record keeps its node, marked GONE. Each
    process has its own watch, and one saw the DELETED before another (a busy process, a
    watch resuming from its bookmark): the record's node once rewritten as COUNTED_OUT, the
    other process's give-way counted the agent's room nowhere while its rows still counted
    the pod, and gave up a second agent for the same build."""
    given = rt.capacity.given_way()
    out = {name: (node.removeprefix(GONE), node.startswith(GONE), size)
           for name, (node, size) in given.items() if name not in in_store}
    placed = [name for name, (node, _, _) in out.items() if node != COUNTED_OUT]
    # A young agent's reservation (its key is its name) is counted in flight on its node by
    # the rows whether its pod is there or not, until the agent's delete lets it go after
    # the pod's and the Jenkins node's (workers.warm.agents.delete) or a reconcile pass does:
    # not gone while it holds one. Taken for gone then, its room counted by the rows and
    # by nothing here, a second agent gave way for its build. Read before the rows (a
    # reservation let go between counts the room twice: a build waits a moment, no agent).
    reserved = rt.capacity.reservations() if placed else {}
    gone = rt.view.gone(rt.settings.agent_namespace, placed) - reserved.keys() if placed \
        else frozenset()
    for name in gone:
        node, marked, size = out[name]
        if not marked:
            rt.capacity.record_given_way(name, node=GONE + node, size=size,
                                         ttl_seconds=COUNTED_OUT_SECONDS)
    return [IdleAgent(name, COUNTED_OUT if name in gone else node, size, 0.0)
            for name, (node, _, size) in out.items()]


@runtime_checkable
class NodeStates(Protocol):
    """A view that counts each in-flight agent once (ClusterWatch.node_states)."""

    def node_states(self, *, reserved: Mapping[str, tuple[str, Resources]]
                    ) -> list[NodeState]: ...


def beside_rows(rt: Runtime) -> dict[str, NodeState]:
    """The nodes as the view has them now with their in-flight agents (scheduling.observe):
    what their pods hold beside cpu and memory, which giving way counts too (a GPU, host
    ports, anti-affinity tokens: core.give_way_fit); none before the view has listed the
    cluster (cpu and memory alone decide then)."""
    try:
        if isinstance(rt.view, NodeStates):
            return {n.name: n for n in rt.view.node_states(
                reserved=rt.capacity.reservations())}
        return {n.name: n for n in scheduling.observe(rt)}
    except RetryableError:
        return {}


def current_rows(rt: Runtime) -> dict[str, dict]:
    """The capacity rows (allocatable and free per node) as the cluster view has them now,
    with the reservations of this moment; the stored ones (a refresh's, maybe seconds old)
    before the view has listed the cluster."""
    target = rt.settings.target_utilisation
    try:
        if isinstance(rt.view, scheduling.IndexedView):
            rows = rt.view.node_rows(reserved=rt.capacity.reservations(),
                                     target_utilisation=target)
        else:
            rows = [node_row(n, free(n, target)) for n in scheduling.observe(rt)]
    except RetryableError:
        return rt.capacity.read_state()[1]
    return {name: {"allocatable": [ac, am], "free": [fc, fm]}
            for name, ac, am, _, _, _, _, fc, fm in rows}


def for_slot(rt: Runtime) -> bool:
    """A build found maxAgents full (workers.engine.caps): one warm agent that no build
    claimed, and that holds a slot of it, gives way (the idle one idle the longest, else the
    starting one started first), its slot the build's to take. False when none could.
    An atomic give-up in the warm store: a build that claimed it meanwhile keeps it. Not a
    starting one whose start is under way (its provision lease held: agents.start registers
    it before it makes its pod): its pod, deleted before it was made, was made after, an
    orphan past maxAgents until the repairs took it. Read after the pool: a start let go
    since made its pod before (or failed and forgot the agent, which no give-up then finds)."""
    from workers.adapters.capacity_store import WARM_SLOT
    from workers.engine.tasks import lease_key  # it imports scheduling, which imports this
    held = {k: t[len(WARM_SLOT):] for k, t in rt.capacity.slots().items()
            if t.startswith(WARM_SLOT)}
    if not held:
        return False
    pools = agents.store(rt).all_agents(sorted(set(held.values())))
    rank = {WarmState.IDLE: 0, WarmState.STARTING: 1}
    for entry in sorted((e for entries in pools.values() for e in entries
                         if e.state in rank and e.name in held),
                        key=lambda e: (rank[e.state], e.since)):
        if entry.state == WarmState.STARTING and \
                lease_held(rt.state.redis, lease_key(rt, entry.name)):
            continue
        if agents.store(rt).give_up(entry.template, entry.name, entry.state):
            agents.delete(rt, entry, "warm_gave_way")
            log.info("warm agent gave way to a build over maxAgents",
                     extra={"agent": entry.name, "template": entry.template})
            return True
    return False
