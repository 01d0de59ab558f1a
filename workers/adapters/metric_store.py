"""Counters and histograms kept in Redis, so that any process may count (a worker, the
reconcile loop, a forked RQ work-horse, a gunicorn worker) and every web process reads the
same cluster-wide totals at scrape time.

Keys (under the prefix): ``metrics:<name>``, one hash per metric.
  counter fields:   JSON of the label values -> the running total (HINCRBYFLOAT)
  histogram fields: JSON of [label values, part], part being "sum", "count" or the upper
                    bound of the one bucket the value fell in (not cumulative; cumulated when
                    read, so a bucket layout change never misfiles old observations)

Nothing expires: the fields are as many as the label sets, which come from small fixed sets.
"""

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

Labels = tuple[str, ...]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


@dataclass(frozen=True)
class HistogramValue:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    sum: float
    count: float


class MetricStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix

    def _k(self, name: str) -> str:
        return f"{self.prefix}metrics:{name}"

    def add(self, name: str, labels: Labels, amount: float = 1.0) -> None:
        """Add to a counter. Raises redis.RedisError when Redis cannot be reached."""
        self.redis.hincrbyfloat(self._k(name), json.dumps(list(labels)), amount)

    def observe(self, name: str, labels: Labels, value: float,
                buckets: Sequence[float]) -> None:
        """Count one observation in its bucket, the sum and the count, in one transaction."""
        bound = next((b for b in buckets if value <= b), math.inf)
        key = self._k(name)
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, json.dumps([list(labels), _bound(bound)]), 1)
            pipe.hincrbyfloat(key, json.dumps([list(labels), "sum"]), value)
            pipe.hincrby(key, json.dumps([list(labels), "count"]), 1)
            pipe.execute()

    def read(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """The raw hashes of these metrics, in one round trip."""
        names = list(names)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._k(name))
            raw = pipe.execute()
        return {name: {_s(k): _s(v) for k, v in fields.items()}
                for name, fields in zip(names, raw)}


def counter_values(raw: dict[str, str]) -> dict[Labels, float]:
    return {tuple(json.loads(field)): float(value) for field, value in raw.items()}


def histogram_values(raw: dict[str, str], buckets: Sequence[float]) -> dict[Labels, HistogramValue]:
    """Cumulative buckets (the declared bounds, then +Inf), sum and count per label set."""
    parts: dict[Labels, dict[str, float]] = {}
    for field, value in raw.items():
        labels, part = json.loads(field)
        parts.setdefault(tuple(labels), {})[part] = float(value)
    out = {}
    bounds = [*buckets, math.inf]
    for labels, got in parts.items():
        per_bound = {(math.inf if p == "+Inf" else float(p)): v for p, v in got.items()
                     if p not in ("sum", "count")}
        cumulative = tuple((b, sum(v for bb, v in per_bound.items() if bb <= b)) for b in bounds)
        out[labels] = HistogramValue(cumulative, got.get("sum", 0.0), got.get("count", 0.0))
    return out
