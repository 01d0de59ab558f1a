"""The web process as production runs it: gunicorn with service/gunicorn.conf.py, in a process
of its own, on a real Redis; started by a command line (the Procfile's, or gunicorn's own) and
awaited until /healthz answers."""

import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, spool_dir
from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = f"{shlex.quote(sys.executable)} -m gunicorn -c service/gunicorn.conf.py service.wsgi:app"


def _tcp_sockets() -> Iterator[tuple[int, int, str, int]]:
    """(local port, remote port, state, rx_queue) of each IPv4 TCP socket (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        yield (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[3],
               int(fields[4].split(":")[1], 16))


def accept_queue(port: int) -> int:
    """Connections the kernel holds for the listener on `port`, not yet accepted (a LISTEN
    socket's rx_queue)."""
    for local, _, state, queued in _tcp_sockets():
        if state == "0A" and local == port:
            return queued
    raise AssertionError(f"no listener on port {port}")


def unread(port: int, client_port: int) -> int:
    """Bytes the server on `port` has not read yet of what the client at `client_port` sent
    (the server's end's rx_queue)."""
    for local, remote, _, queued in _tcp_sockets():
        if local == port and remote == client_port:
            return queued
    raise AssertionError(f"no connection from {client_port} to {port}")


def redis_writes_held(conn) -> int:
    """How many web threads' stores Redis holds back (CLIENT PAUSE WRITE): the intake's
    function (FCALL), or its loading (FUNCTION LOAD) into a fresh Redis."""
    return sum("b" in c["flags"] and c["cmd"].startswith(("fcall", "function"))
               for c in conn.client_list())


def web_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a web process: the service's settings, none of the caller's
    PROMETHEUS_* or bind settings, the venv's bin first on PATH (where `gunicorn` is)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROMETHEUS_") and k not in ("CI_AUTOSCALER_BIND", "PORT")}
    return env | {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                  "REDIS_URL": redis_url, "CI_AUTOSCALER_CONFIG": str(EXAMPLE_CONFIG),
                  "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
                  "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN,
                  "CI_AUTOSCALER_SPOOL_DIR": spool_dir()} | extra


def mapped_metrics_dir(master_pid: int) -> Path | None:
    """The multiprocess directory the gunicorn workers of `master_pid` write their counters
    in (prometheus_client maps each worker's counter_PID.db), or None."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    for pid in children:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = Path(line.split(maxsplit=5)[-1])
            if path.name == f"counter_{pid}.db":
                return path.parent
    return None


def answers(port: int) -> bool:
    """Our web process answers /healthz on `port`: its own body, not another server's 200 (a
    port taken by another test's server once passed for the web's, and each webhook got that
    server's empty answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as got:
            return json.loads(got.read()) == {"status": "ok"}
    except (OSError, ValueError):
        return False


@contextmanager
def web_process(command: str, env: dict[str, str], port: int, log: Path, *,
                pass_fds: tuple[int, ...] = ()) -> Iterator[subprocess.Popen]:
    """Run `command` through the shell (as a Procfile line is run), in its own process group,
    given `pass_fds` open (as a supervisor passes its sockets); yield once /healthz answers on
    `port`; stop the whole group after."""
    with log.open("w") as err:
        proc = subprocess.Popen(["sh", "-c", command], cwd=ROOT, env=env, stderr=err,
                                stdout=subprocess.DEVNULL, start_new_session=True,
                                pass_fds=pass_fds)
        try:
            wait_until(lambda: answers(port) or proc.poll() is not None, timeout=30,
                       what=f"the web process answering /healthz on port {port}")
            assert proc.poll() is None, log.read_text()
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
