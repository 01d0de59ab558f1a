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
nothing. The move itself is RQ's (``RQScheduler.enqueue_scheduled_jobs``, rq 3.0).
"""

import uuid

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
        registry = queue.scheduled_job_registry
        ids = registry.get_jobs_to_schedule(int(now))
        if not ids:
            return 0
        jobs = Job.fetch_many(ids, connection=redis, serializer=queue.serializer)
        moved = 0
        with redis.pipeline() as pipe:
            for job_id, job in zip(ids, jobs):
                if job is not None:  # one that expired meanwhile: only its entry goes
                    queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
                    moved += 1
                registry.remove(job_id, pipeline=pipe)
            pipe.execute()
        return moved
    finally:
        release_lock(redis, lock, owner)
