"""Hand-off benchmark: what it costs to turn a stored push into a running job, per build.

Run it from the project root (a script, not a test; pytest never collects it):

    .venv/bin/python bench/handoff.py [--builds 2000] [--rounds 3] [--out bench/results/handoff.md]

On a redis-server of its own (AOF off), in this process:
- the mover (workers.engine.intake): `--builds` intake records made provision jobs with their build
  state, one record per round trip (`Mover.convert`, the reference, as before issue 19) and
  a claimed batch of 64 per round trip (`Mover._convert_all`); records per second and CPU
  microseconds per record;
- RQ's own part of a job: `--builds` jobs of a task that does nothing (math.fabs) run by
  RQ's SimpleWorker (the serial worker before issue 19) and by the pool worker
  (workers.concurrency.pool_worker) at concurrency 16; wall and CPU milliseconds per job.

Each round runs every case on a flushed database; the table gives every round.
"""

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq import Queue, SimpleWorker  # noqa: E402

from workers.adapters.redis_state import RedisState  # noqa: E402
from workers.concurrency.pool_worker import PoolWorker  # noqa: E402
from workers.engine.intake import Mover, record  # noqa: E402

BUILD = {"source": "gitlab", "project": "group/app", "ref": "refs/heads/main", "sha": "a" * 40,
         "job": "build", "template": "maven", "parameters": {"GIT_COMMIT": "a" * 40},
         "received_at": 1700000000.5, "node_label": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(directory: Path):
    port = free_port()
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize",
                    "yes", "--dir", str(directory), "--pidfile", str(directory / "redis.pid"),
                    "--save", "", "--appendonly", "no"], check=True)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    try:
        yield client
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((directory / "redis.pid").read_text()), signal.SIGTERM)


def mover_case(client: redis.Redis, builds: int, batched: bool) -> tuple[float, float]:
    """(records per second, CPU microseconds per record)."""
    client.flushdb()
    state = RedisState(client)
    for i in range(builds):
        build = BUILD | {"build_key": f"bk-{i}", "agent_name": f"agent-{i}"}
        state.intake.push(delivery_id=f"gitlab:d-{i}", mark=build["build_key"],
                          record=record(f"gitlab:d-{i}", build), ttl_seconds=600)
    mover = Mover(state, name="bench")
    wall, cpu = time.perf_counter(), time.process_time()
    made = 0
    while records := state.intake.claim("bench", 64):
        made += mover._convert_all(records) if batched else sum(map(mover.convert, records))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert made == builds and state.queue.count == builds
    return builds / wall, cpu / builds * 1e6


def rq_case(client: redis.Redis, jobs: int, pooled: bool) -> tuple[float, float]:
    """(wall ms per job, CPU ms per job) of no-op jobs through a burst worker."""
    client.flushdb()
    queue = Queue("bench", connection=client)
    with client.pipeline() as pipe:
        for _ in range(jobs):
            queue.enqueue("math.fabs", 1.0, pipeline=pipe)
        pipe.execute()
    worker = PoolWorker([queue], connection=client, concurrency=16) if pooled \
        else SimpleWorker([queue], connection=client)
    wall, cpu = time.perf_counter(), time.process_time()
    worker.work(burst=True, logging_level="WARNING")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert queue.finished_job_registry.count == jobs, queue.finished_job_registry.count
    return wall / jobs * 1e3, cpu / jobs * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--builds", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-handoff-") as tmp, \
            redis_server(Path(tmp)) as client:
        for n in range(1, args.rounds + 1):
            one, one_cpu = mover_case(client, args.builds, batched=False)
            batch, batch_cpu = mover_case(client, args.builds, batched=True)
            serial, serial_cpu = rq_case(client, args.builds, pooled=False)
            pool, pool_cpu = rq_case(client, args.builds, pooled=True)
            rows.append(f"| {n} | {one:.0f} | {one_cpu:.0f} | {batch:.0f} | {batch_cpu:.0f} | "
                        f"{batch / one:.2f} | {serial:.2f} | {serial_cpu:.2f} | {pool:.2f} | "
                        f"{pool_cpu:.2f} |")
            print(rows[-1], flush=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = "\n".join([
        "# Hand-off benchmark: a stored push to a running job", "",
        f"- machine: {platform.system()} {platform.release()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, redis-server on the same machine, load average at the "
        f"end {load}",
        f"- command: `python bench/handoff.py {' '.join(sys.argv[1:])}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- {args.builds} builds a case; mover: records/s and CPU us per record, one record per "
        "round trip (the reference, before issue 19) and a batch of 64 per round trip; RQ: "
        "no-op jobs, wall and CPU ms per job, SimpleWorker (serial) and the pool worker "
        "(concurrency 16)", "",
        "| round | mover one/rt rec/s | us/rec | mover batch rec/s | us/rec | batch x | "
        "RQ serial ms/job | CPU ms | RQ pool ms/job | CPU ms |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
