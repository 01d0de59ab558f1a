"""Spool drain benchmark: how fast the web's spool empties into a real Redis once it is back.

Run it from the project root (a script, not a test; pytest never collects it):

    .venv/bin/python bench/spool_drain.py [--rows 3000] [--rounds 3] [--out bench/results/spool-drain.md]

After a long Redis outage under a push burst the spool holds many rows, and every push in it
waits, unbuilt, until the drainer has moved it (issue 16). This measures, on a redis-server of
its own with the chart's durability (AOF, appendfsync always) and a spool file on this
machine's temp dir (SQLite WAL, synchronous=FULL, as the web's):

- `per row`: the drain as it was before batching, one row at a time: the webhook's
  Intake.push (one round trip, so one AOF fsync), then Spool.remove (one fsynced commit) —
  the reference, written out here as the drainer ran it;
- `Drainer.drain`: the production drainer (workers.engine.spool_drain), whatever it does now.

The rows are real: `--rows` pushes of the real push fixture (`gitlab_push_real_lrz.json`, each
its own delivery and commit) spooled once by the real webhook (make_app, Redis stopped), the
spool file then copied for every case and round. Each case ends checked: every row gone from
the spool, and exactly `--rows` records in the intake (none lost, none twice). Rounds
alternate the cases on a flushed Redis; the table gives each round, the median, and the
ratio to the reference of the same run.
"""

import argparse
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CI_AUTOSCALER_FIXTURES", str(ROOT.parent.parent / "shared/fixtures/webhooks"))

import orjson  # noqa: E402
import redis  # noqa: E402

from tests.support.app import GITLAB_TOKEN, make_app  # noqa: E402
from tests.support.payloads import fixture_bytes  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from workers.adapters.redis_state import RedisState  # noqa: E402
from workers.adapters.spool import FILE_NAME, Spool  # noqa: E402
from workers.engine.spool_drain import Drainer, SpooledPush  # noqa: E402


def fill(spool_dir: Path, rows: int, redis_url: str) -> str:
    """`rows` real pushes spooled by the webhook itself (its Redis is down); the rows' owner."""
    app = make_app(redis_url, spool_dir=str(spool_dir))
    client = app.test_client()
    push = orjson.loads(fixture_bytes("gitlab_push_real_lrz.json"))
    for n in range(rows):
        push["checkout_sha"] = push["after"] = f"b{n:039x}"
        answer = client.post("/webhooks/gitlab", data=orjson.dumps(push), headers={
            "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
            "Idempotency-Key": f"bench-{n}", "Content-Type": "application/json"})
        if answer.status_code != 202 or answer.json["status"] != "spooled":
            raise SystemExit(f"push {n} was not spooled: {answer.status_code} {answer.json}")
    spool = app.extensions["ci_autoscaler"].spool
    spool.close()
    return spool.owner


def per_row(spool: Spool, state: RedisState) -> int:
    """The drain before batching: each row pushed (one round trip), then deleted (one commit)."""
    moved = 0
    while events := spool.oldest(100):
        for event in events:
            SpooledPush.from_bytes(event.payload).push_to(state.intake)
            spool.remove(event.id)
            moved += 1
    return moved


def production(spool: Spool, state: RedisState) -> int:
    return Drainer(spool, state.intake).drain()


CASES = {"per row (before)": per_row, "Drainer.drain": production}


def one_case(name: str, template: Path, work: Path, conn: redis.Redis, rows: int,
             owner: str) -> float:
    conn.flushall()
    state = RedisState(conn)
    state.intake.load_functions()
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    spool = Spool(work, owner=owner)
    spool.counts()  # opened before the clock starts
    start = time.perf_counter()
    moved = CASES[name](spool, state)
    seconds = time.perf_counter() - start
    left = spool.counts()[0]
    spool.close()
    waiting = state.intake.counts()[0]
    if moved != rows or left or waiting != rows:
        raise SystemExit(f"{name}: moved {moved}, {left} left in the spool, {waiting} in the "
                         f"intake, of {rows}")
    return rows / seconds


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    disk = subprocess.run(["df", "-h", "--output=fstype,source", tempfile.gettempdir()],
                          capture_output=True, text=True).stdout.split("\n")[1].split()
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2]
    return (f"{model}, {os.cpu_count()} cores (shared), Linux {platform.release()}, temp dir on "
            f"{' '.join(disk)}; redis-server {version}, Python {platform.python_version()}, "
            f"SQLite {__import__('sqlite3').sqlite_version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the webhook's "push spooled" line, once a row
    if args.rows < 1 or args.rounds < 1:
        raise SystemExit(2)
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        tmp_path = Path(tmp)
        server = RedisServer(tmp_path / "redis", appendonly=True).start()
        try:
            conn = redis.Redis.from_url(server.url)
            conn.config_set("appendfsync", "always")  # the chart's setting (issue 16)
            server.stop()
            owner = fill(tmp_path / "template", args.rows, server.url)
            server.start()
            conn = redis.Redis.from_url(server.url)
            conn.config_set("appendfsync", "always")
            results: dict[str, list[float]] = {name: [] for name in CASES}
            for n in range(args.rounds):
                for name in (CASES if n % 2 == 0 else reversed(list(CASES))):
                    rate = one_case(name, tmp_path / "template", tmp_path / "work", conn,
                                    args.rows, owner)
                    results[name].append(rate)
                    print(f"round {n + 1}: {name}: {rate:,.0f} rows/s "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            server.stop()
    reference = statistics.median(results["per row (before)"])
    lines = [
        "# Spool drain: rows per second into a real Redis", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- commit: {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/spool_drain.py --rows {args.rows} "
        f"--rounds {args.rounds}{' --out ' + str(args.out) if args.out else ''}`",
        f"- {args.rows} real pushes spooled by the webhook (Redis stopped), drained into "
        "redis-server with appendonly yes, appendfsync always (the chart's); spool file "
        f"{FILE_NAME} in WAL mode, synchronous=FULL", "",
        "| case | median rows/s | vs per row | rounds (rows/s) |", "|---|---:|---:|---|"]
    for name, rates in results.items():
        median = statistics.median(rates)
        lines.append(f"| {name} | {median:,.0f} | {median / reference:.2f}x | "
                     f"{', '.join(f'{r:,.0f}' for r in rates)} |")
    paired = [rate / base for rate, base in zip(results["Drainer.drain"],
                                                results["per row (before)"])]
    lines += ["", f"Drainer.drain / per row, round by round (same round, same load): "
                  f"{', '.join(f'{r:.1f}x' for r in paired)}; median "
                  f"{statistics.median(paired):.1f}x."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
