"""A job's resource history as decaying histograms, in the style of VPA's recommender.

Each finished build adds one sample per resource: its peak memory and its CPU use at p90.
A sample falls into an exponential bucket (each bucket `BUCKET_RATIO` times wider than the
one before, as VPA's `histogram.go` does with ratio 1.05), with weight 1 at the time it was
seen; older weights halve every `half_life_seconds`. So a job that changed last week is sized
by this week's builds, and the histogram stays small: one float per bucket in use, at most
`MAX_BUCKETS` (a memory peak between 1 MiB and 1 TiB needs 284 buckets; buckets whose weight
has decayed below `MIN_WEIGHT` are dropped).

The history is a plain value: `add` returns a new one, and `to_dict`/`from_dict` give the
JSON an adapter stores. Pure: no clock is read here; every time is passed in.

The OOM floor is the killed pod's total doubled, and the record says so (`FLOOR_OF`). A record
without that mark was written by a release whose floor was the killed *build's* size doubled:
it is read as `build_floor_bytes`, which workers.core.podsize.pod_history turns into the pod's
total (only the template knows what the pod asks beside its build). Read as a pod total, such a
floor gave a pod with services, or several build containers, no more memory than the pod just
killed.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# Bucket i covers [FIRST_BUCKET * RATIO**i, FIRST_BUCKET * RATIO**(i+1)) (VPA: ratio 1.05).
BUCKET_RATIO = 1.05
FIRST_MEMORY_BUCKET_BYTES = 2**20  # 1 MiB
FIRST_CPU_BUCKET_MILLIS = 1
MAX_BUCKETS = 400  # covers 1 MiB .. beyond 1 TiB, and 1m .. beyond 1000 cores
MIN_WEIGHT = 1e-4  # VPA's epsilon: a bucket lighter than this is dropped
# The stored history's mark that its `floor` is a pod total (records without it: a build's size)
FLOOR_OF, POD = "floor_of", "pod"
DEFAULT_HALF_LIFE_SECONDS = 24 * 3600


def bucket_of(value: float, first: float) -> int:
    """The bucket a sample falls into (values below `first` go to bucket 0)."""
    if value <= first:
        return 0
    return min(MAX_BUCKETS - 1, int(math.log(value / first) / math.log(BUCKET_RATIO)))


def bucket_end(index: int, first: float) -> float:
    """The upper bound of a bucket: the value a percentile in that bucket is read as, so a
    recommendation never falls below a sample (VPA reads the bucket's start; we read its end
    because a memory request below a peak is an OOM kill)."""
    return first * BUCKET_RATIO ** (index + 1)


@dataclass(frozen=True)
class Histogram:
    """Weights per bucket index, all referred to `updated_at` (seconds)."""

    first: float
    updated_at: float = 0.0
    weights: Mapping[int, float] = field(default_factory=dict)

    def decayed(self, now: float, half_life_seconds: float) -> "Histogram":
        """The weights as they stand at `now` (never earlier than `updated_at`)."""
        if now <= self.updated_at or not self.weights:
            return replace(self, updated_at=max(now, self.updated_at))
        factor = 0.5 ** ((now - self.updated_at) / half_life_seconds)
        kept = {i: w * factor for i, w in self.weights.items() if w * factor >= MIN_WEIGHT}
        return Histogram(self.first, now, kept)

    def add(self, value: float, now: float, half_life_seconds: float) -> "Histogram":
        current = self.decayed(now, half_life_seconds)
        weights = dict(current.weights)
        index = bucket_of(value, self.first)
        weights[index] = weights.get(index, 0.0) + 1.0
        return Histogram(self.first, current.updated_at, weights)

    def total(self) -> float:
        return sum(self.weights.values())

    def percentile(self, q: float) -> float:
        """The value below which a fraction `q` of the weight lies (0 for an empty one)."""
        total = self.total()
        if total <= 0:
            return 0.0
        running = 0.0
        for index in sorted(self.weights):
            running += self.weights[index]
            if running >= q * total - 1e-12:
                return bucket_end(index, self.first)
        return bucket_end(max(self.weights), self.first)


def _histogram_from(raw: Any, first: float) -> Histogram:
    if not isinstance(raw, Mapping):
        return Histogram(first)
    weights = raw.get("w") if isinstance(raw.get("w"), Mapping) else {}
    clean = {int(i): float(w) for i, w in weights.items()
             if str(i).isdigit() and 0 <= int(i) < MAX_BUCKETS and float(w) > 0}
    return Histogram(first, float(raw.get("t", 0.0)), clean)


@dataclass(frozen=True)
class UsageHistory:
    """What is known of one (job, template): its builds' peaks, CPU use and OOM kills."""

    memory: Histogram = Histogram(FIRST_MEMORY_BUCKET_BYTES)
    cpu: Histogram = Histogram(FIRST_CPU_BUCKET_MILLIS)
    builds: int = 0
    oom_kills: int = 0
    # After an OOM kill: the next default memory is at least this, until `builds_since_oom`
    # clean builds have been seen (then the history, which holds their peaks, speaks).
    oom_floor_bytes: int = 0
    builds_since_oom: int = 0
    # A floor stored by a release before floors were pod totals: the killed build's size
    # doubled (podsize.pod_history makes it the pod's; recommend reads oom_floor_bytes only).
    build_floor_bytes: int = 0

    def add_build(self, *, peak_memory_bytes: int, cpu_p90_millis: int, now: float,
                  half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS) -> "UsageHistory":
        """A finished build (not OOM-killed) with its measured peak and CPU use."""
        return replace(
            self,
            memory=self.memory.add(max(0, peak_memory_bytes), now, half_life_seconds),
            cpu=self.cpu.add(max(0, cpu_p90_millis), now, half_life_seconds),
            builds=self.builds + 1,
            builds_since_oom=self.builds_since_oom + 1
            if self.oom_floor_bytes or self.build_floor_bytes else 0)

    def add_oom_kill(self, *, memory_limit_bytes: int, max_bytes: int) -> "UsageHistory":
        """A build container was OOM-killed at `memory_limit_bytes`: the next default memory
        at least doubles, up to the template's max."""
        floor = min(max_bytes, max(self.oom_floor_bytes, 2 * memory_limit_bytes))
        return replace(self, oom_kills=self.oom_kills + 1, oom_floor_bytes=floor,
                       builds_since_oom=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": {"t": self.memory.updated_at, "w": {str(i): w for i, w in
                                                     self.memory.weights.items()}},
            "c": {"t": self.cpu.updated_at, "w": {str(i): w for i, w in
                                                  self.cpu.weights.items()}},
            "n": self.builds, "oom": self.oom_kills, "floor": self.oom_floor_bytes,
            "since_oom": self.builds_since_oom, FLOOR_OF: POD,
            **({"build_floor": self.build_floor_bytes} if self.build_floor_bytes else {}),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> "UsageHistory":
        """The stored form back; anything unreadable counts as no history."""
        if not isinstance(raw, Mapping):
            return cls()
        try:
            floor = max(0, int(raw.get("floor", 0)))
            pod = raw.get(FLOOR_OF) == POD  # else a floor of the build's size (a release before)
            return cls(
                memory=_histogram_from(raw.get("m"), FIRST_MEMORY_BUCKET_BYTES),
                cpu=_histogram_from(raw.get("c"), FIRST_CPU_BUCKET_MILLIS),
                builds=max(0, int(raw.get("n", 0))),
                oom_kills=max(0, int(raw.get("oom", 0))),
                oom_floor_bytes=floor if pod else 0,
                builds_since_oom=max(0, int(raw.get("since_oom", 0))),
                build_floor_bytes=max(0, int(raw.get("build_floor", 0))) if pod else floor)
        except (TypeError, ValueError):
            return cls()
