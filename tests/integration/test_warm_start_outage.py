"""A warm agent whose start ends while Redis is away (a Sentinel failover, a restart) is still
the agent it made: its provision lease (held from its reservation to its pod: workers.warm.
agents.start) is let go once Redis answers (workers.concurrency.heartbeat.let_go), as a
build's provision's is. Released with a plain `lease.release()` in the start's `finally`, the
Redis error replaced the made agent (pod, Jenkins node, store entry) with an error for the
pass that started it. Real redis-server (AOF, stopped and started again with its data), kmock
over HTTP, the Jenkins fake; the start is held in its last log line while the test stops
Redis."""

import threading

import pytest

from tests.integration.test_provision_lease_outage import aof_redis, holding  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import CONFIG
from tests.support.app import production_env
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import tasks
from workers.warm import agents

TIMEOUT_SECONDS = 30
HELD_IN = "warm agent started"  # the start's last log line, before its lease is let go
MET = "lease not released: Redis does not answer; released once it does"


@pytest.fixture
def held():
    with holding(HELD_IN, ("ci_autoscaler.warm", "ci_autoscaler.heartbeat")) as handler:
        yield handler


def test_a_warm_start_ending_while_redis_is_away_keeps_its_agent_and_lets_its_lease_go(
        monkeypatch, tmp_path, aof_redis, kube, jenkins_fake, held):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=aof_redis.url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    kube.add_node("node-a", cpu="8", memory="32Gi")
    runtime.install(None)
    try:
        rt = runtime.current()
        outcome: dict = {}

        def start() -> None:
            try:
                outcome["entry"] = agents.start(rt, "small", rt.config.templates["small"])
            except Exception as err:  # noqa: BLE001 (what the pass would have met)
                outcome["error"] = err
        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        try:
            assert held.held.wait(TIMEOUT_SECONDS), "the warm start's last log line"
            aof_redis.stop()
        finally:
            held.go.set()
        try:
            wait_until(lambda: MET in held.messages or not thread.is_alive(),
                       timeout=TIMEOUT_SECONDS, what="the start meeting Redis away")
        finally:
            aof_redis.start()
        thread.join(TIMEOUT_SECONDS)
        assert "error" not in outcome, outcome
        name = outcome["entry"].name
        assert name in jenkins_fake.nodes
        assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [name]
        assert not rt.state.redis.exists(tasks.lease_key(rt, name))  # let go, not left to lapse
    finally:
        runtime.install(None)
