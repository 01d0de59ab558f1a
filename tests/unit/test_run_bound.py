"""workers.adapters.run_bound: a run's checkpoints and retry waits end when it is told to stop,
on its own thread and on the side threads it hands calls to; outside a run nothing changes."""

import threading
import time

import pytest

from workers.adapters import run_bound
from workers.adapters.retry import Backoff, retrying
from workers.concurrency import side
from workers.core.errors import RetryableError


class Ended(run_bound.RunEnded):
    pass


def _check(stop: threading.Event):
    def check() -> None:
        if stop.is_set():
            raise Ended()
    return check


def test_a_checkpoint_ends_the_run_through_a_steps_own_except_exception():
    stop = threading.Event()
    done = []
    with pytest.raises(Ended), run_bound.bounded(_check(stop), stop):
        for n in range(3):
            try:  # a step that logs one build's error and goes on to the next
                run_bound.checkpoint()
                done.append(n)
                stop.set()
            except Exception:
                pass
    assert done == [0]
    run_bound.checkpoint()  # outside the run: nothing


def test_a_retry_wait_ends_when_the_run_is_stopped_and_the_call_is_not_made_again():
    stop = threading.Event()
    calls = []

    def throttled():
        calls.append(time.monotonic())
        raise RetryableError("429", retry_after=30)

    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(RetryableError), run_bound.bounded(_check(stop), stop):
        retrying("call", throttled, backoff=Backoff(attempts=4))
    assert time.monotonic() - started < 5 and len(calls) == 1


def test_a_retry_wait_ends_when_the_run_has_ended_otherwise_and_the_call_is_not_made_again():
    """Its lease lost (`ended`, workers.adapters.lease.Kept.lost), not stopped: a Retry-After
    of 30 s was waited out, up to three times, past the 45 s lease."""
    stop, lost = threading.Event(), threading.Event()
    calls = []

    def throttled():
        calls.append(time.monotonic())
        raise RetryableError("429", retry_after=30)

    threading.Timer(0.2, lost.set).start()
    started = time.monotonic()
    with pytest.raises(RetryableError), run_bound.bounded(_check(stop), stop, lost.is_set):
        retrying("call", throttled, backoff=Backoff(attempts=4))
    assert time.monotonic() - started < 5 and len(calls) == 1
    assert not stop.is_set()


def test_side_threads_see_the_run_that_handed_them_their_call():
    stop = threading.Event()
    stop.set()
    with run_bound.bounded(_check(stop), stop):
        outcomes = side.each([run_bound.stopping, run_bound.stopping, run_bound.stopping])
    assert [o.value for o in outcomes] == [True, True, True]
    assert [o.value for o in side.each([run_bound.stopping] * 3)] == [False, False, False]
