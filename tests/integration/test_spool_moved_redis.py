"""Redis moved while pushes wait in the spool: the outage that fills the spool is when an
operator replaces a sentinel, renames Redis's host or switches to Sentinel. The spooled pushes
still reach the installation's intake: through the same owner (the sentinel list is not part
of it), or by `ci-autoscaler spool adopt` (another address: the rows name the old one); a
default spool directory left behind under the old address is named at start.

Real redis-server and redis-sentinel processes, the web app (service.app), its drainer, the
spool on real SQLite files, and the command as a process of its own.
"""

import logging
import os
import subprocess
import sys

import orjson
import pytest

from tests.integration.test_spool import push
from tests.integration.test_spool_owner import drain, in_intake
from tests.integration.test_spool_owner import temp_dir  # noqa: F401 (a fixture)
from tests.support.app import make_app, make_settings
from tests.support.monitoring import wait_until
from tests.support.redis_server import RedisServer, free_port
from tests.support.sentinel import MASTER_NAME, sentinel_set  # noqa: F401 (a fixture)
from tests.support.web_process import GUNICORN, ROOT, web_env, web_process
from workers.adapters import spool_adopt
from workers.adapters.spool import Spool
from workers.engine.spool_drain import SpooledPush, spool_push

INSTALLATION = "prod/ci-autoscaler"


def test_pushes_spooled_before_the_sentinels_were_replaced_are_drained_after(
        sentinel_set, tmp_path):  # noqa: F811
    """Every sentinel the web knew is gone (the outage); the operator replaces them with new
    ones watching the same master and restarts the web with the new REDIS_SENTINELS. The rows
    spooled before named the old sentinel list in their owner: foreign to the restarted web,
    never drained (GitLab does not send them again)."""
    spool_dir = str(tmp_path / "spool")
    gone = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    common = dict(installation=INSTALLATION, spool_dir=spool_dir,
                  redis_sentinel_master=MASTER_NAME)
    before = make_app("redis://127.0.0.1:1/0", redis_sentinels=gone, **common)
    assert push(before.test_client(), "push-1").json["status"] == "spooled"
    before.extensions["ci_autoscaler"].spool.close()

    after = make_app("redis://127.0.0.1:1/0", redis_sentinels=sentinel_set.addresses, **common)
    assert after.extensions["ci_autoscaler"].spool.others() == {}
    assert drain(after) == 1
    assert in_intake(after) == ["gitlab:push-1"]


@pytest.fixture
def store(tmp_path):
    server = RedisServer(tmp_path / "redis", appendonly=True).start()  # kept across restarts
    yield server
    server.stop()


def metrics(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def adopt_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`ci-autoscaler spool adopt ...` as an operator runs it in the web's environment."""
    return subprocess.run([sys.executable, "-m", "service.cli", "spool", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_pushes_spooled_before_redis_was_renamed_are_adopted_and_each_built_once(
        store, tmp_path):
    """The chart's PVC spool: Redis went away, and came back under a new name (a new Service,
    an external Redis); the web restarted with the new REDIS_URL. The rows spooled under the
    old name are another owner's to it: left alone (counted, logged), never drained. Adopted,
    they are drained, each push built once: one GitLab's "Resend" brought to the new Redis
    already is dropped by the intake, one the new web spooled again is kept once; another
    installation's rows in the directory stay theirs."""
    spool_dir = str(tmp_path / "spool")
    old_url, new_url = store.url, store.url.replace("127.0.0.1", "localhost")
    old = make_app(old_url, installation=INSTALLATION, spool_dir=spool_dir)
    staging = make_app(old_url, installation="staging/ci-autoscaler", spool_dir=spool_dir)
    store.stop()
    for n in (1, 2, 3):
        assert push(old.test_client(), f"push-{n}", sha=f"{n:040x}").json["status"] == "spooled"
    assert push(staging.test_client(), "push-9", sha=f"{9:040x}").json["status"] == "spooled"

    new = make_app(new_url, installation=INSTALLATION, spool_dir=spool_dir)
    store.start()
    assert push(new.test_client(), "push-1", sha=f"{1:040x}").json["status"] == "queued"
    assert drain(new) == 0  # the old rows are another owner's
    store.stop()
    assert push(new.test_client(), "push-3", sha=f"{3:040x}").json["status"] == "spooled"
    store.start()

    env = web_env(new_url, CI_AUTOSCALER_INSTALLATION=INSTALLATION,
                  CI_AUTOSCALER_SPOOL_DIR=spool_dir)
    listed = adopt_command(env, "list")
    assert listed.returncode == 0, listed.stderr
    old_owner = old.extensions["ci_autoscaler"].spool.owner
    assert f"3  {old_owner!r} (another owner's)" in listed.stdout
    adopted = adopt_command(env, "adopt", "--other-redis")
    assert adopted.returncode == 0, adopted.stderr
    assert "2 push(es)" in adopted.stdout and "1 already spooled" in adopted.stdout
    assert "left alone: 1 push(es) of 'staging/ci-autoscaler redis:" in adopted.stdout

    spool = new.extensions["ci_autoscaler"].spool
    assert spool.others() == {staging.extensions["ci_autoscaler"].spool.owner: 1}
    assert drain(new) == 3
    assert sorted(in_intake(new)) == ["gitlab:push-1", "gitlab:push-2", "gitlab:push-3"]
    assert spool.counts() == (0, 0)


def test_a_default_spool_left_under_the_old_redis_is_named_at_start_and_adopted(
        store, temp_dir, tmp_path, caplog):
    """No CI_AUTOSCALER_SPOOL_DIR: the default directory is named by the Redis target, so the
    web restarted with Redis's new name spools to, and drains, another directory; the old one
    holds pushes nothing reads. The web names it at start (and no other installation's, nor
    an empty one); adopted from there, its pushes are drained into the new web's Redis."""
    old_url, new_url = store.url, store.url.replace("127.0.0.1", "localhost")
    old = make_app(old_url, installation=INSTALLATION, spool_dir="")
    other = make_app(old_url, installation="staging/ci-autoscaler", spool_dir="")
    empty = make_app(old_url, installation=INSTALLATION, spool_dir="", key_prefix="empty:")
    store.stop()
    assert push(old.test_client(), "push-1").json["status"] == "spooled"
    assert push(other.test_client(), "push-9").json["status"] == "spooled"
    assert empty.extensions["ci_autoscaler"].spool.check() is None  # its file, no row
    old.extensions["ci_autoscaler"].spool.close()  # the old web is gone (its live lock too)
    store.start()
    stranded = str(old.extensions["ci_autoscaler"].spool.directory)

    caplog.set_level(logging.WARNING, logger="ci_autoscaler.web")
    new = make_app(new_url, installation=INSTALLATION, spool_dir="")
    assert new.extensions["ci_autoscaler"].spool.directory != old.extensions[
        "ci_autoscaler"].spool.directory
    named = [(r.spool, r.events) for r in caplog.records if "another Redis" in r.getMessage()]
    assert named == [(stranded, 1)]
    assert drain(new) == 0
    assert "ci_autoscaler_spool_stranded_events 1.0" in metrics(new)  # and pages

    env = web_env(new_url, CI_AUTOSCALER_INSTALLATION=INSTALLATION, TMPDIR=str(temp_dir))
    del env["CI_AUTOSCALER_SPOOL_DIR"]
    adopted = adopt_command(env, "adopt", "--dir", stranded, "--other-redis")
    assert adopted.returncode == 0, adopted.stderr
    assert adopted.stdout.startswith("1 push(es)")
    assert drain(new) == 1
    assert in_intake(new) == ["gitlab:push-1"]
    assert "ci_autoscaler_spool_stranded_events 0.0" in metrics(new)
    caplog.clear()
    make_app(new_url, installation=INSTALLATION, spool_dir="")  # emptied: not named again
    assert not any("another Redis" in r.getMessage() for r in caplog.records)


def live_holders(directory: str) -> set[str]:
    """The processes holding `directory`'s live lock, by the kernel's table of locks
    (proc(5), /proc/locks: one line per lock, "FLOCK ADVISORY READ <pid> <maj:min:inode> ...")."""
    inode = os.stat(os.path.join(directory, "live.lock")).st_ino
    with open("/proc/locks") as table:
        return {fields[4] for fields in map(str.split, table) if fields[1] == "FLOCK"
                and fields[5].endswith(f":{inode}")}


def test_a_default_spool_a_live_web_of_another_redis_uses_is_neither_stranded_nor_adopted(
        store, temp_dir, tmp_path):
    """Another installation with this one's name (both unset, say: staging beside prod) and
    its own Redis runs on this host as this user: its default spool is this one's but for the
    Redis part, and its rows name this installation. While its web runs (gunicorn, a process
    of its own, its Redis away: the rows wait in its spool), it holds its spool's live lock:
    not counted as stranded here (no false page), and `spool adopt --dir` refuses it (its
    pushes would be built here, never by it). Once that web is gone, they are stranded."""
    other_url = f"redis://127.0.0.1:{free_port()}/0"  # its Redis, away
    other = make_settings(other_url, installation=INSTALLATION, spool_dir="")
    spool_push(Spool(other.spool_path, owner=other.spool_owner, private=True), SpooledPush(
        delivery_id="gitlab:push-9", mark="gitlab:push-9", record=b"{}", ttl_seconds=600))
    port = free_port()
    env = web_env(other_url, CI_AUTOSCALER_INSTALLATION=INSTALLATION, TMPDIR=str(temp_dir),
                  CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    del env["CI_AUTOSCALER_SPOOL_DIR"]
    here = make_app(store.url, installation=INSTALLATION, spool_dir="")
    mine = web_env(store.url, CI_AUTOSCALER_INSTALLATION=INSTALLATION, TMPDIR=str(temp_dir))
    del mine["CI_AUTOSCALER_SPOOL_DIR"]
    with web_process(GUNICORN, env, port, tmp_path / "other-web.log"):
        # gunicorn's master holds it too (between a worker's death and the next one's start)
        assert len(live_holders(other.spool_path)) == 2  # the master and its one worker
        assert "ci_autoscaler_spool_stranded_events 0.0" in metrics(here)
        refused = adopt_command(mine, "adopt", "--dir", other.spool_path, "--other-redis")
        assert refused.returncode == 1, refused.stdout
        assert "a live web uses it" in refused.stderr
        assert spool_adopt.owners(other.spool_path) == {other.spool_owner: 1}
    # Its processes end after the shell that started them: the kernel drops the lock then.
    wait_until(lambda: "ci_autoscaler_spool_stranded_events 1.0" in metrics(here), timeout=30,
               what="the other web's spool counted as stranded once that web is gone")


def test_a_spool_reached_by_another_path_is_adopted_in_place(tmp_path):
    """A bind mount reaches the web's own directory by another path, which resolving links
    does not see: it is the same directory (os.path.samefile), so its rows change owner in
    place. Taken for another one, the web's own rows were read from it as "this owner's rows
    left there", copied onto themselves (ignored: the same delivery), then deleted: the
    web's own pending push lost, reported as "already spooled"."""
    real = tmp_path / "spool"
    me, old_owner = f"{INSTALLATION} redis:000000000002", f"{INSTALLATION} redis:000000000001"
    Spool(real, owner=old_owner).put("gitlab:push-1", b"x")
    here = Spool(real, owner=me)
    assert here.put("gitlab:push-2", b"y")  # the web's own push, not drained yet
    alias = tmp_path / "mnt"
    try:
        subprocess.run(["mount", "--bind", str(real), str(alias.mkdir() or alias)], check=True,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        # The suite runs as root on Debian (README); a test does not skip a missing part.
        pytest.fail(f"a bind mount is needed (root and mount(8)): {err}")
    try:
        assert spool_adopt.adopt(here, alias, {old_owner}) == spool_adopt.Adopted(1, 0)
        assert spool_adopt.owners(real) == {me: 2}
        assert sorted(e.delivery for e in here.oldest(10)) == ["gitlab:push-1", "gitlab:push-2"]
    finally:
        here.close()
        subprocess.run(["umount", "--lazy", str(alias)], check=True)  # even if still open


def test_adopting_from_a_directory_others_can_write_is_refused(store, temp_dir):
    """A directory in the temp dir that another user could have made or written: its rows
    might be planted, and adopted they would be built as pushes nobody sent."""
    planted = temp_dir / "planted"
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)
    Spool(planted, owner="x redis:000000000000").put("gitlab:planted", orjson.dumps({}))
    env = web_env(store.url, CI_AUTOSCALER_INSTALLATION=INSTALLATION, TMPDIR=str(temp_dir))
    refused = adopt_command(env, "adopt", "--dir", str(planted), "--owner",
                            "x redis:000000000000")
    assert refused.returncode == 1 and "open to other users" in refused.stderr
    settings = make_settings(store.url, installation=INSTALLATION,
                             spool_dir=env["CI_AUTOSCALER_SPOOL_DIR"])
    assert Spool(settings.spool_path, owner=settings.spool_owner).counts() == (0, 0)


def test_an_adoption_from_another_directory_cut_short_is_finished_by_the_next(tmp_path):
    """The rows are committed here before they are deleted there: an adoption killed between
    the two leaves them in both, and the next one takes none twice and deletes them there."""
    source_dir, here_dir = tmp_path / "old-spool", tmp_path / "spool"
    old_owner, me = f"{INSTALLATION} redis:000000000001", f"{INSTALLATION} redis:000000000002"
    source = Spool(source_dir, owner=old_owner)
    for n in range(3):
        assert source.put(f"gitlab:push-{n}", b"x")
    left = source.oldest(10)
    here = Spool(here_dir, owner=me)
    assert spool_adopt.adopt(here, source_dir, {old_owner}) == spool_adopt.Adopted(3, 0)
    for event in left:  # as if killed before the delete there
        Spool(source_dir, owner=old_owner).put(event.delivery, event.payload)
    assert spool_adopt.owners(source_dir) == {old_owner: 3}
    assert spool_adopt.adopt(here, source_dir, {old_owner}) == spool_adopt.Adopted(0, 3)
    assert spool_adopt.owners(source_dir) == {}
    assert [e.delivery for e in here.oldest(10)] == [f"gitlab:push-{n}" for n in range(3)]
