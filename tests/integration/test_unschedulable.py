"""kube-scheduler has the last word, and a build never loops, over the Kubernetes API mock:
an agent pod may go to any of its best K candidate nodes; when the scheduler refuses them all
(PodScheduled False, Unschedulable), its message is logged, the candidates are left out for
the build and it is placed again on others; after K refused pods (or with no node left) the
build waits as `unschedulable`, on /metrics and in the logs, and no pod is deleted and made
again after that. Real RQ jobs, Redis, the watched snapshot and the reconcile pass."""

import logging
import time

import kubernetes
import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import GITLAB_TOKEN, work
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from workers import runtime
from workers.core.scale_up import pod_name
from workers.engine import reconcile

CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
"""
HOSTNAME = "kubernetes.io/hostname"
# What kube-scheduler writes when the pod's required affinity leaves it few nodes that are
# all full (FitError.Error: "0/N nodes are available: " + sorted reasons + preemption part).
REFUSAL = ("0/{n} nodes are available: {k} Insufficient cpu, {o} node(s) didn't match Pod's "
           "node affinity/selector. preemption: 0/{n} nodes are available: {n} No preemption "
           "victims found for incoming pod.")


@pytest.fixture
def app_of(app_on_cluster):
    """`app_of(nodes, k)`: the app on that many 4-core nodes, placing among k candidates."""
    return lambda nodes, k: app_on_cluster(
        CONFIG, namespace=NAMESPACE, nodes=tuple((f"node-{i}", "4", "16Gi") for i in range(nodes)),
        CI_AUTOSCALER_PLACEMENT_CANDIDATES=str(k))


def push(app) -> str:
    body = fixture("gitlab_push_real_lrz.json")
    response = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": "push-1"})
    assert response.status_code == 202
    return response.json["build_key"]


def candidates(pod: dict) -> list[str]:
    """The hosts of the pod's required node affinity, and that its preferred weights keep
    that order."""
    affinity = pod["spec"]["affinity"]["nodeAffinity"]
    [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    [expr] = term["matchExpressions"]
    assert expr["key"] == HOSTNAME and expr["operator"] == "In"
    preferred = affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    if len(expr["values"]) > 1:
        weights = [p["weight"] for p in preferred]
        assert [p["preference"]["matchExpressions"][0]["values"] for p in preferred] == \
            [[h] for h in expr["values"]]
        assert weights == sorted(weights, reverse=True) and len(set(weights)) == len(weights)
    return expr["values"]


def refuse(kube, agent: str, n: int) -> str:
    """The scheduler refuses the pod on its candidates, for longer than the grace period."""
    pod = kube.pod(NAMESPACE, agent)
    k = len(candidates(pod))
    message = REFUSAL.format(n=n, k=k, o=n - k)
    kube.set_pod_unschedulable(NAMESPACE, agent, since=time.time() - 61, message=message)
    return message


def waiting_metric(app, reason: str) -> float | None:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    prefix = f'ci_autoscaler_builds_waiting{{reason="{reason}"}} '
    values = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    return values[0] if values else None


def gauge(app, name: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    [value] = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ")]
    return value


def pod_writes(kube, agent: str) -> tuple[int, int]:
    """(creates, deletes) of the agent's pod the API server saw."""
    requests = kube.requests()
    creates = sum(r == f"POST /api/v1/namespaces/{NAMESPACE}/pods" for r in requests)
    deletes = sum(r.startswith(f"DELETE /api/v1/namespaces/{NAMESPACE}/pods/{agent}")
                  for r in requests)
    return creates, deletes


def test_a_pod_goes_to_one_of_the_best_k_nodes_ours_preferred(app_of, kube):
    app = app_of(nodes=5, k=3)
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state.get_build(key)
    hosts = candidates(kube.pod(NAMESPACE, state["agent"]))
    assert len(hosts) == 3 and hosts[0] == state["node"]
    assert state["candidates"].split(",") == hosts


def test_an_unschedulable_pod_is_placed_again_on_other_nodes_with_the_message_logged(
        app_of, kube, caplog):
    app = app_of(nodes=5, k=3)
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    agent = state.get_build(key)["agent"]
    first = candidates(kube.pod(NAMESPACE, agent))
    message = refuse(kube, agent, n=5)
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.unschedulable"):
        result = reconcile.reconcile_once(runtime.current())
    assert result["pods_replaced"] == 1
    work(app)  # the re-drive: a new pod, of a new name (workers.engine.agent_names)
    assert state.get_build(key)["agent"] != agent
    second = candidates(kube.pod(NAMESPACE, state.get_build(key)["agent"]))
    assert not set(first) & set(second), "placed again on a node that refused it"
    assert sorted(second) == sorted({f"node-{i}" for i in range(5)} - set(first))
    build = state.get_build(key)
    assert build["node"] in second and build["status"] == "triggered"
    [record] = [r for r in caplog.records if "placing it again" in r.getMessage()]
    assert record.scheduler_message == message and record.build_key == key
    assert sorted(record.tried) == sorted(first)


def test_after_k_refused_pods_the_build_waits_as_unschedulable_and_never_loops(
        app_of, kube, caplog):
    app = app_of(nodes=4, k=2)
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    first = state.get_build(key)["agent"]
    rt = runtime.current()
    seen: list[str] = []
    for _ in range(2):  # K = 2 pods, each refused on both of its candidates
        work(app)  # the re-drive the pass queued: a pod of a new name (workers.engine.agent_names)
        agent = state.get_build(key)["agent"]
        hosts = candidates(kube.pod(NAMESPACE, agent))
        assert not set(hosts) & set(seen)
        seen += hosts
        message = refuse(kube, agent, n=4)
        with caplog.at_level(logging.WARNING, logger="ci_autoscaler.unschedulable"):
            reconcile.reconcile_once(rt)
    assert sorted(seen) == [f"node-{i}" for i in range(4)]
    build = state.get_build(key)
    assert build["wait_reason"] == "unschedulable" and build["wait_detail"] == message
    assert any("waits as unschedulable" in r.getMessage() and r.scheduler_message == message
               for r in caplog.records)
    assert waiting_metric(app, "unschedulable") == 1
    # It waits as any build does: the age that pages (CIBuildsWaitingTooLong) counts it from
    # its arrival. Held out of the waiting set, it read 0 however long it waited.
    arrived = float(build["received_at"])
    age = gauge(app, "ci_autoscaler_oldest_unpaused_waiting_build_age_seconds")
    assert 0 < age and age == pytest.approx(time.time() - arrived, abs=1)
    assert gauge(app, "ci_autoscaler_oldest_waiting_build_age_seconds") == pytest.approx(age, abs=1)
    writes = pod_writes(kube, first)
    assert writes == (2, 1)  # two pods made, the first deleted; the last is left Pending
    assert pod_writes(kube, agent) == (2, 0) and agent != first

    for _ in range(3):  # later passes: nothing deleted, nothing made again
        reconcile.reconcile_once(rt)
        work(app)
    assert pod_writes(kube, first) == writes and pod_writes(kube, agent) == (2, 0)
    assert kube.pod(NAMESPACE, agent) is not None
    assert state.get_build(key)["wait_reason"] == "unschedulable"

    # When one of its candidates frees up the scheduler binds it: it waits no longer.
    kube.bind_pod(NAMESPACE, agent, seen[-1])
    reconcile.reconcile_once(rt)
    assert not state.get_build(key).get("wait_reason")
    assert waiting_metric(app, "unschedulable") in (None, 0)
    assert gauge(app, "ci_autoscaler_oldest_unpaused_waiting_build_age_seconds") == 0


def test_a_build_refused_on_every_node_waits_as_unschedulable_with_the_message(
        app_of, kube):
    app = app_of(nodes=3, k=3)
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    agent = state.get_build(key)["agent"]
    message = refuse(kube, agent, n=3)  # all 3 nodes were its candidates
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    build = state.get_build(key)
    assert kube.pod(NAMESPACE, agent) is None
    assert build["status"] == "waiting" and build["wait_reason"] == "unschedulable"
    assert build["wait_detail"].startswith(message)
    assert waiting_metric(app, "unschedulable") == 1
    for _ in range(3):
        reconcile.reconcile_once(rt)
    assert pod_writes(kube, agent) == (1, 1)  # never made again on a node that refused it


def test_a_build_held_unschedulable_is_placed_again_once_its_candidates_left_the_cluster(
        app_of, kube):
    """A node autoscaler removed the nodes its last pod may go to: no scheduler can bind that
    pod now, so the build is placed again on a node it was not refused on (it waited for good,
    its pod Pending on a node that no longer existed, with room idle beside it)."""
    app = app_of(nodes=2, k=1)
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    agent = state.get_build(key)["agent"]
    [gone] = candidates(kube.pod(NAMESPACE, agent))
    refuse(kube, agent, n=2)
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    assert state.get_build(key)["wait_reason"] == "unschedulable"  # K = 1 refused pod
    kubernetes.client.CoreV1Api(kube.api_client()).delete_node(gone, _request_timeout=10)
    wait_until(lambda: gone not in {n.name for n in rt.view.snapshot()}, timeout=10,
               what="the watch seeing the node go")
    assert reconcile.reconcile_once(rt)["pods_replaced"] == 1
    work(app)
    again = state.get_build(key)["agent"]
    assert again != agent and kube.pod(NAMESPACE, agent) is None
    assert candidates(kube.pod(NAMESPACE, again)) == [n for n in ("node-0", "node-1")
                                                      if n != gone]
    for _ in range(2):  # its new pod is not refused: nothing more is made or deleted
        reconcile.reconcile_once(rt)
        work(app)
    assert state.get_build(key)["agent"] == again and kube.pod(NAMESPACE, again) is not None


def test_a_build_whose_candidates_left_with_their_whole_node_group_gets_a_scale_up_pod(
        app_of, kube):
    """The node autoscaler scaled its group to zero: placed again, no node is left for it
    (it waits as unschedulable, with the scheduler's message), and only a Pending pod makes
    an autoscaler add one. Without one it waited for good."""
    app = app_of(nodes=1, k=1)
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    refuse(kube, state.get_build(key)["agent"], n=1)
    rt = runtime.current()
    reconcile.reconcile_once(rt)  # held: K = 1 refused pod
    kubernetes.client.CoreV1Api(kube.api_client()).delete_node("node-0", _request_timeout=10)
    wait_until(lambda: not rt.view.snapshot(), timeout=10, what="the watch seeing it go")
    assert reconcile.reconcile_once(rt)["pods_replaced"] == 1
    work(app)
    assert state.get_build(key)["wait_reason"] == "unschedulable"
    reconcile.reconcile_once(rt)
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [pod_name(key)]
