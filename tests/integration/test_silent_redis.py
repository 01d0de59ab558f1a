"""A Redis that never answers (a hung server, a host that accepts the connection and then says
nothing, an address whose packets a firewall drops): the worker and the reconcile loop say at
once that they wait for it, and a SIGTERM (a rollout, the Procfile's runner stopping) ends
them well inside a pod's 30 s grace period."""

import signal
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest

from tests.integration.test_reconcile_repairs import CONFIG, NAMESPACE
from tests.integration.test_worker_and_reconcile_processes import Process
from tests.support.app import production_env
from tests.support.monitoring import wait_until

WAITING = "Redis unavailable: waiting for it"


@contextmanager
def silent_redis(kind: str) -> Iterator[str]:
    """A REDIS_URL whose server never answers. "mute": the kernel completes each TCP handshake
    (the listen backlog) and nothing is ever read or written. "blackholed": the backlog (0, one
    connection on Linux) is filled by this test, so the kernel drops every further SYN, as a
    firewall's DROP does, and a connect hangs until the client gives up."""
    with closing(socket.socket()) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16 if kind == "mute" else 0)
        port = server.getsockname()[1]
        fillers = []
        if kind == "blackholed":
            filler = socket.create_connection(("127.0.0.1", port), timeout=1)
            fillers.append(filler)
            with closing(socket.socket()) as probe, pytest.raises(TimeoutError):
                probe.settimeout(0.5)
                probe.connect(("127.0.0.1", port))  # the SYN is dropped: blackholed indeed
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize(("args", "kind"), [(("worker",), "blackholed"),
                                            (("reconcile", "--interval", "0.3"), "mute")])
def test_a_process_whose_redis_never_answers_says_it_waits_and_stops_on_sigterm(
        monkeypatch, tmp_path, kube, jenkins_fake, kind, args):
    """No timeout of our own bounds the wait's PING: redis-py's defaults do (since 8.0, 5 s to
    connect and 5 s to read, redis/_defaults.py; None before, a PING that never returned:
    redis-py issue #2243, girder/girder#3829). So
    the line comes within about 5 s, and a SIGTERM during a PING is heard when it gives up
    (measured: 4.5 s at worst, inside a pod's 30 s). A redis-py that drops those defaults
    fails here, rather than hanging a worker without a word."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    kube.add_node("node-a", cpu="8", memory="32Gi")
    with silent_redis(kind) as url:
        production_env(monkeypatch, redis_url=url, kube=kube, jenkins_fake=jenkins_fake,
                       config=config, namespace=NAMESPACE)
        process = Process(*args)
        try:
            wait_until(lambda: process.said(WAITING) or process.proc.poll() is not None,
                       # a PING that never returned would never say it; 30 s, not the 5 s
                       # read timeout plus start-up: in a full-suite run beside four other
                       # test runs the line did not come within 15 s
                       timeout=30, what="the process saying it waits for Redis")
            assert process.proc.poll() is None, "".join(process.raw[-20:])
            started = time.monotonic()
            code = process.stop(timeout=30)
        finally:
            process.stop(signal.SIGKILL)  # what a failed test leaves is not left running
    assert code == 0, "".join(process.raw[-20:])
    assert time.monotonic() - started < 5, "the SIGTERM waited for a PING"
    assert process.said(WAITING) == 1
    assert not any("Traceback" in line for line in process.raw)
