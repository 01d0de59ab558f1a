"""Builds waiting with no room anywhere: a pod ending elsewhere re-drives them, and the
re-drives settle: a pass that finds nothing freed queues no further pass by itself.

The Procfile's worker (its provision concurrency, 16 jobs at once, the default) scaled to two,
a real redis-server, kmock over HTTP and the Jenkins fake. One node, filled by someone else's
pods; 48 builds pushed all wait. A small pod of someone else's then goes from that node (its
10m of CPU frees room for no build), then four more, a fifth of a second apart: the workers'
watches queue a re-drive for each, which finds no room.
Nothing changes afterwards, so the re-drives must stop; a pass that kept queueing the next
(two overlapping passes deferring each other's builds, each deferral read as "room freed
meanwhile") keeps the workers busy re-deciding every waiting build for as long as they wait.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import yaml

from tests.support.jenkins_fake import JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import running_stack
from tests.support.redis_server import RedisServer

NAMESPACE, OTHERS = "ci-agents-rs", "data-team"
NODE = "ip-10-30-1-1.eu-west-1.compute.internal"
BUILDS = 48
PROBES = 5
CONFIG = {
    "routes": [{"project": "*", "ref": "refs/heads/*", "job": "build", "template": "jdk"}],
    "templates": {"jdk": {"cpu": {"min": "1", "default": "1", "max": "1"},
                          "memory": {"min": "512Mi", "default": "1Gi", "max": "1Gi"}}},
}
# No re-drive run for this long: they have settled (a pass of these builds takes well under
# a second here); fixed, they settle within a couple of seconds of the last deletion.
QUIET_SECONDS, SETTLE_SECONDS = 2.0, 15


def redrives(admin: redis.Redis) -> int:
    """Re-drive jobs run to their end so far (RQ keeps each finished job an hour:
    JOB_RESULT_TTL_SECONDS), by their description."""
    ids = admin.zrange("rq:finished:ci-autoscaler", 0, -1)
    return sum(admin.hget(f"rq:job:{i}", "description") == "redrive waiting builds" for i in ids)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, own_redis_server) -> Iterator[tuple]:
    base = tmp_path_factory.mktemp("settles")
    config = base / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = base / "logs"
    logs.mkdir()
    with running_kube(base) as kube, JenkinsFake() as jenkins:
        kube.trim_history()
        kube.add_namespace(NAMESPACE)
        kube.add_namespace(OTHERS)
        kube.add_node(NODE, cpu="4", memory="16Gi")
        kube.set_node_usage(NODE, cpu="3", memory="8Gi")
        kube.add_pod(OTHERS, "spark-exec-1", node=NODE, requests=[{"cpu": "3800m",
                                                                    "memory": "4Gi"}])
        for i in range(PROBES):
            kube.add_pod(OTHERS, f"probe-{i}", node=NODE, requests=[{"cpu": "10m",
                                                                    "memory": "16Mi"}])
        with running_stack(redis_url=own_redis_server.url, kube=kube, jenkins_fake=jenkins,
                           config=config, namespace=NAMESPACE, logs=logs,
                           CI_AUTOSCALER_SCALE_UP_PODS="false") as running:
            running.start_line("worker", "worker-2")
            yield running, kube, redis.Redis.from_url(own_redis_server.url,
                                                      decode_responses=True)


@pytest.fixture(scope="module")
def own_redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("settles-redis") / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def push(running, tag: str) -> str:
    commit = uuid.uuid5(uuid.NAMESPACE_URL, tag).hex + uuid.uuid5(uuid.NAMESPACE_DNS, tag).hex[:8]
    body = fixture("gitlab_push_real_lrz.json") | {
        "ref": f"refs/heads/feature/{tag}", "after": commit, "checkout_sha": commit}
    body["project"] = body["project"] | {"path_with_namespace": f"payments/{tag}"}
    status, answer = running.gitlab(json.dumps(body).encode(), "Push Hook", str(uuid.uuid4()))
    assert status == 202, answer
    return answer["build_key"]


def test_redrives_for_room_that_fits_nobody_settle(stack):
    running, kube, admin = stack
    with ThreadPoolExecutor(8) as senders:
        keys = list(senders.map(lambda i: push(running, f"wait-{i:02d}"), range(BUILDS)))
    wait_until(lambda: admin.zcard("cia:waiting") == BUILDS, timeout=60,
               what=lambda: f"{BUILDS} waiting: {admin.zcard('cia:waiting')}; "
                            f"{running.text()[-2000:]}")
    assert set(admin.zrange("cia:waiting", 0, -1)) == set(keys)
    # the pushes' own provisions are over: no job queued or running
    wait_until(lambda: not admin.llen("rq:queue:ci-autoscaler") and not admin.zcard(
        "rq:wip:ci-autoscaler"), timeout=30, what="the pushes' provisions ended")
    before = redrives(admin)
    for i in range(PROBES):  # someone else's short jobs ending: 10m each, no build fits
        kube.delete_pod(OTHERS, f"probe-{i}")
        time.sleep(0.2)  # spread out, as pods end: each a re-drive of its own
    wait_until(lambda: redrives(admin) > before, timeout=20,
               what=lambda: f"a re-drive run for the deletion: {running.text()[-2000:]}")
    seen = [(time.monotonic(), redrives(admin))]

    def quiet() -> bool:  # no re-drive run in the last QUIET_SECONDS
        now, count = time.monotonic(), redrives(admin)
        if count != seen[-1][1]:
            seen.append((now, count))
        return now - seen[-1][0] >= QUIET_SECONDS
    # fails without the fix: each pass queued the next, for as long as builds waited
    wait_until(quiet, timeout=SETTLE_SECONDS, what=lambda: f"re-drives settled: {before} "
               f"before the deletions, then {seen[-5:]}")
    assert admin.zcard("cia:waiting") == BUILDS
