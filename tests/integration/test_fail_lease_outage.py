"""A build's fail whose Redis goes away as it ends (a Sentinel failover, a restart) keeps its
end, and lets the build's provision lease go once Redis answers (workers.concurrency.
heartbeat.let_go), as a provision and a release do. Let go with a plain `lease.release()` in
fail_build's `finally`, the Redis error replaced the fail's end: the RQ job failed and was
retried, a placed-again build's provision (queued after the lease) was never queued, and the
lease stayed for the rest of its time to live, so a COMPLETED's release of the build waited
"being provisioned" that long. Every holder of a build's lease that acts after it (a lost
warm agent, a replaced agent, a parked build, a lost one placed again) lets it go the same way.

Real redis-server (AOF, stopped and started again with its data), kmock over HTTP, the
Jenkins fake; the fail is held in its last log line while the test stops Redis."""

import threading

from tests.integration.test_provision_lease_outage import MET, aof_redis, holding  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import CONFIG, one_build
from tests.support.app import cluster_app
from tests.support.monitoring import wait_until
from workers import runtime
from workers.core.start_failures import FailureReason
from workers.engine import failures, tasks

TIMEOUT_SECONDS = 30
HELD_IN = "failed build cleaned up"  # the fail's last log line, before its lease is let go


def test_a_fail_ending_while_redis_is_away_keeps_its_end_and_lets_the_lease_go(
        monkeypatch, tmp_path, aof_redis, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=aof_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app, \
            holding(HELD_IN, ("ci_autoscaler.failures", "ci_autoscaler.heartbeat")) as held:
        key, agent, item = one_build(app, kube, jenkins_fake)
        rt = runtime.current()
        outcome: dict = {}

        def fail() -> None:
            try:
                outcome["end"] = failures.fail_start(key, agent, str(FailureReason.POD_FAILED),
                                                     "the pod failed")
            except Exception as err:  # noqa: BLE001 (what the worker would have met)
                outcome["error"] = err
        thread = threading.Thread(target=fail, daemon=True)
        thread.start()
        try:
            assert held.held.wait(TIMEOUT_SECONDS), "the fail's last log line"
            aof_redis.stop()
        finally:
            held.go.set()
        try:
            wait_until(lambda: MET[0] in held.messages or not thread.is_alive(),
                       timeout=TIMEOUT_SECONDS, what="the fail meeting Redis away")
        finally:
            aof_redis.start()
        thread.join(TIMEOUT_SECONDS)

        assert "error" not in outcome, outcome
        assert outcome["end"]["failed"] == FailureReason.POD_FAILED
        assert MET[0] in held.messages  # Redis was away as the lease was let go
        # the lease is gone now, not a time to live later: a COMPLETED's release may take it
        assert not rt.state.redis.exists(tasks.lease_key(rt, key))
        assert rt.state.get_build(key)["status"] == "failed"
        assert kube.pods(NAMESPACE) == [] and jenkins_fake.cancelled_items == [item]
