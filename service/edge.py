"""The webhook routes as plain WSGI, in front of the Flask app: the request, the body, the answer.

A push webhook is the one request that comes in bursts (a monorepo, a mass rebase), and GitLab
disables a hook that fails 4 times. Its two routes are served here without Flask's request
context, URL map and Response object: the whole of Flask's per-request work was more than the
rest of the stack that a webhook adds to it (bench/results/ingest.md). Every other path goes on
to Flask (health, readiness, /metrics, and 404s).

Answers are JSON, and every rejection is logged with its source address, endpoint and reason,
never the query string (a Jenkins token travels there) nor a header value but a capped
X-Forwarded-For.
"""

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import orjson
from gunicorn.http.errors import NoMoreData, ParseException

from service.body_wait import SERVER_DRAINS
from workers.core.redaction import redact
from workers.telemetry.exposition import ERRORS_TOTAL, WEBHOOK_DURATION_SECONDS, WEBHOOKS_TOTAL

rejections = logging.getLogger("ci_autoscaler.webhooks")
log = logging.getLogger("ci_autoscaler.web")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
# A route: the environ in, (status code, JSON body) out.
Handler = Callable[[Environ], tuple[int, dict[str, Any]]]
_STATUS_LINES = {code: f"{code} {HTTPStatus(code).phrase}" for code in (
    200, 202, 400, 401, 405, 408, 413, 500, 503)}
# A header value in a rejection's log line is cut to this many characters: X-Forwarded-For is
# the client's to write, and gunicorn lets a header be 8 KiB long.
LOGGED_HEADER_CHARS = 256
DRAIN_CHUNK_BYTES = 64 * 1024  # a body that is not kept is read and dropped in pieces this big
# (source, event, result) -> (its webhook counter, its source's duration histogram)
_counters: dict[tuple[str, str, str], tuple[Any, Any]] = {}


class BodyTooLarge(Exception):
    """A body past a limit; `read`: how many of its bytes were read already (a chunked body's
    first limit + 1, in `head`), which a drain after it counts too."""

    def __init__(self, reason: str, read: int = 0, head: bytes = b""):
        super().__init__(reason)
        self.read, self.head = read, head


class BadRequest(Exception):
    pass


class BodyTimedOut(Exception):
    """The body did not arrive in time (the server cut a slow client off: a socket error)."""


def answer(environ: Environ, source: str, event: str, result: str, status: int,
           started: float, **body: Any) -> tuple[int, dict[str, Any]]:
    """Count and time a delivery, log it if it was turned away, and give its answer: its
    status is the metric's result."""
    _count(source, event, result, started)
    if result == "unavailable":
        ERRORS_TOTAL.labels("webhook", "redis_unavailable").inc()
    if result in ("unauthorized", "invalid"):
        log_rejection(environ, status, body.get("reason"), source=source, result=result)
    return status, {"status": result, **body}


def _count(source: str, event: str, result: str, started: float) -> None:
    counted = _counters.get((source, event, result))
    if counted is None:  # .labels() takes a lock and builds its key on every call
        counted = _counters[source, event, result] = (
            WEBHOOKS_TOTAL.labels(source, event, result), WEBHOOK_DURATION_SECONDS.labels(source))
    counted[0].inc()
    counted[1].observe(time.perf_counter() - started)


@contextmanager
def body_refusals_counted(source: str, event: str, started: float) -> Iterator[None]:
    """A body refused while it is read (413 too large, 400 cut short or a bad Content-Length,
    408 too slow; answered and logged by WebhookRoutes) counted as an `invalid` delivery of
    `source`: before, those answers were in no counter, so /metrics read fewer deliveries than
    were sent, and a GitLab disabling the hook for its 413s showed nothing on the dashboard."""
    try:
        yield
    except (BodyTooLarge, BadRequest, BodyTimedOut):
        _count(source, event, "invalid", started)
        raise


def capped(value: str | None) -> str | None:
    """A header value as a log line shows it: at most LOGGED_HEADER_CHARS characters, and
    how many more there were."""
    if value is None or len(value) <= LOGGED_HEADER_CHARS:
        return value
    return f"{value[:LOGGED_HEADER_CHARS]}... ({len(value) - LOGGED_HEADER_CHARS} more)"


def log_rejection(environ: Environ, status: int, reason: str | None, *,
                  secrets: Iterable[str] = (), **fields: Any) -> None:
    """Who was turned away, where and why: the source address, the path (not the query, which
    may hold a Jenkins token) and the reason; never a header value that could be a secret, and
    the one header logged (X-Forwarded-For) capped. A path that is no route (a 404) may hold
    a token too, typed in the plugin's URL without its '?' (`/webhooks/jenkins&token=...`,
    sent as typed) or put in a hook's path: it is redacted (core.redaction, with `secrets`,
    the settings' own)."""
    path = environ.get("PATH_INFO")
    rejections.warning("webhook rejected", extra={
        "status": status, "reason": reason,
        "endpoint": capped(redact(path, secrets) if path else path),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "forwarded_for": capped(environ.get("HTTP_X_FORWARDED_FOR")), **fields})


def read_body(environ: Environ, limit: int | None) -> bytes:
    """The request body, as werkzeug would read it, with BodyTooLarge past the limit: a
    Content-Length over it is refused before a byte is read; a chunked body (the server says
    the stream ends: wsgi.input_terminated) is read up to the limit and one byte more. A body
    with neither is empty, as in werkzeug (nothing says where it would end). A read the server
    cut off (service.http_worker: a client too slow) is BodyTimedOut; a body that ends short of
    its Content-Length (the client closed its end), or a chunked one the server cannot decode,
    is BadRequest."""
    try:
        body, expected = _read(environ, limit)
    except OSError as err:
        raise unread_error(err) from err
    except ParseException as err:
        raise malformed_error(err) from None
    if expected is not None and len(body) < expected:
        raise BadRequest(f"the body ended after {len(body)} of its {expected} bytes")
    return body


def _read(environ: Environ, limit: int | None) -> tuple[bytes, int | None]:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if limit is not None and size > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes")
        return (stream.read(size) if size > 0 else b""), max(size, 0)
    if not environ.get("wsgi.input_terminated"):
        return b"", None
    if limit is None:
        return stream.read(), None
    body = stream.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"the body is over the limit of {limit} bytes", read=len(body),
                           head=body)
    return body, None


def unread_error(err: OSError) -> BodyTimedOut | BadRequest:
    """A read the server cut off (a TimeoutError: service.http_worker's deadline) is 408; a
    chunked body whose client closed its end before the last chunk (gunicorn's NoMoreData) is
    400, as one of known length cut short is: it was taken for a timeout, with gunicorn's own
    words ("No more data after: ...") as the reason."""
    if isinstance(err, NoMoreData) and not isinstance(err, TimeoutError):
        return BadRequest("the chunked body ended before its last chunk")
    return BodyTimedOut(str(err) or type(err).__name__)


def malformed_error(err: ParseException) -> BadRequest:
    """gunicorn's refusal of a chunked body it cannot decode (a chunk size that is no number,
    a chunk without its CRLF, a bad trailer: gunicorn.http.body.ChunkedReader), as the 400 it
    is; it reached the app as an exception, and the webhook answered 500 and logged a bug.
    Its words are not repeated: they quote up to 8 KiB of what the client sent."""
    return BadRequest(f"the chunked body is malformed ({type(err).__name__})")


def drain_body(environ: Environ, limit: int, already: int = 0) -> int:
    """Read and drop what is left of the body, in chunks (a constant memory), so the client
    that sent it gets our answer rather than a reset; how many bytes, with the `already` read
    before (read_body's, told by its BodyTooLarge: a chunked body has no Content-Length to
    judge it by). BodyTooLarge past `limit` bytes in all, BodyTimedOut if the server cut the
    read off. A body of known length the server drains itself (SERVER_DRAINS) is left to it,
    after the answer: read here, a thread was held for as long as the client took to send it,
    and THREADS token holders sending such bodies slowly held every thread."""
    stream, left = environ["wsgi.input"], None
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit():
        left = int(length)
        if left > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes")
        if (server_drains := environ.get(SERVER_DRAINS)) is not None:
            server_drains(left - already)
            return left
    elif not environ.get("wsgi.input_terminated"):
        return 0
    if already > limit:  # read_body's own limit above this one: over it already
        raise BodyTooLarge(f"the body is over {limit} bytes")
    drained = already
    try:
        # a chunked body: never a byte more than one past the limit (that one says it is over)
        while chunk := stream.read(min(DRAIN_CHUNK_BYTES, limit + 1 - drained) if left is None
                                   else min(DRAIN_CHUNK_BYTES, left - drained)):
            drained += len(chunk)
            if drained > limit:
                raise BodyTooLarge(f"the body is over {limit} bytes")
    except OSError as err:
        raise unread_error(err) from err
    except ParseException as err:
        raise malformed_error(err) from None
    return drained


def query_value(environ: Environ, name: str) -> str | None:
    """The first value of a query parameter, as werkzeug's request.args.get gives it."""
    query = environ.get("QUERY_STRING")
    if not query:
        return None
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None


def raw_query_value(environ: Environ, name: str) -> str | None:
    """The first value of a query parameter as it was sent, not decoded: a "+" stays one."""
    prefix = name + "="
    for part in environ.get("QUERY_STRING", "").split("&"):
        if part.startswith(prefix):
            return part[len(prefix):]
    return None


def source_of(path: str) -> str:
    """A webhook route's source: its path is /webhooks/<source> (service.webhooks.routes)."""
    return path.rsplit("/", 1)[-1]


def webhook_path(path: str) -> str:
    """The route a request's path names: its repeated slashes merged, as Flask's router reads
    a path (service.ports.routed), and a final slash left out. A hook's URL pasted with one
    (`https://ci.example.com/webhooks/gitlab/`, or the host's URL ending in '/' before the
    path) was 404 to every delivery, which GitLab counts as failures: four disable the hook."""
    if "//" not in path and not path.endswith("/"):  # as senders send it: nothing to do
        return path
    path = re.sub("/{2,}", "/", "/" + path.lstrip("/"))
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


class WebhookRoutes:
    """POST-only routes by path (webhook_path), each a Handler; anything else goes on to
    `fallback`."""

    def __init__(self, routes: dict[str, Handler], fallback: Callable[..., Iterable[bytes]], *,
                 admitted: dict[str, Callable[[Environ], bool]] | None = None,
                 body_limit: int | None = None):
        self.routes, self.fallback = routes, fallback
        self.admitted, self.body_limit = admitted or {}, body_limit

    def body_wanted(self, environ: Environ) -> int | None:
        """The most body bytes this request's route reads (its limit) when it reads the body:
        a POST that passes its route's token check; else None. The web worker reads such a
        body in its main loop before the request takes a thread (service.http_worker)."""
        admitted = self.admitted.get(webhook_path(environ.get("PATH_INFO", "")))
        if admitted is None or environ.get("REQUEST_METHOD") != "POST" \
                or not admitted(environ):
            return None
        return self.body_limit

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = webhook_path(environ.get("PATH_INFO", ""))
        handler = self.routes.get(path)
        if handler is None:
            return self.fallback(environ, start_response)
        started = time.perf_counter()
        extra: list[tuple[str, str]] = []
        if environ.get("REQUEST_METHOD") != "POST":
            status, body = 405, {"error": "method_not_allowed",
                                 "reason": "this endpoint takes POST only"}
            extra.append(("Allow", "POST"))
        else:
            try:
                status, body = handler(environ)
            except BodyTooLarge as err:
                status, body = 413, {"error": "request_entity_too_large", "reason": str(err)}
                log_rejection(environ, status, str(err))
            except BadRequest as err:
                status, body = 400, {"error": "bad_request", "reason": str(err)}
                log_rejection(environ, status, str(err))
            except BodyTimedOut as err:
                status, body = 408, {"error": "request_timeout", "reason": str(err)}
                log_rejection(environ, status, str(err))
            except Exception:  # a bug, not an event we handled: logged, and a 500
                log.exception("webhook failed", extra={"endpoint": environ.get("PATH_INFO")})
                # counted, as every other answer is: a 500 was in no counter, so a handler
                # failing on every delivery showed as deliveries stopping, not failing. The
                # event kind is not known here (the handler failed before or after it read it).
                _count(source_of(path), "other", "error", started)
                ERRORS_TOTAL.labels("webhook", "unexpected").inc()
                status, body = 500, {"error": "internal_server_error",
                                     "reason": "the webhook failed; see the service's log"}
        data = orjson.dumps(body)
        start_response(_STATUS_LINES[status], [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra])
        return [data]
