"""Replay one trace against the five strategies, in one run, and write the report."""

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from workers.sim.engine import Engine
from workers.sim.history_sizing import HistorySized
from workers.sim.report import (Summary, can_plot, markdown, memory_warm_markdown, paired,
                                paired_markdown, plots, summarise)
from workers.sim.strategies import BASELINES
from workers.sim.warm_agents import WarmPools
from workers.sim.traces import BUNDLED, NodeShape, Scenario, bundled, read_csv

STRATEGIES = BASELINES + (HistorySized, WarmPools)
DEFAULT_SHAPES = (NodeShape(4000, 16 * 2**30, 12), NodeShape(8000, 32 * 2**30, 14),
                  NodeShape(16000, 64 * 2**30, 4))


def load(trace: str, seed: int) -> Scenario:
    """A bundled trace by name, or a CSV file of builds on the default cluster."""
    if trace in BUNDLED:
        return bundled(trace, seed)
    path = Path(trace)
    if not path.exists():
        raise ValueError(f"no trace {trace!r}: give a CSV file or one of {', '.join(BUNDLED)}")
    return Scenario(path.stem, f"builds of {path.name} on the default cluster",
                    DEFAULT_SHAPES, read_csv(path), seed=seed)


class ProgressBar:
    def __init__(self, stream: TextIO, label: str, width: int = 30):
        self.stream, self.label, self.width = stream, label, width

    def __call__(self, done: float) -> None:
        filled = int(done * self.width)
        self.stream.write(f"\r{self.label:<28} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{done:4.0%}")
        if done >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def run(scenario: Scenario, *, progress: TextIO | None = None, strategies=STRATEGIES
        ) -> tuple[list[Summary], list[tuple[str, Engine]]]:
    summaries, engines = [], []
    for make in strategies:
        engine = Engine(scenario)
        strategy = make(engine)
        bar = ProgressBar(progress, f"{scenario.name}: {strategy.name}") if progress else None
        engine.run(strategy, progress=bar)
        summaries.append(summarise(engine, strategy))
        engines.append((strategy.name, engine))
    return summaries, engines


def pairs(engines: list[tuple[str, Engine]]) -> list:
    """c's turnaround paired with b's and with a's (over the builds both finished); then d's
    and e's with c's, when they ran."""
    (a, ea), (b, eb), (c, ec) = engines[:3]
    out = [(c, b, paired(ec, eb)), (c, a, paired(ec, ea))]
    return out + [(name, c, paired(engine, ec)) for name, engine in engines[3:]]


def simulate(trace: str, out: Path, *, seed: int = 1, progress: TextIO | None = sys.stderr,
             with_plots: bool = True, engines_out: list | None = None) -> list[Summary]:
    """Run the trace, write its table (and plots); `engines_out` receives the engines."""
    scenario = load(trace, seed)
    if with_plots:
        can_plot()
    out.mkdir(parents=True, exist_ok=True)
    summaries, engines = run(scenario, progress=progress)
    if engines_out is not None:
        engines_out.extend(engines)
    table = markdown(scenario.name, f"{scenario.description} ({len(scenario.builds)} builds, "
                     f"{scenario.nodes} nodes, seed {seed})", summaries)
    table += "\n" + paired_markdown(pairs(engines))
    table += "\n" + memory_warm_markdown(summaries)
    (out / f"{scenario.name}.md").write_text(table)
    (out / f"{scenario.name}.json").write_text(json.dumps([asdict(s) for s in summaries],
                                                          indent=1))
    if with_plots:
        plots(out, scenario.name, engines)
    return summaries
