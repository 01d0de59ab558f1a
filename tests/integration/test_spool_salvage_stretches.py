"""A damaged spool file whose damaged pages are not one stretch of ids (bad blocks here and
there, or a range of the file written over whose pages SQLite had reused, out of id order, as
drained rows freed them): the copy reads every row on a page that can be read."""

import sqlite3

from tests.support.sqlite_pages import table_leaves
from workers.adapters import spool_repair
from workers.adapters.spool import FILE_NAME, Spool


def kept_file(spool_dir, sizes: list[int]) -> tuple[list[tuple[int, list[int]]], int]:
    """A spool of pushes of `sizes` bytes, ids 1, 2, ...; its table's leaves and page size."""
    Spool(spool_dir).prepare()  # the schema of a spool
    db = sqlite3.connect(spool_dir / FILE_NAME)
    with db:
        db.executemany("INSERT INTO events (delivery, payload, size, spooled_at) "
                       "VALUES (?, ?, ?, 0)",
                       ((f"gitlab:{n}", b"x" * size, size) for n, size in enumerate(sizes)))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    return table_leaves(spool_dir / FILE_NAME, root, page_size), page_size


def write_over(path, pages: list[int], page_size: int) -> None:
    with open(path, "r+b") as f:
        for page in pages:
            f.seek(page_size * (page - 1))
            f.write(b"\xff" * page_size)


def copied_ids(kept, tmp_path) -> set[int]:
    new = tmp_path / "new"
    new.mkdir()
    Spool(new).prepare()
    into = sqlite3.connect(new / FILE_NAME, isolation_level=None)
    try:
        spool_repair.salvage(kept, into)
        return {int(d.split(":")[1]) + 1 for d, in into.execute("SELECT delivery FROM events")}
    finally:
        into.close()


def test_a_readable_page_between_two_damaged_stretches_is_copied(tmp_path):
    """Pushes of 150 bytes (23 a page) with three of 1200 among them (a page of 17 rows):
    the two pages before that one and the page after it written over. The damaged stretch
    was skipped by steps of doubling length (1, 2, 4, ... ids), and a step that landed past
    the readable page, in the next damaged one, went on from there: the 17 pushes of the
    page between, answered 202 and readable, were never copied nor drained."""
    old = tmp_path / "old"
    old.mkdir()
    leaves, page_size = kept_file(old, [150] * 200 + [1200] * 3 + [150] * 200)
    middle = next(n for n, (_, ids) in enumerate(leaves) if 201 in ids)
    damaged = [leaves[middle - 2], leaves[middle - 1], leaves[middle + 1]]
    write_over(old / FILE_NAME, [page for page, _ in damaged], page_size)
    lost = {i for _, ids in damaged for i in ids}
    assert 201 not in lost and len(leaves[middle][1]) > 1
    assert copied_ids(old / FILE_NAME, tmp_path) == set(range(1, 404)) - lost
