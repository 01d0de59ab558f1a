"""The builds whose provision job a worker took from the queue: in RQ's started registry, or
in its intermediate queue (taken, not yet started).

A worker SIGKILLed (the OOM killer, its node lost) leaves its jobs there: RQ fails them as
abandoned (and retries them) only once their entry's time to live is over, the job's timeout
plus 60 s on our workers (rq/worker/worker_classes.py get_heartbeat_ttl), and then only in a
worker's maintenance pass, every 10 minutes (StartedJobRegistry.cleanup; IntermediateQueue.
cleanup). A live provision takes its build's lease milliseconds after its start
(workers.engine.tasks), so a job started a while ago whose build has no lease is a dead
worker's: the reconcile loop's restart of stalled builds (workers.engine.repairs) provisions
it again as soon as one whose lease went unrenewed, not a lease period or ten later.
"""

from rq.intermediate_queue import IntermediateQueue
from rq.queue import Queue
from rq.utils import str_to_date

PROVISION_DESCRIPTION = "provision_agent "  # redis_state's and tasks.queue_provision's


def provisions_taken(queue: Queue) -> dict[str, float | None]:
    """The build keys whose provision job is started or taken by a worker (live or dead), each
    with when its job started (a Unix time; None: taken, not started, or no start written)."""
    connection = queue.connection
    # cleanup=False: reading the registry must not run RQ's cleanup of abandoned jobs here,
    # without the worker's exception handlers (workers.engine.jobs)
    ids = [job_id for job_id, _ in queue.started_job_registry.get_job_and_execution_ids(
        cleanup=False)]
    ids += IntermediateQueue(queue.key, connection=connection).get_job_ids()
    if not ids:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(queue.job_class.key_for(job_id), "description", "started_at")
        fields = pipe.execute()
    taken: dict[str, float | None] = {}
    for description, started_at in fields:
        text = description.decode() if isinstance(description, bytes) else description
        if text and text.startswith(PROVISION_DESCRIPTION):
            key = text[len(PROVISION_DESCRIPTION):]
            taken[key] = max(filter(None, (taken.get(key), _time(started_at))), default=None)
    return taken


def _time(started_at: bytes | str | None) -> float | None:
    try:
        return str_to_date(started_at).timestamp() if started_at else None
    except ValueError:  # a format a newer RQ writes: counted as not started
        return None
