"""The metric catalogue: every metric ci-autoscaler exports is declared here, once, as data.

Names follow Prometheus conventions: prefix ``ci_autoscaler_``, base units, ``_total`` on
counters. Labels take values from small fixed sets (the configured templates and queue, the
cluster's node names, the enums below); never a build number, pod name, URL or secret.

Where each value lives, and so how to aggregate it across web pods (``Source``):

- ``process``: webhook counters and timings, in the memory of the web process that answered.
  Under gunicorn, PROMETHEUS_MULTIPROC_DIR makes them add up across its workers (a fresh
  ``MultiProcessCollector`` per scrape; ``child_exit`` marks dead workers). Each web pod
  reports its own: ``sum`` across pods.
- ``shared``: counters and histograms of the engine (agents created and deleted, provision
  and agent start durations, engine errors), kept in Redis by whichever process observes them
  (``EngineMetrics`` below). The RQ worker, the reconcile loop and the web run in separate
  pods in Kubernetes and share no volume, so a multiprocess directory cannot join them;
  Redis, which they all share already, can. Nothing is lost when a worker restarts or an RQ
  work-horse forks and exits, and no file is written per PID: this module imports no
  prometheus_client (an import-linter contract keeps the engine away from it), so a worker
  never creates a multiprocess file, whatever its environment says.
- ``state``: gauges computed at scrape time from Redis (capacity state, RQ registries and
  workers, live agents), so every web worker and every web pod reports the same value.

``shared`` and ``state`` series are the same on every web pod: aggregate them with ``max``.
``ci_autoscaler_errors_total`` has both kinds of series: components ``webhook`` and
``metrics`` are ``process`` (sum across pods), the engine's components are ``shared`` (max).

One scrape target serves it all: the web Service's ``/metrics`` (see workers.telemetry.exposition).
"""

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import redis

from workers.adapters.metric_store import MetricStore
from workers.core.errors import CredentialsRefused, PermanentError, RetryableError
from workers.core.notifications import IGNORE_REASONS as NOTIFICATION_IGNORE_REASONS
from workers.core.stages import TIMED as TIMED_STAGES
from workers.core.start_failures import START_FAILURE_REASONS

log = logging.getLogger("ci_autoscaler.metrics")


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Source(StrEnum):
    PROCESS = "process"
    SHARED = "shared"
    STATE = "state"


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    doc: str
    source: Source
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# --- label values (pre-initialised, so every series exists at 0) -----------------------------
WEBHOOK_SOURCES = ("gitlab", "jenkins")
# spooled: Redis could not take the push, the web pod's spool did (answered 202 all the same);
# unavailable: neither could (503); recorded: a Jenkins STARTED stored for the worker's mover
# to mark its build running, no job queued (answered 200 "recorded"); error: the handler failed
# (a bug: 500, logged with its traceback, event "other"); busy: a valid delivery past the body
# limit that found service.trimmed_body's reads all taken, read by nothing and answered 503
# (a notification's under event "other"; CIWebhookBusy).
WEBHOOK_RESULTS = ("queued", "recorded", "spooled", "duplicate", "ignored", "unauthorized",
                   "invalid", "unavailable", "busy", "error")
SPOOL_REFUSAL_REASONS = ("full", "unwritable")
GITLAB_EVENTS = ("push", "tag_push", "other")
JENKINS_EVENTS = ("started", "completed", "other")
# Every reason a build may wait for, each exported from the first scrape and at 0 once no
# build waits for it (a series that vanished instead left a graph or an alert on it at its
# last value); an extended resource's insufficient_<name> (insufficient_nvidia.com/gpu) is
# exported only while some build waits for it (workers.telemetry.exposition).
WAIT_REASONS = ("cap", "insufficient_cpu", "insufficient_memory", "insufficient_pods",
                "insufficient_ephemeral-storage", "host_ports", "pod_anti_affinity",
                "no_matching_node",
                "unschedulable", "quota", "paused", "contention")
QUEUE_STATES = ("queued", "started", "scheduled", "deferred", "failed")
# An agent's phase, from its build's lifecycle: pending (pod created, no build on it yet),
# running (Jenkins reported the build STARTED), releasing (build finished, pod being deleted),
# retained (a failed build's pod kept for debugging, podRetention: onFailure).
AGENT_PHASES = ("pending", "running", "releasing", "retained")
# Why an agent pod was deleted: its build's COMPLETED notification; re-decided after it stayed
# unschedulable; a retained pod's time ran out; the reconcile loop's repairs (see
# workers.engine.repairs); its Jenkins job refused the build for good (workers.engine.tasks.refuse).
# start_failed: its agent could not start (workers.engine.failures); agent_connect_timeout: its agent
# did not come online and the build is re-placed on another node (workers.agent_starts.online).
# warm_idle: a warm agent beyond its pool's target; warm_gave_way: an idle warm agent given up
# for a waiting build; warm_not_started: a warm agent that did not come online; warm_offline:
# an idle one whose agent lost its connection; warm_node_closed: an idle one on a node no
# build may take it on (cordoned, being removed by a node autoscaler); warm_outgrown: an idle
# one smaller than every recent build wanted (workers.core.warm_pool.outgrown); warm_changed: an
# idle or starting one made under another pod spec of its template (its image changed); warm_lost: a claimed one lost before its build
# started, the build placed again (workers.warm.lost); stuck_terminating: a pod whose deletion
# its unreachable node never confirmed, force-deleted for the build's next pod
# (workers.engine.terminating); disrupted: stopped by Kubernetes (evicted, a node shutdown) before
# its agent connected, the build placed again once (workers.agent_starts.disrupted).
# block_ended: an adopted agent whose node block is done (workers.engine.adopted_done).
DELETE_REASONS = ("build_completed", "unschedulable", "retention_expired", "orphan", "pod_ended",
                  "deadline", "build_finished", "job_refused", "start_failed",
                  "agent_connect_timeout", "warm_idle", "warm_gave_way", "warm_not_started",
                  "warm_offline", "warm_node_closed", "warm_outgrown", "warm_changed", "warm_lost", "parked", "stuck_terminating", "disrupted",
                  "block_ended")
# refused: a job whose data is not JSON, never run (workers.engine.jobs)
JOB_TASKS = ("provision_agent", "release_agent", "redrive_waiting", "fail_start", "replenish",
             "give_way", "refused")
ERROR_COMPONENTS_WEB = ("webhook", "metrics")
ERROR_COMPONENTS_ENGINE = ("provision", "release", "reconcile", "catch_up", "commit_status")
# unauthorized: Jenkins refuses our user or API token (retryable, but needs a person)
ERROR_KINDS = ("redis_unavailable", "retryable", "permanent", "unexpected", "unauthorized")
NODE_QUANTITIES = ("allocatable", "requested", "used", "free")
# What became of a GitLab commit status post (workers.commit_statuses): GitLab took it; GitLab
# had that state already (its answer to an earlier try was lost); it will be tried again
# (5xx, 429, 409, GitLab unreachable); GitLab refused it for good (token, scope, unknown commit).
COMMIT_STATUS_RESULTS = ("sent", "already", "retried", "refused")

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_SLOW = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# A build's stages take from a tenth of a second (a decision, a release) to an hour (a build's
# run, a wait for capacity): 0.1 s to 1 h, about two buckets per tenfold. So does provisioning:
# about 0.3 s with room (bench/results/provision.md), a wait for capacity's minutes without.
_STAGE = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def _m(name: str, kind: Kind, source: Source, doc: str, labels: tuple[str, ...] = (),
       buckets: tuple[float, ...] = ()) -> Metric:
    return Metric(f"ci_autoscaler_{name}", kind, doc, source, labels, buckets)


C, G, H = Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM
PROC, SHARED, STATE = Source.PROCESS, Source.SHARED, Source.STATE

# --- webhooks (web process) ------------------------------------------------------------------
WEBHOOKS_TOTAL = _m("webhooks_total", C, PROC, "Webhook deliveries by source, event kind and "
                    "result.", ("source", "event", "result"))
WEBHOOK_DURATION_SECONDS = _m("webhook_duration_seconds", H, PROC,
                              "Time to answer a webhook delivery.", ("source",), _FAST)
ERRORS_TOTAL = _m("errors_total", C, PROC, "Errors by component and kind (webhook and metrics: "
                  "per web process; provision, release, reconcile: cluster-wide, from Redis).",
                  ("component", "kind"))

# --- the web pod's spool (workers.adapters.spool), read from its file at scrape time ----------
# Per web pod, like the webhook counters: sum across pods.
SPOOL_EVENTS = _m("spool_events", G, PROC, "Pushes in this web pod's spool for its own "
                  "installation: taken while Redis could not, not yet moved into Redis by the "
                  "drainer.")
SPOOL_BYTES = _m("spool_bytes", G, PROC, "Bytes of the pushes in this web pod's spool.")
SPOOL_FOREIGN_EVENTS = _m("spool_foreign_events", G, PROC, "Pushes in this web pod's spool "
                          "directory that another installation (or another Redis) took: left "
                          "for its own web to drain, never drained by this one.")
SPOOL_STRANDED_EVENTS = _m("spool_stranded_events", G, PROC, "Pushes in the default spool "
                           "directories of this web's user and installation for another Redis "
                           "target: nothing drains them until adopted (ci-autoscaler spool "
                           "adopt).")
SPOOL_SET_ASIDE_EVENTS = _m("spool_set_aside_events", G, PROC, "Rows of this web pod's spool "
                            "the drainer could not read as a push (a damaged file), set aside "
                            "in its table set_aside: never drained, lost with the pod.")
SPOOL_REFUSALS_TOTAL = _m("spool_refusals_total", C, PROC, "Pushes answered 503 because Redis "
                          "could not take them and the spool was full or unwritable.",
                          ("reason",))

# --- agents (cluster-wide, in Redis) ---------------------------------------------------------
AGENTS_CREATED_TOTAL = _m("agents_created_total", C, SHARED, "Agent pods created.",
                          ("template",))
AGENTS_DELETED_TOTAL = _m("agents_deleted_total", C, SHARED, "Agent pods deleted, by why.",
                          ("template", "reason"))
PROVISION_DURATION_SECONDS = _m(
    "provision_duration_seconds", H, SHARED, "From the webhook received to the agent pod "
    "created, waiting for capacity included.", ("template",), _STAGE)
AGENT_START_DURATION_SECONDS = _m(
    "agent_start_duration_seconds", H, SHARED, "From the agent pod created to its Jenkins "
    "computer online (the agent connected; workers.agent_starts.online).", ("template",), _SLOW)
AGENT_START_FAILURES_TOTAL = _m(
    "agent_start_failures_total", C, SHARED, "Builds failed because their agent could not "
    "start: a fatal container waiting reason (ImagePullBackOff, ...), a failed init "
    "container, a pod killed, ended or evicted before its agent connected, or an agent not "
    "online in time (agent_connect_timeout).", ("template", "reason"))
AGENTS_LOST_TOTAL = _m(
    "agents_lost_total", C, SHARED, "Agent pods that went away while their build ran (a "
    "drained or reclaimed node, a pod deleted by hand, a kubelet's eviction; workers."
    "lost_agents): the build aborted in Jenkins and failed pod_lost, or, for a Pipeline's "
    "node block, its node deleted and its run left to decide (workers.engine.lost_runs).",
    ("template",))
BUILDS_RETRIGGERED_TOTAL = _m(
    "builds_retriggered_total", C, SHARED, "Builds triggered again in Jenkins because a "
    "controller killed without its shutdown lost their queue item (workers.engine.lost_triggers).",
    ("template",))
BUILD_STAGE_SECONDS = _m(
    "build_stage_seconds", H, SHARED, "Where a build's time goes: each stage's seconds from "
    "the stage before it that the build reached (received, queued, waiting, placed, "
    "scheduled, online, started, finished, deleted: workers.core.stages), once per build.",
    ("stage", "template"), _STAGE)
JOBS_FAILED_TOTAL = _m("jobs_failed_total", C, SHARED, "RQ jobs that failed for good (a "
                       "permanent error, or an unexpected one with no retry left), by task; "
                       "not one out of retries on a retryable error (Jenkins away, our token "
                       "refused), whose work the reconcile loop takes over (workers.engine.jobs).",
                       ("task",))
AGENTS = _m("agents", G, STATE, "Live agents by template and phase.", ("template", "phase"))
IMAGE_PULL_RETRYING = _m("image_pull_retrying", G, STATE, "Builds whose agent pod's image "
                         "pull failed for now and the kubelet retries it (a registry's 429 or "
                         "5xx, a time-out), by template: the error is on the status page.",
                         ("template",))
NOTIFICATIONS_IGNORED_TOTAL = _m(
    "notifications_ignored_total", C, SHARED, "Jenkins notifications that ended a build and were "
    "not acted on: naming another job than the build's (job_mismatch, the web), or a run "
    "Jenkins' API does not say finished and the build's (not_confirmed, the release job).",
    ("reason",))

# --- warm agents (workers.warm) ------------------------------------------------------------
WARM_STATES = ("starting", "idle", "claimed")
WARM_RESULTS = ("hit", "miss")
# Why a claimed warm agent was lost before its build started (workers.warm.lost.REASONS).
WARM_LOST_REASONS = ("pod_gone", "offline")
WARM_AGENTS = _m("warm_agents", G, STATE, "Warm agents by template and state: starting (pod "
                 "made, agent not online yet), idle (online, waiting for a build), claimed "
                 "(taken by one build).", ("template", "state"))
WARM_HITS_TOTAL = _m("warm_hits_total", C, SHARED, "Builds of a template with a warm pool "
                     "that took a warm agent (hit) or went the normal way (miss), once per "
                     "build.", ("template", "result"))
WARM_LOST_TOTAL = _m("warm_lost_total", C, SHARED, "Builds whose claimed warm agent was lost "
                     "before the build started, placed again on a fresh pod: its pod gone "
                     "(pod_gone) or its agent offline past the connect timeout (offline).",
                     ("template", "reason"))
WARM_UNPROTECTED_TOTAL = _m("warm_unprotected_total", C, SHARED, "Builds that claimed a warm "
                            "agent whose pod could not be labelled claimed: the agents' "
                            "PodDisruptionBudget does not hold a drain for them.", ("template",))

# --- queue (RQ registries, read at scrape time) ----------------------------------------------
QUEUE_JOBS = _m("queue_jobs", G, STATE, "RQ jobs by queue and state.", ("queue", "state"))
WORKERS = _m("workers", G, STATE, "RQ workers registered on the queue that sent a heartbeat "
             "in the last 90 s (one killed without its shutdown drops out then).", ("queue",))
INTAKE_STATES = ("waiting", "failed")
INTAKE_EVENTS = _m("intake_events", G, STATE, "Push events the webhook stored that are not "
                   "jobs yet: waiting for a worker's mover, or failed (no job could be made of "
                   "them; the worker logged why).", ("state",))

# --- capacity (written by every decision and reconcile pass, read at scrape time) ------------
BUILDS_WAITING_FOR_CAPACITY = _m("builds_waiting_for_capacity", G, STATE,
                                 "Builds that fit on no node, even at min size.")
BUILDS_WAITING = _m("builds_waiting", G, STATE, "Builds waiting, by reason.", ("reason",))
OLDEST_WAITING_BUILD_AGE_SECONDS = _m(
    "oldest_waiting_build_age_seconds", G, STATE,
    "Seconds since the longest-waiting build arrived; 0 when none waits.")
OLDEST_UNPAUSED_WAITING_BUILD_AGE_SECONDS = _m(
    "oldest_unpaused_waiting_build_age_seconds", G, STATE,
    "The same, for the builds an admin's pause (a ResourceQuota's pods: 0) does not hold.")
CAPACITY_SHORTFALL_CORES = _m("capacity_shortfall_cores", G, STATE,
                              "CPU of the waiting builds at min size.")
CAPACITY_SHORTFALL_BYTES = _m("capacity_shortfall_bytes", G, STATE,
                              "Memory of the waiting builds at min size.")
NODES_NEEDED = _m("nodes_needed", G, STATE, "Nodes of the reference shape that would place "
                  "every waiting build (first-fit decreasing).")
SCALE_UP_PODS = _m("scale_up_pods", G, STATE, "Pending pods asking a cluster autoscaler for "
                   "nodes for the builds that wait for room, one each (workers.engine.scale_up), as "
                   "the last reconcile pass left them.")
BUILDS_UNPLACEABLE = _m("builds_unplaceable", G, STATE,
                        "Waiting builds bigger than a reference node.")
REFERENCE_NODE_CORES = _m("reference_node_cores", G, STATE, "CPU of the reference node shape.")
REFERENCE_NODE_BYTES = _m("reference_node_bytes", G, STATE,
                          "Memory of the reference node shape.")
NODE_METRICS_AVAILABLE = _m("node_metrics_available", G, STATE,
                            "1 when metrics.k8s.io answers; 0: placing by requests only.")
CAPACITY_STATE_AGE_SECONDS = _m("capacity_state_age_seconds", G, STATE,
                                "Seconds since the capacity state was computed; +Inf: never.")
RECONCILE_PASS_AGE_SECONDS = _m("reconcile_pass_age_seconds", G, STATE,
                                "Seconds since the last reconcile pass that ended without "
                                "error; +Inf: none yet.")
RECONCILE_IDLE_SECONDS = _m("reconcile_idle_seconds", G, STATE,
                            "Seconds since the reconcile leader last ended a pass, with or "
                            "without error; +Inf: none yet.")
RECONCILE_FAILING_SECONDS = _m("reconcile_failing_seconds", G, STATE,
                               "Seconds since the first of the reconcile passes that failed "
                               "in a row (a step raised, or Jenkins' steps could not run); 0 "
                               "while passes end without error.")
NODE_CORES = {q: _m(f"node_{q}_cores", G, STATE, f"Node CPU {q}.", ("node",))
              for q in NODE_QUANTITIES}
NODE_BYTES = {q: _m(f"node_{q}_bytes", G, STATE, f"Node memory {q}.", ("node",))
              for q in NODE_QUANTITIES}

# --- catch-up from GitLab's API (workers.engine.catchup) --------------------------------------------
# Labelled by project: the projects the config names (routes, catchUp.projects) and those of
# the groups in catchUp.groups that a route matches; a bounded set, from config.
MISSED_PUSHES_TOTAL = _m("missed_pushes_total", C, SHARED, "Pushes whose webhook never came: "
                         "heads the catch-up found unbuilt and built.", ("project",))
GITLAB_HOOK_DISABLED = _m("gitlab_hook_disabled", G, STATE, "1 when GitLab has disabled our "
                          "webhook of the project (alert_status disabled or "
                          "temporarily_disabled, or disabled_until ahead), 0 when it is "
                          "enabled; no series when the token may not read the project's hooks, "
                          "the project has no hook of ours, or the catch-up no longer lists "
                          "it.", ("project",))
# The catch-up's passes (workers.adapters.pass_store, CATCH_UP); no series before its first pass
# (an installation without the catch-up has none).
CATCH_UP_FAILING_SECONDS = _m("catch_up_failing_seconds", G, STATE,
                              "Seconds since the first of the catch-up passes that in a row "
                              "left a project or group not caught up (GitLab refused the API "
                              "token or its scope, did not serve, ...); 0 while passes catch "
                              "up every project.")
CATCH_UP_PASS_AGE_SECONDS = _m("catch_up_pass_age_seconds", G, STATE,
                               "Seconds since the last catch-up pass that caught up every "
                               "project; +Inf: none yet.")
COMMIT_STATUS_TOTAL = _m("commit_status_total", C, SHARED, "GitLab commit status posts by "
                         "result: sent, already (GitLab had that state), retried (5xx, 429 "
                         "or unreachable; tried again later), refused (for good).", ("result",))
COMMIT_STATUS_BACKLOG = _m("commit_status_backlog", G, STATE, "Builds whose GitLab commit "
                           "status is due to be looked at or retried.")
COMMIT_STATUS_OFF = _m("commit_status_off", G, STATE, "1 while commit statuses are off until "
                       "the reconcile process restarts because GitLab refused the API token's "
                       "scope (a read_api token: statuses need api); 0 otherwise.")

# --- what failed builds left in Jenkins (workers.engine.jenkins_leftovers) --------------------------
JENKINS_LEFTOVERS = _m("jenkins_leftovers", G, STATE, "Failed builds whose queue item or run "
                       "is still to be stopped in Jenkins: each reconcile pass asks again, "
                       "and one Jenkins refuses (no Job/Cancel) every 10 minutes.")

# --- sizing from each job's history (workers.job_history) ------------------------------------
OOM_KILLS_TOTAL = _m("oom_kills_total", C, SHARED, "Build containers the kubelet OOM-killed; "
                     "the job's next default memory at least doubles.", ("template",))

# --- Redis memory (INFO memory and stats, read at scrape time) --------------------------------
# With maxmemory-policy noeviction (the chart's), a Redis at maxmemory refuses every write:
# each webhook is answered 503 and no build state can change. CIRedisMemoryHigh warns before.
REDIS_MEMORY_USED_BYTES = _m("redis_memory_used_bytes", G, STATE,
                             "Memory Redis has allocated for its data (INFO used_memory).")
REDIS_MEMORY_MAX_BYTES = _m("redis_memory_max_bytes", G, STATE,
                            "Redis's maxmemory (INFO maxmemory); 0: no limit set.")
# Every other policy deletes keys at maxmemory, ours among them (workers.core.redis_eviction);
# managed Redis services default to volatile-lru. CIRedisEvicting and CIRedisEvictedKeys say so.
REDIS_EVICTING = _m("redis_evicting", G, STATE, "1 when Redis's maxmemory-policy (the label, "
                    "INFO maxmemory_policy) deletes keys at maxmemory, ours among them; 0 for "
                    "noeviction, which refuses writes instead.", ("policy",))
# Whether this scrape could read Redis at all: when it cannot, every ``state`` and ``shared``
# series is left out, and with them every alert on them (CIWorkersDown, ...); CIRedisUnavailable
# reads this. Per web pod, like the webhook counters.
REDIS_UP = _m("redis_up", G, PROC, "1 when this scrape read from Redis all that /metrics reads "
              "there; 0 when Redis did not answer or refused a read (those figures are then "
              "left out of the scrape).")
# Without the append-only file a Redis restart loses every key written since its last RDB
# snapshot, answered pushes among them (workers.core.redis_durability); CIRedisNotPersistent.
REDIS_AOF_ENABLED = _m("redis_aof_enabled", G, STATE, "1 when Redis keeps an append-only file "
                       "(INFO persistence aof_enabled); 0: a Redis restart loses what was "
                       "written since its last snapshot, answered pushes among them.")
REDIS_EVICTED_KEYS_TOTAL = _m("redis_evicted_keys_total", C, STATE, "Keys Redis has evicted "
                              "since it started (INFO evicted_keys), any client's: 0 under "
                              "noeviction.")

CATALOGUE: tuple[Metric, ...] = (
    WEBHOOKS_TOTAL, WEBHOOK_DURATION_SECONDS, ERRORS_TOTAL,
    SPOOL_EVENTS, SPOOL_BYTES, SPOOL_FOREIGN_EVENTS, SPOOL_STRANDED_EVENTS, SPOOL_SET_ASIDE_EVENTS,
    SPOOL_REFUSALS_TOTAL,
    AGENTS_CREATED_TOTAL, AGENTS_DELETED_TOTAL, PROVISION_DURATION_SECONDS,
    AGENT_START_DURATION_SECONDS, AGENT_START_FAILURES_TOTAL, AGENTS_LOST_TOTAL,
    BUILDS_RETRIGGERED_TOTAL, BUILD_STAGE_SECONDS,
    JOBS_FAILED_TOTAL, AGENTS, IMAGE_PULL_RETRYING, WARM_AGENTS, WARM_HITS_TOTAL, WARM_LOST_TOTAL,
    WARM_UNPROTECTED_TOTAL,
    NOTIFICATIONS_IGNORED_TOTAL,
    QUEUE_JOBS, WORKERS, INTAKE_EVENTS,
    BUILDS_WAITING_FOR_CAPACITY, BUILDS_WAITING, OLDEST_WAITING_BUILD_AGE_SECONDS,
    OLDEST_UNPAUSED_WAITING_BUILD_AGE_SECONDS,
    CAPACITY_SHORTFALL_CORES, CAPACITY_SHORTFALL_BYTES, NODES_NEEDED, SCALE_UP_PODS,
    BUILDS_UNPLACEABLE,
    REFERENCE_NODE_CORES, REFERENCE_NODE_BYTES, NODE_METRICS_AVAILABLE,
    CAPACITY_STATE_AGE_SECONDS, RECONCILE_PASS_AGE_SECONDS, RECONCILE_IDLE_SECONDS,
    RECONCILE_FAILING_SECONDS,
    *NODE_CORES.values(), *NODE_BYTES.values(),
    MISSED_PUSHES_TOTAL, GITLAB_HOOK_DISABLED, CATCH_UP_FAILING_SECONDS,
    CATCH_UP_PASS_AGE_SECONDS, OOM_KILLS_TOTAL,
    REDIS_UP, REDIS_MEMORY_USED_BYTES, REDIS_MEMORY_MAX_BYTES, REDIS_EVICTING,
    REDIS_EVICTED_KEYS_TOTAL, REDIS_AOF_ENABLED,
    COMMIT_STATUS_TOTAL, COMMIT_STATUS_BACKLOG, COMMIT_STATUS_OFF, JENKINS_LEFTOVERS,
)


# --- the engine's writer ---------------------------------------------------------------------

def error_kind(err: BaseException) -> str:
    if isinstance(err, redis.RedisError) or isinstance(err.__cause__, redis.RedisError):
        return "redis_unavailable"
    if isinstance(err, CredentialsRefused):
        return "unauthorized"
    if isinstance(err, PermanentError):
        return "permanent"
    if isinstance(err, RetryableError):
        return "retryable"
    return "unexpected"


class EngineMetrics:
    """The ``shared`` counters and histograms, recorded in Redis. Best effort: when Redis
    cannot be reached the observation is dropped (and logged), never the work it measures."""

    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.store = MetricStore(connection, prefix=prefix)

    def _safely(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except redis.RedisError as err:
            log.warning("metric not recorded: redis unavailable",
                        extra={"metric": what, "error": type(err).__name__})

    def agent_created(self, template: str, *, received_at: float) -> None:
        self._add(AGENTS_CREATED_TOTAL, template)
        self._observe(PROVISION_DURATION_SECONDS, template, time.time() - received_at)

    def agent_deleted(self, template: str, reason: str) -> None:
        self._add(AGENTS_DELETED_TOTAL, template, reason)

    def warm_agent_created(self, template: str) -> None:
        """A warm agent's pod was made (no build waited for it: no provision duration)."""
        self._add(AGENTS_CREATED_TOTAL, template)

    def warm_claim(self, template: str, *, hit: bool) -> None:
        self._add(WARM_HITS_TOTAL, template, "hit" if hit else "miss")

    def warm_lost(self, template: str, reason: str) -> None:
        """A build's claimed warm agent was lost before it started (workers.warm.lost)."""
        self._add(WARM_LOST_TOTAL, template, reason)

    def warm_unprotected(self, template: str) -> None:
        """A claimed warm agent's pod not relabelled (workers.warm.protect)."""
        self._add(WARM_UNPROTECTED_TOTAL, template)

    def agent_start_failed(self, template: str, reason: str) -> None:
        self._add(AGENT_START_FAILURES_TOTAL, template, reason)

    def agent_lost(self, template: str) -> None:
        self._add(AGENTS_LOST_TOTAL, template)

    def build_retriggered(self, template: str) -> None:
        self._add(BUILDS_RETRIGGERED_TOTAL, template)

    def agent_online(self, template: str, *, pod_created_at: float, now: float) -> None:
        """The agent's computer came online: its start took from pod created to now."""
        self._observe(AGENT_START_DURATION_SECONDS, template, now - pod_created_at)

    def missed_push(self, project: str) -> None:
        """The catch-up built a head whose webhook never came."""
        self._add(MISSED_PUSHES_TOTAL, project)

    def oom_killed(self, template: str) -> None:
        self._add(OOM_KILLS_TOTAL, template)

    def stage_reached(self, template: str, stage: str, seconds: float) -> None:
        """A build reached `stage`, `seconds` after the stage before it (workers.stage_timings)."""
        self._safely(BUILD_STAGE_SECONDS.name, self.store.observe, BUILD_STAGE_SECONDS.name,
                     (stage, template), max(0.0, seconds), BUILD_STAGE_SECONDS.buckets)

    def job_failed(self, task: str) -> None:
        self._add(JOBS_FAILED_TOTAL, task)

    def commit_status(self, result: str) -> None:
        """A commit status post ended so (COMMIT_STATUS_RESULTS)."""
        self._add(COMMIT_STATUS_TOTAL, result)

    def notification_ignored(self, reason: str) -> None:
        self._add(NOTIFICATIONS_IGNORED_TOTAL, reason)

    def error(self, component: str, err: BaseException) -> None:
        self._add(ERRORS_TOTAL, component, error_kind(err))

    @contextmanager
    def errors_counted(self, component: str) -> Iterator[None]:
        """Count an exception leaving the block under `component`, and let it go on."""
        try:
            yield
        except Exception as err:
            self.error(component, err)
            raise

    def _add(self, metric: Metric, *labels: str) -> None:
        self._safely(metric.name, self.store.add, metric.name, labels)

    def _observe(self, metric: Metric, template: str, seconds: float) -> None:
        self._safely(metric.name, self.store.observe, metric.name, (template,),
                     max(0.0, seconds), metric.buckets)


def shared_children(metric: Metric, templates: Iterable[str], projects: Iterable[str] = (),
                    fatal_reasons: Iterable[str] = ()) -> list[tuple[str, ...]]:
    """The label sets of a ``shared`` metric that exist at 0 before anything is counted
    (`projects`: those the config names, for the catch-up's counter; `fatal_reasons`: the
    container waiting reasons CI_AUTOSCALER_FATAL_WAITING_REASONS makes start failures, beyond
    the defaults: increase() counts nothing for a series' first sample)."""
    templates = sorted(set(templates))
    if metric is MISSED_PUSHES_TOTAL:
        return [(p,) for p in sorted(set(projects))]
    if metric is AGENTS_DELETED_TOTAL:
        return [(t, r) for t in templates for r in DELETE_REASONS]
    if metric is AGENT_START_FAILURES_TOTAL:
        reasons = (*START_FAILURE_REASONS,
                   *sorted(set(fatal_reasons) - set(START_FAILURE_REASONS)))
        return [(t, r) for t in templates for r in reasons]
    if metric is WARM_HITS_TOTAL:
        return [(t, r) for t in templates for r in WARM_RESULTS]
    if metric is WARM_LOST_TOTAL:
        return [(t, r) for t in templates for r in WARM_LOST_REASONS]
    if metric is ERRORS_TOTAL:
        return [(c, k) for c in ERROR_COMPONENTS_ENGINE for k in ERROR_KINDS]
    if metric is COMMIT_STATUS_TOTAL:
        return [(r,) for r in COMMIT_STATUS_RESULTS]
    if metric is JOBS_FAILED_TOTAL:
        return [(t,) for t in JOB_TASKS]
    if metric is NOTIFICATIONS_IGNORED_TOTAL:
        return [(r,) for r in NOTIFICATION_IGNORE_REASONS]
    if metric is BUILD_STAGE_SECONDS:
        return [(s.value, t) for s in TIMED_STAGES for t in templates]
    return [(t,) for t in templates]
