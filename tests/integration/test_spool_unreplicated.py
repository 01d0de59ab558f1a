"""The drainer while the master has no replica (WAIT, CI_AUTOSCALER_REDIS_MIN_REPLICAS=1, the
default with Sentinel): a row whose push reached the master but no replica stays in the
spool, and must not hold back the rows after it, which Redis never had."""

import pytest

from tests.integration.test_spool import push
from tests.support.app import make_app
from workers.core.errors import RetryableError
from workers.engine.intake import Mover
from workers.engine.spool_drain import Drainer


def test_an_unacknowledged_row_does_not_hold_back_the_pushes_spooled_after_it(own_redis):
    """A 2-node Sentinel set after a failover: the promoted master has no replica until the
    old one is back (hours, if its node is gone). The pushes spooled while no master answered
    are drained into it: the first one reaches the master, WAIT sees no replica (Redis' WAIT
    returns the replicas that acknowledged, 0 here: redis.io/commands/wait), so its row stays,
    and the drainer used to stop there: the pushes after it, answered 202 "spooled", were not
    built until a replica came back. Here one redis-server, with no replica at all."""
    # WAIT waits half the socket timeout (service.app): 0.2 s left a 100 ms margin, which a
    # just restarted redis-server on a loaded machine overran (TimeoutError, not NotReplicated)
    app = make_app(own_redis.url, redis_min_replicas=1, redis_timeout_seconds=1.0)
    ctx = app.extensions["ci_autoscaler"]
    client = app.test_client()
    own_redis.stop()
    keys = [push(client, f"norepl-{n}", sha=f"{n + 1:040x}").json for n in range(3)]
    assert [k["status"] for k in keys] == ["spooled"] * 3
    own_redis.start()
    with pytest.raises(RetryableError):  # no replica took them: the rows stay, it waits
        Drainer(ctx.spool, ctx.state.intake).drain()
    assert ctx.spool.counts()[0] == 3
    assert ctx.state.intake.counts() == (3, 0)  # each on the master all the same
    assert Mover(ctx.state).drain() == 3
    with pytest.raises(RetryableError):  # again: duplicates now, still no replica
        Drainer(ctx.spool, ctx.state.intake).drain()
    assert ctx.state.intake.counts() == (0, 0) and ctx.state.queue.count == 3
