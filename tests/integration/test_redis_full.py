"""A Redis at its maxmemory under noeviction (the chart's policy), on a real redis-server: it
refuses every write that may add memory (SET, HSET, ... answer OOM) and still takes those that
free it (DEL, HDEL, ZREM, PEXPIRE).

The expiry of ended builds is what frees our memory, and only the reconcile leader runs it: a
reconcile loop started while Redis is full (its pod restarted, or taking over from a dead
leader) must still take its lease, or Redis stays full for good. The status page, what an
operator opens then, must still read it: Redis refuses every command queued in MULTI, reads
too."""

import logging
import threading

import pytest

from tests.integration.test_caps import complete
from tests.integration.test_pod_templates import make_world, push, work  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters.lease import Lease

CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""


@pytest.fixture
def full(redis_conn):
    """Makes the (test session's own) Redis full: maxmemory well under what it uses, so that
    it stays full whatever the test deletes."""
    def fill() -> None:
        redis_conn.config_set("maxmemory-policy", "noeviction")
        redis_conn.config_set("maxmemory", redis_conn.info("memory")["used_memory"] // 2)
        with pytest.raises(Exception, match="OOM|maxmemory"):
            redis_conn.set("cia:probe", "x")  # the limit is reached: a write is refused
    yield fill
    redis_conn.config_set("maxmemory", 0)


def test_a_reconcile_loop_started_on_a_full_redis_leads_and_expires_ended_builds(
        make_world, kube, jenkins_fake, redis_conn, full):
    app = make_world(CONFIG, CI_AUTOSCALER_BUILD_TTL_SECONDS="1")
    client = app.test_client()
    for n in range(5):
        key = push(client, n)
        work(app)
        agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
        kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
        complete(client, jenkins_fake, agent)
        work(app)
    assert redis_conn.zcard("cia:ended") == 5
    full()

    stop = threading.Event()
    loop = threading.Thread(target=reconcile.run_forever, args=(runtime.current(), stop),
                            kwargs={"interval": 0.2}, daemon=True)
    loop.start()
    try:
        wait_until(lambda: redis_conn.zcard("cia:ended") == 0, timeout=30,
                   what=lambda: f"the ended builds expired ({redis_conn.zcard('cia:ended')} "
                                f"left; lease held: {redis_conn.exists('cia:reconcile-lock')})")
    finally:
        stop.set()
        loop.join(timeout=30)
    assert not loop.is_alive()
    assert not redis_conn.keys("cia:build:*")


def test_a_lease_is_taken_once_on_a_full_redis_and_kept(redis_conn, full):
    full()
    first, second = Lease(redis_conn, "cia:l", 30), Lease(redis_conn, "cia:l", 30)
    assert first.acquire()
    assert not second.acquire() and not second.hold()  # held: refused, not taken twice
    assert first.hold() and redis_conn.get("cia:l") == first.token.encode()
    first.release()
    assert second.acquire()


def test_the_status_page_reads_a_full_redis(make_world, redis_conn, full):
    app = make_world(CONFIG)
    reconcile.reconcile_once(runtime.current())  # the capacity state the page shows
    full()
    page = app.test_client().get("/status")
    assert page.status_code == 200
    assert "node-a" in page.text  # the capacity state, read


def test_a_pass_on_a_full_redis_says_so_in_one_line_without_a_traceback(
        make_world, redis_conn, full, caplog):
    """The pass's first write (the scale-up pods' count, once the ended builds are expired)
    is refused: every pass logged 'reconcile pass failed' at ERROR with a traceback, every
    15 s while Redis stayed full, and never said that Redis was full."""
    make_world(CONFIG)
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    full()
    caplog.set_level(logging.INFO, logger="ci_autoscaler.reconcile")
    assert reconcile.leader_pass(rt, "leader-1")
    said = [r for r in caplog.records if r.name == "ci_autoscaler.reconcile"]
    assert [r.levelno for r in said if r.levelno >= logging.ERROR] == []
    assert not any(r.exc_info for r in said)
    [stopped] = [r for r in said if "Redis is full" in r.getMessage()]
    assert stopped.levelno == logging.WARNING and "maxmemory" in stopped.error


def test_a_scrape_of_a_full_redis_still_exports_the_live_agents(make_world, redis_conn, full):
    """/metrics read the live agents' counts (workers.adapters.agent_counts) in MULTI, which a
    full Redis refuses: the scrape stopped there, said redis_up 0 (CIRedisUnavailable for a
    Redis that answers) and dropped the agents and every part after them, the shared
    counters too (CIRedisMemoryHigh's page, with the gauges it needs gone). The agents are
    read as before the counts existed: every live record, in plain reads."""
    app = make_world(CONFIG)
    key = push(app.test_client())
    work(app)
    rt = runtime.current()
    reconcile.reconcile_once(rt)  # the counts kept
    assert redis_conn.exists("cia:agent-counts")
    rt.state.update_build(key, status="running")  # written since: on agents-dirty
    full()

    text = app.test_client().get("/metrics").get_data(as_text=True)

    assert "ci_autoscaler_redis_up 1.0" in text
    assert 'ci_autoscaler_agents{phase="running",template="small"} 1.0' in text
    assert "ci_autoscaler_agents_created_total" in text  # a shared counter, read after them
