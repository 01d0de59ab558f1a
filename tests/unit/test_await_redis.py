"""The worker's wait for a Redis that does not answer (workers.adapters.redis_connect.await_redis),
against a real redis-py client and a port nothing listens on."""

import threading
import time

import redis

from tests.support.redis_server import free_port
from workers.adapters.redis_connect import await_redis


def test_a_long_wait_is_told_again_every_period_not_every_try():
    """The wait has no bound (a Redis being installed may take long): it was told once, at its
    first try, so a worker waiting since the night before showed nothing in the last hour's
    logs (`kubectl logs --since=1h`, a log query): a pod Running and silent, no build started."""
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # as REDIS_URL makes it
    stop, told = threading.Event(), []
    timer = threading.Timer(1.7, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        assert not await_redis(client, stop, remind_seconds=0.5,
                               waiting=lambda err, waited: told.append((type(err), waited)))
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2.5
    assert [kind for kind, _ in told] == [redis.ConnectionError] * len(told)
    assert 3 <= len(told) <= 4, told  # at the first try, then about every 0.5 s
    assert told[0][1] == 0 and all(b > a for (_, a), (_, b) in zip(told, told[1:]))
