"""The liveness file of a long-running process (the RQ worker, the reconcile loop): its main
loop touches the file each time it goes round, and the pod's liveness probe
(`python -m workers.telemetry.liveness FILE MAX_AGE_SECONDS`) fails once the file is older than the
loop's longest honest gap. A process that exists but whose loop is wedged (a call that never
returns, a lock never released, a stopped process) stops touching it, and Kubernetes restarts
it; one merely waiting for Redis goes round and keeps touching it.

CI_AUTOSCALER_LIVENESS_FILE names the file (the chart sets it); unset, nothing is written.
"""

import os
import sys
import time
from collections.abc import Callable

ENV = "CI_AUTOSCALER_LIVENESS_FILE"
# A beat touches the file at most this often: the loops that beat may go round many times a
# second (the worker's heartbeat, a pass's steps).
TOUCH_EVERY_SECONDS = 1.0


def nothing() -> None:
    """The beat of a process without a liveness file."""


class Beat:
    """Touches `path` when called, at most once a TOUCH_EVERY_SECONDS; an error writing it (a
    full or read-only volume) is left to the probe, which then fails and says why."""

    def __init__(self, path: str):
        self.path = path
        self._touched_at = float("-inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._touched_at < TOUCH_EVERY_SECONDS:
            return
        self._touched_at = now
        try:
            with open(self.path, "a"):
                pass
            os.utime(self.path)
        except OSError:
            pass


def from_env() -> Callable[[], None]:
    """The beat CI_AUTOSCALER_LIVENESS_FILE asks for, touched once now (the process is
    starting: its loop has not gone round yet); `nothing` without it."""
    path = os.environ.get(ENV, "")
    if not path:
        return nothing
    beat = Beat(path)
    beat()
    return beat


def stale_reason(path: str, max_age_seconds: float) -> str | None:
    """Why the process behind `path` is not alive, or None when the file was touched within
    `max_age_seconds`."""
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return f"{path}: no such file (the process never started its loop)"
    except OSError as err:
        return f"{path}: {err.strerror}"
    if age > max_age_seconds:
        return f"{path}: last touched {age:.0f}s ago (more than {max_age_seconds:g}s): the loop is wedged"
    return None


def main(argv: list[str]) -> int:
    """The probe: exit 0 when the file is fresh, 1 (the reason on stderr) when not."""
    usage = "usage: python -m workers.telemetry.liveness FILE MAX_AGE_SECONDS"
    if len(argv) != 2:
        print(usage, file=sys.stderr)
        return 2
    try:  # a probe's command mistyped: said so, not a ValueError traceback
        max_age = float(argv[1])
    except ValueError:
        print(f"{usage}: {argv[1]!r} is not a number of seconds", file=sys.stderr)
        return 2
    reason = stale_reason(argv[0], max_age)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
