"""GitLab commit statuses: each build's state shown on its commit as ``ci-autoscaler/<job>``
(with an installation identity, ``ci-autoscaler/<job> (<installation>)``).

``touch`` is called where a build's state changes (workers.stage_timings.ledger.record, a
STARTED the intake's mover applies: workers.engine.started): one Redis command, no GitLab
call, so provisioning never waits for GitLab. ``sender`` posts what is new, from a thread of
the reconcile process.
"""

import logging
import time

import redis

from workers.adapters.redis_state import RedisState
from workers.adapters.status_queue import StatusQueue

log = logging.getLogger("ci_autoscaler.commit_status")


def touch(state: RedisState, build_key: str) -> None:
    """The build's commit status may have changed. Best effort: with Redis away it is logged
    and dropped (the build's next change, or its end, touches it again)."""
    try:
        StatusQueue(state.redis, prefix=state.prefix).touch(build_key, now=time.time())
    except redis.RedisError as err:
        log.warning("commit status not queued: redis unavailable",
                    extra={"build_key": build_key, "error": type(err).__name__})
