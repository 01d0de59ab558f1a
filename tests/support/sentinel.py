"""Redis with Sentinel for the tests: a master, a replica and three sentinels, each a real
Debian `redis-server` / `redis-sentinel` process on a free port (TESTING.md, "Redis Sentinel").

`make test` installs Debian's redis-sentinel when it is missing; if it is still missing the
fixture fails and says so (it never skips).
"""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import HeldPort, free_port

MASTER_NAME = "cia-master"
START_TIMEOUT_SECONDS = 15
# How soon the sentinels call a silent master down, and how long a failover may take. Short, so
# the test's failover takes seconds (the defaults are 30 s and 3 min). 2 s, not 1: in a full
# suite on 2 cores, the failover test once ended with the restarted, empty old master named
# master and pushes answered 202 never built; likely (not proven) a CPU-starved new master silent
# for over 1 s, failed over again. Promotion now takes ~3.9 s instead of ~2.9 s.
DOWN_AFTER_MILLISECONDS = 2000
FAILOVER_TIMEOUT_MILLISECONDS = 5000


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.fail(f"{name} is not installed: run `make deps` (it installs Debian's "
                    "redis-server and redis-sentinel)")
    return binary


def _await(check, what: str, timeout: float = START_TIMEOUT_SECONDS):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class Node:
    """One redis-server, in the foreground as a child process (so a test can SIGKILL it)."""

    def __init__(self, directory: Path, port: int | None = None, replica_of: int | None = None):
        self.directory, self.port = directory, port or free_port()
        self.replica_of = replica_of
        self.proc: subprocess.Popen | None = None
        self._port_hold = HeldPort()  # its port, while killed or stopped

    def start(self) -> "Node":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._port_hold.release()  # started again on the port it kept
        args = [_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--logfile", str(self.directory / "redis.log")]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _await(lambda: self.client().ping(), f"redis-server on port {self.port} answering")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=0.5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self._port_hold.keep(self.port)  # a pod restarted keeps its address

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
                self._port_hold.keep(self.port)  # a pod restarted keeps its address
            except subprocess.TimeoutExpired:
                self.kill()


class SentinelSet:
    """A master, one replica of it, and three sentinels watching it under MASTER_NAME; with
    `sentinel_lines`, more lines of each sentinel's config (the chart's `requirepass`), and
    `sentinel_password` for the set's own clients of the sentinels."""

    def __init__(self, directory: Path, *, sentinel_lines: tuple[str, ...] = (),
                 sentinel_password: str | None = None):
        self.directory = directory
        self.sentinel_lines, self.sentinel_password = sentinel_lines, sentinel_password
        self.master = Node(directory / "master")
        self.replica = Node(directory / "replica", replica_of=self.master.port)
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def start(self) -> "SentinelSet":
        self.master.start()
        # a full copy for a replica at once, not after Redis's 5 s of waiting for others
        self.master.client().config_set("repl-diskless-sync-delay", 0)
        self.replica.start()
        self.replica.client().config_set("repl-diskless-sync-delay", 0)  # once promoted
        # In sync, not only connected: a replica connected is still waiting for its first full
        # copy (`connected_slaves` counts it), acknowledges no write (a push's WAIT fails), and
        # would be promoted empty.
        _await(lambda: self.replica.client().info("replication")["master_link_status"] == "up",
               "the replica in sync with the master")
        for n, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel-{n}.conf"  # sentinels rewrite their own file
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{n}.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MILLISECONDS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MILLISECONDS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
                + "".join(f"{line}\n" for line in self.sentinel_lines))
            self.sentinels.append(subprocess.Popen(
                [_binary("redis-sentinel"), str(conf)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        for port in self.sentinel_ports:  # each knows the replica and the two other sentinels
            client = self.sentinel_client(port, decode_responses=True)
            _await(lambda c=client: len(c.sentinel_slaves(MASTER_NAME)) == 1
                   and len(c.sentinel_sentinels(MASTER_NAME)) == 2,
                   f"sentinel {port} sees the replica and the other sentinels", timeout=30)
        return self

    def sentinel_client(self, port: int, **options) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, password=self.sentinel_password,
                           **options)

    def master_ports(self) -> list[int | None]:
        """The master's port as each sentinel names it (None: it did not answer)."""
        ports = []
        for port in self.sentinel_ports:
            try:
                address = self.sentinel_client(port).sentinel_get_master_addr_by_name(
                    MASTER_NAME)
                ports.append(int(address[1]) if address else None)
            except redis.RedisError:
                ports.append(None)
        return ports

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels name it."""
        ports = self.master_ports()
        best = max(set(ports), key=ports.count)
        return best if ports.count(best) >= 2 else None

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.replica.stop()
        self.master.stop()


@pytest.fixture
def sentinel_set(tmp_path):
    redis_set = SentinelSet(tmp_path / "sentinel").start()
    yield redis_set
    redis_set.stop()
