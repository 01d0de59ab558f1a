"""The worker's RQ scheduler (the process that moves retried jobs back to the queue when their
pause is over) outlives a Redis restart. RQ's scheduler process exits on the first
ConnectionError, and RQ's worker starts it again only in its maintenance pass, every 10 minutes:
after any Redis restart or failover, every retry waited up to 10 minutes. And a worker stopped
as it forks the scheduler stops it: the scheduler's process, running the worker's signal
handlers until it installs its own, ran on, and the worker waited for it for ever."""

import contextlib
import os
import time
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker

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


def _stop(*procs: subprocess.Popen | None) -> None:
    """Each worker still running, with its process group: SIGTERM, SIGKILL after 30 s."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


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


# The worker as `ci-autoscaler worker` makes it, stopped as it starts (a SIGTERM while it was
# being made: service.cli._worker), with the handler `argv[2]` of PoolWorker in place as RQ
# forks its scheduler process: stop_at_first_check (cli's until RQ's take over) or
# request_stop (RQ's, in place when the worker starts its scheduler again). The scheduler's
# process is held in its first log line until a signal reached it (the byte Python writes to
# its wakeup fd as the signal arrives, before or during the hold), so the SIGTERM that RQ's
# teardown sends it lands before its own handlers, as it did under load.
STOPPED_AT_START = """
import logging, os, select, signal, sys, redis
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker
worker = PoolWorker([sys.argv[3]], connection=redis.Redis.from_url(sys.argv[1]), concurrency=2,
                    serializer=SERIALIZER)
signal.signal(signal.SIGTERM, getattr(worker, sys.argv[2]))
signal.signal(signal.SIGINT, getattr(worker, sys.argv[2]))
worker._stop_requested = True
woken, wake = os.pipe()
os.set_blocking(wake, False)
signal.set_wakeup_fd(wake)
me = os.getpid()

class Hold(logging.Handler):  # RQ's own scheduler log handler, which it adds to none other
    held = False

    def emit(self, record):
        print(record.getMessage(), flush=True)
        if os.getpid() != me and not Hold.held:
            Hold.held = True
            print("scheduler process held", flush=True)
            select.select([woken], [], [])

logging.getLogger("rq.scheduler").addHandler(Hold())
worker.work(with_scheduler=True, logging_level="INFO")
"""


# STOPPED_AT_START, its scheduler's process held where a loaded machine may leave a child forked
# a moment before: not yet run when RQ's teardown sends it SIGTERM. glibc runs fork's child
# handlers (__register_atfork, what pthread_atfork calls; libc.so does not export the latter)
# in the child before fork() returns to CPython, whose after-fork code then clears the marks of
# the signals that came in (Modules/signalmodule.c _PySignal_AfterFork); pause() there returns
# once a signal's C handler has run, as the kernel runs it at the child's first return to user
# space.
HELD_BEFORE_IT_RAN = STOPPED_AT_START.replace("worker.work(", """import ctypes
libc = ctypes.CDLL(None)
libc.__register_atfork(None, None, ctypes.cast(libc.pause, ctypes.c_void_p), None)
worker.work(""")


def _stopped_at_start(script: str, redis_url: str, tmp_path: Path, handler: str):
    """The worker's exit code (-9: killed after 30 s) and its log."""
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen([sys.executable, "-c", script, redis_url, handler,
                                   f"stopped-at-start-{handler}"], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for child in _children(worker.pid):
                os.kill(child, signal.SIGKILL)
            worker.kill()
            code = worker.wait()
    return code, (tmp_path / "worker.log").read_text()


@pytest.mark.parametrize("handler", ["stop_at_first_check", "request_stop"])
def test_a_worker_stopped_as_it_forks_its_scheduler_stops_it_and_exits_0(
        redis_url, tmp_path, handler):
    """Seen under load as a Procfile stack stopped right after it started: the worker waited
    for its scheduler for ever (killed after 60 s, exit -9), the scheduler's process having
    run the worker's handler on RQ's SIGTERM rather than stop."""
    code, text = _stopped_at_start(STOPPED_AT_START, redis_url, tmp_path, handler)
    assert "scheduler process held" in text, text  # RQ forked it, and it met the signal there
    assert code == 0, text
    assert "Scheduler stopping" in text and "raised an exception" not in text, text


def test_a_scheduler_process_signalled_before_it_ran_is_stopped_and_the_worker_exits_0(
        redis_url, tmp_path):
    """Seen under load (the test above, a full run beside other suites: killed after 30 s,
    exit -9): RQ's teardown sent its one SIGTERM to a scheduler process that had not run yet;
    CPython dropped the signal as the child came out of fork(), the scheduler ran on, and the
    worker waited for it for ever. Its SIGTERM is sent again until the process ends."""
    code, text = _stopped_at_start(HELD_BEFORE_IT_RAN, redis_url, tmp_path, "request_stop")
    assert "scheduler process held" in text, text  # it ran Python after the lost SIGTERM
    assert code == 0, text
    assert "Scheduler stopping" in text and "raised an exception" not in text, text


# `ci-autoscaler worker --burst`'s worker (service.cli._worker), without the runtime.
BURST = """
import sys, redis
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker
PoolWorker([sys.argv[2]], connection=redis.Redis.from_url(sys.argv[1]), concurrency=2,
           serializer=SERIALIZER).work(burst=True, with_scheduler=True)
"""


def test_a_burst_worker_starts_no_scheduler_process(redis_url, tmp_path):
    """As under RQ: a burst run moves the due scheduled jobs once, at its start. Its worker
    forked one at its first dequeue, which a burst with nothing left to do stopped at once."""
    queue = Queue("burst-without-scheduler", connection=redis.Redis.from_url(redis_url),
                  serializer=SERIALIZER)
    job = queue.enqueue("tests.support.jobs.worker_children")
    run = subprocess.run([sys.executable, "-c", BURST, redis_url, queue.name], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert job.get_status(refresh=True) == "finished", run.stderr
    assert job.return_value() == [], run.stderr  # no process beside the job


# `ci-autoscaler worker`'s worker (service.cli._worker: its handler until RQ's take over), its
# log lines on stdout.
STOPPED_COLD = """
import logging, signal, sys, redis
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker
worker = PoolWorker([sys.argv[2]], connection=redis.Redis.from_url(sys.argv[1]), concurrency=2,
                    serializer=SERIALIZER)
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
signal.signal(signal.SIGTERM, worker.stop_at_first_check)
signal.signal(signal.SIGINT, worker.stop_at_first_check)
worker.work(logging_level="INFO", with_scheduler=True)
"""


@pytest.mark.parametrize("signals", ["second", "more"])
def test_a_second_sigterm_stops_a_busy_worker_cold_with_its_scheduler(
        redis_url, tmp_path, signals):
    """The first SIGTERM waits for the running job (warm); a second one, a second later (RQ
    ignores one sooner), stops the worker at once, exit 0, as RQ's cold shutdown does, and
    any after it let it deregister. It hung
    for ever: the cold stop, raised as the worker waited for its jobs, skipped RQ's teardown,
    so nothing signalled the scheduler's process, and the exiting interpreter waited for it
    (multiprocessing joins its children). `ci-autoscaler run` sends the worker one SIGTERM,
    then another each time one of its other processes ends: `run` never returned."""
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(f"stopped-cold-{signals}", connection=connection, serializer=SERIALIZER)
    job = queue.enqueue("time.sleep", 300, job_timeout=600)
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen([sys.executable, "-c", STOPPED_COLD, redis_url, queue.name],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            [scheduler] = wait_until(lambda: _children(worker.pid), timeout=30,
                                     what="the worker's scheduler process")
            wait_until(lambda: job.get_status(refresh=True) == "started", timeout=30,
                       what="the job running")
            worker.send_signal(signal.SIGTERM)
            wait_until(lambda: "waiting for the running jobs" in
                       (tmp_path / "worker.log").read_text(), timeout=30,
                       what="the warm stop waiting for the job")

            # SIGTERMs until RQ takes one for a cold stop, or (`run` sends more) until RQ's
            # teardown ends: one later would meet Python's own handler, at its exit.
            until = "cold shut down" if signals == "second" else "unsubscribing from channel"

            def signalled() -> bool:
                if until in (tmp_path / "worker.log").read_text():
                    return True
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                return worker.poll() is not None

            wait_until(signalled, timeout=30, what="the worker stopped cold")
            code = worker.wait(timeout=15)
        finally:
            if worker.poll() is None:
                for child in _children(worker.pid):
                    os.kill(child, signal.SIGKILL)
                worker.kill()
                worker.wait()
    text = (tmp_path / "worker.log").read_text()
    assert code == 0, text
    assert "cold shut down" in text, text
    assert _gone(scheduler), text
    assert "Scheduler stopping" in text, text
    assert Worker.all(connection=connection) == [], text  # deregistered


def test_a_worker_killed_with_its_scheduler_has_its_retries_moved_by_the_other_worker_soon(
        redis_url, tmp_path):
    """Two worker processes; the one whose scheduler holds the lock is killed with it (SIGKILL
    to its process group, as the kubelet kills a container whose liveness probe failed, or the
    kernel an OOM pod). RQ's lock outlives its holder by its time to live, 61 s (interval + 60,
    rq/scheduler.py acquire_locks; RQ's issue 1758: another worker took over after more than
    10 minutes then): every retry of every build waited that long for nothing. A lock its
    holder has not renewed (each second) for SCHEDULER_STALE_SECONDS is taken over."""
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("scheduler-holder-killed", connection=connection, serializer=SERIALIZER)
    lock = f"rq:scheduler-lock:{queue.name}"
    logs = [(tmp_path / f"worker-{n}.log").open("w") for n in (1, 2)]
    first = subprocess.Popen([sys.executable, "-c", WORKER.replace(repr(QUEUE), repr(queue.name)),
                              redis_url], cwd=ROOT, stdout=logs[0], stderr=subprocess.STDOUT,
                             start_new_session=True)
    second = None
    try:
        wait_until(lambda: _children(first.pid), timeout=30,
                   what="the first worker's scheduler process")
        holder = wait_until(lambda: connection.get(lock), timeout=30, what="its lock")
        second = subprocess.Popen(
            [sys.executable, "-c", WORKER.replace(repr(QUEUE), repr(queue.name)), redis_url],
            cwd=ROOT, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: len(Worker.all(connection=connection)) == 2, timeout=30,
                   what="the second worker registered")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        job = queue.enqueue_in(timedelta(seconds=1), "time.time")  # a retry's pause
        wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=45,
                   what=lambda: f"the retry run by the second worker: lock "
                                f"{connection.get(lock)!r} (the dead one's {holder!r}), ttl "
                                f"{connection.ttl(lock)}")
        assert time.monotonic() - killed < 30
        assert connection.get(lock) not in (None, holder)
    finally:
        _stop(first, second)
        for log in logs:
            log.close()


def test_a_worker_killed_alone_leaves_no_scheduler_behind_and_its_restart_schedules(
        redis_url, tmp_path):
    """SIGKILL to the worker's own process, not its group (the kernel's OOM killer picks one
    process, the biggest, where the container's cgroup does not kill as a group; `kill -9 PID`
    of a supervisor or a person): RQ's scheduler process, forked from it, ran on as an orphan
    for ever, renewing its lock each second, so the worker the supervisor restarted (the
    Procfile's `worker` line) never had a scheduler of its own, and the orphan, of whatever
    release was running then, moved every retry after a deploy. The scheduler ends once its
    worker is gone, its lock freed, and the restarted worker's scheduler takes over."""
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("scheduler-orphan", connection=connection, serializer=SERIALIZER)
    lock = f"rq:scheduler-lock:{queue.name}"
    code = WORKER.replace(repr(QUEUE), repr(queue.name))
    logs = [(tmp_path / f"worker-{n}.log").open("w") for n in (1, 2)]
    first = subprocess.Popen([sys.executable, "-c", code, redis_url], cwd=ROOT, stdout=logs[0],
                             stderr=subprocess.STDOUT, start_new_session=True)
    second = None
    try:
        [scheduler] = wait_until(lambda: _children(first.pid), timeout=30,
                                 what="the worker's scheduler process")
        holder = wait_until(lambda: connection.get(lock), timeout=30, what="its lock")
        first.kill()  # the worker's process alone
        first.wait()
        wait_until(lambda: _gone(scheduler), timeout=10,
                   what=lambda: f"the orphan scheduler's end: lock {connection.get(lock)!r}")
        second = subprocess.Popen([sys.executable, "-c", code, redis_url], cwd=ROOT,
                                  stdout=logs[1], stderr=subprocess.STDOUT,
                                  start_new_session=True)
        wait_until(lambda: connection.get(lock) not in (None, holder), timeout=30,
                   what="the restarted worker's scheduler holding the lock")
        job = queue.enqueue_in(timedelta(seconds=1), "time.time")  # a retry's pause
        wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30,
                   what="the retry run by the restarted worker")
    finally:
        _stop(first, second)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # its orphan, if it is still there
        for log in logs:
            log.close()
