"""A build's status, and the order it moves in: queued, waiting (for capacity), pod_created,
triggered, running, then one of the finished ones.

Pure. Work that ends late (a provision whose pod create and trigger ran side by side, a
re-drive, a repair's trigger) writes the status it reached only if that does not move the
build back (`moves_forward`): Jenkins' STARTED may have been taken meanwhile, and a running
build shown as waiting for its agent is counted so, and repaired as one that never started.
The moves back that are meant (a build placed again that finds no room waits again) are
plain writes, not this one.
"""

from enum import StrEnum


class BuildStatus(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"  # for capacity
    POD_CREATED = "pod_created"
    TRIGGERED = "triggered"
    RUNNING = "running"
    DONE = "done"
    RELEASED = "released"
    FAILED = "failed"
    RETAINED = "retained"  # finished; its pod kept for debugging until retained_until


FINISHED = frozenset({BuildStatus.DONE, BuildStatus.RELEASED, BuildStatus.FAILED,
                      BuildStatus.RETAINED})
# The statuses before a build's end, in the order it goes through them (waiting may be
# missing; a build on a warm agent goes from queued to triggered).
PROGRESS: tuple[BuildStatus, ...] = (BuildStatus.QUEUED, BuildStatus.WAITING,
                                     BuildStatus.POD_CREATED, BuildStatus.TRIGGERED,
                                     BuildStatus.RUNNING)
_RANK = {status: rank for rank, status in enumerate(PROGRESS)} | {
    status: len(PROGRESS) for status in FINISHED}


def moves_forward(current: str | None, new: str) -> bool:
    """Whether `new` may be written over `current`: never over a finished build (nothing
    brings it back, nor makes it end another way: its end wrote that); otherwise when `new`
    is not before `current` (the same status again is written). A build with no status, or
    one this code does not know, takes any."""
    if current in FINISHED:
        return False
    if current not in _RANK or new not in _RANK:
        return True
    return _RANK[new] >= _RANK[current]
