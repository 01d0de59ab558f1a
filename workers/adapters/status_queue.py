"""The builds whose GitLab commit status may have changed, in Redis, for the sender
(workers.commit_statuses) to read their records and post what is new.

Keys (under the prefix):
  ``commit-status:due``  sorted set: build key -> when to look at it (now, or a retry's time)
  ``commit-status:on``   set by a running sender, with a TTL: while it is absent (commit
                         statuses off, or no sender alive) a touch writes nothing, so nothing
                         piles up that no one reads
  ``commit-status:off``  why a sender turned commit statuses off until a restart (a token
                         without the api scope), for /metrics; deleted when a sender starts
  ``commit-status:refused:<project>``  hash: build key -> "<when> <ref>" (ref empty: any;
                         a bare ref: written before the time was) of each build whose status
                         GitLab refused for the token's access (403 on that ref, 404 for the
                         project) within a day: posted again, oldest refusal first, once a
                         status of the project (on that ref) is taken (workers.commit_statuses)
  ``build:<key>``        the build's own hash (workers.adapters.redis_state) keeps
                         ``status_sent`` (the last state GitLab took), ``status_name`` (the
                         status's name), ``status_pipeline_id`` (GitLab's pipeline it is
                         in, or ``none``), ``status_attempts`` (failed tries since) and
                         ``status_gitlab_failures`` (those of them GitLab answered with a
                         failure of its own: workers.adapters.gitlab.GitLabFailed), written
                         only while the build exists

Collapsed by construction: a build is in the set once however often it is touched, and the
sender reads the newest record when it sends. A touch keeps an entry's later time (NX), so a
build waiting out a retry is not tried sooner; a retry's time only moves later (GT).
"""

from typing import Any

import redis

from workers.core.commit_status import (NAME_FIELD, NO_PIPELINE, PIPELINE_FIELD,
                                        PROJECT_ID_FIELD)
from workers.core.errors import RetryableError

# KEYS[1] the due set; ARGV[1] now, ARGV[2] how many. Taken off the set as they are read, so
# a touch while the sender works on a build puts it back for another look.
_CLAIM = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #keys > 0 then redis.call('ZREM', KEYS[1], unpack(keys)) end
return keys
"""
# KEYS[1] the build's hash; ARGV field, value pairs (an empty value deletes the field); then
# ARGV[#ARGV] a field to increment, or ''. Nothing for a build whose state is gone.
_WRITE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
for i = 1, #ARGV - 1, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if ARGV[#ARGV] ~= '' then return redis.call('HINCRBY', KEYS[1], ARGV[#ARGV], 1) end
return 1
"""
SENT_FIELD = "status_sent"
ATTEMPTS_FIELD = "status_attempts"
GITLAB_FAILURES_FIELD = "status_gitlab_failures"


# Builds due at one time are claimed in their keys' order: refused builds posted again are
# stamped this far apart (before now), so they are claimed in the order they were refused.
_ORDER_STEP_SECONDS = 0.001


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _refusal(value: str) -> tuple[float | None, str]:
    """A refusal's "<when> <ref>" (a ref holds no space: git check-ref-format); a bare ref
    (before the time was written): no time."""
    at, space, ref = value.partition(" ")
    try:
        return (float(at), ref) if space else (None, value)
    except ValueError:
        return None, value


class StatusQueue:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self.due_key = f"{prefix}commit-status:due"
        self.on_key = f"{prefix}commit-status:on"
        self.off_key = f"{prefix}commit-status:off"
        self._claim = connection.register_script(_CLAIM)
        self._write = connection.register_script(_WRITE)

    def _build(self, build_key: str) -> str:
        return f"{self.prefix}build:{build_key}"

    def touch(self, build_key: str, *, now: float) -> bool:
        """The build's status may have changed: look at it now (unless a retry is due later).
        False when no sender is on. Raises redis.RedisError."""
        # Two plain commands, not a script (the web touched on a STARTED once, and its Redis
        # user may run no script of its own; the worker's intake mover touches now). A sender
        # switched off between them leaves one entry due, read and dropped by the next
        # sender's sweep.
        if not self.redis.exists(self.on_key):
            return False
        return bool(self.redis.zadd(self.due_key, {build_key: now}, nx=True))

    def touch_all(self, build_keys: list[str], *, now: float) -> None:
        """touch, for many builds, by the sender itself (which is on)."""
        if build_keys:
            self.redis.zadd(self.due_key, dict.fromkeys(build_keys, now), nx=True)

    def switch_on(self, *, ttl_seconds: float) -> None:
        """A sender is alive: touches count, for this long unless renewed."""
        self.redis.set(self.on_key, "1", px=max(1, int(ttl_seconds * 1000)))

    def switch_off(self) -> None:
        """No sender can post: touches stop, and what was due is dropped (a sender that
        starts again finds the builds still open by its sweep)."""
        self.redis.delete(self.on_key, self.due_key)

    def turned_off(self, reason: str | None) -> None:
        """Commit statuses turned off until a restart, for this reason (None: they are not)."""
        if reason:
            self.redis.set(self.off_key, reason)
        else:
            self.redis.delete(self.off_key)

    def off_reason(self) -> str | None:
        reason = self.redis.get(self.off_key)
        return _s(reason) if reason else None

    def claim(self, *, now: float, limit: int) -> list[str]:
        """Up to `limit` builds due by `now`, earliest first, taken off the set."""
        try:
            return [_s(k) for k in self._claim(keys=[self.due_key], args=[now, limit])]
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def later(self, *build_keys: str, at: float) -> None:
        """Look at these builds again at `at` (or later, if they are due later already)."""
        if build_keys:
            self.redis.zadd(self.due_key, dict.fromkeys(build_keys, at), gt=True)

    def next_due(self) -> float | None:
        first = self.redis.zrange(self.due_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def backlog(self) -> int:
        return int(self.redis.zcard(self.due_key))

    def sent(self, build_key: str, state: str, name: str = "", pipeline_id: str = "") -> None:
        """GitLab has this state for the build (in its status named `name`, in pipeline
        `pipeline_id`): remember it, and forget the failed tries."""
        self._write(keys=[self._build(build_key)], args=[
            SENT_FIELD, state, ATTEMPTS_FIELD, "", GITLAB_FAILURES_FIELD, "",
            *((NAME_FIELD, name) if name else ()),
            *((PIPELINE_FIELD, pipeline_id) if pipeline_id else ()), ""])

    def _refused_key(self, project: str) -> str:
        return f"{self.prefix}commit-status:refused:{project.lower()}"

    def _refusals(self, key: str) -> dict[str, tuple[float | None, str]]:
        """Build key -> (when refused, None if not recorded; the ref, "" for any)."""
        return {_s(k): _refusal(_s(v)) for k, v in self.redis.hgetall(key).items()}

    def refused(self, build_key: str, project: str, ref: str | None, *, now: float,
                ttl_seconds: float) -> None:
        """GitLab refused the build's status for the token's access to the project (on
        `ref`; None: to the whole project). Kept `ttl_seconds`: the refusals of the project
        older than that are dropped (each refusal renews the key's TTL, so a project refused
        for good kept every build it ever had); one without a time is given this one's."""
        key = self._refused_key(project)
        old, untimed = [], {}
        for other, (at, where) in self._refusals(key).items():
            if at is None:
                untimed[other] = f"{now!r} {where}"
            elif at < now - ttl_seconds:
                old.append(other)
        with self.redis.pipeline() as pipe:
            if old:
                pipe.hdel(key, *old)
            pipe.hset(key, mapping={**untimed, build_key: f"{now!r} {ref or ''}"})
            pipe.expire(key, max(1, int(ttl_seconds)))
            pipe.execute()

    def taken_again(self, project: str, ref: str | None, *, now: float,
                    taken: str = "") -> list[str]:
        """A status of the project on `ref` was taken (that of build `taken`, which is no
        longer refused): the builds whose status was refused there (or in the whole project)
        are forgotten as refused, their last state as sent (GitLab never took it), and due
        now, in the order they were refused (two runs of one commit and job share a status:
        the later one's state is the one to show); their keys, in that order."""
        key = self._refused_key(project)
        refusals = self._refusals(key)
        matching = [k for k, (_, where) in refusals.items() if where in ("", ref or "")]
        if taken in refusals and taken not in matching:
            matching.append(taken)
        if not matching:
            return []
        self.redis.hdel(key, *matching)
        again = sorted((k for k in matching if k != taken),
                       key=lambda k: (refusals[k][0] or 0.0, k))
        for build_key in again:
            self._write(keys=[self._build(build_key)], args=[SENT_FIELD, "", ""])
        if again:  # claimed earliest first (claim): due by `now`, one step apart, in order
            self.redis.zadd(self.due_key, {k: now - (len(again) - i) * _ORDER_STEP_SECONDS
                                           for i, k in enumerate(again)}, nx=True)
        return again

    def forget_pipeline(self, build_key: str) -> None:
        """The pipeline of the build's statuses is gone: the next goes into the newest one."""
        self._write(keys=[self._build(build_key)], args=[PIPELINE_FIELD, NO_PIPELINE, ""])

    def forget_project_id(self, build_key: str) -> None:
        """The build's statuses go to its project by path from now on (sender._project_id)."""
        self.redis.hdel(self._build(build_key), PROJECT_ID_FIELD)

    def failed_attempt(self, build_key: str, *, gitlab_failure: bool = False) -> int:
        """One more failed try for the build; how many now (0: the build is gone). With
        `gitlab_failure`, one more of GitLab's own failures too (GITLAB_FAILURES_FIELD)."""
        if gitlab_failure:
            self._write(keys=[self._build(build_key)], args=[GITLAB_FAILURES_FIELD])
        return int(self._write(keys=[self._build(build_key)], args=[ATTEMPTS_FIELD]) or 0)
