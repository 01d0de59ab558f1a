"""A Redis that refuses PING for a while is waited for (workers.adapters.redis_connect
.await_redis), against a real redis-server: `-BUSY` while a script runs past
busy-reply-threshold, `-MISCONF` while its last RDB save has failed (a full disk). redis-py
knows neither code and makes both a plain ResponseError (redis/_parsers/base.py,
EXCEPTION_CLASSES), as it does `-ERR DB index is out of range`, which ends the process."""

import logging
import shutil
import threading
from contextlib import contextmanager

import redis

from tests.support.monitoring import wait_until
from workers.adapters.redis_connect import await_redis

TIMEOUT = 20


def _ping_refused(client: redis.Redis, code: str) -> bool:
    try:
        client.ping()
    except redis.ResponseError as err:
        return str(err).startswith(code)
    return False


def _await_in_thread(url: str) -> tuple[threading.Thread, list, dict, threading.Event]:
    """await_redis as the worker runs it, in a thread: what `waiting` was told, and how it
    ended (`answered`, or `raised`)."""
    told: list[Exception] = []
    ended: dict = {}
    stop = threading.Event()

    def run() -> None:
        try:
            ended["answered"] = await_redis(redis.Redis.from_url(url), stop,
                                            waiting=lambda err, waited: told.append(err))
        except redis.RedisError as err:
            ended["raised"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, told, ended, stop


def _waits_then_answers(url: str, code: str, mend) -> None:
    thread, told, ended, stop = _await_in_thread(url)
    try:
        wait_until(lambda: told or not thread.is_alive(), timeout=TIMEOUT,
                   what="await_redis telling it waits, or ending")
        assert "raised" not in ended, f"taken for a bad REDIS_URL: {ended['raised']!r}"
        assert str(told[0]).startswith(code), told
        mend()
        thread.join(TIMEOUT)
        assert ended == {"answered": True}
    finally:
        stop.set()
        thread.join(TIMEOUT)


@contextmanager
def _busy(url: str):
    """A Lua script running past busy-reply-threshold: Redis answers PING `-BUSY ... You can
    only call SCRIPT KILL or SHUTDOWN NOSAVE` until it ends. Yields the script's killer."""
    admin = redis.Redis.from_url(url)
    admin.config_set("busy-reply-threshold", 100)  # ms; Redis' default is 5 s

    def script() -> None:
        try:
            redis.Redis.from_url(url).eval("while true do end", 0)
        except redis.ResponseError:  # "Script killed by user with SCRIPT KILL"
            pass

    runner = threading.Thread(target=script, daemon=True)
    runner.start()
    wait_until(lambda: _ping_refused(admin, "BUSY"), timeout=TIMEOUT, what="PING refused BUSY")
    try:
        yield admin.script_kill
    finally:
        try:
            admin.script_kill()
        except redis.ResponseError:  # "NOTBUSY No scripts in execution right now."
            pass
        runner.join(TIMEOUT)


def test_a_redis_busy_running_a_script_is_waited_for_not_taken_for_a_bad_setting(own_redis):
    """A Lua script (or function) running long: the worker and the reconcile loop exited 2,
    "REDIS_URL: Redis refuses it: BUSY ...", and restarted into a crash loop while it ran."""
    with _busy(own_redis.url) as kill:
        _waits_then_answers(own_redis.url, "BUSY", kill)


def test_the_wait_for_a_busy_redis_logs_redis_reply_not_only_its_type(own_redis, caplog):
    """The worker's and the reconcile loop's wait (service.cli._await_redis) logged "Redis
    unavailable: waiting for it", error "ResponseError", while PING answered from the same
    Redis: now with Redis' reply (which quotes no password), as redis-cli shows it."""
    from service.cli import _await_redis

    caplog.set_level(logging.INFO)
    ended: dict = {}
    stop = threading.Event()
    with _busy(own_redis.url) as kill:
        thread = threading.Thread(target=lambda: ended.update(answered=_await_redis(
            redis.Redis.from_url(own_redis.url), stop, logging.getLogger("test.busy"))),
            daemon=True)
        thread.start()
        try:
            [record] = wait_until(lambda: [r for r in caplog.records if r.getMessage() ==
                                           "Redis unavailable: waiting for it"],
                                  timeout=TIMEOUT, what="the wait logged")
            assert record.error == "ResponseError"
            assert record.detail.startswith("BUSY Redis is busy running a script"), record.detail
            kill()
            thread.join(TIMEOUT)
        finally:
            stop.set()
            thread.join(TIMEOUT)
    assert ended == {"answered": True}


def test_a_redis_whose_rdb_save_failed_is_waited_for_not_taken_for_a_bad_setting(own_redis):
    """A Redis with save points whose last RDB save failed (stop-writes-on-bgsave-error, the
    default) answers PING `-MISCONF Redis is configured to save RDB snapshots, but it's
    currently unable to persist to disk` until a save succeeds (a full disk freed). Here the
    save fails as its rename onto dump.rdb does, a directory there."""
    admin = redis.Redis.from_url(own_redis.url)
    blocker = own_redis.directory / "dump.rdb"
    blocker.mkdir()
    (blocker / "keep").write_text("")
    admin.config_set("save", "3600 1")

    def saved(status: str) -> bool:
        info = admin.info("persistence")
        return not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == status

    def mend() -> None:
        shutil.rmtree(blocker)
        admin.bgsave()

    try:
        admin.set("k", "v")
        admin.bgsave()
        wait_until(lambda: saved("err"), timeout=TIMEOUT, what="the RDB save failing")
        assert _ping_refused(admin, "MISCONF")
        _waits_then_answers(own_redis.url, "MISCONF", mend)
    finally:
        shutil.rmtree(blocker, ignore_errors=True)
        admin.config_set("save", "")  # a failing save at shutdown keeps Redis running

