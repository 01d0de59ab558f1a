"""The warm pools' pass, run by each reconcile pass (workers.engine.reconcile) and, for one template,
by the task queued after a claim (workers.warm.tasks): bring every pool to its target.

For each template with a pool, under a short lease (two passes never start one agent twice):
forget claimed agents whose pod is gone (their build released them), protect again those whose
pod lacks the claim's DO_NOT_DISRUPT (workers.warm.protect); retire agents whose pod
is gone, ended or being deleted, idle ones WARM_MAX_AGE_SECONDS after their pod was made, no
longer online in Jenkins or on a node no build may take them on (the node their pod is bound
to: cordoned, being removed by a node autoscaler, NotReady for longer than a heartbeat blip:
workers.core.warm_claim.retire_on), and starting ones that cannot start or never came
online; mark starting agents idle once their Jenkins computer is online (one call, only while
some agent starts), recording the node their pod is bound to (the claim judges them by it); then
plan (workers.core.warm_pool): the target from the template's arrival rate in the build
records × the measured agent start time, between min and max, new agents at the most memory
a recent build wanted (its record's warm_want_memory, workers.core.warm_claim.agent_size).
While builds wait for room that some node could give them (or for room in the namespace's
ResourceQuota), nothing is started, and the idle
agents whose room makes them fit are given up (workers.warm.giving_way); a build
that waits for a cap, for a matching node, or is bigger than any node costs no warm agent.
"""

import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace

from workers.concurrency.heartbeat import let_go
from workers.engine import namespace_sizes, scheduling
from workers.agent_starts import jenkins_away
from workers.adapters.kube_errors import QuotaFull
from workers.adapters.lease import Lease
from workers.adapters.redis_state import RedisState
from workers.adapters.warm_specs import NO_POOL
from workers.adapters.warm_store import WarmEntry
from workers.core.cluster import Resources
from workers.core.errors import RetryableError
from workers.core.models import PodTemplate
from workers.core.placement import Wait
from workers.core.pods import TEMPLATE_LABEL
from workers.core.ports import PodInfo, PodPhase
from workers.core.warm_pool import (
    WARM_MAX_AGE_SECONDS, WarmState, arrival_rate, most_agents, outgrown, plan)
from workers.core.start_failures import start_failure
from workers.core.warm_claim import agent_size
from workers.core.warm_pool import target_size
from workers.core.warm_pods import protected
from workers.telemetry.metrics import AGENT_START_DURATION_SECONDS
from workers.runtime import Runtime
from workers.warm import agents, backoff, claim, protect
from workers.warm.giving_way import (  # pool.give_way: as before
    give_way, quota_waiting, room_waiting)

log = logging.getLogger("ci_autoscaler.warm")
# Arrivals counted over this window for the rate.
ARRIVAL_WINDOW_SECONDS = 900
# Until an agent start was measured, a fresh agent is taken to come online in this long (the
# issue's 10-30 s of scheduling, image pull, JVM start and connection).
DEFAULT_ONLINE_SECONDS = 20.0
# Weight of the newest mean start time in the moving average (the rest: the average so far).
ONLINE_EWMA_WEIGHT = 0.3
POOL_LEASE_SECONDS = 60
# A pod made this recently may not be in a listing taken just before: not yet taken for gone.
LISTING_GRACE_SECONDS = 5
# A template's recent builds: when each arrived, and the memory it wanted of a warm agent.
Seen = list[tuple[float, int | None]]


def warm_templates(rt: Runtime) -> dict[str, PodTemplate]:
    return namespace_sizes.fitted_all(
        rt, {n: t for n, t in rt.config.templates.items() if t.warm is not None})


def pool_lease(rt: Runtime, template: str) -> Lease:
    return Lease(rt.state.redis, f"{rt.state.prefix}warm-pool-lock:{template}",
                 POOL_LEASE_SECONDS)


def arrivals(rt: Runtime, now: float, since: float) -> dict[str, Seen]:
    """The builds received since `since`, by template: when each arrived, and the memory it
    wanted of a warm agent (workers.warm.claim; None for one that never asked). Not those
    Jenkins queued by itself on a label (adopted, workers.engine.adoption): Jenkins hands
    such an item to an agent with that label, which no warm agent has (its label is its own
    name), so they never take one; counted, they kept a pool of idle agents for them."""
    keys = rt.state.builds_since(since)
    out: dict[str, Seen] = defaultdict(list)
    for template, received, want, label in rt.state.build_fields(
            keys, "template", "received_at", "warm_want_memory", "node_label"):
        if template and received and not label:
            out[template].append((float(received), int(want) if want else None))
    return out


def agent_size_now(template: PodTemplate, seen: Seen, now: float,
                   largest: Resources | None = None) -> Resources:
    """The size to start the template's agents at: the most memory a build that arrived in
    the last ARRIVAL_WINDOW_SECONDS wanted, no more than the pod may have on `largest`, the
    biggest node it may use (workers.core.warm_claim.agent_size)."""
    return agent_size(template, [Resources(template.cpu.default, want) for at, want in seen
                                 if want is not None and at >= now - ARRIVAL_WINDOW_SECONDS],
                      largest)


def online_seconds(state: RedisState, template: str) -> float:
    """The template's agent start time: a moving average of the mean start observed into
    agent_start_duration_seconds since the last look (the histogram's sum and count)."""
    fields = [json.dumps([[template], part]) for part in ("sum", "count")]
    total, count = state.redis.hmget(
        f"{state.prefix}metrics:{AGENT_START_DURATION_SECONDS.name}", fields)
    key = f"{state.prefix}warm-online"
    seen = state.redis.hget(key, template)
    last_sum, last_count, average = (json.loads(seen) if seen else (0.0, 0, None))
    total, count = float(total or 0), int(count or 0)
    if count > last_count:
        recent = (total - last_sum) / (count - last_count)
        average = recent if average is None else \
            ONLINE_EWMA_WEIGHT * recent + (1 - ONLINE_EWMA_WEIGHT) * average
        state.redis.hset(key, template, json.dumps([total, count, average]))
    return DEFAULT_ONLINE_SECONDS if average is None else float(average)


def target(rt: Runtime, name: str, template: PodTemplate,
           seen: Mapping[str, Seen], now: float) -> int:
    warm = template.warm
    assert warm is not None
    times = [at for at, _ in seen.get(name, [])]
    want = target_size(minimum=warm.min, maximum=warm.max, idle_seconds=warm.idle_seconds,
                       arrivals_per_second=arrival_rate(times, now=now,
                                                        window_seconds=ARRIVAL_WINDOW_SECONDS),
                       online_seconds=online_seconds(rt.state, name),
                       last_arrival_at=max(times, default=None), now=now)
    # agents beyond the template's cap, or maxAgents, could never all be taken
    return min(want, most_agents(template, rt.config.max_agents))


def _bound_node(entry: WarmEntry, pods: Mapping[str, PodInfo]) -> str:
    """The node the agent's pod is bound to (the listing's, else the one recorded), else the
    one its placement chose."""
    pod = pods.get(entry.name)
    return pod.node if pod is not None and pod.node else entry.where


def tidy(rt: Runtime, name: str, template: PodTemplate, entries: list[WarmEntry],
         pods: Mapping[str, PodInfo], now: float, current: str | None = None
         ) -> list[WarmEntry]:
    """Forget or retire what is gone, mark idle what came online; the entries left. After
    Jenkins was away (a restart), an agent has its connect time from then to connect, or to
    connect again (workers.agent_starts.jenkins_away). `current`: the pod fingerprint the
    pools follow (agents.announce; the file's if None): an agent made under another is
    retired."""
    warm = agents.store(rt)
    away = jenkins_away.last(rt.state)
    left: list[WarmEntry] = []
    starting: list[WarmEntry] = []
    idle: list[WarmEntry] = []
    not_started = False
    for entry in entries:
        pod = pods.get(entry.name)
        # (an idle agent's container ended beside a running service: it never runs again
        # either; a starting one's is a start failure, warm_not_started below)
        gone = pod is None or pod.deleting or pod.phase in (PodPhase.SUCCEEDED, PodPhase.FAILED) \
            or (pod.agent_ended and entry.state != WarmState.STARTING)
        if entry.state == WarmState.CLAIMED:
            if pod is None:  # its build's release deleted it
                warm.forget(name, entry.name)
                continue
            if not gone and not protected(pod.annotations):  # claimed by an older release's
                # worker (the label alone), or its claim's patch failed: its build runs on a
                # pod the node autoscalers may take (workers.core.warm_pods)
                protect.mark_claimed(rt, entry.name, name, entry.build, again=True)
            left.append(entry)
        elif agents.outdated(rt, entry, current):  # made under another pod spec
            agents.retire(rt, entry, "warm_changed")
        elif gone and (pod is not None or now - entry.created > LISTING_GRACE_SECONDS):
            # (the grace is for a pod the listing may lack: one listed as ended or being
            # deleted is gone, however young)
            agents.retire(rt, entry, "pod_ended")
        elif entry.state == WarmState.STARTING and (
                now - max(entry.created, away) > template.agent_connect_timeout_seconds or
                (pod is not None and
                 start_failure(pod, rt.settings.fatal_waiting_reasons, now=now,
                               pull_retry_seconds=rt.settings.image_pull_retry_seconds)
                 is not None)):
            # an image pull failing, say: the pool backs off (workers.warm.backoff)
            not_started |= agents.retire(rt, entry, "warm_not_started")
        elif entry.state == WarmState.STARTING:
            starting.append(entry)
        elif now - entry.created > WARM_MAX_AGE_SECONDS:  # idle too long: a fresh one follows
            agents.retire(rt, entry, "warm_idle")
        else:
            idle.append(entry)
    if not_started:  # once for the pass, however many of its agents failed
        backoff.failed(rt, name, now)
    if not (starting or idle):
        return left
    connected = jenkins_away.online_agents(rt, now)  # one call for the pool
    reconnecting = now - away <= template.agent_connect_timeout_seconds
    # no build takes an idle agent on a node cordoned or being removed (workers.warm.claim):
    # kept, it would stand in for one the pool would make elsewhere
    # on the node its pod is bound to: kube-scheduler may have picked another of the
    # placement's candidates than the one the entry names (workers.core.placement.alternates);
    # not for a moment of NotReady, a heartbeat missed (workers.core.warm_claim.retire_on)
    on = {e.name: _bound_node(e, pods) for e in idle}
    closed = claim.closing_nodes(rt, template, set(on.values()), now)
    for entry in idle:  # an idle agent that lost its connection would leave a build waiting
        if on[entry.name] != entry.where:  # for the claim (workers.warm.claim): an entry of
            # an earlier release, or one marked idle while no listing was at hand
            warm.set_bound(name, entry.name, on[entry.name])
        if on[entry.name] in closed:
            agents.retire(rt, entry, "warm_node_closed")
        elif entry.name in connected or reconnecting:
            left.append(entry)
        else:
            agents.retire(rt, entry, "warm_offline")
    marked = mark_online(rt, starting, connected, now, pods)
    left += [replace(e, state=WarmState.IDLE, since=now, bound=_bound_node(e, pods))
             if e.name in marked else e for e in starting]
    return left


def retire_outgrown(rt: Runtime, entries: list[WarmEntry], seen: Seen, now: float,
                    size: Resources) -> list[WarmEntry]:
    """Retire the idle agents no build of the window could take (workers.core.warm_pool.
    outgrown): the pool then makes them again at `size`, what it makes agents at now. The
    entries left."""
    wanted = [want for at, want in seen
              if want is not None and at >= now - ARRIVAL_WINDOW_SECONDS]
    idle = [(e.name, e.size.memory_bytes)
            for e in entries if e.state == WarmState.IDLE]
    small = set(outgrown(idle, wanted, size.memory_bytes))
    return [e for e in entries
            if e.name not in small or not agents.retire(rt, e, "warm_outgrown")]


def mark_online(rt: Runtime, starting: list[WarmEntry], online: set[str],
                now: float, pods: Mapping[str, PodInfo] | None = None) -> set[str]:
    """Starting agents whose Jenkins computer is online become idle, their start observed
    into agent_start_duration_seconds (the online time the target reads), with the node
    their pod is bound to (of `pods`, else one listing when some came online: the claim
    judges an agent by it, workers.warm.claim); their names."""
    marked = set()
    if pods is None and any(e.name in online for e in starting):
        try:
            pods = {p.name: p for p in rt.cluster.list_pods()}
        except RetryableError:  # marked all the same: the next pool pass records the node
            pods = {}
    for entry in starting:
        pod = (pods or {}).get(entry.name)
        if entry.name in online and agents.store(rt).mark_idle(
                entry.template, entry.name, (pod.node or "") if pod is not None else ""):
            agents.metrics(rt).agent_online(entry.template, pod_created_at=entry.created,
                                            now=now)
            log.info("warm agent online", extra={"agent": entry.name, "template": entry.template,
                                                 "seconds": round(now - entry.created, 3)})
            marked.add(entry.name)
            backoff.online(rt, entry.template)
    return marked


def notice_online(rt: Runtime, now: float | None = None) -> int:
    """The reconcile leader's poll between passes: Jenkins is asked only while some warm
    agent starts; how many came online."""
    now = time.time() if now is None else now
    templates = warm_templates(rt)
    if not templates:
        return 0
    starting = [e for entries in agents.store(rt).all_agents(templates).values()
                for e in entries if e.state == WarmState.STARTING]
    if not starting:
        return 0
    return len(mark_online(rt, starting, rt.jenkins.online_agents(), now))


def fill(rt: Runtime, name: str, template: PodTemplate, entries: list[WarmEntry],
         want: int, now: float, size: Resources | None = None) -> dict[str, int]:
    """Start what the plan lacks (at `size`, the template's default if None), retire what it
    has beyond the target (builds not waiting)."""
    done = {"warm_started": 0, "warm_retired": 0}
    decided = plan([e.agent for e in entries], want, builds_waiting=0)
    by_name = {e.name: e for e in entries}
    for agent_name in decided.retire:
        done["warm_retired"] += agents.retire(rt, by_name[agent_name], "warm_idle")
    if decided.start and backoff.backing_off(rt, name, now):  # its agents fail to start
        log.info("warm pool backs off: no agent started", extra={"template": name})
        return done
    for _ in range(decided.start):
        try:
            started = agents.start(rt, name, template, now, size)
        except QuotaFull as err:
            # The namespace's quota is full (an admin's `pods: 0` pause, or builds holding it):
            # no agent now, tried again next pass, as for room on nodes. Raised, it failed the
            # whole warm pass (the other pools too) every pass, counted and logged as an error
            # for as long as the quota stayed full.
            log.info("warm agent waits for room in a ResourceQuota",
                     extra={"template": name, "detail": err.words})
            break
        if isinstance(started, Wait):  # no room: builds come first, and the next pass tries
            log.info("warm agent waits for room", extra={"template": name,
                                                         "reason": str(started.reason)})
            break
        done["warm_started"] += 1
    return done


def run(rt: Runtime, now: float | None = None, *, only: str | None = None,
        pods: list[PodInfo] | None = None) -> dict[str, int]:
    """One pass over every pool (or the pool of template `only`); what it did, by kind."""
    now = time.time() if now is None else now
    templates = warm_templates(rt)
    if only is not None:
        templates = {only: templates[only]} if only in templates else {}
    result = {"warm_started": 0, "warm_retired": 0, "warm_gave_way": 0}
    if not templates:
        return result
    listed = rt.cluster.list_pods() if pods is None else pods
    by_name = {p.name: p for p in listed}
    longest = max(t.warm.idle_seconds for t in templates.values() if t.warm)
    seen = arrivals(rt, now, now - max(ARRIVAL_WINDOW_SECONDS, longest))
    nodes = rt.capacity.read_state()[1]
    # builds that room on nodes, or in the namespace's quota, would place: they come first
    waiting = room_waiting(rt, nodes) or quota_waiting(rt)
    pools = agents.store(rt).all_agents(templates)
    # The size each pool makes agents at now, kept for nodes_needed (scheduling.warm_room).
    sizes = {name: agent_size_now(template, seen.get(name, []), now,
                                  scheduling.largest_node(rt, template))
             for name, template in templates.items()}
    agents.store(rt).set_sizes(sizes)
    held = []
    try:
        for name, template in templates.items():
            lease = pool_lease(rt, name)
            if not lease.acquire():  # another pass or task is at it
                continue
            held.append(lease)
            # the newest file's pod spec, during a rolling upgrade or a chart change
            current = agents.announce(rt, name)
            entries = tidy(rt, name, template, pools[name], by_name, now, current)
            # a slot of maxAgents for each agent an older release started without one
            rt.capacity.hold_warm_slots(name, [e.name for e in entries if e.state in (
                WarmState.STARTING, WarmState.IDLE)], agents.store(rt).key(name))
            # (announced on every pass: an announcement lapses unless renewed)
            newest_sizes = agents.newest_sizes(rt, name)
            if current != agents.current_spec(rt, name) or not newest_sizes:
                # a newer file's processes run beside this one (a rolling upgrade): its agents
                # are theirs to keep and make; made here, each pass retired the other's, or
                # (its pool's sizes changed only) brought the pool back to this file's target
                log.info("warm pool left to a newer file's processes", extra={"template": name})
                continue
            entries = retire_outgrown(rt, entries, seen.get(name, []), now, sizes[name])
            # Asked again after the pool was read: a build that began to wait since had an
            # agent give way for it, which this pass, reading the pool one short, replaced in
            # the room the build was to have; its next give-way gave up a second agent.
            waiting = waiting or room_waiting(rt, nodes) or quota_waiting(rt)
            if waiting:
                continue
            done = fill(rt, name, template, entries, target(rt, name, template, seen, now), now,
                        sizes[name])
            for kind, count in done.items():
                result[kind] += count
        if waiting:  # decided again under its lease, from what is current then
            result["warm_gave_way"] = give_way(rt)
    finally:
        # Once Redis answers: a raise lost the pass's counts, and the later pools' leases
        # stayed. One given up after its time to live: the others, taken before, lapsed too.
        for lease in held:
            if not let_go(lease, what=f"warm pool {lease.key}"):
                break
    return result


def retire_unpooled(rt: Runtime, pods: list[PodInfo], now: float) -> int:
    """Retire the idle and starting agents of a template that has no pool any more: its
    `warm` taken out of the file (or the template itself) and the processes restarted. The
    pool pass looks at the templates with a pool only, the claim takes no agent of one
    without, and the repairs leave a pool's unclaimed agents alone (`known`): its agents
    stayed, pods holding their room and Jenkins nodes online, idle for ever (past the pod's
    deadline too, ended). A claimed one is its build's; forgotten once its pod is gone.
    `pods`: a listing (the pass's), taken after `now`; the templates are the file's without a
    pool and those the listed warm pods name. How many were retired."""
    pooled = {n for n, t in rt.config.templates.items() if t.warm is not None}
    names = {n for n in rt.config.templates if n not in pooled} | {
        p.labels.get(TEMPLATE_LABEL, "") for p in pods if p.labels.get(agents.WARM_LABEL)}
    names -= pooled | {""}
    if not names:
        return 0
    listed = {p.name for p in pods}
    retired = 0
    for name, entries in agents.store(rt).all_agents(sorted(names)).items():
        if entries and agents.announce(rt, name, NO_POOL) != NO_POOL:
            continue  # a newer file keeps its pool (a rolling upgrade): its agents are its own
        for entry in entries:
            if entry.state != WarmState.CLAIMED:
                retired += agents.retire(rt, entry, "warm_idle")
            elif entry.name not in listed and entry.created < now - LISTING_GRACE_SECONDS:
                # its build's release deleted it. Not one made after the listing: a worker
                # still on a file with the pool (a rolling restart) made it, a build took it,
                # and forgotten, its pod was a stray to the next repairs, deleted under the
                # build running on it (workers.engine.repairs.delete_stray_pods)
                agents.store(rt).forget(name, entry.name)
    return retired


def known(rt: Runtime, pods: list[PodInfo]) -> dict[str, str]:
    """Of these pods, the warm agents the store knows: name -> the key of the build that
    claimed it ("" while none has). A warm pod not in it is an orphan (workers.engine.repairs)."""
    templates = {p.labels.get(TEMPLATE_LABEL, "") for p in pods
                 if p.labels.get(agents.WARM_LABEL)}
    if not templates:
        return {}
    pools = agents.store(rt).all_agents(sorted(templates))
    names = {p.name for p in pods}  # not the store's other entries: their pods are gone
    return {e.name: e.build for entries in pools.values() for e in entries if e.name in names}
