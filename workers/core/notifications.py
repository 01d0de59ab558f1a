"""Whether a Jenkins notification that ends a build may release the build's agent. Pure.

The Notification plugin signs nothing: its token is shared by every job and travels in job
configs and URLs, and agent names come from public push data, so a forged COMPLETED could end
any build (issue 17). Two checks, each a decision with its reason: the web stores a COMPLETED or
FINALIZED only if it names the build's own job (`job_matches`), or that job moved (`moved_job`:
confirmed by `confirm_moved`); the release job then asks
Jenkins' API about the run (one GET) and releases the agent only if Jenkins says that run has
finished and is the build's (`confirm_completion`). Anything else is logged, counted
(ci_autoscaler_notifications_ignored_total) and ignored.
"""

from dataclasses import dataclass

from workers.core.ports import AgentActivity, RunInfo
from workers.core.routing import BUILD_KEY_PARAMETER

# What a build's record says of the end of a run Jenkins discarded before its result was
# read (confirm_completion confirms the end, not what the notification claims): the result
# is Jenkins' "unknown", and UNCONFIRMED_FIELD says why; the notification's `status`, which
# anyone holding the shared token can write (issue 17), is never recorded.
UNCONFIRMED_RESULT = "UNKNOWN"
UNCONFIRMED_FIELD = "result_unconfirmed"
JOB_MISMATCH = "job_mismatch"
NOT_CONFIRMED = "not_confirmed"
IGNORE_REASONS = (JOB_MISMATCH, NOT_CONFIRMED)


@dataclass(frozen=True)
class Confirmed:
    reason: str
    # confirmed by the run's builtOn alone (confirm_completion): what an adopted agent, which
    # carries a shared label until it is taken offline, may have run before taking another
    by_agent: bool = False


@dataclass(frozen=True)
class Refused:
    kind: str  # one of IGNORE_REASONS, the metric's label
    reason: str


def job_matches(build_job: str | None, notified_job: str) -> Refused | None:
    """None if the notification names the build's job (its full name, "folder/name"), in
    any case: Jenkins finds items in any case (Jenkins.items, cloudbees-folder's
    AbstractFolder.items: CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), so no two
    jobs' names differ in case only, and a person may rename "build" to "Build"
    (AbstractItem.renameTo: "to allow people to rename "Foo" to "foo""), after which the
    Notification plugin names the build's job as it is now (Job.getFullName)."""
    if build_job and notified_job.lower() == build_job.lower():
        return None
    return Refused(JOB_MISMATCH, f"the notification names job {notified_job[:200]!r}, the "
                                 f"build's job is {build_job!r}")


def other_run(build_run: str | None, number: int) -> Refused | None:
    """None unless the build's run is known (`build_run`: the number its STARTED or Jenkins'
    API recorded) and the notification names another: a Replay or Rebuild copies the run's
    parameters, CI_AUTOSCALER_AGENT and the build key included (workflow-cps
    ReplayAction.run2), and the copy's end (a person aborts it, its node block waiting on the
    busy agent) must not release the agent of the build that holds it. The web checks it as
    the notification comes; the release job again, as the build's STARTED may have waited in
    the intake behind the copy's end."""
    if not build_run or build_run == str(number):
        return None
    return Refused(NOT_CONFIRMED, f"run #{number} is not the run of that build (#{build_run})")


def moved_job(build_job: str | None, notified_job: str) -> bool:
    """Whether `notified_job` may be the build's job moved while its build ran: into a
    folder, out of one, or to another (jenkins core Items.move, which does not check for
    running builds, keeps the item's name and changes its parent: the full name differs
    before its last "/" only). The web passes such a notification on; only Jenkins' API can
    tell the release job that the named run is the build's (confirm_moved).

    Only a name Jenkins can give an item: none is empty, "." or ".." (Jenkins.checkGoodName).
    Such a segment is another spelling of a path, the notification's to choose (its `url`
    or `name`): the run page of "../build" or "/build" is job "build"'s (requests removes
    dot segments, the adapter skips empty ones), so a forged COMPLETED naming it passed for
    the build's job moved, and had its name recorded as the build's job."""
    if not build_job or notified_job.lower() == build_job.lower():
        return False
    parts = notified_job.split("/")
    # in any case, as Jenkins finds items (job_matches): a route's "Build" is Jenkins' "build"
    return all(part.strip() not in ("", ".", "..") for part in parts) \
        and parts[-1].lower() == build_job.rsplit("/", 1)[-1].lower()


def confirm_moved(*, build_key: str, build_job: str, job: str, number: int,
                  run: RunInfo | None, agent: str, queue_item: int | None
                  ) -> Confirmed | Refused:
    """What Jenkins' API says of run `number` of `job` (`run`), a job the build's own
    (`build_job`) may have become (moved_job): the build's, moved, if the run was built on
    the build's agent (its builtOn is `agent`: our agent names are unique per build, and
    only what asks for its label runs on it, EXCLUSIVE), or, for a run that names no node (a
    Pipeline's), if it left the queue as the build's queue item (`queue_item`, read from
    Jenkins' answer to our trigger, never from a notification; Items.move keeps a run's
    queueId); and confirm_completion says it finished and is the build's. Anything else is
    another job's run: a forged or stale COMPLETED (issue 17) releases nothing."""
    where = f"{job}#{number}"
    if not moved_job(build_job, job):
        return job_matches(build_job, job) or Refused(JOB_MISMATCH, "not a moved job")
    if run is None:
        return Refused(JOB_MISMATCH, f"the notification names job {job[:200]!r}, not the "
                                     f"build's {build_job!r}, and Jenkins does not know run "
                                     f"{where}")
    if run.built_on is not None and run.built_on != agent:
        return Refused(JOB_MISMATCH, f"run {where} was built on {run.built_on[:200]!r}, not on "
                                     f"the build's agent {agent!r}")
    if run.built_on is None and (queue_item is None or run.queue_id != queue_item):
        return Refused(JOB_MISMATCH, f"run {where} names no node, and left the queue as item "
                                     f"{run.queue_id}, not the build's ({queue_item})")
    decision = confirm_completion(build_key=build_key, job=job, number=number, run=run)
    if isinstance(decision, Refused):
        return decision
    how = "built on its agent" if run.built_on is not None else "its queue item's"
    return Confirmed(f"job {build_job!r} moved to {job!r}: Jenkins says run {where}, the "
                     f"build's ({how}), finished")


def confirm_completion(*, build_key: str, job: str, number: int, run: RunInfo | None,
                       adopted_by: str | None = None, own_run: int | None = None,
                       agent: str | None = None) -> Confirmed | Refused:
    """What Jenkins' API says of run `number` of `job` (`run`), against the build: the run has
    finished, and it is the build's: its CI_AUTOSCALER_BUILD_KEY parameter is the build's key,
    or an adopted agent took it for the build (`adopted_by`: the build key the `jenkins-runs`
    record gives the run; workers.engine.adoption), or it was built on the build's `agent`
    (a freestyle run's builtOn, Jenkins' own word; our agent names are unique per build, and
    an adopted agent runs the one run it took). A build started by hand or by a timer carries
    no key, and one that ends before a reconcile pass saw its agent take it has no
    `jenkins-runs` record yet: without its builtOn, its COMPLETED was refused and its agent
    kept until the lost-event check (CI_AUTOSCALER_LOST_EVENT_SECONDS). An agent that took
    another build's item (Jenkins hands the oldest item on a label to whichever agent is free
    first) is not this build's: that run's builtOn names the other agent.

    A run Jenkins no longer has (`run` None) is confirmed when Jenkins' API said before that
    it is the build's own (`own_run`: the run the build's queue item left the queue as, read
    from Jenkins, never from a notification): a build discarder deleted it, and one deletes
    finished runs only (jenkins core hudson.tasks.LogRotator.shouldKeepRun keeps a run that
    isBuilding). It runs when the run is finalized, FINALIZED's moment, right after COMPLETED
    was sent (jenkins.model.GlobalBuildDiscarderListener.onFinalized), and counts the runs
    still building among those it keeps: with "keep 5 builds" and 5 newer runs of the job in
    progress, a run is deleted as it ends, before the release job reads it."""
    where = f"{job}#{number}"
    if run is None and own_run is not None and own_run == number:
        return Confirmed(f"Jenkins said run {where} was the build's, and has discarded it "
                         "since (finished)")
    if run is None:
        return Refused(NOT_CONFIRMED, f"Jenkins does not know run {where}")
    if not run.finished:
        return Refused(NOT_CONFIRMED, f"Jenkins says run {where} has not finished")
    built_here = bool(agent) and run.built_on == agent
    if run.parameters.get(BUILD_KEY_PARAMETER) != build_key and adopted_by != build_key \
            and not built_here:
        return Refused(NOT_CONFIRMED, f"run {where} is not this build's (its "
                                      f"{BUILD_KEY_PARAMETER} is another)")
    if run.parameters.get(BUILD_KEY_PARAMETER) != build_key and adopted_by != build_key:
        return Confirmed(f"Jenkins says run {where} finished on the build's agent",
                         by_agent=True)
    return Confirmed(f"Jenkins says run {where} finished")


def job_gone_over(*, job: str, agent: str, activity: AgentActivity | None) -> Confirmed | Refused:
    """Whether a build whose job Jenkins no longer has (job/NAME/api/json answered 404) is
    over, from its own agent's Jenkins computer (`activity`: computer/AGENT/api/json, None if
    Jenkins has no such computer). The caller has read that the job is gone.

    A job is gone from its name in two ways, told apart by the agent. Deleted (by a person,
    or by branch-api's orphaned item strategy once branch indexing finds its branch deleted):
    jenkins core AbstractItem.delete first aborts every run of the item on every computer's
    executors and waits up to 15 s for them to stop, failing the delete if one does not
    (jenkins.model.ItemDeletion.cancelBuildsInProgress), so once the job is gone its runs
    have ended (aborted runs complete as any run does: COMPLETED is sent) and no executor
    runs one. Moved into a folder (jenkins core Items.move, which does not check for running
    builds): the run goes on under the new name, on our agent's executor. So: gone, and our
    connected agent's executor idle (or its computer gone), the build is over; a run on it
    keeps the agent. An agent not connected says nothing (a moved job's build may still
    wait for it), nor does the job's absence alone: the notification never suffices (issue
    17), Jenkins' API must show both.

    Not told apart here: a moved Pipeline's run between two node blocks or in an `input`
    before its first, its agent idle for that moment (the caller asks Jenkins' one-off
    executors, which run it: workers.engine.run_confirm.job_gone); so too a run of a job our
    API user may not READ (it answers 404 as a gone one does), whose run on the agent shows
    only as a busy executor (`hidden_runs`), between its node blocks."""
    if activity is None:
        return Confirmed(f"Jenkins has neither job {job!r} nor agent {agent!r}: the job was "
                         "deleted, its runs aborted")
    if activity.runs:
        return Refused(NOT_CONFIRMED, f"job {job!r} is gone from that name and agent "
                                      f"{agent!r} still runs {activity.runs[0].job}#"
                                      f"{activity.runs[0].number} (the job moved, its run "
                                      "goes on)")
    if activity.hidden_runs:
        # A run of a job the API user may not READ: its job answers 404 as a gone one does
        # (Jenkins.getItem), and its executor names no run (Executor
        # .getCurrentExecutableForApi): only the executor's `idle` says it is busy
        return Refused(NOT_CONFIRMED, f"job {job!r} answers as gone and agent {agent!r} "
                                      "runs a run we may not read (Item/Read refused: the "
                                      "job may be there, hidden from us)")
    if activity.offline and not activity.temporarily_offline:
        return Refused(NOT_CONFIRMED, f"job {job!r} is gone from that name and agent "
                                      f"{agent!r} is not connected: whether a run waits for "
                                      "it is unknown")
    return Confirmed(f"Jenkins no longer has job {job!r} and agent {agent!r} runs nothing: "
                     "the job was deleted, its runs aborted")
