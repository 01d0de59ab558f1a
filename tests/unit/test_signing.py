"""GitLab's signing token (Standard Webhooks): what is accepted and what is refused."""

import base64

import pytest

from service.signing import SignatureError, sign, signing_key, verify

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
BODY = b'{"object_kind": "push"}'
NOW = 1_767_000_000


def check(signatures, *, webhook_id="msg_1", timestamp=str(NOW), body=BODY, now=NOW, skew=300):
    verify(KEY, webhook_id=webhook_id, timestamp=timestamp, signatures=signatures, body=body,
           now=now, max_skew_seconds=skew)


def test_whsec_token_is_base64_key_bytes_and_a_plain_token_is_its_utf8():
    assert signing_key(SECRET) == KEY
    assert signing_key("plain-secret") == b"plain-secret"
    with pytest.raises(ValueError) as err:
        signing_key("whsec_not*base64")
    assert "not*base64" not in str(err.value)


def test_known_vector_from_the_standard_webhooks_spec():
    # The example of the Standard Webhooks specification (its README): same key, id, time, body.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_right_signature_passes_even_among_others_while_a_key_is_rotated():
    right = sign(KEY, "msg_1", str(NOW), BODY)
    check(right)
    check(f"v1,AAAA {right} v2,zzz")


@pytest.mark.parametrize("change", [
    {"body": BODY + b" "}, {"webhook_id": "msg_2"}, {"timestamp": str(NOW + 1), "now": NOW + 1}])
def test_anything_changed_after_signing_is_refused(change):
    with pytest.raises(SignatureError, match="does not match"):
        check(sign(KEY, "msg_1", str(NOW), BODY), **change)


def test_a_signature_with_another_key_is_refused():
    with pytest.raises(SignatureError, match="does not match"):
        check(sign(b"x" * 32, "msg_1", str(NOW), BODY))


@pytest.mark.parametrize("offset", [-301, 301, 10**6])
def test_a_timestamp_beyond_the_skew_is_refused(offset):
    stamp = str(NOW + offset)
    with pytest.raises(SignatureError, match="away from our clock"):
        check(sign(KEY, "msg_1", stamp, BODY), timestamp=stamp)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_a_timestamp_within_the_skew_passes(offset):
    stamp = str(NOW + offset)
    check(sign(KEY, "msg_1", stamp, BODY), timestamp=stamp)


@pytest.mark.parametrize("stamp", ["", "1.5", "-1", "abc", "9" * 400, "\u0661\u0662"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(stamp):
    with pytest.raises(SignatureError):
        check(sign(KEY, "msg_1", str(NOW), BODY), timestamp=stamp)


@pytest.mark.parametrize("missing", ["webhook_id", "timestamp", "signatures"])
def test_a_missing_header_is_refused_naming_it(missing):
    values = {"webhook_id": "msg_1", "timestamp": str(NOW),
              "signatures": sign(KEY, "msg_1", str(NOW), BODY)} | {missing: None}
    with pytest.raises(SignatureError, match="missing header"):
        verify(KEY, body=BODY, now=NOW, max_skew_seconds=300, **values)
