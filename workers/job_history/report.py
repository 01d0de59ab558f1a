"""`ci-autoscaler recommend`: per job, what its history says and what it would free.

Each row: builds seen, today's default (the template's: the build's size), the
recommendation (what the job's next pod asks in total, agent and services included, as the
p95 peak it follows is the pod's) and where it comes from, the build's share of it (what its
build container gets: workers.core.podsize.history_share), the p95 of peak memory, OOM
kills, and the memory it would free at today's arrival rate: (what the pod asks at the
default − what it asks at the recommendation) × the job's mean number of builds running at
once over the last day (Little's law: arrivals per second × mean run time, from the build
records of the last `window_seconds`). A template with `history: off` sizes from itself
whatever its jobs learned before: its rows recommend its default, and free nothing.
"""

import json
from collections import defaultdict
from dataclasses import asdict, dataclass

from workers.config.config_file import FileConfig
from workers.config.settings import Settings
from workers.adapters.redis_state import RedisState
from workers.adapters.usage_store import UsageStore
from workers.core import podsize
from workers.core.cluster import Resources
from workers.core.quantity import format_cpu, format_memory
from workers.core.recommend import MEMORY_PERCENTILE
from workers.core.usage_history import UsageHistory

DAY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Row:
    job: str
    template: str
    builds_seen: int
    default_cpu_millis: int
    default_memory_bytes: int
    recommended_cpu_millis: int  # what the pod asks in total
    recommended_memory_bytes: int
    source: str
    build_cpu_millis: int  # the build's share of it (each build container's)
    build_memory_bytes: int
    p95_peak_memory_bytes: int
    oom_kills: int
    builds_per_hour: float
    memory_freed_bytes: int


def _running_at_once(state: RedisState, now: float,
                     window: float) -> dict[tuple[str, str], tuple[int, float]]:
    """(job, template) -> (builds in the window, mean builds running at once)."""
    keys = state.builds_since(now - window)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    busy: dict[tuple[str, str], float] = defaultdict(float)
    pipe = state.redis.pipeline()
    for key in keys:
        pipe.hmget(f"{state.prefix}build:{key}", "job", "template", "pod_created_at",
                   "warm_claimed_at", "released_at")
    for fields in pipe.execute() if keys else []:
        job, template, created, claimed, released = (
            v.decode() if isinstance(v, bytes) else v for v in fields)
        if not job or not template:
            continue
        counts[(job, template)] += 1
        # a build on a warm agent holds it from its claim: the pod (its pod_created_at) may
        # have idled long before, which is the pool's, not the job's. The later of the two: a
        # build whose claimed agent was lost is placed again (workers.warm.lost), its new
        # pod's pod_created_at written when made, and its claim's time kept
        since = max((float(t) for t in (claimed, created) if t), default=None)
        if since is not None and released:
            busy[(job, template)] += max(0.0, float(released) - since)
    return {k: (n, busy[k] / window) for k, n in counts.items()}


def rows(settings: Settings, config: FileConfig, state: RedisState, *, now: float,
         window_seconds: float = DAY_SECONDS) -> list[Row]:
    usage = UsageStore(state.redis, prefix=settings.key_prefix)
    load = _running_at_once(state, now, window_seconds)
    out = []
    for job, name, history in sorted(usage.histories(), key=lambda x: (x[0], x[1])):
        template = config.templates.get(name)
        if template is None:
            continue
        # as the worker sizes (workers.job_history.sized), the namespace's LimitRanges aside:
        # with `history: off` from its template, whatever its jobs learned before
        rec = podsize.pod_recommendation(template, history if template.history
                                         else UsageHistory(),
                                         min_builds=settings.history_min_builds,
                                         memory_margin=settings.history_memory_margin)
        share = podsize.history_share(template, rec)
        at_default = podsize.pod_total(template, Resources(template.cpu.default,
                                                           template.memory.default))
        arrivals, at_once = load.get((job, name), (0, 0.0))
        freed = max(0, at_default.memory_bytes - rec.memory_bytes) * at_once
        out.append(Row(job, name, history.builds, template.cpu.default,
                       template.memory.default, rec.cpu_millis, rec.memory_bytes,
                       str(rec.source), share.cpu_millis, share.memory_bytes,
                       int(history.memory.percentile(MEMORY_PERCENTILE)),
                       history.oom_kills, arrivals * 3600 / window_seconds, int(freed)))
    return out


def as_json(table: list[Row]) -> str:
    return json.dumps([asdict(r) for r in table], indent=2)


def shown_memory(nbytes: int) -> str:
    """Memory in the table as the other columns show it: exact in Gi, Mi or Ki where it is a
    whole number of them, else rounded, marked `~` (a p95 peak of 760598190 bytes reads
    ~725Mi; the raw bytes beside the sizes in Mi were read for a size in other units).
    The JSON keeps the bytes."""
    exact = format_memory(nbytes)
    if not exact.isdigit():
        return exact
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if nbytes >= unit:
            return f"~{nbytes / unit:.1f}{suffix}" if suffix == "Gi" else \
                f"~{round(nbytes / unit)}{suffix}"
    return exact


def as_text(table: list[Row]) -> str:
    head = ("JOB", "TEMPLATE", "BUILDS", "DEFAULT", "RECOMMENDED", "FROM", "BUILD",
            "P95 PEAK", "OOM", "BUILDS/H", "FREED")
    lines = [head] + [(
        r.job, r.template, str(r.builds_seen),
        f"{format_cpu(r.default_cpu_millis)}/{format_memory(r.default_memory_bytes)}",
        f"{format_cpu(r.recommended_cpu_millis)}/{format_memory(r.recommended_memory_bytes)}",
        r.source,
        f"{format_cpu(r.build_cpu_millis)}/{format_memory(r.build_memory_bytes)}",
        shown_memory(r.p95_peak_memory_bytes), str(r.oom_kills),
        f"{r.builds_per_hour:.1f}", shown_memory(r.memory_freed_bytes)) for r in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)
    return text if table else text + "\n(no job history yet)"
