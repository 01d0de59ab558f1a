"""What a /metrics scrape costs at 100, 1,000 and 10,000 live builds: the live agents read from
every build's record (the baseline: pull_reads.live_agents, what a scrape did before, and does
before the first recount) against the counts the reconcile pass keeps (agent_counts), each
measured in the same run on the same builds.

    .venv/bin/python bench/agent_counts.py                        # ~1 min on 2 cores
    .venv/bin/python bench/agent_counts.py --builds 100 300 --out /tmp/agent_counts.md

A fresh redis-server (Debian's) per run; the builds are written as the engine writes them
(RedisState.update_build: live statuses, two templates, one in eight with an image pull
error). Each scrape is the web app's whole GET /metrics (Flask's test client, every collector,
not only the agents'); its time is the median of `--scrapes`. Redis's own count of the commands
it ran (INFO commandstats, reset before the scrapes) gives commands and HMGETs per scrape.
"counts, 1% written" has 1% of the builds written since the recount (a status each), the
builds a scrape then reads; the recount's own time (its reads in chunks, then one script,
Redis busy for its length) is the reconcile pass's, once a pass whatever the number of
scrapes.
"""

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

import redis  # noqa: E402

from tests.support.app import make_app  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from workers.adapters import agent_counts  # noqa: E402
from workers.adapters.redis_state import RedisState  # noqa: E402

OUT = ROOT / "bench" / "results" / "agent_counts.md"
LIVE = ("pod_created", "triggered", "running", "done", "retained")
IGNORED = {"cmdstat_info", "cmdstat_config|resetstat"}


def _fill(state: RedisState, builds: int) -> None:
    rnd = random.Random(builds)
    for n in range(builds):
        extra = {"pull_error": "ErrImagePull: 429"} if n % 8 == 0 else {}
        state.update_build(f"bench-{n}", status=rnd.choice(LIVE), job="build",
                           template=rnd.choice(("small", "large")), agent=f"pod-{n}", **extra)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _scrapes(client, admin: redis.Redis, scrapes: int) -> tuple[float, float, float]:
    """(median ms, commands, HMGETs) per scrape."""
    client.get("/metrics")  # warm: the app's first reads are not a scrape's
    admin.config_resetstat()
    times = []
    for _ in range(scrapes):
        start = time.perf_counter()
        assert client.get("/metrics").status_code == 200
        times.append((time.perf_counter() - start) * 1000)
    stats = admin.info("commandstats")
    calls = sum(s["calls"] for name, s in stats.items() if name not in IGNORED)
    hmget = stats.get("cmdstat_hmget", {}).get("calls", 0)
    return statistics.median(times), calls / scrapes, hmget / scrapes


def run(builds_list: list[int], scrapes: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            admin = redis.Redis.from_url(server.url)
            for builds in builds_list:
                admin.flushall()
                state = RedisState(admin)
                _fill(state, builds)
                client = make_app(server.url).test_client()
                base = _scrapes(client, admin, scrapes)  # no recount yet: every record read
                agent_counts.recount(state)
                kept = _scrapes(client, admin, scrapes)
                for n in range(0, builds, 100):  # 1% written since the recount
                    state.update_build(f"bench-{n}", status="running")
                churn = _scrapes(client, admin, scrapes)
                # the next pass's recount, with those 1% to read again: its reads in chunks,
                # then the script (Redis's own time for it: SLOWLOG, every command logged)
                admin.config_set("slowlog-log-slower-than", 0)
                admin.slowlog_reset()
                start = time.perf_counter()
                counted = agent_counts.read_all(state)
                read_ms = (time.perf_counter() - start) * 1000
                agent_counts.install(state, counted)
                script_ms = max(e["duration"] for e in admin.slowlog_get(1000)
                                if _s(e["command"]).startswith("EVAL")) / 1000
                admin.config_set("slowlog-log-slower-than", 10000)
                rows.append({"builds": builds, "base": base, "kept": kept, "churn": churn,
                             "read_ms": read_ms, "script_ms": script_ms})
                print(builds, base, kept, churn, f"recount {read_ms:.1f} + {script_ms:.2f} ms",
                      flush=True)
        finally:
            server.stop()
    return rows


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].removeprefix("v=")
    return (f"{cpu}, {os.cpu_count()} cores (shared with other work), Python "
            f"{platform.python_version()}, redis-server {redis_v} (Debian)")


def report(rows: list[dict], command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    out = [
        "# /metrics at 100 to 10,000 live builds", "",
        f"`{command}` at {commit}, {time.strftime('%Y-%m-%d')}, {_machine()}. One web app "
        "(Flask's test client, the whole GET /metrics) on a real redis-server; median of the "
        "scrapes; commands counted by Redis (INFO commandstats). Baseline: every live build's "
        "record read (before the first recount, and what every scrape did before). Counts: "
        "the reconcile pass's recount, then 0% and 1% of the builds written since.", "",
        "| live builds | path | scrape (ms) | Redis commands / scrape | HMGET / scrape "
        "| time vs baseline | commands vs baseline |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        base_ms, base_calls, _ = row["base"]
        for name, (ms, calls, hmget) in (("baseline: every record", row["base"]),
                                         ("counts, 0% written since", row["kept"]),
                                         ("counts, 1% written since", row["churn"])):
            out.append(f"| {row['builds']:,} | {name} | {ms:.1f} | {calls:,.0f} | "
                       f"{hmget:,.0f} | {ms / base_ms:.2f} | {calls / base_calls:.3f} |")
    out += ["", "The reconcile pass's recount, once a pass (1% of the builds written since the "
            "last): every record read in round trips of 1,000 (Redis serves others between "
            "them), then one script that reads those 1% again and puts the counts in place "
            "(Redis's own time for it, SLOWLOG; Redis answers no one else meanwhile):", "",
            "| live builds | reads (ms) | script, Redis busy (ms) |", "| ---: | ---: | ---: |"]
    out += [f"| {row['builds']:,} | {row['read_ms']:.1f} | {row['script_ms']:.2f} |"
            for row in rows]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = run(args.builds, args.scrapes)
    command = "bench/agent_counts.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, command.strip()))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
