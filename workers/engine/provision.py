"""RQ task: provision an agent for a build, under the build's lease (moved from
workers.engine.tasks, which still names provision_agent for RQ). The steps under the lease:
workers.engine.provision_held."""

import logging
import time
from typing import Any

from workers import commit_statuses, runtime
from workers.adapters import refused_builds
from workers.adapters.lease import free_if_stale, RENEWED
from workers.adapters.redis_state import BuildStatus
from workers.concurrency.heartbeat import Heartbeat, let_go
from workers.concurrency.turns import NO_TURN, Turn
from workers.core.errors import Overloaded, RetryableError, Unauthorized, Unavailable
from workers.core.models import BuildRequest
from workers.core.redaction import redact
from workers.core.waiting_text import JENKINS_WAIT_FIELD, NOT_ANSWERING, refused_reason
from workers.engine import task_args
from workers.engine.engine_metrics import engine_metrics
from workers.engine.provision_held import _provision_held, TemplateGone
from workers.engine.provision_lease import BeingProvisioned, provision_lease

log = logging.getLogger("ci_autoscaler.tasks")


def provision_agent(build: dict[str, Any], **newer: Any) -> dict[str, Any]:
    """Decide size and node, register the agent in Jenkins, create its pod, start the build
    on its label; or put the build in the waiting set when it fits nowhere; or, while Jenkins
    quiets down, trigger it with no pod, parked (workers.engine.blocked_builds). `newer`: a newer
    release's arguments, run without (workers.engine.task_args); so are a newer release's fields of
    `build` (BuildRequest.from_dict)."""
    task_args.ignored("provision_agent", newer)
    rt = runtime.current()
    with engine_metrics(rt).errors_counted("provision"):
        request = BuildRequest.from_dict(build)
        try:
            return _provision(rt, request)
        except BeingProvisioned as held:
            if not held.by_task:
                raise  # a repair's or a fail's short step: it provisions nothing (RQ's retry)
            # Another live task holds the lease (a duplicate delivery's job, a re-drive or the
            # reconcile pass's restart racing this one): it decides the build and settles it
            # (placed, or in the waiting set, where re-drives find it), as a re-drive leaves
            # it (workers.engine.redrive). Raised, it was counted a provision error (each try
            # one more in CIProvisioningFailing's ratio, paging through a burst where nothing
            # failed), logged as a warning and retried by RQ up to five times, each retry
            # one more error, for work already done. A dead holder's lease was freed above.
            log.info("build being provisioned by another task; left to it",
                     extra={"build_key": request.build_key})
            return {"build_key": request.build_key, "skipped": "held"}
        except TemplateGone as err:
            # Failed for good, once the lease is let go, as a re-drive fails it (workers.engine.
            # redrive: its queue item cancelled, if it has one). Left queued, the reconcile
            # loop's restart of stalled builds provisioned it again every lease period, for
            # ever, and its commit's run mark held that commit in flight (a push of it again a
            # duplicate, the catch-up taking it for built).
            from workers.engine import failures  # it imports this module
            rt.capacity.remove_waiting(request.build_key)
            failures.fail_unprovisionable(rt, request, err)
            raise


def _provision(rt: runtime.Runtime, request: BuildRequest, *, refresh: bool = True,
               turn: Turn = NO_TURN) -> dict[str, Any]:
    """One build, under its lease; `refresh` writes the capacity state after the decision (a
    re-drive pass writes it once at its end instead); `turn` orders its admission after the
    builds before it in a re-drive (workers.concurrency.turns)."""
    from workers.engine import redrive  # it imports this module
    try:
        lease = provision_lease(rt, request.build_key, renewed=True)  # by its Heartbeat
        # A lease its holder stopped renewing is its dead holder's (SIGKILL, an OOM kill):
        # freed and taken now (the reconcile pass's rule: workers.engine.repairs), not left
        # to a holder that will never settle the build.
        if not lease.acquire() and not (
                free_if_stale(rt.state.redis, [lease.key], rt.settings.provision_lease_seconds)
                and lease.acquire()):
            holder = rt.state.redis.get(lease.key)  # None: let go meanwhile (retried)
            raise BeingProvisioned(
                f"build {request.build_key} is being provisioned by another task",
                by_task=(holder.decode() if isinstance(holder, bytes) else holder or "")
                .startswith(RENEWED))
        try:
            asked = redrive.asked(rt.state)  # under the try: a Redis error lets the lease go
            with Heartbeat(lease, what=f"provision {request.build_key}") as beat:
                try:
                    result = _provision_held(rt, request, beat, refresh=refresh, turn=turn)
                except Unauthorized as err:
                    _note_jenkins_wait(rt, request.build_key, refused_reason(redact(str(err))))
                    raise
                except (Unavailable, Overloaded):  # Jenkins' only: the API server's is
                    _note_jenkins_wait(rt, request.build_key, NOT_ANSWERING)  # ApiNotServing
                    raise
        finally:
            let_go(lease, what=f"provision {request.build_key}")  # once Redis answers
    finally:
        turn.end()  # one that returned before its admission holds no later build back
    # Room freed while this one decided on a view that may not have shown it yet (another
    # process's watch saw it; a re-drive that came for it was deferred by this lease): once
    # more, now that the lease is let go (workers.engine.redrive, asked).
    if "waiting" in result and redrive.asked(rt.state) != asked:
        redrive.queue_pass(rt.state)
    return result


def _note_jenkins_wait(rt: runtime.Runtime, key: str, reason: str) -> None:
    """Why the build waits, on its record (JENKINS_WAIT_FIELD): Jenkins refuses us until an
    admin fixes a setting (a token, Agent/Create or Agent/Connect, a proxy's sign-in), or does
    not answer (restarting: no connection, its 503 while it loads; overloaded: read timeouts,
    429), and the build stayed `queued` with no word for its commit status or the status page
    (or `waiting` for the capacity it now has: a re-drive placed it). Best effort: Redis away,
    the next try notes it."""
    try:
        if rt.state.get_build(key).get("status") in (BuildStatus.QUEUED, BuildStatus.WAITING,
                                                      BuildStatus.POD_CREATED):
            rt.state.update_build(key, **{JENKINS_WAIT_FIELD: reason})
            refused_builds.note(rt.state, key, time.time())
            commit_statuses.touch(rt.state, key)
    except RetryableError as noted:
        log.warning("why the build waits on Jenkins not noted on it",
                    extra={"build_key": key, "error": str(noted)})
