"""Calls that many threads ask for but one run serves: a run asked for while another runs is
folded into one more run after it.

A provision writes the capacity state once it has placed its build (workers.tasks), so that
/metrics shows the room it took. Sixteen provisions of one worker placing at once asked for
sixteen writes, each reading every node and reservation: the same state, written over and over
(a tenth of a worker's CPU in a burst). Now one thread writes it while the others go on, and
writes it once more after, if any asked meanwhile: the last state written is read after every
placement that asked for it.
"""

import threading
from collections.abc import Callable


class Coalesced:
    """`run(call)`: call now, or, if a run is under way on another thread, fold this call into
    one more run after it and return at once (False). The thread that runs repeats the latest
    call asked for until none is left; an error ends its runs and goes up in that thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = False
        self._next: Callable[[], object] | None = None

    def run(self, call: Callable[[], object]) -> bool:
        with self._lock:
            if self._running:
                self._next = call
                return False
            self._running = True
        try:
            while True:
                call()
                with self._lock:
                    if self._next is None:
                        self._running = False
                        return True
                    call, self._next = self._next, None
        except BaseException:
            with self._lock:  # the folded call is dropped: the next one asked for runs
                self._running = False
                self._next = None
            raise
