"""The metric catalogue: every metric ci-autoscaler exports is declared here, once.

Names follow Prometheus conventions: prefix ``ci_autoscaler_``, base units, ``_total`` on
counters. Labels take values from small fixed sets; never a build number, pod name or URL.
Under gunicorn, set PROMETHEUS_MULTIPROC_DIR so counters add up across workers (see
``registry_for_scrape``).
"""

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, REGISTRY, generate_latest
from prometheus_client import multiprocess

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


def registry_for_scrape() -> CollectorRegistry:
    """A fresh multiprocess registry per scrape under gunicorn; the process registry otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def exposition() -> bytes:
    return generate_latest(registry_for_scrape())
