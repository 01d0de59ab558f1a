"""What the catch-up remembers in Redis between passes, so that a restart forgets nothing.

Per project (by its numeric id, which a rename keeps: workers.core.catchup_project.memory_name;
versions before kept it by path, which is read once and forgotten), the commit each branch and
tag pointed at when the last pass listed it: a ref
whose commit is unchanged costs nothing on the next pass. A project with no memory (never
looked at, or not looked at for longer than the memory lives: the build state's TTL, after
which the commits' run marks that say "built" are gone too) gets a baseline pass, and so do
the tags (or branches) of a project the last pass did not list. Whether a
commit was built is read from the intake's run mark (``commit:<key>``, workers.adapters.intake),
which webhooks and catch-ups write alike, or from the mark a webhook leaves for a push whose
pusher asked for no build (``skipped:<key>``, workers.core.push_skip). Also the state of our GitLab hook per project, for
/metrics, living three passes unless renewed; a pass that listed every project forgets the
state of those it did not list. And per name the config gives a project, the project GitLab
last led it to (its id and path then), so that the project is still found by its id once
another group or project takes that path.

Keys (under the prefix):
  ``catchup:heads:id:<id>``    hash: ref -> commit sha; ``pass_at``: time of the last pass;
                               ``kinds``: the kinds of ref it listed (push, tag_push)
                               (``catchup:heads:<path>``: the same, by versions before)
  ``catchup:absent:id:<id>``   hash: ref -> 1, the refs the last pass did not list but kept
                               (workers.core.catchup.settle_absences)
  ``catchup:project:<name>``   JSON: the ProjectRef of a name (in lower case), living the
                               build state's TTL from its last lookup
  ``catchup:hooks``            hash: project -> 1 (our hook is disabled) or 0 (enabled)
  ``catchup:last``             JSON: the last pass's counts (for an operator)
  ``skipped:<commit key>``     a push of that commit asked for no build (ci.skip): seen, not
                               built; living as long as a run mark
"""

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict

import redis

from workers.core.catchup_project import ProjectRef
from workers.core.errors import RetryableError

_PASS_FIELD = "pass_at"  # never a ref: refs start with "refs/"
_KINDS_FIELD = "kinds"  # the kinds of ref the last pass listed (push, tag_push), comma-separated


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CatchUpStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self.hooks_key = prefix + "catchup:hooks"

    def heads_key(self, project: str) -> str:
        return f"{self.prefix}catchup:heads:{project}"

    def seen(self, project: str) -> tuple[dict[str, str], frozenset[str]]:
        """The refs of the project's last pass (ref -> sha) and the kinds of ref it listed
        (EventKind values); nothing of either when it has had none."""
        try:
            raw = self.redis.hgetall(self.heads_key(project))
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        fields = {_s(k): _s(v) for k, v in raw.items()}
        if _PASS_FIELD not in fields:
            return {}, frozenset()
        fields.pop(_PASS_FIELD)
        kinds = fields.pop(_KINDS_FIELD, "")
        return fields, frozenset(k for k in kinds.split(",") if k)

    def absent_key(self, project: str) -> str:
        return f"{self.prefix}catchup:absent:{project}"

    def absent(self, project: str) -> set[str]:
        """The refs the project's last pass did not list, but kept."""
        try:
            return {_s(r) for r in self.redis.hkeys(self.absent_key(project))}
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def built(self, commits: Iterable[str]) -> set[str]:
        """Of these commit keys, those with a run mark: a run of the commit was stored by a
        webhook or a catch-up, and its state has not expired; or a skip mark (mark_skipped)."""
        commits = list(commits)
        if not commits:
            return set()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for commit in commits:
                    pipe.exists(self.prefix + "commit:" + commit, skipped_key(self.prefix, commit))
                found = pipe.execute()
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        return {c for c, n in zip(commits, found) if n}

    def record(self, project: str, *, heads: Mapping[str, str], vanished: Iterable[str],
               kinds: Iterable[str], now: float, ttl_seconds: int,
               absent: Iterable[str] = (), moved_from: str | None = None) -> None:
        """The pass over the project done, listing these kinds of ref: these refs now point
        at these commits, those are gone, and `absent` (kept) were not listed this time, the
        only ones so marked; the memory lives `ttl_seconds` from now. `moved_from`: the
        memory was read under that name (a path, by a version before), now forgotten."""
        key, absent_key = self.heads_key(project), self.absent_key(project)
        try:
            with self.redis.pipeline() as pipe:
                if moved_from is not None:
                    pipe.delete(self.heads_key(moved_from), self.absent_key(moved_from))
                pipe.hset(key, mapping={**heads, _PASS_FIELD: repr(now),
                                        _KINDS_FIELD: ",".join(sorted(kinds))})
                vanished = list(vanished)
                if vanished:
                    pipe.hdel(key, *vanished)
                pipe.expire(key, ttl_seconds)
                pipe.delete(absent_key)
                absent = list(absent)
                if absent:
                    pipe.hset(absent_key, mapping=dict.fromkeys(absent, "1"))
                    pipe.expire(absent_key, ttl_seconds)
                pipe.execute()
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def project_key(self, name: str) -> str:
        return f"{self.prefix}catchup:project:{name.lower()}"

    def project_ref(self, name: str) -> ProjectRef | None:
        """The project GitLab last led this name to (None: never looked up, or too long
        ago, or unreadable)."""
        try:
            raw = self.redis.get(self.project_key(name))
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        try:
            return ProjectRef(**json.loads(raw)) if raw else None
        except (ValueError, TypeError):
            return None

    def set_project_ref(self, ref: ProjectRef, *, ttl_seconds: int) -> None:
        try:
            self.redis.set(self.project_key(ref.name), json.dumps(asdict(ref)),
                           ex=ttl_seconds)
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

    def set_hook_disabled(self, project: str, disabled: bool | None, *,
                          ttl_seconds: int) -> None:
        """Our hook's state for /metrics (None: unknown, the project's series goes away)."""
        with self.redis.pipeline() as pipe:
            if disabled is None:
                pipe.hdel(self.hooks_key, project)
            else:
                pipe.hset(self.hooks_key, project, int(disabled))
            pipe.expire(self.hooks_key, ttl_seconds)
            pipe.execute()

    def keep_hooks_of(self, projects: Iterable[str]) -> None:
        """Forget the hook state of every project but these (a whole pass's list): one the
        config no longer names, or that left its group, is checked no more, and the hash,
        renewed by the others' states, would keep its last value (a disabled hook: its alert
        firing) for ever."""
        keep = set(projects)
        gone = [f for f in self.redis.hkeys(self.hooks_key) if _s(f) not in keep]
        if gone:
            self.redis.hdel(self.hooks_key, *gone)

    def hooks_disabled(self) -> dict[str, float]:
        """project -> 1.0 when our hook is disabled, 0.0 when enabled (as last seen)."""
        return {_s(k): float(_s(v)) for k, v in self.redis.hgetall(self.hooks_key).items()}

    def note_pass(self, summary: Mapping[str, object]) -> None:
        """The last pass's counts, for an operator (`redis-cli GET <prefix>catchup:last`)."""
        self.redis.set(self.prefix + "catchup:last", json.dumps(dict(summary)))


def skipped_key(prefix: str, commit: str) -> str:
    return prefix + "skipped:" + commit


def mark_skipped(connection: redis.Redis, *, prefix: str, commit: str, ttl_seconds: int) -> None:
    """Remember that a push of `commit` (its commit key) asked for no build, so that the
    catch-up takes its head for seen (CatchUpStore.built) and does not build it as a push whose
    delivery was lost. Raises RetryableError when Redis cannot take it."""
    try:
        connection.set(skipped_key(prefix, commit), "1", ex=max(1, int(ttl_seconds)))
    except redis.RedisError as err:
        raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
