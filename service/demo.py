"""`ci-autoscaler demo`: the whole flow in one process, on the embedded default.

Web app (real HTTP on 127.0.0.1), an RQ worker, a simulated cluster and a simulated Jenkins,
on a real redis-server if one answers (else fakeredis). A burst of GitLab pushes goes through
the real webhook endpoint; a live table follows each build from queued to pod deleted.
"""

import copy
import json
import logging
import random
import secrets
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from typing import TextIO

import fakeredis
import redis
from rq import SimpleWorker
from rq.timeouts import TimerDeathPenalty
from werkzeug.serving import make_server

from service.app import create_app
from service.app import drainer as spool_drainer
from workers import runtime
from workers.agent_starts import online as agent_start
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import SERIALIZER, RedisState
from workers.config.config_file import parse_file_config
from workers.config.settings import Settings, load_settings
from workers.engine.intake import Mover
from workers.engine.jobs import TaskJob
from workers.sim.cluster import SimCluster, uniform_nodes
from workers.sim.jenkins import SimJenkins, http_notifier

DEMO_PUSHES = 24  # more than 3 nodes hold at once: some wait, nodes_needed rises
DEMO_NODES = 3
DEMO_TIMEOUT_SECONDS = 50
TICK_SECONDS = 0.1
AGENT_POLL_TICKS = 5  # the agent poll (workers.agent_starts.online) every half second
REFRESH_SECONDS = 0.5
PROJECTS = ("platform/api", "platform/web", "data/etl", "mobile/app")
REFS = ("refs/heads/main", "refs/heads/feature/login", "refs/tags/v1.4.0")


class _ThreadWorker(SimpleWorker):
    """An RQ SimpleWorker that runs off the main thread and stops within a second of `stop`."""

    death_penalty_class = TimerDeathPenalty  # SIGALRM works only in the main thread

    def _install_signal_handlers(self) -> None:
        pass

    def work_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.work(max_idle_time=1, logging_level="WARNING")


@dataclass
class _Outcome:
    answers: dict[int, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    waited: set[str] = field(default_factory=set)  # builds that waited for a cap or capacity
    reasons: dict[str, set[str]] = field(default_factory=dict)  # wait reason -> builds
    peak_nodes_needed: int = 0


def _connect(settings: Settings) -> tuple[redis.Redis, str]:
    """The Redis of REDIS_URL if it answers, else fakeredis; and how to name it to the user:
    by its address (Settings.redis_target), never the URL, which may hold a password."""
    try:
        connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5)
        connection.ping()
        return connection, f"redis-server at {settings.redis_target}"
    except redis.RedisError:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer()), "fakeredis (in process)"


def _pushes(count: int, seed: int) -> list[tuple[dict, dict[str, str]]]:
    """Variations of a real GitLab push: different projects, refs and commits."""
    sample = json.loads(resources.files("workers.sim").joinpath("data/gitlab_push.json")
                        .read_text())
    rng = random.Random(seed)
    out = []
    for i in range(count):
        body = copy.deepcopy(sample)
        ref = REFS[i % len(REFS)]
        sha = "%040x" % rng.getrandbits(160)
        body.update(ref=ref, after=sha, checkout_sha=sha,
                    object_kind="tag_push" if "/tags/" in ref else "push")
        body["project"]["path_with_namespace"] = PROJECTS[i % len(PROJECTS)]
        event = "Tag Push Hook" if "/tags/" in ref else "Push Hook"
        out.append((body, {"X-Gitlab-Event": event, "Idempotency-Key": f"demo-{seed}-{i}"}))
    return out


def _post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _row(state: RedisState, cluster: SimCluster, key: str) -> tuple[str, ...]:
    b = state.get_build(key)
    pod = cluster.get_pod(b.get("agent", ""))
    status = b.get("status", "?")
    if status in ("pod_created", "triggered"):
        status = f"pod {pod.phase.lower()}" if pod else status
    elif status == "released":
        status = "done, pod deleted" if pod is None else "done"
    elif status == "waiting":
        status = f"waiting: {b.get('wait_reason') or '?'}"
    elif status == "retained":
        status = "failed, pod kept"
    ref = b.get("ref", "").split("/", 2)[-1]
    return (key[:10], b.get("project", ""), ref, status, (pod.node if pod else None) or "-")


def _table(rows: list[tuple[str, ...]]) -> str:
    head = ("BUILD", "PROJECT", "REF", "STATUS", "NODE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head, *rows])


def run_demo(*, pushes: int = DEMO_PUSHES, nodes: int = DEMO_NODES, seed: int = 1,
             timeout: float = DEMO_TIMEOUT_SECONDS, redis_url: str | None = None,
             out: TextIO = sys.stdout) -> int:
    """Run the demo to its summary; 0 when every build ran and every pod was deleted."""
    run_id = secrets.token_hex(4)
    gitlab_token, jenkins_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    spool = tempfile.TemporaryDirectory(prefix=f"cia-demo-{run_id}-spool-")  # this run's own
    settings = load_settings(gitlab_webhook_token=gitlab_token,
                             jenkins_webhook_token=jenkins_token,
                             jenkins_url="http://jenkins.sim", agent_namespace="ci-agents",
                             queue_name=f"cia-demo-{run_id}", key_prefix=f"cia-demo-{run_id}:",
                             spool_dir=spool.name,
                             **({"redis_url": redis_url} if redis_url else {}))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    connection, where = _connect(settings)
    config = parse_file_config(resources.files("workers.sim").joinpath("data/demo.yaml")
                               .read_text(), source="demo.yaml")
    app = create_app(settings, file_config=config, redis_connection=connection)
    state = app.extensions["ci_autoscaler"].state
    server = make_server("127.0.0.1", 0, app, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    cluster = SimCluster(uniform_nodes(nodes))
    jenkins = SimJenkins(cluster=cluster, seed=seed,
                         notify=http_notifier(f"{base}/webhooks/jenkins", jenkins_token))
    runtime.install(runtime.Runtime(settings=settings, config=config, state=state,
                                    cluster=cluster, jenkins=jenkins, view=cluster,
                                    capacity=CapacityStore(connection,
                                                           prefix=settings.key_prefix)))
    worker = _ThreadWorker([state.queue], connection=connection, serializer=SERIALIZER,
                           job_class=TaskJob)
    # the pushes the webhook stored made jobs, its STARTEDs applied
    mover = Mover(state, block_seconds=0.2, jenkins_url=settings.jenkins_url)
    stop = threading.Event()

    def drive() -> None:
        ticks, rt = 0, runtime.current()
        while not stop.wait(TICK_SECONDS):
            cluster.tick()
            jenkins.tick()
            ticks += 1
            if ticks % AGENT_POLL_TICKS == 0:  # as the reconcile leader does between passes
                try:
                    agent_start.poll(rt)  # agents online: their start measured
                except Exception as err:  # the demo goes on; the next poll retries
                    logging.getLogger("ci_autoscaler.demo").warning(
                        "agent poll failed: %s", type(err).__name__)

    drainer = spool_drainer(app.extensions["ci_autoscaler"])
    threads = [threading.Thread(target=server.serve_forever, daemon=True),
               threading.Thread(target=worker.work_until, args=(stop,), daemon=True),
               threading.Thread(target=mover.run, args=(stop,), daemon=True),
               threading.Thread(target=drainer.run, args=(stop,), daemon=True),  # as the web's
               threading.Thread(target=drive, daemon=True)]
    for t in threads:
        t.start()
    print(f"ci-autoscaler demo: {nodes} simulated nodes, simulated Jenkins, {where}\n"
          f"webhooks at {base}/webhooks/gitlab and {base}/webhooks/jenkins\n", file=out)
    outcome, started, code = _Outcome(), time.monotonic(), 1
    try:
        code = _replay(base, gitlab_token, pushes, seed, outcome, state, cluster, started,
                       timeout, out)
    except KeyboardInterrupt:
        print("\ninterrupted", file=out)
        code = 130
    finally:
        stop.set()  # the driver and the worker first, so nothing posts to a closed server
        for t in threads[1:]:
            t.join(timeout=5)
        server.shutdown()
        threads[0].join(timeout=5)
        _summary(state, cluster, jenkins, outcome, time.monotonic() - started, out)
        runtime.install(None)
        _cleanup(connection, settings)
        app.extensions["ci_autoscaler"].spool.close()
        spool.cleanup()
    return code


def _replay(base: str, token: str, pushes: int, seed: int, outcome: _Outcome,
            state: RedisState, cluster: SimCluster, started: float, timeout: float,
            out: TextIO) -> int:
    batch = _pushes(pushes, seed)
    # A redelivery of the first push, as GitLab sends after a timeout: answered "duplicate".
    batch.append(batch[0])
    for body, headers in batch:
        status, answer = _post(f"{base}/webhooks/gitlab", body,
                               {"X-Gitlab-Token": token, **headers})
        outcome.answers[status] = outcome.answers.get(status, 0) + 1
        if status == 202:
            outcome.keys.append(answer["build_key"])
    tty, last = out.isatty(), {}
    while time.monotonic() - started < timeout:
        rows = [_row(state, cluster, k) for k in outcome.keys]
        for r in rows:
            if r[3].startswith("waiting"):
                outcome.waited.add(r[0])
                outcome.reasons.setdefault(r[3].split(": ", 1)[-1], set()).add(r[0])
        capacity = state.redis.hget(state.prefix + "capacity", "nodes_needed")
        outcome.peak_nodes_needed = max(outcome.peak_nodes_needed, int(capacity or 0))
        if tty:
            out.write("\x1b[H\x1b[J" + _table(rows) + "\n")
        else:
            for row in rows:
                if last.get(row[0]) != row[3]:
                    print(f"{time.monotonic() - started:6.1f}s  {row[0]}  {row[1]:<14} "
                          f"{row[2]:<16} {row[3]:<18} {row[4]}", file=out)
                    last[row[0]] = row[3]
        out.flush()
        if rows and all(r[3] == "done, pod deleted" for r in rows):
            return 0
        time.sleep(REFRESH_SECONDS)
    print(f"timed out after {timeout:.0f}s", file=out)
    return 1


def _summary(state: RedisState, cluster: SimCluster, jenkins: SimJenkins, outcome: _Outcome,
             elapsed: float, out: TextIO) -> None:
    builds = [state.get_build(k) for k in outcome.keys]
    released = [b for b in builds if b.get("status") == "released"]
    spans = sorted(float(b["released_at"]) - float(b["received_at"]) for b in released)
    answers = ", ".join(f"{n}x {code}" for code, n in sorted(outcome.answers.items()))
    print(f"\nsummary: {len(outcome.keys)} builds queued ({answers}); {len(released)} ran and "
          f"released; {len(cluster.list_pods())} pods and {len(jenkins.nodes)} Jenkins agents "
          f"left; {elapsed:.1f}s in all", file=out)
    print(f"capacity: {len(outcome.waited)} builds waited for a free slot; nodes_needed "
          f"peaked at {outcome.peak_nodes_needed}", file=out)
    if outcome.reasons:
        print("waiting reasons seen: " + ", ".join(
            f"{reason} {len(keys)}" for reason, keys in sorted(outcome.reasons.items())),
            file=out)
    if spans:
        print(f"push to pod deleted: median {spans[len(spans) // 2]:.1f}s, "
              f"max {spans[-1]:.1f}s", file=out)
    starts = sorted(float(b["agent_online_at"]) - float(b["pod_created_at"]) for b in builds
                    if b.get("agent_online_at") and b.get("pod_created_at"))
    print(f"agents online: {len(starts)} of {len(builds)}" + (
        f" (pod created -> agent online: median {starts[len(starts) // 2]:.1f}s)"
        if starts else ""), file=out)


def _cleanup(connection: redis.Redis, settings: Settings) -> None:
    """Remove this run's keys from a shared redis-server."""
    try:
        keys = list(connection.scan_iter(match=f"{settings.key_prefix}*"))
        for key in connection.scan_iter(match=f"rq:*{settings.queue_name}*"):
            keys.append(key)
            kind = connection.type(key)
            ids = connection.zrange(key, 0, -1) if kind == b"zset" else \
                connection.lrange(key, 0, -1) if kind == b"list" else []
            for job_id in ids:
                job_id = job_id.decode().split(":")[0]
                keys += list(connection.scan_iter(match=f"rq:*{job_id}*"))
        if keys:
            connection.delete(*keys)
        # RQ lists every queue a job was put on in this set (rq 3.0 queue.py: an enqueue adds
        # it, Queue.delete takes it out); left in it, each
        # run's dead queue stayed in `rq info` on a shared Redis for ever
        connection.srem("rq:queues", f"rq:queue:{settings.queue_name}")
    except redis.RedisError:
        pass
