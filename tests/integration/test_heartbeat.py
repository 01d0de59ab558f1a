"""A lease kept by a heartbeat (workers.concurrency.heartbeat), on a real redis-server."""

import threading

import pytest

from tests.support.monitoring import wait_until
from workers.adapters.lease import Lease, free_if_stale
from workers.concurrency.heartbeat import Heartbeat
from workers.core.errors import RetryableError

TTL_SECONDS = 0.3


def test_a_lease_is_kept_past_its_ttl_while_the_block_runs_and_lapses_after(redis_conn):
    lease = Lease(redis_conn, "t:lease", TTL_SECONDS)
    assert lease.acquire()
    with Heartbeat(lease) as beat:
        threading.Event().wait(4 * TTL_SECONDS)  # the behaviour under test is time itself
        assert redis_conn.get("t:lease") == lease.token.encode()
        beat.check("the next step")  # held: nothing raised
    wait_until(lambda: not redis_conn.exists("t:lease"), timeout=5 * TTL_SECONDS,
               what="the lease lapsed once nothing renews it")


def test_a_lease_taken_by_another_is_lost_and_the_next_step_refused(redis_conn):
    lease = Lease(redis_conn, "t:lease", TTL_SECONDS)
    assert lease.acquire()
    with Heartbeat(lease, what="provision b1") as beat:
        redis_conn.set("t:lease", "another holder")  # it lapsed and another took it
        wait_until(lambda: beat.lost, timeout=5 * TTL_SECONDS, what="the loss noticed")
        with pytest.raises(RetryableError, match="provision b1: lease lost before trigger"):
            beat.check("trigger")
    assert redis_conn.get("t:lease") == b"another holder"  # never renewed as ours


@pytest.mark.parametrize("renewed", [True, False])
def test_a_lease_left_unrenewed_is_freed_only_when_a_heartbeat_renewed_it(redis_conn, renewed):
    """A provision's lease (60 s, renewed every 5 s) unrenewed for 25 s: its holder died, and
    the reconcile loop frees it (workers.engine.repairs restart_stalled). A lease of the same
    key taken for one short step and never renewed (a start failure's fail, a lost agent's
    repair: their Jenkins calls may take that long) is its live holder's: left to lapse."""
    lease = Lease(redis_conn, "t:provisioning:b1", 60, renewed=renewed)
    assert lease.acquire()
    redis_conn.pexpire("t:provisioning:b1", 35_000)  # last renewed 25 s ago
    assert free_if_stale(redis_conn, ["t:provisioning:b1", "t:provisioning:none"], 60) == (
        ["t:provisioning:b1"] if renewed else [])
    assert redis_conn.exists("t:provisioning:b1") == (0 if renewed else 1)


def test_a_renewed_lease_renewed_lately_or_too_short_to_tell_is_kept(redis_conn):
    fresh = Lease(redis_conn, "t:fresh", 60, renewed=True)
    short = Lease(redis_conn, "t:short", 3, renewed=True)
    assert fresh.acquire() and short.acquire()
    redis_conn.pexpire("t:fresh", 45_000)  # renewed 15 s ago: three renewals missed at most
    redis_conn.pexpire("t:short", 100)
    assert free_if_stale(redis_conn, ["t:fresh"], 60) == []
    assert free_if_stale(redis_conn, ["t:short"], 3) == []
    assert redis_conn.exists("t:fresh", "t:short") == 2
