"""The web process (the Procfile's line: gunicorn with the shipped config): on SIGTERM it finishes the requests in
flight, stores their events and answers them, then exits 0; bodies past the limit are refused."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_procfile import _procfile_line
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG, fixture_bytes
from tests.support.redis_server import free_port
from tests.support.web_process import accept_queue, answers, redis_writes_held

ROOT = Path(__file__).resolve().parents[2]
PUSH = fixture_bytes("gitlab_push_real_lrz.json")


@pytest.fixture
def gunicorn(redis_url, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")} | dict(
        REDIS_URL=redis_url, CI_AUTOSCALER_CONFIG=str(EXAMPLE_CONFIG),
        GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN, JENKINS_WEBHOOK_TOKEN=JENKINS_TOKEN,
        CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1",
        CI_AUTOSCALER_MAX_BODY_BYTES="8192",
        # Long enough that Redis held back by the test is not taken for Redis down.
        CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS="30")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    log = (tmp_path / "gunicorn.log").open("w")
    # The Procfile's web line (the image's and the chart's command too), as honcho runs it:
    # its `exec` leaves gunicorn's master the process that gets SIGTERM.
    proc = subprocess.Popen(["sh", "-c", _procfile_line("web")], cwd=ROOT, env=env,
                            stderr=log)
    proc.port, proc.log_path = port, tmp_path / "gunicorn.log"
    wait_until(lambda: answers(port) or proc.poll() is not None, timeout=30,
               what="gunicorn answering /healthz")
    assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    log.close()


def _push(port: int) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/gitlab", data=PUSH, method="POST",
        headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
                 "Content-Type": "application/json", "Idempotency-Key": "in-flight"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(gunicorn, redis_conn):
    log = gunicorn.log_path
    redis_conn.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the enqueue will wait
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(_push, gunicorn.port)
            wait_until(lambda: redis_writes_held(redis_conn) >= 1, timeout=30,
                       what="the webhook's enqueue waiting in Redis")
            gunicorn.send_signal(signal.SIGTERM)
            # The master logs this, then sends SIGTERM to its worker at once.
            wait_until(lambda: "Handling signal: term" in log.read_text(), timeout=30,
                       what="gunicorn handling SIGTERM")
            assert gunicorn.poll() is None  # waiting for the request in flight
            redis_conn.execute_command("CLIENT", "UNPAUSE")
            status, body = answer.result(timeout=60)
    finally:
        redis_conn.execute_command("CLIENT", "UNPAUSE")
    assert status == 202 and b'"queued"' in body
    assert gunicorn.wait(timeout=30) == 0
    assert redis_conn.llen("cia:intake") == 1
    assert redis_conn.exists("cia:delivery:gitlab:in-flight")
    # The request was held in Redis until after gunicorn handled SIGTERM, and answered: then
    # the worker left.
    text = log.read_text()
    assert text.index("Handling signal: term") < text.index("Worker exiting")


def test_sigterm_lets_a_body_the_main_loop_holds_arrive_and_be_stored(gunicorn, redis_conn):
    """Issue 16 (no push lost) with issue 17's worker: a push's body arriving is held by the
    worker's main loop, not a thread; on SIGTERM gunicorn 27's gthread goes on polling while
    connections are open (its run(): `while self.nr_conns > 0`, up to graceful_timeout), so
    the rest of the body is read, the push stored and answered, then the worker exits."""
    head = _head(str(len(PUSH))).replace(b"Connection: close", b"Idempotency-Key: held")
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=30) as sock:
        sock.sendall(head + PUSH[:100])
        # accepted first: one still in the listen backlog is reset when the listener closes
        wait_until(lambda: accept_queue(gunicorn.port) == 0, timeout=10, what="accepted")
        gunicorn.send_signal(signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in gunicorn.log_path.read_text(),
                   timeout=30, what="gunicorn handling SIGTERM")
        sock.sendall(PUSH[100:])
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 202 "), reply[:300]
    assert gunicorn.wait(timeout=30) == 0
    assert redis_conn.exists("cia:delivery:gitlab:held")


def test_sigterm_lets_the_drain_of_an_ignored_push_end_before_the_worker_exits(gunicorn):
    """A push past the limit whose fields read are past it too (a ref of 70 KB here: no
    push's) is answered 200 ignored as soon as a piece read (64 KiB) shows it, and the main
    loop reads the rest
    of its body and drops it (for up to 10 s), so that GitLab gets the answer rather than a
    reset. That drain was not an open connection to gthread's graceful stop (run(): while
    nr_conns > 0): on SIGTERM the worker exited under it, and GitLab, still sending, got a
    reset, a failed delivery (four disable the hook; REALITY.md)."""
    length = 4 * 2**20
    start = b'{"ref": "refs/heads/' + b"x" * 70_000
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=30) as sock:
        sock.sendall(_head(str(length)) + start)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))  # to the server's FIN
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"ignored"' in answer, answer
        gunicorn.send_signal(signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in gunicorn.log_path.read_text(),
                   timeout=30, what="gunicorn handling SIGTERM")
        sock.sendall(b" " * (length - len(start)))  # BrokenPipeError when the worker had gone
    assert gunicorn.wait(timeout=30) == 0


def test_sigterm_lets_a_push_past_the_limit_being_read_be_stored(gunicorn, redis_conn):
    """A push past the limit is read by a thread in pieces (service.trimmed_body); one still
    arriving at SIGTERM is read to its end, stored and answered before the worker exits."""
    push = json.loads(PUSH)
    push["commits"][0]["message"] = "x" * 20_000  # over the 8 KiB limit
    body = json.dumps(push).encode()
    head = _head(str(len(body))).replace(b"Connection: close", b"Idempotency-Key: big")
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=30) as sock:
        sock.sendall(head + body[:100])
        wait_until(lambda: accept_queue(gunicorn.port) == 0, timeout=10, what="accepted")
        gunicorn.send_signal(signal.SIGTERM)
        wait_until(lambda: "Handling signal: term" in gunicorn.log_path.read_text(),
                   timeout=30, what="gunicorn handling SIGTERM")
        sock.sendall(body[100:])
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 202 "), reply[:300]
    assert gunicorn.wait(timeout=30) == 0
    assert redis_conn.exists("cia:delivery:gitlab:big")


def _raw(port: int, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR) if body else None
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _head(content_length: str | None, chunked: bool = False) -> bytes:
    lines = ["POST /webhooks/gitlab HTTP/1.1", "Host: x", "X-Gitlab-Event: Push Hook",
             f"X-Gitlab-Token: {GITLAB_TOKEN}", "Content-Type: application/json",
             "Connection: close"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_content_length_over_the_limit_is_413_before_the_body_is_sent(gunicorn, redis_conn):
    reply = _raw(gunicorn.port, _head(str(100 * 2**20)))  # headers only: no body follows
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'"request_entity_too_large"' in reply
    assert redis_conn.dbsize() == 0


def test_a_chunked_push_over_the_limit_is_read_and_queued(gunicorn, redis_conn):
    """Over the limit: read to its end in pieces, trimmed to the fields read and queued
    (service.trimmed_body); it was answered 200 ignored, and GitLab never sends it again."""
    push = json.loads(PUSH)
    push["commits"][0]["message"] = "x" * 10_000  # over the 8 KiB limit
    body = json.dumps(push).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                       for part in (body[i:i + 1000] for i in range(0, len(body), 1000)))
    reply = _raw(gunicorn.port, _head(None, chunked=True), chunked + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 202"), reply[:200]
    assert b'"status":"queued"' in reply
    assert redis_conn.llen("cia:intake") == 1


def test_a_chunked_body_over_gitlab_s_25_mb_is_413_counted_from_its_first_byte(gunicorn,
                                                                             redis_conn):
    """GitLab sends no body over 25 MB (REALITY.md; its docs, "Webhooks"): a larger one is
    413. A chunked body has no Content-Length to judge it by: the drain counted only what came
    after the first limit + 1 bytes read_body had read, so one up to that much over 25 MB was
    answered 200 ignored. gunicorn decodes the chunks, as in production."""
    limit = 25 * 2**20
    body = b" " * (limit + 4096)  # over by less than the 8 KiB CI_AUTOSCALER_MAX_BODY_BYTES
    part = 2**20
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + part]), body[i:i + part])
                       for i in range(0, len(body), part))
    reply = _raw(gunicorn.port, _head(None, chunked=True), chunked + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert b'"request_entity_too_large"' in reply and b"over 26214400 bytes" in reply
    assert redis_conn.dbsize() == 0
    # at 25 MB exactly it is GitLab's own: read to its end in pieces, and queued
    at_limit = PUSH.rstrip()[:-1] + b" " * (limit - len(PUSH.rstrip())) + b"}"
    assert len(at_limit) == limit
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(at_limit[i:i + part]), at_limit[i:i + part])
                       for i in range(0, len(at_limit), part))
    reply = _raw(gunicorn.port, _head(None, chunked=True), chunked + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 202") and b'"status":"queued"' in reply, reply[:300]
