"""The UTF-8 check of a webhook body read for its fields only (workers.core.partial_json): on
the webhook's hot path (every push and notification), so an ASCII body, as GitLab writes most,
costs no decoding; any other still refuses what orjson refuses."""

import tracemalloc

import orjson
import pytest

from tests.support.payloads import fixture
from workers.core.errors import InvalidPayload
from workers.core.partial_json import check_utf8


def _push(size: int, message: str) -> bytes:
    """A real push (gitlab_push_real_lrz.json) grown with commits to `size` bytes."""
    payload = fixture("gitlab_push_real_lrz.json")
    commit = payload["commits"][0]
    body = orjson.dumps(payload)
    while len(body) < size:
        payload["commits"].append({**commit, "message": message})
        body = orjson.dumps(payload)
    return body


def test_an_ascii_push_is_checked_without_decoding_it():
    # Decoded in 64 KiB chunks, a 1 MiB push made a 64 KiB str per chunk: a peak past 64 KiB
    # and 3 times the time of an ASCII scan (bench: 158 us against 49 us)
    body = _push(1 << 20, "m" * 300)
    assert body.isascii()
    tracemalloc.start()
    try:
        check_utf8(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4096, peak


@pytest.mark.parametrize("tail", [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82"])
def test_a_body_not_ascii_is_still_refused_where_it_is_not_utf8(tail):
    # the bad bytes past the first 64 KiB, after valid non-ASCII text (orjson refuses each)
    body = _push(200_000, "é 日本 " * 20)
    bad = body[:-1] + b',"x":"' + tail + b'"}'
    orjson.loads(body[:-1] + b',"x":"ok"}')  # refused for its bytes only
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(bad)
    check_utf8(body)
    with pytest.raises(InvalidPayload, match="not UTF-8"):
        check_utf8(bad)
