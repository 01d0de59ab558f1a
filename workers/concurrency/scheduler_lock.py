"""A scheduler lock whose holder died is taken over within seconds, not a minute.

RQ's scheduler (the process that moves retried jobs back to their queue when their pause is
over) holds one lock per queue, set with a time to live of its interval + 60 s (61 s) and
renewed on each turn of its loop, every second (rq/scheduler.py acquire_locks, heartbeat).
A worker killed with its scheduler (SIGKILL to the container: an OOM kill, a failed liveness
probe, a node lost) leaves that lock for up to 61 s, and no other worker's scheduler may move
a job meanwhile (RQ's issue 1758: "the other worker seems to pick up the task after ...
more than 10 minutes"; PoolWorker asks every SCHEDULER_CHECK_SECONDS, still behind the 61 s):
every retried provision and release waited a minute for nothing.

A lock whose time to live shows it was not renewed for STALE_SECONDS is deleted (atomically,
only if still unrenewed), so the caller's next acquire takes it. A living scheduler renews it
every second; one held off for STALE_SECONDS (a frozen process) finds on its next renewal that
another owns it and stops scheduling that queue (RQ's heartbeat drops a lock taken over), so
the queue is never left without one for long. RQ's scheduler heartbeats before its move, not
in it: one held up after its heartbeat or in its move (a frozen process, a stalled node, a
slow pass) went on to move the jobs it had read beside the one that took over, each queued
twice. A worker's scheduler is a FencedScheduler: it moves a queue's jobs only in a
transaction on that queue's lock (workers.adapters.rq_retries move_due)."""

import os
import time
from typing import Any

import redis
from rq import Queue
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.scheduler import RQScheduler

from workers.adapters import rq_retries

# A living scheduler renews its lock every second (its interval); one not renewed for this
# long is its dead holder's.
STALE_SECONDS = 10

# KEYS[1] the lock; ARGV[1] the time to live a lock renewed STALE_SECONDS ago at most has left.
# 1: deleted (stale); 0: left (renewed lately, or gone, or without a time to live).
_FREE_STALE = """
local ttl = redis.call('TTL', KEYS[1])
if ttl >= 0 and ttl <= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""


def free_stale(connection: redis.Redis, keys: list[str], interval: float) -> list[str]:
    """Delete those of the scheduler locks `keys` (set with a time to live of `interval` + 60 s,
    as RQ sets them) that were not renewed for STALE_SECONDS; the ones deleted."""
    script = connection.register_script(_FREE_STALE)
    left = int(interval) + 60 - STALE_SECONDS
    return [key for key in keys if script(keys=[key], args=[left])]


class FencedScheduler(RQScheduler):
    """RQ's scheduler, whose move of a queue's due jobs is made only while it holds that
    queue's lock (RQScheduler.enqueue_scheduled_jobs, rq 3.0, less its rate-limited jobs: we
    queue none); and which ends once the worker that forked it is gone.

    RQ's scheduler process never looks at its worker: a worker SIGKILLed alone (the kernel's
    OOM killer picks one process where the cgroup is not killed as a group; `kill -9` of a
    supervisor or a person) left it running as an orphan for ever, renewing its locks each
    second, so the worker restarted in its place (the Procfile's `worker` line under a
    supervisor) never had a scheduler of its own, and the orphan, of whatever release ran
    then, moved every retry after a deploy. Its parent is looked at on each turn (each
    second): another parent (init, or a subreaper) means the worker died; the locks are let
    go at once, so the restarted worker's scheduler takes them on its next look."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._worker_pid = os.getpid()  # made in the worker's process, which forks it

    def _orphaned(self) -> bool:
        if os.getpid() == self._worker_pid or os.getppid() == self._worker_pid:
            return False  # the worker's own (a burst's), or its worker lives
        if not self._stop_requested:
            self.log.warning("Scheduler's worker (pid %s) is gone: stopping", self._worker_pid)
            self._stop_requested = True  # RQ's loop stops at its next turn: locks released
        return True

    def heartbeat(self) -> None:
        if not self._orphaned():
            super().heartbeat()

    def enqueue_scheduled_jobs(self) -> None:
        if self._orphaned():
            return
        self._status = self.Status.WORKING
        for name in sorted(self._acquired_locks):
            queue = Queue(name, connection=self.connection, serializer=self.serializer)
            rq_retries.move_due(queue, time.time(), self.name)
        self._status = self.Status.STARTED


def start(worker: Any, burst: bool = False, logging_level: str | int | None = "INFO",
          date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
          log_format: str = DEFAULT_LOGGING_FORMAT) -> None:
    """RQ's Worker._start_scheduler (rq/worker/base.py, rq 3.0), with a FencedScheduler."""
    worker.scheduler = scheduler = FencedScheduler(
        worker.queues, connection=worker.connection, serializer=worker.serializer,
        logging_level=worker.log.level if logging_level is None else logging_level,
        date_format=date_format, log_format=log_format)
    scheduler.acquire_locks()
    if not scheduler.acquired_locks:
        return
    if not burst:
        scheduler.start()
        return
    try:
        scheduler.register_birth()
        scheduler.enqueue_scheduled_jobs()
    finally:
        scheduler.release_locks()
        scheduler.register_death()
