"""Builds that Jenkins queued by itself on a label we serve get an agent, and an agent of
ours runs one build only. Both are repairs of the reconcile pass (workers.engine.repairs).

Adopted: a queue item waiting on a template's `label` (a build started by hand or on a timer,
a Pipeline's own `node('maven')` block), or on the label of one of our agents that is gone (a
Replay or Rebuild of one of our builds copies CI_AUTOSCALER_AGENT, and would wait for that
deleted agent forever). It gets a build of ours that triggers nothing, whose agent carries
that label: of the label's template, or of the template of the build that agent ran (if that
state has expired, the template of the first route to the item's job). An agent our state
does not know is ours only if its name is one this installation gives (keys.is_own_agent_name):
a Replay of a build of another installation sharing the Jenkins is that one's to serve.

Jenkins hands the oldest item on a label to whichever agent with that label is free first,
so an adopted agent is not tied to the item it was made for. Each pass looks at every adopted
agent that has taken nothing yet: as soon as its executor runs something, or the item it was
made for has left the queue as a run, that run is recorded as the build's (the Notification
plugin's COMPLETED names it by job and number; the pass also asks Jenkins), and the agent is
taken temporarily offline so no second item lands on it, as the Kubernetes plugin's
OnceRetentionStrategy stops accepting tasks; the run on it goes on. The agent is released when
that run ends, or once its block is done (workers.engine.adopted_done). An item is adopted again only if no adopted agent that has taken nothing is
left for its label (when another item took the agent made for it).
"""

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass

from workers import runtime
from workers.engine import jenkins_sessions, tasks
from workers.adapters import leftover_store, run_bound
from workers.adapters.redis_state import FINISHED, BuildStatus
from workers.agent_starts import online
from workers.core.errors import CIAutoscalerError, PermanentError
from workers.core.jenkins_queue import first_triggered, items_waiting_on, \
    items_waiting_on_agents, queued_by_only, same_job
from workers.core.keys import agent_name, build_key, is_own_agent_name
from workers.core.models import BuildRequest, Source
from workers.core.ports import QueueItem, RunRef
from workers.core.routing import BUILD_KEY_PARAMETER

log = logging.getLogger("ci_autoscaler.adoption")
# An item adopted this many times (each agent taken by another item, or lost) is left alone.
MAX_ADOPTIONS_PER_ITEM = 5
OFFLINE_REASON = "ci-autoscaler: an agent runs one build, and is deleted when it ends"
# The build of an agent in one of these has no agent any more: its Jenkins node is deleted.
AGENT_GONE = frozenset({BuildStatus.RELEASED, BuildStatus.FAILED, BuildStatus.RETAINED})


@dataclass(frozen=True)
class Adoption:
    """A queue item that gets an agent: the label it waits on, the template, and why."""

    item: QueueItem
    label: str
    template: str
    reason: str


def wanted(rt: runtime.Runtime, queue: list[QueueItem],
           builds: dict[str, dict[str, str]]) -> list[Adoption]:
    """The queue items waiting on a label we serve, oldest first; `builds` are the open
    builds, whose adopted agents carry those labels: while one is a label's only node, Jenkins'
    reason names that agent, not the label (workers.core.jenkins_queue)."""
    # each of a template's labels (space-separated: core.models.PodTemplate.labels); the
    # agent made for an item carries the one label the item waits on
    by_label = {label: name for name, t in rt.config.templates.items() for label in t.labels}
    carriers = {b["agent"]: b["node_label"] for b in builds.values()
                if b.get("agent") and b.get("node_label") in by_label}
    found = [Adoption(item, label, by_label[label], f"waits on the label of template "
                                                    f"{by_label[label]}")
             for item, label in items_waiting_on(queue, by_label,
                                                 skip_parameter=BUILD_KEY_PARAMETER,
                                                 carriers=carriers)]
    on_agents = items_waiting_on_agents(queue)  # our own builds' items too: two round trips
    previous = rt.state.builds_for_agents(sorted({label for _item, label in on_agents}))
    keys = sorted(set(previous.values()))
    rows = dict(zip(keys, rt.state.build_fields(keys, "status", "template", "queue_item",
                                                "fail_reason")))
    unstopped = leftover_store.noted(rt.state, keys)
    on_labels = {a.item.id for a in found}
    for item, label in on_agents:
        if item.id in on_labels:  # waits on a template's label whose only node is that agent
            continue
        status, template, own_item, fail_reason = rows.get(previous.get(label, ""),
                                                           (None, None, None, None))
        if status is not None and status not in AGENT_GONE:
            continue  # that agent is still there (or being released): the item is its own
        if status == BuildStatus.FAILED and fail_reason and (
                own_item == str(item.id) or previous[label] in unstopped):
            # The failed build's own item, whose cancel its fail has not done yet (Jenkins
            # away or failing it: the start-failure sweep, or workers.engine.jenkins_leftovers,
            # finishes that fail), or the node block of its Pipeline run, whose abort is not
            # done yet (its own item left the queue as the run started). No Replay: adopted,
            # the failed build ran after all.
            continue
        if status is None and not is_own_agent_name(label, item.job, rt.settings.installation):
            continue  # a name another installation gave: its agent, not ours to remake
        if template not in rt.config.templates:  # expired, or the template is gone
            # the route naming its job in any case (a route's "Build" is Jenkins' "build")
            template = next((r.template for r in rt.config.routes
                             if same_job(r.job, item.job)), None)
        if template is None:
            log.warning("a queue item waits on a gone agent of a job no route names",
                        extra={"queue_item": item.id, "job": item.job, "label": label})
            continue
        found.append(Adoption(item, label, template,
                              f"waits on agent {label}, gone (a Replay or Rebuild)"))
    return sorted(found, key=lambda a: a.item.id)


def adopt_queue_items(rt: runtime.Runtime, builds: dict[str, dict[str, str]],
                      now: float, queue: list[QueueItem] | None = None) -> int:
    """Queue one provision for each adoptable queue item that no untaken adopted agent of
    its label is left for; `builds` are the open builds (workers.engine.repairs.open_builds),
    `queue` Jenkins' queue as the pass read it (read here when not given)."""
    queue = rt.jenkins.queue_items() if queue is None else queue
    late = stop_late_triggers(rt, queue)
    adoptions = wanted(rt, [item for item in queue if item.id not in late], builds)
    if not adoptions:
        return 0
    untaken = Counter(b["node_label"] for b in builds.values()
                      if b.get("node_label") and not b.get("jenkins_build")
                      and b.get("status") not in FINISHED)
    adopted = 0
    for adoption in adoptions:
        run_bound.checkpoint()  # the pass may end before this build
        if untaken[adoption.label] > 0:  # an agent is coming, or free, for this label
            untaken[adoption.label] -= 1
            continue
        if _adopt(rt, adoption, now):
            adopted += 1
    return adopted


def stop_late_triggers(rt: runtime.Runtime, queue: list[QueueItem]) -> set[int]:
    """Stop what our own trigger left behind when Jenkins took its request after the call had
    timed out, the retry having found no item yet and triggered again (Jetty runs a request to
    its end whether or not its client still waits; Jenkins folds the two only while the first
    is queued). Queued by our API user alone (jenkins_queue.queued_by_only: no person's
    Rebuild or Replay), with the build key of the agent whose label it waits on, while that
    build's record names another item: a job's item is cancelled; a Pipeline's run, started
    on the controller at once (its node block waits on the label), is aborted. Adopted, or
    handed the agent once the build's own work was done, the push was built twice. Not
    judged yet: a build whose item may be lost (_items_unsure), and a Pipeline's late run
    while the build's own run is not recorded. The ids of their items, never adopted; a stop
    that failed is tried again by the next pass."""
    user = rt.settings.jenkins_user
    waiting = [(item, label) for item, label in items_waiting_on_agents(queue)
               if item.run is not None or queued_by_only(item.causes, user)]
    if not user or not waiting:
        return set()
    owners = rt.state.builds_for_agents(sorted({label for _item, label in waiting}))
    keys = sorted(set(owners.values()))
    rows = dict(zip(keys, rt.state.build_fields(keys, "queue_item", "jenkins_build",
                                                "status", jenkins_sessions.FIELD)))
    unsure = _items_unsure(rt, rows)
    found = set()
    for item, label in waiting:
        run_bound.checkpoint()
        key = owners.get(label)
        own_item, own_run, _status, _session = rows.get(key or "", (None,) * 4)
        if own_item is None or own_item == str(item.id) or key in unsure or (
                item.run is not None and own_run == str(item.run.number)):
            continue  # not a build of ours that has its item, or that item (its run's block)
        if item.run is not None and not own_run:
            # A run's abort sends its COMPLETED with the build's key: until the build's own
            # run is recorded (its STARTED lost or not applied yet) that would be taken for
            # the build's end (run_confirm.confirmed) and release the agent its own block
            # runs on. The late block waits on that busy agent meanwhile: the next pass.
            continue
        if not (_late_run(rt, item.run, key, own_item) if item.run is not None
                else item.parameters.get(BUILD_KEY_PARAMETER) == key):
            continue
        found.add(item.id)
        extra = {"build_key": key, "queue_item": item.id, "own_queue_item": own_item,
                 "run": item.run.number if item.run is not None else None}
        try:
            if item.run is not None:
                rt.jenkins.abort_build(item.run.job, item.run.number)
            else:
                rt.jenkins.cancel_queue_item(item.id)
        except CIAutoscalerError as err:
            log.warning("a late second trigger of a build not stopped; the next pass tries "
                        "again", extra={**extra, "error": str(err)})
            continue
        log.warning("stopped a late second trigger of a build (Jenkins took a timed out "
                    "request after its retry)", extra=extra)
    return found


def _items_unsure(rt: runtime.Runtime, rows: dict[str, list[str | None]]) -> set[str]:
    """The builds whose recorded item may not be theirs any more: triggered under an earlier
    Jenkins session, not yet found again under this one (workers.engine.lost_triggers). A
    crash may have lost that item, and the build's retrigger, whose answer was lost (a
    proxy's 502 after Jenkins took it: the pass goes on to the queue), has an item the record
    does not name yet: the build's only one, not a late second trigger."""
    triggered = {key for key, (_item, _run, status, session) in rows.items()
                 if status == BuildStatus.TRIGGERED and session}
    if not triggered:
        return set()
    current = rt.jenkins.session(max_age=tasks.SESSION_MAX_AGE_SECONDS)
    return {key for key in triggered if current and rows[key][3] != current}


def _late_run(rt: runtime.Runtime, run: RunRef, key: str | None, own_item: str) -> bool:
    """Whether `run` (a node block's) was queued by our user alone with build `key`, from
    another item than the build's own."""
    try:
        info = rt.jenkins.run_info(run.job, run.number)
    except CIAutoscalerError:
        return False  # the next pass reads it again
    return info is not None and info.parameters.get(BUILD_KEY_PARAMETER) == key \
        and queued_by_only(info.causes, rt.settings.jenkins_user) \
        and info.queue_id is not None and str(info.queue_id) != own_item


def _adopt(rt: runtime.Runtime, adoption: Adoption, now: float) -> str | None:
    item = adoption.item
    for attempt in range(1, MAX_ADOPTIONS_PER_ITEM + 1):
        parts = (str(Source.JENKINS), item.job, str(item.id))
        key = build_key(*parts) if attempt == 1 else build_key(*parts, str(attempt))
        request = BuildRequest(
            build_key=key, agent_name=agent_name(item.job, key, rt.settings.installation),
            source=str(Source.JENKINS),
            project="", ref="", sha="", user="", job=item.job, template=adoption.template,
            received_at=now, node_label=adoption.label)
        if rt.state.add_build(key, {
                "status": BuildStatus.QUEUED, "agent": request.agent_name, "job": item.job,
                "template": request.template, "received_at": now, "queued_at": now,
                "queue_item": item.id,
                "node_label": adoption.label, "request": json.dumps(request.to_dict())}):
            tasks.queue_provision(rt, request)
            log.info("adopted a build queued in Jenkins", extra={
                "build_key": key, "job": item.job, "queue_item": item.id,
                "label": adoption.label, "template": adoption.template,
                "reason": adoption.reason, "attempt": attempt})
            return key
    log.warning("queue item adopted too often; left alone", extra={
        "queue_item": item.id, "job": item.job, "label": adoption.label})
    return None


def watch_adopted(rt: runtime.Runtime, builds: dict[str, dict[str, str]]) -> int:
    """Record the run each adopted agent took, and take that agent offline; how many."""
    taken = 0
    for key, build in builds.items():
        run_bound.checkpoint()  # the pass may end before this build
        if not build.get("node_label") or build.get("jenkins_build") or not build.get("agent") \
                or build.get("status") not in (BuildStatus.TRIGGERED, BuildStatus.RUNNING):
            continue
        run, seen = _run_taken(rt, build)
        if run is None:
            continue
        try:
            disabled: bool | None = rt.jenkins.disable_agent(build["agent"], OFFLINE_REASON)
        except PermanentError as err:  # 403: no Agent/Disconnect; its run recorded all the
            # same (raised, no adopted build's run was ever recorded, pass after pass)
            log.warning("could not take an adopted agent offline; it may take other work",
                        extra={"build_key": key, "agent": build["agent"], "error": str(err)})
            disabled = None
        _record_taken(rt, key, build, run, seen, disabled)
        taken += 1
    return taken


def _record_taken(rt: runtime.Runtime, key: str, build: dict[str, str], run: RunRef,
                  seen: str, disabled: bool | None) -> None:
    """Record `run` as the adopted build's: its COMPLETED (by job and number) releases the
    agent, or the pass does once the agent, offline, is idle (workers.engine.adopted_done)."""
    rt.state.record_run(key, job=run.job, number=run.number)
    # the session it took the run under: a restart since may resume its block on it
    # (workers.engine.adopted_done leaves it then)
    session = rt.jenkins.session(max_age=tasks.SESSION_MAX_AGE_SECONDS)
    rt.state.update_build(key, **{jenkins_sessions.FIELD: session})
    # It took a run, so it connected; taken offline (Computer.isOffline: temporarily
    # offline || no channel), no poll would see it online, and its connect timeout would
    # delete it from under its run (workers.agent_starts.online).
    online.mark_online(rt, key, build["agent"], build, time.time())
    # The pass's own copy too, session included: a short block that is done by now (its
    # PlaceholderTask item left the queue as a run, the agent idle again; the run's COMPLETED
    # names no agent of ours and is ignored) is released by this same pass (adopted_done),
    # not one pass later, its pod kept a whole reconcile interval for nothing.
    build.update({"job": run.job, "jenkins_build": str(run.number),
                  "status": BuildStatus.RUNNING, jenkins_sessions.FIELD: session})
    log.info("adopted agent took a run; it takes no other", extra={
        "build_key": key, "agent": build["agent"], "job": run.job, "number": run.number,
        "seen_on": seen, "taken_offline": disabled})


def kept_for_another_run(rt: runtime.Runtime, key: str, build: dict[str, str], job: str,
                         number: int) -> str | None:
    """The run (described) that the adopted build's agent runs since its run `number` of
    `job` ended; None if it runs nothing now. Every release of an adopted agent on its run's
    end asks it first: its COMPLETED (workers.engine.run_confirm.agent_kept) and the
    lost-event check (workers.engine.repairs.finish_lost_builds). An adopted agent carries its
    template's label until a pass takes it offline (watch_adopted), and the moment a short
    run (a "Build Now", a timer) ends before that, Jenkins gives its free executor the next
    item on that label (Queue maintenance on the executor's release): released, the agent
    was deleted from under that run (Jenkins aborts it). Taken offline here first, so that
    nothing lands on it after the read; the run it took is recorded as the build's, whose
    end releases it (its COMPLETED, or the pass finding the agent idle: adopted_done). A
    STARTED wrote the first run's number on the build, so watch_adopted cannot record it."""
    agent = build.get("agent") or ""
    try:
        disabled: bool | None = rt.jenkins.disable_agent(agent, OFFLINE_REASON)
    except PermanentError as err:  # 403: no Agent/Disconnect; the read below still tells
        log.warning("could not take an adopted agent offline before its release",
                    extra={"build_key": key, "agent": agent, "error": str(err)})
        disabled = None
    activity = rt.jenkins.agent_activity(agent)
    if activity is None:
        return None
    others = [r for r in activity.runs if r != RunRef(job, number)]  # in any case
    if others:
        _record_taken(rt, key, build, others[0], "executor after its run ended", disabled)
        return f"#{others[0].number} of {others[0].job!r}"
    return "a run hidden from us" if activity.hidden_runs else None


def _run_taken(rt: runtime.Runtime, build: dict[str, str]) -> tuple[RunRef | None, str]:
    """The run on the agent's executor; else, if the agent is online (it may have run a short
    node block between two passes), the run its item left the queue as. An agent that has not
    connected took nothing: its item went to another agent."""
    activity = rt.jenkins.agent_activity(build["agent"])
    if activity is not None and activity.runs:
        return activity.runs[0], "executor"
    if activity is not None and not activity.offline and build.get("queue_item"):
        job = build.get("job", "")
        _state, number = rt.jenkins.build_state(job, int(build["queue_item"]),
                                                since=first_triggered(build))
        if number is not None:
            return RunRef(job, number), "queue item"
    return None, ""
