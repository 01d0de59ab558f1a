"""GitLab's signing token: verify a delivery's `webhook-signature` (the Standard Webhooks scheme).

GitLab signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 and sends
`webhook-signature: v1,<base64 digest>` (several space-separated signatures are allowed while a
key is rotated). The signing token is `whsec_` + the base64 of the key bytes. A timestamp
further than the allowed skew from our clock is refused, so a captured delivery cannot be
replayed later. Every comparison is constant-time; no reason given names the key.
"""

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class SignatureError(ValueError):
    """The delivery is not signed with our key, or not now; the message is safe to answer."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a signing token: the base64 after `whsec_`; a token without the prefix
    is used as it is (its UTF-8 bytes)."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("the signing token is whsec_ followed by base64") from None


def start(key: bytes, webhook_id: str, timestamp: str) -> hmac.HMAC:
    """The signature of a delivery whose body is still to come: give it the body's pieces
    (update), then `verify` it (a body past the web's limit is read in pieces)."""
    return hmac.new(key, f"{webhook_id}.{timestamp}.".encode(), hashlib.sha256)


def _signature(mac: hmac.HMAC) -> str:
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac.digest()).decode()}"


def sign(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The `v1,<base64>` signature of a delivery (what GitLab sends; tests sign with it too)."""
    mac = start(key, webhook_id, timestamp)
    mac.update(body)
    return _signature(mac)


def verify(key: bytes, *, webhook_id: str | None, timestamp: str | None,
           signatures: str | None, body: bytes, now: float, max_skew_seconds: float,
           mac: hmac.HMAC | None = None) -> None:
    """Raise SignatureError unless one of the signatures is ours and the timestamp is recent.
    With `mac` (`start`, given the whole body), its signature is the one checked, not
    `body`'s (then the body as trimmed: service.trimmed_body)."""
    missing = [name for name, value in zip(HEADERS, (webhook_id, timestamp, signatures))
               if not value]
    if missing:
        raise SignatureError(f"signed delivery expected: missing header {', '.join(missing)}")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError("webhook-timestamp must be whole Unix seconds")
    sent_at = int(timestamp)
    if abs(now - sent_at) > max_skew_seconds:
        raise SignatureError(f"webhook-timestamp is more than {max_skew_seconds:.0f} s away "
                             "from our clock")
    expected = (sign(key, webhook_id, timestamp, body) if mac is None
                else _signature(mac)).encode()
    matched = False
    for candidate in signatures.split(" "):  # compare every one: no early exit on a match
        matched |= hmac.compare_digest(candidate.encode(), expected)
    if not matched:
        raise SignatureError("webhook-signature does not match the signing token")
