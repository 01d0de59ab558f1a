"""The worker's RQ scheduler (the process that moves retried jobs back to the queue when their
pause is over) outlives a Redis restart. RQ's scheduler process exits on the first
ConnectionError, and RQ's worker starts it again only in its maintenance pass, every 10 minutes:
after any Redis restart or failover, every retry waited up to 10 minutes."""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import redis
from rq import Queue

from tests.support.monitoring import wait_until
from workers.adapters.redis_state import SERIALIZER

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "scheduler-revival"
# The worker as `ci-autoscaler worker` makes it (service.cli._worker), without the runtime.
WORKER = f"""
import sys, redis
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker
PoolWorker([{QUEUE!r}], connection=redis.Redis.from_url(sys.argv[1]), concurrency=2,
           serializer=SERIALIZER).work(with_scheduler=True)
"""


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _gone(pid: int) -> bool:
    try:  # a zombie (state Z) has exited; its parent reaps it when it looks
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_job_scheduled_after_a_redis_restart_runs_without_waiting_for_maintenance(
        own_redis, tmp_path):
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, own_redis.url], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        connection = redis.Redis.from_url(own_redis.url)
        queue = Queue(QUEUE, connection=connection, serializer=SERIALIZER)
        [scheduler] = wait_until(lambda: _children(worker.pid), timeout=30,
                                 what="the worker's scheduler process")
        queue.enqueue_in(timedelta(seconds=0), "time.time")
        wait_until(lambda: queue.finished_job_registry.count == 1, timeout=30,
                   what="a scheduled job run before the restart")
        own_redis.stop()
        wait_until(lambda: _gone(scheduler), timeout=30,
                   what="RQ's scheduler process exiting without Redis")
        own_redis.start()
        job = queue.enqueue_in(timedelta(seconds=1), "time.time")
        # RQ alone runs it at its next maintenance pass, 10 minutes on.
        wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30,
                   what="the job scheduled after the restart run")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
