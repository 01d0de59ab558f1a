"""The whole path on real parts: a GitLab push becomes a Jenkins build on a fresh agent pod,
deleted when the build ends. Web app -> real Redis -> RQ worker -> kmock over HTTP (official
kubernetes client, loaded from a kubeconfig) and a Jenkins HTTP fake (python-jenkins)."""

import base64
import json

import pytest

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, production_env, work
from tests.support.kmock_cluster import validate_manifest
from tests.support.payloads import EXAMPLE_CONFIG, fixture, fixture_bytes
from service.app import create_app
from workers import runtime
from workers.core.containers import AGENT_INIT_CONTAINER
from workers.core.pods import COPIED_JAVA, MANAGED_BY_LABEL
from workers.core.routing import AGENT_PARAMETER

NAMESPACE = "ci-agents"
PUSH = fixture_bytes("gitlab_push_real_lrz.json")
SHA = json.loads(PUSH)["checkout_sha"]


@pytest.fixture
def world(monkeypatch, redis_url, kube, jenkins_fake):
    """The production configuration path: everything from environment variables."""
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=EXAMPLE_CONFIG, namespace=NAMESPACE)
    for name in ("node-a", "node-b"):  # the example's template selects Linux nodes
        kube.add_node(name, cpu="8", memory="32Gi", labels={"kubernetes.io/os": "linux"})
    # Pod Security `restricted` enforced, as the chart can (agents.podSecurity.enforce)
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    runtime.install(None)  # tasks build their adapters from the environment, as in production
    app = create_app()
    yield app
    runtime.install(None)


def push(client, delivery="delivery-1"):
    return client.post("/webhooks/gitlab", data=PUSH, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery, "Content-Type": "application/json"})


def completed(jenkins_fake, agent: str, phase: str = "COMPLETED",
              result: str = "SUCCESS") -> dict:
    """The agent's run finished in the Jenkins fake, and its notification as the plugin sends
    it (the release job asks Jenkins' API about that run: workers.core.notifications)."""
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    if build.state != "finished":
        jenkins_fake.finish_build(build.queue_id, result)
    return jenkins_fake.notification(build, phase)


def test_push_makes_one_node_one_pod_and_one_build(world, kube, jenkins_fake):
    client = world.test_client()
    response = push(client)
    assert response.status_code == 202
    work(world)

    assert list(jenkins_fake.nodes) and len(jenkins_fake.nodes) == 1
    agent, node = next(iter(jenkins_fake.nodes.items()))
    assert node.label == agent and node.num_executors == 1 and node.exclusive

    pods = kube.pods(NAMESPACE)
    assert [p["metadata"]["name"] for p in pods] == [agent]
    pod = pods[0]
    validate_manifest(pod)
    assert pod["metadata"]["labels"][MANAGED_BY_LABEL] == "ci-autoscaler"
    env = {e["name"]: e.get("value", e.get("valueFrom"))
           for e in pod["spec"]["containers"][0]["env"]}
    assert env["JENKINS_URL"] == jenkins_fake.url
    assert env["JENKINS_AGENT_NAME"] == agent
    # The agent secret by reference to the agent's own Secret, never in the pod's spec.
    ref = env["JENKINS_SECRET"]["secretKeyRef"]
    assert node.secret not in json.dumps(pod)
    secret = kube.secrets(NAMESPACE)[ref["name"]]
    validate_manifest(secret)
    assert secret["metadata"]["labels"][MANAGED_BY_LABEL] == "ci-autoscaler"
    assert _secret_value(secret, ref["key"]) == node.secret
    assert env["JENKINS_AGENT_WORKDIR"] == "/home/jenkins/agent"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 3600
    # The build container runs the agent injected from the agent image: an idle cluster gives
    # the build the template's max memory (CPU grows only with a CPU limit), and the agent's
    # own 100m and 256Mi are added, on a node named by affinity.
    build = pod["spec"]["containers"][0]
    assert build["image"] == "maven:3.9-eclipse-temurin-21"
    assert build["command"] == [COPIED_JAVA] and "$(JENKINS_SECRET)" in build["args"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [AGENT_INIT_CONTAINER]
    assert build["resources"]["requests"] == {"cpu": "1100m", "memory": "8448Mi"}
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"][0] in ("node-a", "node-b")
    assert "nodeName" not in pod["spec"]

    assert len(jenkins_fake.builds) == 1
    build = jenkins_fake.builds[0]
    assert build.job == "build"
    assert build.parameters["GIT_COMMIT"] == SHA
    assert build.parameters["GIT_BRANCH"] == "main"
    assert build.parameters[AGENT_PARAMETER] == agent
    requests = [r.path for r in jenkins_fake.requests]
    assert "/job/build/buildWithParameters" in requests
    assert f"/computer/{agent}/jenkins-agent.jnlp" in requests

    state = world.extensions["ci_autoscaler"].state.get_build(response.json["build_key"])
    assert state["status"] == "triggered" and state["queue_item"] == str(build.queue_id)


def test_same_delivery_five_times_makes_one_pod_and_one_build(world, kube, jenkins_fake):
    client = world.test_client()
    codes = [push(client).status_code for _ in range(5)]
    assert codes == [202, 200, 200, 200, 200]
    work(world)
    assert len(kube.pods(NAMESPACE)) == 1
    assert len(jenkins_fake.builds) == 1


def test_a_rerun_provision_job_reuses_node_and_pod(world, kube, jenkins_fake):
    """Different deliveries of the same push (no shared key) and a retried job are harmless."""
    client = world.test_client()
    push(client, "a")
    push(client, "b")
    work(world)
    assert len(kube.pods(NAMESPACE)) == 1
    assert len(jenkins_fake.nodes) == 1
    assert len(jenkins_fake.builds) == 1


def test_completed_notification_deletes_pod_and_jenkins_node(world, kube, jenkins_fake):
    client = world.test_client()
    push(client)
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")

    response = client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                           json=completed(jenkins_fake, agent))
    assert response.status_code == 202
    client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                json=completed(jenkins_fake, agent, "FINALIZED"))
    work(world)

    assert kube.pod(NAMESPACE, agent) is None
    assert agent not in jenkins_fake.nodes
    state = world.extensions["ci_autoscaler"].state.get_build(response.json["build_key"])
    assert state["status"] == "released"


def _secret_value(secret: dict, key: str) -> str:
    """A Secret's value as the API server keeps it (data, base64), or as sent (stringData:
    kmock stores the object as it came)."""
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode()
    return secret["stringData"][key]


def test_the_agents_secret_is_gone_with_its_pod(world, kube, jenkins_fake):
    client = world.test_client()
    push(client)
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    assert list(kube.secrets(NAMESPACE)) == [f"{agent}-secret"]
    client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=completed(jenkins_fake, agent))
    work(world)
    # Deleted explicitly: kmock has no garbage collector to follow the owner reference.
    assert kube.pod(NAMESPACE, agent) is None and kube.secrets(NAMESPACE) == {}


def test_release_never_touches_a_pod_that_is_not_ours(world, kube, jenkins_fake):
    client = world.test_client()
    push(client)
    work(world)
    agent = next(iter(jenkins_fake.nodes))
    kube.add_foreign_pod(NAMESPACE, "someone-elses-pod")
    client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=completed(jenkins_fake, agent))
    work(world)
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == ["someone-elses-pod"]


def test_the_shipped_worker_command_provisions_the_agent(world, kube, jenkins_fake):
    """`ci-autoscaler worker --burst`: the forking RQ worker in its own process."""
    import os
    import subprocess
    import sys

    assert push(world.test_client()).status_code == 202
    result = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--burst"],
                            env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    state = world.extensions["ci_autoscaler"].state
    failed = [state.queue.fetch_job(i) for i in state.queue.failed_job_registry.get_job_ids()]
    assert not failed, [j.latest_result().exc_string[-1500:] for j in failed if j]
    assert len(kube.pods(NAMESPACE)) == 1 and len(jenkins_fake.builds) == 1, \
        state.get_build(next(iter(state.recent_builds())))
    assert jenkins_fake.token not in result.stderr
    assert next(iter(jenkins_fake.nodes.values())).secret not in result.stderr
