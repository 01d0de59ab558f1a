"""The Procfile's worker line scaled to two processes (as an operator scales it, or the chart's
worker replicas) placing one burst of pushes: each process decides from its own watched
cache and the reservations it reads in Redis, so two decisions made at the same moment by
the two processes read the same reservations. The pods must land as one worker deciding
them one by one would place them (issue 3: "a burst of builds must not all land on the same
idle node"), and never beyond a node's allocatable by requests (kube-scheduler's
NodeResourcesFit). Real redis-server, kmock over HTTP, the Jenkins fake; the test plays
kube-scheduler (binding each pod where our affinity prefers) and the kubelets.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import yaml

from tests.support.jenkins_fake import JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.played import PlayedOnAThread
from tests.support.procfile import Stack, pod_node, running_stack
from tests.support.redis_server import RedisServer
from tests.support.resource_quota import usage
from workers.core.pods import BUILD_KEY_LABEL, is_managed

NAMESPACE = "ci-agents-spread"
SOON = 90
IDLE = "node-d"  # the idlest node, last by name
BUSY = ("node-a", "node-b", "node-c")  # 4 of 16 cores in use each
NODE_CPU = 16.0
CONFIG = {
    "routes": [{"project": "*", "ref": "refs/heads/*", "job": "build", "template": "jdk"}],
    "templates": {"jdk": {"cpu": {"min": "1", "default": "1", "max": "1"},
                          "memory": {"min": "1Gi", "default": "1Gi", "max": "1Gi"}}},
}
PUSHES = 24


class Scheduler(PlayedOnAThread):
    """kube-scheduler and the kubelets: a pod of ours is bound to the node our affinity
    prefers and runs, unless its CPU requests do not fit there beside the pods bound to it
    (NodeResourcesFit): then it is recorded in `unfit` and left Pending."""

    def __init__(self, kube):
        self.kube = kube
        self.bound: dict[str, str] = {}  # pod -> node
        self.unfit: list[str] = []  # pods whose requests did not fit where preferred
        super().__init__()

    def _round(self) -> None:
        for pod in self.kube.pods(NAMESPACE):
            name = pod["metadata"]["name"]
            if name in self.bound or not is_managed(pod["metadata"].get("labels")) \
                    or pod["metadata"].get("deletionTimestamp") or name in self.unfit:
                continue
            where = pod_node(pod)
            asked = float(usage(pod).get("cpu", 0))
            if self._requested(where) + asked > NODE_CPU:
                self.unfit.append(name)
                continue
            self.kube.bind_pod(NAMESPACE, name, where)
            self.kube.kubelet_status(NAMESPACE, name, phase="Running")
            self.bound[name] = where

    def _requested(self, where: str) -> float:
        return sum(float(usage(p).get("cpu", 0)) for p in self.kube.pods(NAMESPACE)
                   if p["spec"].get("nodeName") == where)


@pytest.fixture
def stack(tmp_path) -> Iterator[tuple[Stack, object, Scheduler, redis.Redis]]:
    server = RedisServer(tmp_path / "redis").start()
    config = tmp_path / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with running_kube(tmp_path) as kube, JenkinsFake() as jenkins:
            kube.trim_history()
            kube.add_namespace(NAMESPACE)
            for name in (*BUSY, IDLE):
                kube.add_node(name, cpu="16", memory="64Gi")
                kube.set_node_usage(name, cpu="0" if name == IDLE else "4", memory="2Gi")
            with running_stack(redis_url=server.url, kube=kube, jenkins_fake=jenkins,
                               config=config, namespace=NAMESPACE, logs=logs,
                               CI_AUTOSCALER_SCALE_UP_PODS="false") as running:
                running.start_line("worker", "worker-2")  # the worker line scaled to two
                for name in ("worker", "worker-2"):
                    wait_until(lambda: "Listening on" in (logs / f"{name}.log").read_text(),
                               timeout=SOON, what=lambda: f"{name} listening")
                scheduler = Scheduler(kube)
                try:
                    yield running, kube, scheduler, redis.Redis.from_url(
                        server.url, decode_responses=True)
                finally:
                    scheduler.stop()
    finally:
        server.stop()


def push(stack: Stack, tag: str) -> str:
    commit = uuid.uuid5(uuid.NAMESPACE_URL, tag).hex + uuid.uuid5(uuid.NAMESPACE_DNS, tag).hex[:8]
    body = fixture("gitlab_push_real_lrz.json") | {
        "ref": f"refs/heads/feature/{tag}", "after": commit, "checkout_sha": commit}
    body["project"] = body["project"] | {"path_with_namespace": f"payments/{tag}"}
    status, answer = stack.gitlab(json.dumps(body).encode(), "Push Hook", str(uuid.uuid4()))
    assert status == 202, answer
    return answer["build_key"]


def test_two_worker_processes_spread_a_burst_as_one_deciding_one_by_one(stack):
    running, kube, scheduler, r = stack
    with ThreadPoolExecutor(PUSHES) as senders:
        keys = list(senders.map(lambda i: push(running, f"spread-{i:02d}"), range(PUSHES)))
    records = wait_until(
        lambda: (lambda rs: rs if all(rec.get("node") for rec in rs) else None)(
            [r.hgetall(f"cia:build:{k}") for k in keys]), timeout=SOON,
        what=lambda: f"every build placed: {[r.hget(f'cia:build:{k}', 'status') for k in keys]}")
    wait_until(lambda: len(scheduler.bound) + len(scheduler.unfit) == PUSHES, timeout=SOON,
               what=lambda: f"every pod bound: {scheduler.bound}")
    scheduler.check()
    for name in ("worker", "worker-2"):  # the burst really was decided by both processes
        assert "agent placed" in (running.logs / f"{name}.log").read_text(), name
    assert not scheduler.unfit, scheduler.unfit
    # Decided one by one, each build on a node saw the ones placed there before it: no two
    # builds on one node were placed at the same "utilisation after placement".
    seen = defaultdict(list)
    for rec in records:
        seen[rec["node"]].append(re.search(r"\((\d+)%\)", rec["decision"])[1])
    for node, utils in seen.items():
        assert len(utils) == len(set(utils)), (node, sorted(utils, key=int))
    # One by one: the idle node takes 1.1 cores (7%) per build, a busy one starts at 31%
    # (4 cores used / 0.8 target of 16): 5 on the idle one, then each in turn
    assert Counter(rec["node"] for rec in records) == {IDLE: 9} | {n: 5 for n in BUSY}
