"""`ci-autoscaler recommend`'s FREED column (README, "Sizing each job from its history"): the
memory the recommendation frees at today's rate, (what the pod asks at the default - what it
asks at the recommendation) x the job's builds running at once over the last day, on a real
redis-server through the command an operator runs."""

import json
import os
import subprocess
import sys
import time

import redis

from workers.adapters.redis_state import RedisState
from workers.adapters.usage_store import UsageStore
from workers.core.usage_history import UsageHistory

GI = 2**30
CONFIG = """
routes:
  - {project: "*", ref: "refs/heads/*", job: app, template: java}
templates:
  java:
    cpu: {min: 500m, default: "1", max: "2"}
    memory: {min: 512Mi, default: 4Gi, max: 4Gi}
    warm: {min: 1, max: 2, idleSeconds: 600}
"""


def recommend_json(redis_url: str, config) -> list[dict]:
    env = {**os.environ, "REDIS_URL": redis_url, "CI_AUTOSCALER_CONFIG": str(config)}
    command = os.path.join(os.path.dirname(sys.executable), "ci-autoscaler")
    done = subprocess.run([command, "recommend", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_build_on_a_warm_agent_counts_from_its_claim_not_from_its_pod(redis_url, tmp_path):
    """A warm agent's pod was made an hour before a build claimed it and ran 10 minutes: the
    build ran 10 minutes (its record's pod_created_at is the warm pod's). Counted from the
    pod, the hour it idled made the job's builds six times as many at once, and its FREED
    seven times what the recommendation frees."""
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    connection = redis.Redis.from_url(redis_url)
    now = time.time()
    history = UsageHistory()
    for _ in range(5):
        history = history.add_build(peak_memory_bytes=GI, cpu_p90_millis=500, now=now)
    UsageStore(connection).update_history("app", "java", lambda _: history)
    RedisState(connection).add_build("k1", {
        "received_at": now - 700, "agent": "cia-warm-java-1", "job": "app", "template": "java",
        "status": "released", "warm_agent": "cia-warm-java-1",
        "pod_created_at": now - 4300, "warm_claimed_at": now - 700, "released_at": now - 100})

    [row] = recommend_json(redis_url, config)
    at_default = row["default_memory_bytes"] + 256 * 2**20  # the agent's share beside it
    expected = (at_default - row["recommended_memory_bytes"]) * 600 / 86400
    assert abs(row["memory_freed_bytes"] - expected) <= 1, (row, expected)


def test_a_build_placed_again_after_its_warm_agent_was_lost_counts_from_its_new_pod(
        redis_url, tmp_path):
    """A build claimed a warm agent that was lost before it started (workers.warm.lost): the
    repair clears its warm_agent, and its new pod's pod_created_at is written when made, but
    warm_claimed_at stays. Counted from that claim, the time it waited with no pod at all
    (the lost agent deleted, its new pod made 50 minutes later) was the job's."""
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    connection = redis.Redis.from_url(redis_url)
    now = time.time()
    history = UsageHistory()
    for _ in range(5):
        history = history.add_build(peak_memory_bytes=GI, cpu_p90_millis=500, now=now)
    UsageStore(connection).update_history("app", "java", lambda _: history)
    RedisState(connection).add_build("k1", {
        "received_at": now - 3800, "agent": "cia-app-2", "job": "app", "template": "java",
        "status": "released", "warm_lost": "pod_ended", "warm_claimed_at": now - 3700,
        "pod_created_at": now - 700, "released_at": now - 100})

    [row] = recommend_json(redis_url, config)
    at_default = row["default_memory_bytes"] + 256 * 2**20
    expected = (at_default - row["recommended_memory_bytes"]) * 600 / 86400
    assert abs(row["memory_freed_bytes"] - expected) <= 1, (row, expected)


def test_a_template_with_history_off_recommends_its_default_and_frees_nothing(
        redis_url, tmp_path):
    """`history: off` (README, "Sizing each job from its history"): the worker sizes its builds
    from the template whatever its jobs' stored histories say (workers.job_history.sized). A
    template turned off after its jobs learned kept their histories, and `recommend` showed
    the history's size as what the next pod asks (RECOMMENDED, FROM history) and memory it
    would free, where the worker gives every build the template's default."""
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG.replace("    warm: {min: 1, max: 2, idleSeconds: 600}\n",
                                     "    history: off\n"))
    connection = redis.Redis.from_url(redis_url)
    now = time.time()
    history = UsageHistory()
    for _ in range(5):
        history = history.add_build(peak_memory_bytes=GI, cpu_p90_millis=500, now=now)
    UsageStore(connection).update_history("app", "java", lambda _: history)
    RedisState(connection).add_build("k1", {
        "received_at": now - 700, "agent": "cia-app-1", "job": "app", "template": "java",
        "status": "released", "pod_created_at": now - 700, "released_at": now - 100})

    [row] = recommend_json(redis_url, config)
    assert row["source"] == "template", row
    assert row["build_memory_bytes"] == row["default_memory_bytes"] == 4 * GI
    assert row["recommended_memory_bytes"] == 4 * GI + 256 * 2**20  # the agent's share beside
    assert row["build_cpu_millis"] == row["default_cpu_millis"] == 1000
    assert row["memory_freed_bytes"] == 0
    assert row["builds_seen"] == 5  # what it has seen is still shown
