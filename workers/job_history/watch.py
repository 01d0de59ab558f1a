"""While a build runs: its agent's usage samples and an OOM kill, written to Redis.

``UsageSampler`` is a ClusterWatch usage listener: it gets the agents' PodMetrics samples that
are new to this process, and writes each to the run's record once (the store skips a stamp
another worker took). ``OomWatch`` is a pod listener: a non-init container of one of this
installation's agent pods that gets the build's size (not a service's) terminated with reason
OOMKilled (the kubelet's reason; state or lastState) marks the run OOM-killed, at the memory
the build was given; so does the kill of jnlp running the Jenkins agent at agentMemory
(agentInjection false beside containers marked build: own_agent_container), marked as the
agent's own. A DELETED event counts too: it carries the pod's last status, which a
watch that was away read nowhere else. A kill seen after the build's release folded its run
(the kubelet writes the final status of a pod being deleted, after Jenkins' result released
it; or the watch read it late) is folded then, by a job (LATE_TASK): marked on a run already
taken, it was left behind, the build read a plain failure and its job's next build was not
sized up.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from workers.adapters.kube_objects import timestamp
from workers.adapters.legacy_pods import LegacyPods, is_ours
from workers.adapters.redis_state import (
    JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_RETRY, JOB_TIMEOUT_SECONDS, RedisState)
from workers.adapters.usage_store import UsageStore
from workers.core.commit_status import OOM_FIELD
from workers.core.errors import CIAutoscalerError
from workers.core.containers import AGENT_CONTAINER
from workers.core.models import PodTemplate
from workers.core.pods import BUILD_KEY_LABEL, TEMPLATE_LABEL, WARM_LABEL, is_managed
from workers.core.quantity import memory_bytes

log = logging.getLogger("ci_autoscaler.job_history")
OOM_KILLED = "OOMKilled"  # containerStatuses[].state.terminated.reason (kubelet)
LATE_TASK = "workers.job_history.learn.learn_late"
# A kill the container's own end (terminated.finishedAt, the runtime's time of the exit) puts
# this long after the build's release is not the build's: the pod of a failed build kept for
# debugging (podRetention) runs on, and a person's `kubectl exec` in it can be OOM-killed
# hours later. Folded, it doubled the job's next memory and, with retryOnOOM, started again
# a build that had failed on its own. The margin covers the node's clock against the worker's.
LATE_KILL_MARGIN_SECONDS = 60.0
# one learn_late job per build (several workers' watches each see the pod's MODIFIED and its
# DELETED event): two at once could each take a run marked again in between, and count the
# kill twice
LATE_DEDUPE_SECONDS = 24 * 3600

# (agent pod name, metrics-server stamp, CPU millicores, memory bytes)
UsageSample = tuple[str, str, int, int]


class UsageSampler:
    def __init__(self, store: UsageStore):
        self.store = store

    def __call__(self, samples: Sequence[UsageSample]) -> None:
        try:
            for agent, stamp, cpu_millis, memory_bytes in samples:
                self.store.sample(agent, stamp=stamp, cpu_millis=cpu_millis,
                                  memory_bytes=memory_bytes)
        except redis.RedisError as err:  # a sample missed; the next one comes in seconds
            log.warning("usage sample not recorded", extra={"error": type(err).__name__})


def _kill(status: dict[str, Any]) -> dict[str, Any] | None:
    """The container's terminated state that is an OOM kill (state, else lastState)."""
    for state in (status.get("state") or {}, status.get("lastState") or {}):
        terminated = state.get("terminated") or {}
        if terminated.get("reason") == OOM_KILLED:
            return terminated
    return None


def _memory_limit(obj: dict[str, Any], container: str) -> int:
    for c in (obj.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
            return memory_bytes(limit) if limit else 0
    return 0


def own_agent_container(template: PodTemplate | None) -> str | None:
    """The container that runs the Jenkins agent at the template's agentMemory, not at the
    build's size: jnlp with agentInjection false beside containers marked build. Its kill
    kills the agent, and the build with it (the build runs where the agent runs), but the
    build's size does not size it."""
    if template is not None and not template.agent_injection and template.build_containers:
        return AGENT_CONTAINER
    return None


def sized_containers(template: PodTemplate | None) -> frozenset[str] | None:
    """The containers of a template's pods that get the build's size (workers.core.pods):
    those marked `build: true`, else jnlp; None for a template not known (any counts)."""
    if template is None:
        return None
    return frozenset(c.name for c in template.build_containers) or frozenset({AGENT_CONTAINER})


class OomWatch:
    """`templates`: the configured pod templates, by name: only an OOM kill of a container
    that gets the build's size (sized_containers) is the build's. A service container is
    killed at its own fixed memory, which the job's history does not set: counted, the
    build's memory doubled, and retryOnOOM started the build again to be killed the same
    way. `state`: the builds' records, for a kill seen after its build's release (the
    module docstring); None: the run is marked only."""

    def __init__(self, *, store: UsageStore, namespace: str, installation: str = "",
                 legacy_known: LegacyPods | None = None,
                 templates: Mapping[str, PodTemplate] | None = None,
                 state: RedisState | None = None):
        self.store = store
        self.namespace = namespace
        self.installation, self.legacy_known = installation, legacy_known
        self.templates = templates
        self.state = state

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != self.namespace or not is_managed(labels) \
                or not labels.get(BUILD_KEY_LABEL) \
                or not is_ours(meta, self.installation, self.legacy_known):
            return
        template = self.templates.get(labels.get(TEMPLATE_LABEL, "")) \
            if self.templates is not None else None
        sized = sized_containers(template) if self.templates is not None else None
        own_agent = own_agent_container(template)
        kills = []  # (of the agent's own container, the container's status, its kill)
        for status in (obj.get("status") or {}).get("containerStatuses") or []:
            name = status.get("name")
            if sized is not None and name not in sized and name != own_agent:
                continue  # a service's own kill (the class docstring)
            if (kill := _kill(status)) is not None:
                kills.append((name == own_agent, status, kill))
        if not kills:
            return
        # a build container's kill first: the build's size is what it teaches
        agent_only, status, kill = min(kills, key=lambda k: k[0])
        try:
            self._mark(self._build_of(labels, meta.get("name", "")), meta.get("name", ""),
                       _memory_limit(obj, status.get("name", "")),
                       killed_at=timestamp(kill.get("finishedAt")), agent_only=agent_only)
        except (redis.RedisError, CIAutoscalerError) as err:
            log.warning("OOM kill not recorded", extra={
                "agent": meta.get("name"), "error": type(err).__name__})

    def _build_of(self, labels: Mapping[str, str], agent: str) -> str:
        """The key of the pod's build: its build-key label, but a warm agent's is its own
        name (workers.warm.agents.own_request): once a build claimed it, the agents mapping
        names that build (workers.warm.claim.take). Read by the label, a kill seen after the
        release of a build on a warm agent found no build released, and was lost."""
        if labels.get(WARM_LABEL) and self.state is not None:
            return self.state.build_for_agent(agent) or labels[BUILD_KEY_LABEL]
        return labels[BUILD_KEY_LABEL]

    def _mark(self, key: str, agent: str, limit: int, *, killed_at: float | None,
              agent_only: bool = False) -> None:
        """Mark the run; after its build's release, have it folded (LATE_TASK), once. One
        whose build has it already (an event of the pod after its kill was folded: its
        deletion) is left: marked again, a run taken already would be left behind; so is a
        kill after the build's end (LATE_KILL_MARGIN_SECONDS)."""
        released = recorded = None
        if self.state is not None:
            released, recorded = self.state.build_fields([key], "released_at", OOM_FIELD)[0]
        if recorded:
            return
        if released and killed_at is not None \
                and killed_at > _number(released) + LATE_KILL_MARGIN_SECONDS:
            log.info("OOM kill after the build's release: not the build's", extra={
                "build_key": key, "agent": agent})
            return
        self.store.oom_killed(agent, memory_limit_bytes=limit, agent_container=agent_only)
        if self.state is None:
            return
        # Read again: the release (or a late fold) may have taken the run between that read
        # and this mark (the kubelet writes the kill's status as the release deletes the pod,
        # and a pod's MODIFIED and DELETED events reach several watches).
        released, recorded = self.state.build_fields([key], "released_at", OOM_FIELD)[0]
        if recorded:  # folded meanwhile: this mark would be left behind until its TTL
            self.store.take_run(agent)
            return
        if not released:  # its release folds it (workers.job_history.learn)
            return
        if not self.state.redis.set(f"{self.state.prefix}late-oom:{key}", agent, nx=True,
                                    ex=LATE_DEDUPE_SECONDS):
            return  # queued already (this watch's earlier event, or another worker's)
        self.state.queue.enqueue_call(
            LATE_TASK, kwargs={"build_key": key, "agent_name": agent},
            timeout=JOB_TIMEOUT_SECONDS, result_ttl=JOB_RESULT_TTL_SECONDS,
            failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY,
            description=f"learn_late {key}")
        log.warning("OOM kill seen after the build's release: folded late", extra={
            "build_key": key, "agent": agent})


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")  # unreadable: no kill is after it
