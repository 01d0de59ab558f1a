"""Two independent calls of one task, run side by side: the first on a side thread, the second
on the caller's, and both waited for. A provision creates its pod while it triggers the build
(a queued build waits for its label's agent to connect); a release deletes the pod while it
deletes the Jenkins node.

Neither call is abandoned: `both` returns only when both have ended, with the outcome of each
(its value or its exception), so the caller decides what a failure of one means for the other
(a refused build deletes the pod only once the create has ended). Side threads block SIGTERM
and SIGINT, like the job threads (workers.concurrency.pool_worker), so a signal reaches the
main thread and interrupts its blocking read of the queue. A call runs in a copy of its caller's
context (contextvars), as a call made in place would: a reconcile pass's bound
(workers.adapters.run_bound) ends its retry waits on a side thread too.
"""

import contextvars
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

A = TypeVar("A")
B = TypeVar("B")
# At most this many first calls run at once in a process: more than any job pool here (the
# provision concurrency, default 16) ever asks, since each job waits for its own.
SIDE_THREADS = 64

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class Outcome(Generic[A]):
    """What one call gave: its value, or the exception it raised (`ran` False: not called)."""

    value: A | None = None
    error: BaseException | None = None
    ran: bool = True

    @property
    def ok(self) -> bool:
        return self.ran and self.error is None


NOT_RUN: Outcome = Outcome(ran=False)


def block_stop_signals() -> None:
    """In a thread that is not the main one: leave SIGTERM and SIGINT to the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def _side() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(SIDE_THREADS, thread_name_prefix="side",
                                           initializer=block_stop_signals)
        return _executor


def _outcome(future: "Future[A]") -> Outcome[A]:
    error = future.exception()
    return Outcome(error=error) if error is not None else Outcome(value=future.result())


def both(first: Callable[[], A] | None,
         second: Callable[[], B] | None) -> tuple[Outcome[A], Outcome[B]]:
    """Run `first` on a side thread and `second` here, at the same time; a None call is not
    run (NOT_RUN). Returns when both have ended; raises nothing of theirs."""
    if first is None or second is None:  # one call: no thread to hand it to
        return (_here(first) if first is not None else NOT_RUN,
                _here(second) if second is not None else NOT_RUN)
    future = _side().submit(contextvars.copy_context().run, first)
    second_done = _here(second)
    return _outcome(future), second_done


def each(calls: Sequence[Callable[[], A]]) -> list[Outcome[A]]:
    """Run every call at once (the first here, the others on side threads); the outcome of
    each, in order, once all have ended."""
    if not calls:
        return []
    futures = [_side().submit(contextvars.copy_context().run, call) for call in calls[1:]]
    first = _here(calls[0])
    return [first, *(_outcome(f) for f in futures)]


def _here(call: Callable[[], A]) -> Outcome[A]:
    try:
        return Outcome(value=call())
    except Exception as err:  # handed to the caller, who raises what matters
        return Outcome(error=err)
