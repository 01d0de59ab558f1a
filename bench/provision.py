"""Provision benchmark: a burst of pushes, push -> Jenkins build trigger, through the Procfile's
processes, against fakes that answer as slowly as the real servers.

Run it from the project root (a script, not a test; pytest never collects it):

    .venv/bin/python bench/provision.py [--pushes 200] [--seconds 10] [--rounds 1]

Started by the script, on this machine:
- a redis-server (its own port and directory);
- kmock's Kubernetes API (tests/support/kmock_cluster.py) with `--nodes` nodes (50), behind
  tests/support/fault_proxy.py adding `--kube-latency` (30 ms) to every call but the watches;
- the Jenkins fake (tests/support/jenkins_fake.py) answering every call after
  `--jenkins-latency` (100 ms), as a controller whose API calls take 50-200 ms;
- the Procfile's web (gunicorn, service/gunicorn.conf.py) and worker (`ci-autoscaler worker`)
  processes, configured from the environment as in production.

Each round sends `--pushes` GitLab pushes (distinct commits of the real payload) to the web
process at an even pace over `--seconds` (0: as fast as the sender goes), and waits for a
Jenkins build of each. Push -> trigger is the time from sending the push to the build request
reaching Jenkins (the fake's own clock; one machine). Builds per second: the pushes over the
time from the first push sent to the last build triggered.

Cases, each in every round (fresh Redis, cluster, Jenkins and processes per case):
- before issue 19 (the baseline the issue names: "today's design" when it was filed): the web
  and worker of commit `--before` (4ddd807, the last before issue 19's work), extracted with
  `git archive` into a temporary directory and run from there (PYTHONPATH and working directory
  the old tree, this venv's packages; the script checks the modules are the old tree's), against
  the same Redis, kmock, proxy and Jenkins fake with the same latencies: one provision at a
  time, python-jenkins' create_node (4-5 requests), a pod read before its create, the pod then
  the trigger; `--baseline-pushes` of them (60: a serial worker needs minutes for 200);
- serial: this checkout's worker at CI_AUTOSCALER_PROVISION_CONCURRENCY=1, the same pushes as
  the case above: one provision at a time with issue 19's call cuts (one POST per node, no pod
  read, the pod created while the build is triggered);
- one worker at `--concurrency` (16), then two worker processes at that concurrency, with
  `--pushes` pushes; and, with `--saturate`, the same two cases with every push sent at once.

Where the workers' CPU goes and how a change moves it:
- `--against COMMIT`: each one- and two-worker case also runs from that commit's tree
  (extracted as for the case before issue 19), right after this checkout's, so the two
  alternate over the rounds on the same machine; the report gives builds/s and the workers'
  CPU a build of each over its twin;
- `--profile RATE` samples each worker process with py-spy (`pip install py-spy` into the
  venv) at RATE a second over the burst, only samples holding the GIL: collapsed stacks,
  `worker-N.collapsed` in each case's directory;
- `--keep DIR` keeps each case's directory (logs, profiles, and `redis-commands.txt`: Redis
  commands a build by name, from INFO commandstats).

kmock keeps only the requests it is answering (KubeServer.keep_in_flight_only): it matches
each request by walking its history once per reaction, and that walk was most of this
script's own CPU; the answers are the same (tests/integration/test_kmock_in_flight.py).

The table (printed, and written to `bench/results/provision.md` with `--out`) gives each case
of each round, its ratios to both baselines of the same round, and the ratios that issue 19's
"done when" names: one worker over the design before it, two workers over one.
"""

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.jenkins_fake import JenkinsFake  # noqa: E402
from tests.support.kmock_cluster import _write_kubeconfig, running_kube  # noqa: E402
from workers.core.routing import BUILD_KEY_PARAMETER  # noqa: E402

FIXTURE = Path(os.environ.get("CI_AUTOSCALER_FIXTURES", ROOT.parent / "shared" / "fixtures"
                              / "webhooks")) / "gitlab_push_real_lrz.json"
GITLAB_TOKEN = "bench-gitlab-token-5a1e07"
JENKINS_TOKEN = "bench-jenkins-token-9c3b44"
NAMESPACE = "ci-agents"
RESULTS = ROOT / "bench" / "results" / "provision.md"
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 250m, default: 250m, max: 250m}
    memory: {min: 256Mi, default: 256Mi, max: 256Mi}
"""
READY_SECONDS = 60
# The last commit before issue 19's work (git log 4ddd807~3..a8ae978): one provision at a time,
# python-jenkins' create_node, a pod read before the create, the pod then the trigger.
BEFORE_COMMIT = "4ddd807"
BEFORE = "before issue 19"
OLD_TREE = Path("<the --before commit, extracted>")
AGAINST_TREE = Path("<the --against commit, extracted>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, *, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
    return value


@dataclass
class Case:
    name: str
    workers: int
    concurrency: int
    pushes: int
    seconds: float
    tree: Path = ROOT  # the code the web and worker processes run (ROOT: this checkout)


@dataclass
class Result:
    case: Case
    latencies: list[float]  # push -> trigger, seconds, one per push
    elapsed: float  # first push sent -> last build triggered
    cpu: dict[str, float] | None = None  # CPU seconds by process, first push to last trigger
    busy: float | None = None  # the machine's busy share over the same time (all its work)
    calls: dict[str, float] | None = None  # per build: Redis commands, API and Jenkins calls

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.elapsed

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def redis_server(directory: Path):
    port = free_port()
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--daemonize",
                    "yes", "--dir", str(directory), "--pidfile", str(directory / "redis.pid"),
                    "--logfile", str(directory / "redis.log"), "--save", "",
                    "--appendonly", "no"], check=True)
    import redis
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), timeout=READY_SECONDS, what="redis-server")
    try:
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((directory / "redis.pid").read_text()), signal.SIGTERM)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def extract(commit: str, into: Path) -> Path:
    """The tree of `commit` of this repository (git archive: no network), for a case that runs
    an earlier design's processes. A clone without that commit (a shallow one) stops the
    run with what to do, rather than a traceback."""
    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                           capture_output=True)
    if known.returncode != 0:
        raise SystemExit(f"commit {commit} is not in this clone (a shallow clone?): "
                         "`git fetch --unshallow`, or --before none to leave that case out")
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def imported_from(tree: Path, env: dict[str, str]) -> str:
    """Where the processes' modules come from with this environment: the tree's own, or the
    case would measure this checkout under another name."""
    # the job handler's module, by the tree's layout (workers/engine/ since the engine's
    # package; this venv's editable install would answer an import of the other)
    jobs = "workers.engine.jobs" if (tree / "workers/engine/jobs.py").is_file() else "workers.jobs"
    out = subprocess.run(
        [sys.executable, "-c", f"import service.cli, service.wsgi, {jobs}, workers.tasks; "
         f"print(service.cli.__file__, service.wsgi.__file__, {jobs}.__file__, "
         "workers.tasks.__file__)"], cwd=tree, env=env, check=True, capture_output=True,
        text=True).stdout.split()
    outside = [f for f in out if not Path(f).resolve().is_relative_to(tree.resolve())]
    assert not outside, f"modules imported from outside {tree}: {outside}"
    return " ".join(out)


def run_case(case: Case, args, work: Path) -> Result:
    """One case on fresh parts: Redis, kmock, the proxy, the Jenkins fake, the processes."""
    work.mkdir(parents=True)
    (work / "redis").mkdir()
    config = work / "config.yaml"
    config.write_text(CONFIG)
    with redis_server(work / "redis") as (redis_url, client), \
            running_kube(work) as kube, JenkinsFake() as jenkins:
        # kmock walks its history once per reaction to match each request: only the requests
        # in flight are kept, or its CPU per request grows with the run (same answers).
        kube.keep_in_flight_only()
        for i in range(args.nodes):
            kube.add_node(f"node-{i:02d}", cpu="32", memory="128Gi")
        jenkins.latency_seconds = args.jenkins_latency
        proxy = FaultProxy(kube.url, ratio=0.0, seed=0, kubernetes=True,
                           latency_seconds=args.kube_latency).start()
        kubeconfig = work / "kubeconfig-proxy"
        _write_kubeconfig(kubeconfig, proxy.url)
        port = free_port()
        multiproc = work / "prometheus"
        multiproc.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROMETHEUS_", "CI_AUTOSCALER_")) and k != "PORT"}
        env |= {"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
                "REDIS_URL": redis_url, "KUBECONFIG": str(kubeconfig),
                "AGENT_NAMESPACE": NAMESPACE, "CI_AUTOSCALER_CONFIG": str(config),
                "JENKINS_URL": jenkins.url, "JENKINS_USER": jenkins.user,
                "JENKINS_API_TOKEN": jenkins.token, "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
                "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN, "CI_AUTOSCALER_BIND": f"127.0.0.1:{port}",
                "CI_AUTOSCALER_PROVISION_CONCURRENCY": str(case.concurrency),
                "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
        if case.tree != ROOT:  # an older tree's modules first, this venv's packages after
            env["PYTHONPATH"] = str(case.tree)
            print(f"{case.name}: modules from {imported_from(case.tree, env)}", flush=True)
        procs = []
        try:
            with open(work / "web.log", "w") as log:  # the Procfile's web line
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py",
                     "service.wsgi:app"], cwd=case.tree, env=env, stdout=log, stderr=log,
                    start_new_session=True))
            for i in range(case.workers):  # the Procfile's worker line
                with open(work / f"worker-{i}.log", "w") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "service.cli", "worker", "--log-level",
                         "WARNING"], cwd=case.tree, env=env, stdout=log, stderr=log,
                        start_new_session=True))
            wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"),
                     timeout=READY_SECONDS, what="the web process")
            wait_for(lambda: len(client.smembers("rq:workers")) >= case.workers,
                     timeout=READY_SECONDS, what="the workers registered")
            cpu = _cpu(procs, client)
            busy = _machine_busy()
            before = _calls(client, proxy, jenkins)
            commands = client.info("commandstats")
            spies = _spy(procs[1:], args.profile, work) if args.profile else []
            result = _burst(case, args, port, jenkins)
            _unspy(spies)
            result.cpu = {k: v - cpu[k] for k, v in _cpu(procs, client).items()}
            result.busy = _machine_busy(since=busy)
            after = _calls(client, proxy, jenkins)
            result.calls = {k: (after[k] - before[k]) / case.pushes for k in after}
            _write_commands(work / "redis-commands.txt", commands,
                            client.info("commandstats"), case.pushes)
            return result
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            proxy.stop()


def _spy(workers: list[subprocess.Popen], rate: int, work: Path) -> list[subprocess.Popen]:
    """py-spy (if installed) sampling each worker process over the burst, its stacks written
    as collapsed lines (`--format raw`) beside the case's logs: where a worker's CPU goes.
    Only the samples holding the GIL (`--gil`): CPU, not threads waiting on a socket."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return [subprocess.Popen([spy, "record", "--pid", str(w.pid), "--rate", str(rate), "--gil",
                              "--nonblocking", "--format", "raw",
                              "--output", str(work / f"worker-{i}.collapsed")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, w in enumerate(workers)]


def _unspy(spies: list[subprocess.Popen]) -> None:
    for spy in spies:  # SIGINT: py-spy writes its file and exits
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(timeout=60)


def _write_commands(path: Path, before: dict, after: dict, builds: int) -> None:
    """Redis commands a build by name, most first (INFO commandstats over the burst; the
    web's and the workers' alike): which calls make up the count in the table."""
    counts = {name.removeprefix("cmdstat_"): (v["calls"] - before.get(name, {}).get("calls", 0))
              / builds for name, v in after.items()}
    path.write_text("".join(f"{n:8.2f} {name}\n" for name, n in
                            sorted(counts.items(), key=lambda kv: -kv[1]) if n))


def _calls(client, proxy: FaultProxy, jenkins: JenkinsFake) -> dict[str, int]:
    """Calls so far: Redis commands (INFO commandstats, the web's and the workers' alike),
    requests to the Kubernetes API (but watches) and to Jenkins. Work after the last trigger
    (the statuses written as the provisions return) may be left out: a lower bound."""
    stats = client.info("commandstats")
    return {"redis": sum(v["calls"] for v in stats.values()), "kubernetes": proxy.requests,
            "jenkins": len(jenkins.requests)}


def _cpu(procs: list[subprocess.Popen], client) -> dict[str, float]:
    """CPU seconds so far: the web (gunicorn and its workers), the worker processes, this
    process (the fakes and the sender), redis-server."""
    info = client.info("cpu")
    return {"web": _cpu_seconds(procs[0].pid, children=True),
            "workers": sum(_cpu_seconds(p.pid) for p in procs[1:]),
            "fakes and sender": time.process_time(),
            "redis": info["used_cpu_user"] + info["used_cpu_sys"]}


def _machine_busy(since: tuple[int, int] | None = None):
    """The machine's busy and total jiffies (/proc/stat, every core, every process: the other
    work on it too); with `since`, the busy share of the time since then."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total, idle = sum(fields[:8]), fields[3] + fields[4]  # idle and iowait
    if since is None:
        return total - idle, total
    return (total - idle - since[0]) / max(1, total - since[1])


def _cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a running process (and of its children: gunicorn's
    workers), from /proc."""
    total = 0.0
    pids = [pid]
    if children:
        with contextlib.suppress(OSError):
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _burst(case: Case, args, port: int, jenkins: JenkinsFake) -> Result:
    body = json.loads(FIXTURE.read_text())
    sent: dict[str, float] = {}
    url = f"http://127.0.0.1:{port}/webhooks/gitlab"
    gap = case.seconds / case.pushes if case.seconds else 0.0
    start = time.time()
    for n in range(case.pushes):
        due = start + n * gap
        if (pause := due - time.time()) > 0:
            time.sleep(pause)  # the sender's pace, not a wait for the code under test
        body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
            "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
            "X-Gitlab-Event-UUID": f"bench-{n}", "Content-Type": "application/json"})
        at = time.time()
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        sent[answer["build_key"]] = at
    wait_for(lambda: len(jenkins.builds) >= case.pushes, timeout=args.timeout,
             what=f"{case.pushes} builds triggered ({case.name})", interval=0.05)
    triggered = {b.parameters[BUILD_KEY_PARAMETER]: b.queued_at for b in jenkins.builds}
    assert len(triggered) == len(jenkins.builds) == case.pushes, "a push built twice"
    latencies = [triggered[key] - at for key, at in sent.items()]
    return Result(case, latencies, max(triggered.values()) - min(sent.values()))


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.system()} {platform.release()}, {cpus} CPUs ({model}), "
            f"Python {platform.python_version()}, load average at start {load}")


def _ratio(result: Result, baseline: Result | None) -> str:
    return f"{result.per_second / baseline.per_second:.1f}" if baseline else "-"


def _against(results: list[list[Result]], commit: str) -> list[str]:
    """Each case over its twin from the --against commit: builds/s, and the workers' CPU
    seconds a build (lower is better: a ratio under 1 is less CPU than the commit's)."""
    out = []
    for n, round_results in enumerate(results, 1):
        by = {r.case.name: r for r in round_results}
        for r in round_results:
            twin = by.get(f"{r.case.name} @ {commit}")
            if twin is None:
                continue
            cpu = (r.cpu or {}).get("workers", 0) / max((twin.cpu or {}).get("workers", 0), 1e-9)
            out.append(f"round {n}, {r.case.name}: builds/s x{r.per_second / twin.per_second:.2f}"
                       f", workers' CPU a build x{cpu:.2f}")
    return out


def report(results: list[list[Result]], args, command: str, started: str, where: str) -> str:
    lines = [
        "# Provision benchmark: push -> Jenkins build trigger", "",
        f"- machine: {where}",
        f"- command: `{command}`",
        f"- date: {started}",
        f"- fakes: Jenkins {args.jenkins_latency * 1000:.0f} ms per call, Kubernetes "
        f"{args.kube_latency * 1000:.0f} ms per call (kmock behind a latency proxy), "
        f"{args.nodes} nodes",
        *([f"- {BEFORE}: the web and worker of commit {args.before} (the last before issue "
           "19's work: one provision at a time, python-jenkins' create_node, a pod read before "
           "its create, the pod then the trigger), run from its own tree against the same "
           f"fakes; x {BEFORE[:6]}: builds/s over this case's, same round"]
          if args.before != "none" else []),
        *([f"- CASE @ {args.against}: the case's web and worker of commit {args.against}, run "
           "from its own tree right after this checkout's, against the same fakes"]
          if args.against else []),
        "- serial: this checkout's worker at CI_AUTOSCALER_PROVISION_CONCURRENCY=1 (issue 19's "
        "call cuts, one provision at a time); x serial: builds/s over this case's, same round",
        "- calls per build: Redis commands, Kubernetes API requests (not watches), Jenkins "
        "requests, from the first push to the last trigger; CPU s: each part's CPU seconds "
        "over the same time (fakes: this process, the fakes and the sender); machine busy: "
        f"the share of all {os.cpu_count()} cores busy then, whatever ran them", "",
        "| round | case | workers | concurrency | pushes | sent over s | p50 s | p95 s | max s "
        f"| builds/s | x {BEFORE[:6]} | x serial | CPU s: web, workers, fakes, redis "
        "| machine busy | calls per build: redis, kube, jenkins |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, round_results in enumerate(results, 1):
        by = {r.case.name: r for r in round_results}
        for r in round_results:
            c = r.case
            lines.append(
                f"| {n} | {c.name} | {c.workers} | {c.concurrency} | {c.pushes} | "
                f"{c.seconds:g} | {r.quantile(0.5):.2f} | {r.quantile(0.95):.2f} | "
                f"{max(r.latencies):.2f} | {r.per_second:.1f} | "
                f"{_ratio(r, by.get(BEFORE))} | {_ratio(r, by.get('serial'))} | "
                f"{', '.join(f'{v:.1f}' for v in (r.cpu or {}).values())} | "
                f"{f'{r.busy:.0%}' if r.busy is not None else '-'} | "
                f"{', '.join(f'{v:.1f}' for v in (r.calls or {}).values())} |")
    lines.append("")
    for title, pairs in (
            (f"One worker against the design {BEFORE} (serial)",
             [(BEFORE, "one worker"), (BEFORE, "one worker, at once")]),
            ("Two workers against one", [("one worker", "two workers"),
                                         ("one worker, at once", "two workers, at once")])):
        ratios = []
        for n, round_results in enumerate(results, 1):
            by = {r.case.name: r for r in round_results}
            ratios += [f"round {n}, {case} / {base}: "
                       f"{by[case].per_second / by[base].per_second:.2f}"
                       for base, case in pairs if base in by and case in by]
        if ratios:
            lines += [f"{title}, builds/s, same round: " + "; ".join(ratios), ""]
    if args.against:
        lines += [f"This checkout against {args.against}, same round (over the {args.against} "
                  "case's): " + "; ".join(_against(results, args.against)), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--pushes", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--baseline-pushes", type=int, default=60)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--jenkins-latency", type=float, default=0.100)
    p.add_argument("--kube-latency", type=float, default=0.030)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--before", default=BEFORE_COMMIT, help="the commit whose web and worker "
                   "run the baseline of the design before issue 19 (git archive of this repo); "
                   "none: leave that case out")
    p.add_argument("--saturate", action="store_true",
                   help="also the one- and two-worker cases with every push sent at once")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a case may take to trigger every build")
    p.add_argument("--cases", help="run only these cases (names separated by semicolons: "
                   "some hold a comma; the serial baseline is always run)")
    p.add_argument("--against", metavar="COMMIT", help="also run each one- and two-worker case "
                   "from this commit's tree (git archive), right after this checkout's, named "
                   "'CASE @ COMMIT': a change's before and after in the same run")
    p.add_argument("--profile", type=int, metavar="RATE", help="sample each worker with "
                   "py-spy at RATE a second over the burst; the stacks are kept in --keep")
    p.add_argument("--keep", help="keep each case's logs (and profiles) in this directory")
    p.add_argument("--out", help="write the table here (bench/results/provision.md)")
    args = p.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install -y redis-server)", file=sys.stderr)
        return 2
    command = "python bench/provision.py " + " ".join(sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = machine()  # the load average before the first case, not after the last
    baseline_seconds = args.seconds * args.baseline_pushes / args.pushes
    cases = [Case("serial", 1, 1, args.baseline_pushes, baseline_seconds),
             Case(BEFORE, 1, 1, args.baseline_pushes, baseline_seconds, tree=OLD_TREE),
             Case("one worker", 1, args.concurrency, args.pushes, args.seconds),
             Case("two workers", 2, args.concurrency, args.pushes, args.seconds)]
    if args.saturate:
        cases += [Case("one worker, at once", 1, args.concurrency, args.pushes, 0),
                  Case("two workers, at once", 2, args.concurrency, args.pushes, 0)]
    if args.cases:
        wanted = {name.strip() for name in args.cases.split(";")} | {"serial", BEFORE}
        cases = [c for c in cases if c.name in wanted]
    if args.before == "none":
        cases = [c for c in cases if c.tree != OLD_TREE]
    if args.against:  # each twin right after its case: A B A B over the rounds
        cases = [twin for c in cases for twin in (
            [c, replace(c, name=f"{c.name} @ {args.against}", tree=AGAINST_TREE)]
            if c.workers and c.name not in ("serial", BEFORE) else [c])]
    results: list[list[Result]] = []
    if args.keep:
        Path(args.keep).mkdir(parents=True)  # a new one: each case's directory is made fresh
    with (contextlib.nullcontext(args.keep) if args.keep
          else tempfile.TemporaryDirectory(prefix="bench-provision-")) as tmp:
        if any(c.tree == OLD_TREE for c in cases):
            old = extract(args.before, Path(tmp) / f"tree-{args.before}")
            cases = [replace(c, tree=old) if c.tree == OLD_TREE else c for c in cases]
        if any(c.tree == AGAINST_TREE for c in cases):
            against = extract(args.against, Path(tmp) / f"tree-{args.against}")
            cases = [replace(c, tree=against) if c.tree == AGAINST_TREE else c for c in cases]
        for n in range(args.rounds):
            round_results = []
            for i, case in enumerate(cases):
                result = run_case(case, args, Path(tmp) / f"round-{n}-case-{i}")
                round_results.append(result)
                print(f"round {n + 1} {case.name}: p50 {result.quantile(0.5):.2f}s p95 "
                      f"{result.quantile(0.95):.2f}s max {max(result.latencies):.2f}s, "
                      f"{result.per_second:.1f} builds/s, CPU s "
                      f"{({k: round(v, 2) for k, v in (result.cpu or {}).items()})}, machine "
                      f"busy {result.busy:.0%}, calls per "
                      f"build {({k: round(v, 1) for k, v in (result.calls or {}).items()})}",
                      flush=True)
            results.append(round_results)
    text = report(results, args, command, started, where)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
