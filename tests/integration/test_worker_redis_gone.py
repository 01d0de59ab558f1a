"""The worker (workers.concurrency.pool_worker) waits for a Redis that stops answering, wherever
its work loop meets it, and takes jobs again soon after Redis is back.

RQ waits for Redis only in its dequeue. A Redis gone as the worker started (between its
registration and its subscription, or before its scheduler's lock) raised out of RQ's `work`,
and the process exited: a Procfile runner then stops the web too, and a pod waits out its
restart back-off. Seen in the no-loss operator test (test_no_loss_operator.py) under load:
Redis stopped while the worker started, no worker was left, and the pushes spooled during the
outage were never built. And RQ's dequeue doubled its pause up to 60 s: a worker that waited
out a long outage took the first job up to that long after Redis was back.

Each point is reached for real: the worker is held in RQ's own log line of that point (a
logging handler, as test_worker_scheduler.py holds RQ's scheduler) while the test stops a
real redis-server.
"""

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue

from tests.support.monitoring import wait_until
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.redis_away import WAITS

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "redis-away"
# The worker as `ci-autoscaler worker` makes it (service.cli._worker), without the runtime,
# held in the first RQ log line that holds `argv[2]` until the test writes a line to its stdin.
HELD = f"""
import logging, sys, redis
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker

class Hold(logging.Handler):
    held = False

    def emit(self, record):  # RQ adds no handler of its own to a logger that has one
        print(record.getMessage(), flush=True)
        if sys.argv[2] in record.getMessage() and not Hold.held:
            Hold.held = True
            print("held", flush=True)
            sys.stdin.readline()

logging.getLogger("rq.worker").addHandler(Hold())
logging.getLogger("ci_autoscaler").addHandler(Hold())  # the worker's own waits
PoolWorker([{QUEUE!r}], connection=redis.Redis.from_url(sys.argv[1]), concurrency=2,
           serializer=SERIALIZER).work(with_scheduler=True, logging_level="INFO")
"""
# Long enough for RQ's doubled pauses (1, 2, 4, 8 s, then 16) to pass 15 s: its worker next
# looked at Redis 31 s after it went away.
OUTAGE_SECONDS = 16


def _start(own_redis, tmp_path: Path, hold_at: str) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "worker.log"
    with path.open("w") as log:
        worker = subprocess.Popen([sys.executable, "-c", HELD, own_redis.url, hold_at],
                                  cwd=ROOT, stdin=subprocess.PIPE, stdout=log,
                                  stderr=subprocess.STDOUT)
    return worker, path


def _stop(worker: subprocess.Popen) -> int:
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.wait()


@pytest.mark.parametrize("hold_at", ["started with PID", "*** Listening on"],
                         ids=["before its subscription", "before its scheduler starts"])
def test_a_worker_whose_redis_goes_away_as_it_starts_waits_and_then_runs_jobs(
        own_redis, tmp_path, hold_at):
    worker, log = _start(own_redis, tmp_path, hold_at)
    try:
        wait_until(lambda: "held" in log.read_text(), timeout=30, what="the worker held")
        own_redis.stop()
        worker.stdin.write(b"go\n")
        worker.stdin.flush()
        wait_until(lambda: WAITS in log.read_text() or "scheduler not started" in
                   log.read_text() or worker.poll() is not None, timeout=30,
                   what="the worker meeting Redis away")
        assert worker.poll() is None, log.read_text()  # it used to exit here
        own_redis.start()
        queue = Queue(QUEUE, connection=redis.Redis.from_url(own_redis.url),
                      serializer=SERIALIZER)
        job = queue.enqueue("time.time")
        scheduled = queue.enqueue_in(timedelta(seconds=0), "time.time")  # its scheduler's
        for one in (job, scheduled):
            wait_until(lambda: one.get_status(refresh=True) == "finished", timeout=30,
                       what="a job queued after Redis came back")
    finally:
        code = _stop(worker)
    assert code == 0, log.read_text()


def test_a_worker_that_waited_out_a_long_outage_takes_a_job_soon_after_redis_is_back(
        own_redis, tmp_path):
    worker, log = _start(own_redis, tmp_path, "no such line")
    try:
        wait_until(lambda: "Listening on" in log.read_text(), timeout=30,
                   what="the worker waiting for jobs")
        own_redis.stop()
        stopped = time.monotonic()
        # The outage itself is what is waited for: its length is the case.
        wait_until(lambda: time.monotonic() - stopped >= OUTAGE_SECONDS, timeout=60,
                   what="an outage of OUTAGE_SECONDS", interval=0.5)
        own_redis.start()
        back = time.monotonic()
        job = Queue(QUEUE, connection=redis.Redis.from_url(own_redis.url),
                    serializer=SERIALIZER).enqueue("time.time")
        wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30,
                   what="a job queued after Redis came back")
        taken = time.monotonic() - back
        assert taken < 10, f"the job ran {taken:.1f} s after Redis was back"
        assert worker.poll() is None, log.read_text()
    finally:
        code = _stop(worker)
    assert code == 0, log.read_text()


def test_a_worker_stopped_while_redis_is_away_exits_cleanly(own_redis, tmp_path):
    """A SIGTERM while Redis is away (a pod rolled, or a Procfile runner stopped, during an
    outage): the teardown deregisters nothing (the record expires) and leaves its command
    channel without Redis. Its UNSUBSCRIBE raised ConnectionError out of the teardown: exit 1
    with a traceback, the pubsub connection left unclosed."""
    worker, log = _start(own_redis, tmp_path, "no such line")
    try:
        wait_until(lambda: "Listening on" in log.read_text(), timeout=30,
                   what="the worker waiting for jobs")
        own_redis.stop()
        wait_until(lambda: "could not connect to Redis" in log.read_text(), timeout=30,
                   what="the worker's read for a job meeting Redis away")
    finally:
        code = _stop(worker)
    assert code == 0, log.read_text()  # (RQ's scheduler process logs its own, and ends)
    assert "in teardown" not in log.read_text(), log.read_text()
