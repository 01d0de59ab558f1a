"""A provision whose Redis goes away as it ends (a Sentinel failover, a restart) lets its build's
lease go once Redis is back, and its job ends as the provision did (workers.concurrency.
heartbeat.let_go): the real path (a GitLab push to the webhook, the worker's mover, the
worker of `ci-autoscaler worker` with the production failure handler, kmock over HTTP, the
Jenkins fake) on a real redis-server stopped and started again with its data (AOF).

The release of the lease raised in the task's `finally`: the provision, which had made its pod
and triggered its build, was failed and retried, and the lease stayed for the rest of its time
to live, so that a Jenkins COMPLETED's release of the build, and the retry, waited "being
provisioned" that long (test_no_loss_operator.py's outage mix missed its bound for it). The
job's thread is held in the provision's last log line ("agent placed") while the test stops
the server."""

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from rq.job import Job, JobStatus

from tests.integration.test_job_refusals import CONFIG, LEASE_SECONDS, OURS, pod_creates
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import cluster_app
from tests.support.monitoring import wait_until
from tests.support.redis_server import RedisServer
from workers import runtime
from workers.adapters.lease import Lease
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency import job_end
from workers.concurrency.heartbeat import let_go
from workers.concurrency.pool_worker import PoolWorker
from workers.engine import jobs, tasks
from workers.engine.intake import Mover

TIMEOUT_SECONDS = 30
HELD_IN = "agent placed"  # the provision's last log line, its writes but the stage's done
# What the job's thread says once it met Redis away: the lease waits for it (now), or the job's
# end does, or (before) the worker gave that end up.
MET = ("lease not released: Redis does not answer; released once it does", job_end.WAITS,
       "RQ could not record a job's end")
LOGGERS = ("ci_autoscaler.tasks", "ci_autoscaler.heartbeat", "ci_autoscaler.pool_worker")


@pytest.fixture
def aof_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


class Held(logging.Handler):
    """Holds the thread that logs `held_in` (once) until `go` is set; keeps every message."""

    def __init__(self, held_in: str = HELD_IN) -> None:
        super().__init__(logging.INFO)
        self.held_in = held_in
        self.messages: list[str] = []
        self.held, self.go = threading.Event(), threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if message == self.held_in and not self.held.is_set():
            self.held.set()
            self.go.wait(TIMEOUT_SECONDS)

    def met(self) -> bool:
        return any(message in MET for message in list(self.messages))


@contextmanager
def holding(held_in: str, names: tuple[str, ...]) -> Iterator[Held]:
    """A Held handler for `held_in` on the loggers `names` (at INFO) while the block runs."""
    handler = Held(held_in)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


@pytest.fixture
def held():
    with holding(HELD_IN, LOGGERS) as handler:
        yield handler


def test_a_provision_ending_while_redis_is_away_frees_its_lease_once_redis_is_back(
        monkeypatch, tmp_path, aof_redis, kube, jenkins_fake, held):
    jenkins_fake.add_job("build", parameters=OURS)
    with cluster_app(monkeypatch, tmp_path, redis_url=aof_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE,
                     CI_AUTOSCALER_PROVISION_LEASE_SECONDS=str(LEASE_SECONDS)) as app:
        rt = runtime.current()
        key = push(app.test_client(), 1)
        Mover(rt.state).drain()
        [job_id] = rt.state.queue.get_job_ids()
        worker = PoolWorker([rt.state.queue], connection=rt.settings.redis_client(),
                            concurrency=2, serializer=SERIALIZER)
        worker.push_exc_handler(jobs.failure_handler(tasks.engine_metrics(rt), rt.state))

        def outage() -> None:
            try:
                held.held.wait(TIMEOUT_SECONDS)
                aof_redis.stop()
            finally:
                held.go.set()
            try:
                wait_until(held.met, timeout=TIMEOUT_SECONDS,
                           what="the provision's thread meets Redis away")
            finally:
                aof_redis.start()
        thread = threading.Thread(target=outage, daemon=True)
        thread.start()
        assert worker.work(burst=True)
        thread.join(TIMEOUT_SECONDS)

        assert held.held.is_set()
        # the lease is gone now, not LEASE_SECONDS later: a COMPLETED's release may take it
        assert not rt.state.redis.exists(tasks.lease_key(rt, key))
        assert tasks.provision_lease(rt, key).acquire()
        # the provision's end is its own: done, not failed and retried
        job = Job.fetch(job_id, connection=rt.state.redis, serializer=SERIALIZER)
        assert job.get_status() == JobStatus.FINISHED
        assert job.return_value()["build_key"] == key
        assert rt.state.queue.scheduled_job_registry.count == 0
        assert rt.state.get_build(key)["status"] == "triggered"
        assert len(pod_creates(kube)) == 1 and len(jenkins_fake.builds) == 1
        assert MET[0] in held.messages  # Redis was away as the lease was let go


def test_a_lease_whose_redis_does_not_come_back_is_given_up_after_its_time_to_live(
        aof_redis, caplog):
    """The task's end waits no longer than the lease would have held: by then it has lapsed
    by itself, and the task's own end goes on."""
    lease = Lease(redis.Redis.from_url(aof_redis.url), "t:provisioning:b", 1.0)
    assert lease.acquire()
    aof_redis.stop()
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.heartbeat"):
        assert not let_go(lease, what="provision b")  # given up: a pool's next lease lapsed too
    assert 1.0 <= time.monotonic() - began < 1.0 + TIMEOUT_SECONDS / 3
    assert [r.getMessage() for r in caplog.records] == [
        MET[0], "lease not released: Redis did not answer within its time to live (it has "
                "lapsed)"]


def test_a_lease_let_go_after_another_took_it_stays_the_others(aof_redis):
    """The task's lease lapsed while Redis was away for it (a failover: the new master counted
    its time to live down, and a COMPLETED's release, a retry or a re-drive took it): letting
    it go then deletes only a lease that is still this task's (the release's token compare)."""
    conn = redis.Redis.from_url(aof_redis.url)
    ours, other = (Lease(conn, "t:provisioning:b", 60.0) for _ in range(2))
    assert other.acquire()  # ours lapsed, the other holds the build now
    let_go(ours, what="provision b")
    assert conn.get("t:provisioning:b") == other.token.encode()
    assert let_go(other, what="release b")
    assert not conn.exists("t:provisioning:b")
