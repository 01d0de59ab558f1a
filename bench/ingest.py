"""Webhook ingest benchmark: the real /webhooks/gitlab against a bare Flask app, same stack.

Run it from the project root (a script, not a test; pytest never collects it):

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 32] [--rounds 2]

In one run, on this machine, with the shipped gunicorn config (service/gunicorn.conf.py: same
worker class and count for both) and the same load tool (Debian's wrk, 1 thread, script
bench/ingest.lua):

- baseline: bench/ingest_bare.py, a Flask app answering POST /webhooks/gitlab with 204;
- webhook: service.wsgi:app, the app as production runs it (settings from the environment,
  examples/ci-autoscaler.yaml, JSON logs, multiprocess metrics), on a real redis-server with
  AOF on (`--appendfsync`: always, as the chart runs it, or everysec; several compare them in
  the same rounds), every request a distinct delivery of the real push payload
  (shared/fixtures/webhooks/gitlab_push_real_lrz.json with its own commit and
  X-Gitlab-Event-UUID): token check, parse, route, dedupe, durable enqueue;
- duplicates: the same, every delivery sent twice in a row (one 202, one 200 duplicate).

For each: requests/s at full load (`--connections` connections, closed loop), then p50/p99
latency at half of that rate (the Lua script paces requests to a schedule on a monotonic clock;
wrk 4.1 has no constant-rate mode and wrk2 is not in Debian), and the errors: socket errors
plus every answer that is not the expected one. After each webhook run the queue in Redis must
hold a job for every 202 answer (a 202 without its job is an error; a job whose 202 wrk did
not read is a request in flight when wrk stopped, at most one per connection).
The full load of the baseline and of the webhook is measured in turns (--slices, ABBA: both
apps are up, each loaded for a second or two at a time, and the slices added up), so that the
machine's drift weighs on both alike; duplicates and the half-rate runs come after. Rounds
repeat this (and, with --workers, each worker count); the table gives the median round. The report is written by bench/ingest_report.py.
"""

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ingest_report import report  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the profile imports the app of this tree
from tests.support.redis_server import running  # noqa: E402
FIXTURE = Path(os.environ.get("CI_AUTOSCALER_FIXTURES", ROOT.parent / "shared" / "fixtures"
                              / "webhooks")) / "gitlab_push_real_lrz.json"
TOKEN = "bench-gitlab-token-0c5d2e"
QUEUE_KEY = "rq:queue:ci-autoscaler"
INTAKE_KEY = "cia:intake"  # where a 202'd push is stored (workers.adapters.intake)
RESULTS = ROOT / "bench" / "results" / "ingest.md"
# A new connection per request (--connection close, the default): GitLab sends each delivery
# through Gitlab::HTTP, HTTParty's Net::HTTP with no connection kept (gitlabhq lib/gitlab/http.rb),
# and the connections then spread over gunicorn's workers request by request. Kept alive, wrk's
# 16 connections are accepted once, by whichever worker wakes first: 12/4, 13/3, 1/15 and 10/6
# per worker in four runs of the bare app here, 3,100 to 5,300 req/s (one worker, one core),
# which decided a round's ratio more than the app did.
CLOSE = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "Redis":
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--daemonize", "yes", "--dir", str(self.directory),
                        "--pidfile", str(self.directory / "redis.pid"),
                        "--logfile", str(self.directory / "redis.log"), "--save", "",
                        "--appendonly", "yes", "--appendfsync", "always"], check=True)
        for _ in range(500):
            if self.cli("PING") == "PONG":
                return self
            time.sleep(0.01)
        raise SystemExit(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                              text=True).stdout.strip()

    def pid(self) -> int:
        return int((self.directory / "redis.pid").read_text())

    def __exit__(self, *exc) -> None:
        """SIGTERM, then wait until it is gone: redis-server writes its AOF as it stops, and
        the temporary directory it writes in is removed right after."""
        pid = self.pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not running(pid):  # not a zombie either (tests.support.redis_server)
                return
            time.sleep(0.05)  # awaiting the exit of a process we started


class Gunicorn:
    def __init__(self, app: str, env: dict[str, str], log: Path, *extra: str):
        self.port, self.app, self.env, self.log, self.extra = free_port(), app, env, log, extra
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Gunicorn":
        env = self.env | {"CI_AUTOSCALER_BIND": f"127.0.0.1:{self.port}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py", *self.extra,
             self.app], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"))
        deadline = time.monotonic() + 30
        while True:  # awaiting readiness of a process we started
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gunicorn {self.app} did not start; see {self.log}")
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The master and its workers."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [self.proc.pid, *map(int, children.split())]

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


WRK_RUNS = itertools.count(1)  # each wrk run's number: its pushes' commits are its own


def wrk(url: str, *, seconds: int, connections: int, copies: int = 1, rate: float = 0,
        run: str) -> dict:
    env = os.environ | {"INGEST_BODY": str(FIXTURE), "INGEST_TOKEN": TOKEN,
                        "INGEST_SEQ": str(next(WRK_RUNS)),
                        "INGEST_COPIES": str(copies), "INGEST_RATE": str(rate),
                        "INGEST_RUN": run, "INGEST_CLOSE": "1" if CLOSE else "0"}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
           "-s", str(ROOT / "bench" / "ingest.lua"), f"{url}/webhooks/gitlab"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:  # its own words (a Lua error, a refused connection), not a traceback
        raise SystemExit(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    out = done.stdout
    line = next(line for line in out.splitlines() if line.startswith("INGEST "))
    result = json.loads(line.removeprefix("INGEST "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def errors(result: dict, expected: set[str]) -> int:
    sockets = sum(result[k] for k in ("connect", "read", "write", "timeout"))
    return sockets + sum(n for status, n in result["statuses"].items() if status not in expected)


def settle(redis: Redis, key: str = INTAKE_KEY) -> None:
    """Wait until the list has stopped growing for 0.5 s: when wrk stops, requests it sent
    may still wait in gunicorn's listen backlog, and are served after it has gone."""
    last, stable_since = None, time.monotonic()
    while time.monotonic() - stable_since < 0.5:
        now = redis.cli("LLEN", key)
        if now != last:
            last, stable_since = now, time.monotonic()
        time.sleep(0.05)


def make_jobs(redis: Redis) -> tuple[int, float]:
    """Run the worker's mover (workers.engine.intake) over the intake, in this process: how many jobs
    are in the queue after it, and how many records it turned into jobs a second."""
    import redis as redis_py

    from workers.adapters.redis_state import RedisState
    from workers.engine.intake import Mover

    connection = redis_py.Redis.from_url(redis.url)
    started = time.perf_counter()
    made = Mover(RedisState(connection)).drain()
    elapsed = time.perf_counter() - started
    jobs = connection.llen(QUEUE_KEY)
    connection.close()
    return jobs, made / elapsed if made else 0.0


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (a process gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def busy_seconds() -> float:
    """CPU time the whole machine spent not idle (every core, every process, the kernel)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


class MoverProcess:
    """The worker's mover (workers.engine.intake.Mover.run) in a process of its own, as a worker
    runs it, on the same machine: the pushes become jobs while the load goes on."""

    SCRIPT = ("import os, signal, threading, redis\n"
              "from workers.adapters.redis_state import RedisState\n"
              "from workers.engine.intake import Mover\n"
              "stop = threading.Event()\n"
              "signal.signal(signal.SIGTERM, lambda *_: stop.set())\n"
              "state = RedisState(redis.Redis.from_url(os.environ['REDIS_URL']))\n"
              "Mover(state, block_seconds=0.2).run(stop)\n")

    def __init__(self, redis: Redis):
        self.redis = redis

    def __enter__(self) -> "MoverProcess":
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT], cwd=ROOT,
                                     env=os.environ | {"REDIS_URL": self.redis.url})
        return self

    def caught_up(self) -> None:
        """Wait until the intake is empty and the queue has stopped growing."""
        deadline = time.monotonic() + 120
        while int(self.redis.cli("LLEN", INTAKE_KEY)) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a list another process drains
        settle(self.redis, QUEUE_KEY)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(name: str, server: "Gunicorn", args, *, copies: int = 1, expected: set[str],
            redis: Redis | None, tag: str, mover: bool = False, full: dict | None = None) -> dict:
    """Full load, then half of that rate; the intake checked against the 202s after each.
    At full load, the CPU time per request of the web server (gunicorn and its workers), of
    redis-server, and of the whole machine (wrk and the kernel's networking included).
    With `mover`, a worker's mover makes the pushes jobs during the load, on the same cores.
    With `full`, the full load was measured already (interleaved()): half rate only."""
    out = {"max": full} if full else {}
    for phase in ("half",) if full else ("max", "half"):
        if redis:
            redis.cli("FLUSHALL")
        rate = out["max"]["rps"] / 2 if phase == "half" else 0
        pids = server.pids()
        redis_pid = [redis.pid()] if redis else []
        with MoverProcess(redis) if mover and redis else contextlib.nullcontext() as moving:
            before = cpu_seconds(pids), cpu_seconds(redis_pid), busy_seconds()
            result = wrk(server.url, seconds=args.seconds, connections=args.connections,
                         copies=copies, rate=rate, run=f"{tag}-{name}-{phase}")
            after = cpu_seconds(pids), cpu_seconds(redis_pid), busy_seconds()
            if moving:
                moving.caught_up()
        result["cpu_us"] = [(a - b) / result["requests"] * 1e6 for a, b in zip(after, before)]
        result["errors"] = errors(result, expected)
        if redis:
            check_stored(redis, result, args.connections, moving=bool(moving))
        out[phase] = result
        print(f"  {name:10} {phase:4}: {result['rps']:7.0f} req/s  p50 {result['p50_us'] / 1e3:6.2f}"
              f" ms  p99 {result['p99_us'] / 1e3:6.2f} ms  statuses {result['statuses']}"
              f"  errors {result['errors']}", flush=True)
    return out


def check_stored(redis: Redis, result: dict, in_flight: int, *, moving: bool = False) -> None:
    """Count as errors what the webhook's answers and Redis disagree on, after a load.
    A 202 without its event stored would break the durable-enqueue rule: an error. An event
    without a 202 read is a request still in flight when wrk stopped: at most `in_flight`
    (one per connection and wrk run). Then the worker's part, after the load (not measured
    against the baseline): the mover makes every stored event a provision job, or it is an
    error. (With a mover running along, it has made them all already.)"""
    settle(redis)
    stored = int(redis.cli("LLEN", INTAKE_KEY)) + (int(redis.cli("LLEN", QUEUE_KEY))
                                                   if moving else 0)
    result["stored"] = stored
    result["errors"] += max(0, result["statuses"].get("202", 0) - stored)
    result["errors"] += max(0, stored - result["statuses"].get("202", 0) - in_flight)
    result["jobs"], result["mover_rps"] = make_jobs(redis)
    if moving:
        result["mover_rps"] = 0.0
    result["errors"] += abs(stored - result["jobs"])


def interleaved(bare: "Gunicorn", web: "Gunicorn", args, redis: Redis, tag: str) -> dict:
    """Full load on the bare app and on the webhook in turns, `args.slices` slices each, in
    the order ABBA ABBA...: the machine's own speed drifts (a shared VM: the bare app's rate
    moved from 3,096 to 4,700 req/s between rounds of one run, its CPU per request from 357 to
    453 us), and measured 20 s apart the two apps met different machines. In turns of a
    second or two both meet the same drift, and a linear one cancels out. Each app's slices
    are added up into one result (requests, time, answers, CPU), as measure() gives it."""
    seconds = max(1, args.seconds // args.slices)
    slices: dict[str, list[dict]] = {"bare": [], "web": []}
    redis.cli("FLUSHALL")
    for i in range(args.slices):
        pair = (("bare", bare), ("web", web)) if i % 2 == 0 else (("web", web), ("bare", bare))
        for name, server in pair:
            pids, redis_pid = server.pids(), [redis.pid()] if name == "web" else []
            before = cpu_seconds(pids), cpu_seconds(redis_pid), busy_seconds()
            result = wrk(server.url, seconds=seconds, connections=args.connections,
                         run=f"{tag}-{name}-max{i}")
            after = cpu_seconds(pids), cpu_seconds(redis_pid), busy_seconds()
            result["cpu_s"] = [a - b for a, b in zip(after, before)]
            slices[name].append(result)
    out = {}
    for name, parts in slices.items():
        total = {"requests": sum(p["requests"] for p in parts),
                 "duration_us": sum(p["duration_us"] for p in parts),
                 "statuses": {}, "slices": len(parts)}
        for key in ("connect", "read", "write", "timeout"):
            total[key] = sum(p[key] for p in parts)
        for part in parts:
            for status, n in part["statuses"].items():
                total["statuses"][status] = total["statuses"].get(status, 0) + n
        total["rps"] = total["requests"] / (total["duration_us"] / 1e6)
        total["cpu_us"] = [sum(p["cpu_s"][k] for p in parts) / total["requests"] * 1e6
                           for k in range(3)]
        # latency at full load is not reported (a closed loop's is its queue): the middle
        # slice's, for the progress line only
        total["p50_us"], total["p99_us"] = (sorted(p[k] for p in parts)[len(parts) // 2]
                                            for k in ("p50_us", "p99_us"))
        total["errors"] = errors(total, {"204"} if name == "bare" else {"202"})
        if name == "web":
            check_stored(redis, total, args.connections * len(parts))
        out[name] = total
        label = "baseline" if name == "bare" else "webhook"
        print(f"  {label:10} max : {total['rps']:7.0f} req/s  in {len(parts)} slices of "
              f"{seconds} s  statuses {total['statuses']}  errors {total['errors']}", flush=True)
    return out


def one_round(args, env: dict[str, str], redis: Redis, tmp: Path, *, tag: str) -> dict:
    row = {}
    with Gunicorn("ingest_bare:app", env, tmp / "bare.log", "--pythonpath", "bench") as bare, \
            Gunicorn("service.wsgi:app", env, tmp / "web.log") as web:
        wrk(bare.url, seconds=args.warmup, connections=args.connections, run=f"warm{tag}")
        wrk(web.url, seconds=args.warmup, connections=args.connections, run=f"warm{tag}")
        settle(redis)
        full = interleaved(bare, web, args, redis, tag) if args.slices > 1 else {}
        row["bare"] = measure("baseline", bare, args, expected={"204"}, redis=None, tag=tag,
                              full=full.get("bare"))
        row["web"] = measure("webhook", web, args, expected={"202"}, redis=redis, tag=tag,
                             full=full.get("web"))
        row["dup"] = measure("duplicates", web, args, copies=2, expected={"202", "200"},
                             redis=redis, tag=tag)
        row["mov"] = measure("with mover", web, args, expected={"202"}, redis=redis, tag=tag,
                             mover=True)
    row["load"] = os.getloadavg()[0]
    return row


def run_rounds(args, tmp: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}
    metrics_dir = tmp / "prom"
    metrics_dir.mkdir()
    rounds = []
    with Redis(tmp) as redis:
        env |= {"REDIS_URL": redis.url, "GITLAB_WEBHOOK_TOKEN": TOKEN,
                "JENKINS_WEBHOOK_TOKEN": "bench-jenkins-token-77aa01",
                "CI_AUTOSCALER_CONFIG": str(ROOT / "examples" / "ci-autoscaler.yaml"),
                "CI_AUTOSCALER_SPOOL_DIR": str(tmp / "spool"),  # not the machine's default
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        for i in range(args.rounds):
            for n, (workers, extra, fsync) in enumerate(
                    (w, g, f) for w in args.workers for g in args.gunicorn_args
                    for f in args.appendfsync):
                label = ", ".join(filter(None, (workers and f"WEB_CONCURRENCY={workers}",
                                                extra))) or "as configured"
                label += f", appendfsync {fsync}"
                print(f"round {i + 1}/{args.rounds}, {label}", flush=True)
                changes = ({"WEB_CONCURRENCY": workers} if workers else {}) | (
                    {"GUNICORN_CMD_ARGS": extra} if extra else {})
                if redis.cli("CONFIG", "SET", "appendfsync", fsync) != "OK":
                    raise SystemExit(f"redis-server refused appendfsync {fsync}")
                rounds.append(one_round(args, env | changes, redis, tmp, tag=f"r{i}s{n}")
                              | {"workers": label})
    return rounds


def profile(requests: int, tmp: Path) -> str:
    """cProfile of the real app called in-process (its WSGI callable, no HTTP server) on
    distinct deliveries, against a real redis-server: where the app's own time goes."""
    import cProfile
    import io
    import pstats

    from werkzeug.test import EnvironBuilder

    from service.app import create_app
    from workers.telemetry import logs
    from workers.config.settings import Settings

    original = json.loads(FIXTURE.read_bytes())["checkout_sha"].encode()
    template = FIXTURE.read_bytes()
    with Redis(tmp) as redis, open(os.devnull, "w") as devnull:
        logs.configure(stream=devnull)
        app = create_app(Settings(redis_url=redis.url, gitlab_webhook_token=TOKEN,
                                  jenkins_webhook_token="unused-here",
                                  spool_dir=str(tmp / "spool"),
                                  config_path=str(ROOT / "examples" / "ci-autoscaler.yaml")))

        def call(i: int, target=None, expected: str = "202") -> None:
            environ = EnvironBuilder(
                path="/webhooks/gitlab", method="POST",
                data=template.replace(original, b"c%039x" % i),
                headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": TOKEN,
                         "X-Gitlab-Event-UUID": f"p-{i}", "Content-Type": "application/json"},
            ).get_environ()
            status = []
            wsgi = target.wsgi_app if target is not None else app.wsgi_app
            b"".join(wsgi(environ, lambda s, h, e=None: status.append(s)))
            assert status[0].startswith(expected), status

        for i in range(200):  # warm
            call(i)
        started = time.perf_counter()
        for i in range(200, 200 + requests):
            call(i)
        plain_us = (time.perf_counter() - started) / requests * 1e6
        from ingest_bare import app as bare  # the baseline, on the same harness
        started = time.perf_counter()
        for i in range(requests):
            call(i, bare, "204")
        bare_us = (time.perf_counter() - started) / requests * 1e6
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(200 + requests, 200 + 2 * requests):
            call(i)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    text = out.getvalue()
    text = text[text.index("   ncalls"):].replace(str(ROOT) + "/", "").replace(
        sys.prefix + "/lib/python3.11/site-packages/", "")
    return (f"In-process, {requests} distinct deliveries: {plain_us:.0f} us per request "
            f"without the profiler, request building included (the bare app on the same "
            f"harness: {bare_us:.0f} us). By tottime:\n\n```\n"
            + text.rstrip() + "\n```\n")


def check_args(args) -> str:
    """What makes the run fail, said before it starts ("" if nothing): counts below 1, the
    push fixture missing (CI_AUTOSCALER_FIXTURES), --out in a directory that does not exist."""
    for name in ("seconds", "connections", "slices", "rounds"):
        if getattr(args, name) < 1:
            return f"--{name}: at least 1"
    if args.warmup < 0 or args.profile < 0:
        return "--warmup and --profile: at least 0"
    if not FIXTURE.is_file():
        return (f"{FIXTURE}: no such file; set CI_AUTOSCALER_FIXTURES to the directory of the "
                "webhook fixtures (../shared/fixtures/webhooks)")
    if args.out and not args.out.parent.is_dir():
        return f"--out {args.out}: no directory {args.out.parent}"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--slices", type=int, default=5,
                        help="the bare app's and the webhook's full load measured in turns, "
                             "this many slices of seconds/slices each (1: one after the other)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each app "
                        "is measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=lambda text: text.split(","), default=[""],
                        help="comma-separated WEB_CONCURRENCY values to compare in each round "
                             "(default: as the shipped config has it)")
    parser.add_argument("--gunicorn-args", type=lambda text: text.split(";"), default=[""],
                        help="semicolon-separated GUNICORN_CMD_ARGS to compare in each round, "
                             "for both apps alike; an empty one is the shipped config, e.g. "
                             "';--worker-class sync --threads 1'")
    parser.add_argument("--appendfsync", type=lambda text: text.split(","), default=["always"],
                        help="comma-separated AOF fsync policies of redis-server to compare in "
                             "each round (CONFIG SET between them): always (the chart's "
                             "default: a 202 is on disk) and/or everysec")
    parser.add_argument("--connection", choices=("close", "keep-alive"), default="close",
                        help="a new connection per request, as GitLab sends deliveries "
                             "(default), or wrk's connections kept alive")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", type=int, default=2000, metavar="N",
                        help="profile N requests in-process after the rounds (0: none)")
    args = parser.parse_args()
    refused = check_args(args)
    if refused:  # before minutes of load, not after them (--out) or as wrk's Lua panic
        parser.error(refused)
    global CLOSE
    CLOSE = args.connection == "close"
    for tool in ("wrk", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk redis-server")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        rounds = run_rounds(args, Path(tmp))
        profiled = ""
        if args.profile:
            (Path(tmp) / "profile").mkdir()
            profiled = profile(args.profile, Path(tmp) / "profile")
    text = report(args, rounds, started)
    if profiled:
        text += "\n## Profile\n\n" + profiled
    print(text)
    if args.out:
        args.out.write_text(text)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
