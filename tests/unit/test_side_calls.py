"""workers.concurrency.side: two independent calls at once, both waited for, each outcome
handed back (a failure of one never cuts the other short)."""

import threading

import pytest

from workers.concurrency import side

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
