"""POST /webhooks/gitlab and /webhooks/jenkins: verify, parse, dedupe, enqueue, answer fast.

Answers: 202 queued (the job is in Redis), 200 duplicate or ignored, 401 bad token or (when a
signing token is set) a bad or stale GitLab signature, 400 bad body, 413 body too large (from
Content-Length before anything is read, or as soon as a chunked body passes the limit), 503 when
Redis could not store the event (the sender retries). Never a 5xx for an event that was handled.
Every rejection is logged with its source address, endpoint and reason, never a token.
"""

import hmac
import logging
import time
from typing import Any

import orjson
from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from service import signing
from service.app import context, log_rejection
from workers.core.errors import InvalidPayload, RetryableError
from workers.core.routing import (
    Ignored, JenkinsNotification, parse_gitlab_push, parse_jenkins_notification, route_push)
from workers.exposition import ERRORS_TOTAL, WEBHOOK_DURATION_SECONDS, WEBHOOKS_TOTAL

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
log = logging.getLogger("ci_autoscaler.webhooks")

PROVISION_TASK = "workers.tasks.provision_agent"
RELEASE_TASK = "workers.tasks.release_agent"
_GITLAB_EVENT_LABELS = {"Push Hook": "push", "Tag Push Hook": "tag_push"}
# (source, event, result) -> (its webhook counter, its source's duration histogram)
_counters: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _answer(source: str, event: str, result: str, status: int, started: float,
            shown: str | None = None, **body: Any) -> tuple[Response, int]:
    """Count, time and answer a delivery; `shown` is the body's status when it says more
    than the metric's result (a STARTED phase is "recorded", counted as "queued")."""
    counted = _counters.get((source, event, result))
    if counted is None:  # .labels() takes a lock and builds its key on every call
        counted = _counters[source, event, result] = (
            WEBHOOKS_TOTAL.labels(source, event, result), WEBHOOK_DURATION_SECONDS.labels(source))
    counted[0].inc()
    counted[1].observe(time.perf_counter() - started)
    if result == "unavailable":
        ERRORS_TOTAL.labels("webhook", "redis_unavailable").inc()
    if result in ("unauthorized", "invalid"):
        log_rejection(status, body.get("reason"), source=source, result=result)
    # orjson and a plain Response: Flask's jsonify goes through its JSON provider and the
    # app's config for the same few bytes
    return Response(orjson.dumps({"status": shown or result, **body}),
                    mimetype="application/json"), status


def _token_ok(given: str | None, expected) -> bool:
    if expected is None:  # only with CI_AUTOSCALER_INSECURE_NO_TOKENS, logged at start
        return True
    return hmac.compare_digest((given or "").encode(), expected.get_secret_value().encode())


def _body() -> bytes:
    """The request body; 413 past the limit. A Content-Length over it is refused before a byte
    is read (werkzeug); a chunked body is read up to the limit, and werkzeug stops there without
    a word, so one more byte from the server's stream tells whether there was more."""
    body = request.get_data()
    limit = request.max_content_length
    if (request.content_length is None and limit is not None and len(body) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge(f"the body is over the limit of {limit} bytes")
    return body


def _json_body(body: bytes | None = None) -> Any:
    try:
        return orjson.loads(_body() if body is None else body)
    except orjson.JSONDecodeError as err:
        raise InvalidPayload(f"body is not valid JSON: {err}") from None


@bp.post("/gitlab")
def gitlab():
    started = time.perf_counter()
    ctx = context()
    # The headers straight from the WSGI environ (what request.headers.get reads, without a
    # trip through the request proxy and the header mapping for each one).
    environ = request.environ
    header = environ.get("HTTP_X_GITLAB_EVENT")
    event = _GITLAB_EVENT_LABELS.get(header or "", "other")
    if not _token_ok(environ.get("HTTP_X_GITLAB_TOKEN"), ctx.settings.gitlab_webhook_token):
        return _answer("gitlab", event, "unauthorized", 401, started,
                       reason="X-Gitlab-Token does not match")
    body = _body()
    if ctx.gitlab_signing_key is not None:
        try:
            signing.verify(ctx.gitlab_signing_key, webhook_id=environ.get("HTTP_WEBHOOK_ID"),
                           timestamp=environ.get("HTTP_WEBHOOK_TIMESTAMP"),
                           signatures=environ.get("HTTP_WEBHOOK_SIGNATURE"), body=body,
                           now=time.time(),
                           max_skew_seconds=ctx.settings.gitlab_webhook_max_skew_seconds)
        except signing.SignatureError as err:
            return _answer("gitlab", event, "unauthorized", 401, started, reason=str(err))
    try:
        push = parse_gitlab_push(header, _json_body(body))
        build = push if isinstance(push, Ignored) else route_push(
            push, ctx.config.routes, received_at=time.time())
    except InvalidPayload as err:
        return _answer("gitlab", event, "invalid", 400, started, reason=str(err))
    if isinstance(build, Ignored):
        return _answer("gitlab", event, "ignored", 200, started, reason=build.reason)
    # webhook-id is the Idempotency-Key under another name, signed when signing is on.
    delivery = (environ.get("HTTP_WEBHOOK_ID") or environ.get("HTTP_IDEMPOTENCY_KEY")
                or environ.get("HTTP_X_GITLAB_EVENT_UUID")
                or f"build:{build.build_key}")
    try:
        request_dict = build.to_dict()
        done = ctx.state.enqueue_once(
            delivery_id=f"gitlab:{delivery}", build_key=build.build_key, func=PROVISION_TASK,
            kwargs={"build": request_dict}, ttl_seconds=ctx.settings.dedupe_ttl_seconds,
            new_build={"status": "queued", "agent": build.agent_name, "job": build.job,
                   "template": build.template, "project": build.project, "ref": build.ref,
                   "sha": build.sha, "received_at": build.received_at,
                   # what the reconcile loop provisions again from if this job is lost
                   "request": orjson.dumps(request_dict).decode()})
    except RetryableError:
        log.error("could not store webhook", extra={"build_key": build.build_key})
        return _answer("gitlab", event, "unavailable", 503, started,
                       reason="could not store the event; retry")
    if not done.queued:
        return _answer("gitlab", event, "duplicate", 200, started, build_key=build.build_key)
    # DEBUG: at INFO this line was a tenth of an accepted push's time (bench/results/ingest.md);
    # the count is in ci_autoscaler_webhooks_total, the build's trail starts with its job in
    # the worker's log, and every rejection and failure above is still logged.
    log.debug("build queued", extra={"build_key": build.build_key, "project": build.project,
                                     "ref": build.ref, "job": build.job})
    return _answer("gitlab", event, "queued", 202, started, build_key=build.build_key)


def _our_build(ctx, note: JenkinsNotification) -> str | None:
    if note.agent:
        return ctx.state.build_for_agent(note.agent)
    if note.queue_id is not None:
        return ctx.state.build_for_queue_item(note.queue_id)
    return None


@bp.post("/jenkins")
def jenkins():
    started = time.perf_counter()
    ctx = context()
    given = request.args.get("token") or request.headers.get("X-Jenkins-Token")
    if not _token_ok(given, ctx.settings.jenkins_webhook_token):
        return _answer("jenkins", "other", "unauthorized", 401, started,
                       reason="token does not match")
    try:
        note = parse_jenkins_notification(_json_body())
    except InvalidPayload as err:
        return _answer("jenkins", "other", "invalid", 400, started, reason=str(err))
    event = "completed" if note.done else "started" if note.phase == "STARTED" else "other"
    try:
        build_key = _our_build(ctx, note)
        if build_key is None:
            return _answer("jenkins", event, "ignored", 200, started,
                           reason="build is not on a ci-autoscaler agent")
        if note.phase == "STARTED":
            # Stored in Redis, nothing to run: counted with the queued events, answered 200.
            first = ctx.state.mark_running(build_key, jenkins_build=note.number)
            if first and first.get("pod_created_at"):  # measured once per build
                ctx.metrics.agent_started(first.get("template", "unknown"),
                                          pod_created_at=float(first["pod_created_at"]))
            return _answer("jenkins", event, "queued", 200, started, shown="recorded",
                           build_key=build_key)
        if not note.done:
            return _answer("jenkins", event, "ignored", 200, started,
                           reason=f"phase {note.phase} needs no action", build_key=build_key)
        agent = note.agent or ctx.state.get_build(build_key).get("agent")
        done = ctx.state.enqueue_once(
            delivery_id=f"jenkins:release:{build_key}", build_key=build_key, func=RELEASE_TASK,
            kwargs={"build_key": build_key, "agent_name": agent, "reason": "build_completed"},
            ttl_seconds=ctx.settings.dedupe_ttl_seconds,
            update={"status": "done", "result": note.status or "UNKNOWN",
                   "jenkins_build": note.number, "finished_at": time.time()})
    except RetryableError:
        return _answer("jenkins", event, "unavailable", 503, started,
                       reason="could not store the event; retry")
    if not done.queued:
        return _answer("jenkins", event, "duplicate", 200, started, build_key=build_key)
    log.info("release queued", extra={"build_key": build_key, "phase": note.phase})
    return _answer("jenkins", event, "queued", 202, started, build_key=build_key)
