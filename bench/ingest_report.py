"""The results table of bench/ingest.py: the machine, the command, each app's figures, every
round, and the before/after of each optimisation (HISTORY, quoted from earlier runs)."""

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The median round of earlier runs of bench/ingest.py, quoted in the results: one per step, on
# the code of that step (req/s at full load; latencies in ms at half rate).
HISTORY: list[dict] = [
    {"step": "before: WATCH + EXISTS + MULTI (4 round trips), 2 sync workers",
     "code": "e724f5d", "base": 3254, "web": 621, "dup": 568, "p50": 2.69, "p99": 78.96},
    {"step": "dedupe + job + build state in one Lua script (1 round trip)",
     "code": "0f7ba13", "base": 3134, "web": 872, "dup": 762, "p50": 5.15, "p99": 48.79},
    {"step": "hiredis packs and parses (2 sync workers)",
     "code": "6b13966", "base": 2661, "web": 678, "dup": 966, "p50": 2.25, "p99": 21.77},
    {"step": "same run, 4 sync workers (not adopted: same req/s)",
     "code": "6b13966", "base": 2605, "web": 611, "dup": 761, "p50": 2.27, "p99": 15.02},
    # Quick runs (--seconds 5 --rounds 2 --profile 0): the figures are of the round with the
    # higher ratio, the other round's ratio is in the step's name.
    {"step": "RQ's enqueue recorded once and filled in per job, orjson, to_dict without asdict "
             "(2 quick rounds; the other 39%)",
     "code": "52102a7", "base": 2528, "web": 1050, "dup": 1197, "p50": 1.75, "p99": 53.40},
    {"step": "+ the job's static part inside a script per task, orjson log lines, a small "
             "deflate state, metric children kept (2 quick rounds; the other 39%)",
     "code": "d5a41e8", "base": 2539, "web": 1397, "dup": 1504, "p50": 1.01, "p99": 5.10},
    {"step": "the previous session's final run (3 rounds of 8 s: 38%, 52%, 49%)",
     "code": "e59e55a", "base": 3660, "web": 1810, "dup": 1755, "p50": 1.14, "p99": 23.23},
    {"step": "webhook routes as plain WSGI in front of Flask, the script on connections of "
             "its own (1 quick round of 5 s)",
     "code": "155e530", "base": 4688, "web": 2511, "dup": 2846, "p50": 0.68, "p99": 2.17},
    {"step": "+ a push stored as one intake record, the job made by the worker's mover "
             "(3 rounds of 8 s: 75%, 80%, 74%)",
     "code": "5c633d5", "base": 4993, "web": 3722, "dup": 3864, "p50": 0.51, "p99": 1.83},
    {"step": "the last run on 2 sync workers (3 rounds of 8 s: 80%, 74%, 79%)",
     "code": "f499c9b", "base": 4773, "web": 3776, "dup": 3807, "p50": 0.59, "p99": 3.39},
]

CONNECTION_NOTE = {
    "close": "a connection per request (`Connection: close`), as GitLab sends each delivery",
    "keep-alive": "kept-alive connections (where they land decides the rate: see --connection)",
}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                  if line.startswith("Model name")), platform.processor())
    return (f"{model}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable); "
            f"CPython {platform.python_version()} on {platform.system()} {platform.release()}")


def code_version() -> str:
    if os.environ.get("INGEST_CODE"):  # a copy of the tree, outside git: say which
        return os.environ["INGEST_CODE"]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "service", "workers"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return rev + (" with uncommitted changes" if dirty else "")


def fmt_ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


def median_round(rounds: list[dict]) -> dict:
    ranked = sorted(rounds, key=lambda r: r["web"]["max"]["rps"] / r["bare"]["max"]["rps"])
    return ranked[len(ranked) // 2]


def report(args, rounds: list[dict], started: float) -> str:
    settings = list(dict.fromkeys(r["workers"] for r in rounds))
    lines = [
        "# Webhook ingest benchmark", "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- Machine: {machine()}",
        f"- Code: {code_version()}",
        f"- Command: `{shlex.join([sys.executable.replace(str(ROOT) + '/', ''), *sys.argv])}`",
        f"- Load: `wrk -t1 -c{args.connections} -d{args.seconds}s -s bench/ingest.lua` "
        f"(Debian wrk {wrk_version()}), {CONNECTION_NOTE[args.connection]}, on the same "
        f"machine as the server; "
        + (f"full load of baseline and webhook in turns, {args.slices} slices of "
           f"{max(1, args.seconds // args.slices)} s each (ABBA), added up; "
           if args.slices > 1 else "full load of baseline, then of the webhook; ") +
        f"gunicorn -c service/gunicorn.conf.py for both apps; {args.rounds} rounds, "
        f"run took {time.monotonic() - started:.0f} s.", ""]
    for setting in settings:
        median = median_round([r for r in rounds if r["workers"] == setting])
        lines += [f"## Result, settings: {setting} (median round by ratio)", "",
                  "| app | req/s at full load | / baseline | p50 ms at half rate | p99 ms at "
                  "half rate | half rate, asked / got req/s | errors (full, half) | 202s / "
                  "events stored / jobs made (full, half) | mover, jobs/s | CPU us per request"
                  " at full load: web server / redis-server / whole machine |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
        base = median["bare"]["max"]["rps"]
        for key, label in (("bare", "baseline: bare Flask, 204"),
                           ("web", "/webhooks/gitlab, distinct deliveries"),
                           ("dup", "/webhooks/gitlab, each delivery twice"),
                           ("mov", "/webhooks/gitlab, distinct, a worker's mover making "
                                   "jobs on the same cores")):
            full, half = median[key]["max"], median[key]["half"]
            same = "-" if key == "bare" else ", ".join(
                f"{r['statuses'].get('202', 0)} / {r['stored']} / {r['jobs']}"
                for r in (full, half))
            mover = "-" if key == "bare" or not full["mover_rps"] else \
                f"{full['mover_rps']:.0f}"
            lines.append(f"| {label} | {full['rps']:.0f} | {full['rps'] / base:.0%} | "
                         f"{fmt_ms(half['p50_us'])} | {fmt_ms(half['p99_us'])} | "
                         f"{full['rps'] / 2:.0f} / {half['rps']:.0f} | {full['errors']}, "
                         f"{half['errors']} | {same} | {mover} | "
                         + " / ".join(f"{us:.0f}" for us in full["cpu_us"]) + " |")
        lines.append("")
    lines += ["## Every round", "",
              "| round | settings | baseline req/s | webhook req/s | ratio | duplicates req/s | ratio | "
              "with mover req/s | ratio | webhook p50 / p99 ms at half | baseline p50 / p99 ms at "
              "half | errors | load average (1 min) after |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rounds, 1):
        b, w, d, m = r["bare"], r["web"], r["dup"], r["mov"]
        errs = sum(x[p]["errors"] for x in (b, w, d, m) for p in ("max", "half"))
        lines.append(
            f"| {i} | {r['workers']} | {b['max']['rps']:.0f} | {w['max']['rps']:.0f} | "
            f"{w['max']['rps'] / b['max']['rps']:.0%} | {d['max']['rps']:.0f} | "
            f"{d['max']['rps'] / b['max']['rps']:.0%} | {m['max']['rps']:.0f} | "
            f"{m['max']['rps'] / b['max']['rps']:.0%} | {fmt_ms(w['half']['p50_us'])} / "
            f"{fmt_ms(w['half']['p99_us'])} | {fmt_ms(b['half']['p50_us'])} / "
            f"{fmt_ms(b['half']['p99_us'])} | {errs} | {r['load']:.1f} |")
    lines += ["", "## Before and after", "",
              "Each step's figures are the median round of this script's run on that code, "
              "quoted from its results file (same kind of machine, same command); compare the "
              "ratios, each measured against the baseline of its own run.", "",
              "| step | code | baseline req/s | webhook req/s | ratio | duplicates ratio | "
              "webhook p50 / p99 ms at half rate |", "|---|---|---:|---:|---:|---:|---:|"]
    for h in HISTORY + [{"step": f"this run, settings: {setting}",
                         "code": code_version(),
                         **figures(median_round([r for r in rounds if r["workers"] == setting]))}
                        for setting in settings]:
        lines.append(f"| {h['step']} | {h['code']} | {h['base']:.0f} | {h['web']:.0f} | "
                     f"{h['web'] / h['base']:.0%} | {h['dup'] / h['base']:.0%} | "
                     f"{h['p50']:.2f} / {h['p99']:.2f} |")
    return "\n".join(lines) + "\n"


def figures(row: dict) -> dict:
    return {"base": row["bare"]["max"]["rps"], "web": row["web"]["max"]["rps"],
            "dup": row["dup"]["max"]["rps"], "p50": row["web"]["half"]["p50_us"] / 1e3,
            "p99": row["web"]["half"]["p99_us"] / 1e3}


def wrk_version() -> str:
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).split()[1]
