"""The spool: events the web took while Redis could not, kept on the web pod's own disk until
the drainer (workers.spool_drain) has moved each into Redis's intake.

SQLite (the stdlib's sqlite3) in WAL mode with synchronous=FULL, rather than a file format of
our own: a commit is atomic and the WAL is fsynced before it returns, so a row is on disk when
`put` returns and the web may answer 202; a crash or SIGKILL at any moment leaves the file as of
its last commit (no torn record, no recovery code of ours); the gunicorn workers of a pod write
the same file at once under SQLite's own locks; and its bounds are checked inside the write
transaction, so two processes cannot both take the last free place.

Table ``events``: one row per delivery (its id is unique, so a resent delivery is spooled
once), oldest first, with its payload (opaque bytes to the spool) and its size.
"""

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "spool.sqlite3"
MAX_EVENTS = 100_000  # default bound on the rows (CI_AUTOSCALER_SPOOL_MAX_EVENTS)
MAX_BYTES = 256 * 2**20  # default bound on the payloads' bytes (CI_AUTOSCALER_SPOOL_MAX_BYTES)
# How long a write waits for another process's write lock before the spool counts as
# unwritable: a commit takes milliseconds, and GitLab waits 10 s for the whole answer.
LOCK_TIMEOUT_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  delivery TEXT NOT NULL UNIQUE,
  payload BLOB NOT NULL,
  size INTEGER NOT NULL,
  spooled_at REAL NOT NULL
)
"""


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
    still starts, and says so: `check`)."""

    def __init__(self, directory: str | os.PathLike, *, max_events: int = MAX_EVENTS,
                 max_bytes: int = MAX_BYTES):
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_events, self.max_bytes = max_events, max_bytes
        self._lock = threading.Lock()  # one connection, shared by the process's threads
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None and self._pid == os.getpid():
            return self._db
        self.directory.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT).
        db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None,
                             check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            db.execute(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        self._db, self._pid = db, os.getpid()  # a forked child opens its own
        return db

    def check(self) -> str | None:
        """None when the spool can take an event; otherwise why not (unwritable, or full)."""
        try:
            with self._lock:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")  # takes the write lock: the file is writable
                try:
                    events, size = db.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM events").fetchone()
                finally:
                    db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as err:
            return f"{type(err).__name__}: {err}"
        if events >= self.max_events or size >= self.max_bytes:
            return f"the spool is full ({events} events, {size} bytes)"
        return None

    def put(self, delivery: str, payload: bytes) -> bool:
        """Store the event and fsync it; False when this delivery is spooled already. Raises
        SpoolRefused when the spool is full or cannot be written."""
        try:
            with self._lock:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")  # the write lock, before the bounds are read
                try:
                    if db.execute("SELECT 1 FROM events WHERE delivery = ?",
                                  (delivery,)).fetchone():
                        db.execute("ROLLBACK")
                        return False
                    events, size = db.execute(
                        "SELECT count(*), coalesce(sum(size), 0) FROM events").fetchone()
                    if events + 1 > self.max_events or size + len(payload) > self.max_bytes:
                        db.execute("ROLLBACK")
                        raise SpoolRefused("full", (
                            f"the spool is full ({events} events, {size} bytes; bounds "
                            f"{self.max_events} events, {self.max_bytes} bytes)"))
                    db.execute("INSERT INTO events (delivery, payload, size, spooled_at) "
                               "VALUES (?, ?, ?, ?)", (delivery, payload, len(payload), time.time()))
                    db.execute("COMMIT")
                    return True
                except sqlite3.Error:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
        except (sqlite3.Error, OSError) as err:
            raise SpoolRefused("unwritable", f"the spool cannot be written: "
                                             f"{type(err).__name__}: {err}") from err

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._connection().execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as err:
            raise SpoolError(f"{type(err).__name__}: {err}") from err

    def oldest(self, limit: int) -> list[SpooledEvent]:
        rows = self._read("SELECT id, delivery, payload FROM events ORDER BY id LIMIT ?",
                          (limit,))
        return [SpooledEvent(i, d, bytes(p)) for i, d, p in rows]

    def remove(self, event_id: int) -> None:
        """Delete a row (only once Redis has taken its event); committed and fsynced."""
        self._read("DELETE FROM events WHERE id = ?", (event_id,))

    def counts(self) -> tuple[int, int]:
        """(events, bytes) spooled; (0, 0) before the file exists."""
        if self._db is None and not self.path.exists():
            return 0, 0
        (events, size), = self._read("SELECT count(*), coalesce(sum(size), 0) FROM events")
        return int(events), int(size)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
