"""Pacing against an API's rate limit, from the headers of its last answer. Pure.

GitLab answers every throttled request 429 with `Retry-After` (seconds), and (GitLab.com on
every API answer, self-managed at least on a 429) `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset` (Unix time); see GitLab's docs, "User and IP rate limits", "Response
headers". A client that stops before the quota is gone leaves room for the other users of the
same token and never meets the 429 at all: `pause` says how long to wait before the next call.
"""

from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from dataclasses import dataclass

# Keep this share of the quota for others: below it, wait for the window to reset.
RESERVE_FRACTION = 0.1


@dataclass(frozen=True)
class Pause:
    seconds: float
    reason: str


NO_PAUSE = Pause(0.0, "")


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """The answer's Retry-After in seconds, never below 0 (None: none, or neither form).
    RFC 9110 10.2.3: delay-seconds or an HTTP-date (a front's maintenance page may give the
    date), timed by the answer's Date as RateLimit-Reset is."""
    seconds = _number(headers, "Retry-After")
    if seconds is None:
        try:
            at = parsedate_to_datetime(headers.get("Retry-After") or "")
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = _utc(at).timestamp() - _server_now(headers, now)
    return max(0.0, seconds)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)  # "-0000": UTC


def _server_now(headers: Mapping[str, str], now: float) -> float:
    """The time on the answering server's clock: its Date header (RFC 9110, 6.6.1; whole
    seconds), else ours. RateLimit-Reset is a Unix time on GitLab's clock: timed by ours, a
    clock minutes behind waited minutes more (past the longest wait a call takes, which
    ended every pass once the quota ran low), one ahead did not wait at all."""
    value = headers.get("Date")
    try:
        at = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return now
    if at is None:
        return now
    return _utc(at).timestamp()


def pause(headers: Mapping[str, str], *, status: int, now: float) -> Pause:
    """The wait before the next call, given the last answer's status and headers (a mapping
    that looks names up case-insensitively, as requests' headers do)."""
    if status == 429:
        asked = retry_after(headers, now=now)
        if asked is not None:
            return Pause(asked, f"429: Retry-After {asked:g}s")
    limit = _number(headers, "RateLimit-Limit")
    remaining = _number(headers, "RateLimit-Remaining")
    reset = _number(headers, "RateLimit-Reset")
    if remaining is None or reset is None:
        return NO_PAUSE if status != 429 else Pause(1.0, "429 without Retry-After")
    reserve = max(1.0, (limit or 0.0) * RESERVE_FRACTION)
    wait = max(0.0, reset - _server_now(headers, now))
    if status == 429 or (remaining <= reserve and wait > 0):
        return Pause(wait, f"{remaining:g} of {limit or 0:g} requests left in the window: "
                           "waiting for its reset")
    return NO_PAUSE
