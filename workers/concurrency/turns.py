"""Taking turns: calls run at once, but one step of each runs in the calls' order.

A re-drive provisions a chunk of waiting builds at once (workers.engine.redrive), yet the
builds must take the freed room in arrival order: the first waiting build gets a freed slot,
not whichever thread reached the reservation first. So each build's admission (a warm claim,
a cap, a placement and its reservation) waits until the build before it has decided; the slow
rest (Jenkins node, pod create, trigger) still overlaps.

A turn ends when its `with` block ends, or when its call ends without reaching it: the calls
after it never wait for one that returned early or raised.
"""

import threading
from types import TracebackType

# Longer than any admission takes (a placement reads the watched snapshot and makes one Redis
# call); past it, a call goes on out of turn rather than hang its chunk.
TURN_TIMEOUT_SECONDS = 30.0


class Turn:
    """One call's place in line: `with turn:` runs its block after the previous call's."""

    def __init__(self, previous: threading.Event | None, own: threading.Event) -> None:
        self._previous = previous
        self._own = own

    def __enter__(self) -> "Turn":
        if self._previous is not None:
            self._previous.wait(TURN_TIMEOUT_SECONDS)
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.end()

    def end(self) -> None:
        """The next call may go on (idempotent)."""
        self._own.set()


# A call outside any line (a provision from the queue): it never waits.
NO_TURN = Turn(None, threading.Event())


def line(count: int) -> list[Turn]:
    """`count` turns, each after the one before it."""
    done = [threading.Event() for _ in range(count)]
    return [Turn(done[i - 1] if i else None, done[i]) for i in range(count)]
