"""An agent pod stuck Terminating on a node that cannot be reached does not hold its build for
ever, over the Kubernetes API mock (its kubelets play the API server's graceful deletion:
KubeServer.hold_deletions), real Redis and RQ, and the Jenkins HTTP fake.

The build's agent never connected: its node was partitioned. The connect-timeout repair
deletes the pod (it stays Terminating: no kubelet confirms) and its Jenkins node, and
provisions the build again. The provision waits while the grace period runs, or while the node
is Ready (its kubelet is stopping the pod); once the pod's grace period ended a margin ago on a
node that is not Ready, it force-deletes the pod and makes the build's new one, under a new
agent name (workers.engine.agent_names: what the old pod's process then does is
tests/integration/test_agent_names.py's)."""

import base64
import json
import logging
import time

import pytest

from tests.integration.test_kube_adapter import NS as ADAPTER_NS, ONE_CALL, manifest
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_unschedulable import push
from tests.support.app import cluster_app, work
from tests.support.kmock_cluster import PODS, running
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile, tasks
from workers.adapters.kube import KubeCluster
from workers.agent_starts import online
from workers.core.errors import RetryableError
from workers.core.terminating import STUCK_MARGIN_SECONDS

CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 500m, default: 500m, max: 500m}
    memory: {min: 512Mi, default: 512Mi, max: 512Mi}
    agentConnectTimeoutSeconds: 60
"""
GRACE = 30  # the pod's terminationGracePeriodSeconds: the API server's default


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE,
                     nodes=(("node-0", "4", "16Gi"), ("node-1", "4", "16Gi"))) as app:
        yield app


def deleted_metric(app, reason: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    prefix = f'ci_autoscaler_agents_deleted_total{{reason="{reason}",template="small"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines()
               if line.startswith(prefix))


def partitioned_build(app, kube) -> tuple[str, str, str, dict]:
    """A build whose pod ran on a node whose agent never connected; the connect timeout
    deleted the pod (Terminating) and queued the build's provision again. (key, agent, node,
    the build's request)."""
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    build = state.get_build(key)
    agent, node = build["agent"], build["node"]
    started = time.time() - 120
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node,
                        states={c["name"]: running(started) for c in
                                kube.pod(NAMESPACE, agent)["spec"]["containers"]})
    kube.hold_deletions(node)  # its kubelet confirms nothing from now on
    result = online.check_connect_timeouts(runtime.current(), now=time.time() + 61)
    assert result["agents_replaced"] == 1
    pod = kube.pod(NAMESPACE, agent)
    assert pod is not None and pod["metadata"].get("deletionTimestamp"), \
        "the API server keeps a pod its kubelet has not confirmed stopped"
    return key, agent, node, json.loads(state.get_build(key)["request"])


def unreachable(kube, node: str) -> None:
    """The node stops posting its status, and the workers' watched snapshot has seen it."""
    kube.node_unreachable(node)
    wait_until(lambda: not next(n for n in runtime.current().view.snapshot()
                                if n.name == node).ready,
               timeout=10, what=f"the snapshot sees {node} NotReady")


def pod_agent(kube, pod: str) -> tuple[str, str]:
    """The name and secret the pod's agent process connects with: its JENKINS_AGENT_NAME,
    and its JENKINS_SECRET from the Secret its env names."""
    spec = kube.pod(NAMESPACE, pod)["spec"]
    env = {e["name"]: e for c in spec["containers"] + spec.get("initContainers", [])
           for e in c.get("env", [])}
    ref = env["JENKINS_SECRET"]["valueFrom"]["secretKeyRef"]
    stored = kube.secrets(NAMESPACE)[ref["name"]]
    secret = stored.get("stringData", {}).get(ref["key"]) or \
        base64.b64decode(stored["data"][ref["key"]]).decode()
    return env["JENKINS_AGENT_NAME"]["value"], secret


def provision_waits(agent: str, request: dict) -> None:
    with pytest.raises(RetryableError, match=f"previous pod {agent} is still being deleted"):
        tasks.provision_agent(request)


def force_deletes(kube, agent: str) -> list[str]:
    return [r for r in kube.requests()
            if r.startswith(f"DELETE /api/v1/namespaces/{NAMESPACE}/pods/{agent}")
            and "gracePeriodSeconds=0" in r]


def test_a_build_whose_pod_is_stuck_terminating_on_a_not_ready_node_gets_its_new_pod(
        app, kube, jenkins_fake, caplog):
    key, agent, node, request = partitioned_build(app, kube)
    unreachable(kube, node)
    # Within its grace period (and the margin), even on a NotReady node: waited for.
    provision_waits(agent, request)
    assert not force_deletes(kube, agent)
    # Its grace period ended longer ago than the margin: force-deleted, the new pod made.
    kube.age_deletion(NAMESPACE, agent, GRACE + STUCK_MARGIN_SECONDS + 1)
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.terminating"):
        result = tasks.provision_agent(request)
    state = app.extensions["ci_autoscaler"].state.get_build(key)
    new = state["agent"]
    assert result["agent"] == new != agent and kube.pod(NAMESPACE, agent) is None
    pod = kube.pod(NAMESPACE, new)
    assert pod is not None and not pod["metadata"].get("deletionTimestamp"), "no new pod"
    assert len(force_deletes(kube, agent)) == 1
    assert state["node"] != node and state["status"] == "triggered"
    [record] = [r for r in caplog.records if "stuck Terminating" in r.getMessage()]
    assert record.build_key == key and record.node == node
    assert record.node_state == "node_not_ready"
    assert deleted_metric(app, "stuck_terminating") == 1
    # Its Jenkins node and Secret are there for the new pod's agent; the old pod's are gone.
    assert new in jenkins_fake.nodes and agent not in jenkins_fake.nodes
    assert f"{new}-secret" in kube.secrets(NAMESPACE)
    assert f"{agent}-secret" not in kube.secrets(NAMESPACE)


def test_a_pod_terminating_on_a_ready_node_is_waited_for_not_force_deleted(app, kube):
    key, agent, node, request = partitioned_build(app, kube)
    # Its node is Ready: its kubelet is stopping the pod, within the grace period or past it.
    provision_waits(agent, request)
    kube.age_deletion(NAMESPACE, agent, GRACE + STUCK_MARGIN_SECONDS + 1)
    provision_waits(agent, request)
    assert not force_deletes(kube, agent)
    assert kube.pod(NAMESPACE, agent)["metadata"].get("deletionTimestamp")
    assert deleted_metric(app, "stuck_terminating") == 0
    # The node stops posting its status: now the pod is stuck, and goes.
    unreachable(kube, node)
    new = tasks.provision_agent(request)["agent"]
    assert len(force_deletes(kube, agent)) == 1
    assert kube.pod(NAMESPACE, agent) is None
    assert not kube.pod(NAMESPACE, new)["metadata"].get("deletionTimestamp")


def test_a_build_whose_pod_the_node_controller_evicted_from_an_unreachable_node_gets_a_new_one(
        app, kube):
    """Before its agent connected, the node stopped answering, and the node lifecycle
    controller evicted the pod (tolerationSeconds ran out: its DELETE leaves the pod
    Terminating). The build is stalled: the reconcile pass provisions it again, and that
    provision force-deletes the pod once it is stuck."""
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    agent, node = state.get_build(key)["agent"], state.get_build(key)["node"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node)
    unreachable(kube, node)
    kube.delete_pod(NAMESPACE, agent)  # the node lifecycle controller's eviction
    assert kube.pod(NAMESPACE, agent)["metadata"].get("deletionTimestamp")
    kube.age_deletion(NAMESPACE, agent, GRACE + STUCK_MARGIN_SECONDS + 1)
    rt = runtime.current()
    later = time.time() + rt.settings.provision_lease_seconds + 1
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 1
    work(app)
    new = state.get_build(key)["agent"]
    assert new != agent and kube.pod(NAMESPACE, agent) is None
    pod = kube.pod(NAMESPACE, new)
    assert pod is not None and not pod["metadata"].get("deletionTimestamp"), "no new pod"
    assert len(force_deletes(kube, agent)) == 1
    assert state.get_build(key)["node"] != node


def test_a_force_delete_touches_only_a_pod_of_ours_already_being_deleted(kube):
    cluster = KubeCluster(api_client=kube.api_client(service_account=ADAPTER_NS),
                          namespace=ADAPTER_NS,
                          backoff=ONE_CALL)
    kube.hold_deletions("node-x")
    cluster.create_pod(manifest(name="cia-live"))
    kube.kubelet_status(ADAPTER_NS, "cia-live", phase="Running", node="node-x")
    assert not cluster.force_delete_pod("cia-live")  # live: never forced
    kube.add_foreign_pod(ADAPTER_NS, "theirs")
    kube.kubelet_status(ADAPTER_NS, "theirs", phase="Running", node="node-x")
    kube.delete_pod(ADAPTER_NS, "theirs")
    assert not cluster.force_delete_pod("theirs")  # Terminating, but not ours
    assert kube.pod(ADAPTER_NS, "cia-live") and kube.pod(ADAPTER_NS, "theirs")
    cluster.delete_pod("cia-live")
    assert kube.pod(ADAPTER_NS, "cia-live")["metadata"]["deletionTimestamp"]
    assert cluster.get_pod("cia-live").deleting
    assert cluster.force_delete_pod("cia-live")
    assert kube.pod(ADAPTER_NS, "cia-live") is None
    assert not cluster.force_delete_pod("cia-live")  # gone


def evicted_from_unreachable_node(app, kube) -> tuple[str, str, dict, int]:
    """The node lost the API server (but maybe not Jenkins); the node lifecycle controller
    evicted the pod, Terminating for ever, its grace period long over. (key, agent, the
    build's request, its queue item)."""
    key = push(app)
    work(app)
    state = app.extensions["ci_autoscaler"].state
    agent, node = state.get_build(key)["agent"], state.get_build(key)["node"]
    request = json.loads(state.get_build(key)["request"])
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node)
    unreachable(kube, node)
    kube.delete_pod(NAMESPACE, agent)  # the node lifecycle controller's eviction
    kube.age_deletion(NAMESPACE, agent, GRACE + STUCK_MARGIN_SECONDS + 1)
    return key, agent, request, int(state.get_build(key)["queue_item"])


def test_a_stuck_pod_whose_agent_runs_the_build_in_jenkins_is_left(app, kube, jenkins_fake):
    """The node lost the API server but not Jenkins: its agent is connected there and runs
    the build. A provision of the build (an RQ retry, restart_stalled) leaves the pod, and
    the agent's node, online (taken offline to be read, then brought back), until Jenkins
    sees it go."""
    key, agent, request, item = evicted_from_unreachable_node(app, kube)
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(item, agent)]
    provision_waits(agent, request)
    assert not force_deletes(kube, agent) and agent in jenkins_fake.nodes
    assert not jenkins_fake.nodes[agent].temporarily_offline  # its run goes on
    jenkins_fake.disconnect_agent(agent)  # Jenkins' ping found it gone
    jenkins_fake.nodes[agent].running = None  # and its run ended with its channel
    assert tasks.provision_agent(request)["agent"] != agent
    assert len(force_deletes(kube, agent)) == 1 and agent not in jenkins_fake.nodes


def test_a_stuck_pods_agent_connected_idle_is_taken_offline_and_the_pod_force_deleted(
        app, kube, jenkins_fake):
    """Connected but running nothing: taken offline (it takes no new work), its pod
    force-deleted, and the build placed again under a new name; the old node is deleted."""
    key, agent, request, item = evicted_from_unreachable_node(app, kube)
    jenkins_fake.connect_agent(agent)
    new = tasks.provision_agent(request)["agent"]
    assert new != agent and len(force_deletes(kube, agent)) == 1
    assert agent not in jenkins_fake.nodes
    assert jenkins_fake.agent_connects(*pod_agent(kube, new), "new-pod") is None
    assert jenkins_fake.dispatch() == [(item, new)]


def test_an_agent_connecting_just_before_its_stuck_pod_is_force_deleted_gets_nothing(
        app, kube, jenkins_fake):
    """The stuck pod's agent is found offline, and the pod force-deleted; its process (on a
    node cut off from the API server but not from Jenkins, retrying every 10 s) connects
    between that read and the force delete. Read first, it was handed the build's queue item
    at once (it waits on that node's label): the build ran on a pod the API no longer had,
    and the provision waited on it for ever. Taken offline before it is read, it is handed
    nothing, and the build gets its new pod."""
    key, agent, request, item = evicted_from_unreachable_node(app, kube)
    old = pod_agent(kube, agent)
    taken: list = []

    def old_process_connects() -> None:  # just before the force delete
        assert jenkins_fake.agent_connects(*old, "old-pod") is None
        taken.extend(jenkins_fake.dispatch())

    kube.before_next("delete", PODS, old_process_connects)
    new = tasks.provision_agent(request)["agent"]

    assert taken == []  # not the build's agent
    assert new != agent and len(force_deletes(kube, agent)) == 1
    assert agent not in jenkins_fake.nodes  # the old process is an unknown client now
    assert jenkins_fake.agent_connects(*pod_agent(kube, new), "new-pod") is None
    assert jenkins_fake.dispatch() == [(item, new)]

def test_without_agent_disconnect_a_stuck_pods_connected_agent_is_still_left(
        app, kube, jenkins_fake):
    """Jenkins refuses the offline (403: the user lacks Agent/Disconnect,
    Computer.doChangeOfflineCause): what runs on the agent cannot be told from what may be
    handed to it, so one it shows connected is left, as before; once it is gone, the pod is
    force-deleted."""
    key, agent, request, item = evicted_from_unreachable_node(app, kube)
    jenkins_fake.connect_agent(agent)
    jenkins_fake.fail_next(403, path_prefix=f"/computer/{agent}/changeOfflineCause")
    provision_waits(agent, request)
    assert not force_deletes(kube, agent) and agent in jenkins_fake.nodes
    jenkins_fake.disconnect_agent(agent)
    assert tasks.provision_agent(request)["agent"] != agent
    assert len(force_deletes(kube, agent)) == 1
