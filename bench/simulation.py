"""Replay every bundled trace against the three strategies and write
bench/results/simulation.md with the tables, the plots and the issue's checks.

    .venv/bin/python bench/simulation.py [--seed 1] [--speed]

--speed also times one run of a generated trace of 10,000 builds on 200 nodes (all three
strategies), against the target of under 2 minutes on 2 cores.
"""

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.sim.simulate import pairs, run, simulate  # noqa: E402
from workers.sim.traces import BUNDLED, bundled, generated  # noqa: E402

OUT = ROOT / "bench" / "results"
PLOTS = OUT / "simulation"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


TOLERANCE = 1.02  # check 1: c no worse than b within 2%


def checks(rows, engines) -> list[tuple[str, bool, str]]:
    """The issue's four checks (issue 18): turnaround first, paired over the builds both
    strategies finished."""
    a, b, c = rows
    (_, _, cb), (_, _, ca) = pairs(engines)
    return [
        ("c's paired mean and p95 turnaround no worse than b's (2%)",
         cb.mean[0] <= TOLERANCE * cb.mean[1] and cb.p95[0] <= TOLERANCE * cb.p95[1],
         f"mean {cb.mean[0]:.0f}s vs {cb.mean[1]:.0f}s, p95 {cb.p95[0]:.0f}s vs "
         f"{cb.p95[1]:.0f}s over {cb.builds}"),
        ("c has less CPU saturation than b",
         c.saturation_node_seconds < b.saturation_node_seconds,
         f"{c.saturation_node_seconds:.0f} vs {b.saturation_node_seconds:.0f} node-s"),
        ("c has no more OOM kills than b", c.failed_oom <= b.failed_oom,
         f"{c.failed_oom} vs {b.failed_oom}"),
        ("c's p95 turnaround at least 30% below a's", ca.p95[0] <= 0.7 * ca.p95[1],
         f"{ca.p95[0]:.0f}s vs {ca.p95[1]:.0f}s over {ca.builds}"),
    ]


# What was tried on the core for issue 18 (turnaround first), measured with this script's
# checks on the bundled traces; kept here so that the results file says it next to the tables.
LEVERS = [
    "## Turnaround first: what worked and what did not (issue 18)", "",
    "Before: in the burst, c kept builds waiting for CPU headroom (usage / 0.8) that b spent; "
    "its throughput fell and the queue grew (burst, seed 1: paired mean turnaround 1,083 s "
    "against b's 752 s; 8 of 12 trace-seed runs passed the four checks, burst failing "
    "turnaround at every seed). Levers, all in the core (placement, sizing), none in the model:",
    "",
    "- Worked: with no node having room by use, admit the build where kube-scheduler would, "
    "CPU by requests (compressible) and memory by use, on the node least loaded by use, at "
    "the template's default size (burst seed 1: 782 s, saturation still above b's).",
    "- Worked: rank those nodes by what such builds are seen to use, not their request "
    "(saturation below b's at burst seed 1).",
    "- Worked: never shrink CPU under pressure; a smaller request only packed more builds onto "
    "nodes their real use saturated (burst seed 1: 764 s against 752 s, within 2%).",
    "- Worked: node memory as requests (current, from the watch) plus what pods use beyond "
    "them (per poll), instead of a per-poll sum that kept gone pods' memory until the next "
    "poll and refused admissions on it.",
    "- Did not: target 1.0 while builds wait, or always (turnaround 944 / 927 s, saturation "
    "above b's); admitting by requests with usage ignored (800 s); no memory shrink in the "
    "shrink branch (no change: c's OOM kills come from builds peaking above their size).",
    "- Not done: best fit for large builds, spread for small ones. Still failing: burst seed 3 "
    "(mean turnaround 2.9% above b's, saturation 5% above) and mixed seed 2 (saturation 1% "
    "above b's; it failed before these levers too).", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--other-seeds", default="2,3",
                        help="seeds whose checks are tabled too, to show how robust they are")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    parts = ["# Simulation: the same traces, three strategies", "",
             f"Machine: {machine()}. Commit {commit}, seed {args.seed}.", "",
             "Regenerate: `.venv/bin/python bench/simulation.py --seed "
             f"{args.seed}{' --speed' if args.speed else ''}` (one trace alone: "
             "`ci-autoscaler simulate --trace steady --out DIR --seed 1`).", "",
             "Strategies: a. static agents (one agent per node, 2 executors, large builds "
             "pinned to the biggest nodes); b. per-build pods of the template's default size "
             "placed on requests only (kube-scheduler LeastAllocated); c. ci-autoscaler (the "
             "production core). Waits include the 20 s a pod takes to start (b, c; a's agents "
             "are always connected). Times are virtual seconds: deterministic for a seed, "
             "independent of this machine.", ""]
    parts += LEVERS
    failed = 0
    for name in BUNDLED:
        engines: list = []
        rows = simulate(name, PLOTS, seed=args.seed, engines_out=engines)
        parts.append((PLOTS / f"{name}.md").read_text())
        for what, ok, detail in checks(rows, engines):
            failed += not ok
            parts.append(f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})")
        parts += ["", f"![{name} utilisation](simulation/{name}-utilisation.png)",
                  f"![{name} waits](simulation/{name}-waits.png)", ""]
    seeds = [int(x) for x in args.other_seeds.split(",") if x]
    if seeds:
        parts += ["## The same checks with other seeds", "",
                  "| seed | trace | " + " | ".join(w for w, _, _ in checks(rows, engines))
                  + " |",
                  "|---|---|" + "---|" * 4]
        for seed in seeds:
            for name in BUNDLED:
                other, other_engines = run(bundled(name, seed))
                results = checks(other, other_engines)
                failed += sum(not ok for _, ok, _ in results)
                parts.append(f"| {seed} | {name} | " + " | ".join(
                    f"{'PASS' if ok else 'FAIL'} ({detail})" for _, ok, detail in results)
                    + " |")
        parts.append("")
    if args.speed:
        scenario = generated(builds=10000, nodes=200, seed=args.seed)
        started = time.perf_counter()
        run(scenario)
        elapsed = time.perf_counter() - started
        parts += ["## Speed", "",
                  f"{len(scenario.builds)} builds on {scenario.nodes} nodes, all three "
                  f"strategies in one process: {elapsed:.0f} s wall clock "
                  f"({'PASS' if elapsed < 120 else 'FAIL'} against 2 minutes; wall time on a "
                  "shared machine is noisy).", ""]
    (OUT / "simulation.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
