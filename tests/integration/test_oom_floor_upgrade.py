"""An OOM floor stored in Redis by the release before the pod-total sizing (merge fd8c953):
that release doubled the killed *build's* size (`floor` on the job's history record); this one
doubles the killed pod's total, and read the old floor as one. On a template whose pod asks a
service's memory beside the build (or has several build containers), the next build, and a
killed build's retry queued over the upgrade, then got no more memory than the size it had
just been killed at (here: a floor of 2Gi read as a pod total is below the 3.25Gi its pod asks
at the template's 1Gi default, so no floor at all), to be killed again.

Real parts: redis-server, kmock over HTTP (the pod's requests as sent), the Jenkins fake; the
worker's watch samples the agent's PodMetrics and the release folds its run.
"""

import json

import pytest

from tests.integration.test_build_stages import record
from tests.integration.test_job_history import NAMESPACE, finish, sampled
from tests.integration.test_placement_on_cluster import push
from tests.support.app import work
from workers import runtime
from workers.core.quantity import memory_bytes
from workers.core.usage_history import FLOOR_OF, POD

GIB, MIB = 2**30, 2**20
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: etl}
templates:
  etl:
    cpu: {min: 500m, default: "1", max: "4"}
    memory: {min: 512Mi, default: 1Gi, max: 8Gi}
    containers:
      - {name: etl, image: "python:3.12", build: true}
      - {name: postgres, image: "postgres:16", cpu: 250m, memory: 2Gi}
"""
# The pod beside its build's size: postgres' 2Gi and the injected agent's 256Mi (agentMemory)
BESIDE_BUILD = 2 * GIB + 256 * MIB
# The job's history as the release before wrote it (usage_store.update_history, to_dict then):
# its build was OOM-killed at its 1Gi default, so its next build was to get twice that.
PREVIOUS_RELEASE = {"m": {"t": 0.0, "w": {}}, "c": {"t": 0.0, "w": {}}, "n": 0, "oom": 1,
                    "floor": 2 * GIB, "since_oom": 0}


@pytest.fixture
def app(app_on_cluster):
    app = app_on_cluster(CONFIG, namespace=NAMESPACE,
                         CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2")
    rt = runtime.current()
    rt.state.redis.set(f"{rt.settings.key_prefix}usage:job:build|etl",
                       json.dumps(PREVIOUS_RELEASE))
    return app


def container_memory(kube, agent: str, name: str) -> int:
    pod = kube.pod(NAMESPACE, agent)
    [container] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return memory_bytes(container["resources"]["requests"]["memory"])


def stored(app) -> dict:
    rt = runtime.current()
    return json.loads(rt.state.redis.get(f"{rt.settings.key_prefix}usage:job:build|etl"))


def test_a_floor_the_release_before_stored_is_the_builds_size_not_the_pods(
        app, kube, jenkins_fake):
    first = push(app.test_client(), 0)
    work(app)
    rec = record(app, first)
    # twice the 1Gi it was killed at, as the release before meant (it was 1Gi, the very size
    # killed: the 2Gi floor read as the pod's total is below what the pod asks at its default)
    assert int(rec["memory_bytes"]) == 2 * GIB
    assert rec["size_source"] == "oom"
    # (the etl container runs the injected agent too: it asks agentMemory on top)
    assert container_memory(kube, rec["agent"], "etl") == 2 * GIB + 256 * MIB

    # A clean run folded: the record is rewritten with its floor as the pod's total, marked
    sampled(kube, rec["agent"], ["2500Mi", "2600Mi"])
    finish(app, jenkins_fake, first)
    history = stored(app)
    assert history[FLOOR_OF] == POD and history["floor"] == 2 * GIB + BESIDE_BUILD, history
    assert history["n"] == 1 and history["since_oom"] == 1

    second = push(app.test_client(), 1)
    work(app)
    assert int(record(app, second)["memory_bytes"]) == 2 * GIB  # the same floor, read once
