"""Two GPU builds pushed at once, one free GPU in the whole cluster (issue 18): both decisions
are made before either pod exists, so only the atomic reservation in Redis can keep them off
the same GPU. Exactly one pod is made; the other build waits as insufficient_nvidia.com/gpu,
and is placed on that node once the first build ends. Driven through real RQ jobs on two
threads of one worker (workers.concurrency.pool_worker), the watched cache over the
Kubernetes API mock, real Redis and the Jenkins fake."""

import threading
import time

import pytest
import redis

from tests.integration.test_placement_fit_on_cluster import CONFIG, GPU, build, push, seen
from tests.integration.test_push_to_pod import NAMESPACE, completed
from tests.support.app import JENKINS_TOKEN, work
from workers.adapters.redis_state import SERIALIZER
from tests.support.kmock_cluster import PODS
from tests.support.monitoring import wait_until
from workers import runtime
from workers.concurrency.pool_worker import PoolWorker
from workers.engine import reconcile
from workers.engine.intake import Mover

REASON = f"insufficient_{GPU}"


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(),
                          CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2")


def decided(connection: redis.Redis, prefix: str, key: str) -> bool:
    """The build's decision is taken: it holds a reservation, or it waits."""
    return bool(connection.hexists(prefix + "reservations", key)) or connection.hget(
        f"{prefix}build:{key}", "wait_reason") is not None


def both_at_once(app, kube, redis_url: str, first: str, second: str) -> None:
    """Run the two builds' jobs on two threads, the first one's pod create held at the API
    server until the second build has decided: neither pod exists when either decides."""
    state = app.extensions["ci_autoscaler"].state
    held, watcher = threading.Event(), redis.Redis.from_url(redis_url)

    def hold_first_create() -> None:  # on the server's loop: no call back into the server
        held.set()
        deadline = time.monotonic() + 20
        while not decided(watcher, state.prefix, second) and time.monotonic() < deadline:
            time.sleep(0.01)

    kube.before_next("create", PODS, hold_first_create)
    Mover(state).drain()
    PoolWorker([state.queue], connection=state.redis, serializer=SERIALIZER,
               concurrency=2).work(burst=True)
    assert held.is_set(), "no pod create was held"
    assert state.queue.failed_job_registry.count == 0, "a job failed; see the worker log"


def test_two_gpu_builds_at_once_make_one_pod_and_the_other_waits_then_lands(
        app, kube, jenkins_fake, redis_url):
    kube.add_node("a-plain", cpu="16", memory="64Gi")  # the idlest, and no GPU
    kube.add_node("gpu-1", cpu="8", memory="32Gi", extended={GPU: "1"})
    first = push(app, 1, ref="refs/heads/gpu-train")
    second = push(app, 2, ref="refs/heads/gpu-eval")
    both_at_once(app, kube, redis_url, first, second)

    builds = {k: build(app, k) for k in (first, second)}
    placed = [k for k, b in builds.items() if b.get("node")]
    assert len(placed) == 1, builds
    assert len(kube.pods(NAMESPACE)) == 1
    [winner] = placed
    [loser] = [k for k in builds if k != winner]
    assert builds[winner]["node"] == "gpu-1"
    assert builds[loser]["status"] == "waiting", builds[loser]
    assert builds[loser]["wait_reason"] == REASON, builds[loser]

    # The first build ends: its pod and reservation go, and the waiting one lands on gpu-1
    # (not unschedulable for ever: the one GPU node was never refused to it).
    client, rt = app.test_client(), runtime.current()
    agent = builds[winner]["agent"]
    note = completed(jenkins_fake, agent)
    assert client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=note).status_code == 202
    work(app)
    assert kube.pod(NAMESPACE, agent) is None
    wait_until(lambda: reconcile.reconcile_once(rt) is not None
               and build(app, loser).get("node") == "gpu-1", timeout=15,
               what="the waiting GPU build placed on gpu-1 once the first ended")
    assert len(kube.pods(NAMESPACE)) == 1
    assert not build(app, loser).get("excluded_nodes")


def test_a_reserved_builds_pod_and_its_reservation_hold_its_gpu_once(app, kube):
    """The first build's pod exists (not bound yet: held on its first candidate,
    kube_objects.pod_record) while its reservation lives: its GPU counts once, so a node
    with two takes the second build too."""
    kube.add_node("gpu-2", cpu="8", memory="32Gi", extended={GPU: "2"})
    first = push(app, 1, ref="refs/heads/gpu-train")
    work(app)
    assert build(app, first)["node"] == "gpu-2"
    rt = runtime.current()
    assert first in rt.capacity.reservations()
    seen(lambda: dict(next(n for n in rt.view.snapshot() if n.name == "gpu-2").held.extended)
         .get(GPU) == 1, "the first build's pod holding its GPU")
    second = push(app, 2, ref="refs/heads/gpu-eval")
    work(app)
    assert build(app, second).get("node") == "gpu-2", build(app, second)
    assert len(kube.pods(NAMESPACE)) == 2
