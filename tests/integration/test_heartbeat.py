"""A lease kept by a heartbeat (workers.concurrency.heartbeat), on a real redis-server."""

import threading

import pytest

from tests.support.monitoring import wait_until
from workers.adapters.lease import Lease
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
