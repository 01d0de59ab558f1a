"""The reconcile loop (level-triggered): whatever events were missed, bring the agents and
the capacity state back in line. One active instance at a time, through a Redis lock.

Each pass:
- notices agents online (workers.agent_starts.online; the leader also does that every
  AGENT_POLL_INTERVAL_SECONDS between passes, while agents are on their way up), fails the
  builds whose agent pod cannot start and that no watch event failed yet
  (workers.agent_starts.watch), places again the builds whose claimed warm agent was lost
  before they started (workers.warm.lost), and after the repairs re-places or fails agents
  that never connected;
- releases the reservations of agents whose pods run (their requests now show) or are gone;
- places again, on other nodes, a pod kube-scheduler refused on all its candidates, keeping
  the build's turn and its agent name, or lets its build wait as unschedulable
  (workers.agent_starts.unschedulable);
- deletes the pods of failed builds kept for debugging once their time is over;
- deletes the state of builds that ended longer ago than CI_AUTOSCALER_BUILD_TTL_SECONDS;
- moves RQ's due retries to the queue (workers.adapters.rq_retries), for KEDA to see when it
  scaled the workers to zero;
- frees the agent slots (caps) of builds that have no agent coming;
- re-drives the builds waiting for capacity, in arrival order;
- writes the capacity state (shortfall, nodes needed) for /metrics.

The steps that ask Jenkins run through workers.engine.jenkins_steps: once one finds Jenkins away (down,
or its 503 while it restarts: `Unavailable`, recorded in workers.agent_starts.jenkins_away; or
too slow to answer: `Overloaded`; or refusing our API token: `Unauthorized`), the Jenkins
steps after it wait for the next pass (a step's own error, a 403 on one object, stops only
those that need its answer), and every step that
needs no Jenkins still runs, in the same order: through a restart or an outage, stray pods are deleted (their Jenkins nodes
left to delete_agentless_nodes once Jenkins is back), settled reservations released, stale
slots freed, retained pods and ended builds expired, intake records recovered, stalled builds
queued again, unschedulable pods placed again, scale-up pods synced and the capacity state
written. Re-driving waiting builds and the warm pools need Jenkins (an agent is registered
there before its pod is made).

The leader records each pass's outcome (workers.adapters.pass_store): the last without error,
or since when passes fail and the last error, for the status page and /metrics
(CIReconcileFailing), since decisions keep the capacity state fresh while passes fail.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from workers import runtime
from workers.engine import caps, data_loss, redrive, repairs, retention, scale_up, scheduling, tasks
from workers.telemetry import liveness
from workers.adapters.expiry import expire_ended
from workers.adapters.kube_errors import ApiNotServing, ApiThrottled
from workers.agent_starts import jenkins_away, online as agent_start, unschedulable, \
    watch as start_watch
from workers.adapters import agent_counts, run_bound
from workers.adapters.lease import Kept, Lease, LeaseLost
from workers.adapters.pass_store import PassStore
from workers.adapters.rq_retries import queue_due_retries
from workers.adapters.redis_state import BuildStatus
from workers.warm import lost as warm_lost, pool as warm_pool
from workers.core.errors import CIAutoscalerError, RetryableError, Unauthorized, Unavailable, \
    shown
from workers.engine.jenkins_steps import JenkinsSteps, stops_the_rest
from workers.telemetry.outage_log import OutageLog
from workers.core.pods import BUILD_KEY_LABEL
from workers.core.ports import PodPhase

log = logging.getLogger("ci_autoscaler.reconcile")
RECONCILE_INTERVAL_SECONDS = 15
LOCK_PERIODS = 3
# A pass still running after this long (something hangs) lets its lease go, for another
# instance to take over (workers.adapters.lease.Kept).
PASS_MOST_SECONDS = 600


def release_settled_reservations(rt: runtime.Runtime) -> int:
    """A reservation ends when its pod is seen Running (its requests are in the snapshot
    from then on) or deleted; it also expires by itself.

    "Deleted" is a pod missing from the list of a build past queued and waiting, the
    statuses a provision has before its pod's create ends. So the statuses (and which builds
    a provision holds) are read before the pods are listed: read after, a pod made while the
    list was on its way back, its build then marked triggered, looked deleted, and its room
    went to another build while it stood on the node, counted by nothing (issue 19). A
    provision that runs may be making the pod of a build past queued (a re-placement):
    its reservation stays. One taken again since it was read stays too.

    A pod that stands with no node yet (kube-scheduler has not bound it) is counted by no
    snapshot, which sees a pod's requests on its node once it is bound: its reservation is
    renewed, not left to expire while the pod stands, or its room went to the next build
    and the node took one agent more than its room once the pod was bound. Not one the
    scheduler refused (workers.agent_starts.unschedulable places or holds it), nor one being
    deleted (a finalizer may keep it for ever; kube-scheduler binds none). So is the
    reservation of a build with no pod yet whose provision runs: taken at its placement, it
    ran out while the provision's Jenkins calls (ensure_node, agent_secret) retried for
    minutes, and the pod made then was counted by nothing until bound. A provision that
    ends or dies lets its lease go, and the reservation expires then."""
    records = rt.capacity.reservation_records()
    if not records:
        return 0
    keys = list(records)
    statuses = [status for (status,) in rt.state.build_fields(keys, "status")]
    with rt.state.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(tasks.lease_key(rt, key))
        provisioning = pipe.execute()
    pods = {p.labels.get(BUILD_KEY_LABEL): p for p in rt.cluster.list_pods()}
    done, unbound = {}, {}
    for key, status, busy in zip(keys, statuses, provisioning):
        pod = pods.get(key)
        if (pod is not None and pod.phase == PodPhase.RUNNING) or \
                (pod is None and not busy and status not in (BuildStatus.QUEUED,
                                                              BuildStatus.WAITING)):
            done[key] = records[key][2]
        elif (pod is not None and pod.phase == PodPhase.PENDING and not pod.node
              and pod.unschedulable_since is None and not pod.deleting) \
                or (pod is None and busy):
            unbound[key] = records[key][2]
    rt.capacity.renew_unchanged(unbound)
    return rt.capacity.release_unchanged(done)


def reconcile_once(rt: runtime.Runtime, now: float | None = None) -> dict[str, int]:
    """One pass (reconcile_pass): what it did, by kind. When a Jenkins step failed, its error
    is raised, once everything the pass could do without Jenkins is done."""
    result, error = reconcile_pass(rt, now)
    if error is not None:
        raise error
    return result


def reconcile_pass(rt: runtime.Runtime, now: float | None = None,
                   keep: Callable[[], None] = lambda: None,
                   ) -> tuple[dict[str, int], Exception | None]:
    """One pass: what it did, by kind, and the first error of its Jenkins steps (None if none
    failed; workers.engine.jenkins_steps). An error of a step that needs no Jenkins is raised.
    `keep` is called between steps: the leader's raises LeaseLost once its lease is lost,
    which ends the pass there (workers.adapters.lease.Kept)."""
    now = time.time() if now is None else now
    jenkins = JenkinsSteps(rt.state, now)
    try:
        result = _reconcile(rt, now, jenkins, keep)
    except run_bound.RunEnded:
        _unreported(rt, jenkins.error)
        raise
    if jenkins.error is not None:
        result.update(jenkins_steps_failed=jenkins.failed, jenkins_steps_skipped=jenkins.skipped)
    return result, jenkins.error


def _unreported(rt: runtime.Runtime, error: Exception | None) -> None:
    """A pass ended early (stopped, its lease lost) reports no error of its Jenkins steps:
    the first, which JenkinsSteps keeps for the pass to count and log, is counted and logged
    here, unless it is a call the end cut short (its retries ended: run_bound.stopping)."""
    if error is None or (isinstance(error, RetryableError) and run_bound.stopping()):
        return
    tasks.engine_metrics(rt).error("reconcile", error)
    log.warning("reconcile Jenkins step failed before the pass ended",
                exc_info=None if isinstance(error, CIAutoscalerError) else error,
                extra={"error": shown(error)})


def _reconcile(rt: runtime.Runtime, now: float, jenkins: JenkinsSteps,
               keep: Callable[[], None]) -> dict[str, int]:
    # Agents online first (a pod that ended after its agent connected is no start failure);
    # then the start failures, so that the repairs do not release, restart or re-drive a
    # build failed here; the connect timeouts last, on what the repairs left.
    # None: not run, or failed (a step's own error does not stop the next: workers.engine.jenkins_steps)
    online = jenkins.run(agent_start.notice_online, rt, now, skipped=None)
    keep()
    pods = rt.cluster.list_pods()
    swept = jenkins.run(start_watch.sweep, rt, pods, now, skipped=None)
    keep()
    failed = swept or set()
    starts_judged = swept is not None  # if not, stray pods it would fail a build for are left
    # Before the repairs: a build on a warm agent lost before it started is placed again,
    # not taken for stalled or lost (workers.warm.lost).
    replaced: set[str] = set()  # their lost pods, listed, share a name with the new ones
    lost = jenkins.run(warm_lost.replace_lost, rt, pods, now, replaced, skipped={})
    keep()
    result = repairs.repair(rt, now, pods=[p for p in pods if p.name not in failed
                                           and p.name not in replaced],
                            jenkins=jenkins, starts_judged=starts_judged)
    keep()
    # Jenkins' session, as the repairs' reads showed it (no request of its own): a restart
    # since the last pass, with no call of ours failing, is known from here on, by the connect
    # clocks below and the next pass (each reader of it before noticed it itself:
    # workers.agent_starts.jenkins_away)
    jenkins.run(jenkins_away.notice, rt, now, skipped="")
    # online unknown (Jenkins away, or its answer refused): no agent is judged not to have
    # connected
    result.update(lost, start_failures=len(failed), agents_online=online or 0,
                  **(jenkins.run(agent_start.check_connect_timeouts, rt, now, skipped={})
                     if online is not None else jenkins.skip({})))
    keep()
    # pushes a worker claimed from the intake and died holding (workers.engine.intake)
    result["intake_records_recovered"] = rt.state.intake.recover()
    # RQ retries that are due, to the queue: with KEDA's scale to zero no worker's scheduler
    # may be left to move them, and KEDA counts the queue, not RQ's scheduled registry
    try:
        result["retries_queued"] = queue_due_retries(rt.state.queue, now)
    except Exception as err:  # Redis away, or a job RQ cannot read: the next pass tries again
        tasks.engine_metrics(rt).error("reconcile", err)
        log.warning("due retries not queued", extra={"error": shown(err)})
    result.update(reservations_released=release_settled_reservations(rt),
                  pods_replaced=unschedulable.handle(rt, now, rt.cluster.list_pods()),
                  slots_freed=caps.release_stale(rt, pods),
                  retained_pods_labelled=retention.label_kept(rt, pods),
                  retained_pods_deleted=retention.delete_expired(rt, now))
    result["builds_expired"] = expire_ended(rt.state, now=now,
                                            ttl_seconds=rt.settings.build_ttl_seconds)
    # The live agents /metrics exports, counted afresh: what the scrapes read in between is
    # these counts and the builds written since (workers.adapters.agent_counts)
    agent_counts.recount(rt.state)
    keep()
    # placing a build registers its agent in Jenkins; refreshed just below. In the line of
    # the re-drive jobs: while one's pass runs, it goes once more instead (workers.engine.redrive)
    result.update(jenkins.run(redrive.redrive_in_line, rt, refresh=False, skipped={}))
    keep()
    try:  # Pending pods a cluster autoscaler adds nodes for, for the builds still waiting
        result.update(scale_up.sync(rt))
    except CIAutoscalerError as err:  # the next pass tries again; the rest goes on
        tasks.engine_metrics(rt).error("reconcile", err)
        log.warning("scale-up pods pass failed", extra={"error": str(err)})
    # The warm pools after the builds: they start nothing, and give idle agents up, while
    # builds still wait (workers.warm.pool). They ask Jenkins which agents are online.
    keep()
    if jenkins.may_run():
        try:
            result.update(warm_pool.run(rt, now))
            result["warm_retired"] = result.get("warm_retired", 0) + \
                warm_pool.retire_unpooled(rt, pods, now)
        except CIAutoscalerError as err:  # the next pass tries again; the rest goes on
            tasks.engine_metrics(rt).error("reconcile", err)
            log.warning("warm pool pass failed", extra={"error": str(err)})
    keep()
    state = scheduling.refresh_capacity(rt)
    result["nodes_needed"] = state.nodes_needed
    return result


class Stopped(run_bound.RunEnded):
    """The process was asked to stop (SIGTERM) during a pass: the pass ends between steps, or
    before the next build of the step under way (workers.adapters.run_bound)."""


def run_forever(rt: runtime.Runtime, stop: threading.Event,
                interval: float = RECONCILE_INTERVAL_SECONDS,
                alive: Callable[[], None] = liveness.nothing) -> None:
    """Reconcile every `interval` seconds while holding the leader lease; stop when `stop` is
    set (a pass under way ends after the step it is in), then let the lease go. Of several
    instances, one acts per period: the others find the lease held and wait, and take over
    within a lease TTL if the holder dies. `alive` is called as the loop goes round, at each
    step of a pass and each poll between passes (workers.telemetry.liveness): a call that never
    returns stops it, and the pod's liveness probe restarts the process."""
    # Three periods: a leader that misses two renewals in a row (or dies) is replaced.
    lease = Lease(rt.state.redis, rt.state.prefix + "reconcile-lock", LOCK_PERIODS * interval)
    me = uuid.uuid4().hex[:12]
    leader = False
    # Its hold every period and its renewals between passes fail together: said once
    outage = OutageLog(log, "reconcile lease unavailable", "reconcile lease available again")
    polls = OutageLog(log, "agent poll failed", "agent poll works again")
    losses = data_loss.LossWatch(rt.state.redis, rt.state.prefix)
    while not stop.is_set():
        alive()
        losses.check()
        held_at = time.monotonic()  # Redis counts the TTL from when it ran the hold
        try:
            leader = lease.hold()
            outage.ok()
        except Exception as err:  # Redis away: try again next period
            _lease_failed(rt, outage, err)
            leader = False
        if leader:
            leader = leader_pass(rt, me, lease, interval, stop=stop, held_at=held_at,
                                 alive=alive)
        _poll_agents_until(rt, stop, time.monotonic() + interval, lease if leader else None,
                           outage, polls, alive=alive)
    try:
        lease.release()
    except Exception:  # Redis away: the lease expires by itself
        pass


def leader_pass(rt: runtime.Runtime, me: str, lease: Lease | None = None,
                interval: float = RECONCILE_INTERVAL_SECONDS,
                stop: threading.Event | None = None, held_at: float | None = None,
                alive: Callable[[], None] = liveness.nothing) -> bool:
    """One pass of the leader `me`, its outcome logged, counted and recorded for the status
    page and /metrics (workers.adapters.pass_store): a failed pass is retried on the next
    tick, and shown as failing, with its error, until one ends without error. Its `lease`
    (held since `held_at`) is renewed every `interval` while it runs, and the pass stops at
    its next step once the lease is lost (another instance leads now: it records nothing),
    or, recording nothing either, once `stop` is set: a pass longer than the pod's grace
    period was SIGKILLed with its lease held, and the next leader waited out its TTL. Within a
    step, the same holds before each build of its loops, and a wait between the retries of a
    call ends on `stop` (workers.adapters.run_bound): a step over many builds on a slow
    Jenkins, or a Retry-After of 30 s, outlasted the grace period or the lease. False if the
    lease was lost."""
    passes = PassStore(rt.state.redis, prefix=rt.state.prefix)
    # With Redis away, lost once less than one renewal period of the TTL is left
    kept = Kept(lease, every=interval, most_seconds=PASS_MOST_SECONDS, held_at=held_at,
                margin=interval) if lease else None

    def keep() -> None:
        alive()
        if kept is not None:
            kept.check()
        if stop is not None and stop.is_set():
            raise Stopped()

    def keep_within() -> None:  # before each build of a step: no Redis call
        alive()
        if stop is not None and stop.is_set():
            raise Stopped()
        if kept is not None:
            kept.check_held()

    def run() -> tuple[dict[str, int], Exception | None]:
        try:
            return reconcile_pass(rt, keep=keep)
        except RetryableError:
            # A call of a step that needs no Jenkins (a Kubernetes 429 or 5xx) whose retries
            # the stop or the lease's loss ended (run_bound.wait): the pass was ended, it did
            # not fail. A Jenkins step's is kept by its JenkinsSteps and ends at the next step.
            keep_within()
            raise
    try:
        # a call's retry waits end on the stop, and once the lease is lost
        with run_bound.bounded(keep_within, stop, kept.lost if kept is not None else None):
            if kept is None:
                result, error = run()
            else:
                with kept:
                    result, error = run()
    except Stopped as ended:
        log.warning("reconcile pass stopped: the process is stopping (the next pass does the "
                    "rest)", extra={"instance": me, **_cut_short(ended)})
        return True
    except LeaseLost as ended:
        log.warning("reconcile pass stopped: its lease was lost (another instance may lead)",
                    extra={"instance": me, **_cut_short(ended)})
        return False
    except redis.exceptions.OutOfMemoryError as err:
        # Redis at its maxmemory under noeviction (the chart's policy) refuses the pass's
        # first write; the steps before it ran (the expiry of ended builds, which frees
        # memory, among them), those after it wait: the warm pool would make agents Redis
        # could not record. Said in one line: a traceback every pass said nothing more.
        tasks.engine_metrics(rt).error("reconcile", err)
        log.warning("reconcile pass stopped: Redis is full (maxmemory), its writes wait for "
                    "room", extra={"instance": me, "error": str(err)})
        _record(passes.failed, me, time.time(), shown(err), partial=False)
        return True
    except (ApiNotServing, ApiThrottled) as err:
        # The API server away (a control plane's upgrade: its front's 503s; no connection)
        # or throttling us (429), its retries within the call spent: nothing after the step
        # ran. One line, no trace: an ERROR with the client's traceback every pass, for as
        # long as an outage lasted, read as a bug (as Jenkins away is said: one line).
        tasks.engine_metrics(rt).error("reconcile", err)
        log.warning("reconcile pass failed: the Kubernetes API server is not answering "
                    "(the next pass tries again)", extra={"instance": me, "error": shown(err)})
        _record(passes.failed, me, time.time(), shown(err), partial=False)
        return True
    except Exception as err:  # nothing after the failing step ran
        tasks.engine_metrics(rt).error("reconcile", err)
        log.exception("reconcile pass failed")
        _record(passes.failed, me, time.time(), shown(err), partial=False)
        return True
    if error is None:
        log.info("reconciled", extra={"instance": me, **result})
        _record(passes.passed, me, time.time())
    else:  # the Jenkins steps it could not do wait for the next pass; the rest was done
        _jenkins_steps_failed(rt, me, result, error)
        # "without its Jenkins steps" only if Jenkins was away or struggling, or steps were
        # skipped: a step's own error (a 403 on one object) stops none of the others
        without = stops_the_rest(error) or bool(result.get("jenkins_steps_skipped"))
        _record(passes.failed, me, time.time(), shown(error), partial=without)
    return True


def _cut_short(ended: run_bound.RunEnded) -> dict[str, str]:
    """The error of the call the end of the pass cut short, to log with it, if one was."""
    cut = ended.__context__
    return {"error": shown(cut)} if isinstance(cut, RetryableError) else {}


def _record(write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        write(*args, **kwargs)
    except Exception as err:  # Redis away: the next pass writes it
        log.warning("reconcile pass not recorded", extra={"error": shown(err)})


def _jenkins_steps_failed(rt: runtime.Runtime, me: str, result: dict[str, int],
                          error: Exception) -> None:
    """Count and log, once, the first error of a pass's Jenkins steps."""
    tasks.engine_metrics(rt).error("reconcile", error)
    if isinstance(error, Unauthorized):  # needs a person: the message says what to fix
        log.error("reconcile pass without Jenkins: Jenkins refuses us until a setting is "
                  "fixed",
                  extra={"instance": me, "error": str(error), **result})
    elif stops_the_rest(error):  # a Jenkins restart, or a busy hour: one line, no trace
        log.warning("reconcile pass without Jenkins: Jenkins is "
                    + ("unavailable" if isinstance(error, Unavailable) else "overloaded"),
                    extra={"instance": me, "error": str(error), **result})
    else:
        log.error("reconcile pass failed", exc_info=error, extra={"instance": me, **result})


def _lease_failed(rt: runtime.Runtime, outage: OutageLog, err: Exception) -> None:
    """Logged once per outage; counted unless Redis is what failed (the counter is kept there:
    each try logged "metric not recorded" too)."""
    if not isinstance(err, redis.RedisError):
        tasks.engine_metrics(rt).error("reconcile", err)
    outage.failed(err)


def _poll_agents_until(rt: runtime.Runtime, stop: threading.Event, until: float,
                       lease: Lease | None, outage: OutageLog | None = None,
                       polls: OutageLog | None = None,
                       alive: Callable[[], None] = liveness.nothing) -> None:
    """Between passes, the leader (holding `lease`; None for the others) notices agents coming
    online within a couple of seconds (workers.agent_starts.online: Jenkins is asked only while
    some agent is on its way up). It renews its lease before each poll: nothing else renews it
    between passes, and a wait plus slow polls (each Jenkins call up to its timeout) could
    outlast its TTL; once the lease is another's, it polls no more as leader. A renewal that
    fails (Redis away) is said once per outage (`outage`, shared with the period's hold), and
    so is a poll that fails the same way again and again."""
    outage = outage or OutageLog(log, "reconcile lease unavailable", "reconcile lease "
                                 "available again")
    polls = polls or OutageLog(log, "agent poll failed", "agent poll works again")
    while not stop.wait(max(0.0, min(agent_start.AGENT_POLL_INTERVAL_SECONDS,
                                     until - time.monotonic()))):
        alive()
        if time.monotonic() >= until:
            return
        if lease is None:
            continue
        sent = time.monotonic()  # Redis counts the TTL from the renew
        try:
            renewed = lease.renew()
        except Exception as err:  # Redis away: no poll (it needs Redis); the next tries again
            _lease_failed(rt, outage, err)
            continue
        outage.ok()
        if not renewed:  # taken over: the next hold() tells whether we lead again
            lease = None
            continue
        expired = _expiring(lease, sent)
        try:
            # Bound by `stop` as a pass is: a Retry-After wait (30 s, up to three) ends on
            # SIGTERM; and once the lease, which nothing renews during the poll, may expire
            with run_bound.bounded(_nothing, stop, expired):
                agent_start.poll(rt, connect_timeouts=False)  # those once per pass
                warm_pool.notice_online(rt)
            polls.ok()
        except Exception as err:  # the next poll tries again
            if stop.is_set():  # its retry's wait ended on the stop: no failure of Jenkins
                break
            if expired():  # its retry's wait ended: the next renew tells if we still lead
                continue
            tasks.engine_metrics(rt).error("reconcile", err)
            polls.failed(err)


def _expiring(lease: Lease, sent: float) -> Callable[[], bool]:
    """Whether the lease renewed at `sent` (time.monotonic()) has less than one period of
    its TTL left: a leader's poll between passes ends its retry waits then (a call's waits,
    up to 90 s, outlasted the 45 s lease, the poll acting on beside the next leader)."""
    left_millis = lease.millis - lease.millis / LOCK_PERIODS
    return lambda: (time.monotonic() - sent) * 1000 >= left_millis


def _nothing() -> None:
    """No checkpoint ends a poll between passes: its retry waits end on the stop alone."""
