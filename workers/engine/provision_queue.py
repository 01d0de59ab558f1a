"""Queueing a provision of a build, under the RQ name it has always had (moved from
workers.engine.tasks; workers/tasks.py)."""

from workers import runtime
from workers.adapters.redis_state import (JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS,
                                          JOB_RETRY, JOB_TIMEOUT_SECONDS)
from workers.core.models import BuildRequest


PROVISION_TASK = "workers.tasks.provision_agent"


def queue_provision(rt: runtime.Runtime, request: BuildRequest) -> None:
    """Queue a provision of this build (from the reconcile loop; webhooks queue theirs with
    their dedupe, through the intake: workers.engine.intake)."""
    rt.state.queue.enqueue_call(
        PROVISION_TASK, kwargs={"build": request.to_dict()}, timeout=JOB_TIMEOUT_SECONDS,
        result_ttl=JOB_RESULT_TTL_SECONDS, failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY,
        description=f"provision_agent {request.build_key}")
