"""The mover: turns the push events in the intake (workers.adapters.intake) into provision jobs.

Every `ci-autoscaler worker` runs one in a thread beside its RQ worker (`Mover.run`): it waits
on the intake, claims up to a batch of records, and writes for each the RQ job and the build's
state, as the webhook itself did before the intake (bench/results/ingest.md), the batch's
scripts pipelined in one round trip (bench/results/handoff.md). A burst worker,
the demo and the tests call `Mover.drain` instead, which returns when the intake is empty.

The webhook writes the records with `record`, which is all the mover needs: the delivery and
the build request; a Jenkins notification that ends a build, with `release_record`, becomes a
release job; a STARTED (workers.engine.started.record) is applied by the mover itself, the
build marked running, so that the web's Redis user writes no build record. The mover also
loads the web's Redis functions (workers.adapters.intake): the web's
Redis user may call them but not load them.
"""

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from workers.adapters.redis_state import RedisState
from workers.concurrency.loop_thread import start_loop
from workers.core.errors import RetryableError
from workers.core.commit_status import PROJECT_ID_FIELD
from workers.core.intake_records import rebuilt
from workers.core.keys import commit_key
from workers.core.models import Route
from workers.core.routing import Ignored
from workers.engine import started as started_notes
from workers.engine.started import Started

log = logging.getLogger("ci_autoscaler.intake")
PROVISION_TASK = "workers.tasks.provision_agent"
RELEASE_TASK = "workers.tasks.release_agent"
HEARTBEAT_SECONDS = 30  # a mover silent this long has its records put back for another
# Set-aside records looked at per pass for ones this release reads (Mover.retake_set_aside)
RETAKE_LIMIT = 1000


def record(delivery_id: str, build: dict[str, Any], *, project_id: int | None = None) -> bytes:
    """An intake record: the delivery it came in and the build request (BuildRequest.to_dict);
    with the push's project id when it had one (kept on the build's record as PROJECT_ID_FIELD,
    for its commit status after a rename). Beside the request, not in it: releases that take
    the request with cls(**data) still run (tests/fixtures/task_signatures.json), and a mover
    of one ignores the key."""
    event: dict[str, Any] = {"delivery": delivery_id, "build": build}
    if project_id is not None:
        event[PROJECT_ID_FIELD] = project_id
    return orjson.dumps(event)


def _log_queued(build: dict[str, Any]) -> None:
    log.info("build queued", extra={"build_key": build["build_key"], "project": build["project"],
                                    "ref": build["ref"], "job": build["job"]})


def release_record(delivery_id: str, *, build_key: str, agent_name: str,
                   notification: dict[str, Any]) -> bytes:
    """An intake record of a Jenkins notification that ends a build: the release job's
    arguments (workers.tasks.release_agent), with what the notification says."""
    return orjson.dumps({"delivery": delivery_id, "release": {
        "build_key": build_key, "agent_name": agent_name, "reason": "build_completed",
        "notification": notification}})


def default_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _release_kwargs(release: Any) -> dict[str, Any]:
    """A release record's arguments for the release job, if it is one the web writes: a
    Jenkins notification's, which the job confirms with Jenkins' API before it releases
    (workers.engine.run_confirm). The web's Redis user may append any record to the intake, so
    a record without a notification (the job would release at once: a running build's agent
    deleted) or for another reason is refused (ValueError: set aside, logged), as issue 17's
    forged COMPLETED was."""
    if not isinstance(release, dict):
        raise TypeError("a release record is not an object")
    if not isinstance(release.get("notification"), dict):
        raise ValueError("a release record without the notification that ended its build")
    if release.get("reason", "build_completed") != "build_completed":
        raise ValueError(f"a release record for {release.get('reason')!r}, not a build's end")
    if not isinstance(release["build_key"], str) or not isinstance(release["agent_name"], str):
        raise TypeError("a release record's build_key and agent_name are not strings")
    return release


def _commit_of(build: dict[str, Any]) -> str:
    """The key of a push record's commit (commit:<key>), whose run mark names its run."""
    return commit_key(build["source"], build["project"], build["ref"], build["sha"])


def _run_of(raw: bytes) -> dict[str, str]:
    """The commit and run of a push record set aside, as far as it names them (a record of
    another release's, whose rules differ; the web's run mark names its build key), for
    Intake.set_aside; none for a record that does not."""
    try:
        build = orjson.loads(raw)["build"]
        run = build["build_key"]
        commit = _commit_of(build)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return {}
    return {"commit": commit, "run": run} if isinstance(run, str) else {}


@dataclass(frozen=True)
class _NoRoute:
    """A push record the routes no longer take: its build and why."""

    build: dict[str, Any]
    ignored: Ignored


@dataclass(frozen=True)
class Release:
    """A claimed intake record of a notification that ends a build: the release job's
    arguments."""

    raw: bytes
    kwargs: dict[str, Any]


class Mover:
    def __init__(self, state: RedisState, name: str | None = None, *, batch: int = 64,
                 block_seconds: float = 1.0, heartbeat_seconds: int = HEARTBEAT_SECONDS,
                 routes: list[Route] | tuple[Route, ...] | None = None,
                 installation: str = "", jenkins_url: str = "", jenkins_public_url: str = ""):
        """`routes`: the worker's own, and `installation` its identity: a push record's build
        request is made anew from its push with them (workers.core.intake_records), and one
        they no longer route is ignored. None: every record is taken as it is.
        `jenkins_url`, `jenkins_public_url`: the settings a STARTED's run page must lie under
        (workers.engine.run_links); without either, none is recorded."""
        self.state, self.intake = state, state.intake
        self.routes, self.installation = routes, installation
        self.jenkins_url, self.jenkins_public_url = jenkins_url, jenkins_public_url
        self.name = name or default_name()
        self.batch, self.block_seconds = batch, block_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._retake_from = 0  # where the next look at the failed list starts (retake_set_aside)

    def convert(self, raw: bytes) -> bool:
        """One claimed record made a provision job with its build state; False if another mover
        had it already, or if it is not an event (then set aside on the failed list, logged).
        The reference for `_convert_all`, which does the same for a batch in one round trip."""
        parsed = self._parse(raw)
        if parsed is None:
            return False
        if isinstance(parsed, Release):
            return self._release(parsed)
        if isinstance(parsed, Started):
            return self._started(parsed)
        made = self.state.enqueue_claimed(
            claimed_key=self.intake.claimed_key(self.name), record=raw, build_key=parsed[1],
            func=PROVISION_TASK, kwargs=parsed[2], new_build=parsed[3])
        if made:
            _log_queued(parsed[2]["build"])
        return made

    def _parse(self, raw: bytes
               ) -> tuple[bytes, str, dict[str, Any], dict[str, Any]] | Release | Started | None:
        """(record, build key, the job's kwargs, the build's first state) for a push, a
        Release for a Jenkins notification that ends a build, a Started for a STARTED, or None
        for a record that is not an event (set aside on the failed list, logged) or a push the
        routes no longer take (dropped, logged)."""
        try:
            read = self._read(raw)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            log.error("intake record is not an event; set aside",
                      extra={"error": f"{type(err).__name__}: {err}", "bytes": len(raw)})
            self.intake.set_aside(self.name, raw, **_run_of(raw))
            return None
        if isinstance(read, _NoRoute):
            return self._ignore(raw, read.build, read.ignored)
        return read

    def _read(self, raw: bytes
              ) -> tuple[bytes, str, dict[str, Any], dict[str, Any]] | Release | Started | _NoRoute:
        """`_parse`'s reading, with no effect: raises (orjson.JSONDecodeError, KeyError,
        TypeError, ValueError) for a record that is not an event this release reads."""
        event = orjson.loads(raw)
        if "release" in event:
            return Release(raw, _release_kwargs(event["release"]))
        if started_notes.KIND in event:
            return started_notes.parse(raw, event[started_notes.KIND])
        build = event["build"]
        if self.routes is not None:
            made = rebuilt(build, self.routes, installation=self.installation)
            if isinstance(made, Ignored):
                return _NoRoute(build, made)
            build = made.to_dict()
        new_build = {"status": "queued", "agent": build["agent_name"], "job": build["job"],
                     "template": build["template"], "project": build["project"],
                     "ref": build["ref"], "sha": build["sha"],
                     "received_at": build["received_at"],
                     # the delivery that started this run: gitlab:<id> for a webhook,
                     # catch-up:<commit key> for a push the catch-up found
                     # (workers.engine.catchup)
                     "delivery": str(event.get("delivery") or ""),
                     "queued_at": time.time(),  # the stage QUEUED (workers.core.stages)
                     # whose run mark (commit:<key>) goes when this run's state expires
                     "commit": _commit_of(build),
                     # what the reconcile loop provisions again from if this job is lost
                     "request": orjson.dumps(build).decode()}
        if isinstance(event.get(PROJECT_ID_FIELD), int):
            new_build[PROJECT_ID_FIELD] = event[PROJECT_ID_FIELD]
        return raw, build["build_key"], {"build": build}, new_build

    def retake_set_aside(self) -> int:
        """Put back on the intake the records on the failed list that this release reads:
        set aside by a mover of an earlier release, during a rolling upgrade, as not events
        of its kinds (a STARTED, which a newer web writes: README, Development, rolling
        upgrades). Left there, they were never applied, and CIWebhookIntakeFailed paged for
        pushes that were not lost until someone moved them back by hand. A record this
        release cannot read stays (this release's own set-aside ones: no loop), and so does
        a push: every release reads the kind, so one was set aside for what it holds, and
        built late its commit may since have been pushed over (the runbook's call). How many."""
        # A page of RETAKE_LIMIT a pass, from where the last one ended, round the list: the
        # first page alone left every record past it there for good once a thousand this
        # release keeps (pushes, what it cannot read) were ahead of them.
        start = self._retake_from
        records = self.intake.set_aside_records(RETAKE_LIMIT, start=start)
        readable = []
        for raw in records:
            try:
                if isinstance(self._read(raw), (tuple, _NoRoute)):
                    continue  # a push
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue
            readable.append(raw)
        if moved := self.intake.retake(readable):
            log.warning("intake records an earlier release set aside taken back",
                        extra={"records": moved})
        # the records kept are ahead of the next page now (those taken back left the list)
        self._retake_from = start + len(records) - len(readable) \
            if len(records) == RETAKE_LIMIT else 0
        return moved

    def _ignore(self, raw: bytes, build: dict[str, Any], ignored: Ignored) -> None:
        """A push the routes no longer take (they changed while it waited in the intake or a
        spool): dropped, as the webhook ignores it now ("no route"), and logged."""
        log.warning("push no route takes any more; ignored", extra={
            "build_key": build["build_key"], "project": build["project"], "ref": build["ref"],
            "reason": ignored.reason})
        self.intake.drop(self.name, raw, run=build["build_key"], commit=_commit_of(build))
        return None

    def _release(self, release: Release) -> bool:
        build_key = release.kwargs["build_key"]
        made = self.state.enqueue_claimed(
            claimed_key=self.intake.claimed_key(self.name), record=release.raw,
            build_key=build_key, func=RELEASE_TASK, kwargs=release.kwargs, new_build=None)
        if made:
            log.info("release queued", extra={"build_key": build_key})
        return made

    def _started(self, started: Started) -> bool:
        """A STARTED applied (or ignored, logged), then taken off the claimed list: no job is
        made (False). Applied twice (a mover lost between the two), it changes nothing more."""
        applied = started_notes.apply(self.state, started, jenkins_url=self.jenkins_url,
                                      public_url=self.jenkins_public_url)
        self.intake.drop(self.name, started.raw)
        if applied.marked:
            log.info("build started", extra={"build_key": started.build_key,
                                             "jenkins_build": started.number})
        else:
            log.warning("started notification ignored", extra={
                "build_key": started.build_key, "reason": applied.reason})
        return False

    def _convert_all(self, records: list[bytes], *, held: bool = False) -> int:
        """Every claimed record made a job, in one round trip for the batch (the scripts of
        `convert` pipelined); how many were made. `held`: records left on the list by a
        Redis error, whose builds Jenkins may have (see `_convert_held`)."""
        parsed, released = [], 0
        for p in map(self._parse, records):
            if isinstance(p, Release):  # few, one at a time: a build ends once
                released += self._release(p)
            elif isinstance(p, Started):  # applied here, in the order they came
                self._started(p)
            elif p is not None:
                if held:
                    # Its trigger looks for the build by its agent first, as a retried
                    # trigger does (tasks._trigger_once), from when the web received it.
                    p[3]["trigger_attempted_at"] = p[3]["received_at"]
                parsed.append(p)
        made = self.state.enqueue_claimed_many(
            claimed_key=self.intake.claimed_key(self.name), func=PROVISION_TASK, builds=parsed)
        for (_raw, _key, kwargs, _new), ok in zip(parsed, made):
            if ok:
                _log_queued(kwargs["build"])
        return sum(made) + released

    def drain(self) -> int:
        """Claim and convert until the intake is empty; how many jobs were made."""
        self.intake.heartbeat(self.name, self.heartbeat_seconds)
        self.intake.load_functions()
        self.retake_set_aside()
        made = 0
        try:
            while records := self.intake.claim(self.name, self.batch):
                made += self._convert_all(records)
        finally:
            self.intake.leave(self.name)  # what a failure left claimed goes back
        return made

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: keep the heartbeat, put back the records of movers that died,
        and convert records as they come. Redis errors are waited out, with a growing pause."""
        beat_due = recover_due = 0.0
        pause = 0.0
        while not stop.is_set():
            try:
                if pause:  # after a Redis error: what it held then, before anything new
                    self._convert_held()
                now = time.monotonic()
                if now >= beat_due:
                    self.intake.heartbeat(self.name, self.heartbeat_seconds)
                    beat_due = now + self.heartbeat_seconds / 3
                if now >= recover_due:
                    # The web's functions, which its Redis user may call but not load: again
                    # at each pass, for a Redis that lost them (a restart without its data).
                    if self.intake.load_functions():
                        log.info("web functions loaded into Redis",
                                 extra={"library": self.intake.library.name})
                    if moved := self.intake.recover():
                        log.warning("intake records of a lost mover put back",
                                    extra={"records": moved})
                    self.retake_set_aside()
                    self._convert_held()
                    recover_due = now + self.heartbeat_seconds
                self._convert_all(self.intake.claim(self.name, self.batch,
                                                    block_seconds=self.block_seconds))
                pause = 0.0
            except (redis.RedisError, RetryableError) as err:
                pause = min(max(pause * 2, 0.5), 10.0)
                log.warning("intake mover waits for Redis",
                            extra={"error": type(err).__name__, "pause_seconds": pause})
                stop.wait(pause)
        try:
            self.intake.leave(self.name)
        except redis.RedisError:
            pass  # the heartbeat lapses on its own, and another mover takes the records

    def _convert_held(self) -> None:
        """Make jobs of the records still on this mover's own claimed list. Between two
        turns of `run` the list is empty, unless a Redis error came between a claim and its
        jobs (a connection lost in a failover or a blip; or a promoted replica that had the
        claim but not the job): `recover` leaves a live mover's records alone, so they would
        wait there until the worker stops, and the pushes GitLab was answered 202 for would
        not be built. Each job's script takes its record off the list: one job each.
        After a failover that job may have run on the old master already (replication is
        asynchronous: the replica had the claim, not the job nor what it wrote) and Jenkins
        have the build: its trigger looks for it first, and does not start it twice."""
        if held := self.intake.held(self.name):
            log.warning("intake records this mover held through a Redis error: jobs made now",
                        extra={"records": len(held)})
            self._convert_all(held, held=True)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """`run` in a daemon thread; set the event to stop it. The thread blocks SIGTERM and
        SIGINT, so the kernel gives them to the main thread: a signal that landed here would
        wait, unhandled, while the RQ worker sleeps in its blocking read of the queue."""
        return start_loop(self.run, name="intake-mover")
