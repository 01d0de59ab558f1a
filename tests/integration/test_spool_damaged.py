"""A spool file damaged while the web was down (a bad block, a file written over): the web
process as production runs it (gunicorn, service/gunicorn.conf.py), its Redis away, still
spools every push, and keeps the damaged file and the rows it can still read."""

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys

import redis as redis_py

from tests.integration.test_spool import PUSH
from tests.integration.test_spool_outage import send
from tests.support.monitoring import wait_until
from tests.support.redis_server import RedisServer, free_port
from tests.support.web_process import GUNICORN, web_env, web_process
from workers.adapters import spool_live
from workers.adapters.spool import FILE_NAME, Spool, spooled_events
from workers.engine.spool_drain import SpooledPush


def start_and_push(tmp_path, spool_dir, pushes: int = 3, *, redis: RedisServer | None = None,
                   then=lambda: None) -> tuple[list[tuple[int, dict]], str]:
    """Start the web on `spool_dir` with its Redis away (`redis`, stopped, or nothing
    listening at its address); send pushes; call `then` while it runs; the answers and the
    web's log."""
    port = free_port()
    url = redis.url if redis else f"redis://127.0.0.1:{free_port()}/0"
    env = web_env(url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}",
                  CI_AUTOSCALER_SPOOL_DIR=str(spool_dir),
                  CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS="1")
    log = tmp_path / "web.log"
    with web_process(GUNICORN, env, port, log):
        answers = [send(port, 70_000 + n) for n in range(pushes)]
        then()
    return answers, log.read_text()


def repaired_line(log: str) -> dict:
    return next(json.loads(line) for line in log.splitlines()
                if "the spool file was damaged" in line)


def test_a_spool_file_that_is_not_a_database_is_kept_aside_and_pushes_are_spooled(tmp_path):
    """A file written over (its header gone): SQLite says "file is not a database" on every
    open, so every push while Redis was away was answered 503 'the spool cannot be written',
    at every start, until a person deleted the file (the runbook says never to)."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    garbage = os.urandom(64 * 1024)
    (spool_dir / FILE_NAME).write_bytes(garbage)
    answers, log = start_and_push(tmp_path, spool_dir)
    assert [(s, a.get("status")) for s, a in answers] == [(202, "spooled")] * 3, answers
    kept = repaired_line(log)
    assert "not a database" in kept["problem"] and kept["rows_copied"] == 0
    assert open(kept["kept_as"], "rb").read() == garbage  # kept as it was, for a person
    assert spooled_events(spool_dir) == 3


def spool_with_a_damaged_page(spool_dir, rows: int) -> None:
    """A spool of `rows` pushes with a page past the first rows written over."""
    spool = Spool(spool_dir)
    for n in range(rows):
        assert spool.put(f"gitlab:old-{n}",
                         SpooledPush(f"gitlab:old-{n}", f"k{n}", PUSH, 60).to_bytes())
    spool.close()
    db = sqlite3.connect(spool_dir / FILE_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    with open(spool_dir / FILE_NAME, "r+b") as f:
        f.seek(page * (pages * 2 // 3))
        f.write(b"\xff" * page)


def test_a_spool_file_with_a_damaged_page_drains_its_readable_rows_and_new_pushes(tmp_path):
    """A page in the middle of a spool holding rows overwritten: pushes were still spooled
    (appended past it), but the drainer's read stopped there ("database disk image is
    malformed", `spool drainer cannot read the spool` every 5 s): neither the rows after it
    nor any push spooled since ever reached Redis, on every restart. Now the rows on the
    other pages are in a new file, oldest first, with the pushes after them, and drained."""
    spool_dir = tmp_path / "spool"
    spool_with_a_damaged_page(spool_dir, 40)
    redis = RedisServer(tmp_path / "redis").start()
    redis.stop()
    intake: list[int] = []

    def drained() -> None:
        redis.start()
        conn = redis_py.Redis.from_url(redis.url)
        wait_until(lambda: not spooled_events(spool_dir), timeout=30,
                   what="the web drained its spool into Redis")
        intake.append(conn.llen("cia:intake"))

    try:
        answers, log = start_and_push(tmp_path, spool_dir, redis=redis, then=drained)
    finally:
        redis.stop()
    assert [(s, a.get("status")) for s, a in answers] == [(202, "spooled")] * 3, answers
    kept = repaired_line(log)
    print(f"damaged spool: {kept['problem']!r}; {kept['rows_copied']} of 40 rows copied")
    # read past the damaged page: the rows after it were copied too
    assert 30 <= kept["rows_copied"] < 40 and os.path.exists(kept["kept_as"])
    assert intake == [kept["rows_copied"] + 3]  # each copied row and each push, in Redis


def test_a_damaged_spool_another_web_runs_on_is_left_in_place(tmp_path):
    """Another web still running on the directory (a restart on a host, the old one still
    finishing its requests) may have the file open: moved aside, the rows it wrote after would
    go into the kept file, drained by nobody. The file stays; the master says why."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    garbage = os.urandom(64 * 1024)
    (spool_dir / FILE_NAME).write_bytes(garbage)
    other = spool_live.hold(spool_dir)  # that web's live lock (workers.adapters.spool_live)
    try:
        answers, log = start_and_push(tmp_path, spool_dir, pushes=1)
    finally:
        os.close(other)
    assert answers[0][0] == 503 and "not a database" in answers[0][1]["reason"]
    assert (spool_dir / FILE_NAME).read_bytes() == garbage
    assert not list(spool_dir.glob("*.damaged-*"))
    assert "another web runs on it: not moved aside" in log


def prepare_in_a_child(spool_dir, file_size_limit: int | None = None) -> int:
    """Spool.prepare as gunicorn's master runs it, in a process of its own that a write past
    `file_size_limit` bytes kills (SIGXFSZ, the kernel's: a real crash at that write; Python
    ignores the signal unless told otherwise); its exit status."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-c", "import signal, sys; from workers.adapters.spool import Spool; "
                               "signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
                               "Spool(sys.argv[1]).prepare()", str(spool_dir)],
        preexec_fn=limit, capture_output=True, timeout=60).returncode


def test_a_start_killed_between_the_move_and_the_copy_leaves_no_row_behind(tmp_path):
    """The master moved a damaged file aside and died before the copy of its rows was
    committed (killed by the kubelet, out of memory, a full volume): the next start found a
    sound, empty file and never looked at the kept one again, nor said so, and the pushes in
    it, answered 202, were never drained. Now the next start copies them, and only once."""
    spool_dir = tmp_path / "spool"
    spool_with_a_damaged_page(spool_dir, 200)
    # killed as the copy writes the new file (200 pushes: ~400 KB)
    assert prepare_in_a_child(spool_dir, file_size_limit=128 * 1024) == -signal.SIGXFSZ
    assert len(list(spool_dir.glob(f"{FILE_NAME}.damaged-*"))) == 1  # moved aside
    assert spooled_events(spool_dir) == 0  # and none of its rows copied yet
    assert prepare_in_a_child(spool_dir) == 0  # the next start
    copied = spooled_events(spool_dir)
    assert 150 <= copied < 200
    _, repaired = Spool(spool_dir).prepare()  # and the one after: nothing copied again
    assert repaired == [] and spooled_events(spool_dir) == copied
