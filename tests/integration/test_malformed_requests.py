"""Requests gunicorn cannot parse, sent to the real web process (gunicorn with
service/gunicorn.conf.py). A chunked body it cannot decode is answered 400 with a JSON reason
and counted invalid, as any bad body is, not a 500 logged as the webhook's failure; the
connection is closed after (where the next request would start is unknown), and the worker
serves on. A request line it refuses is logged without its query, where the Jenkins
Notification plugin's token travels."""

import json
import socket
import urllib.error
import urllib.request

import pytest

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture_bytes
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, web_env, web_process

PUSH = fixture_bytes("gitlab_push_real_lrz.json")


@pytest.fixture(scope="module")
def web(tmp_path_factory, redis_server):
    tmp = tmp_path_factory.mktemp("chunked")
    port = free_port()
    env = web_env(redis_server.url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1",
                  CI_AUTOSCALER_MAX_BODY_BYTES="1024")
    with web_process(GUNICORN, env, port, tmp / "web.log") as proc:
        proc.port, proc.log = port, tmp / "web.log"
        yield proc


def _send(port: int, head: bytes, body: bytes) -> bytes:
    """The whole answer to one request, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


GITLAB = (b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: " + GITLAB_TOKEN.encode()
          + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
JENKINS = (b"POST /webhooks/jenkins?token=" + JENKINS_TOKEN.encode() + b" HTTP/1.1\r\n"
           b"Host: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("head,body", [
    (GITLAB, b"zz\r\n{}\r\n0\r\n\r\n"),  # a chunk size that is no number
    (JENKINS, b"zz\r\n{}\r\n0\r\n\r\n"),
    (JENKINS, b"2\r\n{}XX0\r\n\r\n"),  # a chunk without its CRLF
    # a push past the limit (1024 here), its rest drained, then a broken chunk
    (GITLAB, b"%x\r\n" % len(PUSH) + PUSH + b"\r\nnot-a-size\r\n"),
], ids=["gitlab-size", "jenkins-size", "jenkins-terminator", "gitlab-drained"])
def test_a_malformed_chunked_body_is_400_with_a_reason_and_the_connection_closed(
        web, head, body):
    reply = _send(web.port, head, body)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request", reply[:300]
    answer = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert answer["reason"].startswith("the chunked body is malformed"), answer
    assert b"zz" not in rest and b"not-a-size" not in rest  # what the client sent: not echoed
    log = web.log.read_text()
    assert "webhook failed" not in log, log[-2000:]
    with urllib.request.urlopen(f"http://127.0.0.1:{web.port}/healthz", timeout=5) as ok:
        assert ok.status == 200


LEFT, RIGHT = "tok-left-9f3a2c", "tok-right-c1d7e0"


@pytest.mark.parametrize("inside", [" ", "\t", "\x7f", "\xe9", "\x01"],
                         ids=["space", "tab", "del", "latin1", "control"])
def test_a_refused_request_line_is_logged_without_its_query(web, inside):
    """The plugin sends its URL as typed (Java's URL encodes nothing): a token holding such a
    character makes a request line gunicorn refuses, and it logged the line whole ("Invalid
    HTTP request line: 'POST /webhooks/jenkins?token=...'"), or, split at a space, the token's
    rest as the "HTTP Version"."""
    line = f"POST /webhooks/jenkins?token={LEFT}{inside}{RIGHT} HTTP/1.1\r\n".encode("latin-1")
    reply = _send(web.port, line + b"Host: x\r\nContent-Length: 2\r\n\r\n", b"{}")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    refused = [l for l in web.log.read_text(errors="replace").splitlines()
               if "Invalid request from" in l]
    assert refused, web.log.read_text()[-2000:]  # still logged
    if "request line" in refused[-1]:
        assert "/webhooks/jenkins?" in refused[-1], refused  # with its path
    assert all(LEFT not in l and RIGHT not in l for l in refused), refused


@pytest.mark.parametrize("head", [GITLAB, JENKINS], ids=["gitlab", "jenkins"])
def test_a_chunked_body_its_client_cut_short_is_400_not_a_timeout(web, head):
    """A client that closes its end inside a chunked body: gunicorn's chunk reader says
    NoMoreData, an OSError, which was taken for the server's cut-off of a slow client: 408
    "request_timeout", with gunicorn's own words as the reason. A body of known length cut
    short was 400 already."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(head + b"10\r\n{\"a\":")
        sock.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    answer = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert answer == {"error": "bad_request",
                      "reason": "the chunked body ended before its last chunk"}, answer


@pytest.mark.parametrize("length", [b"\xb2", b"\xb9\xb3", b"1" * 5000],
                         ids=["superscript", "two", "5000-digits"])
def test_a_content_length_int_refuses_is_400_and_the_worker_serves_on(web, length):
    """Latin-1's superscripts are digits to str.isdigit() but not to int(), nor are more than
    4300 digits (Python's int_max_str_digits): a head with a Transfer-Encoding (so its body is
    not taken for arrived) and such a Content-Length raised ValueError in the worker's main
    loop, before any token check, and the worker died with every request it held. gunicorn
    answers such a head 400 (message.set_body_reader)."""
    head = (b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n"
            b"Content-Length: " + length + b"\r\n\r\n")
    reply = _send(web.port, head, b"")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    assert "Exception in worker process" not in web.log.read_text()


HEAD = (b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Gitlab-Event: Push Hook\r\nContent-Length: 2\r\n")


@pytest.mark.parametrize("request_head,status", [
    (HEAD + b"X-Gitlab-Token " + GITLAB_TOKEN.encode() + b"\r\n\r\n", 400),  # no colon
    (HEAD + b"X-Gitlab-Token: " + GITLAB_TOKEN.encode() + b"\x00\r\n\r\n", 400),  # a NUL
    (HEAD + b"X-Gitlab-Token: " + GITLAB_TOKEN.encode() + b"\r\n x\r\n\r\n", 400),  # folded
    (HEAD.replace(b"\r\nHost", b"?token=" + JENKINS_TOKEN.encode() + b" x\r\nHost")
     + b"\r\n", 400),  # a space in the query: the rest read as the HTTP version
    (HEAD.replace(b"HTTP/1.1", b"?token=" + JENKINS_TOKEN.encode() * 200 + b" HTTP/1.1")
     + b"\r\n", 414),
    (HEAD + b"X-Gitlab-Token: " + GITLAB_TOKEN.encode() * 600 + b"\r\n\r\n", 431),
    (HEAD + b"X-Gitlab-Token: " + GITLAB_TOKEN.encode() * 4000, 431),  # no end: the worker's
], ids=["header-name", "header-value", "folding", "version", "line-too-long",
        "header-too-large", "head-without-end"])
def test_a_request_gunicorn_refuses_is_answered_a_json_reason_without_what_was_sent(
        web, request_head, status):
    """gunicorn answers a request it cannot parse with an HTML page quoting what the client
    sent (the request line with its query, the header it could not read); every other answer
    of the web, and DESIGN.md's rule for bad input, is a 4xx with a JSON reason."""
    reply = _send(web.port, request_head, b"{}")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), reply[:300]
    assert b"Content-Type: application/json" in head, head
    answer = json.loads(body)
    assert answer["reason"] and answer["error"], answer
    assert GITLAB_TOKEN.encode() not in body and JENKINS_TOKEN.encode() not in body, body


@pytest.mark.parametrize("line", [
    b"X-Gitlab-Token " + GITLAB_TOKEN.encode(),  # no colon: the line is quoted whole
    b"X-Gitlab-Token " + GITLAB_TOKEN.encode() + b": x",  # a name with a space
    b"x-jenkins-token\t" + JENKINS_TOKEN.encode(),
], ids=["no-colon", "name-with-space", "jenkins-tab"])
def test_a_refused_header_line_is_logged_without_its_token(web, line):
    """gunicorn logs a header line it cannot read quoted ("Invalid request from ip=...:
    Invalid HTTP Header: 'X-Gitlab-Token <token>'", gunicorn.http.message: InvalidHeader(curr),
    InvalidHeaderName(name)): the answer said nothing of it, the web's log showed the token."""
    reply = _send(web.port, HEAD + line + b"\r\n\r\n", b"{}")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    name = line.split()[0].decode()  # logged before the answer is written (handle_error)
    refused = [l for l in web.log.read_text(errors="replace").splitlines()
               if "Invalid request from" in l]
    assert any(f"{name} [not shown: a token]" in l for l in refused), refused  # still logged
    assert all(GITLAB_TOKEN not in l and JENKINS_TOKEN not in l for l in refused), refused


# Every atom of gunicorn's access log (gunicorn.glogging.Logger.atoms) that holds the query or
# a token header: the request line, the query, the environ's URI and query, the token headers.
ACCESS_FORMAT = ("%(r)s|%(U)s|%({path_info}e)s|%(q)s|%({raw_uri}e)s|%({query_string}e)s|%({x-gitlab-token}i)s|"
                 "%({x-jenkins-token}i)s|%({authorization}i)s|%({http_x_gitlab_token}e)s|"
                 "%({http_x_jenkins_token}e)s|%({http_authorization}e)s|%(f)s")


@pytest.mark.parametrize("statsd", [False, True], ids=["plain", "statsd"])
def test_an_access_log_turned_on_shows_no_token(tmp_path, redis_server, statsd):
    """gunicorn keeps no access log here, but an operator may turn one on the gunicorn way
    (GUNICORN_CMD_ARGS="--access-logfile -", which overrides the config file): each line
    showed the Notification plugin's ?token=, and a format naming a header or the environ
    (%({x-gitlab-token}i)s, %({query_string}e)s) the GitLab or Jenkins token. The path stays.
    With --statsd-host too (gunicorn's statsd logger, which still gets its metrics)."""
    port, access = free_port(), tmp_path / "access.log"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as metrics:
        metrics.bind(("127.0.0.1", 0))
        metrics.settimeout(10)
        statsd_arg = f" --statsd-host 127.0.0.1:{metrics.getsockname()[1]}" if statsd else ""
        env = web_env(redis_server.url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}",
                      WEB_CONCURRENCY="1",
                      GUNICORN_CMD_ARGS=f"--access-logfile {access} --access-logformat "
                                        f"'{ACCESS_FORMAT}'{statsd_arg}")
        _access_logged(env, port, tmp_path)
        if statsd:
            assert metrics.recv(4096).startswith(b"gunicorn.")
    text = access.read_text()
    assert "POST /webhooks/jenkins?" in text and "POST /webhooks/gitlab " in text, text
    assert JENKINS_TOKEN not in text and GITLAB_TOKEN not in text, text


def _access_logged(env: dict[str, str], port: int, tmp_path) -> None:
    """The web started with `env`, sent a token each way, awaited in its access log."""
    access = tmp_path / "access.log"
    with web_process(GUNICORN, env, port, tmp_path / "web.log"):
        for path, headers in [
                (f"/webhooks/jenkins?token={JENKINS_TOKEN}", {}),
                (f"/webhooks/jenkins&token={JENKINS_TOKEN}", {}),  # '&' typed for '?'
                (f"/webhooks/jenkins%3Ftoken={JENKINS_TOKEN}", {}),  # '?' pasted encoded
                (f"/webhooks/gitlab/{GITLAB_TOKEN}", {}),  # the token put in the hook's path
                ("/webhooks/jenkins", {"X-Jenkins-Token": JENKINS_TOKEN}),
                ("/webhooks/gitlab", {"X-Gitlab-Token": GITLAB_TOKEN,
                                      "Authorization": f"Bearer {JENKINS_TOKEN}"})]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}",
                                             headers=headers, method="POST")
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except urllib.error.HTTPError as err:  # 400: the body is no event
                err.close()
        wait_until(lambda: access.read_text().count("\n") >= 7, timeout=10,
                   what="the access log's lines")  # /healthz's too
