"""Whose a spooled push is: two installations on one host (staging and prod, `make run` beside
`make demo`), each its own Redis, never drain each other's spool, with the default spool
directory or with one directory given to both; a spool of the version before owners is still
drained; a default directory that another user holds is not used.

Two web apps (service.app) on two real redis-servers, the spool on real SQLite files, the
drainer (workers.engine.spool_drain) as the web's thread runs it; and two webs as the Procfile runs
them (gunicorn, the drainer thread in its workers) side by side on one host.
"""

import logging
import multiprocessing
import os
import re
import sqlite3
import tempfile
import urllib.request
from contextlib import ExitStack

import orjson
import pytest
import redis

from tests.integration.test_spool import push
from tests.integration.test_spool_outage import send
from tests.support.app import make_app, make_settings
from tests.support.monitoring import wait_until
from tests.support.redis_server import RedisServer, free_port
from tests.support.web_process import ROOT, web_env, web_process
from workers.adapters.spool import FILE_NAME, Spool, SpoolError
from workers.engine.spool_drain import Drainer, SpooledPush


@pytest.fixture
def temp_dir(monkeypatch, tmp_path):
    """The machine's temp dir, where default spools are, made the test's own."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture
def two_redis(tmp_path):
    servers = [RedisServer(tmp_path / name).start() for name in ("staging-redis", "prod-redis")]
    yield servers
    for server in servers:
        server.stop()


def in_intake(app) -> list[str]:
    """The deliveries waiting in the app's own Redis intake."""
    intake = app.extensions["ci_autoscaler"].state.intake
    return [orjson.loads(r)["delivery"] for r in intake.redis.lrange(intake.key, 0, -1)]


def drainer(app) -> Drainer:
    """The drainer as the web's thread holds it (workers.engine.spool_drain.Drainer.start)."""
    ctx = app.extensions["ci_autoscaler"]
    return Drainer(ctx.spool, ctx.state.intake)


def drain(app) -> int:
    return drainer(app).drain()


@pytest.mark.parametrize("shared_dir", [False, True], ids=["default-dirs", "one-dir-for-both"])
def test_each_installation_drains_only_the_pushes_it_took_into_its_own_redis(
        two_redis, temp_dir, tmp_path, shared_dir, caplog):
    """GitLab sends one push to both installations' hooks; both Redis are down, so both spool
    it; the staging Redis comes back first. Its drainer used to move prod's row too (the
    default directory was <temp dir>/ci-autoscaler-spool for every installation): prod's push
    built by staging's Jenkins, and never by prod's."""
    directory = str(tmp_path / "spool") if shared_dir else ""
    staging_redis, prod_redis = two_redis
    staging = make_app(staging_redis.url, installation="staging/ci-autoscaler",
                       spool_dir=directory)
    prod = make_app(prod_redis.url, installation="prod/ci-autoscaler", spool_dir=directory)
    staging_redis.stop()
    prod_redis.stop()
    for app in (staging, prod):  # the same delivery id: one push, two hooks (Event-UUID)
        assert push(app.test_client(), "push-1").json["status"] == "spooled"
    assert push(prod.test_client(), "push-2", sha=f"{2:040x}").json["status"] == "spooled"
    staging_spool = staging.extensions["ci_autoscaler"].spool
    prod_spool = prod.extensions["ci_autoscaler"].spool
    assert (staging_spool.directory == prod_spool.directory) is shared_dir

    staging_redis.start()
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.spool")
    staging_drainer = drainer(staging)
    assert staging_drainer.drain() == 1
    assert in_intake(staging) == ["gitlab:push-1"]
    assert prod_spool.counts()[0] == 2  # prod's rows wait for prod's Redis
    metrics = staging.test_client().get("/metrics").get_data(as_text=True)
    assert "ci_autoscaler_spool_events 0.0" in metrics
    assert f"ci_autoscaler_spool_foreign_events {2.0 if shared_dir else 0.0}" in metrics
    others = [r for r in caplog.records if "another installation" in r.getMessage()]
    if shared_dir:  # said once, naming whose they are
        assert [(r.owner, r.events) for r in others] == [(prod_spool.owner, 2)]
        assert prod_spool.owner.startswith("prod/ci-autoscaler redis:")
        assert staging_drainer.drain() == 0  # not said again
        assert len([r for r in caplog.records if "another installation" in r.getMessage()]) == 1
    else:
        assert others == []

    prod_redis.start()
    assert drain(prod) == 2
    assert sorted(in_intake(prod)) == ["gitlab:push-1", "gitlab:push-2"]
    assert in_intake(staging) == ["gitlab:push-1"]
    assert staging_spool.counts() == prod_spool.counts() == (0, 0)


def test_the_default_directory_names_user_installation_and_redis_never_a_password(temp_dir):
    def path_and_owner(url: str, **values) -> tuple[str, str]:
        settings = make_settings(url, spool_dir="", **values)
        return settings.spool_path, settings.spool_owner

    path, owner = path_and_owner("redis://ci:s3cret-pw@redis.example:6380/2",
                                 installation="prod/ci-autoscaler")
    assert os.path.dirname(path) == str(temp_dir)
    assert os.path.basename(path).startswith(
        f"ci-autoscaler-spool-{os.geteuid()}-prod_ci-autoscaler-")
    assert "s3cret" not in path + owner and "ci:" not in path + owner
    # Another user or password for the same Redis is the same intake: the same spool.
    assert path_and_owner("redis://other:pw2@redis.example:6380/2",
                          installation="prod/ci-autoscaler") == (path, owner)
    different = [path_and_owner("redis://redis.example:6380/3", installation="prod/ci-autoscaler"),
                 path_and_owner("redis://redis.example:6381/2", installation="prod/ci-autoscaler"),
                 path_and_owner("redis://redis.example:6380/2", installation="prod/ci-autoscaler",
                                key_prefix="other:"),
                 path_and_owner("redis://redis.example:6380/2", installation="staging/cia"),
                 path_and_owner("redis://redis.example:6380/2"),
                 path_and_owner("redis://:pw@any:1/2", installation="prod/ci-autoscaler",
                                redis_sentinels="s1:26379,s2:26379", redis_sentinel_master="m")]
    assert len({p for p, _ in different} | {path}) == len(different) + 1
    assert len({o for _, o in different} | {owner}) == len(different) + 1


# The table of versions before the owner (workers.adapters.spool before this change).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  delivery TEXT NOT NULL UNIQUE,
  payload BLOB NOT NULL,
  size INTEGER NOT NULL,
  spooled_at REAL NOT NULL
)
"""


def test_a_spool_of_the_version_before_owners_is_drained_after_the_upgrade(redis_url, tmp_path):
    """The web upgraded while its volume (the chart's emptyDir or PVC) holds pushes spooled by
    the earlier version: they have no owner, and are drained as that version did."""
    db = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    for n in range(3):
        payload = SpooledPush(f"gitlab:old-{n}", f"key-{n}", orjson.dumps(
            {"delivery": f"gitlab:old-{n}", "build": {}}), 60).to_bytes()
        db.execute("INSERT INTO events (delivery, payload, size, spooled_at) VALUES (?,?,?,0)",
                   (f"gitlab:old-{n}", payload, len(payload)))
    db.execute("DELETE FROM events WHERE id = 3")  # the newest drained already
    db.close()
    app = make_app(redis_url, spool_dir=str(tmp_path), installation="prod/ci-autoscaler")
    spool = app.extensions["ci_autoscaler"].spool
    assert spool.counts()[0] == 2 and spool.others() == {}
    assert spool.put("gitlab:first-new", b"z")  # not the id of the drained row
    [first_new] = [e.id for e in spool.oldest(10) if e.delivery == "gitlab:first-new"]
    assert first_new > 3
    spool.remove(first_new)
    # A row of another owner, for the same delivery id, is a row of its own now.
    assert Spool(tmp_path, owner="staging/cia redis:0123456789ab").put("gitlab:old-0", b"x")
    assert spool.put("gitlab:new", b"y")
    ids = [e.id for e in spool.oldest(10)]
    assert ids[:2] == [1, 2] and ids[2] > 3  # ids are never reused (AUTOINCREMENT kept)
    spool.remove(ids[2])
    assert drain(app) == 2
    assert in_intake(app) == ["gitlab:old-0", "gitlab:old-1"]
    assert spool.others() == {"staging/cia redis:0123456789ab": 1}


@pytest.mark.parametrize("uid,mode", [(65534, 0o700), (None, 0o777)],
                         ids=["another-users", "open-to-all"])
def test_a_default_directory_another_user_can_write_is_not_used(own_redis, temp_dir, uid, mode,
                                                                caplog):
    """Anyone may make a directory in /tmp under the default name first, and plant rows there:
    drained, they would be built as pushes nobody sent. The web starts, says so, and answers
    503 for a push Redis cannot take; readiness follows Redis."""
    if uid is not None and os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    settings = make_settings(own_redis.url, spool_dir="", installation="prod/ci-autoscaler")
    directory = settings.spool_path
    os.mkdir(directory)
    planted = SpooledPush("gitlab:planted", "k", orjson.dumps(
        {"delivery": "gitlab:planted", "build": {}}), 60)
    Spool(directory, owner=settings.spool_owner).put(planted.delivery_id, planted.to_bytes())
    os.chmod(directory, mode)
    if uid is not None:
        os.chown(directory, uid, uid)
    caplog.set_level(logging.ERROR)
    app = make_app(own_redis.url, spool_dir="", installation="prod/ci-autoscaler")
    assert any("spool cannot take events" in r.getMessage() and "not used" in r.error
               for r in caplog.records)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200  # Redis takes the pushes
    with pytest.raises(SpoolError, match="not used"):
        drain(app)
    assert in_intake(app) == []
    own_redis.stop()
    response = push(client, "while-down")
    assert response.status_code == 503 and "not used" in response.json["reason"]
    assert client.get("/readyz").status_code == 503


def test_a_default_directory_is_made_for_this_user_only(redis_url, temp_dir):
    app = make_app(redis_url, spool_dir="")
    spool = app.extensions["ci_autoscaler"].spool
    assert spool.check() is None
    info = os.stat(spool.directory)
    assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o700)


def _old_spool(directory, deliveries: list[str]) -> None:
    """A spool file as the version before owners left it (its table, its WAL mode)."""
    directory.mkdir(exist_ok=True)
    db = sqlite3.connect(directory / FILE_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    for delivery in deliveries:
        db.execute("INSERT INTO events (delivery, payload, size, spooled_at) VALUES (?, x'00', "
                   "1, 0)", (delivery,))
    db.close()


def test_the_default_spool_of_earlier_versions_is_named_at_start(redis_url, temp_dir,
                                                                 monkeypatch, caplog):
    legacy = temp_dir / "ci-autoscaler-spool"
    _old_spool(legacy, ["gitlab:old-0", "gitlab:old-1"])
    monkeypatch.setattr("service.app.LEGACY_SPOOL_PATH", str(legacy))
    caplog.set_level(logging.WARNING)
    make_app(redis_url, spool_dir="")
    assert [(r.spool, r.events) for r in caplog.records if "earlier version" in r.getMessage()] \
        == [(str(legacy), 2)]
    caplog.clear()
    drained = make_app(redis_url, spool_dir=str(legacy))  # the way to drain it: not said then
    assert not any("earlier version" in r.getMessage() for r in caplog.records)
    assert drain(drained) == 2


def test_an_empty_spool_of_earlier_versions_is_not_named_at_start(redis_url, temp_dir,
                                                                  monkeypatch, caplog):
    """The earlier version made its spool file at every start (its check), pushes or not, and
    the runbook says never to delete spool files by hand: a file with no row left (never used,
    or drained the way the warning says) holds no push to drain, and a warning at every start
    that nothing makes go away is one an on-call learns to ignore."""
    legacy = temp_dir / "ci-autoscaler-spool"
    _old_spool(legacy, [])
    monkeypatch.setattr("service.app.LEGACY_SPOOL_PATH", str(legacy))
    caplog.set_level(logging.WARNING)
    make_app(redis_url, spool_dir="")
    assert not any("earlier version" in r.getMessage() for r in caplog.records)


def _put_as(directory: str, owner: str, count: int, go, out) -> None:
    spool = Spool(directory, owner=owner)
    go.wait()  # both processes imported: they open the file together
    out.put(sum(spool.put(f"d-{n}", b"x") for n in range(count)))


def test_the_web_processes_opening_an_earlier_versions_file_at_once_add_the_owner_once(tmp_path):
    """gunicorn's workers start together on the upgraded pod: each opens the file of the
    earlier version, and one of them makes its table again; none fails, no row is lost."""
    db = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO events (delivery, payload, size, spooled_at) VALUES ('d-0', x'00', "
               "1, 0)")
    db.close()
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Event()
    procs = [context.Process(target=_put_as, args=(str(tmp_path), owner, 20, go, out))
             for owner in ("a redis:000000000000", "b redis:000000000000")]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [out.get(timeout=5), out.get(timeout=5)] == [20, 20]
    legacy = Spool(tmp_path, owner="c redis:000000000000")
    assert legacy.counts()[0] == 1 and legacy.others() == {"a redis:000000000000": 20,
                                                          "b redis:000000000000": 20}


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    return float(found.group(1)) if found else None


def test_two_procfile_webs_on_one_host_each_build_their_own_spooled_pushes(two_redis, tmp_path,
                                                                          temp_dir):
    """Staging and prod run the Procfile's web line on one host, each with its own Redis and
    installation, and no CI_AUTOSCALER_SPOOL_DIR. Both Redis go away; one push reaches both;
    staging's Redis is back first: its web drains only its own push."""
    web_line = next(line.split(":", 1)[1].strip()
                    for line in (ROOT / "Procfile").read_text().splitlines()
                    if line.startswith("web:"))
    staging_redis, prod_redis = two_redis
    webs = {}
    with ExitStack() as stack:
        for name, store in (("staging", staging_redis), ("prod", prod_redis)):
            port = free_port()
            env = web_env(store.url, CI_AUTOSCALER_INSTALLATION=f"{name}/ci-autoscaler",
                          PORT=str(port), TMPDIR=str(temp_dir),
                          CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS="1")
            del env["CI_AUTOSCALER_SPOOL_DIR"]
            stack.enter_context(web_process(web_line, env, port, tmp_path / f"{name}.log"))
            webs[name] = port
        staging_redis.stop()
        prod_redis.stop()
        for name, port in webs.items():
            assert send(port, 1)[1]["status"] == "spooled"
        assert send(webs["prod"], 2)[1]["status"] == "spooled"
        staging_redis.start()
        wait_until(lambda: _metric(webs["staging"], "ci_autoscaler_spool_events") == 0,
                   timeout=30, what="staging's drainer emptied its spool")
        assert deliveries(staging_redis) == ["gitlab:push-1"]
        prod_redis.start()
        wait_until(lambda: _metric(webs["prod"], "ci_autoscaler_spool_events") == 0,
                   timeout=30, what="prod's drainer emptied its spool")
        assert sorted(deliveries(prod_redis)) == ["gitlab:push-1", "gitlab:push-2"]
        assert deliveries(staging_redis) == ["gitlab:push-1"]
    assert sorted(p.name for p in temp_dir.glob("ci-autoscaler-spool*")) == sorted(
        f"ci-autoscaler-spool-{os.geteuid()}-{name}_ci-autoscaler-" + make_settings(
            store.url, installation=f"{name}/ci-autoscaler").redis_fingerprint
        for name, store in (("staging", staging_redis), ("prod", prod_redis)))


def deliveries(store: RedisServer) -> list[str]:
    """The deliveries in a Redis's intake (the web's key prefix, cia:)."""
    return [orjson.loads(r)["delivery"]
            for r in redis.Redis(port=store.port).lrange("cia:intake", 0, -1)]
