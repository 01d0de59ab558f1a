"""Starting a build in Jenkins at most once per build key (moved from workers.engine.tasks)."""

import logging
import time

from workers import runtime
from workers.adapters.redis_state import BuildStatus
from workers.checks import jobs as job_checks
from workers.core.errors import PermanentError
from workers.core.jenkins_queue import first_triggered
from workers.core.models import BuildRequest
from workers.core.routing import AGENT_PARAMETER
from workers.core.waiting_text import JENKINS_WAIT_FIELD
from workers.engine import jenkins_sessions

log = logging.getLogger("ci_autoscaler.tasks")


SESSION_MAX_AGE_SECONDS = 5.0  # how old a read of Jenkins' session a trigger may record


def _trigger_once(rt: runtime.Runtime, request: BuildRequest, state: dict[str, str], *,
                  write_status: bool = True) -> int:
    """Start the build in Jenkins, at most once per build key. The attempt is written down
    before the call: a task that runs again after one died between the call and writing its
    answer (a killed worker, a timeout after Jenkins took the request) first looks for the
    build by its agent parameter, queued or started, and triggers only if there is none. The
    agent, not the build key: another installation sharing the Jenkins that got the same
    push has the same key, never the same agent name (keys.agent_name)."""
    key = request.build_key
    found = None
    # Jenkins' session as it takes the build: one that has not got it later lost it in a
    # crash (workers.engine.lost_triggers). A read of the last seconds serves: a burst's triggers
    # share one, and a controller takes far longer to stop and start again.
    session = rt.jenkins.session(max_age=SESSION_MAX_AGE_SECONDS)
    jenkins_sessions.seen(rt.state, session, time.time())
    # The name its item carries: its first agent's, whatever agent it has now (agent_names).
    carried = request.parameters.get(AGENT_PARAMETER, request.agent_name)
    if state.get("trigger_attempted_at"):
        found = rt.jenkins.find_queue_item(request.job, AGENT_PARAMETER, carried,
                                           since=first_triggered(state),
                                           agent=request.agent_name)
    if found is None:
        job_checks.before_trigger(rt.jenkins, request.job, request.parameters,
                                  context={"build_key": key, "agent": request.agent_name})
        rt.state.update_build(key, trigger_attempted_at=time.time())
        try:
            queue_item = rt.jenkins.trigger_build(request.job, request.parameters,
                                                  find_by=(AGENT_PARAMETER, carried),
                                                  agent=request.agent_name)
        except PermanentError:
            job_checks.forget(rt.jenkins, request.job)  # it let this build through: changed
            raise
    else:
        queue_item = found
    marks = {"queue_item": queue_item, "triggered_at": time.time(), jenkins_sessions.FIELD: session,
             JENKINS_WAIT_FIELD: None}
    if write_status:
        rt.state.advance_build(key, status=BuildStatus.TRIGGERED, **marks)
    else:  # the provision writes it, once its pod's create has ended
        rt.state.update_build(key, **marks)
    log.info("build triggered", extra={"build_key": key, "agent": request.agent_name,
                                       "job": request.job, "queue_item": queue_item,
                                       "found_queued": found is not None})
    return queue_item
