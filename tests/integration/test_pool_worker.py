"""The worker that runs jobs on threads (workers.concurrency.pool_worker), on a real Redis: it
runs as many jobs at once as its concurrency and leaves the rest queued, RQ lists each running
job, and a job fails, retries and times out as under RQ's serial SimpleWorker."""

import threading
import time

import pytest
from rq import Queue, Retry, SimpleWorker, Worker
from rq.job import JobStatus
from rq.worker import WorkerStatus

from tests.support import jobs as test_jobs
from tests.support.monitoring import wait_until
from workers.engine import jobs
from workers.concurrency.pool_worker import PoolWorker
from workers.telemetry.metrics import EngineMetrics

GATE_WAIT_SECONDS = 60


def work_while(worker, gate, look) -> dict:
    """Run the worker's burst here (RQ installs its signal handlers: the main thread), and
    `look` on another thread while jobs wait at the gate; the gate opens when `look` ends,
    however it ends. What `look` returned."""
    seen: dict = {}

    def looking() -> None:
        try:
            seen["value"] = look()
        except BaseException as err:  # reported on the test's thread below
            seen["error"] = err
        finally:
            gate.open.set()
    thread = threading.Thread(target=looking, daemon=True)
    thread.start()
    worker.work(burst=True)
    thread.join(GATE_WAIT_SECONDS)
    if "error" in seen:
        raise seen["error"]
    return seen["value"]


def test_a_worker_runs_as_many_jobs_at_once_as_its_concurrency_and_leaves_the_rest_queued(
        redis_conn):
    queue = Queue("pool-at-once", connection=redis_conn)
    gate = test_jobs.new_gate("at-once")
    for _ in range(6):
        queue.enqueue("tests.support.jobs.wait_at_gate", gate="at-once")

    def look() -> tuple:
        wait_until(lambda: gate.active == 4, timeout=GATE_WAIT_SECONDS, what="four jobs running")
        [listed] = Worker.all(connection=redis_conn)
        return (queue.count, len(listed.get_current_executions(refresh=True)),
                listed.get_state())
    queued, listed, state = work_while(
        PoolWorker([queue], connection=redis_conn, concurrency=4), gate, look)
    assert queued == 2  # not taken: another worker, or a free thread, starts them
    assert listed == 4  # RQ lists every running job of the worker
    assert state == WorkerStatus.BUSY
    assert gate.most == 4
    assert queue.finished_job_registry.count == 6
    assert Worker.all(connection=redis_conn) == []  # deregistered at the end of its burst


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_burst_ends_only_when_the_running_jobs_have_ended(redis_conn, concurrency):
    queue = Queue(f"pool-burst-{concurrency}", connection=redis_conn)
    gate = test_jobs.new_gate(f"burst-{concurrency}")
    for _ in range(3):
        queue.enqueue("tests.support.jobs.wait_at_gate", gate=f"burst-{concurrency}")

    def look() -> int:  # the queue is empty once they all started, yet the burst goes on
        wait_until(lambda: gate.active == concurrency, timeout=GATE_WAIT_SECONDS,
                   what="the jobs running")
        return queue.finished_job_registry.count
    finished_while_held = work_while(
        PoolWorker([queue], connection=redis_conn, concurrency=concurrency), gate, look)
    assert finished_while_held == 0
    assert queue.finished_job_registry.count == 3 and gate.most == concurrency


def _outcomes(redis_conn, worker_class, name: str, redis_url: str) -> dict[str, tuple]:
    """The same jobs (one that works, one that fails and retries, one refused for good) run by
    a worker of `worker_class` with the project's failure handler: how each ended."""
    queue = Queue(name, connection=redis_conn)
    enqueued = {
        "ok": queue.enqueue("tests.support.jobs.mark_done", redis_url=redis_url,
                            key=f"{name}:ok"),
        "retried": queue.enqueue("tests.support.jobs.fails_counted", redis_url=redis_url,
                                 key=f"{name}:retried", permanent=False,
                                 retry=Retry(max=2)),
        "refused": queue.enqueue("tests.support.jobs.fails_counted", redis_url=redis_url,
                                 key=f"{name}:refused", permanent=True, retry=Retry(max=2)),
    }
    kwargs = {"concurrency": 3} if worker_class is PoolWorker else {}
    worker = worker_class([queue], connection=redis_conn, **kwargs)
    worker.push_exc_handler(jobs.failure_handler(EngineMetrics(redis_conn, prefix=name + ":")))
    worker.work(burst=True)
    out = {}
    for what, job in enqueued.items():
        job.refresh()
        attempts = redis_conn.get(f"{name}:{what}")
        out[what] = (job.get_status(), int(attempts or 0), job.retries_left)
    return out


def test_jobs_succeed_fail_and_retry_as_under_the_serial_worker(redis_conn, redis_url):
    serial = _outcomes(redis_conn, SimpleWorker, "serial", redis_url)
    pooled = _outcomes(redis_conn, PoolWorker, "pooled", redis_url)
    assert pooled == serial
    assert serial["ok"][:2] == ("finished", 1)
    assert serial["retried"][:2] == ("failed", 3)  # the first run and two retries
    assert serial["refused"][:2] == ("failed", 1)  # a PermanentError is not retried


def test_a_job_past_its_timeout_fails_on_its_thread_and_the_others_go_on(redis_conn):
    queue = Queue("pool-timeout", connection=redis_conn)
    test_jobs.new_gate("never")
    stuck = queue.enqueue("tests.support.jobs.wait_at_gate", gate="never", job_timeout=1)
    fine = queue.enqueue("tests.support.jobs.mark_done", redis_url="redis://unused", key="-")
    PoolWorker([queue], connection=redis_conn, concurrency=2).work(burst=True)
    stuck.refresh()
    assert stuck.get_status() == "failed"
    assert "JobTimeoutException" in (stuck.latest_result().exc_string or "")
    assert fine.get_status() in ("finished", "failed")  # ran to its end beside the stuck one
    assert queue.started_job_registry.count == 0


def test_concurrency_below_one_is_refused(redis_conn):
    with pytest.raises(ValueError, match="at least 1"):
        PoolWorker([Queue("q", connection=redis_conn)], connection=redis_conn, concurrency=0)


def test_the_work_loops_heartbeats_go_out_at_most_once_a_second_but_one_with_a_ttl_always(
        redis_conn, monkeypatch):
    worker = PoolWorker([Queue("pool-beats", connection=redis_conn)], connection=redis_conn,
                        concurrency=2)
    worker.register_birth()

    def beat() -> bytes:
        return redis_conn.hget(worker.key, "last_heartbeat")
    worker.heartbeat()
    first = beat()
    worker.heartbeat()  # RQ's loop calls it before and after each dequeue, after each start
    assert beat() == first
    worker.heartbeat(timeout=100)  # a time to live of its own: always sent
    assert beat() != first and redis_conn.ttl(worker.key) <= 100
    monkeypatch.setattr("workers.concurrency.pool_worker.HEARTBEAT_EVERY_SECONDS", 0.0)
    second = beat()
    worker.heartbeat()
    assert beat() != second and redis_conn.ttl(worker.key) > 100
    worker.register_death()


def test_the_state_is_written_when_it_changes_only(redis_conn):
    worker = PoolWorker([Queue("pool-state", connection=redis_conn)], connection=redis_conn,
                        concurrency=2)
    worker.register_birth()
    worker.set_state(WorkerStatus.IDLE)
    redis_conn.hset(worker.key, "state", "probe")  # what a second write would overwrite
    worker.set_state(WorkerStatus.IDLE)  # RQ's loop, before every dequeue
    assert redis_conn.hget(worker.key, "state") == b"probe"
    worker.set_state(WorkerStatus.BUSY)
    assert redis_conn.hget(worker.key, "state") == b"busy"
    with redis_conn.pipeline() as pipe:  # RQ's start of a job: always written
        worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        pipe.execute()
    assert Worker.find_by_key(worker.key, connection=redis_conn).get_state() == "busy"
    worker.register_death()


def test_its_teardown_is_not_held_by_rqs_command_channel(redis_conn):
    """A stopping worker unsubscribes from RQ's command channel (rq Worker.unsubscribe:
    pubsub.unsubscribe(), then the listener thread's stop()). redis-py 8.2's stop() waits for
    that thread, which, once the unsubscribe is read and before the stop, waits up to RQ's
    sleep_time of 60 s for a new subscription: a SIGTERMed worker outlived the pod's 30 s grace
    period, and the demo's idle worker hung (pyproject.toml pins redis below 8.2 for this, and
    PoolWorker.unsubscribe stops the thread first, so a redis-py 8.2 does not bring it back).
    Here the listener is let read the unsubscribe first, as a busy machine orders it."""
    worker = PoolWorker([Queue("teardown", connection=redis_conn)], connection=redis_conn,
                        concurrency=2)
    worker.subscribe()
    wait_until(lambda: worker.pubsub.subscribed, timeout=10, what="the subscription")
    worker.pubsub.unsubscribe()
    wait_until(lambda: not worker.pubsub.subscribed, timeout=10, what="the unsubscribe read")
    stopper = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive(), "the worker's unsubscribe was still waiting after 5 s"


def test_another_workers_cleanup_leaves_a_job_running_until_its_timeout_alone(redis_conn):
    """Nothing renews a running job's entry in the started registry on a PoolWorker (RQ's
    forking Worker renews it from monitor_work_horse every job_monitoring_interval; a thread
    has no such loop): what keeps the job from being failed as abandoned, and retried while it
    still runs, by another worker's maintenance (StartedJobRegistry.cleanup, every 10 minutes
    and at each worker's start) is that SimpleWorker gives the entry the job's whole timeout
    plus 60 s (rq/worker/worker_classes.py get_heartbeat_ttl), where BaseWorker's is at most
    job_monitoring_interval + 60 (90 s). Checked with two real worker processes: a 150 s job
    of the first was left alone by the second's maintenance at 100 s. Held here at the last
    second of the job's timeout."""
    queue = Queue("pool-long-job", connection=redis_conn)
    test_jobs.new_gate("long-job")
    job = queue.enqueue("tests.support.jobs.wait_at_gate", gate="long-job", job_timeout=300,
                        retry=Retry(max=2))

    def look() -> tuple:
        wait_until(lambda: test_jobs.GATES["long-job"].active == 1, timeout=GATE_WAIT_SECONDS,
                   what="the job running")
        started = job.get_status(refresh=True)
        # RQ's own cleanup, as another worker's maintenance runs it 299 s after the start
        queue.started_job_registry.cleanup(timestamp=time.time() + 299)
        return started, job.get_status(refresh=True), queue.count
    seen = work_while(PoolWorker([queue], connection=redis_conn, concurrency=2),
                      test_jobs.GATES["long-job"], look)
    assert seen == (JobStatus.STARTED, JobStatus.STARTED, 0)  # not abandoned, not retried
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert queue.finished_job_registry.count == 1 and queue.failed_job_registry.count == 0
