"""What a failed build leaves in Jenkins, stopped by a later reconcile pass: a repair
(workers.engine.repairs).

A build failed for its agent (workers.engine.failures: a pod that cannot start, an agent that never
connected, a pod lost while its build ran) has its Jenkins queue item cancelled, or its run
aborted. That stop can stop half-way:
- Jenkins refuses it for good (our user lacks Job/Cancel: 422 to a cancel, 403 to an abort).
  The fail cleans up the rest all the same; the item waited on the label of an agent gone
  for ever, and once the build's record expired (CI_AUTOSCALER_BUILD_TTL_SECONDS) the
  adoption took it for a Replay and ran the failed build after all; a run waited for its
  agent for ever;
- it fails for now (Jenkins away, a 500) and the pod goes before a later pass's start-failure
  sweep, which goes by pods, finishes the fail (a pod deleted by hand, its node reclaimed;
  or a lost agent's, gone already).

So every fail notes its build (workers.adapters.leftover_store: build key by when to look at
it next) before it marks the build failed, and drops it once the stop is done. A pass stops
what is due (at most MAX_BUILDS_PER_PASS, due longest first), under the build's provision
lease (as a fail runs), leaving a build whose pod still stands to the sweep: its queue item
is cancelled, or its run aborted, as a fail does it (workers.engine.failures.stop_in_jenkins, with
Jenkins' queue as the pass read it), and only if it is the build's (after a controller
killed without its shutdown, ids are given again). One Jenkins refuses for good is asked
again RETRY_SECONDS later, logged each time. The build's record does not expire while it is
noted (workers.adapters.expiry), so the adoption keeps leaving a failed build's own item
alone, and, while it is noted, the node block of its Pipeline run (an item of its own, on
our agent's label) too.
"""

import logging
from collections.abc import Iterable

from workers import runtime
from workers.concurrency.heartbeat import let_go
from workers.engine import failures, tasks
from workers.adapters import leftover_store, run_bound
from workers.adapters.redis_state import BuildStatus
from workers.core.errors import CIAutoscalerError, PermanentError
from workers.core.pods import BUILD_KEY_LABEL
from workers.core.ports import PodInfo, QueueItem
from workers.engine.jenkins_steps import stops_the_rest

log = logging.getLogger("ci_autoscaler.jenkins_leftovers")
RETRY_SECONDS = leftover_store.RETRY_SECONDS
# Builds looked at per pass, those due longest first: each costs a lease and up to four
# Jenkins calls, and builds whose stop Jenkins refuses for good (no Job/Cancel) pile up. One
# passed over (its lease held, its pod standing) goes to the back of the line.
MAX_BUILDS_PER_PASS = 50


def stop_left(rt: runtime.Runtime, pods: Iterable[PodInfo], queue: list[QueueItem],
              now: float) -> int:
    """Stop in Jenkins what the fails of builds left there (module docstring); `pods` our pods
    as the pass listed them, `queue` Jenkins' queue as it read it. How many builds have
    nothing left in Jenkins now."""
    due = leftover_store.due(rt.state, now, MAX_BUILDS_PER_PASS)  # the rest: next passes
    if not due:
        return 0
    standing = {pod.labels.get(BUILD_KEY_LABEL) for pod in pods if not pod.deleting}
    stopped = 0
    for key in due:
        run_bound.checkpoint()  # the pass may end before this build
        lease = tasks.provision_lease(rt, key)  # a fail (or provision) of it runs: later
        if not lease.acquire():
            leftover_store.later(rt.state, key, now)  # to the back of the line
            continue
        try:
            stopped += _stop(rt, key, standing, queue, now)
        finally:  # once Redis answers: a raise ended the pass, its stop uncounted
            let_go(lease, what=f"leftover {key}")
    return stopped


def _stop(rt: runtime.Runtime, key: str, standing: set[str | None], queue: list[QueueItem],
          now: float) -> int:
    state = rt.state.get_build(key)
    if state.get("status") != BuildStatus.FAILED or not state.get("fail_reason"):
        leftover_store.done(rt.state, key)  # its fail did not happen (or its record is gone)
        return 0
    if key in standing:  # the sweep's to finish (workers.agent_starts.watch.unfinished)
        leftover_store.later(rt.state, key, now)  # to the back of the line meanwhile
        return 0
    ctx = {"build_key": key, "agent": state.get("agent", ""),
           "queue_item": state.get("queue_item")}
    try:
        outcome = failures.stop_in_jenkins(rt, state, ctx, queue)
    except CIAutoscalerError as err:
        if stops_the_rest(err):  # Jenkins away, struggling or refusing our token
            raise
        # its own error (a 500, or a read refused for good): the next pass, or later
        wait = RETRY_SECONDS if isinstance(err, PermanentError) else 0.0
        leftover_store.later(rt.state, key, now + wait)
        log.warning("could not stop a failed build in Jenkins; asked again later",
                    extra={**ctx, "error": str(err)})
        return 0
    if outcome == failures.NOT_STOPPED:
        leftover_store.later(rt.state, key, now + RETRY_SECONDS)
        return 0
    leftover_store.done(rt.state, key)
    log.warning("stopped in Jenkins what a failed build had left there",
                extra={**ctx, "jenkins": outcome})
    return 1

