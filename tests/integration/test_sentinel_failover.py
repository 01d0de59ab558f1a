"""Redis Sentinel on real processes (Debian's redis-server and redis-sentinel): a master, a
replica and three sentinels. The master is SIGKILLed during a burst of 100 pushes to the web
process as production runs it (gunicorn, REDIS_SENTINELS); the sentinels promote the replica;
every delivery is answered 2xx (what Redis could not take during the failover went to the
web's spool) and every push is built exactly once by the worker's mover and tasks, which find
the new master through the sentinels too.
"""

import time

import pytest
import redis
from rq.scheduler import RQScheduler

from tests.integration.test_spool_outage import CONFIG, NAMESPACE, send, spool_empty
from tests.support.app import production_env, work
from tests.support.monitoring import wait_until
from tests.support.redis_server import free_port
from tests.support.sentinel import MASTER_NAME, sentinel_set  # noqa: F401 (a fixture)
from tests.support.web_process import GUNICORN, web_env, web_process
from service.app import create_app
from workers import runtime
from workers.adapters.redis_state import RedisState
from workers.config.settings import load_settings
from workers.core.errors import ConfigError
from workers.core.routing import BUILD_KEY_PARAMETER

PUSHES = 100
KILL_AT = 30
PUSH_INTERVAL_SECONDS = 0.08  # the burst spans the failover (about 2-4 s here)


@pytest.fixture
def world(monkeypatch, tmp_path, kube, jenkins_fake, sentinel_set):  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    for i in range(4):
        kube.add_node(f"node-{i}", cpu="64", memory="256Gi")
    # REDIS_URL's host is not used with sentinels: port 1 answers nothing, so a client that
    # ignored REDIS_SENTINELS would fail here.
    sentinels = {"REDIS_SENTINELS": sentinel_set.addresses,
                 "REDIS_SENTINEL_MASTER": MASTER_NAME,
                 "CI_AUTOSCALER_REDIS_MIN_REPLICAS": "1"}
    url = "redis://127.0.0.1:1/0"
    production_env(monkeypatch, redis_url=url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, **sentinels)
    runtime.install(None)
    port = free_port()
    env = web_env(url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", CI_AUTOSCALER_CONFIG=str(config),
                  CI_AUTOSCALER_SPOOL_DIR=str(tmp_path / "spool"),
                  CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS="1", **sentinels)
    yield env, port, create_app()
    runtime.install(None)


def test_master_killed_mid_burst_replica_promoted_every_push_2xx_and_built_once(
        world, tmp_path, jenkins_fake, sentinel_set):  # noqa: F811
    env, port, app = world
    old_master = sentinel_set.master.port
    answers: dict[int, int] = {}
    keys: dict[int, str] = {}
    promoted_at = restarted = None
    with web_process(GUNICORN, env, port, tmp_path / "web.log"):
        began = time.monotonic()
        for n in range(PUSHES):
            if n == KILL_AT:
                sentinel_set.master.kill()
                killed_at = time.monotonic()
            status, body = send(port, n)
            answers[status] = answers.get(status, 0) + 1
            if status == 202:
                keys[n] = body["build_key"]
            if n >= KILL_AT and promoted_at is None \
                    and sentinel_set.master_port() not in (old_master, None):
                promoted_at = time.monotonic()
            if promoted_at is not None and restarted is None \
                    and len(set(ports := sentinel_set.master_ports())) == 1 \
                    and ports[0] not in (old_master, None):
                # Kubernetes restarts the killed pod, in seconds: the sentinels make it a
                # replica of the new master (once they have seen it up for 8 s: sentinel.c,
                # SENTINEL_PUBLISH_PERIOD*4), and a push is answered from Redis again once a
                # replica has it (WAIT 1). Started once every sentinel names the new master:
                # back before that, the empty old master could still be named the master.
                # Restarted after the burst instead, it left the drainer ~16 s of waiting for
                # a replica after the last push.
                sentinel_set.master.start()
                restarted = time.monotonic()
            time.sleep(PUSH_INTERVAL_SECONDS)  # pacing the burst, not awaiting anything
        assert promoted_at is not None, "the burst ended before the replica was promoted"
        if restarted is None:  # the sentinels agreed only after the burst
            sentinel_set.master.start()
        new_master = sentinel_set.master_port()
        promoted_after = promoted_at - killed_at
        wait_until(lambda: spool_empty(tmp_path / "spool", app), timeout=90,
                   what="the web's drainer moved every spooled push into the new master")
        drained_after = time.monotonic() - began
    work(app)
    counts = {key: len(jenkins_fake.build_with(BUILD_KEY_PARAMETER, key))
              for key in keys.values()}
    web_log = (tmp_path / "web.log").read_text()
    print(f"\nsentinel failover: {PUSHES} pushes, master :{old_master} killed at push "
          f"{KILL_AT}, replica :{new_master} promoted {promoted_after:.1f}s later; answers "
          f"{dict(sorted(answers.items()))}; {web_log.count('push spooled')} spooled; spool "
          f"empty after {drained_after:.1f}s; builds per push {sorted(set(counts.values()))}",
          flush=True)
    assert new_master == sentinel_set.replica.port
    assert redis.Redis(port=new_master).info("replication")["role"] == "master"
    assert set(answers) == {202}, answers
    assert len(keys) == PUSHES and len(set(keys.values())) == PUSHES
    assert "push spooled" in web_log  # the failover's writes went to the spool
    assert set(counts.values()) == {1}, {k: c for k, c in counts.items() if c != 1}
    assert len(jenkins_fake.builds) == PUSHES


@pytest.mark.parametrize("env,message", [
    ({"REDIS_SENTINELS": "127.0.0.1:26379,sentinel-b"}, "'sentinel-b' is not host:port"),
    ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINEL_MASTER: required"),
])
def test_bad_sentinel_settings_are_refused_naming_the_field(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_SENTINEL_MASTER", raising=False)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert any(message in problem for problem in err.value.problems), err.value.problems


def test_every_process_finds_the_master_through_the_sentinels(monkeypatch,
                                                              sentinel_set):  # noqa: F811
    monkeypatch.setenv("REDIS_SENTINELS", sentinel_set.addresses)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/3")
    client = load_settings().redis_client()
    client.set("k", "v")
    assert client.connection_pool.connection_kwargs["db"] == 3
    master = redis.Redis(port=sentinel_set.master.port, db=3)
    assert master.get("k") == b"v"
    # The webhook's script runs on connections of its own (workers.adapters.redis_script):
    # those must reach the master too, never whatever answers on localhost:6379.
    intake = RedisState(client).intake
    answers = []
    for _ in range(2):  # a fresh connection, then one made again after a lost one
        answers.append(intake.push(delivery_id="d-1", mark="m", record=b"{}", ttl_seconds=60))
        assert master.exists("cia:delivery:d-1") and master.llen("cia:intake") == 1
        master.client_kill_filter(_type="normal", skipme=True)
    assert [a.queued for a in answers] == [True, False]  # the second: a duplicate there
    # A connection sent to before anything connected it (as the scripts' pipelines do) goes
    # to the master too.
    pool = client.connection_pool
    raw = pool.connection_class(**pool.connection_kwargs)
    raw.send_packed_command([b"*3\r\n$3\r\nSET\r\n$3\r\nraw\r\n$1\r\n1\r\n"])
    assert raw.read_response() == b"OK" and master.get("raw") == b"1"
    raw.disconnect()
    # RQ's scheduler (the worker runs it) rebuilds its connection from the pool's settings.
    RQScheduler(["ci-autoscaler"], connection=client).connection.set("scheduler", "1")
    assert master.get("scheduler") == b"1"


def test_the_database_a_redis_url_names_in_its_query_is_the_masters_database_too(
        monkeypatch, sentinel_set):  # noqa: F811
    """redis-py reads `?db=3` as the database (its parse_url, before the path), and so do the
    settings naming the Redis (redis_target, the spool's owner); through the sentinels only
    the path was read, so the same REDIS_URL put every key in database 0, where the spool's
    fingerprint said 3."""
    monkeypatch.setenv("REDIS_SENTINELS", sentinel_set.addresses)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/?db=3")
    settings = load_settings()
    settings.redis_client().set("k", "v")
    master = sentinel_set.master.client()
    assert redis.Redis(port=sentinel_set.master.port, db=3).get("k") == b"v"
    assert master.get("k") is None  # database 0
    assert settings.redis_target.endswith("/3")
