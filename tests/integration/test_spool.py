"""The spool (workers.adapters.spool) on a real SQLite file, the webhook's way to it
(service.store) and the drainer (workers.engine.spool_drain) into a real Redis."""

import fcntl
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture_bytes
from tests.support.redis_server import RedisServer
from workers.adapters import spool_adopt
from workers.adapters.redis_connect import SENTINEL_TIMEOUT_SECONDS
from workers.adapters.spool import Spool, SpoolRefused
from workers.core.errors import RetryableError
from workers.engine.intake import Mover
from workers.engine.spool_drain import Drainer, SpooledPush

ROOT = Path(__file__).resolve().parents[2]
PUSH = fixture_bytes("gitlab_push_real_lrz.json")


def sample(client, series: str) -> float:
    """A series' value on /metrics, 0 when absent: counters are the process's, so a test
    compares what it read before and after (another test of this pytest process may have
    counted first)."""
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def push(client, delivery: str, sha: str | None = None):
    body = PUSH
    if sha is not None:
        data = orjson.loads(PUSH)
        data["checkout_sha"] = data["after"] = sha
        body = orjson.dumps(data)
    return client.post("/webhooks/gitlab", data=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery, "Content-Type": "application/json"})


def test_a_row_is_kept_once_per_delivery_oldest_first(tmp_path):
    spool = Spool(tmp_path)
    assert spool.counts() == (0, 0)
    assert spool.put("d-1", b"one") and spool.put("d-2", b"second")
    assert not spool.put("d-1", b"one again")  # a resent delivery is spooled once
    assert spool.counts() == (2, 9)
    first, second = spool.oldest(10)
    assert (first.delivery, first.payload, second.delivery) == ("d-1", b"one", "d-2")
    spool.remove(first.id)
    assert [e.delivery for e in spool.oldest(10)] == ["d-2"]
    spool.close()
    assert Spool(tmp_path).counts() == (1, 6)  # it is on disk: a new process reads it


def test_the_file_is_wal_with_every_commit_fsynced(tmp_path):
    spool = Spool(tmp_path)
    spool.put("d-1", b"x")
    db = spool._connection()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert (tmp_path / "spool.sqlite3-wal").exists()


@pytest.mark.parametrize("bounds,sizes", [({"max_events": 3}, [10, 10, 10, 10]),
                                           ({"max_bytes": 25}, [10, 10, 10])])
def test_past_a_bound_the_spool_refuses_as_full_and_keeps_what_it_has(tmp_path, bounds, sizes):
    spool = Spool(tmp_path, **bounds)
    for n, size in enumerate(sizes[:-1]):
        assert spool.put(f"d-{n}", b"x" * size)
    with pytest.raises(SpoolRefused, match="the spool is full") as err:
        spool.put("last", b"x" * sizes[-1])
    assert err.value.reason == "full"
    assert [e.delivery for e in spool.oldest(10)] == [f"d-{n}" for n in range(len(sizes) - 1)]
    if "max_events" in bounds:  # no event fits: not ready (a smaller one may fit bytes)
        assert "full" in (spool.check() or "")


def test_a_spool_that_cannot_be_created_refuses_as_unwritable(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    spool = Spool(tmp_path / "file" / "spool")
    with pytest.raises(SpoolRefused) as err:
        spool.put("d-1", b"x")
    assert err.value.reason == "unwritable"
    assert "NotADirectoryError" in spool.check() or "FileExistsError" in spool.check()


def test_a_spool_whose_disk_is_full_refuses_as_full_and_keeps_what_it_has(tmp_path):
    """A volume out of space (a PVC smaller than the bounds, a node's disk) is a full spool,
    not an unwritable one: SQLite answers SQLITE_FULL, "database or disk is full"; played here
    by capping the file's pages (PRAGMA max_page_count gives the same SQLITE_FULL)."""
    spool = Spool(tmp_path)
    assert spool.put("d-1", b"x" * 100)
    pages = spool.query("PRAGMA page_count")[0][0]
    spool.query(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(SpoolRefused) as err:
        spool.put("d-2", b"y" * 20000)
    assert err.value.reason == "full" and "disk is full" in str(err.value)
    assert [e.delivery for e in spool.oldest(10)] == ["d-1"]


# Run in a mount namespace of its own (unshare -m, as root; as test_web_listen_address does
# for the network) on a real 32 MiB tmpfs: the kernel answers ENOSPC, no write is faked.
_FULL_VOLUME = """
import os, sys
from workers.adapters import spool_adopt
from workers.adapters.spool import Spool, SpoolRefused
spool = Spool(sys.argv[1], max_events=10**9, max_bytes=10**12)  # bounds far past the volume
taken = 0
while True:
    try:
        spool.put(f"d-{taken}", os.urandom(60000))
    except SpoolRefused as err:
        print("refused", err.reason, taken, spool.check() is not None)
        break
    taken += 1
drained = 0
while events := spool.oldest(100):
    for event in events:
        spool.remove(event.id)
        drained += 1
print("drained", drained, spool.counts()[0], spool.check())
spool.put("after", os.urandom(3000))
print("taken again", spool.counts()[0])
"""


def test_a_spool_whose_volume_filled_up_can_still_be_drained(tmp_path):
    """A volume that fills up (a PVC smaller than the spool's bounds, a node's disk): SQLite
    deletes through its WAL too, so a spool that had written until ENOSPC could not delete a
    drained row ("database or disk is full"): the drainer failed on the oldest row, pushed it
    to Redis again every minute, and left every other spooled push unbuilt for good, the spool
    refusing pushes meanwhile. A put leaves room on the volume for the drain."""
    mount = tmp_path / "volume"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size=32m tmpfs {mount} && "
              f"{sys.executable} -c \"$SCRIPT\" {mount}/spool")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT,
                            env=os.environ | {"SCRIPT": _FULL_VOLUME},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    refused, drained, again = result.stdout.splitlines()
    _, reason, taken, unready = refused.split()
    assert reason == "full" and int(taken) > 200, refused  # the 16 MiB that a put leaves free aside
    assert unready == "True"  # /readyz asks check(): it says so too
    assert drained == f"drained {taken} 0 None"
    assert again == "taken again 1"


def _fill(directory: str, name: str, count: int, max_events: int, out) -> None:
    spool = Spool(directory, max_events=max_events)
    taken = 0
    for n in range(count):
        try:
            taken += spool.put(f"{name}-{n}", b"x")
        except SpoolRefused:
            pass
    out.put(taken)


def test_two_processes_share_the_bounds(tmp_path):
    """The gunicorn workers of a pod write one file: the bound holds across them."""
    out = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(
        target=_fill, args=(str(tmp_path), name, 60, 100, out)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted([out.get(timeout=5), out.get(timeout=5)])[0] >= 40
    assert Spool(tmp_path).counts()[0] == 100


# --- the webhook and the drainer -------------------------------------------------------------

def test_redis_down_the_push_is_spooled_202_and_drained_once_when_it_is_back(own_redis):
    app = make_app(own_redis.url)
    client = app.test_client()
    ctx = app.extensions["ci_autoscaler"]
    spooled = 'ci_autoscaler_webhooks_total{event="push",result="spooled",source="gitlab"}'
    spooled_before = sample(client, spooled)
    own_redis.stop()
    response = push(client, "out-1")
    assert response.status_code == 202 and response.json["status"] == "spooled"
    assert client.get("/readyz").status_code == 200  # the pod stays in the Service
    assert push(client, "out-1").json["status"] == "duplicate"  # resent while spooled
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "ci_autoscaler_spool_events 1.0" in metrics
    assert sample(client, spooled) == spooled_before + 1
    own_redis.start()
    assert push(client, "out-1").status_code == 202  # resent once Redis is back: taken there
    drainer = Drainer(ctx.spool, ctx.state.intake)
    assert drainer.drain() == 1  # and the spooled copy is a duplicate of it
    assert ctx.spool.counts() == (0, 0)
    assert Mover(ctx.state).drain() == 1
    assert ctx.state.queue.count == 1


def test_readyz_answers_at_once_from_the_spool_while_redis_hangs(own_redis):
    """The chart's readinessProbe gives /readyz 3 s (timeoutSeconds). /readyz pinged Redis
    before it looked at the spool: a hung Redis (SIGSTOP: a stalled node, a long fork) held it
    for the web's 2 s socket timeout, and with Sentinel every sentinel that does not answer
    for 0.5 s, twice (the connect is retried): three hung sentinels, 3.0 s. The probe timed
    out, every web pod left the Service, and GitLab's deliveries failed (four failures
    disable the hook) while the spool could take them."""
    client = make_app(own_redis.url).test_client()
    assert client.get("/readyz").json == {"status": "ready"}
    pid = int((own_redis.directory / "redis.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = client.get("/readyz")
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 200
    assert elapsed < 0.5, f"/readyz took {elapsed:.2f} s"


@pytest.mark.parametrize("hook", ["gitlab", "jenkins"])
def test_an_event_is_spooled_within_the_redis_timeout_however_many_sentinels_hang(
        tmp_path, hook):
    """Five sentinels hung (SIGSTOP: stalled, or their hosts gone so connects time out). Each
    connect asked every sentinel in turn for SENTINEL_TIMEOUT_SECONDS, and the connect and the
    script call each tried again: 0.5 s x 5 x 4, a push answered after 10 s, and GitLab counts
    a delivery it waited 10 s for as failed (REALITY.md), four of them disabling the hook (a
    Jenkins notification, 5 s). The store attempt as a whole is given
    CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS, then the spool."""
    hung = [RedisServer(tmp_path / f"sentinel-{n}").start() for n in range(5)]
    pids = [int((server.directory / "redis.pid").read_text()) for server in hung]
    try:
        client = make_app("redis:///0", redis_timeout_seconds=1.0,
                          redis_sentinel_master="cia-master", redis_sentinels=",".join(
                              f"127.0.0.1:{server.port}" for server in hung)).test_client()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        response = push(client, "five-hung-sentinels") if hook == "gitlab" else client.post(
            "/webhooks/jenkins", data=fixture_bytes("jenkins_notification_started.json"),
            headers={"X-Jenkins-Token": JENKINS_TOKEN, "Content-Type": "application/json"})
        elapsed = time.monotonic() - started
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        for server in hung:
            server.stop()
    assert response.status_code == 202 and response.json["status"] == "spooled", response.json
    assert elapsed < 1.0 + SENTINEL_TIMEOUT_SECONDS + 0.3, f"the push took {elapsed:.2f} s"


def jenkins_started(client, number: int):
    data = orjson.loads(fixture_bytes("jenkins_notification_started.json"))
    data["build"]["number"] = number
    return client.post("/webhooks/jenkins", data=orjson.dumps(data), headers={
        "X-Jenkins-Token": JENKINS_TOKEN, "Content-Type": "application/json"})


@pytest.mark.parametrize("hook", ["gitlab", "jenkins"])
def test_while_redis_hangs_one_push_at_a_time_waits_on_it_the_others_are_spooled_at_once(
        own_redis, hook):
    """Every push waited its CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS on a hung Redis, each holding
    one of the web's few threads (8 a worker): 48 deliveries sent at once to one web process
    (GitLab sends many at a time) were answered up to 12 s later, 15 past GitLab's 10 s, which
    counts them as failed. Once an attempt failed, one waits on Redis, the others spool.
    Jenkins notifications went to Redis ungated, each holding a thread for the whole timeout
    (the pushes queued behind them): they pass the same gate."""
    client = make_app(own_redis.url, redis_timeout_seconds=1.0).test_client()
    pid = int((own_redis.directory / "redis.pid").read_text())

    def send(n: int):
        if hook == "jenkins":
            return jenkins_started(client, 100 + n)
        return push(client, f"gate-{n}", sha={0: "a" * 40, 99: "b" * 40}.get(n, f"{n:040x}"))

    os.kill(pid, signal.SIGSTOP)
    try:
        assert send(0).json["status"] == "spooled"

        def timed(n: int) -> tuple[str, float]:
            started = time.monotonic()
            answer = send(n).json["status"]
            return answer, time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(timed, range(1, 9)))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert [status for status, _ in answers] == ["spooled"] * 8, answers
    waited = [elapsed for _, elapsed in answers if elapsed >= 0.9]
    assert len(waited) <= 2, answers  # the probe (and one that came after it, under load)
    # Redis is back: the next attempt is the probe, and it goes through (a notification of no
    # build of ours is ignored once Redis says so)
    assert send(99).json["status"] == ("ignored" if hook == "jenkins" else "queued")


def test_a_push_redis_takes_after_the_webs_timeout_is_built_once_not_twice(own_redis):
    """Redis stalled (SIGSTOP: a long fork, a paused VM) rather than refusing: the web's FCALL
    sits in the socket's buffer, the web times out, spools the push and answers 202. When Redis
    wakes it reads that buffered command before the closed connection's EOF and runs it, so the
    push is in the intake AND in the spool; the drainer's copy is "delivery already taken"."""
    app = make_app(own_redis.url, redis_timeout_seconds=1.0)
    ctx = app.extensions["ci_autoscaler"]
    # a connection made before (a web's usual state): a new one would wait on Redis's answer to
    # its handshake and time out before the FCALL was sent
    assert push(app.test_client(), "early-1", sha="b" * 40).json["status"] == "queued"
    pid = int((own_redis.directory / "redis.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        response = push(app.test_client(), "late-1", sha="c" * 40)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 202 and response.json["status"] == "spooled"
    wait_until(lambda: ctx.state.intake.counts()[0] == 2, timeout=10,
               what="Redis ran the web's timed-out write once it woke")
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 1
    assert ctx.spool.counts() == (0, 0) and ctx.state.intake.counts() == (2, 0)
    assert Mover(ctx.state).drain() == 2 and ctx.state.queue.count == 2


def test_the_drainer_keeps_a_row_until_redis_took_it(own_redis):
    app = make_app(own_redis.url)
    ctx = app.extensions["ci_autoscaler"]
    own_redis.stop()
    assert push(app.test_client(), "keep-1").json["status"] == "spooled"
    with pytest.raises(RetryableError):
        Drainer(ctx.spool, ctx.state.intake).drain()
    assert ctx.spool.counts()[0] == 1
    own_redis.start()
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 1
    assert ctx.state.intake.counts() == (1, 0)


def test_a_full_spool_answers_503_with_a_reason_and_loses_nothing_spooled(own_redis, caplog):
    app = make_app(own_redis.url, spool_max_events=3)
    client = app.test_client()
    ctx = app.extensions["ci_autoscaler"]
    full = 'ci_autoscaler_spool_refusals_total{reason="full"}'
    full_before = sample(client, full)
    own_redis.stop()
    keys = [push(client, f"full-{n}", sha=f"{n + 1:040x}").json for n in range(3)]
    assert [k["status"] for k in keys] == ["spooled"] * 3
    caplog.set_level(logging.ERROR)
    refused = push(client, "full-3", sha=f"{4:040x}")
    assert refused.status_code == 503 and refused.json["status"] == "unavailable"
    assert "the spool is full (3 events" in refused.json["reason"]
    assert any("spool refused" in r.getMessage() and r.reason == "full"
               for r in caplog.records)
    assert sample(client, full) == full_before + 1
    assert client.get("/readyz").status_code == 503
    own_redis.start()
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 3
    assert Mover(ctx.state).drain() == 3
    assert sorted(j.kwargs["build"]["build_key"] for j in ctx.state.queue.get_jobs()) == \
        sorted(k["build_key"] for k in keys)


def test_a_spool_that_cannot_be_written_answers_503_naming_it(own_redis, tmp_path):
    (tmp_path / "file").write_text("")
    client = make_app(own_redis.url, spool_dir=str(tmp_path / "file" / "spool")).test_client()
    own_redis.stop()
    response = push(client, "nowhere")
    assert response.status_code == 503 and "spool cannot be written" in response.json["reason"]


def test_a_spooled_push_survives_as_a_payload_of_its_own():
    event = SpooledPush(delivery_id="gitlab:d", mark="k", record=b'{"a":1}', ttl_seconds=5,
                        commit="c", run_ttl_seconds=7)
    assert SpooledPush.from_bytes(event.to_bytes()) == event


def test_a_row_that_is_not_a_push_is_set_aside_not_retried_forever_nor_lost(redis_url):
    """Deleted, a row the drainer could not read (a later version's, after a rollback; a
    damaged file) was a push answered 202 and gone without a trace but a log line."""
    app = make_app(redis_url)
    ctx = app.extensions["ci_autoscaler"]
    ctx.spool.put("junk", b"not json")
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 1
    assert ctx.spool.counts() == (0, 0) and ctx.state.intake.counts() == (0, 0)
    assert ctx.spool.set_aside_events() == [("junk", b"not json")]
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 0  # never drained again


def test_a_row_of_a_kind_a_newer_release_spools_is_left_for_it_and_the_rest_drained(
        redis_url, caplog):
    """A `helm rollback` over a persistent spool (the StatefulSet's claim), or a spool adopted
    from a newer web: a row of a kind this release does not know was deleted as "not a push",
    and the event the newer web answered 202 for was lost. It stays, logged once; the pushes
    beside it are drained. (The row as a release would spool a kind of its own beside today's
    `jenkins-notification`: a JSON object naming its `kind`.)"""
    app = make_app(redis_url)
    ctx = app.extensions["ci_autoscaler"]
    newer = b'{"kind":"gitlab-merge-request","event":{"iid":7},"received_at":1796640000.5}'
    ctx.spool.put("gitlab:newer", newer)
    ctx.spool.put("gitlab:d", SpooledPush("gitlab:d", "k", b"{}", 60).to_bytes())
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.spool")
    drainer = Drainer(ctx.spool, ctx.state.intake)
    assert drainer.drain() == 1 and drainer.drain() == 0
    assert [(e.delivery, e.payload) for e in ctx.spool.oldest(10)] == [("gitlab:newer", newer)]
    assert ctx.state.intake.counts() == (1, 0)
    assert [r.kind for r in caplog.records if "does not read" in r.getMessage()] == [
        "gitlab-merge-request"]


class _ReadCountingSpool(Spool):
    """The real spool, counting the rows the drainer reads from it."""

    rows_read = 0

    def oldest(self, limit, *, after=0):
        rows = super().oldest(limit, after=after)
        self.rows_read += len(rows)
        return rows


def test_rows_left_for_a_newer_release_are_not_read_again_at_every_pass(redis_url):
    """The rows a newer release spooled under its own kind, left after a rollback, were read
    and parsed again at every pass, twice a second, for as long as the rollback lasted:
    20,000 of them (1.5 KB each) took 0.8 s of a core a pass, the web process's drainer
    thread busy for good beside its webhooks. Read once; the rows spooled after them drain."""
    app = make_app(redis_url)
    ctx = app.extensions["ci_autoscaler"]
    spool = _ReadCountingSpool(ctx.spool.directory, owner=ctx.spool.owner)
    for n in range(25):
        spool.put(f"gitlab:newer-{n}", orjson.dumps({"kind": "gitlab-merge-request", "n": n}))
    drainer = Drainer(spool, ctx.state.intake, batch=10)
    assert drainer.drain() == 0 and spool.rows_read == 25
    assert drainer.drain() == 0 and spool.rows_read == 25
    spool.put("gitlab:d", SpooledPush("gitlab:d", "k", b"{}", 60).to_bytes())
    assert drainer.drain() == 1 and spool.rows_read == 26
    assert spool.counts()[0] == 25 and ctx.state.intake.counts() == (1, 0)


def test_rows_adopted_in_place_below_the_rows_drained_are_drained_by_the_running_drainer(
        redis_url):
    """`ci-autoscaler spool adopt` makes another owner's rows this one's in place (their ids
    older than the pushes the web's drainer has drained since): its drainer, which reads on
    from where it settled, reads them too."""
    app = make_app(redis_url)
    ctx = app.extensions["ci_autoscaler"]
    old_owner = "team/ci-autoscaler redis:000000000001"
    Spool(ctx.spool.directory, owner=old_owner).put(
        "gitlab:old", SpooledPush("gitlab:old", "k1", b"{}", 60).to_bytes())
    ctx.spool.put("gitlab:new", SpooledPush("gitlab:new", "k2", b"{}", 60).to_bytes())
    drainer = Drainer(ctx.spool, ctx.state.intake)
    assert drainer.drain() == 1 and drainer.drain() == 0
    assert spool_adopt.adopt(ctx.spool, ctx.spool.directory, {old_owner}).moved == 1
    assert drainer.drain() == 1 and ctx.spool.counts() == (0, 0)
    assert ctx.state.intake.counts() == (2, 0)


def test_only_one_drainer_of_a_pod_drains_at_a_time(redis_url, tmp_path):
    app = make_app(redis_url, spool_dir=str(tmp_path))
    ctx = app.extensions["ci_autoscaler"]
    ctx.spool.put("d", SpooledPush("gitlab:d", "k", b"{}", 60).to_bytes())
    held = os.open(tmp_path / "drain.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # another gunicorn worker drains
    try:
        assert Drainer(ctx.spool, ctx.state.intake).drain() == 0
    finally:
        os.close(held)
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 1


def _bytes_read(step) -> int:
    """Bytes this process read from files (its preads: /proc/self/io rchar) while `step` ran."""
    def rchar() -> int:
        return int(next(line.split()[1] for line in Path("/proc/self/io").read_text()
                        .splitlines() if line.startswith("rchar:")))
    before = rchar()
    step()
    return rchar() - before


def _steps(spool: Spool, step) -> int:
    """SQLite's virtual machine steps (in hundreds) `step` took on the spool's connection."""
    steps = [0]
    db = spool._connection()
    db.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 100)
    try:
        step()
    finally:
        db.set_progress_handler(None, 100)
    return steps[0]


def test_a_put_and_a_drain_batch_read_little_of_a_spool_near_its_bounds(tmp_path):
    """A long Redis outage fills the spool towards its default 100,000 events. Each put read
    the whole table under the write lock (to sum the bounds: 0.7 s a put at 100,000 rows, so
    the web's processes queued on each other past the spool's 2 s lock timeout and answered
    503 with room left), and each drain batch of 100 sorted every row left (the drain got
    slower the more there was to drain). Both now read the owner index only: a put's and a
    batch's reads do not grow with the spool (5,000 real pushes here, 46 MB)."""
    spool = Spool(tmp_path, owner="me")
    row = SpooledPush("gitlab:x", "k", PUSH, 60).to_bytes()
    with spool.transaction() as db:
        db.executemany("INSERT INTO events (owner, delivery, payload, size, spooled_at) "
                       "VALUES ('me', ?, ?, ?, 0)", ((f"d-{n}", row, len(row))
                                                     for n in range(5_000)))
    size = spool.path.stat().st_size + (tmp_path / "spool.sqlite3-wal").stat().st_size
    assert size > 5_000 * len(PUSH)
    put = _bytes_read(lambda: spool.put("gitlab:new", row))
    batch = _bytes_read(lambda: spool.oldest(100))
    counts = _bytes_read(spool.counts)
    first, last = (_steps(spool, lambda: spool.oldest(100, after=after)) for after in (0, 4_901))
    print(f"spool of {size} bytes: a put read {put}, a batch {batch}, counts {counts}; "
          f"SQLite's steps for the first batch {first}, for the last {last}")
    assert [e.delivery for e in spool.oldest(3, after=5)] == ["d-5", "d-6", "d-7"]
    assert [e.delivery for e in spool.oldest(2, after=4_999)] == ["d-4999", "gitlab:new"]
    assert max(put, batch, counts) < size / 10
    # The first batch of the drain costs what the last one does, about 8 (hundred steps) for
    # 100 rows; sorting every row left, it took 516 for the first and 262 for the last.
    assert max(first, last) <= 20
