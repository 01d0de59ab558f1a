"""One call at a time, asks meanwhile folded into one more run (workers.concurrency.coalesce):
real threads, each waiting on events, never on sleeps."""

import threading

import pytest

from workers.concurrency.coalesce import Coalesced

WAIT_SECONDS = 30


def test_alone_it_runs_inline_every_time():
    gate, runs = Coalesced(), []
    assert gate.run(lambda: runs.append(1)) and gate.run(lambda: runs.append(2))
    assert runs == [1, 2]


def test_asks_while_it_runs_fold_into_one_more_run_by_the_runner():
    gate, runs = Coalesced(), []
    inside, go = threading.Event(), threading.Event()

    def first() -> None:
        runs.append("first")
        if len(runs) == 1:  # the first run waits while the others ask
            inside.set()
            assert go.wait(WAIT_SECONDS)
    answers = {}
    runner = threading.Thread(target=lambda: answers.setdefault("runner", gate.run(first)))
    runner.start()
    assert inside.wait(WAIT_SECONDS)
    folded = [gate.run(lambda: runs.append("other")) for _ in range(5)]  # another thread's asks
    go.set()
    runner.join(WAIT_SECONDS)
    assert folded == [False] * 5  # they returned at once, leaving their mark
    assert answers == {"runner": True}
    assert runs == ["first", "first"]  # one more run for the five asks, after all of them


def test_an_error_is_the_runners_and_the_next_ask_runs_afresh():
    gate = Coalesced()

    def fail() -> None:
        raise RuntimeError("redis away")
    with pytest.raises(RuntimeError):
        gate.run(fail)
    runs = []
    assert gate.run(lambda: runs.append(1)) and runs == [1]
