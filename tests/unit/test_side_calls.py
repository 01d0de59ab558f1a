"""workers.concurrency.side: two independent calls at once, both waited for, each outcome
handed back (a failure of one never cuts the other short)."""

import threading

import pytest

from workers.concurrency import side
from workers.concurrency.turns import line

WAIT_SECONDS = 30


def test_the_two_calls_run_at_the_same_time():
    first_started, second_started = threading.Event(), threading.Event()

    def first() -> str:  # waits for the second: one after the other would never end
        first_started.set()
        assert second_started.wait(WAIT_SECONDS)
        return "first"

    def second() -> str:
        second_started.set()
        assert first_started.wait(WAIT_SECONDS)
        return "second"
    a, b = side.both(first, second)
    assert (a.value, b.value, a.ok, b.ok) == ("first", "second", True, True)


def test_a_failing_call_is_handed_back_after_the_other_has_ended():
    ended = threading.Event()

    def slow() -> int:
        assert not ended.is_set()
        ended.set()
        return 1

    def failing() -> int:
        raise RuntimeError("no")
    a, b = side.both(slow, failing)
    assert ended.is_set()  # both returned only once the side call had ended
    assert a.ok and a.value == 1
    assert not b.ok and isinstance(b.error, RuntimeError)
    ended.clear()
    a, b = side.both(failing, slow)
    assert isinstance(a.error, RuntimeError) and b.value == 1 and ended.is_set()


@pytest.mark.parametrize("first, second", [(None, lambda: 2), (lambda: 1, None), (None, None)])
def test_a_missing_call_is_not_run(first, second):
    a, b = side.both(first, second)
    assert a.ran == (first is not None) and b.ran == (second is not None)
    assert a.value == (1 if first else None) and b.value == (2 if second else None)
    assert not side.NOT_RUN.ok


# -- turns: calls at once, one step of each in the calls' order -----------------------------

def test_turns_admit_in_order_whatever_thread_gets_there_first():
    """A later call that reaches its turn first still waits for the one before it (a re-drive's
    second waiting build never takes the room the first one is owed)."""
    order: list[int] = []
    turns = line(3)
    arrived = [threading.Event() for _ in range(3)]

    def call(i: int) -> int:
        arrived[i].set()
        if i == 0:  # the first call comes last: the later two are at their turn already
            assert arrived[1].wait(WAIT_SECONDS) and arrived[2].wait(WAIT_SECONDS)
        with turns[i]:
            order.append(i)
        return i
    outcomes = side.each([lambda i=i: call(i) for i in range(3)])
    assert [o.value for o in outcomes] == [0, 1, 2]
    assert order == [0, 1, 2]


def test_a_call_that_ends_before_its_turn_holds_nobody_back():
    turns = line(2)
    turns[0].end()  # e.g. its build had finished: returned before any admission
    entered = threading.Event()

    def second() -> None:
        with turns[1]:
            entered.set()
    [outcome] = side.each([second])
    assert outcome.ok and entered.is_set()
