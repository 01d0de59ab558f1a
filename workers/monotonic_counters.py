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
not the pod), read and written under an exclusive lock held across the Redis read, so two
scrapes at once cannot take one's older value for a drop. Without that directory (one
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

STATE_FILE = "ci_autoscaler_counter_offsets.json"  # not .db: the multiprocess reader skips it

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
        path = Path(self.directory) / STATE_FILE
        with self._lock, open(path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
            handle.seek(0)
            text = handle.read()
            try:
                state = json.loads(text) if text else {}
            except ValueError:  # cut short by a kill mid-write: afresh, as a restart is
                state = {}
            offsets = Offsets(state)
            yield offsets
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(offsets.state))
            handle.flush()
