"""The rows of a damaged spool file that can still be read (workers.adapters.spool_repair
copies them into a new file): every row on a page SQLite can read, oldest first.

A scan stops at the first page it cannot read, and two things about where lose rows if taken
at face value. Python's sqlite3 steps to the next row before it hands over the one it has
(pysqlite_cursor_iternext), so the scan raises on the last readable row before a damaged
page, not after it. And a read of the rows past an id seeks that id first (OP_SeekGT moves to
the id, then on), on the page that would hold it: past the last id of a damaged page it
fails, though the next page is sound. So after a failure the next row is read on its own
(LIMIT 1: no step past it), and a row past damage by its id (a seek to that very id, on its
own page). The ids come from an index of the table (its own b-tree, pages apart from the
rows): each unreadable row costs three failed reads (a damaged root page under the default
100,000 rows: 6.5 s here), a readable one is never skipped. Only when
no index can be read either, a damaged stretch is skipped by steps of doubling length and a
bisection (_past_damage), which can step over a short readable stretch between two damaged
ones (better than no row past the damage).
"""

import bisect
import sqlite3
from collections.abc import Iterator
from pathlib import Path

COLUMNS = "id, owner, delivery, payload, size, spooled_at"


def readable_rows(kept: Path, after: int = 0) -> Iterator[tuple]:
    """The rows (COLUMNS) of the damaged file `kept` past id `after` that can be read, oldest
    first, one at a time: a full spool's rows (256 MiB) held at once outgrew the web's
    memory."""
    try:
        source = sqlite3.connect(kept, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        ids: list[int] | None = None
        while True:
            try:
                cursor = source.execute(f"SELECT {COLUMNS} FROM events WHERE id > ? "
                                        "ORDER BY id", (after,))
                while (row := cursor.fetchone()) is not None:
                    after = row[0]
                    yield row
                return
            except sqlite3.Error:
                pass
            try:  # the next row, which the scan read but did not hand over
                row = source.execute(f"SELECT {COLUMNS} FROM events WHERE id > ? "
                                     "ORDER BY id LIMIT 1", (after,)).fetchone()
                if row is None:
                    return
                after = row[0]
                yield row
                continue
            except sqlite3.Error:
                pass
            # the next row is on a page that cannot be read: on from the next id there is
            if ids is None:
                ids = _indexed_ids(source)
            if ids:
                at = bisect.bisect_right(ids, after)
                if at == len(ids):
                    return
                after = ids[at]
            elif (past := _past_damage(source, after, _top(source))) is None:
                return
            else:
                after = past
            if (row := _row(source, after)) is not None:
                yield row
    finally:
        source.close()


def _row(source: sqlite3.Connection, row_id: int) -> tuple | None:
    """The row of that id, if it is there and can be read."""
    try:
        return source.execute(f"SELECT {COLUMNS} FROM events WHERE id = ?", (row_id,)
                              ).fetchone()
    except sqlite3.Error:
        return None


def _indexed_ids(source: sqlite3.Connection) -> list[int]:
    """Every id of the table, sorted, from the first of its indexes (the owner index, the
    UNIQUE (owner, delivery) one) that can be read whole; [] when none can."""
    try:
        names = [name for name, in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")]
    except sqlite3.Error:
        return []
    for name in names:
        quoted = name.replace('"', '""')
        try:
            return sorted(i for i, in source.execute(
                f'SELECT id FROM events INDEXED BY "{quoted}"'))
        except sqlite3.Error:
            continue
    return []


def top_id(kept: Path) -> int:
    """The highest id the file `kept` ever gave (sqlite_sequence), 0 when it cannot be read."""
    try:
        source = sqlite3.connect(kept, isolation_level=None)
    except sqlite3.Error:
        return 0
    try:
        return _top(source)
    finally:
        source.close()


def _top(source: sqlite3.Connection) -> int:
    """The highest id the file ever gave (sqlite_sequence), 0 when it cannot be read."""
    try:
        return int(source.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'"
                                  ).fetchone()[0])
    except (sqlite3.Error, TypeError):
        return 0


def _past_damage(source: sqlite3.Connection, failed: int, top: int) -> int | None:
    """The lowest id a scan can go on after (a read of the row after it succeeds), past
    `failed` (a read of the row after it fails), up to `top`; None when none. Steps of
    doubling length find a readable id, a bisection the end of the damaged stretch: tried one
    id at a time, a damaged root page (each read failing) took a SELECT per id up to the
    highest ever given (200,000 ids: 17 s), and a start killed before its copy was
    committed (the startup probe) began it again, for good."""
    def readable(after: int) -> bool:
        try:
            source.execute(f"SELECT {COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT 1",
                           (after,)).fetchone()
            return True
        except sqlite3.Error:
            return False

    step = 1
    while not readable(failed + step):
        failed += step
        if failed >= top:
            return None
        step *= 2
    good = failed + step
    while good - failed > 1:  # readable(good), not readable(failed)
        middle = (failed + good) // 2
        failed, good = (failed, middle) if readable(middle) else (middle, good)
    return good
