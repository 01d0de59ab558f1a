"""The ``shared`` counters and histograms, read from Redis, exposed so that they never go down
within a web pod's life: what Redis lost is not counted again.

A Sentinel failover to a replica that missed the last writes, or a Redis restarted without its
data, makes a counter kept in Redis drop (1,000 to 990). Prometheus takes any drop for a
reset: increase() and rate() count the whole new value again (990 in one step, a page of
errors or agents that never happened). (Prometheus docs, "Query functions", rate(): "breaks
in monotonicity (such as counter resets due to target restarts) are automatically adjusted
for"; promql/functions.go, extrapolatedRate, adds the value before any decrease; Debian's
Prometheus 2.42 counted 1,309 for 5 new in tests/integration/test_counter_drop.py.)
Here each series keeps the last value read and an offset: a drop adds what was lost to the
offset, and what is exposed is the value read plus the offset. Increments after the drop
show as they happen; those lost had been exposed once already. A histogram's buckets, sum
and count are each such a counter (cumulative buckets keep their order: a lost observation
lowers every bucket at and above its own).

Kept per web pod, shared by its gunicorn workers (one scrape is served by any of them): in a
file of PROMETHEUS_MULTIPROC_DIR (the chart's emptyDir: it outlives a container's restart,
not the pod), read and written under an exclusive lock (flock on a file of its own) held
across the Redis read, so two scrapes at once cannot take one's older value for a drop. The
state is written whole to a temporary file then renamed over the old one (rename(2) is
atomic): a worker killed mid-write (SIGKILL, the OOM killer) leaves the last state, not an
empty file that would lose every offset and show Prometheus a reset. Without that directory (one
process: `ci-autoscaler demo`, the tests), in the app's memory. A new pod starts with no
offset: a drop its predecessor hid shows to Prometheus as a new target's series, not a reset.
"""

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# None ends in .db: gunicorn's start removes *.db of PROMETHEUS_MULTIPROC_DIR, and the
# multiprocess reader reads every *.db there as its own.
STATE_FILE = "ci_autoscaler_counter_offsets.json"
LOCK_FILE = "ci_autoscaler_counter_offsets.lock"
TEMP_FILE = "ci_autoscaler_counter_offsets.json.tmp"  # one writer at a time: under the lock

Series = str  # JSON of [metric name, label values, part]


class Offsets:
    """The last value read and the offset of each series: [last, offset]."""

    def __init__(self, state: dict[Series, list[float]]):
        self.state = state

    def apply(self, series: Series, value: float) -> float:
        """What to expose for `value`, just read from Redis: never less than what was
        exposed before."""
        last, offset = self.state.get(series, (value, 0.0))
        if value < last:
            offset += last - value
        self.state[series] = [value, offset]
        return value + offset


class MonotonicCounters:
    """One web pod's offsets: in `directory`'s STATE_FILE (its PROMETHEUS_MULTIPROC_DIR,
    shared by its gunicorn workers), or in this object's memory when `directory` is None."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self._memory: dict[Series, list[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_process(cls) -> "MonotonicCounters":
        return cls(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)

    @contextmanager
    def held(self) -> Iterator[Offsets]:
        """The offsets, held exclusively until the block ends, then kept."""
        if not self.directory:
            with self._lock:
                yield Offsets(self._memory)
            return
        directory = Path(self.directory)
        with self._lock, open(directory / LOCK_FILE, "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            offsets = Offsets(_read(directory / STATE_FILE))
            yield offsets
            temp = directory / TEMP_FILE
            temp.write_text(json.dumps(offsets.state), encoding="utf-8")
            os.replace(temp, directory / STATE_FILE)


def _read(path: Path) -> dict[Series, list[float]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:  # the pod's first scrape
        return {}
    try:
        return json.loads(text)
    except ValueError:  # not written by this module (renamed whole): afresh, as a restart is
        return {}
