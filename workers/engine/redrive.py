"""Re-drives of the builds waiting for capacity: queued after a release (or a park, a warm
agent's or a scale-up pod's giving way) frees room, and run by every reconcile pass.

The waiting builds are provisioned again in arrival order (workers.engine.tasks does each one). The
RQ task keeps the dotted name it has always been queued by, ``workers.tasks.redrive_waiting``
(REDRIVE_TASK, an alias in workers.engine.tasks): jobs already in Redis from before an upgrade run,
and so do the ones a new worker queues while workers of the previous release still take jobs
during a rolling upgrade.
"""

import functools
import json
import logging
from typing import Any

from workers import runtime
from workers.engine import failures, scheduling, task_args, tasks, trigger_retry
from workers.adapters import run_bound
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.kube_errors import ApiNotServing, ApiThrottled
from workers.adapters.lease import Lease, free_if_stale
from workers.adapters.redis_state import JOB_TIMEOUT_SECONDS, RedisState
from workers.concurrency import side
from workers.concurrency.heartbeat import Heartbeat, let_go
from workers.concurrency.turns import line
from workers.core.errors import (Overloaded, PermanentError, RetryableError, Unavailable,
                                 shown)
from workers.core.models import BuildRequest
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.tasks")  # the logger these lines always had
REDRIVE_TASK = "workers.tasks.redrive_waiting"
REDRIVE_PENDING_SECONDS = 60


# A counter: every re-drive asked for while builds wait, for room freed (a release, a pod
# gone or ended, a park, a give-way). A provision that ends with its build waiting queues one
# more re-drive when the counter moved during it (workers.engine.tasks._provision): room freed
# meanwhile may not have been in its process's view yet, and the re-drive that came for that
# room found this build's lease held, deferred it, and nothing else would try it until the
# next reconcile pass (up to 15 s with room free). Only room freed moves it: a deferral, or
# that once-more re-drive, counted too, made two overlapping passes queue each other for as
# long as builds waited (each deferring the builds the other held: tests/integration/
# test_redrive_settles.py).
ASKED = "redrive-asked"


def asked(state: RedisState) -> int:
    """The counter's value now (see ASKED)."""
    return int(state.redis.get(state.prefix + ASKED) or 0)


def request_redrive(rt: runtime.Runtime) -> bool:
    """Queue one re-drive of the waiting builds, unless one is already pending."""
    return queue_redrive(rt.state, rt.capacity)


def queue_redrive(state: RedisState, capacity: CapacityStore) -> bool:
    """request_redrive from the state and capacity store alone (a pod listener of the watch,
    made before the process's runtime: workers.warm.gone_watch)."""
    if not capacity.waiting():
        return False
    state.redis.incr(state.prefix + ASKED)
    return queue_pass(state)


def queue_pass(state: RedisState) -> bool:
    """Queue one re-drive unless one is already pending, without moving ASKED (a provision's
    once more: workers.engine.tasks._provision)."""
    if not state.redis.set(state.prefix + "redrive-pending", "1", nx=True,
                           ex=REDRIVE_PENDING_SECONDS):
        return False
    state.enqueue_task(REDRIVE_TASK, description="redrive waiting builds")
    return True


# One re-drive job's pass at a time, cluster-wide (a lease, renewed while it runs); a job that
# comes meanwhile leaves AGAIN and ends at once, and the running pass queues one more at its
# end, which sees the room that job came for. In a burst each release queued a job that ran
# beside the passes still running (a worker runs 16 jobs at once): each walked every waiting
# build, reading its record and trying its lease, and met the builds the others were deciding,
# out of their order. AGAIN lives as long as a pass may run (RQ ends a job at its timeout),
# not the pending flag's minute: a pass in a burst runs longer, and a job that came early in it
# had its mark lapse, its room left to the next reconcile pass.
RUNNING, AGAIN = "redrive-running", "redrive-again"


def redrive_waiting(**newer: Any) -> dict[str, int]:
    """Try every waiting build again, in arrival order, unless another job's pass runs (see
    RUNNING). `newer`: a newer release's arguments, run without (workers.engine.task_args)."""
    task_args.ignored("redrive_waiting", newer)
    rt = runtime.current()
    with tasks.engine_metrics(rt).errors_counted("provision"):
        rt.state.redis.delete(rt.state.prefix + "redrive-pending")
        return redrive_in_line(rt)


def redrive_in_line(rt: runtime.Runtime, *, refresh: bool = True) -> dict[str, int]:
    """redrive(rt), holding the line (RUNNING): a re-drive job's, and the reconcile pass's
    every pass. While another pass holds it, none: that pass goes once more (AGAIN). The
    reconcile pass's re-drive took no lease, and walked the line every pass beside a job's
    pass deciding its chunk, each deferring the builds the other held and racing it for the
    same room out of the line's order (tests/integration/test_reconcile_redrive_line.py)."""
    connection, prefix = rt.state.redis, rt.state.prefix
    connection.set(prefix + AGAIN, "1", ex=JOB_TIMEOUT_SECONDS)  # before the try
    seconds = rt.settings.provision_lease_seconds
    running = Lease(connection, prefix + RUNNING, seconds, renewed=True)
    # A pass whose worker died (SIGKILL, an OOM kill) renews it no more: taken over once
    # unrenewed as long as a provision's (20 s), not left for its whole TTL, every job
    # meanwhile leaving at once and its mark read by no pass.
    free_if_stale(connection, [running.key], seconds)
    if not running.acquire():
        return {"placed": 0, "waiting": 0}  # the running pass goes once more (AGAIN)
    try:
        with Heartbeat(running, what="re-drive"):
            connection.delete(prefix + AGAIN)  # this pass reads the line after it
            return redrive(rt, refresh=refresh)
    finally:
        let_go(running, what="re-drive")
        if connection.delete(prefix + AGAIN):  # a job came while this pass ran
            queue_pass(rt.state)


def redrive(rt: runtime.Runtime, *, refresh: bool = True) -> dict[str, int]:
    """Try the waiting builds in arrival order; the capacity state is written once at the
    end (when `refresh`), not after each of them.

    They are tried a chunk at a time, the provision concurrency of builds at once (a chunk
    being the next builds of the templates not found full): a re-drive after a release that
    freed many slots places them together, not one provision's round trips after another.
    Within a chunk the builds race for the slots, which the atomic caps and reservations
    share out; the chunks keep the arrival order. A template whose build found no room in a
    chunk is full for the rest of the pass: nothing freed since, a later one cannot fit.

    One build's failure (an unexpected error from its provision, or from what follows it:
    Redis refusing its retry's job) does not stop the others: every build of the pass is
    tried and settled, and the first such error is raised at the end, once the capacity
    state is written (the others are logged and counted here; the first by whoever runs the
    pass). Such a build is not lost: one still in the waiting set is tried by the next
    re-drive, and one placed whose trigger failed is provisioned again by the reconcile
    pass's restart of stalled builds (workers.engine.repairs). A pass that ends at a chunk's
    checkpoint (workers.adapters.run_bound) never gets to raise it: it is counted and
    logged there (_checkpoint). A chunk in which a call found Jenkins or the API server not
    serving (Unavailable, Overloaded) ends the pass: the builds after it wait, in their
    order, for the next re-drive; the API server not answering one template's builds leaves
    that template for the rest of the pass, a second's ends it."""
    placed = still = deferred = 0
    counted = tasks.engine_metrics(rt)
    full: set[str] = set()  # templates that found no room at min size in this pass
    unanswered: set[str] = set()  # templates whose builds' API calls went unanswered
    errors: list[Exception] = []
    todo: list[BuildRequest] = []
    waiting = rt.capacity.waiting()
    # Their requests in one round trip: one read each was thousands of round trips a pass
    # with thousands waiting (tests/integration/test_redrive_round_trips.py)
    for key, (raw,) in zip(waiting, rt.state.build_fields(waiting, "request")):
        if not raw:
            rt.capacity.remove_waiting(key)
            continue
        todo.append(BuildRequest.from_dict(json.loads(raw)))
    chunk_size = max(1, rt.settings.provision_concurrency)
    while todo:
        _checkpoint(counted, errors)  # a reconcile pass may end before this chunk
        open_ = [r for r in todo if r.template not in full and r.template not in unanswered]
        still += len(todo) - len(open_)
        chunk, todo = open_[:chunk_size], open_[chunk_size:]
        # At once, but each build admitted after the one before it: the first waiting build
        # takes freed room, not whichever thread got there first (workers.concurrency.turns).
        outcomes = side.each([
            functools.partial(tasks._provision, rt, r, refresh=False, turn=turn)
            for r, turn in zip(chunk, line(len(chunk)))])
        for request, outcome in zip(chunk, outcomes):
            try:
                verdict = _settle(rt, request, outcome, counted)
            except Exception as err:  # this build's alone: the others are settled all the same
                if errors:
                    counted.error("provision", err)
                errors.append(err)
                log.error("re-drive of a build failed; the others go on", extra={
                    "build_key": request.build_key, "error": f"{type(err).__name__}: {err}"})
                continue
            if verdict == _PLACED:
                placed += 1
            elif verdict is not None:  # waiting still
                still += 1
                if verdict == _FULL:
                    full.add(request.template)
                elif verdict == _HELD:
                    deferred += 1
        unanswered.update(r.template for r, o in zip(chunk, outcomes)
                          if isinstance(o.error, ApiNotServing))
        down = next((o.error for o in outcomes if _not_serving(o.error) and (
            len(unanswered) > 1 or not isinstance(o.error, ApiNotServing))), None)
        if down is not None and todo:
            # Jenkins or the API server not serving (a restart's 503, no connection, read
            # timeouts, a front's 502): the builds after this chunk would each make their
            # calls, retried within the call, to a server that cannot answer. A pass of W
            # builds made W x 4 calls, and on a slow server (10 s a timeout) a pass of a few
            # hundred outlasted RQ's job timeout. They keep their place in the line for the
            # next re-drive (the reconcile pass runs one every pass). The API server
            # unanswering one template's builds alone may be its pods' (an admission webhook
            # selecting them by label hangs: each create times out): that template is left
            # for the rest of the pass, as a full one is; its builds, first in the line,
            # ended every pass, and the other templates' builds behind them were never
            # re-driven. A second template's unanswered too: the API server's.
            still += len(todo)
            log.warning("re-drive stopped: a call found the other side not serving; the "
                        "builds after wait for the next re-drive",
                        extra={"left": len(todo), "error": shown(down)})
            break
    if placed or deferred:  # one line for the pass, none for each build left to another task
        log.info("re-drove waiting builds", extra={
            "placed": placed, "still_waiting": still, "deferred": deferred})
    if refresh and (placed or still):
        scheduling.refresh_capacity(rt)
    if errors:
        raise errors[0]
    return {"placed": placed, "waiting": still}


_PLACED, _FULL, _DEFERRED, _HELD = "placed", "full", "deferred", "held"


def _not_serving(err: BaseException | None) -> bool:
    """Whether a build's error says Jenkins or the API server cannot answer now: it is
    Unavailable (Jenkins' 503, no connection), ApiNotServing (the API server's timeouts, no
    connection, a front's 502/503/504), ApiThrottled (the API server's 429, which refuses
    every call of ours alike: it went on to every waiting build, each create retried 4
    times), or Overloaded without a Retry-After (a read timeout, a
    bare 429), which the adapter retried within the call, backing off, before it came here.
    A 429 whose Retry-After was longer than the adapter waits (workers.adapters.retry) was
    one quick answer, not retried: the builds after it go on (each gets its own answer, and
    a placed one's trigger its retry after that wait: workers.engine.trigger_retry)."""
    if isinstance(err, (Unavailable, ApiNotServing, ApiThrottled)):
        return True
    return isinstance(err, Overloaded) and err.retry_after is None


def _checkpoint(counted: EngineMetrics, errors: list[Exception]) -> None:
    """run_bound.checkpoint(); when the run ends here, the first build error, kept to be
    raised (and counted by whoever runs the pass) at the end, is counted and logged with its
    trace first: the stop that ends the pass would drop it unsaid."""
    try:
        run_bound.checkpoint()
    except run_bound.RunEnded:
        if errors:
            counted.error("provision", errors[0])
            log.error("re-drive stopped before its end; a build's provision had failed",
                      exc_info=errors[0], extra={"error": shown(errors[0])})
        raise


def _settle(rt: runtime.Runtime, request: BuildRequest, outcome: side.Outcome,
            counted: EngineMetrics) -> str | None:
    """What follows one build's provision in a re-drive; its verdict: placed, full (it
    waits: no room for its template), deferred (it still waits, for the next re-drive), held
    (another task holds its lease, and settles it), or
    None (a retry of its own was queued, or it failed for good). Raises what the provision
    raised unexpectedly."""
    key, err = request.build_key, outcome.error
    if isinstance(err, tasks.BeingProvisioned):
        # Another task is deciding it (an overlapping re-drive, its own provision job) and
        # settles it: no error and no line of its own. Counted as a provision error, each
        # waiting build of each overlapping pass made CIProvisioningFailing (errors over
        # errors plus agents made) page through a long burst in which nothing failed; logged
        # as a warning, a worker under a burst wrote thousands of lines
        # (tests/integration/test_redrive_deferrals.py).
        return _HELD
    if isinstance(err, RetryableError):  # this one next time; the others now
        counted.error("provision", err)
        # Placed, its trigger failed: no longer waiting, no re-drive would try it.
        if not trigger_retry.after_redrive(rt, request, err):
            log.warning("re-drive deferred", extra={"build_key": key, "error": str(err)})
            return _DEFERRED
        return None
    if isinstance(err, PermanentError):
        counted.error("provision", err)
        rt.capacity.remove_waiting(key)
        failures.fail_unprovisionable(rt, request, err)
        return None
    if err is not None:
        raise err
    return _FULL if "waiting" in outcome.value else _PLACED
