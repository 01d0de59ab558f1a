"""A damaged spool file, found when the web starts: moved aside, kept, and its readable rows
copied into a new one (workers.adapters.spool).

SQLite in WAL mode with synchronous=FULL does not damage its own file on a crash, but a disk,
a volume driver or a person can (a bad block, a copy of spool.sqlite3 without its -wal, a
file written over). Such a file refused every write ("file is not a database", "database
disk image is malformed"), so while Redis was away every push was answered 503, on every
start, until someone removed the file by hand; its rows were never drained. gunicorn's master
checks the file before any worker opens it (service.startup.prepare_spool): no other process
has it open then, so the move loses no write. The damaged file (and its -wal) stays beside the
new one as spool.sqlite3.damaged-<time>, for a person (sqlite3's `.recover`).
"""

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ci_autoscaler.spool")
DAMAGED_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_COLUMNS = "id, owner, delivery, payload, size, spooled_at"


@dataclass(frozen=True)
class Repaired:
    kept_as: Path  # the damaged file, moved aside
    rows: int  # rows copied from it into the new file
    problem: str  # what SQLite said of it


def damaged(err: BaseException) -> bool:
    """SQLite says the file is not a database, or that it is malformed."""
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in DAMAGED_CODES


def problem_of(db: sqlite3.Connection) -> str | None:
    """What SQLite's quick check finds wrong with an open file (its b-trees and pages, every
    one read), or None. Raises sqlite3.Error."""
    found = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
    return None if found == ["ok"] else "; ".join(found)


def move_aside(path: Path) -> Path:
    """The file and its -wal and -shm renamed to <name>.damaged-<time> (the -wal stays the
    new name's own, so SQLite still reads it with the file); the new name."""
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("-wal", "-shm", ""):
        try:
            os.rename(f"{path}{suffix}", f"{kept}{suffix}")
        except FileNotFoundError:
            pass
    return kept


def salvage(kept: Path, into: sqlite3.Connection) -> int:
    """Copy the rows of the damaged file `kept` that can still be read into `into` (the new
    file, its schema made), with their ids and owners, in one commit; how many."""
    rows = _readable_rows(kept)
    into.execute("BEGIN IMMEDIATE")
    try:
        copied = sum(into.execute(f"INSERT OR IGNORE INTO events ({_COLUMNS}) "
                                  "VALUES (?, ?, ?, ?, ?, ?)", row).rowcount for row in rows)
        into.execute("COMMIT")
    except BaseException:
        into.execute("ROLLBACK")
        raise
    return copied


def _readable_rows(kept: Path) -> list[tuple]:
    """The rows, oldest first, read past the pages that cannot be: a scan stopped at a
    damaged page goes on from the next id, up to the highest id given (sqlite_sequence)."""
    rows: list[tuple] = []
    try:
        source = sqlite3.connect(kept, isolation_level=None)
    except sqlite3.Error:
        return rows
    try:
        try:
            top = int(source.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'"
                                     ).fetchone()[0])
        except (sqlite3.Error, TypeError):
            top = 0
        after = 0
        while True:
            try:
                cursor = source.execute(f"SELECT {_COLUMNS} FROM events WHERE id > ? "
                                        "ORDER BY id", (after,))
                while (row := cursor.fetchone()) is not None:
                    rows.append(row)
                    after = row[0]
                return rows
            except sqlite3.Error:
                if after >= top:
                    return rows
                after += 1  # the row past the last one read is on a page that cannot be
    finally:
        source.close()
