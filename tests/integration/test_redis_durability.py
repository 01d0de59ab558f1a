"""A Redis that does not keep what it answered across its own restart (no append-only file:
`appendonly no`, Debian's default and many managed Redis'), or not its last second across a
crash (`appendfsync everysec`), loses pushes we answered 2xx (REALITY.md, Redis; redis.io,
"Redis persistence"). On a real redis-server: the worker's, the web's and `check-config
--live`'s start-up checks say so as a risk, which refuses nothing; with `appendfsync always`
(the chart's) none of it. And when Redis did lose its data, the reconcile process says so and
kills no build Jenkins still runs."""

import pytest
import redis

from tests.integration.test_check_config_live import (  # noqa: F401 (env: a fixture)
    check_live_in_process, env, errors)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import (  # noqa: F401 (app: a fixture)
    app, running_on_its_agent)
from tests.integration.test_redis_eviction import (  # noqa: F401 (worker_env: a fixture)
    _web, scraped, worker_env)
from tests.integration.test_worker_and_reconcile_processes import INTERVAL, Process
from tests.support.app import make_app
from tests.support.monitoring import wait_until

RISK = "start-up check found a risk"
LOST = ("Redis lost its data: restarted without its append-only file, flushed, failed over to "
        "a replica that lagged, or its keys evicted; pushes it had taken and builds it knew are "
        "gone (agent pods whose builds Jenkins still runs are kept until those end)")
NO_AOF = "Redis: appendonly no: a restart of Redis loses every key written since its last"


@pytest.fixture
def redis_url(own_redis):
    """Every test here on a redis-server of its own, as Debian's and many managed Redis' run:
    without the append-only file (tests.support.redis_server); one test restarts it."""
    return own_redis.url


def warnings(result) -> list[str]:
    return [line.removeprefix("warning: ") for line in result.stderr.splitlines()
            if line.startswith("warning: Redis")]


def with_aof(server, appendfsync: str) -> None:
    admin = redis.Redis.from_url(server.url)
    admin.config_set("appendonly", "yes")
    admin.config_set("appendfsync", appendfsync)
    admin.close()


def test_the_worker_warns_of_a_redis_without_append_only_file_and_works_on(
        worker_env, own_redis):  # noqa: F811
    worker = Process("worker")
    try:
        wait_until(lambda: worker.said("start-up checks passed"), timeout=60,
                   what="the start-up checks")
        assert worker.proc.poll() is None, "".join(worker.raw[-20:])  # not refused
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.raw[-20:])
    [risk] = [line for line in worker.lines if line.get("msg") == RISK]
    assert risk["level"] == "warning" and risk["component"] == "worker"
    assert risk["risk"].startswith(NO_AOF) and "appendfsync always" in risk["risk"]


def test_check_config_live_names_the_risk_and_passes(env, own_redis, monkeypatch,  # noqa: F811
                                                     capsys):
    config, values = env
    result = check_live_in_process(config, values | {"REDIS_URL": own_redis.url},
                                   monkeypatch, capsys)

    assert result.returncode == 0, result.stderr  # a risk, not a refusal
    assert errors(result) == []
    [line] = warnings(result)
    assert line.startswith(NO_AOF)


def test_appendfsync_everysec_is_named_and_always_is_not(env, own_redis, monkeypatch,  # noqa: F811
                                                        capsys):
    config, values = env
    values = values | {"REDIS_URL": own_redis.url}
    with_aof(own_redis, "everysec")
    [line] = warnings(check_live_in_process(config, values, monkeypatch, capsys))
    assert line.startswith("Redis: appendfsync everysec: a crash of Redis or its node loses")

    with_aof(own_redis, "always")  # the chart's
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 0 and warnings(result) == [], result.stderr


def test_the_web_warns_once_from_its_master(own_redis, tmp_path):
    lines = _web(own_redis.url, tmp_path)

    [risk] = [line for line in lines if line.get("msg") == RISK]
    assert risk["level"] == "warning" and risk["component"] == "web"
    assert risk["risk"].startswith(NO_AOF)


def test_the_web_does_not_warn_of_a_redis_with_append_only_file(own_redis, tmp_path):
    with_aof(own_redis, "everysec")  # judged on INFO alone: the web's user may lack CONFIG

    lines = _web(own_redis.url, tmp_path)

    assert not [line for line in lines if line.get("msg") == RISK]


def test_a_data_loss_is_told_and_the_build_jenkins_runs_keeps_its_agent(
        app, kube, jenkins_fake, own_redis):  # noqa: F811
    """The reconcile process runs; Redis restarts without its append-only file, and comes back
    empty, while a build runs in Jenkins on our agent. The process says so at error, and keeps
    that agent's pod and Jenkins node till the build ends."""
    build, _, agent = running_on_its_agent(app, kube, jenkins_fake)
    reconciler = Process("reconcile", "--interval", str(INTERVAL))
    try:
        wait_until(lambda: reconciler.said("reconciled") >= 2, timeout=60, what="two passes")
        own_redis.stop()
        own_redis.start()  # empty: --save "" --appendonly no
        wait_until(lambda: reconciler.said(LOST), timeout=30, what="the loss told")
        passes = reconciler.said("reconciled")
        wait_until(lambda: reconciler.said("reconciled") >= passes + 3, timeout=30,
                   what="three passes after the loss")
        assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
        assert agent in jenkins_fake.nodes

        jenkins_fake.finish_build(build.queue_id)
        wait_until(lambda: not kube.pods(NAMESPACE), timeout=30, what="the pod deleted")
        wait_until(lambda: agent not in jenkins_fake.nodes, timeout=30, what="its node")
    finally:
        code = reconciler.stop()
    assert code == 0, "".join(reconciler.raw[-20:])
    [told] = [line for line in reconciler.lines if line.get("msg") == LOST]
    assert told["level"] == "error"


def test_metrics_say_whether_redis_keeps_an_append_only_file(own_redis):
    app = make_app(own_redis.url)
    assert scraped(app)["ci_autoscaler_redis_aof_enabled", ()] == 0

    with_aof(own_redis, "always")

    assert scraped(app)["ci_autoscaler_redis_aof_enabled", ()] == 1


def test_a_worker_goes_on_building_after_redis_restarted_empty(app, kube, jenkins_fake,  # noqa: F811
                                                               own_redis):
    """The worker process runs through a restart of Redis that comes back empty (its RQ
    registrations, its mover's heartbeat and claims gone): the next push still gets its pod."""
    worker = Process("worker")
    try:
        push(app.test_client(), 1)
        wait_until(lambda: len(kube.pods(NAMESPACE)) == 1, timeout=60, what="the first pod")
        own_redis.stop()
        own_redis.start()
        push(app.test_client(), 2)
        wait_until(lambda: len(kube.pods(NAMESPACE)) == 2, timeout=60,
                   what="the pod of a push after the restart")
        assert worker.proc.poll() is None, "".join(worker.raw[-20:])
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.raw[-20:])
