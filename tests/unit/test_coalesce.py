"""Calls folded into one more run (workers.concurrency.coalesce)."""

import threading

import pytest

from workers.concurrency.coalesce import Coalesced


def test_calls_asked_for_during_a_run_are_served_by_one_more_run_of_the_latest():
    coalesced = Coalesced()
    inside, go_on = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        inside.set()
        assert go_on.wait(10)
    runner = threading.Thread(target=lambda: ran.append(f"runner ran: {coalesced.run(first)}"))
    runner.start()
    assert inside.wait(10)
    # asked for meanwhile: folded, the callers go on at once
    assert coalesced.run(lambda: ran.append("second")) is False
    assert coalesced.run(lambda: ran.append("third")) is False
    go_on.set()
    runner.join(10)
    assert ran == ["first", "third", "runner ran: True"]  # the latest, once, after the run
    assert coalesced.run(lambda: ran.append("alone")) is True  # none under way: runs here
    assert ran[-1] == "alone"


def test_an_error_ends_the_runs_and_the_next_call_runs_again():
    coalesced = Coalesced()

    def fails() -> None:
        raise RuntimeError("redis away")
    with pytest.raises(RuntimeError):
        coalesced.run(fails)
    ran = []
    assert coalesced.run(lambda: ran.append(1)) is True and ran == [1]
