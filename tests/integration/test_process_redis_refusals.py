"""The worker and reconcile commands as processes, against a Redis that is away or refuses
them: each says which setting and exits (a burst worker 1, a refused REDIS_URL 2). Split from
test_worker_and_reconcile_processes.py: each test starts a real process, and one module runs
on one xdist worker (--dist loadscope), so the two halves run side by side."""

import subprocess
from urllib.parse import urlsplit

import pytest

from tests.integration.test_reconcile_repairs import CONFIG, NAMESPACE
from tests.integration.test_worker_and_reconcile_processes import INTERVAL, Process
from tests.support.app import cluster_app


def test_a_burst_worker_without_redis_says_so_and_exits_1(
        monkeypatch, tmp_path, own_redis, kube, jenkins_fake):
    """A one-shot run fails rather than wait (before, a ConnectionError traceback)."""
    with cluster_app(monkeypatch, tmp_path, redis_url=own_redis.url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        own_redis.stop()
        worker = Process("worker", "--burst")
        worker.proc.wait(timeout=60)
        assert worker.stop() == 1
    assert "error: Redis unavailable (ConnectionError)\n" in worker.raw
    assert not any("Traceback" in line for line in worker.raw)


def exited_on(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, args, url: str):
    """The process `args`, configured as the app (CONFIG) but with REDIS_URL `url`, run until
    it exits by itself (30 s at most): the process and its exit code."""
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE):
        monkeypatch.setenv("REDIS_URL", url)
        process = Process(*args)
        try:
            process.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("it still runs: " + "".join(process.raw[-5:])) from None
        finally:
            code = process.stop()
    return process, code


@pytest.mark.parametrize("args", [("worker",), ("worker", "--burst"),
                                  ("reconcile", "--interval", str(INTERVAL))])
def test_a_process_whose_redis_refuses_it_names_redis_url_and_exits_2(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, args):
    """A Redis that answers, and refuses REDIS_URL's user or password (WRONGPASS, or NOAUTH for
    a URL without the password), is no Redis "unavailable": no wait ends it, as the process's
    environment is what is wrong. The worker waited for it for ever, a pod Running with one
    line "Redis unavailable: waiting for it" while no build started (before that it crashed
    with the traceback); the reconcile loop logged "reconcile lease unavailable" every pass
    and ran none. Now each says which setting, as for any other, and exits 2."""
    parts = urlsplit(redis_url)
    process, code = exited_on(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, args,
                              f"redis://nobody:wrong@{parts.netloc}{parts.path}")
    assert code == 2, "".join(process.raw[-20:])
    assert "error: REDIS_URL: Redis refuses its user or password (AuthenticationError)\n" \
        in process.raw, "".join(process.raw[-20:])
    assert not any("Traceback" in line for line in process.raw)


@pytest.mark.parametrize("args", [("worker",), ("worker", "--burst"),
                                  ("reconcile", "--interval", str(INTERVAL))])
def test_a_process_whose_redis_has_no_such_database_says_so_and_exits_2(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, args):
    """REDIS_URL naming a database the Redis does not have (`/16` with Redis' default
    `databases 16`): Redis answers every connection's SELECT with "ERR DB index is out of
    range", and no wait mends it. The worker and the reconcile loop logged "Redis
    unavailable: waiting for it" with error "ResponseError" once a minute, for ever, while
    no build started (and Redis was up); the burst worker said "Redis unavailable
    (ResponseError)". Now each names REDIS_URL with Redis' own reason and exits 2, as for a
    refused password."""
    process, code = exited_on(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, args,
                              f"redis://{urlsplit(redis_url).netloc}/16")
    assert code == 2, "".join(process.raw[-20:])
    assert "error: REDIS_URL: Redis refuses it: DB index is out of range\n" in process.raw, \
        "".join(process.raw[-20:])
    assert not any("Traceback" in line for line in process.raw)
