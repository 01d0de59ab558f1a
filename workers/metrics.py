"""The metric catalogue: every metric ci-autoscaler exports is declared here, once.

Names follow Prometheus conventions: prefix ``ci_autoscaler_``, base units, ``_total`` on
counters. Labels take values from small fixed sets; never a build number, pod name or URL.
Under gunicorn, set PROMETHEUS_MULTIPROC_DIR so counters add up across workers (see
``registry_for_scrape``).
"""

import json
import os
import time

import redis

from prometheus_client import CollectorRegistry, Counter, Histogram, REGISTRY, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.adapters.capacity_store import CapacityStore

WEBHOOK_SOURCES = ("gitlab", "jenkins")
WEBHOOK_RESULTS = ("queued", "duplicate", "ignored", "unauthorized", "invalid", "unavailable")
GITLAB_EVENTS = ("push", "tag_push", "other")
JENKINS_EVENTS = ("started", "completed", "other")

WEBHOOKS_TOTAL = Counter(
    "ci_autoscaler_webhooks_total", "Webhook deliveries by source, event kind and result.",
    ["source", "event", "result"])
WEBHOOK_DURATION_SECONDS = Histogram(
    "ci_autoscaler_webhook_duration_seconds", "Time to answer a webhook delivery.", ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
AGENTS_CREATED_TOTAL = Counter(
    "ci_autoscaler_agents_created_total", "Agent pods created.", ["template"])
AGENTS_DELETED_TOTAL = Counter(
    "ci_autoscaler_agents_deleted_total", "Agent pods deleted, by why.", ["template", "reason"])
ERRORS_TOTAL = Counter(
    "ci_autoscaler_errors_total", "Errors by component and kind.", ["component", "kind"])

for _source, _events in (("gitlab", GITLAB_EVENTS), ("jenkins", JENKINS_EVENTS)):
    for _event in _events:
        for _result in WEBHOOK_RESULTS:
            WEBHOOKS_TOTAL.labels(_source, _event, _result)
for _source in WEBHOOK_SOURCES:
    WEBHOOK_DURATION_SECONDS.labels(_source)


WAIT_REASONS = ("cap", "insufficient_cpu", "insufficient_memory", "no_matching_node")


class CapacityCollector(Collector):
    """The capacity state, read from Redis at scrape time, so every web worker reports the
    same values whichever process computed them."""

    def __init__(self, store: CapacityStore):
        self.store = store

    def collect(self):
        try:
            state, nodes = self.store.read_state()
        except redis.RedisError:
            ERRORS_TOTAL.labels("metrics", "redis_unavailable").inc()
            return  # the scrape still answers; capacity_state_age_seconds goes absent
        if not state:
            return
        num = lambda k: float(state.get(k, 0))  # noqa: E731
        for name, doc, value in (
            ("builds_waiting_for_capacity", "Builds that fit on no node, even at min size.",
             num("waiting")),
            ("capacity_shortfall_cores", "CPU of the waiting builds at min size.",
             num("shortfall_cpu_millis") / 1000),
            ("capacity_shortfall_bytes", "Memory of the waiting builds at min size.",
             num("shortfall_memory_bytes")),
            ("nodes_needed", "Nodes of the reference shape that would place every waiting "
             "build (first-fit decreasing).", num("nodes_needed")),
            ("builds_unplaceable", "Waiting builds bigger than a reference node.",
             num("unplaceable")),
            ("reference_node_cores", "CPU of the reference node shape.",
             num("reference_cpu_millis") / 1000),
            ("reference_node_bytes", "Memory of the reference node shape.",
             num("reference_memory_bytes")),
            ("node_metrics_available", "1 when metrics.k8s.io answers; 0: requests only.",
             num("metrics_available")),
            ("capacity_state_age_seconds", "Seconds since the capacity state was computed.",
             max(0.0, time.time() - num("updated_at"))),
        ):
            yield GaugeMetricFamily(f"ci_autoscaler_{name}", doc, value=value)
        reasons = json.loads(state.get("reasons") or "{}")
        by_reason = GaugeMetricFamily("ci_autoscaler_builds_waiting",
                                      "Builds waiting, by reason.", labels=["reason"])
        for reason in sorted(set(WAIT_REASONS) | set(reasons)):
            by_reason.add_metric([reason], reasons.get(reason, 0))
        yield by_reason
        for kind in ("allocatable", "requested", "used", "free"):
            cores = GaugeMetricFamily(f"ci_autoscaler_node_{kind}_cores",
                                      f"Node CPU {kind}.", labels=["node"])
            nbytes = GaugeMetricFamily(f"ci_autoscaler_node_{kind}_bytes",
                                       f"Node memory {kind}.", labels=["node"])
            for node, values in sorted(nodes.items()):
                if values.get(kind) is not None:
                    cores.add_metric([node], values[kind][0] / 1000)
                    nbytes.add_metric([node], values[kind][1])
            yield cores
            yield nbytes


def registry_for_scrape() -> CollectorRegistry:
    """A fresh multiprocess registry per scrape under gunicorn; the process registry otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition(capacity: CapacityStore | None = None) -> bytes:
    """The Prometheus text: process (or multiprocess) metrics plus the capacity state."""
    text = generate_latest(registry_for_scrape())
    if capacity is not None:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(CapacityCollector(capacity))
        text += generate_latest(extra)
    return text
