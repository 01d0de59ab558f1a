"""The spool: events the web took while Redis could not, kept on the web pod's own disk until
the drainer (workers.engine.spool_drain) has moved each into Redis's intake.

SQLite (the stdlib's sqlite3) in WAL mode with synchronous=FULL, rather than a file format of
our own: a commit is atomic and the WAL is fsynced before it returns, so a row is on disk when
`put` returns and the web may answer 202; a crash or SIGKILL at any moment leaves the file as of
its last commit (no torn record, no recovery code of ours); the gunicorn workers of a pod write
the same file at once under SQLite's own locks; and its bounds are checked inside the write
transaction, so two processes cannot both take the last free place.

Table ``events``: one row per delivery and owner (a resent delivery is spooled once), oldest
first, with its payload (opaque bytes to the spool) and its size. The owner names the
installation that took the push and the Redis its intake is in (Settings.spool_owner): a spool
directory that two installations share (one CI_AUTOSCALER_SPOOL_DIR for both) holds rows of
each, and each drains only its own, into its own Redis. Rows of versions before the owner
(owner '') are drained by whichever owner drains the directory, as those versions did: the
chart's spool is each web pod's own.
"""

import errno
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from workers.adapters import spool_live, spool_repair

FILE_NAME = "spool.sqlite3"
MAX_EVENTS = 100_000  # default bound on the rows (CI_AUTOSCALER_SPOOL_MAX_EVENTS)
MAX_BYTES = 256 * 2**20  # default bound on the payloads' bytes (CI_AUTOSCALER_SPOOL_MAX_BYTES)
# How long a write waits for another process's write lock before the spool counts as
# unwritable: a commit takes milliseconds, and GitLab waits 10 s for the whole answer.
LOCK_TIMEOUT_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {table} (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  owner TEXT NOT NULL DEFAULT '',
  delivery TEXT NOT NULL,
  payload BLOB NOT NULL,
  size INTEGER NOT NULL,
  spooled_at REAL NOT NULL,
  UNIQUE (owner, delivery)
)
"""
# Each owner's rows in id order, with their sizes: the drainer's next batch (`oldest`) is read
# from it in O(batch), and the bounds (`put`, `check`, `counts`) are summed from it without
# reading a payload. Without it, with the spool near its default 100,000 events, every put
# read the whole table under the write lock (0.7 s each, so the web's processes waited on each
# other past LOCK_TIMEOUT_SECONDS and answered 503 with room left), and every batch of the
# drain sorted every row left (draining got slower the more there was to drain).
_INDEX = "CREATE INDEX IF NOT EXISTS events_by_owner ON events (owner, id, size)"
# Rows the drainer could not read as an event (workers.engine.spool_drain): moved here, not
# deleted, so that a person can look at them (sqlite3 FILE 'SELECT * FROM set_aside'); no
# drainer reads this table, nor do the bounds count it.
_SET_ASIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS set_aside (
  id INTEGER PRIMARY KEY,
  owner TEXT NOT NULL,
  delivery TEXT NOT NULL,
  payload BLOB NOT NULL,
  size INTEGER NOT NULL,
  spooled_at REAL NOT NULL,
  set_aside_at REAL NOT NULL
)
"""
# Room a put leaves free on the spool's volume: SQLite deletes through its WAL (up to its
# 1000-page checkpoint, 4 MiB, and the checkpoint then grows the file by the pages not in it
# yet), so a spool that had written until ENOSPC could not delete a drained row ("database or
# disk is full"), and was never drained: 8 MiB was enough, measured; twice that here.
VOLUME_RESERVE_BYTES = 16 * 1024 * 1024
LEGACY_OWNER = ""  # the rows of versions before the owner column


class SpoolError(Exception):
    """The spool file cannot be opened, read or written (sqlite3's or the OS's error)."""


class SpoolRefused(SpoolError):
    """The spool cannot take the event; `reason` says why ("full" or "unwritable")."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class SpooledEvent:
    id: int
    delivery: str
    payload: bytes


class Spool:
    """One spool file in `directory`, opened on first use (so a web whose volume is missing
    still starts, and says so: `check`). Rows are written as `owner`'s; `oldest` and `counts`
    see only `owner`'s and the legacy rows, `others` counts the rest.

    `private`: the directory is a default one under the machine's temp dir, a name anyone can
    take first: it is made mode 0700 and refused unless it is this user's own and no one
    else's to write or read (another user's rows would be drained into our Redis, ours read).
    A directory given by the operator (the chart's volume, often root's with mode 0777) is
    used as it is."""

    def __init__(self, directory: str | os.PathLike, *, owner: str = LEGACY_OWNER,
                 private: bool = False, max_events: int = MAX_EVENTS,
                 max_bytes: int = MAX_BYTES):
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.owner, self.private = owner, private
        self.max_events, self.max_bytes = max_events, max_bytes
        self._lock = threading.Lock()  # one connection, shared by the process's threads
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._live: int | None = None  # the live lock's descriptor, while held (hold_live)

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None and self._pid == os.getpid():
            return self._db
        self.directory.mkdir(mode=0o700 if self.private else 0o777, parents=True, exist_ok=True)
        if self.private:
            self._check_private()
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT).
        db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None,
                             check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            db.execute(_SCHEMA.format(table="events"))
            _add_owners(db)
            db.execute(_INDEX)
        except sqlite3.Error:
            db.close()
            raise
        self._db, self._pid = db, os.getpid()  # a forked child opens its own
        return db

    def prepare(self, *, repair: bool = True) -> tuple[float, list["spool_repair.Repaired"]]:
        """Open the file once and close it: made, or brought to this version's schema (the
        owner column, the owner index), which on a file of an earlier version holding a long
        outage's rows rewrites or reads it all under the write lock (14 s for 250 MB measured
        here). gunicorn's master does it before its first worker (service.startup): done by
        the workers themselves, the second one's open waited out LOCK_TIMEOUT_SECONDS on the
        first one's, and a push it took meanwhile was answered 503 with room in the spool.
        A damaged file (SQLite's quick check) is moved aside and its readable rows copied into
        a new one (workers.adapters.spool_repair), with `repair`: no other process may have it
        open (its writes would go to the file moved aside), so only a master that no other
        web runs beside may; without, SpoolError says what is wrong. A file moved aside whose
        rows were never copied (a start that stopped in between) is copied then too. The
        seconds it took, and what was repaired; raises SpoolError."""
        started, repaired = time.monotonic(), []
        try:
            with self._lock:
                try:
                    try:
                        problem = spool_repair.problem_of(self._connection())
                    except sqlite3.Error as err:
                        if not spool_repair.damaged(err):
                            raise
                        problem = f"{type(err).__name__}: {err}"
                    if problem is not None and not repair:
                        raise SpoolError(f"the spool file is damaged ({problem[:300]}); "
                                         "another web runs on it: not moved aside")
                    if problem is not None:
                        if self._db is not None:
                            self._db.close()
                            self._db = None
                        spool_repair.move_aside(self.path)
                    if repair:
                        repaired = spool_repair.salvage_pending(self.path, self._connection(),
                                                                problem)
                finally:
                    if self._db is not None:  # a forked child opens its own
                        self._db.close()
                        self._db = None
        except spool_repair.NotCopied as err:
            raise SpoolError(str(err)) from err
        except (sqlite3.Error, OSError) as err:
            raise SpoolError(f"{type(err).__name__}: {err}") from err
        return time.monotonic() - started, repaired

    def _check_private(self) -> None:
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode):
            raise PermissionError(f"{self.directory} is not a directory (a link?): not used")
        if info.st_uid != os.geteuid():
            raise PermissionError(f"{self.directory} belongs to user {info.st_uid}, not to "
                                  f"this one ({os.geteuid()}): not used")
        if info.st_mode & 0o077:
            raise PermissionError(f"{self.directory} is open to other users (mode "
                                  f"{stat.S_IMODE(info.st_mode):o}): not used")

    def hold_live(self) -> None:
        """Hold the directory's live lock (workers.adapters.spool_live) until `close`: a web
        runs on it. The directory is made, and checked when private, first; the file is not
        opened (a gunicorn master holds it too, and forks). Raises SpoolError."""
        try:
            with self._lock:
                if self._live is None:
                    self.directory.mkdir(mode=0o700 if self.private else 0o777, parents=True,
                                         exist_ok=True)
                    if self.private:
                        self._check_private()
                    self._live = spool_live.hold(self.directory)
        except OSError as err:
            raise SpoolError(f"{type(err).__name__}: {err}") from err

    def check(self) -> str | None:
        """None when the spool can take an event; otherwise why not (unwritable, or full)."""
        try:
            with self._lock:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")  # takes the write lock: the file is writable
                try:
                    events, size = db.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM events").fetchone()
                    free = _free_bytes(db, self.directory)
                finally:
                    db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as err:
            return f"{type(err).__name__}: {err}"
        if events >= self.max_events or size >= self.max_bytes:
            return f"the spool is full ({events} events, {size} bytes)"
        if free < VOLUME_RESERVE_BYTES:
            return f"the spool's volume is full ({free} bytes free in it and its file)"
        return None

    def put(self, delivery: str, payload: bytes) -> bool:
        """Store the event and fsync it; False when this delivery is spooled already. Raises
        SpoolRefused when the spool is full or cannot be written."""
        try:
            with self._lock:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")  # the write lock, before the bounds are read
                try:
                    if db.execute("SELECT 1 FROM events WHERE owner = ? AND delivery = ?",
                                  (self.owner, delivery)).fetchone():
                        db.execute("ROLLBACK")
                        return False
                    events, size = db.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM events").fetchone()
                    if events + 1 > self.max_events or size + len(payload) > self.max_bytes:
                        db.execute("ROLLBACK")
                        raise SpoolRefused("full", (
                            f"the spool is full ({events} events, {size} bytes; bounds "
                            f"{self.max_events} events, {self.max_bytes} bytes)"))
                    free = _free_bytes(db, self.directory)
                    if free - len(payload) < VOLUME_RESERVE_BYTES:
                        db.execute("ROLLBACK")
                        raise SpoolRefused("full", (
                            f"the spool's volume is full ({free} bytes free in it and its file, "
                            f"{VOLUME_RESERVE_BYTES} kept to drain it)"))
                    db.execute("INSERT INTO events (owner, delivery, payload, size, spooled_at) "
                               "VALUES (?, ?, ?, ?, ?)",
                               (self.owner, delivery, payload, len(payload), time.time()))
                    db.execute("COMMIT")
                    return True
                except sqlite3.Error:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as err:
            if _out_of_space(err):
                raise SpoolRefused("full", f"the spool's volume is full: "
                                           f"{type(err).__name__}: {err}") from err
            raise SpoolRefused("unwritable", f"the spool cannot be written: "
                                             f"{type(err).__name__}: {err}") from err

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """One statement, committed on its own (fsynced); raises SpoolError."""
        try:
            with self._lock:
                return self._connection().execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as err:
            raise SpoolError(f"{type(err).__name__}: {err}") from err

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the write lock (BEGIN IMMEDIATE) until the block ends: then
        committed and fsynced, or rolled back if it raised; raises SpoolError."""
        try:
            with self._lock:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as err:
            raise SpoolError(f"{type(err).__name__}: {err}") from err

    def oldest(self, limit: int, *, after: int = 0) -> list[SpooledEvent]:
        """This owner's rows and the legacy ones, oldest first, past row id `after`; never
        another owner's."""
        # One range of the owner index per owner, merged: `owner IN (...) ORDER BY id` sorted
        # every row of both past `after` for each batch.
        rows = sorted(row for owner in dict.fromkeys((self.owner, LEGACY_OWNER))
                      for row in self.query(
                          "SELECT id, delivery, payload FROM events INDEXED BY events_by_owner "
                          "WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
                          (owner, after, limit)))[:limit]
        return [SpooledEvent(i, d, bytes(p)) for i, d, p in rows]

    def count_through(self, event_id: int) -> int:
        """How many of this owner's rows and the legacy ones have an id up to `event_id` (read
        from the owner index: no payload is read)."""
        (events,), = self.query("SELECT count(*) FROM events WHERE owner IN (?, ?) AND id <= ?",
                                (self.owner, LEGACY_OWNER, event_id))
        return int(events)

    def remove(self, event_id: int) -> None:
        """Delete a row (only once Redis has taken its event); committed and fsynced."""
        self.query("DELETE FROM events WHERE id = ?", (event_id,))

    def remove_many(self, event_ids: list[int]) -> None:
        """Delete rows (only once Redis has taken their events), in one commit, fsynced once:
        a commit a row made the drain as slow as the disk's fsyncs (bench/results/
        spool-drain.md)."""
        if not event_ids:
            return
        with self.transaction() as db:
            for start in range(0, len(event_ids), 500):  # SQLite's bound on parameters
                batch = event_ids[start:start + 500]
                db.execute(f"DELETE FROM events WHERE id IN ({','.join('?' * len(batch))})",
                           batch)

    def set_aside(self, event_id: int) -> None:
        """Move a row the drainer cannot read into the `set_aside` table, in one commit: kept
        for a person to look at, never drained."""
        with self.transaction() as db:
            db.execute(_SET_ASIDE_SCHEMA)
            db.execute("INSERT OR IGNORE INTO set_aside SELECT id, owner, delivery, payload, "
                       "size, spooled_at, ? FROM events WHERE id = ?", (time.time(), event_id))
            db.execute("DELETE FROM events WHERE id = ?", (event_id,))

    def set_aside_events(self) -> list[tuple[str, bytes]]:
        """(delivery, payload) of the rows set aside, oldest first."""
        if not self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'set_aside'"):
            return []
        return [(d, bytes(p)) for d, p in
                self.query("SELECT delivery, payload FROM set_aside ORDER BY id")]

    def set_aside_count(self) -> int:
        """How many rows are set aside (ci_autoscaler_spool_set_aside_events): the drain
        counts them out of the spool's events, so without it a spool at 0 looked drained,
        and the pod was deleted with the pushes a person could still have read."""
        if not self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'set_aside'"):
            return 0
        return self.query("SELECT count(*) FROM set_aside")[0][0]

    def counts(self) -> tuple[int, int]:
        """(events, bytes) spooled that this owner drains (its own and the legacy rows);
        (0, 0) before the file exists."""
        if self._db is None and not self.path.exists():
            return 0, 0
        (events, size), = self.query("SELECT count(*), coalesce(sum(size), 0) FROM events "
                                     "WHERE owner IN (?, ?)", (self.owner, LEGACY_OWNER))
        return int(events), int(size)

    def others(self) -> dict[str, int]:
        """The rows of other owners, counted by owner: left for them to drain."""
        if self._db is None and not self.path.exists():
            return {}
        rows = self.query("SELECT owner, count(*) FROM events WHERE owner NOT IN (?, ?) "
                          "GROUP BY owner ORDER BY owner", (self.owner, LEGACY_OWNER))
        return {owner: int(n) for owner, n in rows}

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._live is not None:
                os.close(self._live)  # and the live lock with it
                self._live = None


def _free_bytes(db: sqlite3.Connection, directory: Path) -> int:
    """Room for rows: the volume's free bytes and the file's free pages (drained rows'), which
    take new rows without growing it."""
    volume = os.statvfs(directory)
    pages = db.execute("PRAGMA freelist_count").fetchone()[0]
    return (volume.f_bavail * volume.f_frsize
            + pages * db.execute("PRAGMA page_size").fetchone()[0])


def _out_of_space(err: BaseException) -> bool:
    """A volume with no room left (SQLite's SQLITE_FULL, "database or disk is full"; the OS's
    ENOSPC or EDQUOT): a full spool, whatever its bounds say, not an unwritable one (a missing
    or read-only volume), which an operator looks for elsewhere."""
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def spooled_events(directory: str | os.PathLike) -> int:
    """How many rows a spool file holds, whoever's (0 with no file, or no table yet), read
    without a write: the file may be another installation's, or another user's. Raises
    SpoolError when it cannot be read."""
    path = Path(directory) / FILE_NAME
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                             timeout=LOCK_TIMEOUT_SECONDS)
        try:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                              "name = 'events'").fetchone():
                return 0
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            db.close()
    except (sqlite3.Error, OSError) as err:
        raise SpoolError(f"{type(err).__name__}: {err}") from err


def _add_owners(db: sqlite3.Connection) -> None:
    """A file of a version before the owner column, given one: the table made again with it
    (SQLite cannot change a UNIQUE constraint in place; the delivery was unique alone), its
    rows kept, with their ids, as legacy rows. In one transaction under the write lock, so
    the web's other processes, opening it at once, see the old table or the new one."""
    def has_owner() -> bool:
        return any(row[1] == "owner" for row in db.execute("PRAGMA table_info(events)"))

    if has_owner():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not has_owner():  # another process may have done it while we waited
            db.execute(_SCHEMA.format(table="events_owned"))
            db.execute("INSERT INTO events_owned (id, delivery, payload, size, spooled_at) "
                       "SELECT id, delivery, payload, size, spooled_at FROM events")
            # AUTOINCREMENT's high mark, which DROP TABLE deletes: the ids of drained rows
            # are not given again
            db.execute("DELETE FROM sqlite_sequence WHERE name = 'events_owned'")
            db.execute("INSERT INTO sqlite_sequence (name, seq) SELECT 'events_owned', seq "
                       "FROM sqlite_sequence WHERE name = 'events'")
            db.execute("DROP TABLE events")
            db.execute("ALTER TABLE events_owned RENAME TO events")
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
