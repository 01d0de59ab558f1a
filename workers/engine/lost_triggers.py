"""Builds whose Jenkins queue item a controller crash lost are triggered again: a repair of the
reconcile pass (workers.engine.repairs).

Jenkins writes its queue to queue.xml as it shuts down, and while it runs at most
QUEUE_SAVE_SECONDS after an item entered or left the queue (hudson.model.Queue.Saver, a
QueueListener; -Dhudson.model.Queue.Saver.DELAY_SECONDS, 60 by default). A controller killed
without its shutdown (SIGKILL, OOM-killed, its node failed) comes back with the queue of its
last save (Queue.load): an item queued since is gone, its page 404 and no run has its id, and
the id counter is the saved one, so the next items take that id again. A build triggered
then waited with an idle agent until its pod's deadline.

Every trigger records Jenkins' session with the build (`FIELD`; X-Jenkins-Session, new on
every start of the controller), and when each session was last seen (`seen`). A pass that has
triggered builds reads the current session; a build recorded under another one is looked for
by its agent parameter, queued or started (its old id may be another item's by now), and on
its recorded item's own page, taken only if that item carries its agent: restored, the item
may have just been taken by the reconnected agent, a LeftItem whose Run is not made yet, in
neither list (it was triggered a second time):

- found (its item restored, or a run took it): that item is the build's, under this session;
- not found, and Jenkins was not seen in the trigger's session QUEUE_SAVE_SECONDS after the
  trigger: the crash lost it. It is triggered again, once, on the same agent (a retry of the
  request looks for the build by its agent first, as a provision's trigger does, and a pass
  that stops half-way is followed by one that finds the build by its agent), logged, and
  counted in ci_autoscaler_builds_retriggered_total;
- not found, though Jenkins had saved its queue with it: someone cancelled it (the restart
  forgot the left item), and it is not triggered again.
A trigger Jenkins refuses for good (its job disabled or deleted meanwhile) fails the build, as
in a provision (tasks.refuse).

A build whose item is gone under the same session was cancelled by hand (or ran and was
forgotten): left as before, never triggered again. Limit: an item cancelled by hand within
QUEUE_SAVE_SECONDS of its trigger, just before a crash, is taken for lost.
"""

import json
import logging
import time

from workers import runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import tasks
from workers.adapters import run_bound
from workers.adapters.lease import held
from workers.adapters.redis_state import BuildStatus
from workers.core.errors import PermanentError
from workers.core.jenkins_queue import first_triggered
from workers.core.models import BuildRequest
from workers.core.ports import QueueItem
from workers.core.routing import AGENT_PARAMETER
from workers.engine.jenkins_sessions import FIELD, last_seen, seen

log = logging.getLogger("ci_autoscaler.lost_triggers")

# hudson.model.Queue.Saver.DELAY_SECONDS' default: an item queued this long is in queue.xml.
QUEUE_SAVE_SECONDS = 60.0
# Added to it: the save's own time, and a reconcile pass's lag in seeing the session.
SAVE_MARGIN_SECONDS = 15.0


def retrigger_lost(rt: runtime.Runtime, builds: dict[str, dict[str, str]],
                   now: float) -> int:
    """Look again, by their agent, for the triggered builds recorded under an earlier Jenkins
    session, and trigger again those a crash lost; the number triggered again. `builds` (the
    open builds, workers.engine.repairs.open_builds) get the item and session written here."""
    waiting = {key: build for key, build in builds.items()
               if build.get("status") == BuildStatus.TRIGGERED and build.get(FIELD)
               and build.get("request")}
    if not waiting:
        return 0
    current = rt.jenkins.session()
    if not current:  # cannot be told (a proxy strips the header): as before
        return 0
    seen(rt.state, current, now)
    again = 0
    queue: list[QueueItem] | None = None  # read once for them all, when one is looked for
    for key, build in waiting.items():
        run_bound.checkpoint()  # the pass may end before this build
        if build[FIELD] == current or held(rt.state.redis, tasks.lease_key(rt, key)):
            continue
        lease = tasks.provision_lease(rt, key)  # no provision writes its item meanwhile
        if not lease.acquire():
            continue
        try:
            # Read again under the lease: the open builds were read before the pass looked
            # at the others, and a worker may have ended this one since (fail_start deletes
            # its pod and node): a trigger now would make an item that waits for ever.
            status, session = rt.state.build_fields([key], "status", FIELD)[0]
            if status == BuildStatus.TRIGGERED and session == build[FIELD]:
                # After a restart every triggered build is looked for: one read of the queue,
                # not one each (an item of ours leaves it, started, for the builds' page)
                queue = rt.jenkins.queue_items() if queue is None else queue
                again += _look_again(rt, key, build, current, now, queue)
        finally:  # once Redis answers: a raise ended the pass, its trigger uncounted
            let_go(lease, what=f"lost trigger {key}")
    return again


def _look_again(rt: runtime.Runtime, key: str, build: dict[str, str], current: str,
                now: float, queue: list[QueueItem]) -> int:
    request = BuildRequest.from_dict(json.loads(build["request"]))
    ctx = {"build_key": key, "agent": request.agent_name, "job": request.job,
           "queue_item": build.get("queue_item")}
    # What its item carries: its first agent's name, whatever agent it has now (a build placed
    # again: workers.engine.agent_names).
    carried = request.parameters.get(AGENT_PARAMETER, request.agent_name)
    recorded = int(build["queue_item"]) if build.get("queue_item") else None
    # The recorded item's own page too: restored, it may have just left the queue, its Run
    # not made yet (in neither list), as the agents reconnect and take their builds.
    found = rt.jenkins.find_queue_item(request.job, AGENT_PARAMETER, carried, queue=queue,
                                       known=recorded, since=first_triggered(build))
    if found is not None:
        rt.state.update_build(key, queue_item=found, **{FIELD: current})
        build.update({"queue_item": str(found), FIELD: current})
        log.info("a triggered build is in Jenkins after its restart",
                 extra={**ctx, "found": found})
        return 0
    triggered_at = float(build.get("triggered_at") or 0)
    if last_seen(rt.state, build[FIELD]) >= \
            triggered_at + QUEUE_SAVE_SECONDS + SAVE_MARGIN_SECONDS:
        rt.state.update_build(key, **{FIELD: current})  # judged once
        build[FIELD] = current
        log.warning("a triggered build is gone from Jenkins though its queue was saved with "
                    "it: cancelled by hand, not triggered again", extra=ctx)
        return 0
    rt.state.update_build(key, retrigger_attempted_at=now)
    try:
        item = rt.jenkins.trigger_build(request.job, request.parameters,
                                        find_by=(AGENT_PARAMETER, carried),
                                        agent=request.agent_name)
    except PermanentError as err:  # its job was disabled or deleted meanwhile: as a provision
        tasks.refuse(rt, request, err)  # whose trigger Jenkins refuses; no pass stops on it
        return 0
    # When Jenkins took it, as a provision records it, not when the pass began: the pass
    # looks at the lost builds one after another, and a crash in the minute after the
    # trigger (before Jenkins saves its queue) is told from a cancel by this time.
    rt.state.advance_build(key, status=BuildStatus.TRIGGERED, queue_item=item,
                           triggered_at=time.time(), retriggered_at=now, **{FIELD: current})
    build.update({"queue_item": str(item), FIELD: current, "updated_at": str(now)})
    tasks.engine_metrics(rt).build_retriggered(request.template)
    log.warning("triggered again a build whose Jenkins queue item a controller crash lost",
                extra={**ctx, "new_queue_item": item})
    return 1
