"""A damaged spool file moved aside whose rows a later start copies (the start that moved it
was killed, or its volume was full): the pushes spooled in the new file meanwhile, and the
rows of a kept file copied once already, are each drained once."""

import os
import signal
import sqlite3

from tests.integration.test_spool import PUSH
from tests.integration.test_spool_damaged import prepare_in_a_child, spool_with_a_damaged_page
from workers.adapters import spool_repair
from workers.adapters.spool import FILE_NAME, Spool
from workers.engine.spool_drain import SpooledPush


def deliveries(spool_dir) -> list[str]:
    db = sqlite3.connect(spool_dir / FILE_NAME)
    try:
        return [d for d, in db.execute("SELECT delivery FROM events ORDER BY id")]
    finally:
        db.close()


def put(spool_dir, *names: str) -> None:
    spool = Spool(spool_dir)
    for name in names:
        assert spool.put(name, SpooledPush(name, name, PUSH, 60).to_bytes())
    spool.close()


def test_rows_copied_after_pushes_were_spooled_in_the_new_file_are_all_kept(tmp_path):
    """The start that moved the file aside could not copy its rows (killed here; a full volume
    alike), and the web then spooled pushes in the new file, ids 1, 2, 3. The next start's
    copy kept each row's id with INSERT OR IGNORE: the kept file's rows 1, 2 and 3 (its
    oldest pushes, answered 202) were dropped without a word."""
    spool_dir = tmp_path / "spool"
    spool_with_a_damaged_page(spool_dir, 200)
    assert prepare_in_a_child(spool_dir, file_size_limit=128 * 1024) == -signal.SIGXFSZ
    put(spool_dir, "gitlab:new-0", "gitlab:new-1", "gitlab:new-2")
    _, repaired = Spool(spool_dir).prepare()
    spooled = deliveries(spool_dir)
    assert len(repaired) == 1 and len(spooled) == repaired[0].rows + 3
    assert {"gitlab:old-0", "gitlab:old-1", "gitlab:old-2"} <= set(spooled)
    assert {"gitlab:new-0", "gitlab:new-1", "gitlab:new-2"} <= set(spooled)
    assert len(set(spooled)) == len(spooled)


def test_a_kept_file_whose_rows_went_into_a_file_damaged_since_is_not_copied_again(tmp_path):
    """The new file a first repair made, its copied rows long drained, was damaged in turn and
    moved aside beside the first kept file. The next start's new file had no `salvaged` row
    for the first one, so its rows were copied again and every push in it drained (built)
    a second time. The second kept file names what was copied into it."""
    spool_dir = tmp_path / "spool"
    spool_with_a_damaged_page(spool_dir, 200)
    _, first = Spool(spool_dir).prepare()
    assert len(first) == 1 and first[0].rows >= 150
    # the first kept file as an earlier start left it (move_aside names it by the second)
    earlier = first[0].kept_as.with_name(f"{FILE_NAME}.damaged-20260101T000000Z")
    first[0].kept_as.rename(earlier)
    db = sqlite3.connect(spool_dir / FILE_NAME)
    db.execute("UPDATE salvaged SET kept_as = ?", (earlier.name,))
    db.commit()
    db.close()
    spool = Spool(spool_dir)  # its rows drained
    spool.remove_many([event.id for event in spool.oldest(1000)])
    spool.close()
    assert deliveries(spool_dir) == []
    # the new file damaged in its turn, with pushes spooled since
    damage_with_pushes(spool_dir, [f"gitlab:later-{n}" for n in range(200)])
    _, second = Spool(spool_dir).prepare()
    spooled = deliveries(spool_dir)
    assert [r.kept_as.name for r in second] != [] and earlier not in [r.kept_as for r in second]
    assert spooled and all(name.startswith("gitlab:later-") for name in spooled), spooled[:5]


def damage_with_pushes(spool_dir, names: list[str]) -> None:
    """`names` spooled, then a page past the first two thirds of the file written over."""
    put(spool_dir, *names)
    db = sqlite3.connect(spool_dir / FILE_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    with open(spool_dir / FILE_NAME, "r+b") as f:
        f.seek(page * (pages * 2 // 3))
        f.write(b"\xff" * page)


def test_a_kept_file_whose_table_root_is_damaged_does_not_hold_up_the_start(tmp_path):
    """The page at the root of the events table written over: every read of a row fails, and
    the copy tried each id, one SELECT each, up to the highest id the file ever gave
    (sqlite_sequence: never lowered, so it grows with every push spooled over the spool's
    life, or is any number a damaged page says). 200,000 ids took 17 s here; a few million
    outlast the chart's startup probe (300 s), and the start killed before its copy was
    committed began it again: the web never served. The damaged stretch is now found by
    doubling steps and a bisection, and the start takes seconds."""
    spool_dir = tmp_path / "spool"
    put(spool_dir, *[f"gitlab:old-{n}" for n in range(50)])
    db = sqlite3.connect(spool_dir / FILE_NAME)
    db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (10**12,))
    db.commit()
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with open(spool_dir / FILE_NAME, "r+b") as f:
        f.seek(page * (root - 1))
        f.write(b"\xff" * page)
    assert prepare_in_a_child(spool_dir) == 0  # within its 60 s (each id: days)
    db = sqlite3.connect(spool_dir / FILE_NAME)
    assert [rows for rows, in db.execute("SELECT rows FROM salvaged")] == [0]
    db.close()


def test_the_copy_of_a_large_kept_file_does_not_grow_a_wal_as_large(tmp_path):
    """The copy was one transaction: SQLite's WAL held every page of it until the commit, so
    the volume held the kept file, the copy in the WAL and then the copy in the new file: three
    times a full spool (~320 MB each at the chart's maxBytes), where the chart's emptyDir
    (512Mi) is sized for one, and the kubelet evicted the pod and deleted its spool, every
    push in it lost. Committed in batches, the WAL stays near SQLite's checkpoint (4 MiB); a
    start that stops mid-copy copies it again, each delivery once (UNIQUE (owner, delivery))."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    Spool(old).prepare()  # the schema of a spool
    db = sqlite3.connect(old / FILE_NAME)
    with db:
        db.executemany("INSERT INTO events (delivery, payload, size, spooled_at) "
                       "VALUES (?, ?, 3000, 0)", ((f"gitlab:{n}", b"x" * 3000)
                                                  for n in range(4000)))  # 12 MB
    db.close()
    Spool(new).prepare()
    into = sqlite3.connect(new / FILE_NAME, isolation_level=None)
    try:
        assert into.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert spool_repair.salvage(old / FILE_NAME, into) == 4000
        wal = os.path.getsize(f"{new / FILE_NAME}-wal")
        assert wal < 8 * 2**20, wal
        into.execute("DELETE FROM salvaged")  # as a start stopped before its last commit
        assert spool_repair.salvage(old / FILE_NAME, into) == 0  # the next: none twice
        assert into.execute("SELECT count(*) FROM events").fetchone()[0] == 4000
    finally:
        into.close()
