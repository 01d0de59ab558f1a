"""Replay every bundled trace against the five strategies and write
bench/results/simulation.md with the tables, the plots and the issues' checks (issue 18: c
against b and a; issue 21: d against b and c; issue 22: e against c).

    .venv/bin/python bench/simulation.py [--seed 1] [--speed]

--speed also times one run of a generated trace of 10,000 builds on 200 nodes (all five
strategies), against the target of under 2 minutes on 2 cores.
"""

import argparse
import functools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.sim.history_sizing import HistorySized  # noqa: E402
from workers.sim.report import memory_slack, history_sized  # noqa: E402
from workers.sim.simulate import pairs, run, simulate  # noqa: E402
from workers.sim.traces import BUNDLED, JOB_BUCKET_SHARE, JOBS_PER_BUCKET, bundled  # noqa: E402
from workers.sim.traces import generated  # noqa: E402
from workers.sim.warm_agents import WarmPools  # noqa: E402

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
    a, b, c = rows[:3]
    (_, _, cb), (_, _, ca) = pairs(engines)[:2]
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


OOM_SHARE = 0.01  # issue 21: d's OOM kills, once each job has 5 builds
SLACK_CUT = 0.40  # issue 21: d's memory slack at least this much below b's
WAIT_P95_SECONDS = 5.0  # issue 22: e's p95 wait on steady, skewed and mixed
IDLE_SHARE = 0.15  # issue 22: idle warm agent-seconds over busy agent-seconds
WAIT_TRACES = ("steady", "skewed", "mixed")


def history_checks(rows, engines) -> list[tuple[str, bool, str]]:
    """Issue 21: d against b (OOM, memory slack) and c (turnaround). OOM and slack are taken
    over the builds d sized once their job had 5 builds on record; slack paired: b's over the
    same builds. The slack over all builds is shown too (before its history, a job's builds
    are sized as c sizes them)."""
    b, d = rows[1], rows[3]
    (_, eb), (_, ed) = engines[1], engines[3]
    dc = pairs(engines)[2][2]
    ids = history_sized(ed)
    ours, theirs = memory_slack(ed, ids) or 0.0, memory_slack(eb, ids) or 0.0
    cut = 1 - ours / theirs if theirs else 0.0
    cut_all = 1 - (d.memory_slack_gib_hours or 0.0) / (b.memory_slack_gib_hours or 1.0)
    return [
        ("d's OOM kills at most 1% of builds, once each job has 5 builds",
         d.history_oom <= OOM_SHARE * d.history_sized,
         f"{d.history_oom} of {d.history_sized}; all builds: {d.failed_oom} of {d.builds}"),
        ("d's memory slack at least 40% below b's (same builds)", cut >= SLACK_CUT,
         f"{ours:.1f} vs {theirs:.1f} GiB-h, {cut:.0%} below; all builds: "
         f"{d.memory_slack_gib_hours:.1f} vs {b.memory_slack_gib_hours:.1f}, {cut_all:.0%}"),
        ("d's paired mean and p95 turnaround no worse than c's (2%)",
         dc.mean[0] <= TOLERANCE * dc.mean[1] and dc.p95[0] <= TOLERANCE * dc.p95[1],
         f"mean {dc.mean[0]:.0f}s vs {dc.mean[1]:.0f}s, p95 {dc.p95[0]:.0f}s vs "
         f"{dc.p95[1]:.0f}s over {dc.builds}"),
    ]


def warm_checks(trace: str, rows) -> list[tuple[str, bool | None, str]]:
    """Issue 22: e against c. The p95 wait is a check on steady, skewed and mixed only (in
    the burst, builds wait for room whatever the pool does): None (n/a) on the burst."""
    c, e = rows[2], rows[4]
    idle = e.idle_warm_agent_seconds / max(1.0, e.busy_agent_seconds)
    wait_ok = e.wait_p95 <= WAIT_P95_SECONDS if trace in WAIT_TRACES else None
    return [
        ("e's p95 wait at most 5 s (steady, skewed, mixed)", wait_ok,
         f"{e.wait_p95:.0f}s vs c's {c.wait_p95:.0f}s, hit rate "
         f"{e.warm_hits / max(1, e.builds):.1%}" + ("" if trace in WAIT_TRACES
                                                     else "; not a check on this trace")),
        ("idle warm agent-seconds at most 15% of busy agent-seconds", idle <= IDLE_SHARE,
         f"{e.idle_warm_agent_seconds:.0f} of {e.busy_agent_seconds:.0f}, {idle:.2%}"),
        ("e has no more CPU saturation than c",
         e.saturation_node_seconds <= c.saturation_node_seconds,
         f"{e.saturation_node_seconds:.0f} vs {c.saturation_node_seconds:.0f} node-s"),
        ("e has no more OOM kills than c", e.failed_oom <= c.failed_oom,
         f"{e.failed_oom} vs {c.failed_oom}"),
    ]


# The choices behind d and e, each run against what was chosen: (label, which strategy it
# stands in for, how it is made).
VARIANTS = [
    ("d with CPU at the p90 of use up to the template's max (the product's until issue 21's "
     "turnaround check; d takes it only up to the default)", "d",
     functools.partial(HistorySized, cpu_above_default=True)),
    ("e with the pool target without cover_arrival (the product's until issue 22's parity)",
     "e",
     functools.partial(WarmPools, cover_arrival=False)),
    ("e without the gap cap (the rate as the window counts it until idleSeconds)", "e",
     functools.partial(WarmPools, gap_cap=False)),
    ("e with agents at the template's default (the product's until issue 22's parity)", "e",
     functools.partial(WarmPools, sizing="default")),
    ("e without history (c with warm agents; a build wants the template's max memory)", "e",
     functools.partial(WarmPools, history=False)),
    ("e taking the oldest idle agent (not the one whose node has most room)", "e",
     functools.partial(WarmPools, prefer_room=False)),
    ("e giving up idle agents on nodes that turned busy", "e",
     functools.partial(WarmPools, stale=True)),
    ("e where a build that finds no idle agent takes the starting one soonest online, the "
     "target over the online time less a 5 s wait budget (the simulator's 5 s step makes "
     "each such wait 5-10 s; at 1 s steps the wait passes 7/9, idle 8/12, saturation 3/12)",
     "e", functools.partial(WarmPools, claim_starting=True)),
]


def variant_results(trace: str, scenario, rows, engines) -> list[list]:
    """Each variant's checks, in place of the strategy it stands in for."""
    out = []
    for _, which, make in VARIANTS:
        (row,), (engine,) = run(scenario, strategies=(make,))  # engine: (name, engine)
        if which == "d":
            out.append(history_checks(rows[:3] + [row], engines[:3] + [engine]))
        else:
            out.append(warm_checks(trace, rows[:4] + [row]))
        out[-1] = (out[-1], row)
    return out


def variants_table(collected: list[list]) -> list[str]:
    """Per variant: how many runs pass each of its checks, with the hit rate and idle share
    (e) or the paired turnaround against c (d) over the runs."""
    lines = ["## Variants: the choices behind d and e, against what was chosen", "",
             "Each variant replaces d or e in every run above (all traces, every seed) and "
             "is held to the same checks; a check passes in `n/runs` of the runs it applies "
             "to. These are not the "
             "strategies in the tables: they show what each choice buys.", "",
             "| variant | checks passed | warm hit rate | idle / busy |", "|---|---|---|---|"]
    for i, (label, which, _) in enumerate(VARIANTS):
        runs = [per_run[i] for per_run in collected]
        names = [w for w, _, _ in runs[0][0]]
        counted = [[results[k][1] for results, _ in runs if results[k][1] is not None]
                   for k in range(len(names))]
        checks_text = "; ".join(f"{name}: {sum(oks)}/{len(oks)}"
                                for name, oks in zip(names, counted))
        if which == "e":
            hits = [r.warm_hits / max(1, r.builds) for _, r in runs]
            idle = [r.idle_warm_agent_seconds / max(1.0, r.busy_agent_seconds) for _, r in runs]
            hit_text = f"{min(hits):.1%} to {max(hits):.1%}"
            idle_text = f"{min(idle):.1%} to {max(idle):.1%}"
        else:
            hit_text = idle_text = "-"
        lines.append(f"| {label} | {checks_text} | {hit_text} | {idle_text} |")
    return lines + [""]


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
    "- Worked: under pressure memory shrinks before CPU, and CPU goes below the default only "
    "as a last resort (a build still never waits while a node has its min free): mixed seed 2 "
    "passes (saturation 6.3% below b's).",
    "- Worked: admission by requests goes where the build adds the least CPU overload, counted "
    "at its request (none on a node with that much idle CPU; on saturated nodes the request's "
    "share, so the biggest first): burst seed 1 saturation 4.3% below b's.",
    "- Did not (each on all 12 runs): an expected-use quantile of 0.75 or 0.9 instead of the "
    "median (4 and 7 runs fail), the mean (4), skipping saturated nodes (3; burst turnaround "
    "+15-20%), preferring them (3), ranking by requests only (2), most free CPU (2), biggest "
    "node first (2), overload at expected use (3), best fit for large builds (3), packing "
    "within idle nodes (2), no last-resort CPU shrink (2); admissions ranked by load by use "
    "alone, without the overload added (2: burst seeds 1 and 3 saturate more than b, though "
    "seed 3's turnaround passes), or by whether they add overload at all, then load (2); "
    "nodes the build keeps below saturation first, then those already saturated, then those "
    "it would tip over (counted at its request: 2; at its expected use: 2; tipping before "
    "saturated: 1). In every one burst seed 3's saturation stays 4.7-6.6% above b's: the "
    "extra work, not where it goes.",
    "- Still failing: burst seed 3 (paired mean turnaround 2.2% above b's, saturation 5.0% "
    "above). There c does 6.7% more CPU work than b (317 against 297 core-hours): b's 115 "
    "OOM-killed builds stop halfway, c's 46 do; per core-hour of work c saturates less (331 "
    "against 337 node-s). The check counts raw saturation, so it fails. It is not the "
    "simulator's noise: c with its target moved anywhere from 0.795 to 0.805 fails it too "
    "(bench/simulation_noise.py); the other 11 runs pass at 7 of those 10 targets (burst "
    "seed 1 fails too at 0.803 to 0.805).", ""]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def check_table(title: str, names: list[str], runs: list[tuple[int, str, list]]) -> list[str]:
    lines = [title, "", "| seed | trace | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for seed, trace, results in runs:
        lines.append(f"| {seed} | {trace} | " + " | ".join(
            f"{verdict(ok)} ({detail})" for _, ok, detail in results) + " |")
    oks = [ok for _, _, results in runs for _, ok, _ in results if ok is not None]
    return lines + ["", f"{sum(oks)} of {len(oks)} checks pass.", ""]


DE_NOTES = [
    "## History sizing and warm agents: how d and e are modelled (issues 21, 22)", "",
    f"- Jobs: each build of a bundled trace is labelled with a job from what it already has: "
    f"its template and the band of its peak memory ({JOB_BUCKET_SHARE:.0%} of the "
    f"template's default wide), then one of {JOBS_PER_BUCKET} jobs of that band at random "
    "(an RNG stream of its own, seeded `{seed}:jobs`). No build's arrival, work, cores or "
    "memory moves: a, b and c give exactly the figures they gave before jobs existed.",
    "- d is c with the production recommender in front of placement (workers.core.recommend: "
    "p95 of the job's peak memory x 1.15, p90 of its CPU use up to the template's default, "
    "clamped to the template; an "
    "OOM kill at least doubles the next memory), its history kept as production keeps it "
    "(workers.core.usage_history, fed from the pod metrics samples of each run). Until a job "
    "has 5 builds on record its builds are sized as c sizes them, whose memory grows with "
    "headroom up to the template's max; so the OOM and slack checks are taken over the builds "
    "sized from history (slack paired: b's over the same builds), and the slack over all "
    "builds is shown beside it.",
    "- e is d with warm agents: the production pool rules (workers.core.warm_pool: target "
    "from the arrival rate x the online time, plan, give way to waiting builds) and the "
    "production history sizing (the product does both at once), and the production claim "
    "rules (workers.core.warm_claim), which the product took from e; each choice has its "
    "figures against the earlier rule in the variants table below: agents' memory follows "
    "demand (the most a recent build of the template wanted; a job with no history wants the "
    "template's max, which c would give it) and a build takes an agent with at least the "
    "memory it wants, where the product made agents at the template's default and handed one "
    "only to a build that wanted exactly that (with history, almost none does); the target "
    "keeps one agent more than the quantile (target_size's cover_arrival: a build finds an "
    "agent with the quantile's probability); and a build takes the idle agent whose node has "
    "the most room by use, not the oldest.",
    "- A warm agent is online (idle) 20 s after its pod is made, as a build's pod is; "
    "its requests count on its node from then on, and it uses next to nothing. Idle "
    "agent-seconds count from online to taken or given up; busy agent-seconds are the "
    "builds' run times.", "",
    "What the runs below show (all four traces, seeds 1 to 3):", "",
    "- d: no OOM kill among the builds sized from history (0 in every run); slack 43-54% "
    "below b's over the same builds. Over all builds d's slack is 45-118% above b's: a job's "
    "first builds get c's size, and c's memory, grown with headroom, leaves far more than "
    "b's slack. CPU from history only goes down (workers.core.recommend: the p90 of use, up "
    "to the template's default). Turnaround: on steady, skewed and mixed d's paired mean and "
    "p95 equal c's at every seed; on the burst the paired mean is 0.0-1.0% above c's and the "
    "p95 0.1% (seed 2), 2.0% (seed 3) and 4.8% (seed 1) above, so the check passes in 10 of "
    "12 runs. The p95 is noise, not a cost of history: d places every build where c does "
    "until the first build that c OOM-kills and d, sized from its job's OOM floor, does not "
    "(seed 1 at 4,545 s, seed 3 at 4,275 s: memory never binds, so a memory margin of 1.10 "
    "to 1.20 or 4 to 6 builds of history give the same turnaround); from there the two runs "
    "part, and a p95 over ~640 builds moves by a few percent. c against c with its target "
    "moved by 0.001 to 0.005 (bench/simulation_noise.py) passes the same check in 6 to 12 of "
    "12 runs, median 10, p95 -5.3% to +6.2%.",
    "- d's CPU rule, each on all 12 runs (turnaround check passes; paired mean and p95 "
    "against c, over the runs): p90 of use up to the template's max, the earlier rule (first "
    "variant below): 9, mean -0.9% to +12.7%, p95 -4.6% to +1.1% (a request above the "
    "default holds cores that admission by requests counts, so fewer builds start in the "
    "burst: small builds waited 216 s on average against c's 41 s at seed 1); the p90 only "
    "while no build waits: 10, mean up to +7.7%; capped at the default only when admitted "
    "by requests: 9, mean up to +6.4%; the default plus a quarter or half of the p90 above it: "
    "10 and 10, mean up to +5.7% and +9.7%; the p50 or p75 of use instead of the p90: 6 and "
    "9; the job's use (not its request) as the placement's expected use: 5 to 8. The OOM and "
    "slack checks pass 12 of 12 with each. The bundled traces' jobs share their memory band, "
    "not their parallelism (a build's cores are drawn for each build), so every job's CPU "
    "p90 is near the template's max: what a per-job CPU request could buy does not show here.",
    "- d's CPU saturation equals c's on steady, skewed and mixed (seed 1); on the burst it "
    "is 6.2% above (110,185 against 103,760 node-s), from the point where the runs part.",
    "- e: p95 wait 5 s on steady, skewed and mixed at every seed (c: 25 s), 96.0-97.9% of "
    "builds on a warm agent; OOM kills no more than c's in every run (11 of 12 before d's "
    "CPU rule). Idle warm agent-seconds are 14.2-15.0% of busy ones on steady and "
    "15.8-17.7% on skewed and mixed: 6 of 12 runs pass (4 without the gap cap, which ends "
    "idle agents when arrivals slow). At these rates (about one build per start window for "
    "small, a quarter for large) 15% is the floor: pools of K agents per template, replaced "
    "at once, Poisson arrivals and 20 s to come online give at best 14.7-15.6% (steady), "
    "15.3-16.7% (skewed) and 13.0-14.7% (mixed) with at least 95% of builds finding one, "
    "and no choice of K per template does better. The target without cover_arrival idles "
    "less but fails the 5 s wait everywhere; a quantile of 0.93 passes the idle check in 8 "
    "of 12 runs but finds agents for 95.3% of builds in some and fails the wait at 5 of 18 "
    "runs of seeds 4 to 9.",
    "- e's CPU saturation is above c's in 11 of 12 runs. Not history sizing's: with d's "
    "CPU request at most the template's default (the recommender's rule now), d's saturation is c's to "
    "the node-second on steady, skewed and mixed at seeds 1 to 3, and e stays 7% above c on "
    "average (36 runs, seeds 1 to 9; 11 of 12 above at seeds 1 to 3). The check is close to "
    "a coin flip per run: c against itself with pods that start in 25 s instead of 20 s "
    "moves by -10.8% to +12.3% (no worse in 16 of 36). Which idle agent a build takes "
    "matters (the oldest rather than the one on the least loaded node: 12% above c); the "
    "rest is the agents holding room ahead of their builds: a build placed at its arrival by "
    "the core on any node, its agent given up, is 1.3% above c. Tried, none clearly better "
    "(36 runs against c; e +7%): ranking warm placements by CPU use alone (no change) or "
    "biggest nodes first (+15%), agents at the template's min CPU (+5%), counting an idle "
    "agent's expected use on its node until it is taken (+10%, and fewer hits), counting a "
    "taken agent's use in flight until the next sample (+9%), retiring idle agents after 5 "
    "minutes (+6%), giving up idle agents on nodes past 100% use (+4%, but the wait fails "
    "in 4 of 18 runs of seeds 4 to 9), declining them at the claim (hits fall to 89-95%).",
    "- e's memory slack is about c's, not d's: warm agents are sized for the most a recent "
    "build wanted, which is the template's max whenever a job without history arrived.", ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--other-seeds", default="2,3",
                        help="seeds whose checks are tabled too, to show how robust they are")
    args = parser.parse_args()
    began = time.perf_counter()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    parts = ["# Simulation: the same traces, five strategies", "",
             f"Machine: {machine()}. Commit {commit}, seed {args.seed}.", "",
             "Regenerate: `.venv/bin/python bench/simulation.py --seed "
             f"{args.seed}{' --speed' if args.speed else ''}` (one trace alone: "
             "`ci-autoscaler simulate --trace steady --out DIR --seed 1`).", "",
             "Strategies: a. static agents (one agent per node, 2 executors, large builds "
             "pinned to the biggest nodes); b. per-build pods of the template's default size "
             "placed on requests only (kube-scheduler LeastAllocated); c. ci-autoscaler (the "
             "production core); d. c with each build sized from its job's history (the "
             "production recommender, workers.core.recommend); e. d with warm agents "
             "(the production warm-pool core, workers.core.warm_pool). Waits include the "
             "20 s a pod takes to start (b, c, d, and e's builds that find no warm agent; "
             "a's agents are always connected). Times are virtual seconds: deterministic for "
             "a seed, independent of this machine.", ""]
    parts += LEVERS + DE_NOTES
    failed = 0
    seeds = [int(x) for x in args.other_seeds.split(",") if x]
    issue21: list = []
    issue22: list = []
    variants: list = []
    for name in BUNDLED:
        engines: list = []
        rows = simulate(name, PLOTS, seed=args.seed, engines_out=engines)
        parts.append((PLOTS / f"{name}.md").read_text())
        for what, ok, detail in checks(rows, engines):
            failed += not ok
            parts.append(f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})")
        issue21.append((args.seed, name, history_checks(rows, engines)))
        issue22.append((args.seed, name, warm_checks(name, rows)))
        variants.append(variant_results(name, bundled(name, args.seed), rows, engines))
        for what, ok, detail in issue21[-1][2] + issue22[-1][2]:
            parts.append(f"- {verdict(ok)}: {what} ({detail})")
        parts += ["", f"![{name} utilisation](simulation/{name}-utilisation.png)",
                  f"![{name} waits](simulation/{name}-waits.png)", ""]
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
                issue21.append((seed, name, history_checks(other, other_engines)))
                issue22.append((seed, name, warm_checks(name, other)))
                variants.append(variant_results(name, bundled(name, seed), other,
                                                other_engines))
        parts.append("")
    failed += sum(ok is False for _, _, results in issue21 + issue22 for _, ok, _ in results)
    parts += check_table("## Issue 21: d (history sizing) against b and c, every seed",
                         [w for w, _, _ in issue21[0][2]], issue21)
    parts += check_table("## Issue 22: e (warm agents) against c, every seed",
                         [w for w, _, _ in issue22[0][2]], issue22)
    parts += variants_table(variants)
    if args.speed:
        scenario = generated(builds=10000, nodes=200, seed=args.seed)
        started = time.perf_counter()
        run(scenario)
        elapsed = time.perf_counter() - started
        parts += ["## Speed", "",
                  f"{len(scenario.builds)} builds on {scenario.nodes} nodes, all five "
                  f"strategies in one process: {elapsed:.0f} s wall clock "
                  f"({'PASS' if elapsed < 120 else 'FAIL'} against 2 minutes; wall time on a "
                  "shared machine is noisy).", ""]
    parts += [f"This file took {time.perf_counter() - began:.0f} s of wall clock to make "
              f"(every bundled trace at seeds {', '.join(map(str, [args.seed] + seeds))}, five "
              "strategies each, one process, `nice -n 10`, on the machine above).", ""]
    (OUT / "simulation.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
