"""A build whose room on a node is taken by other builds placed at the same moment, on every
one of its tries (workers.engine.scheduling.RESERVE_ATTEMPTS), waits with the reason `contention`:
there was room. Real redis-server behind a proxy that plays a worker elsewhere taking a
reservation on the node between each read and reserve (tests.support.redis_race), kmock over
HTTP, the Jenkins fake; pushes through the webhook and the queue."""

import time
from urllib.parse import urlsplit

import pytest
import redis

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported
from tests.integration.test_scale_up_pods import CONFIG, CI_POOL, scale_up_pods
from tests.support.app import production_env, work
from tests.support.redis_race import ScriptRaceProxy
from service.app import create_app
from workers import runtime
from workers.engine import reconcile, scale_up
from workers.adapters.capacity_store import _RESERVE


@pytest.fixture
def raced(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The app, its Redis reached through the proxy; `take()` another worker's reservation on
    node-a, stored anew (another value) before every reserve the app sends."""
    url = urlsplit(redis_url)
    direct = redis.Redis.from_url(redis_url)
    taken = {"n": 0, "on": True}

    def take():
        if taken["on"]:
            taken["n"] += 1
            expires = time.time() + 60 + taken["n"] / 1000
            direct.hset(prefix["reservations"], "other-installation-build",
                        f"node-a|100|{2**20}|{expires:.3f}")
    prefix = {}
    proxy = ScriptRaceProxy((url.hostname, url.port), _RESERVE, take)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=f"redis://127.0.0.1:{proxy.port}{url.path}",
                   kube=kube, jenkins_fake=jenkins_fake, config=config, namespace=NAMESPACE)
    kube.add_node("node-a", cpu="8", memory="32Gi", **CI_POOL)
    runtime.install(None)
    app = create_app()
    prefix["reservations"] = app.extensions["ci_autoscaler"].state.prefix + "reservations"
    take()  # held before the build comes: every read of node-a sees it
    yield app, proxy, taken, kube
    runtime.install(None)
    proxy.stop()


def test_a_build_losing_every_race_for_room_waits_as_contention_not_insufficient_cpu(raced):
    """It waited as insufficient_cpu: its developer read that the cluster lacks CPU, the
    operator's waiting builds by reason said to add some, and the reconcile pass made it a
    scale-up pod, asking the cluster autoscaler for a node beside the room it had."""
    app, proxy, taken, kube = raced
    key = push(app.test_client(), 0)
    work(app)

    build = app.extensions["ci_autoscaler"].state.get_build(key)
    assert proxy.raced >= 5
    assert (build["status"], build["wait_reason"]) == ("waiting", "contention"), build
    assert "took the room" in build["wait_detail"]
    assert exported(app, 'ci_autoscaler_builds_waiting{reason="contention"}') == 1
    assert exported(app, 'ci_autoscaler_builds_waiting{reason="insufficient_cpu"}') == 0
    assert exported(app, "ci_autoscaler_nodes_needed ") == 0
    rt = runtime.current()
    made = scale_up.sync(rt)  # the reconcile pass's scale-up pods: no node asked for it
    assert made["scale_up_pods_created"] == 0 and scale_up_pods(kube) == {}

    taken["on"] = False  # the burst is over: the next re-drive places it
    reconcile.reconcile_once(rt)
    work(app)
    assert app.extensions["ci_autoscaler"].state.get_build(key)["status"] == "triggered"
