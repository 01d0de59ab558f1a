"""What a body read for its fields only (workers.core.push_payload, notification_payload) needs
so that it is refused where orjson, which parsed the whole body before, refused it, and its
fields read as orjson read them. Pure: orjson and msgspec are parsers, no I/O.

msgspec checks the syntax of what it skips, not all of what orjson checked:
- the UTF-8 of a string it skips is not checked (RFC 8259, 8.1: JSON between systems is
  UTF-8; orjson refuses the body), and a string it decodes that is not UTF-8 raises a
  UnicodeDecodeError, no DecodeError;
- a number past a double (1e400) is skipped, and decoded raises a ValidationError (orjson:
  "number is infinity when parsed as double");
- an integer past 64 bits is decoded as an int (orjson reads it as a float, which a field
  that must be an int refuses, and orjson cannot write it back: the spool);
- a body nested past Python's recursion limit raises a RecursionError (orjson refuses past
  1024 levels: "depth limit exceeded").
Each exception but InvalidPayload made the webhook's answer a 500, logged as its own bug.
"""

import codecs
import re
from dataclasses import dataclass
from typing import Any

import orjson

from workers.core.errors import InvalidPayload

# Push options and project ids are a few bytes in any push of GitLab's; one past this is not
# read (no size hint, no id: a build never fails for either), so it costs no memory.
MAX_RAW_FIELD_BYTES = 64 * 1024
_UTF8_CHUNK = 64 * 1024  # the body's UTF-8 checked this much at a time (a constant memory)
DEPTH_REFUSED = "body is not valid JSON: it is nested too deeply"


def _not_utf8() -> InvalidPayload:
    return InvalidPayload("body is not valid JSON: it is not UTF-8")


def check_utf8(body: bytes) -> None:
    """Raises InvalidPayload unless the whole body is UTF-8 (as orjson refused it). A body
    all ASCII (a push's, as GitLab writes most) is UTF-8: bytes.isascii says so in C with no
    copy and stops at the first byte past 127. Any other is decoded in chunks and dropped:
    its text is never made whole (4 bytes a character). Decoded for every push, an ASCII
    body cost a 64 KiB str per chunk: a 4 KiB push's parse took 1.8 times as long as before
    the check (bench/ingest.py's push), a 1 MiB one's 1.2 times."""
    if body.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(view), _UTF8_CHUNK):
            decoder.decode(view[start:start + _UTF8_CHUNK])
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        raise _not_utf8() from None


def small(raw: Any) -> Any:
    """A raw field's value (msgspec.Raw), read by orjson as the whole body was, if it is there
    and small (else None); raises InvalidPayload where orjson refuses it."""
    if not 0 < len(raw) <= MAX_RAW_FIELD_BYTES:
        return None
    try:
        return orjson.loads(memoryview(raw))
    except orjson.JSONDecodeError as err:
        raise InvalidPayload(f"body is not valid JSON: {err}") from None


# msgspec's words for what it refused (msgspec/_core.c): "Expected `str` of length <= 255 -
# at `$.ref`", "Expected `int`, got `str` - at `$.build.number`", "Object missing required
# field `phase` - at `$.build`"; "JSON is malformed: ..." is a DecodeError that is not a
# ValidationError, and no field's.
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_TOO_LONG = re.compile(r"^Expected `str` of length <= (\d+)")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`")
_EXPECTED = re.compile(r"^Expected `(\w+)`")


@dataclass(frozen=True)
class Refusal:
    """Where and why msgspec refused a body's field (its ValidationError's text)."""
    where: str  # the field's path ("build.number"), "" for the body itself
    missing: str | None  # the field missing there, if that was the reason
    expected: str | None  # the type it wanted ("str", "object"), if that was
    longest: int | None  # the length a string passed, if that was


def refusal(text: str) -> Refusal:
    at, too_long = _AT.search(text), _TOO_LONG.match(text)
    missing, expected = _MISSING.match(text), _EXPECTED.match(text)
    return Refusal(where=at.group(1) if at else "",
                   missing=missing.group(1) if missing else None,
                   expected=expected.group(1) if expected else None,
                   longest=int(too_long.group(1)) if too_long else None)
