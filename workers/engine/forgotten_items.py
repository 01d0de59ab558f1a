"""Whether a triggered build's queue item was cancelled and forgotten by Jenkins: a repair's
question (workers.engine.repairs.finish_lost_builds), asked only of a triggered build whose item
Jenkins' API no longer knows.

Someone cancels the item (the queue's "x": Queue.doCancelItem; or the item is aborted from
the queue) before any run took it: the Notification plugin sends nothing (it reports runs,
and none was made). Jenkins keeps the cancelled LeftItem about 5 minutes, and none across a
restart (REALITY.md "The queue"): after that its page answers 404 as for an id Jenkins never
had, and no run of the job has that queue id. Asked later than that (the reconcile leader
down, a restart, CI_AUTOSCALER_LOST_EVENT_SECONDS over 5 minutes), the build was "unknown"
for ever, its agent online and idle until its pod's deadline.

A build is taken for cancelled when Jenkins has nothing of it: no item in the queue and none
of the job's runs since its trigger carries its agent parameter (what its trigger put there,
the item's id aside: a restart may give ids again), the runs read reach back to its trigger
(not when more were made since than the lookup reads, nor for a record without its trigger
time), and its agent runs nothing (no run Jenkins names on its executor, nor one it hides
from us). A run of the build that started unseen (its STARTED lost) is among those runs, or
on that executor.

An adopted build (workers.engine.adoption) whose agent took nothing yet: its item carries no
parameter of ours, and Jenkins hands its agent the oldest item of its label, whichever that
is; so its agent is done when it runs nothing and no item in the queue waits on its label
(nor on the agent's name, which Jenkins' reason gives while it is the label's only node), and
it still runs nothing once taken offline (an item may reach it between the reads). An item
that comes later is adopted anew.

The queue is read once for all of a pass's candidates (PassQueue), not once each: a big
Jenkins has thousands of queued items. A read older than a candidate's own reads errs only
towards keeping the agent: an item of the build that left the queue since is on its agent's
executor or among the job's runs, both read after it; an item of the label that came since
goes to the idle adopted agent at once (seen on its executor, read again once it is offline)
or is adopted anew.
"""

import json
import logging

from workers import runtime
from workers.adapters.redis_state import BuildStatus
from workers.engine import run_confirm
from workers.engine.adoption import OFFLINE_REASON
from workers.core.errors import NotReadBack, PermanentError
from workers.core.ports import QueueItem, RunRef
from workers.core.jenkins_queue import first_triggered, waiting_label
from workers.core.routing import AGENT_PARAMETER

log = logging.getLogger("ci_autoscaler.adoption")
FOUND = "its queue item is gone from Jenkins (cancelled, and forgotten since), no run of " \
        "the job carries its agent, and its agent runs nothing"


class PassQueue:
    """Jenkins' queue, read when a pass's first candidate needs it and kept for the rest; so
    too the runs on Jenkins' one-off executors (`carrying`)."""

    def __init__(self, rt: runtime.Runtime) -> None:
        self._rt = rt
        self._items: list[QueueItem] | None = None
        self._one_off: dict[str, list[RunRef]] | None = None

    def items(self) -> list[QueueItem]:
        if self._items is None:
            self._items = self._rt.jenkins.queue_items()
        return self._items

    def carrying(self, agent: str) -> list[RunRef]:
        """The runs in progress on one-off executors carrying `agent` as their
        CI_AUTOSCALER_AGENT (Jenkins.runs_carrying), all read once for the pass: the read lists
        every Pipeline run going on, with its actions. Older than a candidate's other reads,
        it errs only towards keeping an agent: a run that ended since is still in it; one
        that began since left its item less than the 5 minutes Jenkins keeps it (its build's
        item is asked first, and only a forgotten one's runs are looked for here)."""
        if self._one_off is None:
            self._one_off = self._rt.jenkins.one_off_runs(AGENT_PARAMETER)
        return list(self._one_off.get(agent, ()))


def cancelled(rt: runtime.Runtime, build: dict[str, str], queue: PassQueue) -> bool:
    """Whether the triggered build's item, which Jenkins no longer knows, was cancelled (see
    the module docstring). The GETs, besides the pass's one read of the queue (`queue`):
    the agent's computer, the job's runs since the build's trigger (a page of 100, more for
    a busy job: at most ten); for an adopted build, the agent's computer, and the agent
    taken offline and read again."""
    if build.get("status") != BuildStatus.TRIGGERED or build.get("jenkins_build") \
            or not nothing_left(rt, build, queue):
        return False
    return not build.get("node_label") or not _took_one_meanwhile(rt, build, build["agent"])


def nothing_left(rt: runtime.Runtime, build: dict[str, str], queue: PassQueue) -> bool:
    """Whether Jenkins has nothing of the build whose queue item it no longer knows: its
    agent runs nothing (no run Jenkins names on its executor, nor one it hides from us), no
    item in the queue waits on its agent (a Pipeline's ``node`` block waits as an item of its
    own, with no parameter of ours, on the label our trigger gave its run, its agent's name:
    ExecutorStepExecution.PlaceholderTask; the run itself goes on on the controller, its
    agent idle until the block runs), nor on an adopted build's label; and, for a build of
    ours, no item or run of its job since its trigger carries its agent (see the module
    docstring), nor does a run in progress of any job (renamed or moved: runs_carrying)."""
    job, agent = build.get("job") or "", build.get("agent") or ""
    if not job or not agent or not build.get("request"):
        return False
    if run_confirm.agent_busy(rt, agent):
        return False
    labels = (build["node_label"], agent) if build.get("node_label") else (agent,)
    if any(waiting_label(item.why, labels) for item in queue.items()):
        return False
    if build.get("node_label"):  # adopted: its items carry no parameter of ours
        return True
    parameters = json.loads(build["request"]).get("parameters") or {}
    # the name its item carries: its first agent's, whatever agent it has now (agent_names)
    carried = parameters.get(AGENT_PARAMETER) or agent
    # The job's runs since the build's first trigger are read (paged back to it), so a run
    # older than the newest ones (a Pipeline in an `input` before its first node block, on
    # the controller, nothing on its agent, while the job runs on) is found, and its agent
    # kept for the block. Only an absence among runs reaching back to the trigger is a
    # cancel: more runs since than the lookup reads, or a record without its trigger time
    # (the newest runs alone read), and the build's run may be among those not read.
    try:
        if rt.jenkins.find_queue_item(job, AGENT_PARAMETER, carried, queue=queue.items(),
                                      since=first_triggered(build), whole=True) is not None:
            return False
    except NotReadBack as err:
        log.warning("a build Jenkins no longer ties to an item is kept: its job's "
                    "runs read do not reach back to its trigger",
                    extra={"agent": agent, "job": job, "error": str(err)})
        return False
    # Its Pipeline run may go on under another name: its job renamed while the item waited
    # (refused only while the job builds, Job.checkRename) or moved since (Items.move), in
    # an `input` before its first node block (nothing on its agent, no item on its label),
    # the job's runs at the old name a new job's. Jenkins runs it on a one-off executor,
    # carrying the build's agent: found so, whatever its job is called now.
    return not queue.carrying(carried)


def _took_one_meanwhile(rt: runtime.Runtime, build: dict[str, str], agent: str) -> bool:
    """Whether the adopted agent, idle and online when read, took an item of its label since:
    Jenkins hands such an item to it at once (Queue.schedule runs the queue's maintenance,
    which gives a buildable item to any idle executor of its label), and an item that left
    the queue for the agent after the agent was read shows in neither read; its release then
    killed the block that had just started on it. Taken offline first, as watch_adopted does
    with an agent that took its run (JobOffer.getCauseOfBlockage: BecauseNodeIsOffline), it
    takes nothing from here on, and what it took before shows on its executor now. Left
    offline if it took one: the next pass's watch_adopted records that run."""
    try:
        rt.jenkins.disable_agent(agent, OFFLINE_REASON)
    except PermanentError as err:  # 403: no Agent/Disconnect; read again all the same
        log.warning("could not take an adopted agent offline before its release",
                    extra={"agent": agent, "job": build.get("job"), "error": str(err)})
    activity = rt.jenkins.agent_activity(agent)
    return activity is not None and bool(activity.runs or activity.hidden_runs)
