"""What the reconcile leader records of its passes in Redis, for the status page and /metrics:
when the last pass ended without error, and, while passes fail, since when, how many in a row,
and the last one's error. A pass that raises writes no capacity state, and one without Jenkins
writes it all the same; neither would show an operator that passes fail, nor since when. The
catch-up from GitLab records its passes alike, under its own name (workers.engine.catchup).

Keys (under the prefix; ``catchup-pass-`` for the catch-up's):
  ``reconcile-last``     hash: ``at`` (the last pass without error), ``instance``
  ``reconcile-failing``  hash, present while passes fail: ``since`` (the first of them),
                         ``at`` (the last), ``passes`` (how many), ``error`` (the last one's,
                         as workers.core.errors.shown gives it: no secret), ``partial`` (1 when
                         that pass went on without its Jenkins steps), ``instance``
"""

from dataclasses import dataclass

import redis

RECONCILE = "reconcile"
CATCH_UP = "catchup-pass"


@dataclass(frozen=True)
class Passes:
    last_ok_at: float | None  # None: no pass without error yet
    failing_since: float | None  # None: the last pass ended without error
    failed_at: float | None = None
    failed_passes: int = 0
    error: str = ""
    partial: bool = False  # the last failed pass did what needs no Jenkins

    def idle_seconds(self, now: float) -> float:
        """How long since a pass last ended, with or without error; +Inf if none has."""
        ended = [t for t in (self.last_ok_at, self.failed_at) if t is not None]
        return max(0.0, now - max(ended)) if ended else float("inf")

    def failing_seconds(self, now: float) -> float:
        """How long passes have failed; 0 while they pass."""
        return 0.0 if self.failing_since is None else max(0.0, now - self.failing_since)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PassStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:", name: str = RECONCILE):
        self.redis = connection
        self.last_key, self.failing_key = f"{prefix}{name}-last", f"{prefix}{name}-failing"

    def passed(self, instance: str, at: float) -> None:
        """A pass ended without error: the failing streak, if any, is over."""
        with self.redis.pipeline() as pipe:
            pipe.hset(self.last_key, mapping={"instance": instance, "at": at})
            pipe.delete(self.failing_key)
            pipe.execute()

    def failed(self, instance: str, at: float, error: str, *, partial: bool) -> None:
        """A pass failed with this error (already fit to show); the first of a streak keeps
        its time."""
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(self.failing_key, "since", at)
            pipe.hset(self.failing_key, mapping={"at": at, "error": error, "instance": instance,
                                                 "partial": int(partial)})
            pipe.hincrby(self.failing_key, "passes", 1)
            pipe.execute()

    def forget(self) -> None:
        """No pass recorded (the loop turned off: what it last said is no longer news)."""
        self.redis.delete(self.last_key, self.failing_key)

    def read(self) -> Passes:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.last_key, "at")
            pipe.hgetall(self.failing_key)
            last, failing = pipe.execute()
        failing = {_s(k): _s(v) for k, v in failing.items()}
        number = lambda v: float(v) if v is not None else None  # noqa: E731
        return Passes(last_ok_at=number(last), failing_since=number(failing.get("since")),
                      failed_at=number(failing.get("at")),
                      failed_passes=int(failing.get("passes") or 0),
                      error=failing.get("error", ""), partial=failing.get("partial") == "1")
