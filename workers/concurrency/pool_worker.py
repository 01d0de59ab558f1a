"""An RQ worker that runs up to `concurrency` jobs at once, each on one of its threads.

Why this shape. A job stays a stock RQ job, run by RQ's own `perform_job`: it is started,
finished, failed or retried (the Retry policy, the exception handlers of workers.engine.jobs, the
failed registry) exactly as the serial SimpleWorker ran it, and RQ 3 lists every running job
of a worker as an Execution (`Worker.get_current_executions`), so `rq info`, the chaos test and
RQ's registry cleanup see each one. The main thread dequeues a job only when a thread is free:
a worker never holds queued jobs it cannot start, and the other worker processes take them.
A job handed to an executor by a job that returns at once would have made RQ's "finished"
a lie and its retries ours to rebuild; N worker loops as threads would have made N registered
workers, N schedulers and N blocking reads per process.

What the threads share is made for it: the runtime's Redis connection pool, one Kubernetes
ApiClient whose connection pool is at least the concurrency (workers.adapters.kube), and one
python-jenkins client per thread (workers.adapters.jenkins). What keeps concurrent provisions
correct is what already kept worker processes apart: the atomic reservations and caps, and
the per-build lease (workers.engine.tasks).

A job's timeout is a timer that raises in the job's thread (RQ's TimerDeathPenalty: SIGALRM
reaches the main thread only). A stop request (SIGTERM) interrupts the main thread's wait for
a job or a free thread, as RQ's does for an idle worker; the jobs running then finish before
the worker deregisters (a warm shutdown), and a second signal stops it cold. The job threads
block SIGTERM and SIGINT, so the kernel delivers them to the main thread.

A Redis that is full (workers.concurrency.full_redis) or does not answer (a failover, a
restart: workers.concurrency.redis_away) is waited for wherever the loop meets it; RQ's loop
quit there, and the worker process ended. A job thread whose job ends while Redis does not
answer waits for it to write the job's end (workers.concurrency.job_end).
"""

import logging
import os
import queue as queues
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import Retry, SimpleWorker
from rq.callbacks import execute_failure_callback
from rq.exceptions import DeserializationError, StopRequested
from rq.job import JobStatus
from rq.job_lifecycle import call_exception_handlers
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from workers.telemetry import liveness
from workers.concurrency import full_redis, job_end, redis_away, scheduler_lock, scheduler_stop
from workers.concurrency.failure_text import failure_text
from workers.concurrency.side import block_stop_signals
from workers.core.errors import RetryableError
from workers.core.redaction import redact

log = logging.getLogger("ci_autoscaler.pool_worker")
DEFAULT_CONCURRENCY = 16
# While every thread is busy, the main thread waits for one this long at a time, then sends the
# worker's heartbeat (RQ's own loop sends one per job and per dequeue).
SLOT_WAIT_SECONDS = 5.0
# A burst worker whose queue is empty while jobs run looks at the queue again this often.
BURST_POLL_SECONDS = 0.2
# RQ's loop sends the worker's heartbeat (an HSET and two EXPIREs, three round trips) three
# times per job: before and after each dequeue and after each start. With many jobs a second
# that is nine commands a job for a key that lives worker_ttl + 60 s (480 s by default); one
# heartbeat this often keeps it as alive. One with its own time to live or pipeline goes out.
HEARTBEAT_EVERY_SECONDS = 1.0
# An idle worker's blocking read for a job lasts this long at most (RQ's: its worker_ttl less
# 15 s, 405 s), then the loop goes round: its heartbeat, and the liveness file
# (workers.telemetry.liveness), are renewed at least this often while it waits for work.
DEQUEUE_SECONDS = 30
# RQ's scheduler process (it moves retried jobs back to the queue when their pause is over)
# exits on its first Redis error, and RQ's worker starts it again only in its maintenance pass,
# every 10 minutes: after a Redis restart or failover every retry waited that long. The work
# loop looks at it on each heartbeat that went through (Redis answers again), and asks for its
# lock at most this often.
SCHEDULER_CHECK_SECONDS = 5.0
# A Redis at its maxmemory under noeviction (the chart's policy) answers every write that may
# add memory (HSET, LMOVE, ...) with an OOM error while it is up: RQ's loop took that for an
# unhandled exception and quit, and RQ's registration at start raised it, so every worker
# process exited while Redis was full (a Procfile runner then stops web and reconcile too; a
# pod restarts into CrashLoopBackOff, minutes late once Redis has room again). The worker
# waits instead, as for a Redis that does not answer: doubled from the first pause to the
# last, said when it starts and once a FULL_REMIND_SECONDS while it lasts.
FULL_WAIT_FIRST_SECONDS, FULL_WAIT_MOST_SECONDS = 0.5, 5.0
FULL_REMIND_SECONDS = 60.0
STOP_CHECK_SECONDS = 0.1  # a stop asked for while it waits is seen this soon
# How long a stopping worker waits for its pubsub thread (RQ's: 1 s, after the unbounded wait
# that `unsubscribe` below leaves out).
PUBSUB_STOP_SECONDS = 1.0


class LoopQuit(RuntimeError):
    """RQ's work loop ended on an error, not on a stop asked for: the worker process fails."""


class PoolWorker(SimpleWorker):
    death_penalty_class = TimerDeathPenalty

    # RQ's longest pause between tries of its dequeue while Redis is away (RQ's: 60 s): a
    # worker that had waited out an outage of half a minute looked again up to 32 s after
    # Redis was back, while the pushes spooled meanwhile waited in the queue.
    max_connection_wait_time = FULL_WAIT_MOST_SECONDS

    def __init__(self, *args: Any, concurrency: int = DEFAULT_CONCURRENCY,
                 alive: Callable[[], None] = liveness.nothing,
                 dequeue_seconds: int = DEQUEUE_SECONDS, secrets: tuple[str, ...] = (),
                 **kwargs: Any):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._dequeue_seconds = dequeue_seconds  # RQ's __init__ reads dequeue_timeout
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency
        # Blanked out of a failure's text, stored and logged (workers.concurrency.failure_text)
        self._secrets = secrets
        # Called each time the main loop goes round (every heartbeat it tries, sent or not,
        # Redis answering or not): a wedged main thread stops calling it (workers.telemetry.liveness).
        self._alive = alive
        self._free = threading.Semaphore(concurrency)
        self._jobs: "queues.SimpleQueue[tuple[Any, Any, Any] | None]" = queues.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._changed = threading.Condition()
        self._waiting = False  # the main thread waits for a job or a thread: a stop may cut in
        self._beat_at = float("-inf")  # time.monotonic() of the last plain heartbeat sent
        self._scheduler_checked_at = float("-inf")  # time.monotonic() of the last look at it
        self._own_pid = os.getpid()  # the scheduler's process, forked from this one, has another
        self._burst = False  # `work(burst=True)`: no scheduler process (see _keep_scheduler)
        self._born = False  # registered in Redis (register_birth went through)
        self._cold = False  # a second signal: stop now, the running jobs abandoned (teardown)
        self._maintenance = full_redis.maintenance(skipped=self._cleaned_now)
        self._maintenance_away = redis_away.maintenance()
        self._refused: redis_away.Refused | None = None  # Redis refused us: the loop quit

    # ---- the threads -----------------------------------------------------------------------

    def _start_threads(self) -> None:
        while len(self._threads) < self.concurrency:
            thread = threading.Thread(target=self._serve, daemon=True,
                                      name=f"job-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        """A job thread: daemon, so a cold stop does not wait for it (the job's lease lapses,
        and the reconcile loop provisions the build again)."""
        block_stop_signals()
        while (item := self._jobs.get()) is not None:
            job, queue, execution = item
            try:
                self.perform_job(job, queue, execution)
            except BaseException:  # perform_job handles the job's own errors; this is RQ's
                log.exception("job thread: RQ could not record a job's end",
                              extra={"job_id": job.id})
            finally:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()
                self._free.release()

    def _finalize_success(self, job: Any, queue: Any, execution: Any, return_value: Any) -> None:
        """RQ's end of a job that returned, written once Redis answers (workers.concurrency.
        job_end). A Retry returned is a failure's end, whose write's error RQ may swallow."""
        job_end.written(lambda: super(PoolWorker, self)._finalize_success(
            job, queue, execution, return_value), job, execution,
            check=isinstance(return_value, Retry), stopping=lambda: self._stop_requested)

    def _finalize_failure(self, job: Any, queue: Any, execution: Any, exc_info: Any) -> None:
        """RQ's end of a job that raised (its retry, or its failure), written once Redis
        answers (workers.concurrency.job_end)."""
        job_end.written(lambda: self._failed(job, queue, execution, exc_info), job,
                        execution, check=True, stopping=lambda: self._stop_requested)

    def _failed(self, job: Any, queue: Any, execution: Any, exc_info: Any) -> None:
        """RQ 3.0's Worker._finalize_failure, the failure's text kept in Redis made by
        failure_text (no page answered, no secret), not RQ's format_exc_info."""
        job._status = JobStatus.FAILED
        self.handle_execution_ended(job, queue, job.failure_callback_timeout)
        try:
            execute_failure_callback(job, self.death_penalty_class, *exc_info)
        except BaseException:  # as RQ: a failing callback's error is the failure recorded
            exc_info = sys.exc_info()
        self.handle_exception(job, *exc_info)
        self.handle_job_failure(job=job, exc_string=failure_text(exc_info, self._secrets),
                                queue=queue, started_job_registry=queue.started_job_registry,
                                execution=execution)

    @property
    def dequeue_timeout(self) -> int:
        """An idle read for a job lasts DEQUEUE_SECONDS at most; SCHEDULER_CHECK_SECONDS while
        this worker runs no scheduler process (another worker's holds the lock, which it takes
        over once its holder died: `_keep_scheduler`), so an idle worker looks that often."""
        most = self._dequeue_seconds
        scheduler = getattr(self, "scheduler", None)  # none yet while RQ's __init__ reads this
        if scheduler is not None and not self._burst and (
                scheduler._process is None or not scheduler._process.is_alive()):
            most = min(most, int(SCHEDULER_CHECK_SECONDS))
        return max(1, min(super().dequeue_timeout, most))

    @property
    def running(self) -> int:
        with self._changed:
            return self._running

    # ---- RQ's work loop, made concurrent -----------------------------------------------------

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's loop, once the worker is registered: a full Redis, or one that does not answer,
        is waited for (False if a stop is asked for meanwhile: nothing was registered, nothing
        is to undo)."""
        self._burst = bool(kwargs["burst"] if "burst" in kwargs else args and args[0])
        try:
            self._until_room(self.register_birth)
        except StopRequested:
            return False
        self._start_threads()
        try:
            worked = super().work(*args, **kwargs)
        except StopRequested:  # asked for while RQ's start, before its loop, waited for Redis
            self.teardown()
            return False
        if self._refused is not None:  # RQ's loop quit on it (logged) and returns as if done:
            raise self._refused  # the process fails, as one started so does
        if not self._burst and not self._stop_requested and not kwargs.get("max_jobs") \
                and not kwargs.get("max_idle_time"):
            # RQ's loop quit on an error it logged ("found an unhandled exception, quitting")
            # and returned as if done: the process fails, so its runner sees it (a pod's
            # restart counts it; exit 0 read as a clean stop).
            raise LoopQuit("RQ's work loop quit on an error (logged above)")
        return worked

    def _note_refused(self, err: BaseException) -> "redis_away.Refused":
        """The Refused that ends the loop, kept for work() to raise: Redis refuses REDIS_URL's
        user or password (its text is the error's type, never a value)."""
        self._refused = redis_away.Refused(
            f"Redis refuses REDIS_URL's user or password ({type(err).__name__})")
        return self._refused

    def subscribe(self) -> None:
        """RQ's (its command channel, at its start), once Redis answers."""
        self._until_room(super().subscribe)

    def _start_scheduler(self, burst: bool = False, *args: Any, **kwargs: Any) -> None:
        """RQ's, at its start: a worker not in burst mode whose Redis does not answer starts
        without it, and its heartbeats start it once Redis answers (`_keep_scheduler`). Its
        scheduler moves jobs only while it holds their queue's lock (scheduler_lock)."""
        try:
            scheduler_lock.start(self, burst, *args, **kwargs)  # RQ's, fenced
        except redis.exceptions.RedisError as err:
            if burst or not redis_away.away(err):
                raise
            log.warning("scheduler not started: Redis does not answer (started once it does)",
                        extra={"error": type(err).__name__})

    def register_birth(self) -> None:
        """RQ's, once (work() made it before RQ's bootstrap asks again)."""
        if not self._born:
            super().register_birth()
            self._born = True

    def run_maintenance_tasks(self) -> None:
        """RQ's, skipped until the next while Redis is full (workers.concurrency.full_redis),
        put off to the loop's next turn while it does not answer (workers.concurrency.
        redis_away)."""
        try:
            self._maintenance_away.run(
                lambda: self._maintenance.run(super(PoolWorker, self).run_maintenance_tasks))
        except redis.exceptions.RedisError as err:
            if redis_away.refused(err):  # met here first (its registries' cleaning, say)
                raise self._note_refused(err) from err
            raise

    def _cleaned_now(self) -> None:  # a maintenance skipped: the next at the next interval
        self.last_cleaned_at = now()

    def check_for_suspension(self, burst: bool) -> None:
        """RQ's (`rq suspend`), once Redis answers."""
        self._until_room(lambda: super(PoolWorker, self).check_for_suspension(burst))

    def register_death(self) -> None:
        try:
            super().register_death()
        except redis.exceptions.OutOfMemoryError:  # its record expires by itself
            log.warning("worker not deregistered: Redis is full (maxmemory)")
        except redis.exceptions.RedisError as err:
            if not redis_away.away(err) and not redis_away.refused(err):
                raise
            log.warning("worker not deregistered: Redis does not answer, or refuses it (its "
                        "record expires)", extra={"error": type(err).__name__})

    def _until_room(self, call: Any) -> Any:
        """call() until Redis takes it without an OOM error, and answers (a failover, a
        restart: workers.concurrency.redis_away); StopRequested when a stop is asked for while
        it waits (a SIGTERM while the main thread waits raises it at once). Once Redis takes
        it after a wait, RQ's scheduler process (it exits on its first Redis error, or was not
        started) is started again now: the heartbeats that do so may all fall within
        HEARTBEAT_EVERY_SECONDS of the last one tried while waiting, and an idle read for a job
        then held the main thread DEQUEUE_SECONDS, the retries due meanwhile left unmoved."""
        pause, started, told_at = FULL_WAIT_FIRST_SECONDS, time.monotonic(), None
        while True:
            try:
                result = call()
            except redis.exceptions.RedisError as err:
                if isinstance(err, redis.exceptions.OutOfMemoryError):
                    said = "Redis is full (maxmemory): the worker waits for room"
                elif redis_away.away(err):
                    said = redis_away.WAITS
                elif redis_away.refused(err):
                    raise self._note_refused(err) from err
                else:
                    raise
                waited = time.monotonic() - started
                if told_at is None or waited - told_at >= FULL_REMIND_SECONDS:
                    log.warning(said, extra={"waited_seconds": round(waited),
                                             "error": f"{type(err).__name__}: {err}"})
                    told_at = waited
            else:
                if told_at is not None:  # it waited
                    self._keep_scheduler()
                return result
            until = time.monotonic() + pause
            while not self._stop_requested and time.monotonic() < until:
                self._alive()
                self._beat_while_waiting()
                time.sleep(STOP_CHECK_SECONDS)
            if self._stop_requested:
                raise StopRequested()
            pause = min(2 * pause, FULL_WAIT_MOST_SECONDS)

    def _beat_while_waiting(self) -> None:
        """The heartbeat (its EXPIREs alone on a full Redis) while the main thread waits for
        room, once registered: a wait to write a taken job's Execution sent none, and after 8
        minutes the record of this live worker expired (CIWorkersDown). Not before register_birth:
        a heartbeat's HSET would make a record it then takes for another live worker's."""
        if not self._born:
            return
        try:
            self.heartbeat()
        except redis.RedisError:  # Redis away: the next try, or RQ's loop, says so
            pass

    def execute_job(self, job: Any, queue: Any) -> None:
        """The Execution is made here, before the next dequeue (RQ lists it at once); the job
        runs on a free thread (`dequeue_job_and_maintain_ttl` took one for it). Written once
        Redis has room and answers (workers.concurrency.full_redis, redis_away); a stop asked
        for meanwhile puts the job back in its queue."""
        try:
            execution = self._until_room(lambda: full_redis.prepared(
                self, job, self.prepare_execution))
        except StopRequested:
            full_redis.put_back(self.connection, queue, job)
            raise
        with self._changed:
            self._running += 1
        self._jobs.put((job, queue, execution))

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None):
        """A thread first, then a job. In burst mode an empty queue ends the run only once no
        job runs: a running job may queue another (a retry, a re-drive)."""
        self._waiting = True
        try:
            while not self._free.acquire(timeout=SLOT_WAIT_SECONDS):
                self.heartbeat()
            while True:
                result = self._until_room(lambda: super(PoolWorker, self)
                                          .dequeue_job_and_maintain_ttl(timeout, max_idle_time))
                with self._changed:
                    running = self._running
                if result is not None or timeout is not None or not running:
                    break
                with self._changed:  # until a job ends, or a while (one may have queued more)
                    self._changed.wait_for(lambda: self._running < running,
                                           timeout=BURST_POLL_SECONDS)
            if result is None:
                self._free.release()
            return result
        finally:
            self._waiting = False

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, at most once a HEARTBEAT_EVERY_SECONDS when plain (the work loop's
        calls, the main thread's only); one with a time to live or a pipeline always. Each
        call is the main loop going round: the liveness file is touched first. A plain one
        Redis does not answer is left for the next (workers.concurrency.redis_away): the
        loop's own calls that need Redis wait for it."""
        self._alive()
        if timeout is not None or pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            return
        at = time.monotonic()
        if at - self._beat_at < HEARTBEAT_EVERY_SECONDS:
            return
        self._beat_at = at
        try:
            super().heartbeat()
        except redis.exceptions.OutOfMemoryError:  # Redis full: its HSET refused
            full_redis.keep_registered(self)
            return
        except redis.exceptions.RedisError as err:
            if redis_away.away(err):
                return
            if redis_away.refused(err):  # RQ's read for a job would wait for it for good
                raise self._note_refused(err) from err
            raise
        self._refused = None  # it answers us again (one met while the loop waited, say)
        self._keep_scheduler()

    def _keep_scheduler(self) -> None:
        """Start the scheduler process again once it died (or take over the scheduler lock of a
        worker that died): what RQ's maintenance pass does, sooner. A living process is looked
        at on every heartbeat (a waitpid); the lock is asked for at most once a
        SCHEDULER_CHECK_SECONDS. A burst run has none, as under RQ (rq/worker/base.py
        _start_scheduler: it moves the due scheduled jobs once, at its start); this started one
        at its first dequeue, and a burst with nothing to do then stopped it at once, in the
        instant the new process still ran the worker's signal handlers (_in_scheduler_process)."""
        if self.scheduler is None or self._stop_requested or self._burst:
            return
        process = self.scheduler._process
        if process is not None and process.is_alive():
            return
        at = time.monotonic()
        if at - self._scheduler_checked_at < SCHEDULER_CHECK_SECONDS:
            return
        self._scheduler_checked_at = at
        try:
            held = self.scheduler.acquire_locks(auto_start=True)
            others = [self.scheduler.get_locking_key(name)
                      for name in sorted(self.scheduler._queue_names - held)]
            # a dead worker's lock lives on for a minute (workers.concurrency.scheduler_lock)
            if others and scheduler_lock.free_stale(self.connection, others,
                                                    self.scheduler.interval):
                log.warning("scheduler lock of a dead worker taken over")
                self.scheduler.acquire_locks(auto_start=True)
        except redis.RedisError as err:  # a later heartbeat asks again
            log.warning("scheduler not restarted: Redis unavailable",
                        extra={"error": type(err).__name__})
            return
        if self.scheduler._process is not None and self.scheduler._process is not process:
            log.info("scheduler process started again", extra={"pid": self.scheduler._process.pid})

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        """RQ logs every exception a job raised at ERROR, with its traceback. A RetryableError
        with retries left is the retry working as meant (Jenkins answering 503, a release
        waiting for its build's provision to end): one WARNING line, no traceback. The
        exception handlers (workers.engine.jobs) run as for any other. Once per failure: not
        again when its end is written again after Redis was away (workers.concurrency.
        job_end)."""
        job_end.handled_once(job, lambda: self._handle_exception(job, *exc_info))

    def _handle_exception(self, job: Any, *exc_info: Any) -> None:
        error = exc_info[1]
        if not (isinstance(error, RetryableError) and job.retries_left):
            self._logged(job, exc_info)
            return
        try:
            task = (job.func_name or "").rsplit(".", 1)[-1]
        except DeserializationError:  # never the case of a job that ran; RQ's own way then
            self._logged(job, exc_info)
            return
        log.warning("job failed; it will be retried", extra={
            "task": task, "job_id": job.id, "retries_left": job.retries_left,
            "error": redact(f"{type(error).__name__}: {error}", self._secrets)})
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def _logged(self, job: Any, exc_info: Any) -> None:
        """RQ 3.0's Worker.handle_exception: the failure logged at ERROR with its traceback,
        made by failure_text (no page answered, no secret), then the exception handlers."""
        try:
            extra = {"func": job.func_name, "arguments": job.args, "kwargs": job.kwargs}
            func_name = job.func_name
        except DeserializationError:
            extra, func_name = {}, "<DeserializationError>"
        extra.update({"queue": job.origin, "job_id": job.id})
        self.log.error("Worker %s: job %s: exception raised while executing (%s)\n%s",
                       self.name, job.id, func_name, failure_text(exc_info, self._secrets),
                       extra=extra)
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """Busy while any job runs, whatever the main thread does. Written only when it
        changes (RQ's loop sets it before every dequeue, and a dequeue while jobs run finds it
        busy already: one HSET a job for nothing); one in a pipeline always."""
        if state == WorkerStatus.IDLE and self.running:
            state = WorkerStatus.BUSY
        if pipeline is None and state == self._state:
            return
        if pipeline is not None:
            super().set_state(state, pipeline=pipeline)
            return
        # the main thread's (RQ's start, its suspension check, its read for a job): written
        # once Redis has room and answers, as the rest of its loop is
        self._until_room(lambda: super(PoolWorker, self).set_state(state))

    # ---- stop signals, in this process and in the scheduler's ---------------------------------

    def stop_at_first_check(self, signum: int, frame: Any) -> None:
        """The SIGTERM and SIGINT handler until RQ's own take over (service.cli): the work loop
        stops at its first check."""
        if not self._in_scheduler_process():
            self._stop_requested = True

    def request_stop(self, signum: int, frame: Any) -> None:
        """RQ's warm stop, in this process only (see `_in_scheduler_process`)."""
        if not self._in_scheduler_process():
            super().request_stop(signum, frame)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """RQ's cold stop (a second signal, a second past the first): SystemExit, the running
        jobs abandoned (`teardown` no longer waits for them). Signals after it are ignored: one
        raising again in RQ's teardown (`ci-autoscaler run` signals each time another process
        ends) left the worker registered."""
        if self._in_scheduler_process() or self._cold:
            return
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            self._cold = True
            raise

    def _in_scheduler_process(self) -> bool:
        """True in RQ's scheduler process, having asked its scheduler to stop. RQ forks it
        (rq/scheduler.py RQScheduler.start) with this process's handlers, which it keeps until
        its `work` installs its own: a SIGTERM then (RQ's teardown sends one at once to a
        scheduler it just started; a process manager's reaches the whole group) ran the
        worker's handler there. It only stopped the worker's copy (or, forked from a
        heartbeat while the main thread waited, raised StopRequested, which the scheduler's
        `run` logs as an error), so the scheduler ran on and the worker, waiting for it
        (rq/worker/base.py stop_scheduler), never exited: seen under load as a Procfile stack
        stopped right after its start, the worker SIGKILLed after 60 s."""
        if os.getpid() == self._own_pid:
            return False
        if self.scheduler is not None:
            self.scheduler.request_stop()  # it stops at its loop's first check, as on SIGTERM
        return True

    def stop_scheduler(self) -> None:
        """RQ's, its SIGTERM sent again until the process ends: one that reached it before it
        ran was lost (workers.concurrency.scheduler_stop)."""
        scheduler_stop.stop(self.scheduler._process)

    def _shutdown(self) -> None:
        """A warm stop: no new job; a main thread waiting for one stops waiting now."""
        self._stop_requested = True
        if self._waiting:
            raise StopRequested()
        log.info("worker stops after the jobs it is running", extra={"running": self.running})

    def unsubscribe(self) -> None:
        """RQ's, without its unbounded wait. RQ sends UNSUBSCRIBE, then stops its pubsub thread,
        and redis-py 8's PubSubWorkerThread.stop() waits for that thread without a limit; a
        thread that read the UNSUBSCRIBE's reply first is no longer subscribed and waits for a
        new subscription for the whole of RQ's sleep_time (60 s). So a worker stopped by
        SIGTERM sometimes hung a minute after its last job, past a pod's 30 s grace period.
        Here the thread is told to stop first; the reply then ends its wait for a message.
        With Redis away (a stop during an outage) there is no UNSUBSCRIBE to send: the
        channel goes with the connection, closed below (its ConnectionError ended the
        teardown, exit 1)."""
        thread = self.pubsub_thread
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name,
                      self.pubsub_channel_name)
        try:
            thread.stop(timeout=0)  # redis-py 8: the flag cleared, no wait
        except TypeError:
            thread.stop()  # redis-py before 8: it never waited
        try:
            self.pubsub.unsubscribe()
        except redis.exceptions.RedisError as err:
            if not redis_away.away(err):
                raise
        thread.join(timeout=PUBSUB_STOP_SECONDS)
        self.pubsub.close()

    def teardown(self) -> None:
        """The running jobs end first (warm shutdown), then RQ stops the scheduler's process and
        deregisters the worker. A cold stop (SystemExit, here or in the work loop) waits for no
        job, and still runs RQ's part: a cold stop raised in the wait below skipped it, and the
        exiting interpreter waited for ever for the scheduler's process, which no signal had
        reached (multiprocessing joins its children at exit; `ci-autoscaler run` and a
        `kill` signal the worker's pid alone), the worker left registered."""
        try:
            with self._changed:
                if self._running and not self._cold:
                    log.info("waiting for the running jobs", extra={"running": self._running})
                while self._running and not self._cold:
                    self._changed.wait(timeout=SLOT_WAIT_SECONDS)
        finally:
            for _ in self._threads:
                self._jobs.put(None)
            super().teardown()
