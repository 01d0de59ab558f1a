"""The first start of this version on a spool file an earlier version wrote, holding a long
outage's rows: the web process as production runs it (gunicorn, service/gunicorn.conf.py, two
workers), its Redis away, takes every push into the spool from the moment it answers."""

import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.integration.test_spool import PUSH
from tests.integration.test_spool_outage import send
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, web_env, web_process
from workers.adapters.spool import FILE_NAME, spooled_events
from workers.engine.spool_drain import SpooledPush

ROWS = 26_000  # ~240 MB of real spooled pushes: a long outage's, within the default bounds
# The table as versions before the owner made it (git show 6b9b7fb8^:workers/adapters/spool.py)
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  delivery TEXT NOT NULL UNIQUE,
  payload BLOB NOT NULL,
  size INTEGER NOT NULL,
  spooled_at REAL NOT NULL
)
"""


def old_spool(directory: Path) -> None:
    """A spool file of a version before the owner, as it left it: WAL, its rows, no owner
    column nor owner index; its pages out of the page cache, as after a pod's restart."""
    directory.mkdir()
    db = sqlite3.connect(directory / FILE_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    db.execute("BEGIN")
    db.executemany("INSERT INTO events (delivery, payload, size, spooled_at) VALUES (?, ?, ?, 0)",
                   ((f"gitlab:old-{n}", row, len(row)) for n in range(ROWS) for row in [
                       SpooledPush(f"gitlab:old-{n}", f"k{n}", PUSH, 60).to_bytes()]))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    fd = os.open(directory / FILE_NAME, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_the_first_start_on_an_earlier_versions_spool_answers_every_push_202(tmp_path):
    """Each gunicorn worker brought the file to this version's schema as it opened it (the
    owner column: the table rewritten; the owner index: every row read), under SQLite's write
    lock, for seconds at this size. The other worker's open waited LOCK_TIMEOUT_SECONDS (2 s)
    for it, logged "the spool cannot take events" at boot, and answered 503 to pushes it took
    meanwhile: pushes GitLab never sends again. gunicorn's master now does it before any
    worker starts."""
    spool_dir = tmp_path / "spool"
    old_spool(spool_dir)
    port = free_port()
    env = web_env(f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there: Redis away
                  CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", CI_AUTOSCALER_SPOOL_DIR=str(spool_dir),
                  CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS="1", WEB_CONCURRENCY="2")
    log = tmp_path / "web.log"
    with web_process(GUNICORN, env, port, log):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda n: send(port, 50_000 + n), range(32)))
    statuses = [status for status, _ in answers]
    print(f"answers: {sorted(set(statuses))}, 503s: {statuses.count(503)}")
    assert [(s, a.get("status")) for s, a in answers] == [(202, "spooled")] * 32, answers
    assert "the spool cannot take events" not in log.read_text()
    assert spooled_events(spool_dir) == ROWS + 32  # the earlier version's rows kept
