"""A build's way from the webhook to its pod deleted, as stages with a time each: the build's
record holds when it reached each stage, and each stage's seconds (from the stage before it)
go into ci_autoscaler_build_stage_seconds{stage,template} once.

Pure: a build's record (its Redis hash, as strings) in, the stages as data out. The writer
(workers.stage_timings) records a stage's time the first time only, and observes every stage
``due`` once: the record keeps which were observed (``stage:<name>`` = its seconds).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """In the order a build goes through them. Each one's seconds are measured from the stage
    before it that the build reached (WAITING and SCHEDULED may be missing)."""

    RECEIVED = "received"    # the webhook stored the push (where the clock starts)
    QUEUED = "queued"        # a worker's mover made it a provision job (the intake's wait)
    WAITING = "waiting"      # first made to wait, with its reason (the job's wait + a decision)
    PLACED = "placed"        # its agent pod created on a node (from waiting: capacity or a cap)
    SCHEDULED = "scheduled"  # the pod bound to its node (PodScheduled True)
    ONLINE = "online"        # its agent's computer online in Jenkins (pull, start, connect)
    STARTED = "started"      # the Jenkins build started on that agent
    FINISHED = "finished"    # Jenkins reported it COMPLETED (the build's own run)
    DELETED = "deleted"      # its pod deleted (the release)


ORDER: tuple[Stage, ...] = tuple(Stage)
# The stages that are observed (every stage but the first has a stage before it).
TIMED: tuple[Stage, ...] = ORDER[1:]
# The record's field that holds when the build reached each stage.
FIELD: dict[Stage, str] = {
    Stage.RECEIVED: "received_at", Stage.QUEUED: "queued_at", Stage.WAITING: "waiting_at",
    Stage.PLACED: "placed_at", Stage.SCHEDULED: "scheduled_at",
    Stage.ONLINE: "agent_online_at", Stage.STARTED: "started_at",
    Stage.FINISHED: "finished_at", Stage.DELETED: "pod_deleted_at",
}
# A stage that counts as reached only once another one is: a Pipeline's STARTED notification
# comes when its run starts on the controller, before any agent connects (REALITY.md, Jenkins
# Notification plugin), and its steps start on the agent once that is online.
NEEDS: dict[Stage, Stage] = {Stage.STARTED: Stage.ONLINE}
# The first wait's reason, kept beside WAITING's time (the build's wait_reason goes when placed).
FIRST_WAIT_REASON = "first_wait_reason"


def observed_field(stage: Stage) -> str:
    """The record's field holding the seconds observed for this stage (absent: not yet)."""
    return f"stage:{stage.value}"


@dataclass(frozen=True)
class StageTime:
    stage: Stage
    at: float  # when the build reached it: its own time, never before the stage before it
    seconds: float | None  # from the stage before it that the build reached; None: the first
    observed: bool  # its seconds were observed into the histogram already


def _time(record: Mapping[str, str], stage: Stage) -> float | None:
    try:
        return float(record[FIELD[stage]])
    except (KeyError, TypeError, ValueError):
        return None


def timeline(record: Mapping[str, str]) -> list[StageTime]:
    """The stages the build reached, in order. A stage whose own time is earlier than the
    stage before it counts as reached with that one (STARTED before ONLINE, or a scheduling
    time the API server writes to the second)."""
    times = {s: t for s in ORDER if (t := _time(record, s)) is not None}
    out: list[StageTime] = []
    previous: float | None = None
    for stage in ORDER:
        if stage not in times or (stage in NEEDS and NEEDS[stage] not in times):
            continue
        at = times[stage] if previous is None else max(times[stage], previous)
        out.append(StageTime(stage, at, None if previous is None else at - previous,
                             bool(record.get(observed_field(stage)))))
        previous = at
    return out


def due(record: Mapping[str, str]) -> list[StageTime]:
    """The stages to observe now: reached, timed, not observed yet, and later than every
    stage observed already (a stage recorded after a later one was observed, such as a pod's
    scheduling seen after its agent came online, stays in the record but is not observed: its
    time is in the later stage's already). A kept pod's deletion (podRetention) is its
    retention, not our release: recorded, not observed."""
    steps = timeline(record)
    last_observed = max((i for i, s in enumerate(steps) if s.observed), default=-1)
    return [s for s in steps[last_observed + 1:] if s.seconds is not None
            and not (s.stage == Stage.DELETED and record.get("retained_until"))]


def current(record: Mapping[str, str]) -> StageTime | None:
    """The last stage the build reached (None before it was received)."""
    steps = timeline(record)
    return steps[-1] if steps else None
