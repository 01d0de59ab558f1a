"""The builds whose provision job a worker started: in RQ's started registry, with the job's
status "started" (rq 3.0 Job.prepare_for_execution writes it with started_at).

A worker SIGKILLed (the OOM killer, its node lost) leaves its jobs there: RQ fails them as
abandoned (and retries them) only once their entry's time to live is over, the job's timeout
plus 60 s on our workers (rq/worker/worker_classes.py get_heartbeat_ttl), and then only in a
worker's maintenance pass, every 10 minutes (StartedJobRegistry.cleanup). A live provision
takes its build's lease milliseconds after its start (workers.engine.tasks), so a job started
a while ago whose build has no lease is a dead worker's: the reconcile loop's restart of
stalled builds (workers.engine.repairs) provisions it again as soon as one whose lease went
unrenewed, not a lease period or ten later.

Not counted: a job a worker took and has not started yet. A live worker holds every job it
takes so for a few round trips (in its intermediate queue, and with our PoolWorker in the
started registry too: rq/executions.py prepare_execution runs before the job thread's
prepare_job_execution), which one read cannot tell from a dead worker's: during a burst some
job is always there, its build waiting longer than a lease period in the queue, and each pass
queued a duplicate provision. Nor the started_at such a job keeps from an earlier attempt
(an RQ retry: the field is rewritten only at its next start), while its status is not
"started". Those builds wait for the restart of stalled builds' own periods.
"""

from rq.queue import Queue
from rq.utils import str_to_date

PROVISION_DESCRIPTION = "provision_agent "  # redis_state's and tasks.queue_provision's
_STARTED = "started"  # rq.job.JobStatus.STARTED


def provisions_taken(queue: Queue) -> dict[str, float]:
    """The build keys whose provision job a worker (live or dead) started, each with when its
    job started (a Unix time)."""
    connection = queue.connection
    # cleanup=False: reading the registry must not run RQ's cleanup of abandoned jobs here,
    # without the worker's exception handlers (workers.engine.jobs)
    ids = [job_id for job_id, _ in queue.started_job_registry.get_job_and_execution_ids(
        cleanup=False)]
    if not ids:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(queue.job_class.key_for(job_id), "description", "started_at", "status")
        fields = pipe.execute()
    taken: dict[str, float] = {}
    for description, started_at, status in fields:
        text, state = _text(description), _text(status)
        started = _time(started_at) if state == _STARTED else None
        if text and text.startswith(PROVISION_DESCRIPTION) and started is not None:
            key = text[len(PROVISION_DESCRIPTION):]
            taken[key] = max(taken.get(key, started), started)
    return taken


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _time(started_at: bytes | str | None) -> float | None:
    try:
        return str_to_date(started_at).timestamp() if started_at else None
    except ValueError:  # a format a newer RQ writes: counted as not started
        return None
