"""What a running worker does with a job it took when Redis is full (maxmemory under
noeviction, the chart's policy), and with RQ's maintenance then.

RQ takes a job with LMOVE into its intermediate queue, then writes its Execution (HSET, ZADD,
in one MULTI). A Redis that fills between the two (a few bytes of LMOVE were the last room; or
a BLMOVE admitted before it filled and served after) refuses the second: RQ's loop took the
OOM error for an unhandled exception and the worker quit (its pod restarted into
CrashLoopBackOff while Redis stayed full), and the job was left in the intermediate queue, to
be failed 'stuck' by some worker's maintenance minutes later (seen with a real redis-server:
tests/integration/test_worker_redis_full.py). Now the Execution is written once Redis has room
(the MULTI refused as a whole wrote nothing), and a stop asked for meanwhile puts the job back
at the head of its queue, by a script flagged allow-oom (Redis 7 "Script flags"), which may
write past the limit what it frees in the same call.

RQ's maintenance (every 10 minutes: the scheduler's lock, the registries' cleaning lock, both
SET) failed the same way and quit the worker: it is skipped until the next one, said once.

RQ's heartbeat is an HSET (refused) then the EXPIREs that keep the worker's record: with Redis
full for more than its time to live (worker_ttl + 60 s, 8 minutes), the record of a worker
alive and waiting for room expired, ci_autoscaler_workers read 0 and CIWorkersDown paged "no
worker" while the cause was Redis (CIRedisMemoryHigh). The EXPIREs, which Redis takes when full
(they add no memory: no `denyoom` flag), are sent alone then.
"""

import logging
from collections.abc import Callable
from typing import Any

import redis

from workers.concurrency.maintenance import Maintenance

log = logging.getLogger("ci_autoscaler.pool_worker")

# The job back from the intermediate queue to the head of its queue, where LMOVE took it.
_PUT_BACK = """#!lua flags=allow-oom
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('lpush', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def prepared(worker: Any, job: Any, prepare: Any) -> Any:
    """prepare(job) (RQ's prepare_execution); on an OOM error, or any Redis error (one that
    did not answer is waited for too: workers.concurrency.redis_away), the Execution it made
    in memory is dropped with the error: the one made on the next try replaces it."""
    before = set(worker.executions)
    try:
        return prepare(job)
    except redis.exceptions.RedisError:
        for execution_id in set(worker.executions) - before:
            del worker.executions[execution_id]
        raise


def put_back(connection: redis.Redis, queue: Any, job: Any) -> None:
    """The job taken but not started, back at the head of its queue (a stop while Redis is
    full); if even that fails, RQ's intermediate-queue cleanup finds it later."""
    try:
        back = connection.eval(_PUT_BACK, 2, queue.intermediate_queue.key, queue.key, job.id)
    except redis.RedisError as err:
        log.warning("a job taken was not put back in its queue: RQ's maintenance fails it "
                    "later", extra={"job_id": job.id, "error": type(err).__name__})
        return
    if back:
        log.info("a job taken was put back in its queue: the worker stops", extra={
            "job_id": job.id})


def keep_registered(worker: Any) -> None:
    """The EXPIREs of RQ's heartbeat, without its HSET of last_heartbeat (refused: Redis full)."""
    ttl = worker.worker_ttl + 60  # RQ's heartbeat's own
    try:
        with worker.connection.pipeline(transaction=False) as pipe:
            pipe.expire(worker.key, ttl)
            pipe.expire(worker.executions_key, ttl)
            pipe.execute()
    except redis.RedisError as err:  # the next heartbeat tries again
        log.debug("worker record not kept", extra={"error": type(err).__name__})


def maintenance(skipped: Callable[[], None]) -> Maintenance:
    """RQ's maintenance run, skipped while Redis is full: said once per outage; `skipped`
    (the worker's last_cleaned_at set to now) puts the next one at the next interval."""
    return Maintenance(lambda err: isinstance(err, redis.exceptions.OutOfMemoryError),
                       "worker maintenance skipped: Redis is full (maxmemory)", str, skipped)
