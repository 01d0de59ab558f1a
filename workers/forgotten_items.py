"""Whether a triggered build's queue item was cancelled and forgotten by Jenkins: a repair's
question (workers.repairs.finish_lost_builds), asked only of a triggered build whose item
Jenkins' API no longer knows.

Someone cancels the item (the queue's "x": Queue.doCancelItem; or the item is aborted from
the queue) before any run took it: the Notification plugin sends nothing (it reports runs,
and none was made). Jenkins keeps the cancelled LeftItem about 5 minutes, and none across a
restart (REALITY.md "The queue"): after that its page answers 404 as for an id Jenkins never
had, and no run of the job has that queue id. Asked later than that (the reconcile leader
down, a restart, CI_AUTOSCALER_LOST_EVENT_SECONDS over 5 minutes), the build was "unknown"
for ever, its agent online and idle until its pod's deadline.

A build is taken for cancelled when Jenkins has nothing of it: no item in the queue and none
of the job's recent runs carries its agent parameter (what its trigger put there, the item's
id aside: a restart may give ids again), and its agent runs nothing (no run Jenkins names on
its executor, nor one it hides from us). A run of the build that started unseen (its STARTED
lost) is among those runs, or on that executor.

An adopted build (workers.adoption) whose agent took nothing yet: its item carries no
parameter of ours, and Jenkins hands its agent the oldest item of its label, whichever that
is; so its agent is done when it runs nothing and no item in the queue waits on its label
(nor on the agent's name, which Jenkins' reason gives while it is the label's only node). An
item that comes later is adopted anew.
"""

import json

from workers import runtime
from workers.adapters.redis_state import BuildStatus
from workers.core.jenkins_queue import first_triggered, waiting_label
from workers.core.routing import AGENT_PARAMETER

FOUND = "its queue item is gone from Jenkins (cancelled, and forgotten since), no run of " \
        "the job carries its agent, and its agent runs nothing"


def cancelled(rt: runtime.Runtime, build: dict[str, str]) -> bool:
    """Whether the triggered build's item, which Jenkins no longer knows, was cancelled (see
    the module docstring). At most three GETs: the agent's computer, the queue, the job's
    recent runs (not for an adopted build)."""
    job, agent = build.get("job") or "", build.get("agent") or ""
    if build.get("status") != BuildStatus.TRIGGERED or build.get("jenkins_build") \
            or not job or not agent or not build.get("request"):
        return False
    activity = rt.jenkins.agent_activity(agent)
    if activity is not None and (activity.runs or activity.hidden_runs):
        return False
    if build.get("node_label"):  # adopted: any item of its label is its to take
        labels = (build["node_label"], agent)
        return not any(waiting_label(item.why, labels) for item in rt.jenkins.queue_items())
    parameters = json.loads(build["request"]).get("parameters") or {}
    # the name its item carries: its first agent's, whatever agent it has now (agent_names)
    carried = parameters.get(AGENT_PARAMETER) or agent
    return rt.jenkins.find_queue_item(job, AGENT_PARAMETER, carried,
                                      since=first_triggered(build)) is None
