"""RQ's retries that are due, moved back to their queue by the reconcile loop.

A job whose task raised waits for its retry in RQ's scheduled registry
(``rq:scheduled:<queue>``), in no queue; only a worker's scheduler (``with_scheduler``)
moves it back when its pause is over. With KEDA's scale to zero (the chart's
``worker.keda``), the workers can all be gone by then: KEDA's Redis trigger counts list
lengths (the queue and the intake), never that sorted set, so nothing brought a worker
back, and the retry (a release while Kubernetes was away, a provision while Jenkins was)
waited for the next push, however long. The reconcile loop runs whatever the workers do:
each pass moves the due retries to the queue, where KEDA sees them and starts a worker.

It takes the lock RQ's own scheduler takes for the queue (``rq:scheduler-lock:<queue>``,
``RQScheduler.get_locking_key``), so a worker's scheduler and a pass never move one job
twice: while a worker's scheduler holds it, that scheduler moves them, and the pass does
nothing. The move itself is RQ's (``RQScheduler.enqueue_scheduled_jobs``, rq 3.0), made only
while the mover holds that lock (``move_due``), by a worker's scheduler too
(workers.concurrency.scheduler_lock).
"""

import uuid

from redis.exceptions import WatchError
from rq import Queue
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.scripts import acquire_or_refresh_lock, release_lock

# Long enough for one move; the lock is released as soon as it is done.
LOCK_SECONDS = 60


def queue_due_retries(queue: Queue, now: float) -> int:
    """Move the jobs of `queue`'s scheduled registry due at `now` (a Unix time) to the
    queue; how many. None moved while a worker's scheduler holds the queue's lock."""
    redis = queue.connection
    lock, owner = RQScheduler.get_locking_key(queue.name), f"reconcile-{uuid.uuid4().hex}"
    if acquire_or_refresh_lock(redis, lock, owner, LOCK_SECONDS) == "taken":
        return 0
    try:
        return move_due(queue, now, owner)
    finally:
        release_lock(redis, lock, owner)


def move_due(queue: Queue, now: float, owner: str) -> int:
    """Move `queue`'s jobs due at `now` to it, if `owner` holds the queue's scheduler lock when
    they are moved; how many. A mover held up (a frozen process, a stalled node, a pass slow
    over a thousand jobs) past the time a lock goes unrenewed before another worker takes it
    over (workers.concurrency.scheduler_lock: 10 s) moved, once it went on, the jobs it had
    read before, beside the scheduler that took over: each job queued twice, run twice, maybe
    at once on two workers. The move is one transaction on the lock WATCHed from before this
    mover asks whether it holds it: one taken over meanwhile aborts it (Redis, "Transactions",
    https://redis.io/docs/latest/develop/interact/transactions/#optimistic-locking-using-check-and-set)."""
    redis = queue.connection
    lock, registry = RQScheduler.get_locking_key(queue.name), queue.scheduled_job_registry
    with redis.pipeline() as pipe:
        try:
            pipe.watch(lock)
            holder = pipe.get(lock)
            if (holder.decode() if isinstance(holder, bytes) else holder) != owner:
                return 0
            ids = registry.get_jobs_to_schedule(int(now))
            if not ids:
                return 0
            jobs = Job.fetch_many(ids, connection=redis, serializer=queue.serializer)
            pipe.multi()
            moved = 0
            for job_id, job in zip(ids, jobs):
                if job is not None:  # one that expired meanwhile: only its entry goes
                    queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                    moved += 1
                registry.remove(job_id, pipeline=pipe)
            pipe.execute()
        except WatchError:  # taken over meanwhile: the new holder moves them
            return 0
    return moved
