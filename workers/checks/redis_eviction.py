"""Whether the service's Redis may delete our keys at maxmemory (workers.core.redis_eviction),
read from INFO: for `check-config --live` and the start-up checks of the worker and the
reconcile loop (workers.checks.live), and for the web's gunicorn master (service.startup), so
it imports neither kubernetes nor jenkins. A Redis that refuses INFO is not checked, said in
one info line: the policy cannot be told, and that is no fault of the configuration."""

import logging

import redis

from workers.adapters import redis_memory
from workers.core.redis_eviction import problem

log = logging.getLogger("ci_autoscaler.checks.redis")
NOT_CHECKED = "Redis's maxmemory-policy not checked"


def problems(connection: redis.Redis) -> list[str] | None:
    """[the line saying what the policy risks] when it evicts, [] for noeviction; None when
    Redis refuses INFO or does not name its policy (logged). A Redis that does not answer
    raises redis-py's error."""
    try:
        memory = redis_memory.read(connection)
    except redis.ResponseError as err:
        log.info(NOT_CHECKED, extra={"reason": "INFO refused", "error": str(err)[:200]})
        return None
    if not memory.policy:  # a Redis-compatible server that does not say
        log.info(NOT_CHECKED, extra={"reason": "INFO has no maxmemory_policy"})
        return None
    found = problem(memory.policy)
    return [found] if found else []
