"""The drainer moves the spool in batches (workers.engine.spool_drain): a batch's pushes in one
round trip to a real Redis, their rows deleted in one SQLite commit; and still exactly once
when the delete fails after Redis took the batch."""

import sqlite3

import orjson
import pytest

from tests.integration.test_spool import push
from tests.support.app import make_app
from workers.adapters.spool import SpoolError
from workers.engine.intake import Mover
from workers.engine.spool_drain import DRAIN_BATCH, Drainer, SpooledPush

PUSHES = 300  # three batches of DRAIN_BATCH


def spooled(own_redis, prefix: str, pushes: int = PUSHES):
    """An app whose Redis was stopped while `pushes` distinct pushes came (all spooled), and
    is running again."""
    app = make_app(own_redis.url)
    client = app.test_client()
    own_redis.stop()
    answers = [push(client, f"{prefix}-{n}", sha=f"{n + 1:040x}") for n in range(pushes)]
    assert [(a.status_code, a.json["status"]) for a in answers] == [(202, "spooled")] * pushes
    ctx = app.extensions["ci_autoscaler"]
    ctx.spool.counts()  # the file made, whether or not a push was spooled
    own_redis.start()
    return app.extensions["ci_autoscaler"]


def test_the_drain_commits_once_a_batch_not_once_a_row(own_redis):
    """After a long Redis outage under a push burst, the spool drained about 155 rows a
    second into a real Redis (bench/results/spool-drain.md): each row was pushed in a round
    trip of its own and deleted in a commit of its own, and with synchronous=FULL each commit
    waits for an fsync. Every push behind it waited unbuilt. Now a batch's rows go in one
    round trip and are deleted in one commit."""
    ctx = spooled(own_redis, "batch")
    commits: list[str] = []
    db = ctx.spool._connection()  # the spool's own connection: what it commits, as SQLite runs it
    db.set_trace_callback(lambda sql: commits.append(sql) if (
        sql == "COMMIT" or (not db.in_transaction and sql.split()[0] in
                            ("INSERT", "UPDATE", "DELETE"))) else None)
    try:
        assert Drainer(ctx.spool, ctx.state.intake).drain() == PUSHES
    finally:
        db.set_trace_callback(None)
    print(f"{PUSHES} rows drained in {len(commits)} commits")
    assert ctx.spool.counts() == (0, 0) and ctx.state.intake.counts() == (PUSHES, 0)
    assert len(commits) <= PUSHES // DRAIN_BATCH + 1  # it was one a row: 300
    assert Mover(ctx.state).drain() == PUSHES and ctx.state.queue.count == PUSHES


def test_a_batch_redis_took_whose_rows_could_not_be_deleted_is_built_once(own_redis):
    """The web dies (or its spool's write lock is held past the timeout) between Redis taking
    a batch and the batch's rows' delete: the rows stay, and the next pass pushes them again.
    Redis answers each "delivery already taken", the rows go, and every push is built once."""
    ctx = spooled(own_redis, "again", pushes=150)
    holder = sqlite3.connect(ctx.spool.path, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write lock, held
    try:
        with pytest.raises(SpoolError, match="locked"):
            Drainer(ctx.spool, ctx.state.intake).drain()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert ctx.spool.counts()[0] == 150  # nothing deleted
    assert ctx.state.intake.counts()[0] >= 1  # Redis took what the pass pushed
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 150
    assert ctx.spool.counts() == (0, 0) and ctx.state.intake.counts() == (150, 0)
    assert Mover(ctx.state).drain() == 150 and ctx.state.queue.count == 150


@pytest.mark.parametrize("row", [
    {"delivery_id": "gitlab:odd", "mark": "k", "record": 5, "ttl_seconds": 60,
     "run_ttl_seconds": 60},  # a record that is no text
    {"delivery_id": "gitlab:odd", "mark": "k", "record": "{}", "ttl_seconds": [60],
     "run_ttl_seconds": 60},  # a TTL that is no number
    ["gitlab:odd"],  # JSON, but no object
    {"delivery_id": 7, "mark": "k", "record": "{}", "ttl_seconds": 60,
     "run_ttl_seconds": 60},  # a delivery id that is no text
    {"delivery_id": "gitlab:odd", "mark": ["k"], "record": "{}", "ttl_seconds": 60,
     "run_ttl_seconds": 60},  # a mark that is no text
    {"delivery_id": "gitlab:odd", "mark": "k", "record": "{}", "ttl_seconds": 60,
     "commit": 1234, "run_ttl_seconds": 60},  # a commit that is no text
    {"delivery_id": "gitlab:odd", "mark": "k", "record": "{}", "ttl_seconds": 0,
     "run_ttl_seconds": 60},  # a TTL Redis refuses (SET ... EX 0), after the RPUSH
    {"delivery_id": "gitlab:odd", "mark": "k", "record": "{}", "ttl_seconds": 60,
     "commit": "ab" * 20, "run_ttl_seconds": -1},  # so is the run mark's
], ids=["record", "ttl", "list", "delivery", "mark", "commit", "ttl0", "run_ttl0"])
def test_a_row_of_the_wrong_shape_is_set_aside_and_the_pushes_after_it_drained(
        own_redis, row):
    """A row that is JSON but not a push of any release's shape (a damaged file) raised
    AttributeError out of the drainer's read ('spool drainer failed' every 5 s): it was
    neither set aside nor passed, and every push spooled after it waited for good."""
    ctx = spooled(own_redis, "after-odd", pushes=0)
    assert ctx.spool.put("gitlab:odd", orjson.dumps(row))
    pushes = [SpooledPush(f"gitlab:after-{n}", f"k{n}", b"{}", 60).to_bytes() for n in range(3)]
    for n, payload in enumerate(pushes):
        assert ctx.spool.put(f"gitlab:after-{n}", payload)
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 4
    assert ctx.spool.counts() == (0, 0) and ctx.state.intake.counts() == (3, 0)
    assert [d for d, _ in ctx.spool.set_aside_events()] == ["gitlab:odd"]
