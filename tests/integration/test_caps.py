"""Caps on the real path: pushes through the web app, RQ workers on a real Redis, pods in
kmock over HTTP, builds in the Jenkins fake. A build over a cap waits (reason `cap`) and
starts when a slot frees; it is never rejected."""

import pytest

from tests.integration.test_pod_templates import make_world, push, work  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE, completed
from tests.support.app import JENKINS_TOKEN
from tests.support.payloads import fixture
from workers import runtime
from workers.engine import reconcile
from workers.core.routing import AGENT_PARAMETER

CAPPED = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    maxConcurrent: 2
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


def live_pods_over_time(kube) -> list[int]:
    """The number of live agent pods after every create and delete the API server saw."""
    live, counts = 0, []
    for request in kube.requests():
        method, path = request.split(" ", 1)
        path = path.split("?", 1)[0]
        if method == "POST" and path == PODS:
            live += 1
        elif method == "DELETE" and path.startswith(PODS + "/"):
            live -= 1
        else:
            continue
        counts.append(live)
    return counts


def complete(client, jenkins_fake, agent: str, status: str = "SUCCESS") -> None:
    """The agent's run finished in the Jenkins fake, and its plugin's COMPLETED sent."""
    response = client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                           json=completed(jenkins_fake, agent, result=status))
    assert response.status_code == 202, response.json


def metric_lines(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def test_max_concurrent_2_five_pushes_never_more_than_2_pods_and_all_5_run(
        make_world, kube, jenkins_fake):
    app = make_world(CAPPED)
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    keys = [push(client, i) for i in range(5)]
    work(app)

    assert len(kube.pods(NAMESPACE)) == 2 and len(jenkins_fake.builds) == 2
    waiting = [k for k in keys if state.get_build(k)["status"] == "waiting"]
    assert len(waiting) == 3
    assert {state.get_build(k)["wait_reason"] for k in waiting} == {"cap"}
    text = metric_lines(app)
    assert 'ci_autoscaler_builds_waiting{reason="cap"} 3.0' in text
    # plenty of room on the node: a cap is not a shortfall, nobody is paged for nodes
    assert "ci_autoscaler_nodes_needed 0.0" in text
    assert "ci_autoscaler_capacity_shortfall_cores 0.0" in text

    finished: set[str] = set()
    while len(finished) < 5:
        pods = kube.pods(NAMESPACE)
        assert pods, "builds are left but no agent runs: a slot was lost"
        agent = sorted(p["metadata"]["name"] for p in pods)[0]
        complete(client, jenkins_fake, agent)
        work(app)  # the release frees the slot and re-drives the next waiting build
        finished.add(agent)

    assert len(jenkins_fake.builds) == 5
    assert {state.get_build(k)["status"] for k in keys} == {"released"}
    counts = live_pods_over_time(kube)
    assert max(counts) == 2 and counts[-1] == 0, counts
    assert len([c for c in counts]) == 10  # 5 creates, 5 deletes
    assert 'ci_autoscaler_builds_waiting{reason="cap"} 0.0' in metric_lines(app)


def test_max_agents_caps_all_templates_together(make_world, kube, jenkins_fake):
    config = CAPPED.replace("maxConcurrent: 2", "maxConcurrent: 10") + "maxAgents: 1\n"
    app = make_world(config)
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    keys = [push(client, i) for i in range(2)]
    work(app)
    assert len(kube.pods(NAMESPACE)) == 1
    late = state.get_build(keys[1])
    assert late["wait_reason"] == "cap" and "maxAgents 1" in late["wait_detail"]


@pytest.mark.parametrize("status", ["released", "done"])
def test_a_slot_left_by_a_build_that_ended_is_freed_by_the_reconcile_pass(
        make_world, kube, jenkins_fake, status):
    """Level-triggered: a slot whose build ended without giving it back is given back on the
    next pass, and the waiting build starts. `released`: its release missed the slot (e.g. an
    older worker). `done`: a worker SIGKILLed in a release, after it marked the build done and
    deleted its pod, before it freed the slot: no pod is left for the repairs to release, and
    RQ does not run the abandoned job again soon; without the pass the template lost that slot
    of its maxConcurrent for good (seen with a burst and workers killed through the
    Procfile's processes)."""
    app = make_world(CAPPED.replace("maxConcurrent: 2", "maxConcurrent: 1"))
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    first, second = push(client, 0), push(client, 1)
    work(app)
    assert state.get_build(second)["wait_reason"] == "cap"
    rt = runtime.current()
    kube.delete_pod(NAMESPACE, state.get_build(first)["agent"])
    state.update_build(first, status=status)  # `done`: what release_agent writes first
    assert rt.capacity.slots() == {first: "small"}
    result = reconcile.reconcile_once(rt)
    assert result["slots_freed"] == 1 and result["placed"] == 1
    assert state.get_build(second)["status"] == "triggered"
    assert rt.capacity.slots() == {second: "small"}

