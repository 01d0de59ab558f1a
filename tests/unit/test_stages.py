"""The stages of a build (workers.core.stages): when each was reached, what each one's seconds
measure, and which are due to be observed, from a build's record as Redis holds it."""

import pytest
from hypothesis import given, strategies as st

from workers.core.stages import (
    FIELD, ORDER, TIMED, Stage, current, due, observed_field, timeline)
from workers.core.cluster import Resources
from workers.core.waiting_text import too_big_text, waiting_text

T0 = 1_700_000_000.0


def record(**times: float) -> dict[str, str]:
    """A record with the stage times given as offsets from T0 (by stage name)."""
    return {FIELD[Stage(name)]: repr(T0 + offset) for name, offset in times.items()}


def observed(rec: dict[str, str], *stages: Stage) -> dict[str, str]:
    return rec | {observed_field(s): "1.000" for s in stages}


def seconds(steps) -> dict[str, float]:
    return {s.stage.value: round(s.seconds, 3) for s in steps}


def test_each_stage_is_measured_from_the_one_before_it():
    rec = record(received=0, queued=0.5, placed=2, scheduled=3, online=20, started=21,
                 finished=300, deleted=301)
    assert seconds(due(rec)) == {"queued": 0.5, "placed": 1.5, "scheduled": 1, "online": 17,
                                 "started": 1, "finished": 279, "deleted": 1}
    assert [s.stage for s in timeline(rec)][0] == Stage.RECEIVED
    assert timeline(rec)[0].seconds is None  # the clock starts there: never observed


def test_a_build_that_waited_has_its_wait_in_placed():
    rec = record(received=0, queued=1, waiting=1.5, placed=601.5)
    assert seconds(due(rec)) == {"queued": 1, "waiting": 0.5, "placed": 600}


def test_a_pipelines_started_before_its_agent_counts_from_the_agent_online():
    """A Pipeline's STARTED comes before any agent connects: the build starts on the agent
    once it is online, so 'started' waits for 'online' and takes 0 s after it."""
    before_online = record(received=0, queued=1, placed=2, scheduled=3, started=4)
    assert Stage.STARTED not in [s.stage for s in timeline(before_online)]
    assert current(before_online).stage == Stage.SCHEDULED
    rec = record(received=0, queued=1, placed=2, scheduled=3, started=4, online=30)
    steps = {s.stage: s for s in timeline(rec)}
    assert steps[Stage.STARTED].at == steps[Stage.ONLINE].at == T0 + 30
    assert seconds(due(rec))["started"] == 0


def test_a_stage_never_counts_before_the_stage_before_it():
    """The API server writes PodScheduled's time to the second: before 'placed' at times."""
    rec = record(received=0, queued=0.2, placed=1.7, scheduled=1.0)
    steps = {s.stage: s for s in timeline(rec)}
    assert steps[Stage.SCHEDULED].at == T0 + 1.7 and steps[Stage.SCHEDULED].seconds == 0


def test_what_was_observed_is_not_due_again_nor_anything_recorded_before_it():
    rec = record(received=0, queued=1, placed=2, online=10)
    rec = observed(rec, Stage.QUEUED, Stage.PLACED, Stage.ONLINE)
    assert due(rec) == []
    # The pod's scheduling seen after its agent came online: kept, not observed (its time is
    # in online's already).
    late = rec | record(scheduled=5)
    assert due(late) == []
    assert Stage.SCHEDULED in [s.stage for s in timeline(late)]
    # What comes after is due, measured from the last stage before it.
    assert seconds(due(late | record(started=12))) == {"started": 2}


def test_a_kept_pods_deletion_is_recorded_but_not_observed():
    rec = record(received=0, queued=1, placed=2, online=5, started=5, finished=100,
                 deleted=3700) | {"retained_until": repr(T0 + 3700)}
    rec = observed(rec, Stage.QUEUED, Stage.PLACED, Stage.ONLINE, Stage.STARTED,
                   Stage.FINISHED)
    assert due(rec) == []
    assert current(rec).stage == Stage.DELETED


def test_a_failed_start_is_deleted_from_its_last_stage():
    rec = record(received=0, queued=1, placed=2, scheduled=3, deleted=9)
    assert seconds(due(rec)) == {"queued": 1, "placed": 1, "scheduled": 1, "deleted": 6}


def test_unreadable_or_missing_times_are_left_out():
    rec = {"received_at": "soon", FIELD[Stage.QUEUED]: repr(T0)}
    assert [s.stage for s in timeline(rec)] == [Stage.QUEUED]
    assert due(rec) == []  # no stage before it: nothing to measure from
    assert current({}) is None


def test_the_stages_are_the_issues_in_its_order():
    assert [s.value for s in ORDER] == ["received", "queued", "waiting", "placed", "scheduled",
                                        "online", "started", "finished", "deleted"]
    assert TIMED == ORDER[1:]
    assert len(set(FIELD.values())) == len(ORDER)


@given(st.lists(st.one_of(st.none(), st.floats(0, 10_000)), min_size=len(ORDER),
                max_size=len(ORDER)),
       st.sets(st.sampled_from(TIMED)))
def test_reached_times_never_go_back_and_due_is_in_order_and_later_than_observed(offsets, seen):
    rec = {FIELD[s]: repr(T0 + o) for s, o in zip(ORDER, offsets) if o is not None}
    rec = observed(rec, *seen)
    steps = timeline(rec)
    assert all(a.at <= b.at for a, b in zip(steps, steps[1:]))
    assert all(s.seconds is None or s.seconds >= 0 for s in steps)
    todo = due(rec)
    order = [ORDER.index(s.stage) for s in todo]
    assert order == sorted(order)
    last_seen = max((ORDER.index(s.stage) for s in steps if s.observed), default=-1)
    assert all(i > last_seen for i in order)
    # Observing what is due leaves nothing due.
    assert due(observed(rec, *(s.stage for s in todo))) == []


@pytest.mark.parametrize("reason, detail, needed, text", [
    ("insufficient_memory", "no node has 1 CPU, 2Gi free", 2,
     "waiting for capacity: insufficient memory, 2 nodes needed"),
    ("insufficient_cpu", "", 1, "waiting for capacity: insufficient cpu, 1 node needed"),
    ("no_matching_node", "", 0, "waiting for capacity: no matching node"),
    ("cap", "maxConcurrent 10 of template maven reached", 3,
     "waiting: cap (maxConcurrent 10 of template maven reached)"),
    ("cap", "", None, "waiting: cap"),
    ("", "", None, "waiting for capacity: unknown reason"),
])
def test_the_waiting_text_names_the_reason_and_the_nodes_needed(reason, detail, needed, text):
    assert waiting_text(reason, detail, nodes_needed=needed) == text


def test_a_build_bigger_than_a_reference_node_is_not_told_nodes_would_start_it():
    """Its "1 node needed" was another build's: no node of that shape would start it."""
    big = too_big_text(Resources(6100, 2**30), Resources(4000, 16 * 2**30))
    text = waiting_text("insufficient_cpu", "", nodes_needed=1, too_big=big)
    assert text == ("waiting for capacity: bigger than a node of the reference shape (it "
                    "asks 6100m cpu, 1024Mi memory at its min size; such a node has 4000m "
                    "cpu, 16384Mi memory): more such nodes would not start it")
    assert len(text) <= 255  # a GitLab commit status' description
    beside = too_big_text(Resources(3900, 2**30), Resources(4000, 16 * 2**30),
                          Resources(500, 256 * 2**20))
    assert "such a node has 4000m cpu, 16384Mi memory, 500m cpu, 256Mi memory of it taken " \
           "by DaemonSets)" in beside
