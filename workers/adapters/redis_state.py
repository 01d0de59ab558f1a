"""Redis as the durable edge: dedupe + enqueue in one script, and the state of each build.

Keys (all under the configured prefix, default ``cia:``):
  ``delivery:<id>``   a delivery already taken, value = build key; expires after the dedupe
                      window (CI_AUTOSCALER_DEDUPE_TTL_SECONDS, 7 days)
  ``commit:<key>``    the key of a commit's latest run (workers.adapters.intake); deleted
                      with that run's state (expiry), its TTL a backstop of 30 days at least
  ``build:<key>``     hash: the build's request, status, agent, node, queue item, timings
  ``agents``          hash: agent name -> build key (which Jenkins agents are ours)
  ``queue-items``     hash: Jenkins queue item id -> build key
  ``builds``          sorted set: build key by time received
  ``live-agents``     set: build keys whose agent pod exists (status pod_created, triggered,
                      running or done); /metrics counts agents by template and phase from it
  ``agents-dirty``    set: build keys whose COUNTED_FIELDS were written since the live agents
                      were last counted (workers.adapters.agent_counts)
  ``jenkins-runs``    hash: "job#number" -> build key, for the runs adopted agents took
                      (workers.engine.adoption), which the Notification plugin names by job and number
  ``ended``           sorted set: build key by the time the build ended (released, failed or
                      retained); the reconcile pass deletes the build's state and its entries
                      in the hashes and sets above CI_AUTOSCALER_BUILD_TTL_SECONDS after that
                      (workers.adapters.expiry: Redis 7.0 has no TTL per hash field)
  ``failures``        sorted set: build key by the time it failed (status failed), the latest
                      FAILURES_KEPT only, for the status page; expired with the build
"""

import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from workers.adapters.intake import Intake
from workers.adapters.redis_script import ScriptCall
from workers.core.build_status import FINISHED, BuildStatus, moves_forward
from workers.core.errors import RetryableError
from workers.core.image_pulls import PULL_AGENT_FIELD, PULL_ERROR_FIELD


# A build in one of these has ended for good (its agent released or kept for debugging): it
# goes on the `ended` set, whence its state expires.
ENDED = frozenset({BuildStatus.RELEASED, BuildStatus.FAILED, BuildStatus.RETAINED})
# The statuses of a build that has an agent pod, and the agent phase each one counts as.
AGENT_PHASE_OF = {BuildStatus.POD_CREATED: "pending", BuildStatus.TRIGGERED: "pending",
                  BuildStatus.RUNNING: "running", BuildStatus.DONE: "releasing",
                  BuildStatus.RETAINED: "retained"}
# A write of one of these changes how a live agent is counted (template, phase, image pull):
# it marks the build in AGENTS_DIRTY, in the same MULTI (workers.adapters.agent_counts). In
# the order pull_reads reads them (its FIELDS).
AGENTS_DIRTY = "agents-dirty"
COUNTED_FIELDS = ("template", "status", PULL_ERROR_FIELD, PULL_AGENT_FIELD, "agent")
_COUNTED = frozenset(COUNTED_FIELDS)
JOB_TIMEOUT_SECONDS = 300
JOB_RESULT_TTL_SECONDS = 3600
JOB_FAILURE_TTL_SECONDS = 7 * 24 * 3600
# A job whose task raised is run again after these pauses (the worker's scheduler moves it
# back to the queue); a PermanentError is not retried (see workers.engine.jobs). The calls inside a
# task retry on their own first (workers.adapters.retry): this covers longer outages.
JOB_RETRY = Retry(max=5, interval=[5, 15, 30, 60, 120])
# Every RQ job (its data, meta and result) is JSON: RQ's default, pickle, runs whatever a job's
# hash holds when a worker reads it, so anyone who could write to Redis could run code in the
# worker with its Kubernetes and Jenkins credentials (issue 17). A job whose data is not JSON
# fails without running (RQ's DeserializationError). Queue and worker both take this one.
SERIALIZER = JSONSerializer
# ``start-failure:<build key>``: a build's fail queued once by the workers that saw its pod
# unable to start (workers.agent_starts.watch); deleted with the build's state (expiry).
START_FAILURE = "start-failure:"
# Failed builds kept on the ``failures`` set: the status page shows the last 20; the rest is
# margin for entries whose build expired meanwhile.
FAILURES_KEPT = 100


# A job and the build's state, written by one script: Redis runs it alone, and it is one round
# trip (a WATCH/EXISTS/MULTI loop took four). GUARD decides whether it runs at all, MARK records
# that it did, last: a command that fails leaves the guard as it was, so nothing is taken for
# done that was not. Two guards (`_GUARDS`): a delivery seen before (the Jenkins webhook; KEYS[1]
# the delivery mark, ARGV[1] its value, ARGV[2] its TTL in seconds), and an intake record that is
# no longer on its mover's claimed list (KEYS[1] that list, ARGV[1] the record).
# KEYS[2] the build hash. ARGV[3] how many of the commands that follow run only for a build
# with no state yet; ARGV[4..7] the job's id, data, description and timestamp; then the
# commands, each as its argument count and its arguments. The job's own commands (RQ's, with
# everything that is the same for every job of a task written into the script) take the place
# of JOB below: one script per task and guard (`_JobTemplate`).
_ENQUEUE = """
GUARD
local unpack = table.unpack or unpack
local new = redis.call('EXISTS', KEYS[2]) == 0
local only_new = tonumber(ARGV[3])
local i, n = 8, 0
while i <= #ARGV do
  local argc = tonumber(ARGV[i])
  n = n + 1
  if new or n > only_new then
    redis.call(unpack(ARGV, i + 1, i + argc))
  end
  i = i + argc + 1
end
JOB
MARK
return 1
"""
_GUARDS = {
    "delivery": ("if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end",
                 "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])"),
    "claimed": ("if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end",
                "redis.call('LREM', KEYS[1], 1, ARGV[1])"),
}


# When a build's provision job runs again (its RQ retry: workers.engine.jobs); the reconcile loop's
# restart of stalled builds waits for it (workers.engine.repairs.restart_stalled).
RETRY_AT = "retry_at"
# One field of a build whose state is there: an expired build's hash is not made again, with
# no entry in `ended` to expire it by.
_SET_IF_BUILD = """
if redis.call('exists', KEYS[1]) == 1 then
  return redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"""


@contextmanager
def _unavailable_is_retryable():
    try:
        yield
    except redis.RedisError as err:
        raise RetryableError(f"redis unavailable: {type(err).__name__}") from err


@dataclass(frozen=True)
class Enqueued:
    queued: bool  # False: a duplicate delivery, nothing queued
    build_key: str


class RedisState:
    """Build state and the job queue, on one Redis connection."""

    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:",
                 queue_name: str = "ci-autoscaler", push_wait: tuple[int, int] | None = None):
        self.redis = connection
        self.prefix = prefix
        self.queue = Queue(queue_name, connection=connection, serializer=SERIALIZER)
        # push events waiting to become jobs; a commit's run in flight until it is FINISHED
        self.intake = Intake(connection, prefix=prefix, ended=FINISHED, wait=push_wait)
        self._job_templates: dict[str, _JobTemplate] = {}

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def enqueue_once(self, *, delivery_id: str, build_key: str, func: str,
                     kwargs: dict[str, Any], ttl_seconds: int,
                     new_build: dict[str, Any] | None = None,
                     update: dict[str, Any] | None = None) -> Enqueued:
        """Queue `func(**kwargs)` unless this delivery was seen; the delivery mark, the job and
        the build state are written by one script (atomic, one round trip), so a 2xx always
        means the job is in Redis.

        `new_build` is written only if the build has no state yet (a second delivery of the
        same push must not reset a running build); `update` is always written.
        Raises RetryableError when Redis cannot be reached."""
        queued = self._enqueue("delivery", self._k("delivery", delivery_id),
                               [build_key, ttl_seconds], build_key=build_key, func=func,
                               kwargs=kwargs, new_build=new_build, update=update)
        return Enqueued(queued=queued, build_key=build_key)

    def enqueue_claimed(self, *, claimed_key: str, record: bytes, build_key: str, func: str,
                        kwargs: dict[str, Any], new_build: dict[str, Any] | None) -> bool:
        """Queue `func(**kwargs)` for an intake record and take the record off its mover's
        claimed list, in one script; False (nothing written) if the record is no longer there:
        another mover has it, so it becomes one job only. `new_build` as in enqueue_once."""
        return self._enqueue("claimed", claimed_key, [record, 0], build_key=build_key,
                             func=func, kwargs=kwargs, new_build=new_build, update=None)

    def enqueue_claimed_many(self, *, claimed_key: str, func: str,
                             builds: list[tuple[bytes, str, dict[str, Any], dict[str, Any]]]
                             ) -> list[bool]:
        """`enqueue_claimed` for many intake records of one mover, in one round trip (the
        scripts pipelined): `builds` holds (record, build key, kwargs, new_build) each; whether
        each was made. Each script is atomic and guarded as one alone: run again (after a lost
        connection), a record already made is no longer on the claimed list."""
        if not builds:
            return []
        with _unavailable_is_retryable():
            calls = [self._enqueue_call("claimed", claimed_key, [record, 0], build_key=key,
                                        func=func, kwargs=kwargs, new_build=new_build,
                                        update=None)
                     for record, key, kwargs, new_build in builds]
            answers = calls[0][0].many([(keys, args) for _script, keys, args in calls])
        for answer in answers:
            if isinstance(answer, Exception):
                raise RetryableError(f"enqueue script failed: {answer}") from answer
        return [bool(answer) for answer in answers]

    def _enqueue(self, guard: str, guard_key: str, guard_args: list[Any], *, build_key: str,
                 func: str, kwargs: dict[str, Any], new_build: dict[str, Any] | None,
                 update: dict[str, Any] | None) -> bool:
        with _unavailable_is_retryable():
            script, keys, args = self._enqueue_call(
                guard, guard_key, guard_args, build_key=build_key, func=func, kwargs=kwargs,
                new_build=new_build, update=update)
            return bool(script(keys, args))

    def _enqueue_call(self, guard: str, guard_key: str, guard_args: list[Any], *,
                      build_key: str, func: str, kwargs: dict[str, Any],
                      new_build: dict[str, Any] | None, update: dict[str, Any] | None
                      ) -> tuple[ScriptCall, list[str], list[Any]]:
        """The script, keys and arguments that write the job and the build's state."""
        build_hash = self._k("build", build_key)
        only_new: list[tuple[Any, ...]] = []
        if new_build:
            only_new.append(("HSET", build_hash, *_pairs(new_build)))
            only_new.append(("ZADD", self._k("builds"), time.time(), build_key))
            if "agent" in new_build:
                only_new.append(("HSET", self._k("agents"), new_build["agent"], build_key))
        always = [("HSET", build_hash, *_pairs(update))] if update else []
        template = self._job_templates.get(func)
        if template is None:  # RQ's enqueue may ask Redis something: inside the guard
            template = self._job_templates[func] = _JobTemplate.record(self, func)
        args: list[Any] = [*guard_args, len(only_new), *template.job_values(
            self.queue.serializer.dumps((func, None, (), kwargs)),
            description=f"{func.rsplit('.', 1)[-1]} {build_key}")]
        for command in only_new + always:
            args += [len(command), *command]
        return template.scripts[guard], [guard_key, build_hash], args

    def enqueue_task(self, func: str, *args: Any, description: str) -> None:
        """Queue a housekeeping task (re-drive, give-way, replenish) with the TTLs every other
        job gets: RQ's own default keeps a failed job a year (rq.defaults
        DEFAULT_FAILURE_TTL), the README and the status page say 7 days."""
        self.queue.enqueue(func, *args, description=description,
                           result_ttl=JOB_RESULT_TTL_SECONDS,
                           failure_ttl=JOB_FAILURE_TTL_SECONDS)

    def build_for_agent(self, agent: str) -> str | None:
        with _unavailable_is_retryable():
            key = self.redis.hget(self._k("agents"), agent)
        return key.decode() if isinstance(key, bytes) else key

    def builds_for_agents(self, agents: list[str]) -> dict[str, str]:
        """agent -> build key, for those of these agents that are ours, in one round trip."""
        if not agents:
            return {}
        with _unavailable_is_retryable():
            keys = self.redis.hmget(self._k("agents"), agents)
        return {agent: _s(key) for agent, key in zip(agents, keys) if key is not None}

    def build_for_queue_item(self, queue_id: int) -> str | None:
        with _unavailable_is_retryable():
            key = self.redis.hget(self._k("queue-items"), str(queue_id))
        return key.decode() if isinstance(key, bytes) else key

    def get_build(self, build_key: str) -> dict[str, str]:
        with _unavailable_is_retryable():
            raw = self.redis.hgetall(self._k("build", build_key))
        return {_s(k): _s(v) for k, v in raw.items()}

    def build_fields(self, build_keys: list[str], *fields: str) -> list[list[str | None]]:
        """These fields of many builds in one round trip."""
        with _unavailable_is_retryable(), self.redis.pipeline(transaction=False) as pipe:
            for key in build_keys:
                pipe.hmget(self._k("build", key), *fields)
            rows = pipe.execute()
        return [[None if v is None else _s(v) for v in row] for row in rows]

    def update_build(self, build_key: str, **fields: Any) -> None:
        with _unavailable_is_retryable(), self.redis.pipeline() as pipe:
            self._write_build(pipe, build_key, fields)
            pipe.execute()

    def note_retry(self, build_key: str, due: float) -> None:
        """The build's provision job runs again at `due` (RQ's retry, after a retryable
        error): the build is not stalled before then. Its other fields, `updated_at` included
        (what the reconcile loop heard last), stay as they are."""
        with _unavailable_is_retryable():
            self.redis.eval(_SET_IF_BUILD, 1, self._k("build", build_key), RETRY_AT, str(due))

    def advance_build(self, build_key: str, *, status: str, **fields: Any) -> bool:
        """`update_build`, but the status only moves forward (workers.core.build_status):
        work that ends late must not move the build back. A provision whose calls ran side by
        side (workers.concurrency.side), a re-drive or a repair may end after the build's own
        end was handled (its release ran meanwhile), or after Jenkins' STARTED was (a
        Pipeline's comes once its run starts on the controller, before any agent connects):
        the build stays finished, or running. The other fields are written either way. False
        if the build had finished (the caller undoes what it made), else True."""
        key = self._k("build", build_key)
        with _unavailable_is_retryable(), self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, "status")
                    current = _s(current) if current is not None else None
                    forward = moves_forward(current, status)
                    pipe.multi()
                    self._write_build(pipe, build_key,
                                      {**fields, "status": status} if forward else fields)
                    pipe.execute()
                    return current not in FINISHED
                except redis.WatchError:  # changed since read: read again
                    continue

    def _write_build(self, pipe: Any, build_key: str, fields: dict[str, Any]) -> None:
        """The commands of update_build, on a pipeline the caller executes."""
        fields = {**fields, "updated_at": time.time()}
        gone = [k for k, v in fields.items() if v is None]
        pipe.hset(self._k("build", build_key), mapping=_flat(fields))
        if gone:
            pipe.hdel(self._k("build", build_key), *gone)
        if "queue_item" in fields:
            pipe.hset(self._k("queue-items"), str(fields["queue_item"]), build_key)
        if not _COUNTED.isdisjoint(fields):
            pipe.sadd(self._k(AGENTS_DIRTY), build_key)
        if fields.get("status") is not None:
            if fields["status"] in AGENT_PHASE_OF:
                pipe.sadd(self._k("live-agents"), build_key)
            else:
                pipe.srem(self._k("live-agents"), build_key)
            if fields["status"] in ENDED:  # its state expires from this time on
                pipe.zadd(self._k("ended"), {build_key: fields["updated_at"]})
            if fields["status"] == BuildStatus.FAILED:  # its first failure's time
                pipe.zadd(self._k("failures"), {build_key: fields["updated_at"]}, nx=True)
                pipe.zremrangebyrank(self._k("failures"), 0, -FAILURES_KEPT - 1)

    def mark_running(self, build_key: str, *, jenkins_build: int, build_url: str | None = None,
                     at: float | None = None) -> None:
        """Jenkins reported the build STARTED: status running (and the run's page, when the
        notification names it); `started_at` is the first STARTED's. The status only moves
        forward (workers.core.build_status), in advance_build's one WATCH transaction: a
        STARTED taken late (spooled while Redis was away) made a failed or released build
        running again. Written by the worker only (the intake's mover: workers.engine.started;
        the reconcile pass's repairs): the web's Redis user may only read a build's record
        (the chart's redisWebAcl, README "Redis users"). `at`: when the web received the
        STARTED (never later than now), so the `started` stage is Jenkins' time, not the
        mover's."""
        now = time.time() if at is None else min(at, time.time())
        with _unavailable_is_retryable():
            self.redis.hsetnx(self._k("build", build_key), "started_at", str(now))
        self.advance_build(build_key, status=BuildStatus.RUNNING, jenkins_build=jenkins_build,
                           **({"build_url": build_url} if build_url else {}))

    def live_builds(self) -> list[str]:
        """The keys of the builds that have an agent (``live-agents``), whatever their age."""
        with _unavailable_is_retryable():
            return sorted(_s(k) for k in self.redis.smembers(self._k("live-agents")))

    def live_agents(self) -> list[tuple[str, str]]:
        """(template, phase) of every live agent, in two round trips."""
        keys = [_s(k) for k in self.redis.smembers(self._k("live-agents"))]
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(self._k("build", key), "template", "status")
            rows = pipe.execute() if keys else []
        out = []
        for template, status in rows:
            phase = AGENT_PHASE_OF.get(_s(status)) if status is not None else None
            if phase is not None:
                out.append((_s(template) if template is not None else "unknown", phase))
        return out

    def live_build_keys(self) -> list[str]:
        """The keys of the builds whose agent pod exists (the ``live-agents`` set)."""
        with _unavailable_is_retryable():
            return [_s(k) for k in self.redis.smembers(self._k("live-agents"))]

    def live_in_arrival_order(self) -> tuple[int, list[str]]:
        """(how many live builds are not retained, the live builds' keys oldest first): three
        commands, whatever the number of builds (the status page; its records are read only
        for the rows it shows). The order is the ``builds`` index's time of receipt (ZINTER
        with ``live-agents``, whose members count as a score of 1, weighted 0); a live build
        missing from that index (none should be) comes last, read from ``live-agents``. The
        count is ``live-agents``' cardinality less its builds on ``retained`` (the pods kept
        for debugging, workers.engine.retention: a build goes on that set just before its status
        becomes retained, and off it just after it is released). Raises NoPermissionError
        for a Redis user not given SCARD and ZINTER (the web's, README "Redis users")."""
        live = self._k("live-agents")
        try:
            with _unavailable_is_retryable(), self.redis.pipeline(transaction=False) as pipe:
                pipe.scard(live)
                pipe.zinter([live, self._k("retained")])
                pipe.zinter({self._k("builds"): 1, live: 0})
                total, retained, ordered = pipe.execute()
                keys = [_s(k) for k in ordered]
                if len(keys) < total:  # not all on the index: the others after them
                    known = set(keys)
                    keys += sorted(k for k in map(_s, self.redis.smembers(live))
                                   if k not in known)
        except RetryableError as err:  # a user not given these commands: no retry helps
            if isinstance(err.__cause__, redis.exceptions.NoPermissionError):
                raise err.__cause__ from None
            raise
        return max(0, total - len(retained)), keys

    def mark_agent_online(self, build_key: str, *, at: float) -> bool:
        """The build's agent was seen online in Jenkins; True the first time only (so its
        start is measured once)."""
        with _unavailable_is_retryable():
            return bool(self.redis.hsetnx(self._k("build", build_key), "agent_online_at",
                                          str(at)))

    def builds_since(self, since: float) -> list[str]:
        """The keys of the builds received since `since` (a Unix time), oldest first."""
        with _unavailable_is_retryable():
            return [_s(k) for k in self.redis.zrangebyscore(self._k("builds"), since, "+inf")]

    def add_build(self, build_key: str, fields: dict[str, Any]) -> bool:
        """Record a build that no webhook announced (found in the Jenkins queue); False if a
        build of that key exists already."""
        build_hash = self._k("build", build_key)
        with _unavailable_is_retryable():
            if not self.redis.hsetnx(build_hash, "received_at", str(fields["received_at"])):
                return False
            with self.redis.pipeline() as pipe:
                pipe.hset(build_hash, mapping=_flat(fields))
                pipe.zadd(self._k("builds"), {build_key: float(fields["received_at"])})
                pipe.hset(self._k("agents"), fields["agent"], build_key)
                if "queue_item" in fields:
                    pipe.hset(self._k("queue-items"), str(fields["queue_item"]), build_key)
                pipe.execute()
        return True

    def record_run(self, build_key: str, *, job: str, number: int) -> None:
        """The Jenkins run this build's agent took (an adopted agent): the build is that run,
        found by job and number when the Notification plugin reports it. The status only
        moves forward (advance_build): a release that found the agent idle may have ended the
        build between the pass's read of its run and this record."""
        self.advance_build(build_key, status=BuildStatus.RUNNING, job=job, jenkins_build=number)
        with _unavailable_is_retryable():
            self.redis.hset(self._k("jenkins-runs"), run_ref(job, number), build_key)

    def build_for_notification(self, *, job: str, number: int, agent: str | None,
                               queue_id: int | None) -> str | None:
        """The build a Notification plugin event is about, in one round trip: the run an
        adopted agent took, else the build of the agent it names (CI_AUTOSCALER_AGENT), else
        the build of its queue item."""
        with _unavailable_is_retryable(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self._k("jenkins-runs"), run_ref(job, number))
            if agent:
                pipe.hget(self._k("agents"), agent)
            if queue_id is not None:
                pipe.hget(self._k("queue-items"), str(queue_id))
            found = next((key for key in pipe.execute() if key is not None), None)
        return None if found is None else _s(found)

    def recent_failures(self, limit: int) -> list[tuple[str, float]]:
        """(build key, when it failed) of the last `limit` failed builds, newest first."""
        return [(_s(k), float(t)) for k, t in
                self.redis.zrevrange(self._k("failures"), 0, limit - 1, withscores=True)]

    def recent_builds(self, limit: int = 50) -> list[str]:
        return [_s(k) for k in self.redis.zrange(self._k("builds"), -limit, -1)]

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False


class _JobTemplate:
    """RQ's own enqueue of one task (the job hash, the queue list, the queues set), recorded
    once on a pipeline that is never executed and written into the enqueue script, so that a
    request sends only what differs from job to job: its id, data, description and timestamp.
    The job stays a stock RQ job, whatever RQ version writes it, with its retry policy and TTLs,
    without an RQ Job built per request (a fifth of a webhook's time, bench/results/ingest.md).

    A recorded value is filled in per job if it holds the recorded job id (the job's key does)
    or is the value of the field `data`, `description`, `created_at` or `enqueued_at`;
    anything else RQ sent (status, origin, TTLs, the retry policy) is written as recorded."""

    _ID = "00000000-0000-4000-8000-job-template"
    _ARGV = {"data": "ARGV[5]", "description": "ARGV[6]", "created_at": "ARGV[7]",
             "enqueued_at": "ARGV[7]"}

    def __init__(self, connection: redis.Redis, recorded: list[tuple[Any, ...]]):
        lines, filled = [], set()
        for command in recorded:
            parts = []
            for i, arg in enumerate(command):
                field = command[i - 1] if command[0] == "HSET" and i >= 3 and i % 2 == 1 else None
                text = arg.value if isinstance(arg, Enum) else arg
                text = text if isinstance(text, bytes) else str(text).encode()
                if field in self._ARGV:
                    parts.append(self._ARGV[field])
                    filled.add(field)
                elif self._ID.encode() in text:  # the id (ARGV[4]), or a key that holds it
                    parts.append(" .. ARGV[4] .. ".join(
                        _lua_string(piece) for piece in text.split(self._ID.encode())))
                    filled.add("id")
                else:
                    parts.append(_lua_string(text))
            lines.append(f"redis.call({', '.join(parts)})")
        missing = {"id", "data", "description", "created_at", "enqueued_at"} - filled
        if missing:  # an RQ whose enqueue this does not understand: refuse at once
            raise RuntimeError(f"RQ's enqueue commands have no {sorted(missing)} to fill in")
        # JOB last: RQ's recorded values (a queue name, say) may hold the other placeholders
        self.scripts = {name: ScriptCall(connection, _ENQUEUE.replace("GUARD", guard).replace(
            "MARK", mark).replace("JOB", "\n".join(lines)))
            for name, (guard, mark) in _GUARDS.items()}

    @classmethod
    def record(cls, state: "RedisState", func: str) -> "_JobTemplate":
        recorder = state.redis.pipeline(transaction=True)
        try:
            state.queue.enqueue_call(
                func, pipeline=recorder, timeout=JOB_TIMEOUT_SECONDS,
                result_ttl=JOB_RESULT_TTL_SECONDS, failure_ttl=JOB_FAILURE_TTL_SECONDS,
                retry=JOB_RETRY, description="-", job_id=cls._ID)
            return cls(state.redis, [args for args, _options in recorder.command_stack])
        finally:
            recorder.reset()

    @staticmethod
    def job_values(data: bytes, *, description: str) -> tuple[str, bytes, str, str]:
        """ARGV[4..7]: a fresh job id, the data as RQ stores it (its serializer's output,
        compressed: at level 1 with a 1 KB window and the least memory, a tenth of the time
        of zlib.compress, whose setup of its default 256 KB state is most of its cost on a
        payload this small; RQ's zlib.decompress reads it alike), the description, and now as
        rq.utils.utcformat writes it."""
        packer = zlib.compressobj(1, zlib.DEFLATED, 10, 1)
        return (str(uuid.uuid4()), packer.compress(data) + packer.flush(), description,
                datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def run_ref(job: str, number: int | str) -> str:
    """A Jenkins run as the ``jenkins-runs`` hash names it."""
    return f"{job}#{number}"


def _lua_string(value: bytes) -> str:
    """A Lua string literal of these bytes (letters, digits and a few safe signs as they are,
    every other byte as a decimal escape)."""
    return "'" + "".join(chr(b) if chr(b).isalnum() or chr(b) in " :-_.,[]/" else f"\\{b:03d}"
                         for b in value) + "'"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(fields: dict[str, Any]) -> list[str]:
    return [item for pair in _flat(fields).items() for item in pair]


def _flat(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items() if v is not None}
