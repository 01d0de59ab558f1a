"""The spool's live lock: a web that runs on a spool directory holds a shared flock on its file
`live.lock` for as long as it runs (each gunicorn worker, and the master between workers), and
the kernel drops it when the process dies, however it dies.

What it tells: the owner of a spooled row names an installation and its Redis, so it cannot
tell "our Redis moved" from "another installation of the same name (both unset, say), with its
own Redis, runs on this host as this user". That one's default spool directory looks like one
this installation left behind; held live, it is neither counted as stranded nor adopted from
(workers.adapters.spool_adopt): its own web drains it.

A look (`held_elsewhere`) takes the lock exclusively without waiting and lets it go at once: it
fails while any other open file holds it, shared or not. It never makes the file: a directory
without one has had no web of this version. The drainer's lock (workers.engine.spool_drain,
`drain.lock`, exclusive between the workers of one web) is another file, left as it was.
"""

import fcntl
import os

LIVE_FILE = "live.lock"


def hold(directory: str | os.PathLike) -> int:
    """Open `directory`'s live lock and hold it shared; the descriptor, to keep open for the
    web's whole life (closed, or the process gone, the lock is dropped). Waits only while a
    look holds it (a moment). Raises OSError."""
    fd = os.open(os.path.join(directory, LIVE_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


def held_elsewhere(directory: str | os.PathLike) -> bool:
    """Whether a web runs on `directory` (a process holds its live lock: this one's own holds
    count too, through another open file). False without the file, or when it cannot be
    opened (no web of this version made it)."""
    try:
        fd = os.open(os.path.join(directory, LIVE_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # and the look's lock with it
    return False
