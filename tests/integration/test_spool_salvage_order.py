"""A damaged spool file whose rows a later start copies (the start that moved it aside was
killed mid-copy), with pushes spooled in the new file meanwhile: drained oldest first, as the
drainer promises (workers.engine.spool_drain), the kept file's pushes before the later ones."""

import os
import resource
import signal
import sqlite3
import subprocess
import sys

from tests.integration.test_spool_damaged import prepare_in_a_child, spool_with_a_damaged_page
from tests.integration.test_spool_salvage_retry import deliveries, put
from workers.adapters.spool import FILE_NAME, Spool


def test_the_kept_files_pushes_are_drained_before_those_spooled_after_it(tmp_path):
    """The new file gave the pushes spooled after the killed start ids 1, 2, 3, which the kept
    file's three oldest pushes held: those were given new ids past all the others, so the
    drain took the three new pushes first, then the kept file's from its fourth on, and its
    three oldest last (a branch's older push built after its newer ones). The new file's ids
    now start past the kept file's highest, before a row of it is copied."""
    spool_dir = tmp_path / "spool"
    spool_with_a_damaged_page(spool_dir, 200)
    assert prepare_in_a_child(spool_dir, file_size_limit=128 * 1024) == -signal.SIGXFSZ
    put(spool_dir, "gitlab:new-0", "gitlab:new-1", "gitlab:new-2")
    _, repaired = Spool(spool_dir).prepare()
    spooled = deliveries(spool_dir)
    assert len(repaired) == 1 and len(spooled) == repaired[0].rows + 3
    old = [int(d.rsplit("-", 1)[1]) for d in spooled[:-3]]
    assert spooled[:3] == ["gitlab:old-0", "gitlab:old-1", "gitlab:old-2"], spooled[:5]
    assert old == sorted(old) and spooled[-3:] == ["gitlab:new-0", "gitlab:new-1",
                                                   "gitlab:new-2"]


def prepare_on_a_full_volume(spool_dir, limit: int) -> subprocess.CompletedProcess:
    """Spool.prepare as gunicorn's master runs it, where a write past `limit` bytes fails
    with EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored as Python does): SQLite's "database or disk is
    full", as on a full emptyDir."""
    def limit_size() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-c", "import sys; from workers.adapters.spool import Spool; "
                               "Spool(sys.argv[1]).prepare()", str(spool_dir)],
        preexec_fn=limit_size, capture_output=True, text=True, timeout=120)


def test_rows_a_failed_copy_committed_and_the_web_drained_are_not_copied_again(tmp_path):
    """The copy commits 1000 rows at a time; a full volume stopped it after some batches, the
    start went on (a warning: the web serves), and the drain built and deleted the rows
    copied. The next start copied the kept file again from its first row, found none of
    those deliveries in the new file, and copied them again: each push built twice. It now
    goes on past the last batch committed."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    Spool(spool_dir).prepare()  # the schema of a spool
    db = sqlite3.connect(spool_dir / FILE_NAME)
    with db:
        db.executemany("INSERT INTO events (delivery, payload, size, spooled_at) "
                       "VALUES (?, ?, 3000, 0)", ((f"gitlab:{n}", b"x" * 3000)
                                                  for n in range(4000)))  # 12 MB
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with open(spool_dir / FILE_NAME, "r+b") as f:  # the last page written over
        f.seek(-4096, os.SEEK_END)
        f.write(b"\xff" * 4096)
    failed = prepare_on_a_full_volume(spool_dir, 6 * 2**20)
    assert "were not copied" in failed.stderr, failed.stderr[-2000:]
    # what went wrong is said, not a failed ROLLBACK after SQLite's own
    assert "cannot rollback" not in failed.stderr, failed.stderr[-2000:]
    spool = Spool(spool_dir)  # the web's drain: built, and deleted
    drained = [event.delivery for event in spool.oldest(5000)]
    spool.remove_many([event.id for event in spool.oldest(5000)])
    spool.close()
    assert 0 < len(drained) < 4000, len(drained)
    _, repaired = Spool(spool_dir).prepare()
    assert len(repaired) == 1
    again = set(deliveries(spool_dir)) & set(drained)
    assert not again, f"{len(again)} drained pushes copied again"
    assert len(drained) + len(deliveries(spool_dir)) >= 3990
