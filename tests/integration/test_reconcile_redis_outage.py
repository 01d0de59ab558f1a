"""The reconcile leader between passes, its Redis away for a while: the outage is said once,
for what it is (its lease cannot be renewed), and so is the end of it."""

import time

from tests.integration.test_reconcile_repairs import CONFIG, NAMESPACE
from tests.integration.test_worker_and_reconcile_processes import Process
from tests.support.app import cluster_app
from tests.support.monitoring import wait_until

INTERVAL = 5  # renewals before the agent polls every 2 s between passes
DOWN = "reconcile lease unavailable: Redis does not answer"
BACK = "reconcile lease available again"


def test_a_redis_outage_between_passes_is_logged_once_and_its_end_too(
        monkeypatch, tmp_path, own_redis, kube, jenkins_fake):
    """The leader renews its lease before each agent poll (every 2 s): with Redis away each
    renewal failed as "agent poll failed", every 2 s, then "reconcile lease unavailable" every
    period, for as long as the outage lasted, and nothing said Redis was back."""
    with cluster_app(monkeypatch, tmp_path, redis_url=own_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        loop = Process("reconcile", "--interval", str(INTERVAL))
        try:
            wait_until(lambda: loop.said("reconciled"), timeout=60, what="a first pass")
            own_redis.stop()  # between passes: the next renewal finds it away
            stopped = time.monotonic()
            wait_until(lambda: loop.said(DOWN), timeout=10, what="the outage said")
            # renewals at every 2 s and a period's hold or two, all failing
            # nothing to await: the repeats it must not log
            time.sleep(max(0.0, stopped + 2 * INTERVAL + 1 - time.monotonic()))
            assert loop.said(DOWN) == 1, "".join(loop.raw[-10:])
            assert loop.said("agent poll failed") == 0, "".join(loop.raw[-10:])
            passes = loop.said("reconciled")
            own_redis.start()
            wait_until(lambda: loop.said(BACK), timeout=3 * INTERVAL, what="the recovery said")
            wait_until(lambda: loop.said("reconciled") > passes, timeout=3 * INTERVAL,
                       what="a pass after the outage")
        finally:
            code = loop.stop()
    assert code == 0, "".join(loop.raw[-20:])
    assert loop.said(DOWN) == 1 and loop.said(BACK) == 1
    (back,) = [line for line in loop.lines if line.get("msg") == BACK]
    assert back["failed_seconds"] >= 2 * INTERVAL
    assert not any("metric not recorded" in line for line in loop.raw)
