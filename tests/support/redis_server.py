"""A real redis-server for the tests: started on a free port in a temporary directory.

`make test` installs Debian's redis-server when it is missing; if it is still missing the
fixture fails and says so (it never skips).
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

START_TIMEOUT_SECONDS = 10


# Ports for the tests' servers, below Linux's ephemeral range (ip_local_port_range, 32768-60999
# by default), one slice per xdist worker. A port the kernel picked (bind to port 0) was free
# only until the server bound it: meanwhile another worker's server bound to port 0 (the
# Kubernetes API mock, say) could be given it. Seen in CI: the web process could not bind
# its port, and the mock's /healthz (200) answered for it; each webhook got the mock's empty
# body. The kernel never hands out a port below the range for port 0 or an outgoing
# connection, and each worker counts through its own slice. Only another test session on the
# same machine shares the slices; its start is random and a bound port is skipped.
_PORTS_FROM, _PORTS_PER_WORKER = 12000, 1000
_next_port: list[int] = []


def free_port() -> int:
    """A port no server on this machine is bound to, and that no other worker of this test
    session is given."""
    if not _next_port:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        first = _PORTS_FROM + _PORTS_PER_WORKER * (int(worker) if worker.isdigit() else 0)
        _next_port.extend((first, first + random.randrange(_PORTS_PER_WORKER)))
    first = _next_port[0]
    for _ in range(_PORTS_PER_WORKER):
        port = _next_port[1]
        _next_port[1] = first + (port + 1 - first) % _PORTS_PER_WORKER
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # bound by a server of another session, or still in TIME_WAIT
                continue
            return port
    raise AssertionError(f"no free port in {first}-{first + _PORTS_PER_WORKER - 1}")


def hold_port(port: int) -> socket.socket:
    """Keep a port of a server that is down (a restart on the same port follows): a socket
    bound to it, not listening, so a connection is still refused (RST: no listener), but no
    other socket takes the port meanwhile. Released, it was taken now and then, under load,
    by a client's outgoing connection, whose ephemeral port may be any free one (Linux's
    __inet_hash_connect skips only ports a socket bound explicitly): the restart failed,
    "Address already in use". Close it just before the server binds again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old TIME_WAITs
    sock.bind(("127.0.0.1", port))
    return sock


class HeldPort:
    """A server's port while it is down (stopped, killed, a restart under way): held with
    hold_port, released just before the server binds it again; the Redis servers, the
    sentinel set's nodes and the Jenkins fake each keep theirs so."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = None

    def keep(self, port: int) -> None:
        """Hold `port`, unless held already; one still bound (a killed server not gone yet)
        is left unheld."""
        if self._socket is None:
            try:
                self._socket = hold_port(port)
            except OSError:
                pass

    def release(self) -> None:
        """Let the port go, if held: the server binds it next."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def running(pid: int) -> bool:
    """Whether the process runs: not gone, and not a zombie. A daemonised redis-server is
    reparented to PID 1, which here reaps its exited children only every second or two: a
    server long exited (its port and files closed) still answered `kill(pid, 0)`, and each
    stop waited ~1.8 s for the reaping (proc(5): state Z in /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: kill(pid, 0) alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows the (command)


class RedisServer:
    def __init__(self, directory: Path, *, appendonly: bool = False):
        self.directory = directory
        self.port = free_port()
        self.appendonly = appendonly
        self._port_hold = HeldPort()  # the port, while the server is stopped

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run `make test` (it installs Debian's "
                        "redis-server) or `apt-get install -y redis-server`")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._port_hold.release()  # started again on the port it kept
        subprocess.run([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                        "--daemonize", "yes", "--dir", str(self.directory),
                        "--pidfile", str(self.directory / "redis.pid"),
                        "--logfile", str(self.directory / "redis.log"), "--save", "",
                        "--appendonly", "yes" if self.appendonly else "no"], check=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:  # awaiting the server's readiness, not a fixed sleep
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not answer; see "
                                f"{self.directory / 'redis.log'}")
                time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM, then wait for the process to be gone (redis-server removes its pidfile);
        its port is kept (hold_port) until it starts again."""
        pidfile = self.directory / "redis.pid"
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._port_hold.keep(self.port)  # until a start: a test may start it again on its port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's redis-server, flushed before each test."""
    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


@pytest.fixture
def redis_conn(redis_url):
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, which the test may stop and start."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    server.stop()
