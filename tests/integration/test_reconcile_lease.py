"""The reconcile leader's lease (workers.adapters.lease.Kept) while a pass runs, on a real
redis-server, kmock over HTTP and the Jenkins fake: a pass can outlast the lease's TTL (a slow
Jenkins, each call up to its timeout), and must neither lose its lease to a second instance
meanwhile (two leaders acting at once) nor go on once it has lost it."""

import threading
import time

import pytest

from tests.integration.test_pass_without_jenkins import CONFIG, placed
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import cluster_app
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters.lease import Lease
from workers.agent_starts import online as agent_start
from workers.adapters.pass_store import PassStore

INTERVAL_SECONDS = 0.2
TTL_SECONDS = reconcile.LOCK_PERIODS * INTERVAL_SECONDS  # run_forever's lease


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        yield app


def leading(rt, interval):
    """run_forever on a thread, and the event that stops it."""
    stop = threading.Event()
    thread = threading.Thread(target=reconcile.run_forever, args=(rt, stop),
                              kwargs={"interval": interval}, daemon=True)
    thread.start()
    return thread, stop


def test_a_pass_outlasting_its_lease_ttl_keeps_the_lease_from_a_second_instance(
        app, jenkins_fake):
    """Jenkins holds the leader's first call of its pass (which agents are online?) for
    several TTLs: the lease was renewed only between passes, so it expired and a second
    instance took it while the first pass still ran."""
    placed(app, 1)  # an agent on its way up: the pass asks Jenkins about it
    rt = runtime.current()
    key = rt.state.prefix + "reconcile-lock"
    arrived, release = jenkins_fake.hold_next("/computer")
    thread, stop = leading(rt, INTERVAL_SECONDS)
    try:
        assert arrived.wait(30), "the pass never asked Jenkins"
        second = Lease(rt.state.redis, key, TTL_SECONDS)
        until = time.monotonic() + 3 * TTL_SECONDS  # no event marks a TTL gone by
        while time.monotonic() < until:
            assert not second.acquire(), "a second instance took the lease of a running pass"
            time.sleep(INTERVAL_SECONDS / 4)
        release.set()
        # the pass ends (a stop would end it at its next step)
        wait_until(lambda: PassStore(rt.state.redis, prefix=rt.state.prefix).read().last_ok_at
                   is not None, timeout=30, what="the pass recorded")
    finally:
        release.set()
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()


def test_a_pass_whose_lease_was_taken_stops_before_its_next_step(app, jenkins_fake):
    """The lease is taken by another instance while Jenkins holds the leader's first call (the
    holder could not reach Redis for a TTL): the pass stops there and records nothing (the
    other leads), leaving the later steps to the new leader."""
    placed(app, 1)
    rt = runtime.current()
    key = rt.state.prefix + "reconcile-lock"
    arrived, release = jenkins_fake.hold_next("/computer")
    thread, stop = leading(rt, 60)  # one pass: the lease is not renewed during the test
    try:
        assert arrived.wait(30), "the pass never asked Jenkins"
        rt.state.redis.delete(key)  # expired
        other = Lease(rt.state.redis, key, 60)
        assert other.acquire()
    finally:
        release.set()
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert rt.state.redis.get(key) == other.token.encode()  # untouched
    recorded = PassStore(rt.state.redis, prefix=rt.state.prefix).read()
    assert recorded.last_ok_at is None and recorded.failing_since is None


def test_a_leader_whose_lease_was_taken_between_passes_polls_jenkins_no_more(
        app, jenkins_fake):
    """Between passes nothing renewed the lease, and the leader went on polling the agents on
    their way up as leader after another instance had taken it (its wait plus slow polls, each
    Jenkins call up to its timeout, can outlast the TTL). It renews the lease before each poll
    now, and stops polling once the lease is another's."""
    placed(app, 1)  # an agent on its way up: each poll asks Jenkins about it
    rt = runtime.current()
    key = rt.state.prefix + "reconcile-lock"
    thread, stop = leading(rt, 60)  # one pass, then a minute of polls
    polls = lambda: len(jenkins_fake.requests_to("/computer/api/json"))  # noqa: E731
    try:
        wait_until(lambda: PassStore(rt.state.redis, prefix=rt.state.prefix).read().last_ok_at
                   is not None, timeout=30, what="the first pass")
        before = polls()
        wait_until(lambda: polls() > before, timeout=30, what="a poll between passes")
        rt.state.redis.delete(key)  # expired
        other = Lease(rt.state.redis, key, 60)
        assert other.acquire()
        # no event marks a poll not made: the polls' interval, twice over, each time
        time.sleep(2.5 * agent_start.AGENT_POLL_INTERVAL_SECONDS)  # one in flight may end
        after = polls()
        time.sleep(2.5 * agent_start.AGENT_POLL_INTERVAL_SECONDS)
        assert polls() == after, "polled Jenkins as leader with the lease another's"
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert rt.state.redis.get(key) == other.token.encode()  # untouched
