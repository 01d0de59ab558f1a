"""What a simulated run shows: turnaround (push to result: wait + run), wait and run times,
makespan, OOM kills, CPU saturation, imbalance, and how soon nodes_needed rose; as a markdown
table and PNG plots. Turnaround is also compared paired: over the builds that both strategies
finished, so that one strategy's failed (OOM-killed) builds do not flatter it. A second table
has memory slack (requested minus used, in GiB-hours), the builds sized from their job's
history and their OOM kills (d, e), and the warm agents' hit rate and idle time (e)."""

import statistics
from dataclasses import dataclass
from pathlib import Path

from workers.core.recommend import DEFAULT_MIN_BUILDS
from workers.sim.engine import Engine
from workers.sim.traces import GI

HEATMAP_COLUMNS = 400


@dataclass(frozen=True)
class Summary:
    strategy: str
    builds: int
    finished: int
    failed_oom: int
    still_waiting: int
    wait_mean: float
    wait_p50: float
    wait_p95: float
    wait_max: float
    run_mean: float
    turnaround_mean: float  # over the builds it finished: ended - arrival
    turnaround_p50: float
    turnaround_p95: float
    makespan: float
    saturation_node_seconds: float
    imbalance_stdev: float
    imbalance_max_over_mean: float
    nodes_needed_after: float | None  # seconds from the first unplaceable build
    peak_nodes_needed: int | None
    memory_slack_gib_hours: float | None = None  # None: no pods (a)
    busy_agent_seconds: float = 0.0  # builds running (started to ended)
    history_sized: int | None = None  # builds whose job had DEFAULT_MIN_BUILDS on record (d, e)
    history_oom: int | None = None  # OOM kills among them
    warm_hits: int | None = None  # builds that ran on a warm agent (e)
    idle_warm_agent_seconds: float | None = None


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def turnarounds(engine: Engine) -> dict[int, float]:
    """Build id -> turnaround (end - arrival) of every build the run finished."""
    return {b.id: b.ended_at - b.spec.arrival for b in engine.builds if b.status == "finished"}


@dataclass(frozen=True)
class Paired:
    """Turnaround of two strategies over the builds both finished."""

    builds: int
    mean: tuple[float, float]
    p50: tuple[float, float]
    p95: tuple[float, float]


def paired(one: Engine, other: Engine) -> Paired:
    a, b = turnarounds(one), turnarounds(other)
    both = sorted(a.keys() & b.keys())
    xs, ys = [a[i] for i in both], [b[i] for i in both]
    mean = (statistics.mean(xs) if xs else 0.0, statistics.mean(ys) if ys else 0.0)
    return Paired(len(both), mean, (_quantile(xs, .5), _quantile(ys, .5)),
                  (_quantile(xs, .95), _quantile(ys, .95)))


def memory_slack(engine: Engine, ids: set[int] | None = None) -> float | None:
    """GiB-hours of memory requested and not used: (request - what the build used) x its
    run time, over the builds that ran in a pod (of `ids` only, when given); None when none
    did (a's executors request nothing). An OOM-killed build used all it had."""
    total, pods = 0.0, False
    for b in engine.builds:
        if b.started_at is None or b.ended_at is None or b.requests.memory_bytes <= 0 or \
                (ids is not None and b.id not in ids):
            continue
        pods = True
        used = min(b.spec.peak_memory_bytes, b.memory_limit)
        total += max(0, b.requests.memory_bytes - used) * (b.ended_at - b.started_at)
    return total / GI / 3600 if pods else None


def history_sized(engine: Engine) -> set[int]:
    """Ids of the builds sized once their job had DEFAULT_MIN_BUILDS builds on record."""
    return {b.id for b in engine.builds
            if b.size_source and b.history_builds >= DEFAULT_MIN_BUILDS}


def summarise(engine: Engine, strategy) -> Summary:
    waits = [b.started_at - b.spec.arrival for b in engine.builds if b.started_at is not None]
    runs = [b.ended_at - b.started_at for b in engine.builds if b.status == "finished"]
    turns = list(turnarounds(engine).values())
    ends = [b.ended_at for b in engine.builds if b.ended_at is not None]
    duration = max(engine.now, 1.0)
    use = [n.busy_core_seconds / (n.allocatable.cpu_millis / 1000 * duration)
           for n in engine.nodes]
    mean_use = statistics.mean(use) if use else 0.0
    first_short = getattr(strategy, "first_unplaceable_at", None)
    first_needed = getattr(strategy, "first_nodes_needed_at", None)
    return Summary(
        strategy=strategy.name, builds=len(engine.builds),
        finished=sum(1 for b in engine.builds if b.status == "finished"),
        failed_oom=sum(1 for b in engine.builds if b.reason == "OOMKilled"),
        still_waiting=sum(1 for b in engine.builds if b.status == "waiting"),
        wait_mean=statistics.mean(waits) if waits else 0.0, wait_p50=_quantile(waits, 0.5),
        wait_p95=_quantile(waits, 0.95), wait_max=max(waits, default=0.0),
        run_mean=statistics.mean(runs) if runs else 0.0,
        turnaround_mean=statistics.mean(turns) if turns else 0.0,
        turnaround_p50=_quantile(turns, 0.5), turnaround_p95=_quantile(turns, 0.95),
        makespan=(max(ends) - engine.builds[0].spec.arrival) if ends else 0.0,
        saturation_node_seconds=sum(n.saturated_seconds for n in engine.nodes),
        imbalance_stdev=statistics.pstdev(use) if use else 0.0,
        imbalance_max_over_mean=max(use) / mean_use if mean_use else 0.0,
        nodes_needed_after=(first_needed - first_short)
        if first_short is not None and first_needed is not None else None,
        peak_nodes_needed=getattr(strategy, "peak_nodes_needed", None),
        memory_slack_gib_hours=memory_slack(engine),
        busy_agent_seconds=sum(b.ended_at - b.started_at for b in engine.builds
                               if b.started_at is not None and b.ended_at is not None),
        **_history_and_warm(engine, strategy))


def _history_and_warm(engine: Engine, strategy) -> dict:
    out: dict = {}
    if hasattr(strategy, "histories"):
        sized = history_sized(engine)
        out["history_sized"] = len(sized)
        out["history_oom"] = sum(1 for b in engine.builds
                                 if b.id in sized and b.reason == "OOMKilled")
    if hasattr(strategy, "idle_agent_seconds"):
        out["warm_hits"] = sum(1 for b in engine.builds if b.warm)
        out["idle_warm_agent_seconds"] = strategy.idle_agent_seconds(engine.now)
    return out


def _cell(value: float | int | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(trace: str, description: str, rows: list[Summary]) -> str:
    head = ("strategy", "turnaround mean s", "p50", "p95", "wait mean s", "p50", "p95", "max",
            "run mean s", "makespan s",
            "OOM", "waiting at end", "CPU saturation node-s", "util stdev", "util max/mean",
            "nodes_needed after s")
    lines = [f"### {trace}: {description}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join((
            r.strategy, _cell(r.turnaround_mean), _cell(r.turnaround_p50),
            _cell(r.turnaround_p95), _cell(r.wait_mean), _cell(r.wait_p50), _cell(r.wait_p95),
            _cell(r.wait_max), _cell(r.run_mean), _cell(r.makespan), _cell(r.failed_oom),
            _cell(r.still_waiting), _cell(r.saturation_node_seconds),
            _cell(r.imbalance_stdev, "{:.3f}"), _cell(r.imbalance_max_over_mean, "{:.2f}"),
            _cell(r.nodes_needed_after))) + " |")
    return "\n".join(lines) + "\n"


def memory_warm_markdown(rows: list[Summary]) -> str:
    """The second table: memory slack, history sizing and warm agents per strategy."""
    head = ("strategy", "memory slack GiB-h", "OOM", f"sized from history (>= "
            f"{DEFAULT_MIN_BUILDS} builds of the job)", "their OOM", "warm hit rate",
            "idle warm agent-s", "busy agent-s", "idle / busy")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        hit = None if r.warm_hits is None else r.warm_hits / max(1, r.builds)
        idle = None if r.idle_warm_agent_seconds is None \
            else r.idle_warm_agent_seconds / max(1.0, r.busy_agent_seconds)
        lines.append("| " + " | ".join((
            r.strategy, _cell(r.memory_slack_gib_hours, "{:.1f}"), _cell(r.failed_oom),
            _cell(r.history_sized), _cell(r.history_oom), _cell(hit, "{:.1%}"),
            _cell(r.idle_warm_agent_seconds), _cell(r.busy_agent_seconds),
            _cell(idle, "{:.1%}"))) + " |")
    return "\n".join(lines) + "\n"


def paired_markdown(pairs: list[tuple[str, str, Paired]]) -> str:
    """Paired turnaround rows: (strategy, compared with, figures)."""
    lines = ["| paired turnaround | builds both finished | mean s | vs | p50 s | vs | p95 s "
             "| vs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for one, other, p in pairs:
        lines.append(f"| {one} vs {other} | {p.builds} | {p.mean[0]:.0f} | {p.mean[1]:.0f} | "
                     f"{p.p50[0]:.0f} | {p.p50[1]:.0f} | {p.p95[0]:.0f} | {p.p95[1]:.0f} |")
    return "\n".join(lines) + "\n"


def can_plot():
    """matplotlib; ValueError, saying what to do, without it (the `sim` extra): asked before
    the runs, which take minutes on a bundled trace, not after them."""
    try:
        import matplotlib
        return matplotlib
    except ImportError:
        raise ValueError("the plots need matplotlib: pip install 'ci-autoscaler[sim]', "
                         "or run with --no-plots") from None


def plots(out: Path, trace: str, engines: list[tuple[str, Engine]]) -> list[Path]:
    """A heat map of node utilisation over time per strategy, and the wait-time CDFs."""
    matplotlib = can_plot()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = out / f"{trace}-utilisation.png"
    fig, axes = plt.subplots(len(engines), 1, figsize=(11, 2.6 * len(engines)), sharex=True)
    for ax, (name, engine) in zip(axes, engines):
        steps = max(len(n.utilisation) for n in engine.nodes)
        stride = max(1, steps // HEATMAP_COLUMNS)
        grid = [[min(1.5, statistics.mean(n.utilisation[i:i + stride] or [0.0]))
                 for i in range(0, steps, stride)] for n in engine.nodes]
        image = ax.imshow(grid, aspect="auto", cmap="magma", vmin=0, vmax=1.5,
                          extent=(0, steps * engine.dt / 3600, len(grid), 0))
        ax.set_title(f"{trace}: {name}", fontsize=9)
        ax.set_ylabel("node")
    axes[-1].set_xlabel("hours")
    fig.colorbar(image, ax=axes, label="CPU demand / capacity")
    fig.savefig(heat, dpi=90)
    plt.close(fig)

    cdf = out / f"{trace}-waits.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, engine in engines:
        waits = sorted(b.started_at - b.spec.arrival for b in engine.builds
                       if b.started_at is not None)
        if waits:
            ax.plot([max(w, 1.0) for w in waits],
                    [(i + 1) / len(waits) for i in range(len(waits))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("wait from push to build start, s (log)")
    ax.set_ylabel("share of builds")
    ax.set_title(f"{trace}: wait-time distribution", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(cdf, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return [heat, cdf]
