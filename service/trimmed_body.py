"""A webhook body past the web's limit (service.edge.read_body), read to its end in pieces and
kept trimmed to the fields its parser reads (workers.core.json_trim): a real GitLab push or
Jenkins COMPLETED larger than the limit is acted on, and costs a web worker its pieces and the
fields kept, never the body (the chart gives 2 workers 384 MiB).
"""

import hmac
import threading

from gunicorn.http.errors import ParseException

from service.edge import (
    DRAIN_CHUNK_BYTES, BadRequest, BodyTooLarge, Environ, drain_body, malformed_error,
    unread_error)
from workers.core.errors import InvalidPayload
from workers.core.json_trim import Spec, TrimmedTooLarge, Trimmer

# Bodies past the limit one web worker reads at once. Each holds its thread until its end has
# arrived (up to the body's 10 s: service.http_worker), so token holders sending such bodies
# slowly would hold every thread (tests/integration/test_slow_clients.py); 2 of the 8 leave the
# rest to pushes and /healthz. A real one is rare (a push of a commit that vendors a tree).
OVERSIZED_READS = 2
_reading = threading.BoundedSemaphore(OVERSIZED_READS)


class Busy(Exception):
    """OVERSIZED_READS bodies past the limit are being read already: this one is dropped
    unread (the server drains it after the answer)."""


def read_trimmed(environ: Environ, spec: Spec, *, too_large: BodyTooLarge, kept_limit: int,
                 most: int, mac: hmac.HMAC | None = None) -> bytes:
    """The body read_body refused for its size (`too_large`: what it read of it), as a JSON
    object of the members `spec` names. BodyTooLarge past `most` bytes in all (with a
    Content-Length over it, before a byte is read); InvalidPayload when it is no JSON object,
    TrimmedTooLarge when the members kept are over `kept_limit` (the rest of the body is
    drained then, so the client gets the answer); Busy when OVERSIZED_READS others are being
    read (drained too); BadRequest or BodyTimedOut as read_body.
    `mac`, a signature being computed, is given every byte of the body."""
    length = environ.get("CONTENT_LENGTH")
    left = int(length) if length and length.isdigit() else None
    read = too_large.read
    if (left if left is not None else read) > most:  # (a limit set above `most`)
        raise BodyTooLarge(f"the body is over {most} bytes")
    if not _reading.acquire(blocking=False):
        drain_body(environ, most, already=read)
        raise Busy(f"{OVERSIZED_READS} other bodies past the limit are being read")
    try:
        return _read(environ, spec, read, left, too_large.head, kept_limit, most, mac)
    finally:
        _reading.release()


def _read(environ: Environ, spec: Spec, read: int, left: int | None, head: bytes,
          kept_limit: int, most: int, mac: hmac.HMAC | None) -> bytes:
    stream, trimmer = environ["wsgi.input"], Trimmer(spec, kept_limit)
    try:
        if head:  # a chunked body's first limit + 1 bytes, read already
            if mac is not None:
                mac.update(head)
            trimmer.feed(head)
        while (want := min(DRAIN_CHUNK_BYTES, most + 1 - read) if left is None
               else min(DRAIN_CHUNK_BYTES, left - read)) > 0:
            piece = stream.read(want)
            if not piece:
                break
            read += len(piece)
            if read > most:
                raise BodyTooLarge(f"the body is over {most} bytes")
            if mac is not None:
                mac.update(piece)
            trimmer.feed(piece)
        if left is not None and read < left:
            raise BadRequest(f"the body ended after {read} of its {left} bytes")
        return trimmer.close()
    except OSError as err:
        raise unread_error(err) from err
    except ParseException as err:
        raise malformed_error(err) from None
    except (InvalidPayload, TrimmedTooLarge):
        drain_body(environ, most, already=read)
        raise
