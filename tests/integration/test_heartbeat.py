"""A lease kept by a heartbeat (workers.concurrency.heartbeat), on a real redis-server."""

import socket
import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.monitoring import wait_until
from workers.adapters import lease as leases
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


@pytest.fixture
def silent_redis():
    """A Redis this worker alone cannot reach, that never answers: a network partition that
    drops its packets (no reset), or a failover's old master: a renewal waits for its socket
    time-out (2 s here, tried once)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)  # the kernel completes the handshakes; nothing ever answers
        yield redis.Redis(port=server.getsockname()[1], socket_timeout=2,
                          socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def test_a_holder_cut_off_from_redis_stops_before_its_lease_can_be_freed(
        redis_conn, silent_redis, monkeypatch):
    """A provision's worker alive but cut off from Redis (a partition of its node, a failover
    that left it on the old master) or frozen (SIGSTOP, a node starved of CPU) for longer than
    the reconcile loop waits before it frees the lease (workers.engine.repairs restart_stalled:
    20 s unrenewed) went on to its next step (its pod, its trigger) until a renewal went
    through again, up to the lease's whole time to live (60 s), beside the provision started
    again: two pods, under two agent names, for one build. The holder takes its lease for lost
    before anyone may free it, by its own clock, whatever its heartbeat thread is waiting on."""
    monkeypatch.setattr(leases, "RENEW_MOST_SECONDS", 0.25)  # renewals every 0.25 s, not 5 s
    lease = Lease(redis_conn, "t:provisioning:b1", 60, renewed=True)
    assert lease.acquire()
    with Heartbeat(lease, what="provision b1") as beat:
        lease.connection = silent_redis  # from now on no renewal of this worker's answers
        freed = wait_until(lambda: free_if_stale(redis_conn, ["t:provisioning:b1"], 60),
                           timeout=30, what="the reconcile loop frees the unrenewed lease")
        assert freed == ["t:provisioning:b1"]
        with pytest.raises(RetryableError, match="provision b1: lease lost before its pod"):
            beat.check("its pod and trigger")
