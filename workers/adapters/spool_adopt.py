"""Adoption: another owner's spooled pushes taken into this owner's drain (`ci-autoscaler spool
adopt`). Rows name the Redis their web had when it took them (workers.adapters.spool); a web
whose Redis moved during the outage (REDIS_URL's host renamed, Sentinel switched on) leaves
them alone, and with the default directory, named by that Redis, they are in a directory
nothing reads any more. An operator who knows whose they are moves them here; the drainer then
pushes each with the webhook's own call, so a delivery Redis has taken already (GitLab's
"Resend" since) is dropped there as a duplicate, and a spooled push is still built once.

In this spool's own directory a row only changes owner (one transaction). From another
directory each row is copied here first, committed, and deleted there after: a crash between
the two leaves a row in both, which the next adoption skips (the same delivery) and the intake
would drop anyway; never a row in neither."""

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from workers.adapters import spool_live
from workers.adapters.spool import LEGACY_OWNER, Spool, SpoolError, spooled_events


class LiveSpool(SpoolError):
    """The directory is a running web's (its live lock is held): its rows are that web's to
    drain, into its own Redis, even when the owner names this installation (another one of
    the same name, with its own Redis, on this host and user)."""


@dataclass(frozen=True)
class Adopted:
    moved: int  # rows now this owner's
    duplicates: int  # rows of a delivery this owner had spooled already: dropped


def owners(directory: str | os.PathLike) -> dict[str, int]:
    """Rows by owner in the spool file of `directory` ({} without one)."""
    source = Spool(directory, private=_in_temp_dir(directory))
    if not source.path.exists():
        return {}
    try:
        rows = source.query("SELECT owner, count(*) FROM events GROUP BY owner ORDER BY owner")
    finally:
        source.close()
    return {owner: int(n) for owner, n in rows}


def stranded(paths: list[str], own: str | os.PathLike) -> dict[str, int | str]:
    """The spool directories among `paths` (default ones of this installation's other Redis
    targets) other than `own` that hold rows, with their number, read without a write (or why
    it cannot be read: they may hold some). One a running web holds (workers.adapters.
    spool_live) is not stranded: that web drains it (another installation of the same name)."""
    found: dict[str, int | str] = {}
    for path in paths:
        if _same_dir(path, own) or spool_live.held_elsewhere(path):
            continue
        try:
            events: int | str = spooled_events(path)
        except SpoolError as err:
            events = f"unknown ({err})"
        if events:
            found[path] = events
    return found


def adopt(spool: Spool, directory: str | os.PathLike, chosen: set[str]) -> Adopted:
    """The rows of the `chosen` owners in `directory` made `spool`'s owner's; from another
    directory than the spool's, this owner's own rows left there too. Raises SpoolError;
    LiveSpool, and nothing moved, when another directory is a running web's."""
    chosen = chosen - {spool.owner}
    if _same_dir(directory, spool.directory):
        return _in_place(spool, chosen - {LEGACY_OWNER})  # legacy rows: drained already
    if spool_live.held_elsewhere(directory):
        raise LiveSpool(f"{directory} is not adopted from: a live web uses it (its "
                        f"{spool_live.LIVE_FILE} is held); that web drains its own rows into "
                        "its own Redis")
    source = Spool(directory, private=_in_temp_dir(directory))
    try:
        return _moved(spool, source, chosen | {spool.owner})
    finally:
        source.close()


def _same_dir(one: str | os.PathLike, other: str | os.PathLike) -> bool:
    """The same directory, however reached (a bind mount reaches it by another path, which
    resolving links does not see); a missing one is no other's."""
    try:
        return os.path.samefile(one, other)
    except OSError:
        return os.path.abspath(one) == os.path.abspath(other)


def _in_temp_dir(directory: str | os.PathLike) -> bool:
    """A directory right in the machine's temp dir, where anyone may make one under any name
    (and plant rows there), as the web's default ones are: used only if it is this user's
    alone, as the web uses its default one."""
    return Path(directory).resolve().parent == Path(tempfile.gettempdir()).resolve()


def _in_place(spool: Spool, chosen: set[str]) -> Adopted:
    moved = duplicates = 0
    with spool.transaction() as db:
        for owner in sorted(chosen):
            duplicates += db.execute(
                "DELETE FROM events WHERE owner = ? AND delivery IN (SELECT delivery FROM "
                "events WHERE owner = ?)", (owner, spool.owner)).rowcount
            moved += db.execute("UPDATE events SET owner = ? WHERE owner = ?",
                                (spool.owner, owner)).rowcount
    return Adopted(moved, duplicates)


def _moved(spool: Spool, source: Spool, chosen: set[str]) -> Adopted:
    if not source.path.exists():
        return Adopted(0, 0)
    marks = ",".join("?" * len(chosen))
    rows = source.query(f"SELECT id, delivery, payload, size, spooled_at FROM events WHERE "
                        f"owner IN ({marks}) ORDER BY id", tuple(sorted(chosen)))
    moved = 0
    with spool.transaction() as db:  # committed, and fsynced, before the source's delete
        for _, delivery, payload, size, spooled_at in rows:
            # Not bounded by the spool's limits: each is a push answered 202 already.
            moved += db.execute(
                "INSERT OR IGNORE INTO events (owner, delivery, payload, size, spooled_at) "
                "VALUES (?, ?, ?, ?, ?)", (spool.owner, delivery, payload, size,
                                           spooled_at)).rowcount
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), 500):  # SQLite's bound on a statement's parameters
        batch = ids[start:start + 500]
        source.query(f"DELETE FROM events WHERE id IN ({','.join('?' * len(batch))})",
                     tuple(batch))
    return Adopted(moved, len(rows) - moved)
