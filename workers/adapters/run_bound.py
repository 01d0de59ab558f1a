"""The bound of a long run in one thread (a reconcile pass): where it may be ended early.

A reconcile pass checks between its steps whether it must stop (SIGTERM: the pod has 60 s
before it is SIGKILLed) or has lost its lease (another instance leads). A step over many builds
on a slow Jenkins (each call up to its timeout), or a call retried after a Retry-After of up to
30 s, outlasted both: the pod was SIGKILLed mid-step holding its lease, or went on acting beside
the new leader. So a run is `bounded(check, stop)`: the loops over builds inside its steps call
`checkpoint()` before each build (`check` raises RunEnded to end the run there, the builds
before it done, the others left to the next pass), and the waits between the retries of a call
(workers.adapters.retry) end as soon as `stop` is set, or `ended()` answers True (the pass's
lease lost: workers.adapters.lease.Kept.lost), the call then failing with its last error: a
call's waits (up to three Retry-After of 30 s) outlasted the 45 s lease, the pass acting on
beside the instance that had taken it over.

The bound is a context variable: it holds in the thread that runs the pass, or the agent polls
between passes (their retry waits end on SIGTERM too), and in the side threads it hands calls
to (workers.concurrency.side copies the context), nowhere else; outside a bound `checkpoint()`
does nothing and a wait is a plain sleep.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


class RunEnded(BaseException):
    """The run is to end at this checkpoint (stopped, or its lease lost). A BaseException, as
    KeyboardInterrupt is: a step's `except Exception` that logs one build's error and goes on
    to the next build must not take it for that build's error."""


# How often a wait asks `ended()`: the stop ends it at once, a lost lease within this.
ENDED_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class _Bound:
    check: Callable[[], None]
    stop: threading.Event | None
    ended: Callable[[], bool] | None = None


_current: ContextVar[_Bound | None] = ContextVar("run_bound", default=None)


@contextmanager
def bounded(check: Callable[[], None], stop: threading.Event | None = None,
            ended: Callable[[], bool] | None = None) -> Iterator[None]:
    """Run the block under `check` (called at each checkpoint; raises a RunEnded to end the
    run), `stop` (set: retry waits end at once) and `ended` (True: retry waits end within
    ENDED_POLL_SECONDS; it makes no call that may block)."""
    token = _current.set(_Bound(check, stop, ended))
    try:
        yield
    finally:
        _current.reset(token)


def checkpoint() -> None:
    """Between two builds of a step: raises RunEnded if the run is to end here."""
    bound = _current.get()
    if bound is not None:
        bound.check()


def stopping() -> bool:
    """Whether the run was asked to stop, or has ended otherwise (its lease lost)."""
    bound = _current.get()
    return bound is not None and ((bound.stop is not None and bound.stop.is_set())
                                  or (bound.ended is not None and bound.ended()))


def wait(seconds: float) -> bool:
    """Sleep `seconds`, or less if the run is asked to stop or has ended meanwhile: False
    then."""
    bound = _current.get()
    if bound is None or (bound.stop is None and bound.ended is None):
        time.sleep(seconds)
        return True
    if bound.ended is None:
        return not bound.stop.wait(seconds)
    stop = bound.stop or threading.Event()
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if stop.wait(min(left, ENDED_POLL_SECONDS)) or bound.ended():
            return False
    return True
