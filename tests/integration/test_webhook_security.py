"""The webhook edge's defences on a real redis-server: signatures, body limits, what is
logged about a rejection, and a fast answer from the spool when Redis is gone."""

import base64
import io
import logging
import os
import signal
import time

import pytest

from service.signing import sign
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app
from tests.support.payloads import fixture_bytes
from workers.core.errors import ConfigError

PUSH = fixture_bytes("gitlab_push_real_lrz.json")
KEY = bytes(range(1, 33))
SIGNING_TOKEN = "whsec_" + base64.b64encode(KEY).decode()


def post(client, body=PUSH, *, token=GITLAB_TOKEN, **headers):
    headers = {"X-Gitlab-Event": "Push Hook", "Content-Type": "application/json",
               "X-Gitlab-Token": token, **headers}
    return client.post("/webhooks/gitlab", data=body, headers=headers)


def signed(body=PUSH, *, webhook_id="msg_1", at=None, key=KEY):
    stamp = str(int(time.time() if at is None else at))
    return {"webhook-id": webhook_id, "webhook-timestamp": stamp,
            "webhook-signature": sign(key, webhook_id, stamp, body)}


@pytest.fixture
def signing_app(redis_url):
    return make_app(redis_url, gitlab_webhook_signing_token=SIGNING_TOKEN)


@pytest.fixture
def signing_client(signing_app):
    return signing_app.test_client()


def test_a_signed_delivery_is_queued_and_deduped_on_its_webhook_id(signing_client, redis_conn):
    first = post(signing_client, **signed())
    assert first.status_code == 202
    again = post(signing_client, **signed(webhook_id="msg_1"))
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert redis_conn.exists("cia:delivery:gitlab:msg_1")
    assert redis_conn.llen("cia:intake") == 1


@pytest.mark.parametrize("case,reason", [
    ("unsigned", "missing header"),
    ("other key", "does not match"),
    ("body changed", "does not match"),
    ("stale", "away from our clock"),
    ("from the future", "away from our clock"),
])
def test_a_bad_signature_is_401_with_the_reason_and_nothing_is_stored(
        signing_client, redis_conn, case, reason):
    headers = {
        "unsigned": {},
        "other key": signed(key=b"k" * 32),
        "body changed": signed(PUSH + b" "),
        "stale": signed(at=time.time() - 301),
        "from the future": signed(at=time.time() + 301),
    }[case]
    response = post(signing_client, **headers)
    assert response.status_code == 401
    assert response.json["status"] == "unauthorized" and reason in response.json["reason"]
    assert redis_conn.dbsize() == 0


def test_with_both_configured_both_must_pass(signing_client, redis_conn):
    assert post(signing_client, token="wrong", **signed()).status_code == 401
    assert redis_conn.dbsize() == 0


def test_the_skew_is_configurable(redis_url):
    client = make_app(redis_url, gitlab_webhook_signing_token=SIGNING_TOKEN,
                      gitlab_webhook_max_skew_seconds=10).test_client()
    assert post(client, **signed(at=time.time() - 30)).status_code == 401
    assert post(client, **signed(at=time.time() - 5)).status_code == 202


def test_without_a_signing_token_signature_headers_are_not_required(client):
    assert post(client).status_code == 202


def test_a_signing_token_that_is_not_whsec_base64_refuses_the_start_without_showing_it(
        redis_url):
    with pytest.raises(ConfigError) as err:
        make_app(redis_url, gitlab_webhook_signing_token="whsec_sec%ret")
    assert "GITLAB_WEBHOOK_SIGNING_TOKEN" in str(err.value.problems)
    assert "sec%ret" not in str(err.value.problems)


def test_a_chunked_push_over_the_limit_is_read_trimmed_and_queued(redis_url, redis_conn):
    client = make_app(redis_url, max_body_bytes=1024).test_client()
    # No Content-Length: a chunked body, as gunicorn hands it on (wsgi.input_terminated).
    response = client.post("/webhooks/gitlab", input_stream=io.BytesIO(PUSH),
                           headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token":
                                    GITLAB_TOKEN, "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 202 and response.json["status"] == "queued", response.json
    assert redis_conn.llen("cia:intake") == 1


def test_a_signed_push_over_the_limit_is_checked_on_its_whole_body(redis_url, redis_conn):
    """Read in pieces and kept trimmed, a push's signature is still of every byte sent."""
    client = make_app(redis_url, gitlab_webhook_signing_token=SIGNING_TOKEN,
                      max_body_bytes=1024).test_client()
    assert post(client, **signed(PUSH.replace(b"}", b" }", 1))).status_code == 401
    assert redis_conn.dbsize() == 0
    assert post(client, **signed()).status_code == 202
    assert redis_conn.llen("cia:intake") == 1


def test_a_chunked_body_under_the_limit_is_read_whole(client, stored):
    response = client.post("/webhooks/gitlab", input_stream=io.BytesIO(PUSH),
                           headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token":
                                    GITLAB_TOKEN, "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 202 and stored() == 1


def test_rejections_are_logged_with_source_endpoint_and_reason_but_no_secret(
        redis_url, caplog):
    client = make_app(redis_url, gitlab_webhook_signing_token=SIGNING_TOKEN,
                      max_body_bytes=8192).test_client()
    caplog.set_level(logging.INFO)
    post(client, token="attacker-guess-123", **{"X-Forwarded-For": "203.0.113.9"})
    post(client, **signed(key=b"k" * 32))
    post(client, b"x" * 9000, **signed(b"x" * 9000))
    client.post(f"/webhooks/jenkins?token=attacker-guess-456", json={})
    client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", data=b"[1,")
    rejected = [r for r in caplog.records if r.getMessage() == "webhook rejected"]
    # the push over the limit: read in pieces, and no JSON (400), logged as the others
    assert [r.status for r in rejected] == [401, 401, 400, 401, 400]
    assert {r.endpoint for r in rejected} == {"/webhooks/gitlab", "/webhooks/jenkins"}
    assert all(r.remote_addr == "127.0.0.1" and r.reason for r in rejected)
    assert rejected[0].forwarded_for == "203.0.113.9"
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    for secret in ("attacker-guess-123", "attacker-guess-456", GITLAB_TOKEN, JENKINS_TOKEN,
                   SIGNING_TOKEN, SIGNING_TOKEN.removeprefix("whsec_"), repr(KEY)):
        assert secret not in text


@pytest.mark.parametrize("path", [
    f"/webhooks/jenkins&token={JENKINS_TOKEN}",  # '&' typed for '?' in the plugin's URL
    f"/webhooks/jenkins;token={JENKINS_TOKEN}",
    f"/webhooks/jenkins/token={JENKINS_TOKEN}",
    f"/webhooks/gitlab/{GITLAB_TOKEN}"])  # the token put in the hook's path
def test_a_mistyped_webhook_path_is_logged_without_the_token_in_it(redis_url, caplog, path):
    """A webhook path that is no route (404) is logged with its path, where a token typed in
    the plugin's URL without its '?' (Java's URL sends it as typed) or put in a hook's path
    stood whole in the web's log."""
    client = make_app(redis_url).test_client()
    caplog.set_level(logging.INFO)
    assert client.post(path, json={}).status_code == 404
    [rejected] = [r for r in caplog.records if r.getMessage() == "webhook rejected"]
    assert rejected.endpoint.startswith("/webhooks/"), rejected.endpoint
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert JENKINS_TOKEN not in text and GITLAB_TOKEN not in text, text


def test_with_redis_stopped_the_webhook_spools_within_a_second(own_redis):
    client = make_app(own_redis.url).test_client()
    assert post(client, **{"Idempotency-Key": "warm"}).status_code == 202  # pooled connection
    own_redis.stop()
    for key in ("k-1", "k-2"):  # the stale pooled connection, then a fresh connect
        started = time.monotonic()
        response = post(client, **{"Idempotency-Key": key})
        assert response.status_code == 202 and response.json["status"] == "spooled"
        assert time.monotonic() - started < 1.0


def test_with_redis_hung_the_webhook_spools_after_one_timeout_not_more(own_redis):
    client = make_app(own_redis.url, redis_timeout_seconds=0.5).test_client()
    assert post(client, **{"Idempotency-Key": "warm"}).status_code == 202
    pid = int((own_redis.directory / "redis.pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        response = post(client, **{"Idempotency-Key": "k-1"})
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 202 and response.json["status"] == "spooled"
    assert 0.5 <= elapsed < 0.95  # one timeout; a retry on timeout would double it


def test_a_chunked_body_past_a_body_limit_above_gitlab_s_is_413_not_read_whole(redis_url,
                                                                             redis_conn):
    """CI_AUTOSCALER_MAX_BODY_BYTES may be set above GitLab's 25 MB (the chart allows any
    size). A chunked body past it had read_body's limit + 1 bytes counted already, over 25 MB:
    the drain asked the stream for a negative size, which reads the whole rest at once
    (gunicorn's Body.read, io's), and a body that ended there was answered 200 ignored, though
    GitLab sends none over 25 MB (REALITY.md): it is 413 at once."""
    gitlab_limit = 25 * 2**20
    client = make_app(redis_url, max_body_bytes=gitlab_limit + 1024).test_client()
    response = client.post("/webhooks/gitlab", input_stream=io.BytesIO(
                               b" " * (gitlab_limit + 1025)),
                           headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token":
                                    GITLAB_TOKEN, "Transfer-Encoding": "chunked"},
                           # werkzeug's client gives a BytesIO its length: a chunked
                           # body has none
                           environ_overrides={"wsgi.input_terminated": True,
                                              "CONTENT_LENGTH": ""})
    assert response.status_code == 413, (response.status_code, response.get_data()[:300])
    assert b"over 26214400 bytes" in response.get_data()
    assert redis_conn.dbsize() == 0
