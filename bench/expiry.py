"""Redis memory over many finished builds, with and without the expiry of ended builds.

    .venv/bin/python bench/expiry.py                  # 10,000 builds each way, ~4 min on 2 cores
    .venv/bin/python bench/expiry.py --builds 2000 --every 500 --out /tmp/expiry.md

Each build takes the whole real path but the cluster and Jenkins, which are the simulated ones
of the demo (workers.sim): the GitLab push through the web app's /webhooks/gitlab (Flask's test
client: the real handler and push script), the worker's mover, the provision job run by an RQ
SimpleWorker (placement, agent registered, pod created, build triggered), the Jenkins
Notification plugin's STARTED and COMPLETED through /webhooks/jenkins, and the release job.
Every `--every` builds the reconcile pass runs (`reconcile_once`, with `now` a build TTL ahead,
so every build that has ended is due) and `INFO memory` is read: `used_memory`, and the number
of keys.

Two runs on fresh redis-servers: "expiry on" as shipped, and "expiry off" (the same, with the
reconcile pass's expiry left out), the growth a build leaves without it.

Time is shortened twice, and only in this process: delivery ids live 1 s
(CI_AUTOSCALER_DEDUPE_TTL_SECONDS, real time), and RQ keeps a finished job's result 1 s instead
of JOB_RESULT_TTL_SECONDS (3,600): in production both are bounded by the builds of their window
(7 days of deliveries, an hour of jobs), which a run of minutes cannot show; a checkpoint waits
until those keys have expired (polled, not slept) so that what is left is what expiry is for.
"""

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from rq import SimpleWorker  # noqa: E402
from rq.registry import clean_registries  # noqa: E402

from service.app import create_app  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from workers import runtime  # noqa: E402
from workers.engine import reconcile  # noqa: E402
from workers.adapters import redis_state  # noqa: E402
from workers.adapters.capacity_store import CapacityStore  # noqa: E402
from workers.config.config_file import parse_file_config  # noqa: E402
from workers.config.settings import Settings  # noqa: E402
from workers.engine.intake import Mover  # noqa: E402
from workers.sim.cluster import SimCluster, uniform_nodes  # noqa: E402
from workers.sim.jenkins import SimJenkins, notification  # noqa: E402

OUT = ROOT / "bench" / "results" / "expiry.md"
PUSH = json.loads((ROOT / "workers" / "sim" / "data" / "gitlab_push.json").read_text())
TOKEN, JENKINS_TOKEN = "bench-gitlab-token", "bench-jenkins-token"
BATCH = 100  # pushes provisioned at once: the simulated cluster holds them all
BUILD_TTL_SECONDS = 3600
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small,
     parameters: {GIT_COMMIT: "{sha}", GIT_BRANCH: "{branch}", PROJECT: "{project}"}}
templates:
  small:
    cpu: {min: 500m, default: 500m, max: 500m}
    memory: {min: 512Mi, default: 512Mi, max: 512Mi}
"""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(no git)"


def wait_for(check, what: str, timeout: float = 60, left=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; left: {left()}")
        time.sleep(0.05)  # polling keys that Redis expires by itself


def run(builds: int, every: int, *, expire: bool, directory: Path,
        batch: int = BATCH) -> list[dict]:
    server = RedisServer(directory).start()
    connection = redis.Redis.from_url(server.url)
    rows = []
    try:
        settings = Settings(gitlab_webhook_token=TOKEN, jenkins_webhook_token=JENKINS_TOKEN,
                            redis_url=server.url, jenkins_url="http://jenkins.sim",
                            dedupe_ttl_seconds=1, build_ttl_seconds=BUILD_TTL_SECONDS)
        config = parse_file_config(CONFIG, source="bench")
        app = create_app(settings, file_config=config, redis_connection=connection)
        client = app.test_client()
        state = app.extensions["ci_autoscaler"].state
        cluster = SimCluster(uniform_nodes(60, cpu="8", memory="32Gi"))
        jenkins = SimJenkins(cluster=cluster, notify=lambda body: None)
        rt = runtime.Runtime(settings=settings, config=config, state=state, cluster=cluster,
                             jenkins=jenkins, view=cluster,
                             capacity=CapacityStore(connection, prefix=settings.key_prefix))
        runtime.install(rt)
        worker = SimpleWorker([state.queue], connection=connection,
                              serializer=redis_state.SERIALIZER)
        started = time.perf_counter()
        done = 0
        while done < builds:
            for i in range(done, done + batch):
                body = copy.deepcopy(PUSH)
                body["checkout_sha"] = body["after"] = f"{i + 1:040x}"
                answer = client.post("/webhooks/gitlab", json=body, headers={
                    "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": TOKEN,
                    "Idempotency-Key": f"bench-{i}"})
                assert answer.status_code == 202, answer.json
            Mover(state).drain()
            worker.work(burst=True, logging_level="WARNING")
            for build in jenkins.builds[done:done + batch]:
                build.state = "done"  # it ran (the simulated Jenkins' queue forgets it)
                for phase, status in (("STARTED", None), ("COMPLETED", "SUCCESS")):
                    answer = client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                         json=notification(build, phase, status))
                    assert answer.status_code in (200, 202), answer.json
            Mover(state).drain()  # the releases the webhook stored, made jobs
            worker.work(burst=True, logging_level="WARNING")
            done += batch
            if done % every == 0:
                rows.append(checkpoint(rt, connection, done, expire=expire))
        failed = state.queue.failed_job_registry.count
        assert failed == 0, f"{failed} jobs failed"
        assert len(jenkins.builds) == builds and not cluster.list_pods() and not jenkins.nodes
        rows[-1]["seconds"] = time.perf_counter() - started
    finally:
        runtime.install(None)
        connection.close()
        server.stop()
    return rows


def checkpoint(rt: runtime.Runtime, connection: redis.Redis, done: int, *,
               expire: bool) -> dict:
    """The reconcile pass a build TTL ahead; then, once the keys of the shortened windows
    (delivery ids, RQ's finished jobs) have gone by themselves, Redis' memory."""
    now = time.time() + BUILD_TTL_SECONDS + 1
    if expire:
        result = reconcile.reconcile_once(rt, now=now)
    else:
        saved = reconcile.expire_ended
        reconcile.expire_ended = lambda *a, **k: 0
        try:
            result = reconcile.reconcile_once(rt, now=now)
        finally:
            reconcile.expire_ended = saved
    wait_for(lambda: not connection.keys(rt.state.prefix + "delivery:*"),
             "the delivery ids to expire")
    wait_for(lambda: (clean_registries(rt.state.queue) or True)
             and not rt.state.queue.finished_job_registry.count
             and not connection.keys("rq:results:*"), "RQ's finished jobs to expire",
             left=lambda: sorted(k.decode() for k in connection.keys("rq:*"))[:20])
    info = connection.info("memory")
    return {"builds": done, "used_memory": info["used_memory"],
            "redis_version": connection.info("server")["redis_version"],
            "keys": connection.dbsize(), "expired": result["builds_expired"],
            "ended_set": connection.zcard(rt.state.prefix + "ended"),
            "agents": connection.hlen(rt.state.prefix + "agents")}


def table(name: str, rows: list[dict]) -> list[str]:
    base = rows[0]
    lines = [f"### {name}", "",
             "| builds | used_memory (bytes) | vs first row | keys | build states left | "
             "`agents` entries | expired by this pass |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        delta = r["used_memory"] - base["used_memory"]
        lines.append(f"| {r['builds']:,} | {r['used_memory']:,} | {delta:+,} | {r['keys']:,} | "
                     f"{r['builds'] - sum(x['expired'] for x in rows if x['builds'] <= r['builds']):,}"
                     f" | {r['agents']:,} | {r['expired']:,} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--batch", type=int, default=BATCH,
                        help=f"pushes provisioned at once (default {BATCH}); a smaller one "
                             "for a quick run that only shows the bench still works")
    args = parser.parse_args()
    if args.batch < 1 or args.every % args.batch or args.builds % args.every:
        parser.error("--every must be a multiple of --batch, --builds of --every")
    # RQ keeps a finished job's result an hour: a second here (see the docstring).
    redis_state.JOB_RESULT_TTL_SECONDS = 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, expire in (("expiry on", True), ("expiry off", False)):
            results[name] = run(args.builds, args.every, expire=expire,
                                directory=Path(tmp) / name.replace(" ", "-"),
                                batch=args.batch)
            print(f"{name}: {results[name][-1]['used_memory']:,} bytes after "
                  f"{args.builds:,} builds ({results[name][-1]['seconds']:.0f}s)", flush=True)
    on, off = results["expiry on"], results["expiry off"]
    span = off[-1]["builds"] - off[0]["builds"]
    per_build = (off[-1]["used_memory"] - off[0]["used_memory"]) / span if span else 0
    drift = on[-1]["used_memory"] - on[0]["used_memory"]
    text = "\n".join([
        "# Redis memory over finished builds", "",
        f"`bench/expiry.py --builds {args.builds} --every {args.every}` at {commit()}, "
        f"{time.strftime('%Y-%m-%d')}, {machine()}, redis-server {on[0]['redis_version']} "
        f"(Debian). Each build: push, mover, provision, STARTED, COMPLETED, release, on a real "
        "redis-server; the reconcile pass every checkpoint with `now` a build TTL ahead. "
        "Delivery ids and RQ results shortened to 1 s (see the script's docstring).", "",
        f"- **expiry on**: used_memory moved {drift:+,} bytes from {on[0]['builds']:,} to "
        f"{on[-1]['builds']:,} builds ({drift / max(1, span):+.1f} bytes a build).",
        f"- **expiry off**: {per_build:,.0f} bytes a build, kept for good "
        f"({off[-1]['used_memory'] - off[0]['used_memory']:+,} bytes over the same builds).", "",
        *table("expiry on", on), "", *table("expiry off", off), ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
