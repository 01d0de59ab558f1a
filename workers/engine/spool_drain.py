"""The drainer: moves the pushes the web spooled (workers.adapters.spool) into Redis's intake,
oldest first, once Redis takes writes again.

The spool is per web pod, on its own volume, so each web pod drains its own: a thread in every
gunicorn worker, of which one at a time holds the spool's drain lock (an flock the kernel drops
when its process dies). Each event is pushed with the very function the webhook calls
(Intake.push: the same dedupe by delivery id and by the commit's run in flight), a batch of them
in one round trip (Intake.push_many), and their rows are deleted, in one commit, only after
Redis answered. A web killed between the two pushes the events again when it restarts, and
Redis answers "delivery already taken": a spooled push is built once.

A drainer moves only its own installation's rows (workers.adapters.spool: the owner, which also
names the Redis they go to) and those of versions before the owner. Another owner's rows, in a
spool directory that two installations were given, are left for that one's drainer: pushed
into this Redis they would be built by the wrong installation, and never by the right one
(GitLab does not send them again). They are logged when their count changes, and counted
(ci_autoscaler_spool_foreign_events). This installation's own, spooled before its Redis moved
(they name the earlier target), are taken by `ci-autoscaler spool adopt`
(workers.adapters.spool_adopt).
"""

import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from workers.adapters.intake import Intake
from workers.adapters.redis_script import NotReplicated
from workers.adapters.spool import Spool, SpooledEvent, SpoolError
from workers.concurrency.loop_thread import start_loop
from workers.core.errors import RetryableError

log = logging.getLogger("ci_autoscaler.spool")
DRAIN_INTERVAL_SECONDS = 0.5  # how often an idle drainer looks at the spool
DRAIN_BATCH = 100  # rows read per round trip to the spool
MAX_PAUSE_SECONDS = 5.0  # the longest wait between tries while Redis refuses
LOCK_FILE = "drain.lock"
OTHERS_INTERVAL_SECONDS = 60.0  # how often a drainer counts other owners' rows, to log them


@dataclass(frozen=True)
class SpooledPush:
    """The arguments of one Intake.push, as the webhook would have made it."""

    delivery_id: str
    mark: str
    record: bytes
    ttl_seconds: int
    commit: str | None = None
    run_ttl_seconds: int = 0
    received_at: float | None = None  # when the web received it (rows of older versions: None)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"delivery_id": self.delivery_id, "mark": self.mark,
                             "record": self.record.decode(), "ttl_seconds": self.ttl_seconds,
                             "commit": self.commit, "run_ttl_seconds": self.run_ttl_seconds,
                             "received_at": self.received_at})

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SpooledPush":
        return cls.from_dict(orjson.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpooledPush":
        """Raises TypeError for a delivery id, mark or commit that is no text (a damaged
        file): Intake.push raised TypeError for it at every pass, out of the drainer, so the
        row was never set aside and every push spooled after it waited for good."""
        if not (isinstance(data["delivery_id"], str) and isinstance(data["mark"], str)
                and isinstance(data.get("commit"), str | None)):
            raise TypeError("a field of a spooled push is no text")
        push = cls(delivery_id=data["delivery_id"], mark=data["mark"],
                   record=data["record"].encode(), ttl_seconds=int(data["ttl_seconds"]),
                   commit=data.get("commit"), run_ttl_seconds=int(data["run_ttl_seconds"]),
                   received_at=data.get("received_at"))
        # A TTL of 0 or less (no web writes one: Settings, gt=0): Redis refuses the push's SET
        # ... EX (invalid expire time) after its RPUSH, which a script error does not undo,
        # so each pass queued the push once more, and the row blocked the rest for good.
        if push.ttl_seconds <= 0 or (push.commit is not None and push.run_ttl_seconds <= 0):
            raise ValueError("a TTL of a spooled push is not positive")
        return push

    def push_to(self, intake: Intake):
        return intake.push(delivery_id=self.delivery_id, mark=self.mark, record=self.record,
                           ttl_seconds=self.ttl_seconds, commit=self.commit,
                           run_ttl_seconds=self.run_ttl_seconds, received_at=self.received_at)

    def arguments(self) -> dict[str, Any]:
        """Intake.push's keyword arguments."""
        return {"delivery_id": self.delivery_id, "mark": self.mark, "record": self.record,
                "ttl_seconds": self.ttl_seconds, "commit": self.commit,
                "run_ttl_seconds": self.run_ttl_seconds, "received_at": self.received_at}


NOTE_KIND = "jenkins-notification"  # a spooled row's `kind` that is not a push


def _plain_push(event: SpooledEvent) -> SpooledPush | None:
    """The push a row holds, when it is a push this release spools; None for any other row
    (a notification, a newer release's kind, an unreadable one), which Drainer._move takes."""
    try:
        data = orjson.loads(event.payload)
        if not isinstance(data, dict) or "kind" in data:
            return None
        return SpooledPush.from_dict(data)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def spool_note(spool: Spool, delivery: str, payload: Any, *, received_at: float) -> bool:
    """Spool a Jenkins notification (its JSON body) Redis could not take; False if this
    delivery is spooled already. Raises SpoolRefused (full, or unwritable)."""
    return spool.put(delivery, orjson.dumps({"kind": NOTE_KIND, "note": payload,
                                             "received_at": received_at}))


def spool_push(spool: Spool, push: SpooledPush) -> bool:
    """Spool a push the intake could not take; False if this delivery is spooled already.
    Raises SpoolRefused (full, or unwritable)."""
    return spool.put(push.delivery_id, push.to_bytes())


class Drainer:
    def __init__(self, spool: Spool, intake: Intake, *, batch: int = DRAIN_BATCH,
                 interval_seconds: float = DRAIN_INTERVAL_SECONDS,
                 notes: Callable[[Any, float], None] | None = None):
        """`notes(payload, received_at)`: acts on a spooled Jenkins notification as the
        webhook would have (service.webhooks), raising RetryableError while Redis cannot."""
        self.spool, self.intake, self.notes = spool, intake, notes
        self.batch, self.interval_seconds = batch, interval_seconds
        self._others: dict[str, int] = {}  # other owners' rows, as last logged
        self._others_at = float("-inf")
        self._newer: set[int] = set()  # rows of a newer release's kind, logged once each
        # Up to this row id every row was moved, or left for a newer release (`_left` of
        # them): a pass reads on from there, not every left row again (ids only grow).
        self._settled = self._left = 0

    def drain(self) -> int:
        """Move what is spooled into the intake until the spool is empty or Redis refuses
        (RetryableError then, after the rows moved so far are deleted); how many rows went.
        Rows the master took but no replica acknowledged in time (WAIT, once a batch) stay,
        the rest are still moved, and RetryableError follows the pass.
        Returns 0 at once while another process of the pod holds the drain lock."""
        try:
            lock = os.open(self.spool.directory / LOCK_FILE,
                           os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:
            return 0  # no spool directory: nothing was spooled
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            if self._settled and self.spool.count_through(self._settled) != self._left:
                self._settled = self._left = 0  # rows came below it (adopted in place)
            moved, kept, after = 0, None, self._settled
            # never another owner's rows
            while events := self.spool.oldest(self.batch, after=after):
                after = events[-1].id
                pushes: list[tuple[SpooledEvent, SpooledPush]] = []
                for event in [*events, None]:  # None: the batch's end
                    if event is not None and (push := _plain_push(event)) is not None:
                        pushes.append((event, push))
                        continue
                    if pushes:  # those before this row, in one round trip and one commit
                        try:
                            moved += self._push_all(pushes)
                            if kept is None:
                                self._settled = pushes[-1][0].id
                        except RetryableError as err:
                            if not isinstance(err.__cause__, NotReplicated):
                                raise
                            # On the master, not on a replica (WAIT): the rows stay until
                            # one has them, and the rows after, which Redis may never have
                            # had, go on to the master (stopping here left them unbuilt while
                            # the master had no replica: after a failover, until the old one
                            # is back).
                            kept = kept or err
                        pushes = []
                    if event is None:
                        break
                    try:
                        if not self._move(event):
                            if kept is None:
                                self._settled, self._left = event.id, self._left + 1
                            continue
                    except RetryableError as err:
                        if not isinstance(err.__cause__, NotReplicated):
                            raise
                        kept = kept or err
                        continue
                    moved += 1
                    if kept is None:
                        self._settled = event.id
            self._log_others()
            if kept is not None:
                raise kept
            return moved
        finally:
            os.close(lock)  # and the flock with it

    def _log_others(self) -> None:
        """Say which other owners' rows the spool holds, when that changed (looked at once a
        minute): they wait for a drainer of theirs, which may not be running."""
        if time.monotonic() - self._others_at < OTHERS_INTERVAL_SECONDS:
            return
        self._others_at = time.monotonic()
        others = self.spool.others()
        if others != self._others:
            for owner, events in others.items():
                log.warning("spooled pushes of another installation left alone: its own web "
                            "drains them, or `ci-autoscaler spool adopt` makes them this one's "
                            "(alert CIWebhookSpoolStranded)", extra={"spool": str(self.spool.directory),
                                                  "owner": owner, "events": events,
                                                  "this_owner": self.spool.owner})
            self._others = others

    def _push_all(self, pushes: list[tuple[SpooledEvent, "SpooledPush"]]) -> int:
        """Rows of pushes handed on in one round trip to Redis (Intake.push_many), then
        deleted in one commit: a row a round trip and a commit drained ~150 rows a second into
        a Redis that fsyncs (bench/results/spool-drain.md). Raises RetryableError when Redis
        did not take them all: the rows it answered before the one it refused are deleted,
        the rest stay. A crash between Redis and the delete leaves rows Redis has taken: pushed
        again, each is answered "delivery already taken", and deleted (built once)."""
        answers = self.intake.push_many([push.arguments() for _, push in pushes])
        taken = list(itertools.takewhile(lambda a: not isinstance(a, RetryableError), answers))
        self.spool.remove_many([event.id for event, _ in pushes[:len(taken)]])
        for pushed in taken:
            log.info("spooled push moved to the intake", extra={
                "build_key": pushed.build_key, "queued": pushed.queued,
                **({"reason": pushed.reason} if pushed.reason else {})})
        if len(taken) < len(answers):
            raise answers[len(taken)]
        return len(taken)

    def _move(self, event) -> bool:
        """The row handed on and deleted, or set aside in the file (unreadable): True; left
        in the spool for the release that wrote it: False."""
        try:
            data = orjson.loads(event.payload)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "kind" in data and data["kind"] != NOTE_KIND:
            # A row of a kind a newer release spools (a rollback with a persistent spool, or a
            # spool adopted from a newer web): deleted as "not a push", the event the newer web
            # answered 202 for was lost; kept, its release drains it once it runs again.
            if event.id not in self._newer:
                self._newer.add(event.id)
                log.warning("spooled event of a kind this release does not read; left for "
                            "the release that wrote it", extra={
                                "delivery": event.delivery, "kind": str(data["kind"])[:64]})
            return False
        if isinstance(data, dict) and data.get("kind") == NOTE_KIND and self.notes is not None:
            try:
                self.notes(data.get("note"), float(data.get("received_at") or time.time()))
            except RetryableError:
                raise  # Redis still cannot take it: the row stays, and so do those after it
            except Exception:  # one notification must not hold up every push behind it
                log.exception("spooled notification failed; dropped (the reconcile pass asks "
                              "Jenkins about a build not heard of)",
                              extra={"delivery": event.delivery})
            self.spool.remove(event.id)
            return True
        try:
            push = SpooledPush.from_bytes(event.payload)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            # Not written by any version of spool_push (a damaged file; a newer kind is left
            # above): kept out of the way of the rest, but not lost: set aside in the
            # file for a person to look at (deleted, a push answered 202 was gone unseen).
            self.spool.set_aside(event.id)
            log.error("spooled event is not a push; set aside in the spool file's set_aside "
                      "table", extra={"delivery": event.delivery, "error": type(err).__name__,
                                      "spool": str(self.spool.directory)})
            return True
        pushed = push.push_to(self.intake)  # RetryableError: the row stays
        self.spool.remove(event.id)
        log.info("spooled push moved to the intake", extra={
            "build_key": pushed.build_key, "queued": pushed.queued,
            **({"reason": pushed.reason} if pushed.reason else {})})
        return True

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: drain, then look again after the interval; while Redis
        refuses, wait a growing pause (up to MAX_PAUSE_SECONDS)."""
        pause = 0.0
        while not stop.is_set():
            try:
                if moved := self.drain():
                    log.info("spool drained", extra={"events": moved})
                pause = 0.0
            except RetryableError as err:
                pause = min(max(pause * 2, self.interval_seconds), MAX_PAUSE_SECONDS)
                log.warning("spool drainer waits for Redis",
                            extra={"error": str(err), "pause_seconds": pause})
            except (SpoolError, OSError) as err:
                pause = MAX_PAUSE_SECONDS
                log.error("spool drainer cannot read the spool",
                          extra={"error": f"{type(err).__name__}: {err}"})
            except Exception:  # a bug must not end the thread that empties the spool
                pause = MAX_PAUSE_SECONDS
                log.exception("spool drainer failed")
            stop.wait(pause or self.interval_seconds)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """`run` in a daemon thread that leaves SIGTERM and SIGINT to the main thread."""
        return start_loop(self.run, name="spool-drainer")
