"""Redis's memory in /metrics, read from INFO memory at scrape time on a real redis-server:
used memory and maxmemory as Redis reports them; a Redis that refuses INFO (an ACL user
without it) leaves them out (and the eviction metrics, tests/integration/test_redis_eviction.py)
and the rest of the scrape intact; a Redis the web cannot read at all is said by
ci_autoscaler_redis_up, since every series read from it is gone (and no alert fires on a
missing series)."""

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import make_app
from workers.telemetry.exposition import ERRORS_TOTAL

MAXMEMORY_BYTES = 100 * 2**20


def _values(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


def test_used_memory_and_maxmemory_are_exported_as_redis_reports_them(own_redis):
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("maxmemory", MAXMEMORY_BYTES)
    # One MiB more in use, written by a short command: a 1 MiB argument would sit in the
    # connection's query buffer until Redis's clientsCron shrinks it, and used_memory would
    # drop by that MiB at a moment of the server's choosing (CI saw a 1.28 MB step).
    admin.setrange("filler", 2**20 - 1, b"x")
    before = admin.info("memory")["used_memory"]
    values = _values(make_app(own_redis.url).test_client().get("/metrics").get_data(True))
    after = admin.info("memory")["used_memory"]
    assert values["ci_autoscaler_redis_memory_max_bytes"] == MAXMEMORY_BYTES
    # The scrape's own connection moves used_memory a little between the reads.
    exported = values["ci_autoscaler_redis_memory_used_bytes"]
    assert min(before, after) - 256 * 1024 < exported < max(before, after) + 256 * 1024
    assert values["ci_autoscaler_redis_memory_used_bytes"] > 2**20


def test_without_maxmemory_the_limit_reads_0(own_redis):
    values = _values(make_app(own_redis.url).test_client().get("/metrics").get_data(True))
    assert values["ci_autoscaler_redis_memory_max_bytes"] == 0
    assert values["ci_autoscaler_redis_memory_used_bytes"] > 0


def test_a_user_refused_info_loses_these_two_and_nothing_else(own_redis):
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "web", "on", ">web-pass-3f9", "~*", "&*",
                          "+@all", "-info")
    url = own_redis.url.replace("redis://", "redis://web:web-pass-3f9@")
    # The counter is the process's: a test before this one in the same pytest worker may
    # have counted some (test_metrics_exported does); this scrape must add none.
    counted = ERRORS_TOTAL.labels("metrics", "redis_unavailable")._value.get()
    text = make_app(url).test_client().get("/metrics").get_data(True)
    values = _values(text)
    assert "ci_autoscaler_redis_memory_used_bytes" not in values
    assert "ci_autoscaler_redis_memory_max_bytes" not in values
    assert "ci_autoscaler_redis_evicted_keys_total" not in values
    assert "ci_autoscaler_redis_evicting" not in text
    assert values["ci_autoscaler_capacity_state_age_seconds"] == float("inf")
    assert ('ci_autoscaler_errors_total{component="metrics",kind="redis_unavailable"} '
            f"{counted}") in text


def test_a_full_redis_under_noeviction_still_reports_its_memory(own_redis):
    # The chart's policy: at maxmemory Redis refuses writes, and inside MULTI every command,
    # reads too (processCommand: "queuing may consume an unlimited amount of memory"). The
    # scrape's other parts read in MULTI pipelines; INFO outside one is still answered.
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("maxmemory", 5 * 2**20)
    admin.config_set("maxmemory-policy", "noeviction")
    for size in (100_000, 1_000):  # past maxmemory by a small write, not a query buffer
        for i in range(10_000):
            try:
                admin.set(f"junk:{size}:{i}", b"x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
    with pytest.raises(redis.exceptions.OutOfMemoryError):  # as a transaction pipeline meets
        with admin.pipeline() as pipe:
            pipe.get("junk:1000:0").execute()

    values = _values(make_app(own_redis.url).test_client().get("/metrics").get_data(True))

    # what CIRedisMemoryHigh reads, when it matters most
    assert values["ci_autoscaler_redis_memory_used_bytes"] > 0.9 * 5 * 2**20
    assert values["ci_autoscaler_redis_memory_max_bytes"] == 5 * 2**20


def test_a_redis_that_does_not_answer_reads_as_redis_up_0(own_redis):
    client = make_app(own_redis.url).test_client()
    before = text_string_to_metric_families(client.get("/metrics").get_data(True))
    assert {s.name: s.value for f in before for s in f.samples}["ci_autoscaler_redis_up"] == 1
    counted = ERRORS_TOTAL.labels("metrics", "redis_unavailable")._value.get()

    own_redis.stop()
    response = client.get("/metrics")

    assert response.status_code == 200
    text = response.get_data(True)
    values = _values(text)
    assert values["ci_autoscaler_redis_up"] == 0
    # What CIWorkersDown and the capacity alerts read is gone with Redis: only this says so.
    assert "ci_autoscaler_workers" not in text
    assert "ci_autoscaler_nodes_needed" not in text
    assert ('ci_autoscaler_errors_total{component="metrics",kind="redis_unavailable"} '
            f"{counted + 1}") in text


def test_a_scrape_that_cannot_read_redis_is_logged_once_with_its_reason(own_redis, caplog):
    """CIRedisUnavailable's runbook sends the operator to the web log for why: a web that got
    no push meanwhile logged nothing, the scrape's failure being only counted. Now its start
    is logged once (not at every scrape), with the error's type only, and so is its end."""
    caplog.set_level("INFO", logger="ci_autoscaler.metrics")
    client = make_app(own_redis.url).test_client()
    assert _values(client.get("/metrics").get_data(True))["ci_autoscaler_redis_up"] == 1
    caplog.clear()  # an earlier test's outage ended in this process: said, and not ours

    own_redis.stop()
    for _ in range(3):
        assert _values(client.get("/metrics").get_data(True))["ci_autoscaler_redis_up"] == 0
    failing = [r for r in caplog.records if r.levelname == "WARNING"
               and r.getMessage().startswith("redis cannot be read")]
    assert [r.error for r in failing] == ["ConnectionError"]

    own_redis.start()
    for _ in range(2):
        assert _values(client.get("/metrics").get_data(True))["ci_autoscaler_redis_up"] == 1
    again = [r for r in caplog.records if r.getMessage().startswith("redis read again")]
    assert len(again) == 1 and again[0].levelname == "INFO"
