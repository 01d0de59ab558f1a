"""workers.adapters.lease.Kept against a real redis-server behind a TCP proxy that can delay
Redis's answers and then cut the connection (a Redis blip): how long the holder believes it
still holds the lease must never outlast the lease in Redis."""

import socket
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.monitoring import wait_until
from workers.adapters.lease import Kept, Lease, LeaseLost

TTL_SECONDS = 2.0
ANSWER_DELAY_SECONDS = 1.5  # below the client's socket timeout (redis-py's 5 s)


class ReplyDelayingProxy:
    """TCP between the client and redis-server: commands pass at once, answers wait
    `delay` seconds; `cut()` closes every connection and refuses new ones."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.delay, self._socks = upstream, 0.0, []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = "redis://127.0.0.1:%d/0" % self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers and self.delay:
                    time.sleep(self.delay)  # the answer on its way back, late
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in [self._listener] + self._socks:  # a shutdown wakes the blocked accept
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def proxy(redis_url):
    parts = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    proxy = ReplyDelayingProxy((parts["host"], parts["port"]))
    yield proxy
    proxy.cut()


def test_a_renewal_counts_from_when_it_was_sent_not_from_its_late_answer(proxy, redis_conn):
    """Redis extends the lease when it runs the renew; the holder counted its TTL from when
    the answer came back. With the answer late and Redis then out of reach, the lease expired
    and another instance took it while the holder's check still said it held it, and its pass
    went on into the next step beside the new leader."""
    through = redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0))
    lease = Lease(through, "t:reconcile-lock", TTL_SECONDS)
    assert lease.acquire()
    with Kept(lease, every=600, most_seconds=600) as kept:  # only check() renews here
        proxy.delay = ANSWER_DELAY_SECONDS
        kept.check()  # renewed, its answer late
        proxy.cut()  # then Redis out of reach
        wait_until(lambda: not redis_conn.exists("t:reconcile-lock"), timeout=10,
                   what="the lease to expire in Redis", interval=0.02)
        assert Lease(redis_conn, "t:reconcile-lock", 60).acquire()  # another leads now
        with pytest.raises(LeaseLost):
            kept.check()


def test_a_pass_counts_its_lease_from_when_the_hold_was_sent_not_from_its_late_answer(
        proxy, redis_conn):
    """run_forever takes (or renews) the lease, then the pass's Kept began counting its TTL
    when it was made, after the answer came back: with that answer late and Redis then out of
    reach, the lease expired and was taken by another while the pass's check still said it
    held it."""
    through = redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0))
    lease = Lease(through, "t:reconcile-lock", TTL_SECONDS)
    proxy.delay = ANSWER_DELAY_SECONDS
    sent = time.monotonic()
    assert lease.hold()  # taken, its answer late
    proxy.cut()  # then Redis out of reach
    with Kept(lease, every=600, most_seconds=600, held_at=sent) as kept:
        wait_until(lambda: not redis_conn.exists("t:reconcile-lock"), timeout=10,
                   what="the lease to expire in Redis", interval=0.02)
        assert Lease(redis_conn, "t:reconcile-lock", 60).acquire()  # another leads now
        with pytest.raises(LeaseLost):
            kept.check()


def test_with_redis_away_the_lease_is_lost_once_less_than_its_margin_is_left(
        proxy, redis_conn):
    """A check that could not renew passed until the TTL's very end, and the step after it
    (maybe a long one) ran on past the lease's expiry, beside the instance that took it over.
    With less than the margin left, the pass stops now, its lease still in Redis."""
    through = redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0))
    lease = Lease(through, "t:reconcile-lock", TTL_SECONDS)
    sent = time.monotonic()
    assert lease.hold()
    proxy.cut()  # Redis out of reach
    margin = TTL_SECONDS / 2
    with Kept(lease, every=600, most_seconds=600, held_at=sent, margin=margin) as kept:
        kept.check()  # a whole TTL left
        # no event marks time gone by
        wait_until(lambda: time.monotonic() - sent > TTL_SECONDS - margin + 0.05, timeout=10,
                   what="less than the margin left", interval=0.02)
        with pytest.raises(LeaseLost):
            kept.check()
        assert redis_conn.exists("t:reconcile-lock")  # stopped before the lease expired
