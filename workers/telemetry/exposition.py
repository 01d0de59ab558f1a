"""What GET /metrics answers, in the web process: the ``process`` metrics of the catalogue
(prometheus_client objects, multiprocess under gunicorn) merged with what is read from Redis
at scrape time (``shared`` counters and histograms, ``state`` gauges). See workers.telemetry.metrics
for the catalogue and for why each value lives where it does.

Only the web process imports this module: it is the one place that creates prometheus_client
metrics, so no other process ever writes a multiprocess file.
"""

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone

import prometheus_client
import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, REGISTRY, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import HistogramMetricFamily, Metric as Family
from prometheus_client.utils import floatToGoString
from rq import Queue
from rq.defaults import DEFAULT_WORKER_TTL
from rq.utils import as_text, utcparse
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from workers.telemetry import metrics as m
from workers.adapters import agent_counts, leftover_store, pull_reads, redis_memory
from workers.adapters import spool as spool_file
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.catchup_store import CatchUpStore
from workers.adapters.intake import Intake
from workers.adapters.metric_store import counter_values, histogram_values
from workers.adapters.pass_store import CATCH_UP, PassStore
from workers.adapters.redis_state import RedisState
from workers.adapters.status_queue import StatusQueue
from workers.adapters.warm_store import WarmStore
from workers.core.redis_eviction import evicts
from workers.telemetry.monotonic_counters import MonotonicCounters, Offsets
from workers.telemetry.redis_reads import RedisReads

log = logging.getLogger("ci_autoscaler.metrics")

# `_created` series would be summed when two sources merge, and nobody charts them.
prometheus_client.disable_created_metrics()

WEBHOOKS_TOTAL = Counter(m.WEBHOOKS_TOTAL.name, m.WEBHOOKS_TOTAL.doc, m.WEBHOOKS_TOTAL.labels)
WEBHOOK_DURATION_SECONDS = Histogram(
    m.WEBHOOK_DURATION_SECONDS.name, m.WEBHOOK_DURATION_SECONDS.doc,
    m.WEBHOOK_DURATION_SECONDS.labels, buckets=m.WEBHOOK_DURATION_SECONDS.buckets)
ERRORS_TOTAL = Counter(m.ERRORS_TOTAL.name, m.ERRORS_TOTAL.doc, m.ERRORS_TOTAL.labels)
SPOOL_REFUSALS_TOTAL = Counter(m.SPOOL_REFUSALS_TOTAL.name, m.SPOOL_REFUSALS_TOTAL.doc,
                               m.SPOOL_REFUSALS_TOTAL.labels)
for _reason in m.SPOOL_REFUSAL_REASONS:
    SPOOL_REFUSALS_TOTAL.labels(_reason)

for _source, _events in (("gitlab", m.GITLAB_EVENTS), ("jenkins", m.JENKINS_EVENTS)):
    for _event in _events:
        for _result in m.WEBHOOK_RESULTS:
            WEBHOOKS_TOTAL.labels(_source, _event, _result)
for _source in m.WEBHOOK_SOURCES:
    WEBHOOK_DURATION_SECONDS.labels(_source)
for _component in m.ERROR_COMPONENTS_WEB:
    for _kind in m.ERROR_KINDS:
        ERRORS_TOTAL.labels(_component, _kind)


def _gauge(metric: m.Metric, value: float | None = None) -> GaugeMetricFamily:
    if metric.labels:
        return GaugeMetricFamily(metric.name, metric.doc, labels=metric.labels)
    return GaugeMetricFamily(metric.name, metric.doc, value=value)


class CapacityCollector:
    """The capacity state, read from Redis at scrape time, so every web worker reports the
    same values whichever process computed them."""

    def __init__(self, store: CapacityStore):
        self.store = store

    def collect(self) -> Iterator[Family]:
        state, nodes = self.store.read_state()
        oldest = self.store.oldest_waiting_since()
        now, unpaused = time.time(), self.store.oldest_unpaused_since()
        # A build held as unschedulable waits too (its pod left Pending to kube-scheduler,
        # out of the waiting set): left out, it waited for hours with no alert.
        held = self.store.oldest_held_since(state)
        if held is not None:
            oldest, unpaused = (held if since is None else min(since, held)
                                for since in (oldest, unpaused))
        for metric, since in ((m.OLDEST_WAITING_BUILD_AGE_SECONDS, oldest),
                              (m.OLDEST_UNPAUSED_WAITING_BUILD_AGE_SECONDS, unpaused)):
            yield _gauge(metric, 0.0 if since is None else max(0.0, now - since))
        num = lambda k: float(state.get(k, 0))  # noqa: E731
        # Before any decision or reconcile pass (a fresh install), what waits and what is
        # short are 0, so dashboards show 0 and an alert sees a value; the state's age is
        # +Inf, which tells "nothing known" from "nothing waiting". The reference shape, the
        # metrics-server flag and the nodes are left out until a pass has seen the cluster.
        for metric, value in (
            (m.BUILDS_WAITING_FOR_CAPACITY, num("waiting")),
            (m.CAPACITY_SHORTFALL_CORES, num("shortfall_cpu_millis") / 1000),
            (m.CAPACITY_SHORTFALL_BYTES, num("shortfall_memory_bytes")),
            (m.NODES_NEEDED, num("nodes_needed")),
            (m.SCALE_UP_PODS, num("scale_up_pods")),
            (m.BUILDS_UNPLACEABLE, num("unplaceable")),
        ):
            yield _gauge(metric, value)
        reasons = json.loads(state.get("reasons") or "{}")
        by_reason = _gauge(m.BUILDS_WAITING)
        for reason in sorted(set(m.WAIT_REASONS) | set(reasons)):
            by_reason.add_metric([reason], reasons.get(reason, 0))
        yield by_reason
        if not state:
            yield _gauge(m.CAPACITY_STATE_AGE_SECONDS, float("inf"))
            return
        for metric, value in (
            (m.REFERENCE_NODE_CORES, num("reference_cpu_millis") / 1000),
            (m.REFERENCE_NODE_BYTES, num("reference_memory_bytes")),
            (m.NODE_METRICS_AVAILABLE, num("metrics_available")),
            (m.CAPACITY_STATE_AGE_SECONDS, max(0.0, time.time() - num("updated_at"))),
        ):
            yield _gauge(metric, value)
        for kind in m.NODE_QUANTITIES:
            cores, nbytes = _gauge(m.NODE_CORES[kind]), _gauge(m.NODE_BYTES[kind])
            for node, values in sorted(nodes.items()):
                if values.get(kind) is not None:
                    cores.add_metric([node], values[kind][0] / 1000)
                    nbytes.add_metric([node], values[kind][1])
            yield cores
            yield nbytes


class PassesCollector:
    """The reconcile leader's passes (workers.adapters.pass_store): a loop whose passes fail,
    or that runs none (no reconcile process, a leader hung in a call), shows here, whatever
    decisions keep the capacity state fresh meanwhile."""

    def __init__(self, store: PassStore):
        self.store = store

    def collect(self) -> Iterator[Family]:
        passes, now = self.store.read(), time.time()
        yield _gauge(m.RECONCILE_PASS_AGE_SECONDS, float("inf") if passes.last_ok_at is None
                     else max(0.0, now - passes.last_ok_at))
        yield _gauge(m.RECONCILE_IDLE_SECONDS, passes.idle_seconds(now))
        yield _gauge(m.RECONCILE_FAILING_SECONDS, passes.failing_seconds(now))


# A registered worker counts as alive while it beat this recently. RQ keeps a worker's key
# worker_ttl + 60 s (480 s) after its last heartbeat, so one that died without unregistering
# (SIGKILL: the OOM killer, its node lost) was counted for 8 minutes; ours beats at least each
# DEQUEUE_SECONDS (30 s: workers.concurrency.pool_worker) even when idle, and the margin covers
# a slow loop and the clocks of two pods. A beat is RQ's last_heartbeat, or, while a full
# Redis refuses that HSET, the EXPIRE of the key that the worker still sends
# (workers.concurrency.full_redis.keep_registered): its time to live renewed lately.
WORKER_SILENT_SECONDS = 90.0
_WORKER_KEY_TTL = DEFAULT_WORKER_TTL + 60  # RQ's heartbeat's, and keep_registered's


class QueueCollector:
    """RQ's queue and registries (counted without RQ's cleanup, so a scrape writes nothing),
    the workers listening on the queue that beat lately (WORKER_SILENT_SECONDS), and the
    intake."""

    def __init__(self, queue: Queue, intake: Intake):
        self.queue, self.intake = queue, intake

    def collect(self) -> Iterator[Family]:
        q = self.queue
        registries = (q.started_job_registry, q.scheduled_job_registry,
                      q.deferred_job_registry, q.failed_job_registry)
        with q.connection.pipeline(transaction=False) as pipe:
            pipe.llen(q.key)
            for registry in registries:
                pipe.zcard(registry.key)
            pipe.smembers(WORKERS_BY_QUEUE_KEY % q.name)
            pipe.llen(self.intake.key)
            pipe.llen(self.intake.failed_key)
            *counts, worker_keys, intake_waiting, intake_failed = pipe.execute()
        jobs = _gauge(m.QUEUE_JOBS)
        for state, count in zip(m.QUEUE_STATES, counts):
            jobs.add_metric([q.name, state], count)
        yield jobs
        intake = _gauge(m.INTAKE_EVENTS)
        for state, count in zip(m.INTAKE_STATES, (intake_waiting, intake_failed)):
            intake.add_metric([state], count)
        yield intake
        workers = _gauge(m.WORKERS)
        workers.add_metric([q.name], beating_workers(q.connection, list(worker_keys)))
        yield workers


def beating_workers(connection: redis.Redis, worker_keys: list) -> int:
    """How many of the registered workers beat within WORKER_SILENT_SECONDS."""
    if not worker_keys:
        return 0
    with connection.pipeline(transaction=False) as pipe:
        for key in worker_keys:
            pipe.hget(key, "last_heartbeat")
            pipe.ttl(key)
        answers = pipe.execute()
    since = datetime.now(timezone.utc) - timedelta(seconds=WORKER_SILENT_SECONDS)
    alive = 0
    for beat, ttl in zip(answers[::2], answers[1::2]):
        if ttl > _WORKER_KEY_TTL - WORKER_SILENT_SECONDS:  # EXPIREd lately (-2: no key)
            alive += 1
            continue
        try:
            alive += ttl != -2 and beat is not None and utcparse(as_text(beat)) >= since
        except ValueError:  # not RQ's format: not a worker of ours
            continue
    return alive


class AgentsCollector:
    """Live agents by template and phase, and of those the builds whose pod's image pull the
    kubelet retries now, by template (0 for each): the counts the reconcile pass keeps, with
    the builds written since read as they are (workers.adapters.agent_counts), a few commands
    whatever the number of builds; every live build's record before the first recount
    (workers.adapters.pull_reads)."""

    def __init__(self, state: RedisState, templates: Iterable[str]):
        self.state = state
        self.templates = sorted(templates)

    def collect(self) -> Iterator[Family]:
        counts = {(t, p): 0 for t in self.templates for p in m.AGENT_PHASES}
        pulling = dict.fromkeys(self.templates, 0)
        counted = agent_counts.read(self.state)
        if counted is None:
            counted = agent_counts.tally(pull_reads.live_agents(self.state))
        for (template, phase, pull_retrying), n in counted.items():
            counts[template, phase] = counts.get((template, phase), 0) + n
            if pull_retrying:
                pulling[template] = pulling.get(template, 0) + n
        agents = _gauge(m.AGENTS)
        for (template, phase), count in sorted(counts.items()):
            agents.add_metric([template, phase], count)
        yield agents
        family = _gauge(m.IMAGE_PULL_RETRYING)
        for template, count in sorted(pulling.items()):
            family.add_metric([template], count)
        yield family


class SpoolCollector:
    """The web pod's spool, counted in its file at scrape time: every gunicorn worker of the
    pod reads the same figures. A spool that cannot be read is left out (and logged)."""

    def __init__(self, spool: spool_file.Spool, stranded: Callable[[], int] | None = None):
        self.spool, self.stranded = spool, stranded

    def collect(self) -> Iterator[Family]:
        try:
            events, size = self.spool.counts()
            others = self.spool.others()
            set_aside = self.spool.set_aside_count()
        except spool_file.SpoolError as err:
            log.warning("spool not exported: cannot be read", extra={"error": str(err)})
            return
        yield _gauge(m.SPOOL_EVENTS, float(events))
        yield _gauge(m.SPOOL_BYTES, float(size))
        yield _gauge(m.SPOOL_FOREIGN_EVENTS, float(sum(others.values())))
        yield _gauge(m.SPOOL_SET_ASIDE_EVENTS, float(set_aside))
        yield _gauge(m.SPOOL_STRANDED_EVENTS, float(self.stranded() if self.stranded else 0))


class WarmAgentsCollector:
    """Warm agents by template and state, from the warm store (workers.warm)."""

    def __init__(self, state: RedisState, templates: Iterable[str]):
        self.store = WarmStore(state.redis, prefix=state.prefix)
        self.templates = sorted(templates)

    def collect(self) -> Iterator[Family]:
        counts = {(t, s): 0 for t in self.templates for s in m.WARM_STATES}
        for template, agents in self.store.all_agents(self.templates).items():
            for agent in agents:
                counts[template, str(agent.state)] += 1
        family = _gauge(m.WARM_AGENTS)
        for (template, state), count in sorted(counts.items()):
            family.add_metric([template, state], count)
        yield family


class RedisMemoryCollector:
    """Redis's memory in use and its maxmemory, whether its maxmemory-policy evicts keys, and
    the keys it has evicted (INFO memory and stats; workers.adapters.redis_memory). A Redis
    that refuses INFO (a managed one that renames it, an ACL user without it) leaves these
    out, logged once, and does not cost the scrape the rest."""

    refused_logged = False

    def __init__(self, connection: redis.Redis):
        self.connection = connection

    def collect(self) -> Iterator[Family]:
        try:
            memory = redis_memory.read(self.connection)
        except redis.ResponseError as err:
            if not RedisMemoryCollector.refused_logged:
                RedisMemoryCollector.refused_logged = True
                log.warning("redis memory not exported: INFO refused",
                            extra={"error": str(err)[:200]})
            return
        yield _gauge(m.REDIS_MEMORY_USED_BYTES, float(memory.used_bytes))
        yield _gauge(m.REDIS_MEMORY_MAX_BYTES, float(memory.max_bytes))
        if memory.policy:  # a Redis-compatible server that does not name it: left out
            evicting = _gauge(m.REDIS_EVICTING)
            evicting.add_metric([memory.policy], float(evicts(memory.policy)))
            yield evicting
        # A count since Redis started, as Redis keeps it: a counter (a restart, or a failover
        # to a replica, reads to Prometheus as a counter reset).
        yield CounterMetricFamily(m.REDIS_EVICTED_KEYS_TOTAL.name, m.REDIS_EVICTED_KEYS_TOTAL.doc,
                                  value=float(memory.evicted_keys))
        if memory.aof_enabled is not None:  # workers.core.redis_durability
            yield _gauge(m.REDIS_AOF_ENABLED, float(memory.aof_enabled))


class CatchUpCollector:
    """Our GitLab hook's state per project, as the catch-up last read it (workers.engine.catchup),
    and how its passes fare: no series of those before its first pass."""

    def __init__(self, store: CatchUpStore, passes: PassStore):
        self.passes = passes
        self.store = store

    def collect(self) -> Iterator[Family]:
        family = _gauge(m.GITLAB_HOOK_DISABLED)
        for project, value in sorted(self.store.hooks_disabled().items()):
            family.add_metric([project], value)
        yield family
        passes, now = self.passes.read(), time.time()
        if passes.last_ok_at is None and passes.failing_since is None:
            return  # no pass yet, or no catch-up: CIGitLabCatchUpFailing has nothing to say
        yield _gauge(m.CATCH_UP_FAILING_SECONDS, passes.failing_seconds(now))
        yield _gauge(m.CATCH_UP_PASS_AGE_SECONDS, float("inf") if passes.last_ok_at is None
                     else max(0.0, now - passes.last_ok_at))


class CommitStatusCollector:
    """The builds whose GitLab commit status waits to be looked at or retried
    (workers.commit_statuses), 0 when commit statuses are off; and whether a sender turned
    them off for the token's scope."""

    def __init__(self, queue: StatusQueue):
        self.queue = queue

    def collect(self) -> Iterator[Family]:
        yield _gauge(m.COMMIT_STATUS_BACKLOG, float(self.queue.backlog()))
        yield _gauge(m.COMMIT_STATUS_OFF, float(self.queue.off_reason() is not None))


class LeftoversCollector:
    """The failed builds whose queue item or run is still to be stopped in Jenkins
    (workers.engine.jenkins_leftovers)."""

    def __init__(self, state: RedisState):
        self.state = state

    def collect(self) -> Iterator[Family]:
        yield _gauge(m.JENKINS_LEFTOVERS, float(leftover_store.count(self.state)))


SHARED = tuple(x for x in m.CATALOGUE if x.source == m.Source.SHARED) + (m.ERRORS_TOTAL,)


class SharedCollector:
    """The ``shared`` counters and histograms, summed in Redis by every process; with
    `counters`, never exposed lower than before in this pod (workers.telemetry.monotonic_counters: a
    failover's drop is no reset to Prometheus)."""

    def __init__(self, engine: m.EngineMetrics, templates: Iterable[str],
                 projects: Iterable[str] = (), counters: MonotonicCounters | None = None,
                 fatal_reasons: Iterable[str] = ()):
        self.engine = engine
        self.templates = sorted(templates)
        self.projects = sorted(projects)
        self.counters = counters
        self.fatal_reasons = sorted(fatal_reasons)

    def collect(self) -> Iterator[Family]:
        if self.counters is None:
            yield from self._families(None)
            return
        with self.counters.held() as offsets:  # across the read: no older value taken last
            yield from list(self._families(offsets))

    def _families(self, offsets: Offsets | None) -> Iterator[Family]:
        def kept(name: str, labels: tuple, part: str, value: float) -> float:
            if offsets is None:
                return value
            return offsets.apply(json.dumps([name, list(labels), part]), value)

        raw = self.engine.store.read(x.name for x in SHARED)
        for metric in SHARED:
            zero = dict.fromkeys(m.shared_children(metric, self.templates, self.projects,
                                                  self.fatal_reasons))
            if metric.kind == m.Kind.COUNTER:
                family = CounterMetricFamily(metric.name, metric.doc, labels=metric.labels)
                values = {k: 0.0 for k in zero} | counter_values(raw[metric.name])
                for labels, value in sorted(values.items()):
                    family.add_metric(list(labels), kept(metric.name, labels, "", value))
            else:
                family = HistogramMetricFamily(metric.name, metric.doc, labels=metric.labels)
                values = histogram_values(raw[metric.name], metric.buckets)
                for labels in sorted(set(zero) | set(values)):
                    got = values.get(labels)
                    buckets = got.buckets if got else \
                        [(b, 0.0) for b in (*metric.buckets, float("inf"))]
                    family.add_metric(list(labels), [
                        (_le(b), kept(metric.name, labels, _le(b), c)) for b, c in buckets],
                        kept(metric.name, labels, "sum", got.sum if got else 0.0))
            yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else floatToGoString(bound)


def registry_for_scrape() -> CollectorRegistry:
    """A fresh multiprocess registry per scrape under gunicorn; the process registry otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class _Merged:
    def __init__(self, families: Iterable[Family]):
        self.families = list(families)

    def collect(self) -> list[Family]:
        return self.families


def _merge(families: Iterable[Family]) -> list[Family]:
    """One family per name; samples with the same name and labels are added up (the
    errors counter has series from the process and from Redis)."""
    merged: dict[str, Family] = {}
    for family in families:
        into = merged.get(family.name)
        if into is None:
            merged[family.name] = family
            continue
        index = {(s.name, tuple(sorted(s.labels.items()))): i
                 for i, s in enumerate(into.samples)}
        for sample in family.samples:
            at = index.get((sample.name, tuple(sorted(sample.labels.items()))))
            if at is None:
                into.samples.append(sample)
            else:
                into.samples[at] = into.samples[at]._replace(
                    value=into.samples[at].value + sample.value)
    return list(merged.values())


def exposition(*, state: RedisState, capacity: CapacityStore, engine: m.EngineMetrics,
               templates: Iterable[str], projects: Iterable[str] = (),
               spool: spool_file.Spool | None = None,
               stranded: Callable[[], int] | None = None,
               counters: MonotonicCounters | None = None,
               fatal_reasons: Iterable[str] = ()) -> bytes:
    """The Prometheus text. When Redis cannot be read, what comes from it is left out (and
    counted once in errors_total{component="metrics"}); the scrape still answers.
    `projects`: those the config names, whose missed-push counters exist at 0; `stranded`:
    the pushes in this installation's default spools of other Redis targets; `counters`: the
    pod's offsets that keep the shared counters from going down (workers.telemetry.monotonic_counters);
    `fatal_reasons`: the settings' fatal waiting reasons, whose start failures exist at 0."""
    templates = list(templates)
    from_redis: list[Family] = []
    redis_up = 1.0
    # Redis's memory first: a Redis full under noeviction refuses every command inside MULTI,
    # reads too, and the parts after it read in transaction pipelines; its INFO, outside
    # one, is still answered, so what CIRedisMemoryHigh reads is there when it matters most.
    for collector in (RedisMemoryCollector(state.redis), CapacityCollector(capacity),
                      PassesCollector(PassStore(state.redis, prefix=state.prefix)),
                      QueueCollector(state.queue, state.intake),
                      AgentsCollector(state, templates), WarmAgentsCollector(state, templates),
                      SharedCollector(engine, templates, projects, counters, fatal_reasons),
                      CatchUpCollector(CatchUpStore(state.redis, prefix=state.prefix),
                                       PassStore(state.redis, prefix=state.prefix,
                                                 name=CATCH_UP)),
                      CommitStatusCollector(StatusQueue(state.redis, prefix=state.prefix)),
                      LeftoversCollector(state)):
        try:
            from_redis.extend(list(collector.collect()))  # all of a part, or none of it
        except redis.RedisError as err:
            ERRORS_TOTAL.labels("metrics", "redis_unavailable").inc()
            redis_up = 0.0
            RedisReads.note(err)  # logged when it starts, not at every scrape
            break  # the other parts would wait for the same Redis in vain
    else:
        RedisReads.note(None)
    # The process registry last, so an error counted above shows in this very scrape.
    from_spool = list(SpoolCollector(spool, stranded).collect()) if spool is not None else []
    # No alert fires on a missing series: redis_up says Redis was not read (CIRedisUnavailable).
    from_process = [_gauge(m.REDIS_UP, redis_up), *from_spool]
    families = _merge([*registry_for_scrape().collect(), *from_redis, *from_process])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families))
    return generate_latest(registry)
