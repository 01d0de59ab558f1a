"""A counter kept in Redis that drops (a Sentinel failover to a replica that missed the last
writes, a Redis restarted without its data) is exposed by /metrics without going down, so a
real Prometheus (Debian's, scraping the app every second) sees no reset and increase() counts
only what happened, not the whole value again (workers.telemetry.monotonic_counters)."""

import time

import pytest

from tests.support.app import make_app
from tests.support.monitoring import Prometheus, running, serve_app, wait_until
from workers.telemetry.metrics import AGENTS_CREATED_TOTAL, PROVISION_DURATION_SECONDS
from workers.telemetry.monotonic_counters import MonotonicCounters

SERIES = f'{AGENTS_CREATED_TOTAL.name}{{template="small"}}'
FIELD = '["small"]'  # the label values, as workers.adapters.metric_store keeps them


def _latest(prometheus: Prometheus, after: float) -> float:
    """The series' value in the first scrape Prometheus took after `after` (awaited)."""
    def scraped():
        got = prometheus.query(f"timestamp({SERIES})")["data"]["result"]
        return got and float(got[0]["value"][1]) > after
    wait_until(scraped, timeout=20, what=f"a scrape of {SERIES} after {after}")
    return float(prometheus.query(SERIES)["data"]["result"][0]["value"][1])


def test_a_counter_that_drops_in_redis_is_no_reset_to_prometheus(redis_url, redis_conn, tmp_path):
    app = make_app(redis_url)
    engine = app.extensions["ci_autoscaler"].metrics
    key = f"cia:metrics:{AGENTS_CREATED_TOTAL.name}"
    redis_conn.hset(key, FIELD, 1000)
    with serve_app(app) as url:
        prometheus = Prometheus(tmp_path / "prometheus",
                                targets={"web": url.removeprefix("http://")})
        with running(prometheus):
            seen = [_latest(prometheus, time.time())]
            redis_conn.hset(key, FIELD, 990)  # the promoted replica missed 10 agents
            seen.append(_latest(prometheus, time.time()))
            for _ in range(5):  # 5 agents made after the failover: counted as they come
                engine.agent_created("small", received_at=time.time())
            seen.append(_latest(prometheus, time.time()))

            window = f"{SERIES}[5m]"
            increase = float(prometheus.query(f"increase({window})")["data"]["result"][0][
                "value"][1])
            resets = prometheus.query(f"resets({window})")["data"]["result"][0]["value"][1]
    assert increase < 50, (increase, seen)  # 5 made; a reset counted 995 again
    assert resets == "0"
    assert seen == [1000, 1000, 1005]


@pytest.mark.parametrize("shared", [False, True])
def test_a_histogram_that_drops_keeps_every_bucket_and_their_order(shared, tmp_path):
    """Buckets, sum and count each keep their own offset; a lost observation lowered every
    bucket at and above its own, so the cumulative buckets stay in order. `shared`: the
    offsets in the pod's PROMETHEUS_MULTIPROC_DIR file, as its gunicorn workers share them,
    a new MonotonicCounters each scrape (another worker) reading what the last one kept."""
    parts = ["1.0", "10.0", "+Inf"]
    reads = [[2, 5, 6], [1, 3, 4], [1, 4, 6]]  # then 2 lost (le 1 and le 10), then 2 new
    made = MonotonicCounters(str(tmp_path) if shared else None)
    exposed = []
    for values in reads:
        counters = MonotonicCounters(str(tmp_path)) if shared else made
        with counters.held() as offsets:
            exposed.append([offsets.apply(f'["{PROVISION_DURATION_SECONDS.name}", "{p}"]', v)
                            for p, v in zip(parts, values)])
    assert exposed == [[2, 5, 6], [2, 5, 6], [2, 6, 8]]
