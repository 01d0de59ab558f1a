"""Whether a notification that ends a build may release its agent: Jenkins' API confirms it
(workers.core.notifications decides; this module asks Jenkins). The release job asks it of
every COMPLETED or FINALIZED (workers.tasks.release_agent); the reconcile's lost-event path
(workers.engine.repairs.finish_lost_builds) asks whether the job of a build it heard nothing of is
still there, or gone. The logger stays ci_autoscaler.tasks, where these lines were logged.
"""

import json
import logging
from collections.abc import Callable
from typing import Any

from workers import runtime
from workers.adapters.redis_state import run_ref
from workers.core import notifications
from workers.core.jenkins_queue import first_triggered, same_job
from workers.core.notifications import Confirmed, confirm_completion, confirm_moved, \
    job_gone_over, moved_job
from workers.core.ports import BuildState, RunInfo, RunRef
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.tasks")
# The build's field holding its run's number as Jenkins' API gave it (own_run): unlike
# `jenkins_build`, which a STARTED notification writes, no notification can set it.
JENKINS_RUN = "jenkins_run"
# The runs on Jenkins' one-off executors carrying an agent (Jenkins.runs_carrying's, as a
# reconcile pass read them once: workers.engine.forgotten_items.PassQueue.carrying)
Carrying = Callable[[str], list[RunRef]]


def confirmed(rt: runtime.Runtime, build_key: str,
              notification: dict[str, Any]) -> dict[str, Any] | None:
    """The build's end to record, if Jenkins' API says the notified run finished and is the
    build's (one GET; workers.core.notifications): what the notification says of it, with the
    run's result as Jenkins' API gives it (for a run Jenkins has discarded since, the result
    is unknown, notifications.UNCONFIRMED_RESULT: never what the notification claims); or, the
    run missing, that the build's job was deleted (job_gone): its runs were aborted, and the
    notification, naming a run Jenkins no longer has, vouches for nothing, so the result is
    Jenkins' ABORTED. If neither (None), the notification is logged, counted and forgotten: its
    delivery mark goes, so the build's true COMPLETED is still taken (and the reconcile loop
    asks Jenkins about a build it hears nothing of: CI_AUTOSCALER_LOST_EVENT_SECONDS).

    A notification naming the build's job moved while it ran (workers.core.notifications
    .moved_job) is confirmed by the named job's run (confirm_moved: built on the build's
    agent), and the job's new name recorded."""
    build = rt.state.get_build(build_key)
    job = build.get("job") or ""
    number = int(notification.get("jenkins_build") or 0)
    if (another := notifications.other_run(build.get("jenkins_build"), number)) is not None:
        return _recorded(rt, build_key, another, None, {})
    ended = {k: notification[k] for k in ("result", "jenkins_build", "finished_at", "build_url")
             if k in notification}
    notified = str(notification.get("job") or "")
    if moved_job(job, notified):  # the web passes on only these of another job's name
        run = rt.jenkins.run_info(notified, number)
        queue_item = build.get("queue_item")
        decision = confirm_moved(build_key=build_key, build_job=job, job=notified,
                                 number=number, run=run, agent=build.get("agent") or "",
                                 queue_item=int(queue_item) if queue_item else None)
        return _recorded(rt, build_key, decision, run, {**ended, "job": notified})
    adopted = _adopted_by(rt, job, number)
    run = rt.jenkins.run_info(job, number)
    # Whether the job is still there is asked only of a run Jenkins named the build's: a
    # COMPLETED naming another run Jenkins does not have (forged, or stale) is refused
    # without reading the job's page.
    own = own_run(rt, build) if run is None else None
    decision = confirm_completion(
        build_key=build_key, job=job, number=number, run=run,
        adopted_by=adopted,
        own_run=own if own == number and job_exists(rt, job) else None,
        agent=build.get("agent") or None)
    if not isinstance(decision, Confirmed) and run is not None and run.finished \
            and build.get("node_label") and build.get("agent"):
        decision = _own_item_ran_elsewhere(rt, build, job, number) or decision
    if isinstance(decision, Confirmed) and build.get("node_label") and build.get("agent") \
            and (kept := agent_kept(rt, build_key, build, job, number)) is not None:
        # Whatever confirmed the end: a run confirmed as the build's own, discarded as it
        # ended ("keep N builds", N newer runs building: the next item, of the same job, is
        # one), frees the executor for the label's next item all the same
        return _recorded(rt, build_key, kept, run, ended)
    if run is None and not isinstance(decision, Confirmed):
        # Jenkins has no such run: maybe the build's job is gone, deleted (its runs aborted:
        # this COMPLETED may be the abort's) or moved (its run goes on); the agent tells
        gone = job_gone(rt, build)
        if isinstance(gone, Confirmed):
            # Nothing in Jenkins backs what this COMPLETED claims (a forged SUCCESS would
            # mark an unbuilt commit passed on GitLab): Jenkins aborted the job's runs
            # (ItemDeletion.cancelBuildsInProgress: Executor.interrupt(Result.ABORTED));
            # finished_at is the web's own receipt time (service/webhooks.py)
            decision, ended = gone, {"result": "ABORTED", **{
                k: v for k, v in ended.items() if k == "finished_at"}}
            return _recorded(rt, build_key, decision, run, ended)
    return _recorded(rt, build_key, decision, run, ended, discarded=run is None)


def _own_item_ran_elsewhere(rt: runtime.Runtime, build: dict[str, str], job: str,
                            number: int) -> Confirmed | None:
    """Confirmed if the finished run `number` of `job` is the one the adopted build's own
    queue item left the queue as (Jenkins' word: the item's executable, own_run) and nothing
    waits in Jenkins' queue. Jenkins hands the oldest item on a label to whichever agent
    with that label is free first (Queue maintenance), so in a burst of "Build Now"s the
    item is often run by another adopted agent: its builtOn names that one, and its
    COMPLETED was refused, the build's own agent kept, idle or still starting, until a pass
    or the lost-event check (CI_AUTOSCALER_LOST_EVENT_SECONDS) found it. With an item still
    waiting, that agent may be the one to serve it, and is left to the pass as before; one
    that took another run since is kept for it (agent_kept, which takes it offline first)."""
    if own_run(rt, build) != number or rt.jenkins.queue_items():
        return None
    return Confirmed(f"Jenkins says run {job}#{number}, which the build's queue item left the "
                     "queue as, finished (on another agent), and no item waits in its queue")


def agent_kept(rt: runtime.Runtime, build_key: str, build: dict[str, str], job: str,
               number: int) -> notifications.Refused | None:
    """Refused if the adopted build's agent, whose run `number` of `job` ended (confirmed
    by its builtOn, its `jenkins-runs` record, or as the build's own run discarded since),
    runs another since (workers.engine.adoption.kept_for_another_run: that run is
    recorded as the build's, and its end releases the agent); None if it runs nothing now."""
    from workers.engine.adoption import kept_for_another_run  # it imports the tasks, which
    # import this
    taken = kept_for_another_run(rt, build_key, build, job, number)
    if taken is None:
        return None
    return notifications.Refused(notifications.NOT_CONFIRMED,
                                 f"its agent {build.get('agent')} runs {taken} since run "
                                 f"#{number} ended (recorded as the build's; its end releases "
                                 "the agent)")


def _recorded(rt: runtime.Runtime, build_key: str, decision: Confirmed | notifications.Refused,
              run: RunInfo | None, ended: dict[str, Any], *,
              discarded: bool = False) -> dict[str, Any] | None:
    """`ended` (with the run's result; an unconfirmed one if the run was `discarded`) if the
    decision confirms the end; else None, the notification logged, counted and its delivery
    mark deleted."""
    if isinstance(decision, Confirmed):
        if discarded:
            # A run Jenkins discarded (a build discarder, as it ended) that its API named the
            # build's: its end is confirmed, its result is not. The notification's `status`
            # is anyone's with the shared token (issue 17): a forged SUCCESS of a failed run
            # marked its commit passed on GitLab, a forged FAILURE kept its pod (retention).
            ended["result"] = notifications.UNCONFIRMED_RESULT
            ended[notifications.UNCONFIRMED_FIELD] = "Jenkins discarded the run before its " \
                                                     "result was read"
        # The run's page as Jenkins' API names it, never the notification's full_url: the
        # commit status links it (workers.core.commit_status), and a forged full_url put a
        # link of its sender's choosing on the commit. A discarded run has no page (None:
        # the field goes, a STARTED's with it).
        ended["build_url"] = run.url if run is not None else None
        if run is not None and run.result is not None:
            # Jenkins' run is the truth, not the notification's `build.status`: the
            # Notification plugin leaves it out when Run.getResult is null at the phase
            # (notification-plugin Phase.buildJobState: setStatus only `if (result !=
            # null)`), recorded as "UNKNOWN", and the body is anyone's who has the shared
            # token (issue 17): a forged SUCCESS of a failed run marked its commit passed
            ended["result"] = run.result
        log.info("Jenkins confirms the build's end", extra={"build_key": build_key,
                                                              "reason": decision.reason})
        return ended
    EngineMetrics(rt.state.redis, prefix=rt.state.prefix).notification_ignored(decision.kind)
    rt.state.redis.delete(rt.state.prefix + f"delivery:jenkins:release:{build_key}")
    log.warning("notification ignored: Jenkins does not confirm it; agent kept",
                extra={"build_key": build_key, "reason": decision.reason})
    return None


def own_run(rt: runtime.Runtime, build: dict[str, str]) -> int | None:
    """The number of the build's run as Jenkins' API gave it (never a notification's): the
    one recorded by the reconcile pass (JENKINS_RUN, workers.engine.repairs.finish_lost_builds), or
    the run its queue item left the queue as, while Jenkins still keeps that item (about 5
    minutes: REALITY.md "The queue"). None if neither says."""
    if build.get(JENKINS_RUN):
        return int(build[JENKINS_RUN])
    if not build.get("queue_item"):
        return None
    # UNKNOWN with a number: the item names its run, which Jenkins no longer has
    _, number = rt.jenkins.build_state(build.get("job") or "", int(build["queue_item"]),
                                       since=first_triggered(build))
    return number


def job_exists(rt: runtime.Runtime, job: str) -> bool:
    """Whether Jenkins has the job by that name still. A run of a job moved into a folder is
    gone from the old name while it runs (jenkins core Items.move "does not verify that the
    item's directory is not currently being used ... by a running build"; a rename is refused
    while building, Job.checkRename): only a run missing from a job still there was
    discarded."""
    return bool(job) and rt.jenkins.job_definition(job) is not None


def notified_run_is_builds(rt: runtime.Runtime, build_key: str, build: dict[str, str],
                           number: int) -> bool:
    """Whether Jenkins says run `number` of the build's job, which only a STARTED named (its
    number is anyone's with the shared token: issue 17), is the build's: its
    CI_AUTOSCALER_BUILD_KEY is the build's key, its builtOn the build's agent, or an adopted
    agent took it for the build (its `jenkins-runs` record). A run Jenkins no longer has is
    not denied (a build discarder deletes finished runs only): True."""
    job = build.get("job") or ""
    run = rt.jenkins.run_info(job, number)
    if run is None:
        return True
    agent = build.get("agent") or ""
    return run.parameters.get(BUILD_KEY_PARAMETER) == build_key \
        or _adopted_by(rt, job, number) == build_key or bool(agent) and run.built_on == agent


def _adopted_by(rt: runtime.Runtime, job: str, number: int) -> str | None:
    """The build key an adopted agent took run `number` of `job` for (its `jenkins-runs`
    record: workers.engine.adoption), if any."""
    adopted = rt.state.redis.hget(rt.state.prefix + "jenkins-runs", run_ref(job, number))
    return adopted.decode() if isinstance(adopted, bytes) else adopted


def agent_busy(rt: runtime.Runtime, agent: str) -> bool:
    """Whether Jenkins says the agent runs something now: a run it names, or one of a job the
    API user may not read (AgentActivity.hidden_runs)."""
    activity = rt.jenkins.agent_activity(agent) if agent else None
    return activity is not None and bool(activity.runs or activity.hidden_runs)


def job_renamed(rt: runtime.Runtime, build_key: str, build: dict[str, str],
                carrying: Carrying | None = None) -> str | None:
    """The build's job's name now, if a person renamed or moved it since its trigger: the
    build's queue item (Jenkins keeps it about 5 minutes once it left the queue) names its
    job by its task, the job itself, renamed in place (AbstractItem.renameTo; Jenkins refuses
    a rename only while the job builds, Job.checkRename, not while its items wait) or moved
    (Items.move). The item must carry the build's CI_AUTOSCALER_BUILD_KEY: after a
    controller killed without its shutdown an id is given again (workers.engine
    .lost_triggers). The item forgotten, the build's run in progress names it, if Jenkins
    runs it on a one-off executor (_running_as). Jenkins' word, never a notification's. None
    if not renamed, or neither says."""
    job, item = build.get("job") or "", build.get("queue_item") or ""
    if not job or not item.isdigit():
        return None
    found = rt.jenkins.queue_item(int(item))
    if found is None:
        return _running_as(rt, build, carrying)
    # Jenkins finds items by name in any case (Jenkins.items is a case-insensitive map): the
    # same name in another case is the same job, found under the name the build has
    if not found.job or same_job(found.job, job) \
            or found.parameters.get(BUILD_KEY_PARAMETER) != build_key:
        return None
    return found.job


def _running_as(rt: runtime.Runtime, build: dict[str, str],
                carrying: Carrying | None = None) -> str | None:
    """The job, under another name than the build's, of a run in progress that carries the
    build's agent (the name its trigger gave it: its first agent's, workers.engine
    .agent_names), our agent names being unique per build: a Pipeline's run goes on on a
    one-off executor for as long as it runs (Jenkins.runs_carrying), in an `input` before
    its first node block or between two too, its agent idle then, so that a job moved into
    a folder while it waited there (Items.move checks no running build) looked deleted
    (job_gone: the old name 404, the agent running nothing) once Jenkins had forgotten the
    build's item. None for an adopted build (its run carries nothing of ours). `carrying`:
    the runs carrying an agent as a reconcile pass read them (forgotten_items.PassQueue);
    asked of Jenkins without it."""
    if build.get("node_label") or not build.get("request"):
        return None
    parameters = json.loads(build["request"]).get("parameters") or {}
    carried = parameters.get(AGENT_PARAMETER) or build.get("agent")
    if not carried:
        return None
    job = build.get("job") or ""
    runs = carrying(carried) if carrying is not None \
        else rt.jenkins.runs_carrying(AGENT_PARAMETER, carried)
    # Its name in another case is another name here: asked only once Jenkins found nothing
    # of the build under its own (a folder loaded from disk finds its items in their exact
    # case: cloudbees-folder AbstractFolder.onLoad, loadChildren's CopyOnWriteMap.Tree<>()),
    # the run's name is the one Jenkins finds
    return next((run.job for run in runs if run.job != job), None)


def job_gone(rt: runtime.Runtime, build: dict[str, str],
             carrying: Carrying | None = None) -> Confirmed | notifications.Refused:
    """Whether the build is over because its job is gone (workers.core.notifications
    .job_gone_over): its agent's computer is read first, and the job's page only if the agent
    runs nothing, so a COMPLETED naming a missing run of a busy or unconnected agent's build
    costs one GET more, not two; the build's queue item (one or two GETs) only once the job
    is gone too; and then the one-off executors (_running_as: one GET), where a moved job's
    Pipeline run goes on between its node blocks, its agent idle."""
    job, agent = build.get("job") or "", build.get("agent") or ""
    if not job or not agent:
        return notifications.Refused(notifications.NOT_CONFIRMED,
                                     "the build has no job or agent to ask Jenkins about")
    decision = job_gone_over(job=job, agent=agent, activity=rt.jenkins.agent_activity(agent))
    if isinstance(decision, Confirmed) and job_exists(rt, job):
        return notifications.Refused(notifications.NOT_CONFIRMED,
                                     f"Jenkins still has job {job!r}")
    if isinstance(decision, Confirmed) and build.get("queue_item") and rt.jenkins.build_state(
            job, int(build["queue_item"]), since=first_triggered(build))[0] == BuildState.QUEUED:
        # A moved job's queued items move with it (Items.move), a deleted job's are
        # cancelled (AbstractItem.delete: Queue.cancel): one still waiting, its run not yet
        # on the idle agent (a quiet period), is a moved job's build about to run there
        return notifications.Refused(notifications.NOT_CONFIRMED,
                                     f"job {job!r} is gone from that name and the build's "
                                     "queue item still waits in Jenkins' queue (the job "
                                     "moved)")
    if isinstance(decision, Confirmed) and \
            (moved := _running_as(rt, build, carrying)) is not None:
        # A deleted job's runs were aborted (ItemDeletion.cancelBuildsInProgress); a moved
        # one's Pipeline run goes on, between node blocks (an `input`), its agent idle
        return notifications.Refused(notifications.NOT_CONFIRMED,
                                     f"job {job!r} is gone from that name and Jenkins runs "
                                     f"the build's run as job {moved!r} (the job moved)")
    return decision
