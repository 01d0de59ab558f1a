"""The repairs of a reconcile pass: what events missed, found by comparing the Jenkins queue,
the build state in Redis, and the pods and Jenkins agents this service manages.

- ``delete_stray_pods``: pods of ours whose build is unknown (orphans: once Jenkins says their
  agent runs nothing, as Redis may have lost a running build's record), whose pod ended
  (Failed or Succeeded, or its agent's container did, beside a service running on), whose
  build finished (a release that did not complete), or that outlived their template's
  deadline (e.g. stuck Pending, which activeDeadlineSeconds misses).
  A failed build's pod kept for debugging is left to workers.engine.retention.
- ``lost_triggers.retrigger_lost``: triggered builds whose Jenkins queue item a controller
  killed without its shutdown lost (told by Jenkins' session) are triggered again, once.
- ``finish_lost_builds``: triggered builds heard nothing of for a while are looked up in
  Jenkins; a finished or cancelled one is released (a lost COMPLETED notification), a running
  one still marked triggered is marked running (a lost STARTED).
- ``delete_agentless_nodes``: Jenkins agents of ours with no pod whose build is unknown or over;
  "ours" by the description of this installation's nodes (workers.adapters.jenkins), never
  another's that shares the Jenkins.
- ``adopt_queue_items`` and ``watch_adopted`` (workers.engine.adoption): builds Jenkins queued by
  itself on one of our templates' labels (by hand, on a timer, a Pipeline's node block), or
  on the label of one of our agents that is gone (a Replay), get an agent (no webhook ever
  announces them); an adopted agent runs one build, and is released when that build ends, or its
  Pipeline block does (workers.engine.adopted_done).
- ``label_probe.tend``: while Jenkins has no agent at all, its queue names no label; a
  node that runs nothing (the label probe) is registered so that it does, and the queue read
  again for the adoption; it is deleted once nothing needs it (workers.engine.label_probe).
- ``lost_agents.fail_lost``: running builds whose agent pod went away (a drained or reclaimed
  node) are aborted in Jenkins and failed (`pod_lost`), or released if Jenkins says they ended.
- ``blocked_builds.park_and_resume``: triggered builds whose Jenkins queue item is blocked
  (a job that does not allow concurrent builds) give their pod up until it is not.
- ``jenkins_leftovers.stop_left``: the queue items and runs of failed builds whose fail could
  not stop them in Jenkins (refused for good, or its pod gone before a sweep finished it) are
  cancelled or aborted (workers.engine.jenkins_leftovers).
- ``restart_stalled``: builds whose provision stopped half-way (a killed worker), or whose pod
  went (or is being deleted: an eviction) before its agent connected, and that no task holds
  or will run are provisioned again; every step is idempotent.

Only pods with our managed-by label are ever touched: the label is checked here again, in code,
whatever the cluster adapter returned; the adapter lists only this installation's pods (its
installation label, or from before labels and known to its state: workers.core.
installation_pods), so another's sharing the agent namespace are never taken for orphans. Each repair counts what it did.
"""

import json
import logging
import time
from collections.abc import Iterable

from workers import commit_statuses, runtime
from workers.engine import (adopted_done, adoption, blocked_builds, failures,
                            forgotten_items, jenkins_leftovers, label_probe, lost_agents,
                            lost_runs, lost_triggers, orphans, retention, run_confirm, tasks,
                            unserved)
from workers.adapters import lease, rq_taken, run_bound
from workers.adapters.lease import held
from workers.adapters.redis_state import FINISHED, RETRY_AT, BuildStatus
from workers.agent_starts import disrupted
from workers.agent_starts.watch import unfinished, worth_failing
from workers.core.jenkins_queue import TRIGGER_TIMES, first_triggered
from workers.core.keys import PREVIOUS_AGENTS
from workers.core.models import BuildRequest
from workers.core.notifications import Confirmed
from workers.core.placement import WaitReason
from workers.core.pods import BUILD_KEY_LABEL, is_managed
from workers.core.ports import BuildState, PodInfo, PodPhase
from workers.core.errors import RetryableError
from workers.core.start_failures import (JUDGED, LOST_RUN_AT_FIELD, LOST_RUN_FIELD,
                                         LOST_RUN_NODE_LEFT_FIELD, FailureReason,
                                         StartFailure, start_failure)
from workers.engine.jenkins_steps import JenkinsSteps
from workers.warm import agents as warm_agents, pool as warm_pool

log = logging.getLogger("ci_autoscaler.repairs")

# Builds received this long ago or less are looked at; older ones are history, unless they
# have an agent (open_builds).
BUILD_WINDOW_SECONDS = 2 * 24 * 3600
# A pod older than its template's activeDeadlineSeconds plus this is deleted, whatever it does.
DEADLINE_GRACE_SECONDS = 120
# While jobs wait in the queue, a build is taken for stalled only after this many lease periods.
STALL_PERIODS_WHILE_QUEUED = 10
_FIELDS = ("status", "agent", "job", "template", "queue_item", "jenkins_build", "updated_at",
           "checked_at", "received_at", "restarted_at", "pod_created_at", "request",
           "node_label", "agent_online_at", "warm_agent", RETRY_AT, lost_agents.FIELD,
           blocked_builds.FIELD, lost_triggers.FIELD, run_confirm.JENKINS_RUN,
           PREVIOUS_AGENTS,  # the labels a build placed again waits on (lost_agents)
           LOST_RUN_FIELD, LOST_RUN_AT_FIELD,  # a Pipeline run left to decide (lost_runs)
           LOST_RUN_NODE_LEFT_FIELD,  # ... whose node Jenkins failed to delete
           # every time the build was (or may have been) triggered: its run is looked for
           # since the first (first_triggered); triggered_at alone is when a provision last
           # found or made its item, maybe long after its run was made
           *TRIGGER_TIMES)


_STRAY_FIELDS = ("status", "template", "pod_created_at", "fail_reason", JUDGED,
                 disrupted.AGENT_FIELD, "wait_reason")


def ours(pods: Iterable[PodInfo]) -> list[PodInfo]:
    """Our pods only: the managed-by label, checked here whatever a server returned."""
    return [pod for pod in pods if is_managed(pod.labels)]


def open_builds(rt: runtime.Runtime, now: float) -> dict[str, dict[str, str]]:
    """Recent builds that are not over, and the builds that have an agent (or its Jenkins
    node and queue item: a build parked through a quiet down of a long weekend), whatever
    their age, with the fields the repairs read. Left out past the window, a parked build was
    never resumed: its Jenkins node and queue item stayed for ever, and its record."""
    recent = rt.state.builds_since(now - BUILD_WINDOW_SECONDS)
    seen = set(recent)
    keys = [key for key in rt.state.live_builds() if key not in seen] + recent
    rows = rt.state.build_fields(keys, *_FIELDS)
    builds = {}
    for key, row in zip(keys, rows):
        fields = {name: value for name, value in zip(_FIELDS, row) if value is not None}
        if fields.get("status") not in FINISHED:
            builds[key] = fields
    return builds


def delete_stray_pods(rt: runtime.Runtime, pods: list[PodInfo], now: float, *,
                      starts_judged: bool = True, jenkins: JenkinsSteps | None = None) -> int:
    """Needs no Jenkins but for orphans: a release while Jenkins is away leaves the agent's Jenkins node to
    delete_agentless_nodes (tasks.delete_node_or_leave). Without `starts_judged` (the pass's
    start-failure sweep did not run: Jenkins away), a pod whose build that sweep would fail
    is left to a pass that can: released here, the build would not be failed, and its queue
    item would wait in Jenkins for an agent that never comes. The pod of a build whose fail
    stopped half-way (agent_starts.watch.unfinished) is left to the sweep in every pass.
    An orphan (its build unknown) is deleted only once `jenkins` says its agent runs nothing:
    Redis may have lost the record of a build that runs (workers.engine.orphans)."""
    deleted = 0
    live = [pod for pod in ours(pods) if not pod.deleting]
    # A warm agent is the pool's until a build claims it, then that build's (workers.warm).
    warm = warm_pool.known(rt, live)
    live = [pod for pod in live if warm.get(pod.name) != ""]
    keys = [warm.get(pod.name) or pod.labels.get(BUILD_KEY_LABEL, "") for pod in live]
    rows = rt.state.build_fields(keys, *_STRAY_FIELDS)  # one round trip for every pod
    orphan = orphans.Orphans(rt, jenkins)  # Jenkins asked once for them all
    for pod, key, row in zip(live, keys, rows):
        run_bound.checkpoint()  # the pass may end before this build
        state = {k: v for k, v in zip(_STRAY_FIELDS, row) if v is not None} if key else {}
        reason = _why_stray(rt, pod, state, now)
        # A fail stopped half-way (its queue item not cancelled) is the sweep's to finish,
        # whatever stopped it (Jenkins away, or a 500 on the cancel, which the sweep logs
        # and passes over): released as finished, the item would wait on a gone agent's
        # label, and the adoption make an agent for it, running the failed build after all
        if reason is None or unfinished(state) or \
                (not starts_judged and _start_failed(rt, pod, state, now)):
            continue
        if not state:  # no build to release: the pod and its Jenkins agent only
            if not orphan.deletable(pod):
                continue
            if rt.cluster.delete_pod(pod.name):
                tasks.engine_metrics(rt).agent_deleted("unknown", reason)
            tasks.delete_node_or_leave(rt, pod.name)
        elif reason == "deadline" and pod.phase == PodPhase.PENDING:
            if not starts_judged or not _fail_never_started(rt, key, pod, now):
                continue  # Jenkins away, or a task holds the build: the next pass
        else:
            tasks.release(rt, key, pod.name, reason)
        log.warning("deleted a stray agent pod", extra={"agent": pod.name, "build_key": key,
                                                        "reason": reason})
        deleted += 1
    return deleted


def _fail_never_started(rt: runtime.Runtime, key: str, pod: PodInfo, now: float) -> bool:
    """A pod still Pending past its deadline (no kubelet ever started it: its node went
    away with it bound, a podSpecPatch took activeDeadlineSeconds out) never ran its agent:
    its build is failed as one whose agent cannot start (workers.engine.failures), its
    Jenkins queue item cancelled. Released as a pod past its deadline, the build read
    "released" with no result nor reason, and its queue item waited in Jenkins for good on
    the label of an agent that was gone. One whose agent connected after all (Jenkins says
    so: not a start failure) is released as before. False when a task holds the build."""
    created = pod.created_at or now
    failure = StartFailure(str(FailureReason.POD_FAILED),
                           f"agent pod {pod.name} still Pending {now - created:.0f}s after it "
                           "was made, past its deadline: no kubelet started it",
                           only_before_connect=True)
    try:
        failed = failures.fail_build(rt, key, pod.name, failure)
    except RetryableError:  # a provision holds it (or Redis away): the next pass
        return False
    if failed.get("skipped"):  # its agent connected after all: its deadline, as any pod's
        tasks.release(rt, key, pod.name, "deadline")
    return True


def _start_failed(rt: runtime.Runtime, pod: PodInfo, state: dict[str, str],
                  now: float) -> bool:
    """Whether the start-failure sweep would fail this pod's build, or finish its fail
    (agent_starts.watch)."""
    if unfinished(state):  # a connect timeout's too, its pod running
        return True
    failure = start_failure(pod, rt.settings.fatal_waiting_reasons, now=now,
                            pull_retry_seconds=rt.settings.image_pull_retry_seconds)
    return failure is not None and worth_failing(state, pod.name, failure)


def _why_stray(rt: runtime.Runtime, pod: PodInfo, state: dict[str, str],
               now: float) -> str | None:
    if not state:
        return "orphan"
    if state.get("status") == BuildStatus.RETAINED:  # kept for debugging: workers.engine.retention
        return None
    if disrupted.replaced(state, pod.name):  # its build's next provision is on its way
        return None  # (a listing from before it was placed again: agent_starts.disrupted)
    if pod.phase in (PodPhase.SUCCEEDED, PodPhase.FAILED) or pod.agent_ended:
        # (its agent's container ended beside a running service: its build cannot go on)
        return "pod_ended"
    if state.get("status") in FINISHED:
        return "build_finished"
    if pod.phase == PodPhase.PENDING and not pod.node \
            and state.get("wait_reason") == WaitReason.UNSCHEDULABLE:
        # Left to kube-scheduler, refused on every candidate (agent_starts.unschedulable):
        # it waits for one to free up, however long their builds run. Its deadline has not
        # begun: the kubelet counts it from the start a kubelet gives it (status.startTime;
        # pkg/kubelet/active_deadline.go). Failed at it, an hour after it was made, the
        # build read pod_failed, "no kubelet started it"
        # (tests/integration/test_held_unschedulable_deadline.py).
        return None
    # The deadline the pod was made with: the template's as loaded now may be lower (the
    # operator lowered it since), and taken, it deleted builds running within their own.
    deadline = pod.active_deadline_seconds
    template = rt.config.templates.get(state.get("template", ""))
    if deadline is None and template is not None:
        deadline = (warm_agents.deadline_seconds(template)
                    if pod.labels.get(warm_agents.WARM_LABEL) else template.active_deadline_seconds)
    created = pod.created_at or float(state.get("pod_created_at") or now)
    if deadline is not None and now - created > deadline + DEADLINE_GRACE_SECONDS:
        return "deadline"
    return None


def finish_lost_builds(rt: runtime.Runtime, builds: dict[str, dict[str, str]],
                       now: float) -> int:
    """Ask Jenkins about the triggered builds not heard of for `lost_event_seconds`; release
    those that finished or were cancelled. Each build is asked about once per that period."""
    finished = 0
    quiet = rt.settings.lost_event_seconds
    queue = forgotten_items.PassQueue(rt)  # one read of it for all the builds asked about
    for key, build in builds.items():
        run_bound.checkpoint()  # the pass may end before this build
        last_heard = max(float(build.get(f) or 0) for f in ("updated_at", "checked_at"))
        if build.get("status") not in (BuildStatus.TRIGGERED, BuildStatus.RUNNING) \
                or not build.get("queue_item") or now - last_heard < quiet:
            continue
        # The run asked about is the one Jenkins' API named (run_confirm.JENKINS_RUN); until it has
        # named one, the one its queue item left as (read through the item, not by the number
        # a STARTED notification wrote), recorded while Jenkins keeps the item (5 minutes).
        own = build.get(run_confirm.JENKINS_RUN)
        state, number_now = rt.jenkins.build_state(
            build.get("job", ""), int(build["queue_item"]), int(own) if own else None,
            since=first_triggered(build))
        notified = build.get("jenkins_build")
        # Every number build_state answers with is Jenkins' API's own: the one handed
        # (JENKINS_RUN), or the run the queue item names, or the job's run that left the
        # queue as the item; "unknown" with a number is that run gone from the job.
        told = number_now is not None
        if state == BuildState.UNKNOWN and (renamed := run_confirm.job_renamed(
                rt, key, build, queue.carrying)):
            # No run under the job's name: renamed while the build waited, its run goes on
            # (or ended) under the new name, which its notifications name: followed. Asked
            # first, while Jenkins keeps the item: the old name may be a new job's, whose
            # runs are none of the build's (a STARTED's number is anyone's with the token)
            log.warning("the build's Jenkins job was renamed or moved; its new name is "
                        "recorded", extra={"build_key": key, "job": build.get("job"),
                                           "renamed": renamed})
            build = {**build, "job": renamed}
            rt.state.update_build(key, job=renamed)
            state, number_now = rt.jenkins.build_state(
                renamed, int(build["queue_item"]), int(own) if own else None,
                since=first_triggered(build))
            told = number_now is not None
        if not told and state == BuildState.UNKNOWN and notified:
            # the item forgotten, the run not among the job's recent ones: the run a STARTED
            # named is asked about, as it was before; its absence is no proof of its end
            state, number_now = rt.jenkins.build_state(
                build.get("job", ""), int(build["queue_item"]), int(notified))
            if state in (BuildState.FINISHED, BuildState.RUNNING) and \
                    not run_confirm.notified_run_is_builds(rt, key, build, int(notified)) \
                    and not forgotten_items.nothing_left(rt, build, queue):
                # Jenkins says that run is another build's (a forged STARTED, or the number
                # of a new job given a renamed job's name) while Jenkins still has something
                # of the build: its agent runs something, or an item waits on it (a
                # Pipeline's node block, its run going on on the controller under the job's
                # new name, the agent idle or not connected yet): nothing said of the
                # build's own. With nothing of the build left its end is taken, as before.
                state, number_now = BuildState.UNKNOWN, None
        elif told and state == BuildState.UNKNOWN \
                and run_confirm.job_exists(rt, build.get("job", "")):
            # Jenkins no longer has the build's own run: a build discarder deleted it, which
            # it does to finished runs only (run_confirm.own_run, workers.core.notifications); also
            # when the pass first asks after that, its queue item still naming the run
            # (a build shorter than CI_AUTOSCALER_LOST_EVENT_SECONDS, its COMPLETED lost)
            state = BuildState.FINISHED
        why = None
        if state == BuildState.UNKNOWN:
            # No run to read: its job may be gone, deleted (its runs aborted) or moved (its
            # run goes on): the build's agent tells (run_confirm.job_gone)
            gone = run_confirm.job_gone(rt, build, queue.carrying)
            if isinstance(gone, Confirmed):
                state, why = BuildState.FINISHED, gone.reason
            elif not told and forgotten_items.cancelled(rt, build, queue):
                # cancelled in Jenkins' queue while its agent was up, the left item forgotten
                state, why = BuildState.CANCELLED, forgotten_items.FOUND
        if state in (BuildState.FINISHED, BuildState.CANCELLED) and build.get("node_label") \
                and build.get("agent") and (taken := adoption.kept_for_another_run(
                    rt, key, build, build.get("job", ""), int(number_now or notified or 0))):
            # Jenkins gave the adopted agent another item as its run ended: recorded as
            # the build's (adoption.kept_for_another_run), its end releases the agent
            rt.state.update_build(key, checked_at=now)
            log.warning("an adopted build's run is over and its agent runs another; kept",
                        extra={"build_key": key, "agent": build["agent"], "run": taken})
            continue
        if state in (BuildState.FINISHED, BuildState.CANCELLED):
            lost_runs.record_end(rt, key, build, number_now)  # a run left to decide
            tasks.release(rt, key, build.get("agent", ""), "build_finished")
            log.warning("released a build whose end was not notified",
                        extra={"build_key": key, "jenkins": str(state),
                               **({} if not why else {"job_gone": why}
                                  if state == BuildState.FINISHED else {"cancelled": why})})
            finished += 1
        else:  # asked: the next question waits another period
            rt.state.update_build(key, jenkins_build=number_now, checked_at=now,
                                  **{run_confirm.JENKINS_RUN: number_now}
                                  if number_now and told else {})
            if state == BuildState.RUNNING and number_now is not None \
                    and build.get("status") == BuildStatus.TRIGGERED:
                # its STARTED was lost (the web answered 503, which the plugin ignores)
                rt.state.mark_running(key, jenkins_build=number_now)
                commit_statuses.touch(rt.state, key)
                log.warning("a build Jenkins runs was not notified as started; marked running",
                            extra={"build_key": key, "jenkins_build": number_now})
    return finished


def delete_agentless_nodes(rt: runtime.Runtime, pods: list[PodInfo]) -> int:
    """Our Jenkins agents with no pod, whose build is unknown or over. An agent of a build still
    in progress is left: its provision (or restart_stalled) creates the pod and reuses it.

    With an installation identity, the nodes with the plain description of earlier versions
    are another installation's unless our build state knows them (made by this one before its
    upgrade): those are deleted once their build is over, the others never.

    A pod kept for debugging (workers.engine.retention) counts as none: its build is over, and the
    release that kept it deleted its node unless Jenkins could not
    (tasks.delete_node_or_leave); left, its agent would stay online for a rebuild's queue
    item, same label, to land on."""
    retained = retention.kept(rt)
    # by its build's agent too: a claimed warm agent's pod is labelled with its own name, not
    # its build's key (workers.warm.agents.own_request), and counted as a pod, its node stayed
    kept_agents = {agent for (agent,) in rt.state.build_fields(sorted(retained), "agent")
                   if agent} if retained else set()
    have_pod = {pod.name for pod in ours(pods)
                if pod.labels.get(BUILD_KEY_LABEL) not in retained
                and pod.name not in kept_agents}
    agents = [(name, False) for name in rt.jenkins.list_agents()] + \
        [(name, True) for name in rt.jenkins.legacy_agents()]
    # read after the agents: a warm agent started since the pods were listed has its node, no
    # pod listed and no build; it is the pool's (workers.warm.agents.registered)
    warm = warm_agents.registered(rt) if any(n not in have_pod for n, _ in agents) else set()
    deleted = 0
    for name, legacy in agents:
        run_bound.checkpoint()  # the pass may end before this build
        if name in have_pod or name in warm:
            continue
        key = rt.state.build_for_agent(name)
        status = rt.state.get_build(key).get("status") if key else None
        if (status is None and not legacy) or status in FINISHED:
            if rt.jenkins.delete_node(name):
                log.warning("deleted a Jenkins agent without a pod", extra={"agent": name,
                                                                           "build_key": key})
                deleted += 1
    return deleted


def restart_stalled(rt: runtime.Runtime, builds: dict[str, dict[str, str]],
                    pods: list[PodInfo], now: float) -> int:
    """Provision again the builds whose provision stopped half-way: not waiting (for room, a
    cap or a quota: the waiting set, which every pass re-drives), no pod yet (or no longer, or
    only one being deleted), no task holding the build's lease, and not touched for a lease
    period, or for ten while the queue still holds jobs (the workers are behind: the job may
    still be in there), counted from when its job's RQ retry was due, if one was scheduled
    (RETRY_AT); or at once when the lease was its holder's that stopped renewing it (the
    worker died mid-provision), or as soon when its job was started by a worker that died
    before it took the lease (workers.adapters.rq_taken). A duplicate run is harmless (every
    step is idempotent and the lease keeps two tasks apart), so when in doubt, restart."""
    # A pod being deleted is not the build's: nothing else makes its next one (one stuck
    # Terminating on a node that cannot be reached, evicted by the node lifecycle controller,
    # is force-deleted by the provision: workers.engine.terminating).
    have_pod = {pod.labels.get(BUILD_KEY_LABEL) for pod in ours(pods) if not pod.deleting}
    quiet = rt.settings.provision_lease_seconds * (STALL_PERIODS_WHILE_QUEUED
                                                   if rt.state.queue.count else 1)
    # In the waiting set, every pass re-drives it: a Pipeline held by a full quota was
    # triggered beside its refused create, and its STARTED made it running with no pod
    # (tasks._wait_for_quota); restarted too, it got a second provision and a warning a period.
    waiting = set(rt.capacity.waiting())
    candidates = {}
    for key, build in builds.items():
        status = build.get("status")
        if key in waiting or not build.get("request"):
            continue
        # running: a Pipeline's STARTED comes before its agent connects; a pod drained before
        # that is made again (after it connected, the build is lost: workers.engine.lost_agents)
        # A build on a warm agent it claimed has no pod of its own to make: if that agent is
        # lost before the build starts, workers.warm.lost places the build again.
        own_pod = key in have_pod or bool(build.get("warm_agent"))
        if status in (BuildStatus.QUEUED, BuildStatus.POD_CREATED) or (
                status == BuildStatus.TRIGGERED and not own_pod
                and not build.get(blocked_builds.FIELD)) or (
                status == BuildStatus.RUNNING and not own_pod
                and not build.get("agent_online_at")):
            candidates[key] = build
    # A lease its holder stopped renewing: the provision died with its worker (SIGKILL, an
    # OOM kill), and its build is provisioned again now, not a lease period later (when the
    # lease lapses) and one more (quiet since that provision's last touch).
    dead = set(lease.free_if_stale(rt.state.redis, [tasks.lease_key(rt, k) for k in candidates],
                                   rt.settings.provision_lease_seconds))
    # A job a worker started, whose build has no lease: that worker died between the two (a
    # live provision takes the lease at once), and the job is in no queue; RQ gives it back no
    # sooner than its timeout and a maintenance pass later (workers.adapters.rq_taken). Its
    # build is provisioned again once the job started as long ago as a lease goes unrenewed
    # before it is freed (20 s for 60). One taken and not started is not told from a live
    # worker's about to start it: left to the periods below.
    period = rt.settings.provision_lease_seconds
    taken = rq_taken.provisions_taken(rt.state.queue) if candidates else {}
    restarted = 0
    for key, build in candidates.items():
        run_bound.checkpoint()  # the pass may end before this build
        # RETRY_AT: when its job's RQ retry is due (workers.engine.jobs), a lease period and more
        # after its last touch; the retry is in RQ's scheduled registry, not in the queue
        last_touched = max(float(build.get(f) or 0)
                           for f in ("updated_at", "received_at", "restarted_at", RETRY_AT))
        lease_key = tasks.lease_key(rt, key)
        # once per dead job: restarted since it started, its build's new job may wait in the
        # queue as any other (a restart every pass until RQ's cleanup took the dead job)
        redone = float(build.get("restarted_at") or 0)
        if key in taken and not (redone and redone >= taken[key]):
            # and the build untouched as long: a job that just let its lease go, about to
            # end (its retry noted on the build), is left to end
            quiet_enough = min(now - taken[key], now - last_touched) >= \
                lease.stale_seconds(period)
        else:
            quiet_enough = now - last_touched >= quiet
        if lease_key not in dead and (not quiet_enough or held(rt.state.redis, lease_key)):
            continue
        tasks.queue_provision(rt, BuildRequest.from_dict(json.loads(build["request"])))
        rt.state.update_build(key, restarted_at=now)
        log.warning("provisioning a stalled build again", extra={
            "build_key": key, "status": build.get("status"),
            "provision": "died with its worker" if lease_key in dead else "quiet"})
        restarted += 1
    return restarted


def repair(rt: runtime.Runtime, now: float | None = None,
           pods: list[PodInfo] | None = None, jenkins: JenkinsSteps | None = None,
           starts_judged: bool = True) -> dict[str, int]:
    """Every repair, in an order where each sees what the one before did; `pods`: our pods
    as the pass listed them (listed here when not given). The repairs that ask Jenkins go
    through `jenkins`, the pass's (workers.engine.jenkins_steps): after one finds Jenkins away, those
    after it are skipped and the others still run. Without it, the first failure is raised once the
    others have run. `starts_judged`: whether the pass's start-failure sweep ran."""
    now = time.time() if now is None else now
    own = jenkins is None
    jenkins = JenkinsSteps(rt.state, now) if jenkins is None else jenkins
    pods = rt.cluster.list_pods() if pods is None else pods
    result = {"pods_deleted": delete_stray_pods(rt, pods, now, starts_judged=starts_judged,
                                                jenkins=jenkins)}
    # Read once: what the repairs below change does not make a build stalled (a released
    # build had its pod; an adopted one was just queued), so the next pass sees the rest.
    builds = open_builds(rt, now)
    # before finish_lost_builds: an adopted agent's run, once known, is what ends its build
    result["adopted_agents_taken"] = jenkins.run(adoption.watch_adopted, rt, builds, skipped=0)
    # before finish_lost_builds: after a restart, a build's queue item id may be another's
    result["lost_builds_retriggered"] = jenkins.run(lost_triggers.retrigger_lost, rt, builds,
                                                    now, skipped=0)
    result["lost_builds_released"] = jenkins.run(finish_lost_builds, rt, builds, now,
                                                 skipped=0)
    mine = ours(pods)
    result["lost_agents_failed"] = jenkins.run(lost_agents.fail_lost, rt, builds, mine, now,
                                               skipped=0)
    result["jenkins_agents_deleted"] = jenkins.run(delete_agentless_nodes, rt, pods, skipped=0)
    queue = jenkins.run(rt.jenkins.queue_items, skipped=None)  # one read for those below
    result.update(label_probes_made=0, label_probes_deleted=0)
    if queue is not None:  # the probe made, read again: the labels Jenkins names now
        queue, probed = jenkins.run(label_probe.tend, rt, queue, now, skipped=(queue, {}))
        result.update(probed)
    if queue is None:  # unread: every build would look not blocked, every item not there
        jenkins.skip(None)  # park_and_resume
        result["queue_items_adopted"] = jenkins.skip(0)
        result["queue_items_unserved"] = jenkins.skip(0)
        result["jenkins_leftovers_stopped"] = jenkins.skip(0)
    else:
        result.update(jenkins.run(blocked_builds.park_and_resume, rt, builds, mine, queue,
                                  now, skipped={}))
        result["queue_items_adopted"] = jenkins.run(adoption.adopt_queue_items, rt, builds,
                                                    now, queue, skipped=0)
        # what the adoption cannot serve (a label expression naming a template's label): told
        result["queue_items_unserved"] = jenkins.run(unserved.tell, rt, queue, now, skipped=0)
        # After the adoption, which read the same queue: what it stops (a Pipeline run's node
        # block, which leaves with its run) is still in that read, and is left alone there
        # only while its build is noted as not stopped yet.
        result["jenkins_leftovers_stopped"] = jenkins.run(jenkins_leftovers.stop_left, rt, mine,
                                                          queue, now, skipped=0)
    # after the adoption: the next block of a run gets its agent in the pass its last one goes
    result["adopted_agents_done"] = jenkins.run(adopted_done.release_done, rt, builds, now,
                                                skipped=0)
    # Needs no Jenkins: it queues provisions, which wait for Jenkins in their job's retries.
    result["stalled_builds_restarted"] = restart_stalled(rt, builds, pods, now)
    if own:
        jenkins.raise_error()
    return result
