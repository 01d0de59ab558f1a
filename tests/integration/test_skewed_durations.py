"""A duration computed from two hosts' clocks (the webhook received on one pod, the agent pod
created or seen online by a worker on another) comes out negative when their clocks are
skewed. Observed as is into a histogram kept in Redis it lowers the sum, which /metrics then
exposes below what it was (or negative): a drop Prometheus takes for a reset. It is counted
as 0 seconds (workers.telemetry.metrics.EngineMetrics._observe)."""

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import make_app
from workers.telemetry.metrics import AGENT_START_DURATION_SECONDS, PROVISION_DURATION_SECONDS


def _histogram(app, metric) -> dict[str, float]:
    """The exposed sum, count and lowest bucket of `metric`{template="small"}."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == metric.name)
    got = {}
    for s in family.samples:
        if s.labels.get("template") != "small":
            continue
        if s.name.endswith("_bucket") and float(s.labels["le"]) == metric.buckets[0]:
            got["lowest_bucket"] = s.value
        elif s.name.endswith(("_sum", "_count")):
            got[s.name.rsplit("_", 1)[1]] = s.value
    return got


@pytest.mark.parametrize("metric", [AGENT_START_DURATION_SECONDS, PROVISION_DURATION_SECONDS])
def test_a_duration_from_skewed_clocks_counts_as_zero(metric, redis_url):
    app = make_app(redis_url)
    engine = app.extensions["ci_autoscaler"].metrics
    now = time.time()
    if metric is AGENT_START_DURATION_SECONDS:
        engine.agent_online("small", pod_created_at=now - 10, now=now)
        engine.agent_online("small", pod_created_at=now + 30, now=now)  # the creator's clock ahead
    else:
        engine.agent_created("small", received_at=now - 10)
        engine.agent_created("small", received_at=now + 30)  # the receiving pod's clock ahead
    got = _histogram(app, metric)
    assert got["count"] == 2
    assert got["lowest_bucket"] == 1  # the skewed one, at 0 s
    assert 10 <= got["sum"] < 11  # not 10 - 30
