"""A warm pool pass whose Redis goes away for good as it ends lets its pools' leases go
(workers.concurrency.heartbeat.let_go) one after another only while Redis answers: once one
is given up after its time to live, the others, taken before it with the same time to live,
have lapsed too, and the pass ends. Waiting a time to live for each pool's lease in turn made
the pass last a lease period per template (60 s each) for leases long lapsed, with the
reconcile leader's next steps waiting behind it.

Real redis-server (stopped for good from the pass's own log line), kmock over HTTP, the
Jenkins fake; no node has room, so each pool's start waits and the pass takes no other
lease after the last pool's."""

import logging
import time

from tests.integration.test_provision_lease_outage import aof_redis  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env
from workers import runtime
from workers.warm import pool

TEMPLATES = 4
LEASE_SECONDS = 1.0  # the pools' leases' time to live, short for the test
CONFIG = "routes:\n  - {project: \"*\", ref: \"refs/*\", job: build, template: t0}\ntemplates:\n" \
    + "".join(f"  t{i}:\n    cpu: {{min: 900m, default: 900m, max: 900m}}\n"
              f"    memory: {{min: 512Mi, default: 768Mi, max: 768Mi}}\n"
              f"    warm: {{min: 1, max: 1, idleSeconds: 600}}\n" for i in range(TEMPLATES))
WAITS = "warm agent waits for room"  # each pool's last log line in the pass (pool.fill)


class StopsRedis(logging.Handler):
    """Stops `server` for good at the last pool's WAITS (no Redis call of the pass follows
    but the letting go of its leases); `stopped_at` is when."""

    def __init__(self, server) -> None:
        super().__init__(logging.INFO)
        self.server, self.seen, self.stopped_at = server, 0, None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != WAITS:
            return
        self.seen += 1
        if self.seen == TEMPLATES:
            self.server.stop()
            self.stopped_at = time.monotonic()


def test_a_pool_pass_whose_redis_goes_away_for_good_waits_one_lease_period_not_one_a_pool(
        monkeypatch, tmp_path, aof_redis, kube, jenkins_fake):  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=aof_redis.url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    kube.add_namespace(NAMESPACE)  # and no node: no pool's agent has room
    monkeypatch.setattr(pool, "POOL_LEASE_SECONDS", LEASE_SECONDS)
    logger = logging.getLogger("ci_autoscaler.warm")
    handler, level = StopsRedis(aof_redis), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    runtime.install(None)
    try:
        result = pool.run(runtime.current())
        ended = time.monotonic()
    finally:
        runtime.install(None)
        logger.removeHandler(handler)
        logger.setLevel(level)
        aof_redis.start()
    assert handler.stopped_at is not None, f"{handler.seen} of {TEMPLATES} pools waited"
    assert result == {"warm_started": 0, "warm_retired": 0, "warm_gave_way": 0}
    # one lease's time to live (with a loaded machine's slack), not one for each of the
    # pools' leases in turn (TEMPLATES of them: 4 s)
    assert LEASE_SECONDS <= ended - handler.stopped_at < 2.5 * LEASE_SECONDS
