"""What a running worker does when Redis does not answer (a Sentinel failover, a restart, a
blip): it waits, as RQ's own read for a job does, and goes on once Redis answers.

RQ's work loop waits out a connection error or a timeout only inside its read for a job
(rq/worker/base.py dequeue_job_and_maintain_ttl); one met anywhere else in the loop (its
maintenance, its suspension check, the job's Execution written after the read, a heartbeat)
was "an unhandled exception", and a TimeoutError "Redis connection timeout": the worker
quit. Under a failover that was a matter of where the main thread stood: the worker process
exited, nothing turned the intake's pushes into builds any more (a Procfile runner stops
every process then; a pod restarts, late, with a back-off), and the pushes answered 202
during the failover waited unbuilt (tests/integration/test_no_loss_operator.py, under load).

A refused password (AuthenticationError, a ConnectionError in redis-py) is not an outage: no
wait mends it, and it still ends the loop. RQ's read for a job waits out every ConnectionError,
a refusal too: the worker's heartbeat, which that read sends on each of its tries, raises one
as `Refused` (not a ConnectionError), so an idle worker whose Redis came to refuse its password
(rotated, Redis restarted with the new one) quits too instead of waiting there for good. The
sentinels refusing theirs (SentinelsRefused) are waited for, as at the start (its grace).
"""

import redis

from workers.adapters.redis_connect import REFUSED, SentinelsRefused
from workers.concurrency.maintenance import Maintenance

WAITS = "Redis does not answer: the worker waits for it"


class Refused(redis.exceptions.RedisError):
    """Redis refuses REDIS_URL's user or password: a RedisError that is no ConnectionError, so
    RQ's read for a job does not wait for it. Its text is the error's type (never a value)."""


def away(err: BaseException) -> bool:
    """Whether `err` says Redis does not answer for now (not that it refused us)."""
    return isinstance(err, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)) \
        and not isinstance(err, REFUSED)


def refused(err: BaseException) -> bool:
    """Whether `err` is Redis refusing the worker's own user or password (no wait mends it)."""
    return isinstance(err, REFUSED) and not isinstance(err, SentinelsRefused)


def maintenance() -> Maintenance:
    """RQ's maintenance run (its locks, the registries' cleaning) put off while Redis does
    not answer, said once per outage; it is due still, so the next turn of the loop (RQ's
    read for a job, which waits for Redis) runs it."""
    return Maintenance(away, "worker maintenance put off: Redis does not answer",
                       lambda err: f"{type(err).__name__}: {err}")
