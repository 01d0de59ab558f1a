"""Where a webhook's push (or a Jenkins notification Redis cannot take) is stored: Redis's
intake, or, when Redis cannot take it within the web's Redis timeout, the pod's spool (workers.adapters.spool), from which the drainer
(workers.engine.spool_drain) moves it into the intake once Redis is back.

Either way it is durable before the answer: Redis (AOF, appendfsync always in the chart) or a
committed, fsynced SQLite row. Only when neither can take it is the push refused (Unstored:
503, logged and counted), because GitLab never sends a failed delivery again by itself.
"""

import logging
from dataclasses import dataclass
from typing import Any

from service.app import WebContext
from workers.adapters.catchup_store import mark_skipped
from workers.adapters.redis_connect import within
from workers.adapters.spool import SpoolRefused
from workers.core.errors import RetryableError
from workers.telemetry.exposition import SPOOL_REFUSALS_TOTAL
from workers.engine.spool_drain import SpooledPush, spool_note, spool_push

log = logging.getLogger("ci_autoscaler.webhooks")


class Unstored(Exception):
    """Neither Redis nor the spool could take the event; the message is the answer's reason."""


@dataclass(frozen=True)
class Stored:
    result: str  # "queued" (in Redis), "spooled", or "duplicate"
    build_key: str
    reason: str = ""


def push(ctx: WebContext, *, delivery_id: str, mark: str, record: bytes,
         commit: str | None, received_at: float | None = None) -> Stored:
    """Store a routed push (Intake.push's dedupe by delivery id, by the commit's run in
    flight, and by the catch-up's run made after `received_at`); raises Unstored when neither
    Redis nor the spool can take it."""
    event = SpooledPush(delivery_id=delivery_id, mark=mark, record=record,
                        ttl_seconds=ctx.settings.dedupe_ttl_seconds, commit=commit,
                        run_ttl_seconds=ctx.settings.run_mark_ttl_seconds,
                        received_at=received_at)
    probe = ctx.redis_gate.enter()
    if probe is None and ctx.spool is not None:  # Redis failed the last attempt and another
        try:  # is trying it: spooled at once
            return _spool(ctx, event, "redis unavailable: the last attempt failed, another "
                                      "is trying it", refused_raises=False)
        except SpoolRefused:  # a full spool: this push waits on Redis after all
            pass
    probe = bool(probe)
    ok = False
    try:
        # one budget for the whole attempt, whatever the number of sentinels and retries
        with within(ctx.settings.redis_timeout_seconds):
            pushed = event.push_to(ctx.state.intake)
        ok = True
    except RetryableError as err:
        return _spool(ctx, event, str(err))
    finally:
        ctx.redis_gate.leave(probe, ok)
    if not pushed:
        return Stored("duplicate", pushed.build_key, pushed.reason)
    return Stored("queued", pushed.build_key)


def skipped(ctx: WebContext, *, commit: str) -> bool:
    """Mark a push that asked for no build (ci.skip) as seen by the catch-up, within the web's
    Redis timeout; whether Redis took it. Nothing is stored of the push, so nothing is
    spooled: without the mark (Redis away), a catch-up pass may build its head later."""
    probe = ctx.redis_gate.enter()
    if probe is None:  # Redis failed the last attempt and another is trying it
        return False
    ok = False
    try:
        with within(ctx.settings.redis_timeout_seconds):
            mark_skipped(ctx.state.redis, prefix=ctx.state.prefix, commit=commit,
                         ttl_seconds=ctx.settings.run_mark_ttl_seconds)
        ok = True
    except RetryableError:
        pass
    finally:
        ctx.redis_gate.leave(bool(probe), ok)
    return ok


def note(ctx: WebContext, *, delivery_id: str, payload: Any, received_at: float,
         redis_error: str, refused_raises: bool = True) -> Stored:
    """Spool a Jenkins notification Redis could not take (its parsed JSON body): "spooled",
    or "duplicate" when this very body is spooled already (the plugin sends it again only
    after a failed connection); raises Unstored when the spool cannot take it either
    (SpoolRefused itself, not counted or logged, with `refused_raises` False: the caller
    tries Redis then, as `push` does)."""
    if ctx.spool is None:
        raise Unstored("could not store the event: Redis is unavailable and there is no spool")
    try:
        new = spool_note(ctx.spool, delivery_id, payload, received_at=received_at)
    except SpoolRefused as err:
        if not refused_raises:
            raise
        SPOOL_REFUSALS_TOTAL.labels(err.reason).inc()
        log.error("could not store notification: Redis unavailable and the spool refused it",
                  extra={"reason": err.reason, "error": str(err), "redis_error": redis_error})
        raise Unstored(f"could not store the event: Redis is unavailable and {err}") from err
    if new:
        log.warning("notification spooled: Redis unavailable", extra={"redis_error": redis_error})
    return Stored("spooled" if new else "duplicate", "")


def _spool(ctx: WebContext, event: SpooledPush, redis_error: str, *,
           refused_raises: bool = True) -> Stored:
    """Spool the push; raises Unstored when the spool refuses it (SpoolRefused itself, not
    counted or logged, with `refused_raises` False: the caller tries Redis then)."""
    if ctx.spool is None:
        raise Unstored("could not store the event: Redis is unavailable and there is no spool")
    try:
        new = spool_push(ctx.spool, event)
    except SpoolRefused as err:
        if not refused_raises:
            raise
        SPOOL_REFUSALS_TOTAL.labels(err.reason).inc()
        log.error("could not store webhook: Redis unavailable and the spool refused it",
                  extra={"build_key": event.mark, "reason": err.reason, "error": str(err),
                         "redis_error": redis_error})
        raise Unstored(f"could not store the event: Redis is unavailable and {err}") from err
    if not new:
        return Stored("duplicate", event.mark, "delivery already taken (spooled)")
    log.warning("push spooled: Redis unavailable", extra={"build_key": event.mark,
                                                          "redis_error": redis_error})
    return Stored("spooled", event.mark)
