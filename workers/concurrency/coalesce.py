"""One call at a time, and the asks that come while it runs folded into one more run.

What this is for: a write of state derived from everything else (the capacity state for
/metrics, workers.engine.scheduling.refresh_capacity) that each provision asked for after its
placement. Its cost grows with the nodes and the reservations, and sixteen provisions at once
asked for it about as often as they placed builds, each run writing the same rows again. Here
a thread that asks while another runs it leaves a mark and returns; the running thread runs it
once more when it ends, after every ask it saw. So whatever asked, a run that started after
the ask has ended by the time the thread running it returns: a worker's jobs, all ended, leave
the state of their last placement written, as before, and a thread alone runs it inline.

An error in a run is its runner's (the asks folded into it have returned); the next ask runs
it afresh.
"""

import threading
from collections.abc import Callable


class Coalesced:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = False
        self._again = False

    def run(self, call: Callable[[], object]) -> bool:
        """Run `call` here, until no ask came meanwhile; False when another thread was running
        it (this ask is folded into its next run)."""
        with self._lock:
            if self._running:
                self._again = True
                return False
            self._running = True
        try:
            while True:
                call()
                with self._lock:
                    if not self._again:
                        self._running = False
                        return True
                    self._again = False
        except BaseException:
            with self._lock:
                self._running = self._again = False
            raise
