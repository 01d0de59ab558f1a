"""The chart's sentinels have a password of their own, on real processes (Debian's
redis-server and redis-sentinel, tests/support/sentinel.py): the `requirepass` line of the
chart's sentinel.conf and the password of the chart's Secret. Without it any pod that reached
port 26379 could SENTINEL FAILOVER (a master change at will) or SENTINEL SET / REMOVE / MONITOR
(point every client at a Redis of its own). The service's processes, given
REDIS_SENTINEL_PASSWORD as the chart gives it, still find the master through the sentinels, and
the sentinels, which give each other the same password (Redis docs, "Configuring Sentinel
instances with authentication"), still fail over."""

import base64

import pytest
import redis

from tests.support.helm_chart import env_of, one, render
from tests.support.monitoring import wait_until
from tests.support.sentinel import MASTER_NAME, SentinelSet
from workers.config.settings import Settings


def _secret_env(container: dict, secret: dict) -> dict[str, str]:
    """The container's variables taken from the chart's Redis Secret, with their values."""
    values = {}
    for name, entry in env_of(container).items():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] == secret["metadata"]["name"]:
            values[name] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return values


def _chart_sentinel_auth() -> tuple[tuple[str, ...], str]:
    """(the auth lines of the chart's sentinel.conf, `requirepass` and `user`, with the
    passwords put in; the requirepass password), from the redis-sentinel option set as
    rendered."""
    objs = render("redis-sentinel")
    secret = one(objs, "Secret", "redis")
    pod = one(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    sentinel = next(c for c in pod["containers"] if c["name"] == "sentinel")
    values = _secret_env(sentinel, secret)
    lines = []
    for line in sentinel["args"][0].splitlines():
        line = line.strip()
        if line.startswith(("requirepass", "user ")):
            for name, value in sorted(values.items(), key=lambda item: -len(item[0])):
                line = line.replace(f"${name}", value)
            lines.append(line)
    assert any(line.startswith("requirepass") for line in lines), \
        "the chart's sentinel.conf has no requirepass"
    return tuple(lines), values["REDIS_SENTINEL_PASSWORD"]


def _process_credentials(component: str) -> tuple[str | None, str]:
    """(REDIS_SENTINEL_USERNAME, REDIS_SENTINEL_PASSWORD) as the chart gives `component`."""
    objs = render("redis-sentinel")
    container = one(objs, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]
    values = _secret_env(container, one(objs, "Secret", "redis"))
    username = env_of(container).get("REDIS_SENTINEL_USERNAME", {}).get("value")
    return username, values["REDIS_SENTINEL_PASSWORD"]


@pytest.fixture
def guarded_set(tmp_path):
    lines, password = _chart_sentinel_auth()
    redis_set = SentinelSet(tmp_path / "sentinel", sentinel_lines=lines,
                            sentinel_password=password).start()
    yield redis_set
    redis_set.stop()


def test_the_sentinel_password_is_apart_from_the_redis_passwords():
    _, password = _chart_sentinel_auth()
    secret = one(render("redis-sentinel"), "Secret", "redis")
    others = {base64.b64decode(secret["data"][k]).decode()
              for k in ("redis-password", "redis-web-password")}
    assert len(password) >= 32 and password not in others


def test_a_pod_without_the_sentinel_password_can_neither_fail_over_nor_reconfigure(
        guarded_set):
    port = guarded_set.sentinel_ports[0]
    # RESP2, as redis-cli speaks it: each command reaches the sentinel (redis-py 8's RESP3
    # HELLO would be refused before any).
    anonymous = redis.Redis(port=port, socket_timeout=1, protocol=2)
    for command in (("SENTINEL", "FAILOVER", MASTER_NAME),
                    ("SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", "100"),
                    ("SENTINEL", "REMOVE", MASTER_NAME),
                    ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)):
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            anonymous.execute_command(*command)
    assert guarded_set.master_port() == guarded_set.master.port
    config = guarded_set.sentinel_client(port, decode_responses=True).sentinel_master(MASTER_NAME)
    assert config["down-after-milliseconds"] != 100


@pytest.mark.parametrize("component", ["web", "worker", "reconcile"])
def test_every_process_finds_the_master_but_can_neither_fail_over_nor_reconfigure(
        guarded_set, component):
    """The sentinels' requirepass was given to every process, the web included, the one that
    faces the Internet and has only a narrow Redis user of its own: from there SENTINEL REMOVE
    and MONITOR pointed the worker and the reconcile loop at any address, where they sent the
    full Redis password (AUTH) and took the jobs it served. The processes get a sentinel user
    that may only ask; the requirepass stays with the Redis pods."""
    username, password = _process_credentials(component)
    _, admin = _chart_sentinel_auth()
    assert username and password != admin
    client = redis.Redis(port=guarded_set.sentinel_ports[0], socket_timeout=1,
                         username=username, password=password, decode_responses=True)
    assert int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]) == \
        guarded_set.master.port
    assert client.sentinel_master(MASTER_NAME)["port"] == guarded_set.master.port
    for command in (("SENTINEL", "FAILOVER", MASTER_NAME),
                    ("SENTINEL", "SET", MASTER_NAME, "down-after-milliseconds", "100"),
                    ("SENTINEL", "REMOVE", MASTER_NAME),
                    ("SENTINEL", "MONITOR", "elsewhere", "127.0.0.1", "1", "1"),
                    ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "no")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert guarded_set.master_port() == guarded_set.master.port


def test_the_service_finds_the_master_through_guarded_sentinels_across_a_failover(
        guarded_set):
    username, password = _process_credentials("worker")
    # REDIS_URL's host is not used with sentinels: port 1 answers nothing.
    settings = Settings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=guarded_set.addresses,
                        redis_sentinel_master=MASTER_NAME, redis_sentinel_username=username,
                        redis_sentinel_password=password)
    client = settings.redis_client(socket_timeout=1)
    client.set("cia:probe", "before")
    assert guarded_set.master.client().get("cia:probe") == b"before"
    # Without the password, the sentinels answer no one.
    blind = Settings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=guarded_set.addresses,
                     redis_sentinel_master=MASTER_NAME).redis_client(socket_timeout=1)
    with pytest.raises(redis.RedisError):
        blind.get("cia:probe")

    # The sentinels authenticate to each other with it: they still agree and fail over.
    guarded_set.master.kill()
    wait_until(lambda: guarded_set.master_port() == guarded_set.replica.port, timeout=30,
               what="the guarded sentinels promoting the replica")

    def written() -> bool:
        try:
            return bool(client.set("cia:probe", "after"))
        except redis.RedisError:
            return False
    wait_until(written, timeout=15, what="the service writing to the new master")
    assert guarded_set.replica.client().get("cia:probe") == b"after"
