"""One warm agent started or retired. Started like a build's agent, at the size the pool
asks for (the demand's, workers.core.warm_claim.agent_size): placed by the same core
with a reservation (scheduling.place_warm), registered in Jenkins on a label of its own name,
its pod made by core.pods as an idle warm agent's (core.warm_pods: one more label, and
evictable by the node autoscalers until a build claims it); recorded in the warm store
before its pod exists, so the reconcile repairs never take it for an orphan. Retired: its store entry
given up first (atomically, only while idle), then its pod and Jenkins node deleted."""

import logging
import time
import uuid

from workers.concurrency.heartbeat import let_go
from workers.engine import scheduling
from workers.adapters.warm_specs import KIND_SIZES, WarmSpecs
from workers.adapters.warm_store import WarmEntry, WarmStore
from workers.core.keys import agent_name
from workers.core.cluster import Resources
from workers.core.models import BuildRequest, PodTemplate
from workers.core.placement import Wait, WaitReason
from workers.core.sizing import template_min
from workers.core.pods import WARM_LABEL as POD_WARM_LABEL
from workers.core.pods import agent_pod_manifest, agent_secret_manifest
from workers.core.warm_pool import WARM_MAX_AGE_SECONDS, WARM_SOURCE, WarmState, default_size
from workers.core.warm_pool import pinned, pod_spec_of, pool_sizes_of
from workers.core.warm_pods import idle_warm
from workers.telemetry.metrics import EngineMetrics
from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.warm")
WARM_LABEL = POD_WARM_LABEL  # as the pool and the repairs read it
WARM_JOB = "warm"  # the `job` of a warm agent's own request: it names no Jenkins job


def store(rt: Runtime) -> WarmStore:
    return WarmStore(rt.state.redis, prefix=rt.state.prefix)


def metrics(rt: Runtime) -> EngineMetrics:
    return EngineMetrics(rt.state.redis, prefix=rt.state.prefix)


def deadline_seconds(template: PodTemplate) -> int:
    """A warm pod's activeDeadlineSeconds: its build's, after at most its longest idle life."""
    return template.active_deadline_seconds + WARM_MAX_AGE_SECONDS


def new_name(template_name: str) -> str:
    """cia-warm-<template>-<12 hex>: a pod name, Jenkins node name and label at once."""
    return agent_name(f"{WARM_JOB}-{template_name}", uuid.uuid4().hex)


def own_request(template_name: str, name: str, now: float) -> BuildRequest:
    """The warm agent as a request: its build key is its name (the pod's build-key label, and
    the key of its reservation)."""
    return BuildRequest(build_key=name, agent_name=name, source=WARM_SOURCE, project="",
                        ref="", sha="", user="", job=WARM_JOB, template=template_name,
                        received_at=now)


def current_spec(rt: Runtime, template_name: str) -> str:
    """The pod fingerprint of the template as the file says now (not as the namespace's
    LimitRanges fit its sizes: workers.core.warm_pool.pod_spec_of)."""
    template = rt.config.templates.get(template_name)
    return pod_spec_of(template) if template is not None else ""


def outdated(rt: Runtime, entry: WarmEntry, current: str | None = None) -> bool:
    """The agent was made under another pod fingerprint of its template than `current` (the
    file's now if None) (an entry of an earlier release, with none, is taken as current)."""
    return bool(entry.spec) and entry.spec != (
        current_spec(rt, entry.template) if current is None else current)


def announce(rt: Runtime, template_name: str, spec: str | None = None) -> str:
    """Announce the template's pod fingerprint in this process's file (`spec`, else the
    file's now) as of the process's start; the one the pools follow now, the newest
    announced by a live process
    (workers.adapters.warm_specs: during a rolling upgrade the old and the new files' passes
    no longer retire each other's agents)."""
    return WarmSpecs(rt.state.redis, prefix=rt.state.prefix).announce(
        template_name, current_spec(rt, template_name) if spec is None else spec,
        since=rt.started_at, now=time.time())


def pool_sizes(rt: Runtime, template_name: str) -> str:
    """The fingerprint of how the file sizes the template's pool (workers.core.warm_pool.
    pool_sizes_of)."""
    template = rt.config.templates.get(template_name)
    return pool_sizes_of(template, rt.config.max_agents) if template is not None else ""


def newest_sizes(rt: Runtime, template_name: str) -> bool:
    """Announce how this process's file sizes the template's pool; whether they are the ones
    the pools follow now (the newest announced by a live process whose file's pods are this
    one's: workers.adapters.warm_specs). Not: a newer file's processes run beside this one,
    and its passes bring the pool to its targets; this one's, bringing it to its own, undid
    theirs pass after pass."""
    mine = pool_sizes(rt, template_name)
    return WarmSpecs(rt.state.redis, prefix=rt.state.prefix).announce(
        template_name, mine, since=rt.started_at, now=time.time(), kind=KIND_SIZES,
        among=current_spec(rt, template_name)) == mine


def start(rt: Runtime, template_name: str, template: PodTemplate,
          now: float | None = None, size: Resources | None = None) -> WarmEntry | Wait:
    """Place, register and create one warm agent of `size` (the template's default if None),
    state starting; the Wait when it fits nowhere (nothing is left behind then)."""
    now = time.time() if now is None else now
    size = default_size(template) if size is None else size
    name = new_name(template_name)
    request = own_request(template_name, name, now)
    at_size = pinned(template, size)
    # Held from its reservation to its pod: the pass's release_settled_reservations
    # (workers.engine.reconcile) let go the reservation of a pod-less agent with no build and
    # no provision lease, and its delete_agentless_nodes then took the node registered for it
    # (a secret read slower than a pass). A start that dies lets it lapse: the node goes then.
    from workers.engine.tasks import provision_lease  # it imports this module
    lease = provision_lease(rt, name)
    lease.acquire()  # a fresh name: no one else holds it
    try:
        return _start(rt, template_name, template, request, at_size, name, size, now)
    finally:  # once Redis answers: a plain release raising there undid a made agent's start
        let_go(lease, what=f"warm start {name}")


def _start(rt: Runtime, template_name: str, template: PodTemplate, request: BuildRequest,
           at_size: PodTemplate, name: str, size: Resources, now: float) -> WarmEntry | Wait:
    # judged on its own pod's deadline (its idle life, then its build's): a NoExecute taint
    # tolerated for longer than the build's deadline but not as long evicted a build that
    # claimed it late (core.tolerations; the eviction counts from its binding)
    lives = at_size.model_copy(update={"active_deadline_seconds": deadline_seconds(template)})
    decision = scheduling.place_warm(rt, request, lives)
    if isinstance(decision, Wait):
        return decision
    # a slot of maxAgents, as a build's: an operator trusts it as a cap of agent pods, warm
    # ones among them (the build that claims it takes the slot over: workers.warm.claim)
    if not rt.capacity.take_warm_slot(name, template_name, rt.config.max_agents):
        rt.capacity.release(name)
        return Wait(WaitReason.CAP, f"maxAgents {rt.config.max_agents} reached",
                    template_min(at_size))
    warm = store(rt)
    try:
        rt.jenkins.ensure_node(name, label=name, remote_fs=template.workdir)
        secret = rt.jenkins.agent_secret(name)
        manifest = idle_warm(agent_pod_manifest(
            build=request, template=template, size=decision.size,
            namespace=rt.settings.agent_namespace,
            hostnames=[host for _, host in decision.candidates],
            jenkins_url=rt.settings.agent_jenkins_url, installation=rt.settings.installation))
        manifest["spec"]["activeDeadlineSeconds"] = deadline_seconds(template)
        warm.add(template_name, name, size=size, node=decision.node, now=now,
                 in_flight=decision.in_flight, spec=current_spec(rt, template_name))
        rt.cluster.create_pod(manifest, secret=agent_secret_manifest(
            build=request, namespace=rt.settings.agent_namespace, secret=secret,
            installation=rt.settings.installation))
    except Exception:
        rt.capacity.release(name)
        rt.capacity.free_slots(name)
        warm.forget(template_name, name)
        rt.jenkins.delete_node(name)
        raise
    metrics(rt).warm_agent_created(template_name)
    log.info("warm agent started", extra={"agent": name, "template": template_name,
                                          "node": decision.node})
    return WarmEntry(name=name, template=template_name, state=WarmState.STARTING, since=now,
                     created=now, size=size, node=decision.node,
                     in_flight=decision.in_flight, spec=current_spec(rt, template_name))


def retire(rt: Runtime, entry: WarmEntry, reason: str) -> bool:
    """Give the agent up if it is still in its state (never one a build claimed meanwhile),
    then delete its pod and Jenkins node. False when a build took it first."""
    if not store(rt).give_up(entry.template, entry.name, entry.state):
        return False
    delete(rt, entry, reason)
    return True


def delete(rt: Runtime, entry: WarmEntry, reason: str) -> None:
    """Its pod, Jenkins node and reservation (the store entry is gone already). A Jenkins
    away or failing the node's delete through every retry leaves the node to the reconcile
    pass's delete_agentless_nodes, as a build's release does: raised here, the agent's slot of
    maxAgents and its reservation stayed held by no agent until a pass found them stale, and
    the build it gave way to failed its provision (workers.warm.giving_way.for_slot)."""
    from workers.engine.tasks import delete_node_or_leave  # it imports this module
    if rt.cluster.delete_pod(entry.name):
        metrics(rt).agent_deleted(entry.template, reason)
    delete_node_or_leave(rt, entry.name)
    rt.capacity.release(entry.name)
    rt.capacity.free_slots(entry.name)  # its slot of maxAgents (never a claimed one's)
    log.info("warm agent retired", extra={"agent": entry.name, "template": entry.template,
                                          "reason": reason, "state": str(entry.state)})


def registered(rt: Runtime) -> set[str]:
    """The warm agents no build claimed whose Jenkins nodes are theirs though a pod listing
    may lack their pods: in a pool's store (the pool's pass retires one whose pod is gone,
    and its node with it), or holding their reservation (its key is the agent's name), which
    `start` takes before it registers the node. A pass's delete_agentless_nodes
    (workers.engine.repairs) took the node of one started after its listing for an orphan's:
    the agent never connected. A claimed one is its build's, judged by the build's status."""
    templates = [n for n, t in rt.config.templates.items() if t.warm is not None]
    pools = store(rt).all_agents(templates) if templates else {}
    entries = [e for listed in pools.values() for e in listed]
    claimed = {e.name for e in entries if e.state == WarmState.CLAIMED}  # its reservation too
    return ({e.name for e in entries} | set(rt.capacity.reservations())) - claimed
