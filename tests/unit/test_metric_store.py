"""Counters and histograms kept in Redis, and the /metrics text that merges them with the web
process's own: on fakeredis (pure logic; the integration tests use a real Redis)."""

import math
import time

import fakeredis
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from prometheus_client.parser import text_string_to_metric_families

from workers.telemetry import exposition
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.metric_store import MetricStore, counter_values, histogram_values
from workers.adapters.redis_state import RedisState
from workers.core.errors import PermanentError, RetryableError
from workers.telemetry.metrics import EngineMetrics, error_kind

BUCKETS = (1.0, 5.0, 10.0)


def redis_down() -> redis.Redis:
    """A client of a Redis that does not answer, failing at once (no retries)."""
    return redis.Redis(port=1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))


@pytest.fixture
def connection():
    return fakeredis.FakeRedis()


def test_a_histogram_is_cumulated_when_read(connection):
    store = MetricStore(connection, prefix="t:")
    for value in (0.5, 1.0, 3, 7, 12, 99):
        store.observe("h", ("maven",), value, BUCKETS)
    got = histogram_values(store.read(["h"])["h"], BUCKETS)[("maven",)]
    assert got.buckets == ((1.0, 2), (5.0, 3), (10.0, 4), (math.inf, 6))
    assert got.count == 6 and got.sum == pytest.approx(122.5)


def test_a_changed_bucket_layout_never_misfiles_old_observations(connection):
    store = MetricStore(connection, prefix="t:")
    store.observe("h", (), 3, BUCKETS)  # filed under le=5
    got = histogram_values(store.read(["h"])["h"], (2.0, 4.0, 8.0))[()]
    assert got.buckets == ((2.0, 0), (4.0, 0), (8.0, 1), (math.inf, 1))


def test_counters_add_up_per_label_set(connection):
    store = MetricStore(connection, prefix="t:")
    store.add("c", ("a", "x"))
    store.add("c", ("a", "x"), 2)
    store.add("c", ("b", "y"))
    assert counter_values(store.read(["c"])["c"]) == {("a", "x"): 3.0, ("b", "y"): 1.0}


@pytest.mark.parametrize("err, kind", [
    (RetryableError("timeout"), "retryable"), (PermanentError("403"), "permanent"),
    (redis.ConnectionError("down"), "redis_unavailable"), (KeyError("x"), "unexpected")])
def test_errors_are_counted_by_kind(err, kind):
    assert error_kind(err) == kind


def test_a_redis_error_wrapped_as_retryable_counts_as_redis_unavailable():
    try:
        try:
            raise redis.ConnectionError("down")
        except redis.RedisError as cause:
            raise RetryableError("redis unavailable") from cause
    except RetryableError as err:
        assert error_kind(err) == "redis_unavailable"


def test_recording_never_fails_the_work_when_redis_is_down():
    down = redis_down()
    metrics = EngineMetrics(down, prefix="t:")
    metrics.agent_created("maven", received_at=0)
    metrics.error("provision", RetryableError("x"))
    with pytest.raises(ValueError):
        with metrics.errors_counted("release"):
            raise ValueError("the work's own error goes on")


def _text(connection, templates=("maven",)) -> str:
    state = RedisState(connection, prefix="t:")
    return exposition.exposition(state=state, capacity=CapacityStore(connection, prefix="t:"),
                                 engine=EngineMetrics(connection, prefix="t:"),
                                 templates=templates).decode()


def test_the_errors_counter_is_one_family_with_process_and_redis_series(connection):
    EngineMetrics(connection, prefix="t:").error("provision", RetryableError("x"))
    exposition.ERRORS_TOTAL.labels("webhook", "redis_unavailable").inc()
    text = _text(connection)
    assert text.count("# TYPE ci_autoscaler_errors_total counter") == 1
    samples = {(s.labels["component"], s.labels["kind"]): s.value
               for f in text_string_to_metric_families(text) if f.name == "ci_autoscaler_errors"
               for s in f.samples}
    assert samples["provision", "retryable"] == 1
    assert samples["webhook", "redis_unavailable"] >= 1
    assert len(samples) == 7 * 5  # every component (catch_up, commit_status too) and kind, at 0


def test_without_a_capacity_state_its_age_is_infinite_what_waits_is_0_the_shape_absent(
        connection):
    """A fresh install: dashboards and alerts see 0 waiting and 0 nodes needed, and the
    state's age (+Inf) says nothing was computed yet; the reference shape, the metrics-server
    flag and the nodes are unknown until a pass has seen the cluster."""
    text = _text(connection)
    assert "ci_autoscaler_capacity_state_age_seconds +Inf" in text
    for line in ("ci_autoscaler_nodes_needed 0.0", "ci_autoscaler_capacity_shortfall_cores 0.0",
                 "ci_autoscaler_capacity_shortfall_bytes 0.0",
                 "ci_autoscaler_builds_waiting_for_capacity 0.0",
                 "ci_autoscaler_builds_unplaceable 0.0",
                 "ci_autoscaler_oldest_waiting_build_age_seconds 0.0",
                 "ci_autoscaler_oldest_unpaused_waiting_build_age_seconds 0.0"):
        assert line in text.splitlines(), line
    for reason in ("cap", "insufficient_cpu", "insufficient_memory", "no_matching_node",
                   "quota", "paused"):
        assert f'ci_autoscaler_builds_waiting{{reason="{reason}"}} 0.0' in text
    for absent in ("ci_autoscaler_reference_node_cores", "ci_autoscaler_node_metrics_available",
                   "ci_autoscaler_node_free_cores{"):
        assert f"\n{absent}" not in text, absent


def test_a_scrape_with_redis_down_still_answers_and_counts_the_error():
    before = exposition.ERRORS_TOTAL.labels("metrics", "redis_unavailable")._value.get()
    text = _text(redis_down())
    assert "ci_autoscaler_webhooks_total" in text
    assert "ci_autoscaler_queue_jobs" not in text
    after = exposition.ERRORS_TOTAL.labels("metrics", "redis_unavailable")._value.get()
    assert after == before + 1  # one failed scrape, one error


def _histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over one series' cumulative buckets (upper bound, count),
    +Inf last: the rank's bucket, linear within it, from 0 for the first."""
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            return bound if math.isinf(bound) else lower + (bound - lower) * (rank - below) / (
                count - below)
        lower, below = bound, count
    raise AssertionError("no bucket")


def test_the_provisioning_latency_percentiles_tell_sub_second_provisions_apart(connection):
    """A push's agent pod is made in about 0.3 s when there is room (bench/results/provision.md:
    push to build, p50 0.32 s). The provision histogram's first bound was 1 s, so the
    dashboard's "Provisioning latency" read p50 0.5 s for every provision under a second,
    whether it took 0.2 s or 0.8 s (histogram_quantile interpolates inside the bucket)."""
    engine = EngineMetrics(connection, prefix="t:")
    took = {"fast": 0.2, "slow": 0.8}
    for template, seconds in took.items():
        for _ in range(10):
            engine.agent_created(template, received_at=time.time() - seconds)
    text = _text(connection, templates=tuple(took))
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "ci_autoscaler_provision_duration_seconds"]
    for template, seconds in took.items():
        cumulative = sorted((float(s.labels["le"]), s.value) for s in family.samples
                            if s.name.endswith("_bucket") and s.labels["template"] == template)
        assert _histogram_quantile(0.5, cumulative) == pytest.approx(seconds, abs=0.1), template
