"""POST /webhooks/gitlab and /webhooks/jenkins: verify, parse, dedupe, enqueue, answer fast.

Served as plain WSGI in front of Flask (service.edge): each handler takes the WSGI environ and
gives a status and a JSON body.

Answers: 202 queued (the event, a push or a release, is in the intake in Redis) or spooled (a
push Redis could not take, in the pod's spool: service.store), 200 duplicate or ignored, 401 bad
token or (when a signing token is set) a bad or stale GitLab signature, 400 bad body, 413 body
too large (over GitLab's own 25 MB; a notification over 64 MiB), 503 when neither Redis nor the
spool could store the event (a STARTED or an ending Jenkins notification Redis cannot take is
spooled too: the plugin ignores our answer; the drainer hands it to `notification` later), or
(`busy`) when nothing could read it: a body past the limit that found others being read.
Never a 5xx for an event that was handled. A body past the web's limit is read in pieces and
trimmed to the fields read (service.trimmed_body), not refused: a real push or COMPLETED can be
that large, and neither sender sends it again. A GitLab push with a field that breaks a rule
(workers.core.validation) is 200 ignored with the reason, and logged: a 4xx would count towards
GitLab disabling the hook.
Every rejection is logged with its source address, endpoint and reason, never a token.
"""

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from service import signing, store
from service.app import WebContext
from service.edge import (
    BodyTooLarge, Environ, Handler, answer, body_refusals_counted, drain_body, log_rejection,
    query_value, raw_query_value, read_body)
from service.gitlab_instances import InstanceGuard
from service.trimmed_body import Busy, read_trimmed
from workers.adapters.redis_connect import within
from workers.adapters.spool import SpoolRefused
from workers.engine import intake, started
from workers.core.errors import InvalidPayload, RetryableError
from workers.core.keys import delivery_run
from workers.core.json_trim import TrimmedTooLarge
from workers.core.notification_payload import NOTIFICATION_SPEC, notification_fields
from workers.core.push_payload import PUSH_SPEC
from workers.core.notifications import job_matches, moved_job, other_run
from workers.core.routing import (
    GITLAB_BUILD_EVENTS, SYSTEM_HOOK, Ignored, JenkinsNotification, Push, not_a_build_event,
    parse_gitlab_push_body, parse_jenkins_notification, push_commit_key, route_push)

log = logging.getLogger("ci_autoscaler.webhooks")

_GITLAB_EVENT_LABELS = {"Push Hook": "push", "Tag Push Hook": "tag_push"}
# GitLab's largest webhook body (its docs, "Webhooks"): a body past the limit but within this is
# read to its end and ignored; a larger one cannot come from GitLab and is 413.
GITLAB_MAX_BODY_BYTES = 25 * 2**20
# A notification past the limit is read in pieces up to this (a constant memory, within the
# body's deadline: service.http_worker); past it, 413.
JENKINS_MAX_BODY_BYTES = 64 * 2**20


def routes(ctx: WebContext) -> dict[str, Handler]:
    """The webhook routes of service.edge.WebhookRoutes, bound to the app's context."""
    instances = InstanceGuard(ctx.settings.gitlab_instance)
    return {"/webhooks/gitlab": lambda environ: gitlab(ctx, environ, instances),
            "/webhooks/jenkins": lambda environ: jenkins(ctx, environ)}


def admissions(ctx: WebContext) -> dict[str, Callable[[Environ], bool]]:
    """Each route's token check, which its handler makes before it reads the body: the web
    worker reads a body before the request takes a thread only for those that pass it."""
    return {"/webhooks/gitlab": lambda environ: _gitlab_admitted(ctx, environ),
            "/webhooks/jenkins": lambda environ: _jenkins_admitted(ctx, environ)}


def _token_ok(given: str | None, expected) -> bool:
    """Whether `given` is the token, compared in constant time. A header's value comes as a
    WSGI server gives it (PEP 3333: its bytes as a latin-1 str), so a token of non-ASCII
    characters, which GitLab sends as its UTF-8 bytes, is compared as those bytes: read as
    UTF-8, every delivery of it was 401 and GitLab disabled the hook. A value decoded already
    (a query's, a test client's) is compared as its UTF-8 too."""
    if expected is None:  # only with CI_AUTOSCALER_INSECURE_NO_TOKENS, logged at start
        return True
    want = expected.get_secret_value().encode("utf-8", "surrogateescape")  # as the env held it
    given = given or ""
    decoded = given.encode("utf-8", "surrogatepass")
    try:
        sent = given.encode("latin-1")
    except UnicodeEncodeError:  # not a header's bytes: a character past latin-1
        sent = decoded
    # both compared, no early exit: the time taken does not tell which matched
    return hmac.compare_digest(sent, want) | hmac.compare_digest(decoded, want)


def _gitlab_admitted(ctx: WebContext, environ: Environ) -> bool:
    return _token_ok(environ.get("HTTP_X_GITLAB_TOKEN"), ctx.settings.gitlab_webhook_token)


def _jenkins_admitted(ctx: WebContext, environ: Environ) -> bool:
    """The token of the query, else of the header. The plugin sends its endpoint's URL as
    typed (java.net.URL encodes nothing), so a token's "+" (base64's alphabet) arrives raw,
    which the query's decoding reads as a space: the value as sent is compared too."""
    expected = ctx.settings.jenkins_webhook_token
    given = query_value(environ, "token") or environ.get("HTTP_X_JENKINS_TOKEN")
    if _token_ok(given, expected):
        return True
    raw = raw_query_value(environ, "token")
    return raw is not None and raw != given and _token_ok(raw, expected)


def gitlab(ctx: WebContext, environ: Environ,
           instances: InstanceGuard | None = None) -> tuple[int, dict[str, Any]]:
    began = time.perf_counter()
    header = environ.get("HTTP_X_GITLAB_EVENT")
    event = _GITLAB_EVENT_LABELS.get(header or "", "other")
    if not _gitlab_admitted(ctx, environ):
        return answer(environ, "gitlab", event, "unauthorized", 401, began,
                       reason="X-Gitlab-Token does not match")
    with body_refusals_counted("gitlab", event, began):  # 413, 400, 408 counted too
        try:
            body, mac = _gitlab_body(ctx, environ, header)
        except Busy as busy:
            return _busy(environ, "gitlab", event, began, busy)
        except _NoBuild as unread:
            return answer(environ, "gitlab", event, "ignored", 200, began, reason=str(unread))
        except TrimmedTooLarge as too:
            # a field no push has (a 20 MB ref): ignored, as one past its bound is (a 413
            # would count towards GitLab disabling the hook); the catch-up builds its commit
            # if it is real
            reason = f"{too}; ignored"
            log_rejection(environ, 200, reason, source="gitlab", result="ignored")
            return answer(environ, "gitlab", event, "ignored", 200, began, reason=reason)
        except InvalidPayload as bad:
            return answer(environ, "gitlab", event, "invalid", 400, began, reason=str(bad))
    if (key := ctx.gitlab_signing_key) is not None:
        try:
            signing.verify(key, webhook_id=environ.get("HTTP_WEBHOOK_ID"),
                           timestamp=environ.get("HTTP_WEBHOOK_TIMESTAMP"),
                           signatures=environ.get("HTTP_WEBHOOK_SIGNATURE"), body=body,
                           mac=mac, now=time.time(),
                           max_skew_seconds=ctx.settings.gitlab_webhook_max_skew_seconds)
        except signing.SignatureError as err:
            return answer(environ, "gitlab", event, "unauthorized", 401, began, reason=str(err))
    if instances is not None and (other := instances.refused(environ)) is not None:
        # Another GitLab's push (service.gitlab_instances): 200, as for any push not ours
        log_rejection(environ, 200, other, source="gitlab", result="ignored")
        return answer(environ, "gitlab", event, "ignored", 200, began, reason=other)
    # webhook-id is the Idempotency-Key under another name, signed when signing is on. With
    # none of them, a redelivery cannot be told from a new push: each is a delivery of its own
    # (a run of the commit still in flight dedupes it all the same).
    delivery = (environ.get("HTTP_WEBHOOK_ID") or environ.get("HTTP_IDEMPOTENCY_KEY")
                or environ.get("HTTP_X_GITLAB_EVENT_UUID") or f"none:{uuid.uuid4().hex}")
    try:
        push = parse_gitlab_push_body(header, body)
        if isinstance(push, Push):  # a system hook's push is counted as the push it is
            event = str(push.event)
        commit = "" if isinstance(push, Ignored) else push_commit_key(push)
        received_at = time.time()
        build = push if isinstance(push, Ignored) else route_push(
            push, ctx.config.routes, received_at=received_at, commit=commit,
            delivery=delivery_run(delivery, received_at, ctx.settings.dedupe_ttl_seconds),
            installation=ctx.settings.installation)
    except InvalidPayload as err:
        return answer(environ, "gitlab", event, "invalid", 400, began, reason=str(err))
    if isinstance(build, Ignored):
        if build.refused:  # a field broke a rule: 200 all the same (a 4xx disables the hook)
            log_rejection(environ, 200, build.reason, source="gitlab", result="ignored")
        if build.skipped is not None:
            _not_built(ctx, build.skipped, build.reason)
        return answer(environ, "gitlab", event, "ignored", 200, began, reason=build.reason)
    try:
        # One short script: the delivery deduped, and the commit's run in flight if there is
        # one; the event appended to the intake; the worker's mover writes its RQ job and build
        # state (workers.engine.intake). While Redis cannot take it, the pod's spool does.
        pushed = store.push(ctx, delivery_id=f"gitlab:{delivery}", mark=build.build_key,
                            record=intake.record(f"gitlab:{delivery}", build.to_dict(),
                                                 project_id=push.project_id),
                            commit=commit, received_at=build.received_at)
    except store.Unstored as err:
        return answer(environ, "gitlab", event, "unavailable", 503, began, reason=str(err))
    if pushed.result == "duplicate":
        return answer(environ, "gitlab", event, "duplicate", 200, began,
                      build_key=pushed.build_key, reason=pushed.reason)
    # DEBUG: at INFO this line was a tenth of an accepted push's time (bench/results/ingest.md);
    # the count is in ci_autoscaler_webhooks_total, the build's trail starts with the mover's
    # "build queued" in the worker's log, and every rejection and failure above is logged.
    log.debug("push stored", extra={"build_key": build.build_key, "project": build.project,
                                    "ref": build.ref, "job": build.job})
    return answer(environ, "gitlab", event, pushed.result, 202, began,
                  build_key=build.build_key)


def _not_built(ctx: WebContext, push: Push, reason: str) -> None:
    """A push its pusher asked to build nothing (ci.skip, [skip ci]): marked seen for the
    catch-up, and logged with why, as the push an operator looks for ("why was this not
    built?") is in no other line of the log: only the answer, which GitLab keeps a while in
    the hook's Recent events, said why, and /metrics counts it with every other ignored one."""
    extra = {"project": push.project, "ref": push.ref, "sha": push.sha, "reason": reason}
    if not store.skipped(ctx, commit=push_commit_key(push)):
        log.warning("push asking for no build not marked for the catch-up: Redis did "
                    "not answer; a catch-up pass may build its head", extra=extra)
    log.info("push not built: its pusher asked for no build", extra=extra)


class _NoBuild(Exception):
    """An event that starts no build (a merge request's, a pipeline's) past the limit: drained
    unread, as nothing of it is read however small."""


def _gitlab_body(ctx: WebContext, environ: Environ,
                 header: str | None) -> tuple[bytes, hmac.HMAC | None]:
    """A push's body, and (when it was read in pieces and a signing token is set) its
    signature so far. Past the limit, a real push can be (its commits' messages and file
    lists), and GitLab never sends it again: it is read to its end in pieces, up to GitLab's
    largest, and kept trimmed to the fields a push is read for (service.trimmed_body); a
    larger one cannot come from GitLab and is 413. An event that builds nothing is drained
    (_NoBuild): trimmed, it took one of the two reads a push past the limit needs, and its
    bad JSON was a 400 where a small one's is 200 ignored."""
    try:
        return read_body(environ, ctx.settings.max_body_bytes), None
    except BodyTooLarge as err:
        if header not in GITLAB_BUILD_EVENTS and header != SYSTEM_HOOK:
            drain_body(environ, GITLAB_MAX_BODY_BYTES, already=err.read)
            raise _NoBuild(f"{err}: {not_a_build_event(header).reason}") from None
        mac = None if ctx.gitlab_signing_key is None else signing.start(
            ctx.gitlab_signing_key, environ.get("HTTP_WEBHOOK_ID") or "",
            environ.get("HTTP_WEBHOOK_TIMESTAMP") or "")
        return read_trimmed(environ, PUSH_SPEC, too_large=err, mac=mac,
                            kept_limit=ctx.settings.max_body_bytes,
                            most=GITLAB_MAX_BODY_BYTES), mac


def _busy(environ: Environ, source: str, event: str, began: float,
          busy: Busy) -> tuple[int, dict[str, Any]]:
    """A valid delivery past the limit that nothing read, as OVERSIZED_READS others were
    being read (service.trimmed_body): 503, as when nothing could store it, and logged. It was
    200 ignored, a push GitLab showed as delivered and lost (it never re-sends; a person can
    press Resend on a failed one, with its Idempotency-Key). A wait for a read to end would
    hold a thread as a read does: token holders' slow bodies would hold every thread."""
    log_rejection(environ, 503, str(busy), source=source, result="busy")
    return answer(environ, source, event, "busy", 503, began, reason=str(busy))


def _jenkins_body(ctx: WebContext, environ: Environ) -> bytes:
    """A notification's body; past the limit, read in pieces and trimmed to the fields read
    (service.trimmed_body): the plugin's COMPLETED carries the run's log lines (its
    endpoint's "Log" setting), artifacts and changed files, and it ignores our answer, so a
    413 lost the end of the build (its agent was released only by a reconcile pass)."""
    try:
        return read_body(environ, ctx.settings.max_body_bytes)
    except BodyTooLarge as err:
        try:
            return read_trimmed(environ, NOTIFICATION_SPEC, too_large=err,
                                kept_limit=ctx.settings.max_body_bytes,
                                most=JENKINS_MAX_BODY_BYTES)
        except TrimmedTooLarge as too:
            raise BodyTooLarge(str(too)) from None


def _our_build(ctx: WebContext, note: JenkinsNotification) -> tuple[str | None, dict]:
    """The build the event is about, and its agent and Jenkins run as recorded."""
    key = ctx.state.build_for_notification(job=note.full_job, number=note.number,
                                           agent=note.agent, queue_id=note.queue_id)
    if key is None:
        return None, {}
    agent, number, status, job = ctx.state.build_fields(
        [key], "agent", "jenkins_build", "status", "job")[0]
    return key, {"agent": agent, "jenkins_build": number, "status": status, "job": job}


def jenkins(ctx: WebContext, environ: Environ) -> tuple[int, dict[str, Any]]:
    began = time.perf_counter()
    if not _jenkins_admitted(ctx, environ):
        return answer(environ, "jenkins", "other", "unauthorized", 401, began,
                       reason="token does not match")
    try:
        with body_refusals_counted("jenkins", "other", began):  # 413, 400, 408 counted too
            body = _jenkins_body(ctx, environ)
        # the fields read only (a body parsed whole could hold a million objects)
        payload = notification_fields(body)
        note = parse_jenkins_notification(payload)
    except Busy as busy:  # a reconcile pass releases the agent of its build
        return _busy(environ, "jenkins", "other", began, busy)
    except InvalidPayload as err:
        return answer(environ, "jenkins", "other", "invalid", 400, began, reason=str(err))
    event = "completed" if note.done else "started" if note.phase == "STARTED" else "other"
    if note.phase != "STARTED" and not note.done:
        # QUEUED, NONE...: nothing to record or run, whoever's build it is (no Redis read)
        return answer(environ, "jenkins", event, "ignored", 200, began,
                      reason=f"phase {note.phase} needs no action")
    # The push's gate (service.redis_gate): while Redis fails, one attempt at a time waits on
    # it and the others are spooled at once. Ungated, every notification held a web thread for
    # the whole Redis timeout while Redis hung, the pushes behind them queued past GitLab's
    # 10 s (its deliveries count as failed; four disable the hook).
    probe = ctx.redis_gate.enter()
    if probe is None and ctx.spool is not None:
        spooled = _spool_note(ctx, environ, event, began, body, payload,
                              "redis unavailable: the last attempt failed, another is "
                              "trying it")
        if spooled is not None:
            return spooled
    probe = bool(probe)
    ok = False
    try:
        # the push's budget (service.store): its reads and writes, then the spool
        with within(ctx.settings.redis_timeout_seconds):
            result, status, extra = notification(ctx, note, received_at=time.time())
        ok = True
    except RetryableError as err:
        # Redis cannot say whose build it is, nor store what it says: the spool keeps the
        # notification, and its drainer hands it to `notification` once Redis is back. The
        # plugin ignores our answer, so a 503 would lose it (REALITY.md).
        return _spool_note(ctx, environ, event, began, body, payload, str(err),
                           refused_answers=True)  # never None: a refusal answers 503
    finally:
        ctx.redis_gate.leave(probe, ok)
    return answer(environ, "jenkins", event, result, status, began, **extra)


def _spool_note(ctx: WebContext, environ: Environ, event: str, began: float, body: bytes,
                payload: Any, redis_error: str, *, refused_answers: bool = False
                ) -> tuple[int, dict[str, Any]] | None:
    """The answer for a notification spooled; when the spool refuses it, the 503, or (with
    `refused_answers` False, the gate's spool-at-once) None: the caller tries Redis then."""
    try:
        spooled = store.note(ctx, delivery_id="jenkins:" + hashlib.sha256(body).hexdigest(),
                             payload=payload, received_at=time.time(),
                             redis_error=redis_error, refused_raises=refused_answers)
    except store.Unstored as unstored:
        return answer(environ, "jenkins", event, "unavailable", 503, began,
                      reason=str(unstored))
    except SpoolRefused:
        return None
    return answer(environ, "jenkins", event, spooled.result,
                  202 if spooled.result == "spooled" else 200, began)


def spooled_notification(ctx: WebContext, payload: Any, received_at: float) -> None:
    """A notification the spool kept while Redis was away, acted on as the webhook would
    have (the drainer's hand-off: workers.engine.spool_drain); raises RetryableError while
    Redis still cannot take it, so the row stays."""
    try:
        note = parse_jenkins_notification(payload)
    except InvalidPayload as err:  # checked before it was spooled: another version's row
        log.error("spooled notification is not one; dropped", extra={"error": str(err)})
        return
    result, _status, extra = notification(ctx, note, received_at=received_at)
    log.info("spooled notification handled", extra={"result": result, "phase": note.phase,
                                                    **extra})


def notification(ctx: WebContext, note: JenkinsNotification, *, received_at: float
                 ) -> tuple[str, int, dict[str, Any]]:
    """What a STARTED or an ending notification does: (result, HTTP status, answer fields).
    Raises RetryableError when Redis cannot be read or written."""
    build_key, known = _our_build(ctx, note)
    if build_key is None:
        return "ignored", 200, {"reason": "build is not on a ci-autoscaler agent"}
    if other := other_run(known["jenkins_build"], note.number):
        # A Replay or Rebuild of the build (workers.core.notifications.other_run). Of a
        # finished build, the agent adopted for it reports it by job and number
        # (workers.engine.adoption).
        return "ignored", 200, {"reason": other.reason, "build_key": build_key}
    if note.phase != "STARTED" and not note.done:
        return "ignored", 200, {"reason": f"phase {note.phase} needs no action",
                                "build_key": build_key}
    if (refused := job_matches(known["job"], note.full_job)) \
            and not moved_job(known["job"], note.full_job):
        # Not the build's job: a forged or misdirected notification (workers.core.
        # notifications); the release job would also find Jenkins does not confirm it.
        # One of its name in another folder may be the build's job, moved while the
        # build ran: the release job asks Jenkins whether our agent built that run.
        ctx.metrics.notification_ignored(refused.kind)
        log.warning("notification ignored", extra={"build_key": build_key,
                                                   "reason": refused.reason})
        return "ignored", 200, {"reason": refused.reason, "build_key": build_key}
    if note.phase == "STARTED":
        return _started(ctx, note, build_key, received_at)
    agent = known["agent"] or note.agent  # the build's own (a Replay names the old one)
    # Stored in the intake, as a push is: the mover makes it a release job, which records
    # what the notification says and releases the agent (the web may not write RQ's keys).
    delivery = f"jenkins:release:{build_key}"
    done = ctx.state.intake.push(
        delivery_id=delivery, mark=build_key, ttl_seconds=ctx.settings.dedupe_ttl_seconds,
        record=intake.release_record(delivery, build_key=build_key, agent_name=agent,
                                     notification={
            "result": note.status or "UNKNOWN", "jenkins_build": note.number,
            "finished_at": received_at, "job": note.full_job,
            **({"build_url": note.build_url} if note.build_url else {})}))
    if not done.queued:
        return "duplicate", 200, {"build_key": build_key}
    log.info("release queued", extra={"build_key": build_key, "phase": note.phase})
    return "queued", 202, {"build_key": build_key}


def _started(ctx: WebContext, note: JenkinsNotification, build_key: str, received_at: float
             ) -> tuple[str, int, dict[str, Any]]:
    """A STARTED of our build, stored in the intake as an end is: the worker's mover marks
    the build running, with its run's page and commit status (workers.engine.started), the
    web's checks made again there. The web's Redis user writes no build record (issue 17: a
    stolen web pod could write a build's `request`, which the worker triggers Jenkins from).
    Nothing is queued to run: answered 200 and counted "recorded", its word (counted
    "queued", a STARTED was read as a job queued where none was). The agent's start is not
    measured here: a Pipeline's STARTED comes before any agent connects;
    workers.agent_starts.online measures it to the computer online."""
    delivery = f"jenkins:started:{build_key}:{note.number}"
    done = ctx.state.intake.push(
        delivery_id=delivery, mark=build_key, ttl_seconds=ctx.settings.dedupe_ttl_seconds,
        record=started.record(delivery, build_key=build_key, job=note.full_job,
                              number=note.number, agent=note.agent, queue_id=note.queue_id,
                              build_url=note.build_url, received_at=received_at))
    if not done.queued:
        return "duplicate", 200, {"build_key": build_key}
    return "recorded", 200, {"build_key": build_key}
