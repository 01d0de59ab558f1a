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

import itertools
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from workers.adapters.damaged_rows import COLUMNS as _COLUMNS, readable_rows, top_id

log = logging.getLogger("ci_autoscaler.spool")
DAMAGED_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
COPY_BATCH = 1000  # rows a commit of a copy: 1-2 MiB in the WAL (checkpointed at 4 MiB)
KEPT_MARK = ".damaged-"  # spool.sqlite3.damaged-<time>: a damaged file, moved aside
# In the new file: each file moved aside whose rows were copied into it (once only).
_SALVAGED_SCHEMA = """
CREATE TABLE IF NOT EXISTS salvaged (
  kept_as TEXT PRIMARY KEY,
  rows INTEGER NOT NULL,
  copied_at REAL NOT NULL
)
"""


# In the new file: how far the copy of a kept file went (its last batch's last id), committed
# with each batch: a start that stopped mid-copy (a full volume, answered by a warning and a
# web that serves and drains) left the batches copied, and the drain deleted them; the next
# start's copy, from the first row, found their deliveries gone and copied them again (each
# built twice). It goes on from there.
_PROGRESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS salvage_progress (
  kept_as TEXT PRIMARY KEY,
  through INTEGER NOT NULL,
  rows INTEGER NOT NULL
)
"""


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


class NotCopied(Exception):
    """The rows of a file moved aside could not be copied (a full volume, say): tried again at
    the next start."""


def move_aside(path: Path) -> Path:
    """The file and its -wal and -shm renamed to <name>.damaged-<time> (the -wal stays the
    new name's own, so SQLite still reads it with the file); the new name."""
    kept = path.with_name(f"{path.name}{KEPT_MARK}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("-wal", "-shm", ""):
        try:
            os.rename(f"{path}{suffix}", f"{kept}{suffix}")
        except FileNotFoundError:
            pass
    return kept


def salvage_pending(path: Path, into: sqlite3.Connection,
                    problem: str | None = None) -> list[Repaired]:
    """Copy the readable rows of each file moved aside beside `path` whose rows `into` (the
    new file) has not had yet, oldest first; what was copied. Each file's name goes into
    table `salvaged` with its last rows (salvage): a start that stopped between the move and
    the copy (killed, out of memory, a full volume) left the rows in the kept file alone, and
    the next start, finding a sound file, never looked at it again, nor said so. `problem`:
    what SQLite said of the file this start moved aside. Raises NotCopied."""
    kept_files = sorted(kept for kept in path.parent.glob(f"{path.name}{KEPT_MARK}*")
                        if not kept.name.endswith(("-wal", "-shm")))
    if not kept_files:
        return []
    into.execute(_SALVAGED_SCHEMA)
    done = {name for name, in into.execute("SELECT kept_as FROM salvaged")}
    for kept in kept_files:  # a kept file that was a new file once: those copied into it
        if kept.name not in done:
            done.update(name for name, *_ in _salvaged_in(kept))
    pending = [kept for kept in kept_files if kept.name not in done]
    _ids_past(into, pending)
    repaired = []
    for n, kept in enumerate(pending):
        try:
            rows = salvage(kept, into)
        except (sqlite3.Error, OSError) as err:
            raise NotCopied(f"the rows of {kept} (moved aside) were not copied, tried again "
                            f"at the next start: {type(err).__name__}: {err}") from err
        repaired.append(Repaired(kept, rows, problem if problem and n == len(pending) - 1
                                 else "moved aside by an earlier start, which stopped before "
                                      "its rows were copied"))
    return repaired


def salvage(kept: Path, into: sqlite3.Connection) -> int:
    """Copy the rows of the damaged file `kept` that can still be read into `into` (the new
    file, its schema made), with their ids and owners, COPY_BATCH rows a commit, and its name
    into `salvaged` with the last; how many. In one commit, SQLite's WAL held the whole copy
    until it: the volume held a full spool three times over (the kept file, the WAL, the new
    file), past the chart's emptyDir sizeLimit (the kubelet evicts the pod, and its spool is
    lost). A start stopped mid-copy goes on past the last batch copied (salvage_progress),
    each delivery once (_copy)."""
    into.execute(_SALVAGED_SCHEMA)
    into.execute(_PROGRESS_SCHEMA)
    through, copied = into.execute("SELECT through, rows FROM salvage_progress WHERE "
                                   "kept_as = ?", (kept.name,)).fetchone() or (0, 0)
    rows = readable_rows(kept, through)
    try:
        while True:
            into.execute("BEGIN IMMEDIATE")
            try:
                batch = list(itertools.islice(rows, COPY_BATCH))
                copied += sum(_copy(into, row) for row in batch)
                if len(batch) < COPY_BATCH:
                    into.execute("INSERT INTO salvaged (kept_as, rows, copied_at) "
                                 "VALUES (?, ?, ?)", (kept.name, copied, time.time()))
                    into.executemany("INSERT OR IGNORE INTO salvaged (kept_as, rows, "
                                     "copied_at) VALUES (?, ?, ?)", _salvaged_in(kept))
                    into.execute("DELETE FROM salvage_progress WHERE kept_as = ?",
                                 (kept.name,))
                else:
                    into.execute("INSERT OR REPLACE INTO salvage_progress (kept_as, through, "
                                 "rows) VALUES (?, ?, ?)", (kept.name, batch[-1][0], copied))
                into.execute("COMMIT")
            except BaseException:
                _roll_back(into)
                raise
            if len(batch) < COPY_BATCH:
                return copied
    finally:
        rows.close()


def _ids_past(into: sqlite3.Connection, pending: list[Path]) -> None:
    """The new file's next ids past the highest each kept file gave, committed before a row
    is copied: a start stopped mid-copy let the web spool pushes in the new file under ids 1,
    2, ..., and the next start's copy, its rows' ids taken, gave them ids past those pushes,
    so the drain (oldest first, by id) took the later pushes before every kept one. A kept
    file whose highest id cannot be read leaves them as they are (_copy gives new ids)."""
    tops = [top for top in map(top_id, pending) if 0 < top < 2**62]
    if not tops:
        return
    into.execute("BEGIN IMMEDIATE")
    try:
        if into.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'",
                        (max(tops),)).rowcount == 0:
            into.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)",
                         (max(tops),))
        into.execute("COMMIT")
    except BaseException:
        _roll_back(into)
        raise


def _roll_back(into: sqlite3.Connection) -> None:
    """The transaction rolled back, if SQLite has not done so itself: on a write that failed
    (a full volume's "disk I/O error") it had, and ROLLBACK raised "cannot rollback - no
    transaction is active", which the start logged in place of what went wrong."""
    if into.in_transaction:
        into.execute("ROLLBACK")


def _salvaged_in(kept: Path) -> list[tuple]:
    """The files whose rows were copied into `kept` when it was the new file (its table
    `salvaged`), as far as it can be read. Without them, a new file damaged in its turn and
    moved aside beside the first one had the next start copy the first one's rows again,
    long drained: every push in it built once more (past Redis's dedupe window)."""
    try:
        source = sqlite3.connect(kept, isolation_level=None)  # read-only left a -wal behind
    except sqlite3.Error:
        return []
    try:
        return source.execute("SELECT kept_as, rows, copied_at FROM salvaged").fetchall()
    except sqlite3.Error:
        return []
    finally:
        source.close()


def _copy(into: sqlite3.Connection, row: tuple) -> int:
    """One row into the new file, under its own id, or under a new one when a push spooled
    in the new file since has that id (a copy done by a later start: the rows spooled in
    between hold ids 1, 2, ..., and INSERT OR IGNORE on the id dropped as many of the kept
    file's oldest pushes, answered 202, unseen); none when its delivery is there already
    (UNIQUE (owner, delivery)): a copy done twice drains each push once. 1 or 0."""
    if into.execute(f"INSERT OR IGNORE INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    row).rowcount:
        return 1
    return into.execute("INSERT OR IGNORE INTO events (owner, delivery, payload, size, "
                        "spooled_at) VALUES (?, ?, ?, ?, ?)", row[1:]).rowcount
