"""Sentinels that refuse the service's credentials say so, by address, never with the password
(workers.adapters.redis_connect), on real processes (Debian's redis-server and redis-sentinel
7.0 with `requirepass`, tests/support/sentinel.py). redis-py's own error is "No master found"
whatever the cause, and the processes log an error by its type: a wrong or missing
REDIS_SENTINEL_PASSWORD read as MasterNotFoundError, sentinels down, and every process waited
for ever. A sentinel with requirepass answers WRONGPASS to a wrong password and NOAUTH to none
(Redis docs, "Configuring Sentinel instances with authentication"; redis-py raises
AuthenticationError for both)."""

import logging
import threading

import pytest

from service.cli import _await_redis
from tests.support.sentinel import MASTER_NAME, SentinelSet
from workers.adapters import redis_connect
from workers.adapters.redis_connect import NoMasterFromSentinels, SentinelsRefused, await_redis
from workers.checks.live import redis_policy
from workers.config.settings import Settings

RIGHT = "r1ght-sentinel-pass"
WRONG = "wr0ng-p@ss-never-shown"


@pytest.fixture
def guarded_set(tmp_path):
    redis_set = SentinelSet(tmp_path / "sentinel", sentinel_lines=(f"requirepass {RIGHT}",),
                            sentinel_password=RIGHT).start()
    yield redis_set
    redis_set.stop()


def _client(redis_set: SentinelSet, password: str | None):
    # REDIS_URL's host is not used with sentinels: port 1 answers nothing.
    return Settings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=redis_set.addresses,
                    redis_sentinel_master=MASTER_NAME,
                    **({"redis_sentinel_password": password} if password else {})
                    ).redis_client(socket_timeout=1)


def _addresses(redis_set: SentinelSet, ports=None) -> list[str]:
    return [f"127.0.0.1:{p}" for p in ports or redis_set.sentinel_ports]


def test_a_wrong_sentinel_password_is_named_and_not_waited_for(guarded_set, capsys,
                                                                monkeypatch):
    # Past the grace a password change is given (test_sentinels_all_refusing_...): none here.
    monkeypatch.setattr(redis_connect, "SENTINELS_REFUSED_GRACE_SECONDS", 0.0)
    client = _client(guarded_set, WRONG)
    with pytest.raises(SentinelsRefused) as refused:
        client.ping()
    text = str(refused.value)
    assert "refused REDIS_SENTINEL_PASSWORD" in text
    assert all(address in text for address in _addresses(guarded_set))
    assert WRONG not in text and "p@ss" not in text

    # The worker and the reconcile loop exit with the setting named (no more wait mends it),
    # as for a Redis refusing REDIS_URL's password, rather than waiting for a master.
    waited = []
    answered = _await_redis(client, threading.Event(), logging.getLogger("test"),
                            alive=lambda: waited.append(True))
    assert answered is None and not waited
    err = capsys.readouterr().err
    assert "REDIS_SENTINEL_PASSWORD" in err and "127.0.0.1:" in err and "REDIS_URL" not in err
    assert WRONG not in err and "p@ss" not in err


def test_a_missing_sentinel_password_is_named(guarded_set):
    with pytest.raises(SentinelsRefused, match="require a password, and "
                                               "REDIS_SENTINEL_PASSWORD is not set"):
        _client(guarded_set, None).ping()


def test_sentinels_all_refusing_are_waited_for_until_one_has_the_new_user(guarded_set):
    """The upgrade that gives the sentinels the service's user (README, "Upgrading a release
    from before the password"), or a change of its password: the new pods start beside
    sentinels that all refuse it (WRONGPASS: no such user yet), and the StatefulSet gives a
    sentinel the user a pod restart later. The process waits for it, saying why (the sentinels'
    reasons), and goes on once one sentinel accepts: exiting at once put worker and reconcile
    in CrashLoopBackOff for the roll, then idle for Kubernetes' back-off after it."""
    client = Settings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=guarded_set.addresses,
                      redis_sentinel_master=MASTER_NAME, redis_sentinel_username="asker",
                      redis_sentinel_password=WRONG).redis_client(socket_timeout=1)
    told, done = [], []
    refused = threading.Event()

    def waiting(err, waited):
        told.append(err)
        refused.set()

    stop = threading.Event()
    waiter = threading.Thread(target=lambda: done.append(
        await_redis(client, stop, waiting=waiting, )))
    waiter.start()
    try:
        assert refused.wait(30), "no sentinel refusal waited for"
        # One sentinel rolled: it has the user now (the chart's ACL; Redis docs, "Sentinel and
        # ACL").
        guarded_set.sentinel_client(guarded_set.sentinel_ports[-1]).execute_command(
            "ACL", "SETUSER", "asker", "on", f">{WRONG}", "-@all", "+ping", "+hello", "+auth",
            "+client", "+sentinel|masters")
        waiter.join(30)
    finally:
        stop.set()
        waiter.join(10)
    assert done == [True]
    assert isinstance(told[0], SentinelsRefused)
    assert "refused REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD" in str(told[0])
    assert WRONG not in str(told[0]) and "p@ss" not in str(told[0])


def test_sentinels_refusing_while_one_is_down_are_waited_for_with_each_reason(
        guarded_set, caplog):
    """One sentinel down: the others' refusal may be the moment of a password change, so the
    process waits, and its log line says which refused and which did not answer."""
    down, *up = guarded_set.sentinel_ports
    guarded_set.sentinels[0].terminate()
    guarded_set.sentinels[0].wait(10)
    client = _client(guarded_set, WRONG)
    with pytest.raises(NoMasterFromSentinels) as found:
        client.ping()
    assert not isinstance(found.value, SentinelsRefused)

    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.worker"):
        answered = _await_redis(client, stop, logging.getLogger("ci_autoscaler.worker"),
                                alive=stop.set)  # stops after its first "waiting" line
    assert answered is False
    [line] = [r for r in caplog.records if r.name == "ci_autoscaler.worker"]
    detail = line.detail
    refused_part, _, unanswered_part = detail.partition("did not answer")
    assert all(address in refused_part for address in _addresses(guarded_set, up))
    assert _addresses(guarded_set, [down])[0] in unanswered_part
    assert WRONG not in detail and "p@ss" not in detail


def test_the_right_sentinel_password_finds_the_master(guarded_set):
    client = _client(guarded_set, RIGHT)
    assert client.ping()
    assert client.connection_pool.get_master_address()[1] == guarded_set.master.port


def test_check_config_live_names_the_refusing_sentinels(guarded_set):
    """`check-config --live` (workers.checks.live) says the same, where it said only
    "MasterNotFoundError"."""
    settings = Settings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=guarded_set.addresses,
                        redis_sentinel_master=MASTER_NAME, redis_sentinel_password=WRONG)
    [problem] = redis_policy(settings)
    assert "refused REDIS_SENTINEL_PASSWORD" in problem
    assert all(address in problem for address in _addresses(guarded_set))
    assert WRONG not in problem and "p@ss" not in problem


def test_a_sentinel_user_without_sentinel_masters_is_named_and_not_waited_for(tmp_path):
    """An ACL user of your own sentinels that may not run SENTINEL MASTERS, which redis-py asks
    for the master (Sentinel.discover_master): NOPERM, a NoPermissionError that redis-py
    raised from the first sentinel, and the processes waited for ever, logging its type."""
    redis_set = SentinelSet(tmp_path / "sentinel", sentinel_password=RIGHT, sentinel_lines=(
        f"requirepass {RIGHT}", f"user asker on >{WRONG} +ping +hello +auth +client")).start()
    try:
        client = Settings(redis_url="redis://127.0.0.1:1/0", redis_sentinels=redis_set.addresses,
                          redis_sentinel_master=MASTER_NAME, redis_sentinel_username="asker",
                          redis_sentinel_password=WRONG).redis_client(socket_timeout=1)
        with pytest.raises(SentinelsRefused) as refused:
            client.ping()
    finally:
        redis_set.stop()
    text = str(refused.value)
    assert "deny REDIS_SENTINEL_USERNAME the command SENTINEL MASTERS" in text
    assert all(address in text for address in _addresses(redis_set))
    assert WRONG not in text and "p@ss" not in text


def test_the_web_names_the_sentinel_password_not_redis_url_when_the_sentinels_refuse_it(
        guarded_set, monkeypatch, caplog):
    """The web's start-up check (service.startup.warn_if_evicting, from gunicorn's master)
    took every sentinel refusing REDIS_SENTINEL_PASSWORD for Redis refusing "REDIS_URL's user
    or password" (SentinelsRefused is one of redis_connect.REFUSED): an operator mended the
    wrong Secret while every push went to the spool. Now it names the sentinels' setting and
    their addresses, never the value, as the worker and the reconcile loop do."""
    from service import startup

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("REDIS_SENTINELS", guarded_set.addresses)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", WRONG)
    caplog.set_level(logging.INFO)

    startup.warn_if_evicting()

    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = warning.getMessage() + " " + str(vars(warning))
    assert "REDIS_SENTINEL_PASSWORD" in said and "REDIS_URL" not in said
    assert all(address in said for address in _addresses(guarded_set))
    assert WRONG not in said and "p@ss" not in said
