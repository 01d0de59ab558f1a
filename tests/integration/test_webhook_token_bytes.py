"""Webhook tokens of non-ASCII characters, sent as the senders send them to the real web process
(gunicorn with service/gunicorn.conf.py): GitLab puts its secret token into `X-Gitlab-Token` as
its UTF-8 bytes (Ruby's Net::HTTP writes a header's string as it is), and a proxy that moves the
Jenkins token into `X-Jenkins-Token` does the same. gunicorn, as every WSGI server (PEP 3333),
gives a header's bytes as a latin-1 string; read as UTF-8 text, such a token never matched:
every push was 401, and GitLab disables a hook after four failed deliveries."""

import http.client
import json

import pytest
import redis

from tests.support.payloads import fixture_bytes
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, web_env, web_process

TOKEN = "Schlüssel-für-Straße-\u00e9t\u00e9-\u2603"  # what an operator typed into GitLab


@pytest.fixture(scope="module")
def web(tmp_path_factory, redis_server):
    tmp = tmp_path_factory.mktemp("token-bytes")
    # the session's Redis, as redis_url leaves it (flushed): else the fixture commit pushed by
    # a module run before on this pytest worker is "in flight" here, and the push a duplicate
    redis.Redis.from_url(redis_server.url).flushdb()
    port = free_port()
    env = web_env(redis_server.url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1",
                  GITLAB_WEBHOOK_TOKEN=TOKEN, JENKINS_WEBHOOK_TOKEN=TOKEN)
    with web_process(GUNICORN, env, port, tmp / "web.log") as proc:
        proc.port, proc.log = port, tmp / "web.log"
        yield proc


def _post(port: int, path: str, body: bytes, headers: dict[str, bytes]) -> tuple[int, dict]:
    """One POST whose header values go as the given bytes (http.client would send a str's
    latin-1, and refuses a character past it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", path)
        for name, value in (headers | {"Content-Type": b"application/json",
                                       "Content-Length": str(len(body)).encode()}).items():
            conn.putheader(name, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_gitlab_token_of_non_ascii_characters_is_taken_as_gitlab_sends_it(web):
    push = fixture_bytes("gitlab_push_real_lrz.json")
    status, answer = _post(web.port, "/webhooks/gitlab", push, {
        "X-Gitlab-Event": b"Push Hook", "X-Gitlab-Token": TOKEN.encode(),
        "Idempotency-Key": b"token-bytes-1"})
    assert (status, answer["status"]) == (202, "queued"), answer
    # another token, or this one with its letters' accents dropped, is still refused
    for wrong in (TOKEN[:-1].encode(), TOKEN.encode("ascii", "ignore")):
        status, answer = _post(web.port, "/webhooks/gitlab", push, {
            "X-Gitlab-Event": b"Push Hook", "X-Gitlab-Token": wrong})
        assert (status, answer["status"]) == (401, "unauthorized"), answer


def test_a_jenkins_token_of_non_ascii_characters_is_taken_in_its_header_and_its_query(web):
    note = fixture_bytes("jenkins_notification_finalized.json")
    status, answer = _post(web.port, "/webhooks/jenkins", note,
                           {"X-Jenkins-Token": TOKEN.encode()})
    assert (status, answer["status"]) == (200, "ignored"), answer  # not a build of ours
    query = "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode())
                    for c in TOKEN)
    status, answer = _post(web.port, f"/webhooks/jenkins?token={query}", note, {})
    assert (status, answer["status"]) == (200, "ignored"), answer
    status, answer = _post(web.port, "/webhooks/jenkins", note,
                           {"X-Jenkins-Token": TOKEN[:-1].encode()})
    assert status == 401, answer


def test_a_token_of_non_ascii_characters_in_a_hook_urls_path_is_not_logged(web):
    """A token put in the hook's path (`/webhooks/gitlab/<token>`) is a 404, logged with its
    path redacted with the settings' secrets (service.edge.log_rejection). gunicorn gives the
    path as its UTF-8 bytes read as latin-1 (PEP 3333), which the token's own text never
    matched: the log showed it ("Schl\u00c3\u00bcssel...")."""
    path = "/webhooks/gitlab/" + "".join(
        c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in TOKEN)
    status, answer = _post(web.port, path, b"{}", {})
    assert status == 404, answer
    rejected = [line for line in web.log.read_text().splitlines()
                if "webhook rejected" in line and "/webhooks/gitlab/" in line]
    assert rejected and all("[redacted]" in line for line in rejected), rejected
    assert not any("ssel-f" in line or "Stra" in line for line in rejected), rejected
