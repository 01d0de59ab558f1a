"""Warm agents and the node autoscalers (workers.core.warm_pods, workers.warm.protect), on real
parts: redis-server, kmock over HTTP (the pods as the worker made and patched them), the
Jenkins fake, the worker's own provision and pool pass.

- an idle warm agent's pod is evictable: Cluster Autoscaler's safe-to-evict "true" (a pod with
  no controller and an emptyDir blocks its scale-down without it) and no Karpenter
  do-not-disrupt, so a node holding only idle warm agents can be taken away;
- a build claims it: one PATCH gives its pod the claimed label and DO_NOT_DISRUPT, the rest
  of its metadata kept;
- a build that found no idle agent gets a pod of its own with DO_NOT_DISRUPT, as always;
- a claimed agent's pod without DO_NOT_DISRUPT (an older release's worker claimed it) gets it
  at the next pool pass.
"""

import pytest
from kubernetes.client import CoreV1Api
from rq import SimpleWorker

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import CONFIG, pool_of, record, warm_up
from tests.integration.test_warm_claim_pdb import unprotected
from tests.support.app import work
from tests.support.kmock_cluster import validate_manifest
from workers import runtime
from workers.adapters.redis_state import SERIALIZER
from workers.core.pods import DO_NOT_DISRUPT, WARM_LABEL
from workers.core.warm_pool import WarmState
from workers.engine.intake import Mover
from workers.warm import agents, pool

KARPENTER = "karpenter.sh/do-not-disrupt"
CLUSTER_AUTOSCALER = "cluster-autoscaler.kubernetes.io/safe-to-evict"


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=())


def provision_one(app, n: int) -> str:
    """A push's provision alone (a claim queues its replacement after it). Its build key."""
    key = push(app.test_client(), n)
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()
    SimpleWorker([state.queue], connection=state.redis,
                 serializer=SERIALIZER).work(burst=True, max_jobs=1)
    return key


def annotations(kube, pod: str) -> dict[str, str]:
    return kube.pod(NAMESPACE, pod)["metadata"]["annotations"]


def test_an_idle_warm_agent_lets_autoscalers_take_its_node_and_a_claimed_one_is_protected(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    idle = kube.pod(NAMESPACE, warm)
    validate_manifest(idle)
    assert idle["metadata"]["labels"][WARM_LABEL] == "true"
    assert idle["metadata"]["annotations"][CLUSTER_AUTOSCALER] == "true"
    assert KARPENTER not in idle["metadata"]["annotations"]

    key = provision_one(app, 0)
    rec = record(app, key)
    assert rec["status"] == "triggered" and rec["warm_agent"] == warm
    claimed = kube.pod(NAMESPACE, warm)
    assert claimed["metadata"]["labels"] == {**idle["metadata"]["labels"],
                                             WARM_LABEL: "claimed"}
    assert claimed["metadata"]["annotations"] == {**idle["metadata"]["annotations"],
                                                  **DO_NOT_DISRUPT}
    patches = [r for r in kube.requests()
               if r.startswith(f"PATCH /api/v1/namespaces/{NAMESPACE}/pods/{warm}")]
    assert len(patches) == 1  # labels and annotations in one call

    # The replacement the claim queued is idle, so evictable again.
    work(app)
    [fresh] = [e.name for e in pool_of(rt) if e.name != warm]
    assert annotations(kube, fresh)[CLUSTER_AUTOSCALER] == "true"
    assert KARPENTER not in annotations(kube, fresh)
    assert {e.name: e.state for e in pool_of(rt)}[warm] == WarmState.CLAIMED


def test_a_build_with_no_idle_warm_agent_gets_a_pod_that_autoscalers_leave_alone(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    warm_up(rt, kube, jenkins_fake, "node-a")
    provision_one(app, 0)  # takes the one idle agent; its replacement is not online yet

    key = push(app.test_client(), 1)
    work(app)
    rec = record(app, key)
    assert rec["warm"] == "miss" and not rec.get("warm_agent"), rec
    pod = kube.pod(NAMESPACE, rec["agent"])
    assert WARM_LABEL not in pod["metadata"]["labels"]
    assert {k: pod["metadata"]["annotations"][k] for k in DO_NOT_DISRUPT} == DO_NOT_DISRUPT


def test_a_warm_agent_claimed_by_an_older_worker_is_protected_at_the_next_pool_pass(
        app, kube, jenkins_fake):
    """During a rolling upgrade a worker of the release before claims an idle warm agent this
    release made: it patches the claimed label alone (its label_pod), so the build would run on
    a pod still safe-to-evict "true" without do-not-disrupt. The pool pass gives it
    DO_NOT_DISRUPT; a protected claimed pod is not patched again."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    entry = agents.store(rt).claim("small", size=pool_of(rt)[0].size, build_key="old-build")
    assert entry is not None and entry.name == warm
    CoreV1Api(kube.api_client()).patch_namespaced_pod(  # the older worker's claim
        warm, NAMESPACE, {"metadata": {"labels": {WARM_LABEL: "claimed"}}})
    assert KARPENTER not in annotations(kube, warm)

    pool.run(rt)
    assert {k: annotations(kube, warm)[k] for k in DO_NOT_DISRUPT} == DO_NOT_DISRUPT
    assert kube.pod(NAMESPACE, warm)["metadata"]["labels"][WARM_LABEL] == "claimed"

    patched = len([r for r in kube.requests() if r.startswith(f"PATCH /api/v1/namespaces/"
                                                              f"{NAMESPACE}/pods/{warm}")])
    pool.run(rt)
    assert len([r for r in kube.requests() if r.startswith(f"PATCH /api/v1/namespaces/"
                                                           f"{NAMESPACE}/pods/{warm}")]) \
        == patched


def test_the_pool_pass_repair_that_fails_counts_no_unprotected_build(app, kube, jenkins_fake):
    """ci_autoscaler_warm_unprotected_total counts builds whose claim could not protect them
    (workers.warm.protect); the pool pass's repair, run again each pass until it holds, does
    not add to it when its patch is refused."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    agents.store(rt).claim("small", size=pool_of(rt)[0].size, build_key="old-build")
    CoreV1Api(kube.api_client()).patch_namespaced_pod(  # the older worker's claim
        warm, NAMESPACE, {"metadata": {"labels": {WARM_LABEL: "claimed"}}})
    kube.fail("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{warm}", status=403,
              reason="Forbidden", message=f'pods "{warm}" is forbidden')  # a Role without patch

    pool.run(rt)
    assert [r for r in kube.requests()
            if r.startswith(f"PATCH /api/v1/namespaces/{NAMESPACE}/pods/{warm}")]  # tried
    assert unprotected(app) == 0
