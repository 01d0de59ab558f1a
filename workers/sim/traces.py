"""Build traces and the clusters they run on: a CSV format, a seeded generator, and the
bundled scenarios (steady, morning burst, skewed background, mixed sizes).

CSV columns: arrival_seconds, template, cpu_seconds (the work), cores (how many it can use),
peak_memory_bytes, and optionally job (the Jenkins job: builds of one job resemble each other,
which history sizing learns from; a file without it is read as before). A scenario adds the
cluster: node shapes, background workloads (their requests, and real use that differs from
them and drifts over time), and pod templates.
"""

import csv
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from workers.core.models import CpuRange, MemoryRange, PodTemplate

GI = 2**30
CSV_FIELDS = ("arrival_seconds", "template", "cpu_seconds", "cores", "peak_memory_bytes")
JOB_FIELD = "job"  # optional
# Job names (issue 21): a job has a characteristic peak memory. The generated builds are left
# exactly as they are (their arrival, work, cores and peak come from the scenario's own random
# stream, unchanged): each is labelled with a job from what it already has, its template and
# the bucket of its peak (JOB_BUCKET_SHARE of the template's default memory wide), then one of
# JOBS_PER_BUCKET jobs at random, from an independent stream (f"{seed}:jobs").
JOB_BUCKET_SHARE = 0.1
JOBS_PER_BUCKET = 2
TEMPLATES = {
    "small": PodTemplate(cpu=CpuRange(min="500m", default="1", max="2"),
                         memory=MemoryRange(min="1Gi", default="2Gi", max="4Gi")),
    "large": PodTemplate(cpu=CpuRange(min="1", default="2", max="4"),
                         memory=MemoryRange(min="2Gi", default="4Gi", max="8Gi")),
}


@dataclass(frozen=True)
class TraceBuild:
    arrival: float
    template: str
    cpu_seconds: float
    cores: float
    peak_memory_bytes: int
    job: str = ""  # "" : unknown (a CSV without the column); history sizing then has none


@dataclass(frozen=True)
class NodeShape:
    cpu_millis: int
    memory_bytes: int
    count: int


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    shapes: tuple[NodeShape, ...]
    builds: tuple[TraceBuild, ...]
    templates: dict[str, PodTemplate] = field(default_factory=lambda: dict(TEMPLATES))
    background_request: float = 0.3  # share of each node requested by others' pods
    idle_use: float = 0.15           # their real CPU use on an idle node, share of allocatable
    hot_use: float = 0.75            # ... on a hot node: far above what they requested
    hot_fraction: float = 0.2        # share of nodes running hot at a time
    hot_shift_seconds: float = 3600  # which nodes run hot changes this often
    seed: int = 0

    @property
    def nodes(self) -> int:
        return sum(s.count for s in self.shapes)


def write_csv(builds: list[TraceBuild] | tuple[TraceBuild, ...], path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_FIELDS + (JOB_FIELD,))
        for b in builds:
            out.writerow([f"{b.arrival:.1f}", b.template, f"{b.cpu_seconds:.1f}",
                          f"{b.cores:g}", b.peak_memory_bytes, b.job])


def read_csv(path: Path) -> tuple[TraceBuild, ...]:
    """The builds of a trace file; ValueError naming the file (and line) of what is wrong: a
    file that cannot be read, a template the simulated cluster lacks (it has TEMPLATES), a
    number that is not one, or one no build can have (no cores, no memory, a negative or
    infinite time): the engine failed on those with a KeyError, or ran a build of 0 cores for
    ever."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ValueError(f"{path}: cannot read it ({why})") from None
    if rows and set(CSV_FIELDS) - set(rows[0]):
        raise ValueError(f"{path}: needs columns {', '.join(CSV_FIELDS)}")
    builds = []
    for i, row in enumerate(rows, start=2):
        try:
            build = TraceBuild(float(row["arrival_seconds"]), row["template"],
                               float(row["cpu_seconds"]), float(row["cores"]),
                               int(row["peak_memory_bytes"]), row.get(JOB_FIELD) or "")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{i}: {err}") from None
        if build.template not in TEMPLATES:
            raise ValueError(f"{path}:{i}: template {build.template!r}: the simulated cluster "
                             f"has {', '.join(TEMPLATES)}")
        if not (math.isfinite(build.arrival) and build.arrival >= 0
                and math.isfinite(build.cpu_seconds) and build.cpu_seconds >= 0
                and math.isfinite(build.cores) and build.cores > 0
                and build.peak_memory_bytes > 0):
            raise ValueError(f"{path}:{i}: arrival_seconds and cpu_seconds must be at least 0, "
                             "cores and peak_memory_bytes above 0")
        builds.append(build)
    return tuple(sorted(builds, key=lambda b: b.arrival))


def _build(rng: random.Random, t: float, template: str) -> TraceBuild:
    spec = TEMPLATES[template]
    cores = rng.choice((1, 2, 2, 4)) if template == "small" else rng.choice((2, 4, 4, 8))
    work = rng.lognormvariate(math.log(300 if template == "small" else 900), 0.6) * cores
    # Most builds peak under the template's default; some need up to its max.
    peak = int(spec.memory.default * rng.uniform(0.4, 0.95)) if rng.random() < 0.85 \
        else int(rng.uniform(spec.memory.default, spec.memory.max * 0.95))
    return TraceBuild(round(t, 1), template, round(work, 1), cores, peak)


def _arrivals(rng: random.Random, rate_at, duration: float) -> list[float]:
    """Poisson arrivals with a time-varying rate (thinning)."""
    peak = max(rate_at(t) for t in range(0, int(duration), 60)) or 1e-9
    t, out = 0.0, []
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return out
        if rng.random() < rate_at(t) / peak:
            out.append(t)


def _mean_work(large_share: float) -> float:
    # E[lognormal(mu, 0.6)] = exp(mu + 0.18); E[cores] small 2.25, large 4.5
    small = math.exp(math.log(300) + 0.18) * 2.25
    large = math.exp(math.log(900) + 0.18) * 4.5
    return (1 - large_share) * small + large_share * large


def _scenario(name, description, *, seed, shapes, load, duration, large_share=0.2,
              burst=None, **cluster) -> Scenario:
    rng = random.Random(seed)
    base = Scenario(name, description, tuple(shapes), (), seed=seed, **cluster)
    total_cpu = sum(s.cpu_millis * s.count for s in shapes) / 1000
    mean_bg = base.hot_fraction * base.hot_use + (1 - base.hot_fraction) * base.idle_use
    free_cores = total_cpu * (1 - mean_bg)
    rate = load * free_cores / _mean_work(large_share)  # builds per second

    def rate_at(t: float) -> float:
        if burst and burst[0] <= t < burst[0] + burst[1]:
            return rate * burst[2]
        return rate

    builds = tuple(_build(rng, t, "large" if rng.random() < large_share else "small")
                   for t in _arrivals(rng, rate_at, duration))
    return Scenario(name, description, tuple(shapes), with_jobs(builds, seed), seed=seed,
                    **cluster)


def with_jobs(builds: tuple[TraceBuild, ...], seed: int) -> tuple[TraceBuild, ...]:
    """The same builds, each labelled with a job (see JOB_BUCKET_SHARE); nothing else moves."""
    rng = random.Random(f"{seed}:jobs")
    out = []
    for b in builds:
        width = JOB_BUCKET_SHARE * TEMPLATES[b.template].memory.default
        bucket = int(b.peak_memory_bytes / width)
        job = f"{b.template}-{bucket * JOBS_PER_BUCKET + rng.randrange(JOBS_PER_BUCKET):02d}"
        out.append(replace(b, job=job))
    return tuple(out)


def bundled(name: str, seed: int = 1) -> Scenario:
    """The bundled scenarios; the same seed gives the same trace."""
    mixed_shapes = [NodeShape(4000, 16 * GI, 12), NodeShape(8000, 32 * GI, 14),
                    NodeShape(16000, 64 * GI, 4)]
    if name == "steady":
        return _scenario("steady", "steady load at about 60% of the capacity left by "
                         "background workloads", seed=seed, shapes=mixed_shapes, load=0.6,
                         duration=4 * 3600)
    if name == "burst":
        return _scenario("burst", "a morning burst: 40% load, then 20 minutes at 2.4x the "
                         "capacity", seed=seed, shapes=mixed_shapes, load=0.4,
                         duration=3 * 3600, burst=(3600, 1200, 6.0))
    if name == "skewed":
        return _scenario("skewed", "skewed background: a third of the nodes run hot, far "
                         "above their requests", seed=seed, shapes=mixed_shapes, load=0.55,
                         duration=4 * 3600, hot_fraction=0.34, hot_use=0.8)
    if name == "mixed":
        return _scenario("mixed", "a mix of small and large builds (45% large)", seed=seed,
                         shapes=mixed_shapes, load=0.55, duration=4 * 3600, large_share=0.45)
    raise ValueError(f"unknown trace {name!r}; bundled: {', '.join(BUNDLED)}")


BUNDLED = ("steady", "burst", "skewed", "mixed")


def generated(*, builds: int, nodes: int, seed: int, load: float = 0.6) -> Scenario:
    """A trace of about `builds` builds on `nodes` 8-core nodes (for the speed check)."""
    shapes = [NodeShape(8000, 32 * GI, nodes)]
    duration = builds / (load * nodes * 8 * 0.7 / _mean_work(0.2))
    return _scenario(f"generated-{builds}x{nodes}", f"about {builds} builds on {nodes} nodes",
                     seed=seed, shapes=shapes, load=load, duration=duration)
