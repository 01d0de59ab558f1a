"""A build placed again gets a Jenkins agent of a new name, the old one's node deleted first:
the old pod's agent process, still running, can never take the build (workers.engine.agent_names).
Over the Kubernetes API mock (its kubelets hold deletions: KubeServer.hold_deletions), real
Redis and RQ, and the Jenkins HTTP fake, whose agents connect as jenkins/inbound-agent does,
by name and secret, one process per node (JenkinsFake.agent_connects).

Before the fix the build kept its name on every placement: Jenkins' secret is an HMAC of the
name, so the old process (force-deleted from a node cut off; or in its grace period)
connected, took the build on a node we took for gone, and the new pod's agent was refused as
"already connected"."""

import json
import logging
import threading
import time

import pytest

from tests.integration.test_lost_queue_items import restart
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_unschedulable import push
from tests.integration.test_stuck_terminating import (  # noqa: F401 (the fixture)
    GRACE, app, deleted_metric, force_deletes, partitioned_build, pod_agent, unreachable)
from tests.support.app import JENKINS_TOKEN, work
from tests.support.monitoring import wait_until
from tests.support.kmock_cluster import running
from workers import runtime
from workers.adapters import lease as leases
from workers.engine import failures, lost_agents, lost_triggers, reconcile, tasks
from workers.adapters.expiry import expire_ended
from workers.engine.agent_names import OFFLINE_REASON, PREVIOUS
from workers.agent_starts import online
from workers.core.errors import RetryableError
from workers.core.pods import agent_secret_name
from workers.core.routing import AGENT_PARAMETER
from workers.core.terminating import STUCK_MARGIN_SECONDS


def state_of(app, key: str) -> dict:
    return app.extensions["ci_autoscaler"].state.get_build(key)


def agents_index(app) -> dict[str, str]:
    state = app.extensions["ci_autoscaler"].state
    return {k.decode(): v.decode()
            for k, v in state.redis.hgetall(state.prefix + "agents").items()}


def running_with_its_pod_gone(app, kube, jenkins_fake) -> tuple[str, str, dict]:
    """A pushed build's agent connected ("old-pod") and running it, then its pod deleted (its
    process lives on, as a force-deleted pod's does): the build's key, its agent and the
    provision request."""
    key = push(app)
    work(app)
    agent = state_of(app, key)["agent"]
    request = json.loads(state_of(app, key)["request"])
    assert jenkins_fake.agent_connects(*pod_agent(kube, agent), "old-pod") is None
    assert jenkins_fake.dispatch() == [(int(state_of(app, key)["queue_item"]), agent)]
    kube.delete_pod(NAMESPACE, agent)
    return key, agent, request


def test_a_force_deleted_pods_agent_cannot_take_the_build_from_its_new_pod(
        app, kube, jenkins_fake):
    """The pod stuck Terminating on a node cut off is force-deleted and the build's new pod
    made; the node comes back to Jenkins before its kubelet kills the old pod's containers."""
    key, agent, node, request = partitioned_build(app, kube)
    old_secret = jenkins_fake.jnlp_mac(agent)  # what the old pod's Secret held
    unreachable(kube, node)
    kube.age_deletion(NAMESPACE, agent, GRACE + STUCK_MARGIN_SECONDS + 1)
    result = tasks.provision_agent(request)
    assert len(force_deletes(kube, agent)) == 1
    build = state_of(app, key)
    new = build["agent"]
    assert result["agent"] == new != agent
    assert kube.pod(NAMESPACE, new) is not None and build["node"] != node
    assert pod_agent(kube, new) == (new, jenkins_fake.jnlp_mac(new))
    # The old pod's process connects again with the name and secret it has: refused.
    assert jenkins_fake.agent_connects(agent, old_secret, "old-pod") == \
        f"Unknown client name: {agent}"
    assert agent not in jenkins_fake.nodes
    # The new pod's agent connects, and Jenkins gives it the build's queue item, which waits
    # on the first agent's name (CI_AUTOSCALER_AGENT): the new node has it as its label.
    name, secret = pod_agent(kube, new)
    assert jenkins_fake.agent_connects(name, secret, "new-pod") is None
    assert jenkins_fake.nodes[new].label == agent
    [(item, on)] = jenkins_fake.dispatch()
    assert (item, on) == (int(build["queue_item"]), new)
    [run] = jenkins_fake.build_with(AGENT_PARAMETER, agent)
    assert run.queue_id == item  # triggered once: the one item, served by the new agent
    rt = runtime.current()
    assert online.notice_online(rt) == 1
    # Redis: the build names its agent now, and every name it had finds it.
    build = state_of(app, key)
    assert build["agent"] == new and build[PREVIOUS] == agent
    assert json.loads(build["request"])["agent_name"] == new
    assert agents_index(app)[agent] == agents_index(app)[new] == key
    # Its end releases the new pod and node (the web reads the build's agent).
    jenkins_fake.finish_build(item)
    response = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                      json=jenkins_fake.notification(run, "COMPLETED"))
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    work(app)
    assert kube.pod(NAMESPACE, new) is None and new not in jenkins_fake.nodes
    assert agent_secret_name(new) not in kube.secrets(NAMESPACE)
    assert state_of(app, key)["status"] == "released"
    # Expired, it leaves no entry of either name in the agents index.
    assert expire_ended(rt.state, now=time.time() + 10**6, ttl_seconds=1) == 1
    assert agent not in agents_index(app) and new not in agents_index(app)


def test_a_replaced_pods_agent_connecting_in_its_grace_period_is_refused(
        app, kube, jenkins_fake):
    """The connect timeout deleted the pod, whose agent process runs until its grace period
    ends (its kubelet holds it here): late, it connects. Refused: its node went with the
    pod; and the build's next pod gets an agent of its own name."""
    key, agent, node, request = partitioned_build(app, kube)
    assert agent not in jenkins_fake.nodes
    assert jenkins_fake.agent_connects(agent, jenkins_fake.jnlp_mac(agent), "old-pod") == \
        f"Unknown client name: {agent}"
    assert jenkins_fake.dispatch() == []  # the build's item still waits
    kube.kubelet_confirms_deletion(NAMESPACE, agent)  # its grace period ended
    work(app)
    new = state_of(app, key)["agent"]
    assert new != agent and kube.pod(NAMESPACE, new) is not None
    assert jenkins_fake.agent_connects(*pod_agent(kube, new), "new-pod") is None
    assert jenkins_fake.dispatch() == [(int(state_of(app, key)["queue_item"]), new)]


def test_an_old_agent_jenkins_sees_running_the_build_is_waited_for(app, kube, jenkins_fake):
    """Its pod gone from the API (deleted with its node) before a pass saw its agent online,
    the old agent is still connected to Jenkins and runs the build: a provision of the build
    (an RQ retry, restart_stalled) neither deletes its node nor places the build again, and
    brings the node back online (taken offline to be read: a Pipeline's next node block may
    need it)."""
    key, agent, request = running_with_its_pod_gone(app, kube, jenkins_fake)
    with pytest.raises(RetryableError, match=f"previous pod {agent} is still connected"):
        tasks.provision_agent(request)
    assert jenkins_fake.connected_process(agent) == "old-pod"
    assert not jenkins_fake.nodes[agent].temporarily_offline
    assert state_of(app, key)["agent"] == agent


def test_an_old_agent_running_a_build_we_may_not_read_is_waited_for(app, kube, jenkins_fake):
    """Item/Read on the build's job taken from our API user (a folder's authorization
    changed) while the old agent runs it: its executor names no run (Executor
    .getCurrentExecutableForApi checks Item.READ) but is not idle (Executor.isIdle). The
    agent is busy all the same: neither deleted from under its run nor the build placed
    again."""
    key, agent, request = running_with_its_pod_gone(app, kube, jenkins_fake)
    jenkins_fake.unreadable = {state_of(app, key)["job"]}
    with pytest.raises(RetryableError, match=f"previous pod {agent} is still connected"):
        tasks.provision_agent(request)
    assert jenkins_fake.connected_process(agent) == "old-pod" and agent in jenkins_fake.nodes
    assert not jenkins_fake.nodes[agent].temporarily_offline
    assert state_of(app, key)["agent"] == agent


def test_an_old_agent_left_offline_by_an_interrupted_attempt_is_brought_back(
        app, kube, jenkins_fake):
    """An earlier attempt took the running agent offline and stopped before it read it (its
    worker killed, or Jenkins' read failing past its retries; or its POST went through and
    its answer was lost, so the retried one found it offline already). The next attempt's
    offline finds it offline already, and reads it running the build: its offline is ours
    (offlineCauseReason, Computer.getOfflineCauseReason, is our message), so it is brought
    back online. Before, only an offline this very attempt made was undone: the agent stayed
    offline for ever, and the Pipeline's next node block on its label never ran."""
    key, agent, request = running_with_its_pod_gone(app, kube, jenkins_fake)
    # The interrupted attempt's offline (what its changeOfflineCause POST left).
    jenkins_fake.nodes[agent].temporarily_offline = True
    jenkins_fake.nodes[agent].offline_message = OFFLINE_REASON
    with pytest.raises(RetryableError, match=f"previous pod {agent} is still connected"):
        tasks.provision_agent(request)
    assert jenkins_fake.connected_process(agent) == "old-pod"
    assert not jenkins_fake.nodes[agent].temporarily_offline


def test_an_old_agent_a_person_took_offline_running_the_build_stays_offline(
        app, kube, jenkins_fake):
    """Taken offline by a person (another message), it is not brought back by us."""
    key, agent, request = running_with_its_pod_gone(app, kube, jenkins_fake)
    jenkins_fake.nodes[agent].temporarily_offline = True
    jenkins_fake.nodes[agent].offline_message = "disk maintenance"
    with pytest.raises(RetryableError, match=f"previous pod {agent} is still connected"):
        tasks.provision_agent(request)
    assert jenkins_fake.nodes[agent].temporarily_offline


def test_an_old_agent_connected_and_idle_is_deleted(app, kube, jenkins_fake):
    """Connected, and handed nothing (taken offline before it was read): its node is
    deleted and the build placed again; its process is refused from then on."""
    key = push(app)
    work(app)
    agent = state_of(app, key)["agent"]
    request = json.loads(state_of(app, key)["request"])
    assert jenkins_fake.agent_connects(*pod_agent(kube, agent), "old-pod") is None
    kube.delete_pod(NAMESPACE, agent)
    new = tasks.provision_agent(request)["agent"]
    assert new != agent and agent not in jenkins_fake.nodes
    assert jenkins_fake.dispatch() == []


def test_a_build_placed_again_twice_gets_a_third_name_and_the_first_label(
        app, kube, jenkins_fake):
    key, agent, node, request = partitioned_build(app, kube)
    kube.kubelet_confirms_deletion(NAMESPACE, agent)
    work(app)
    second = state_of(app, key)["agent"]
    # Its second pod is drained before the agent connects: placed again by the pass.
    kube.delete_pod(NAMESPACE, second)
    rt = runtime.current()
    later = time.time() + rt.settings.provision_lease_seconds + 1
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 1
    work(app)
    third = state_of(app, key)["agent"]
    assert len({agent, second, third}) == 3
    assert state_of(app, key)[PREVIOUS] == f"{agent},{second}"
    assert jenkins_fake.nodes[third].label == agent
    assert agent not in jenkins_fake.nodes and second not in jenkins_fake.nodes
    # The drained pod's Secret (its owner gone, no collector here) goes with its name.
    assert set(kube.secrets(NAMESPACE)) == {agent_secret_name(third)}
    # Nothing else takes its item for a gone agent's (workers.engine.adoption), nor its new node for
    # one without a pod (repairs.delete_agentless_nodes).
    result = reconcile.reconcile_once(rt, now=later + 1)
    assert result.get("queue_items_adopted", 0) == 0
    assert third in jenkins_fake.nodes and kube.pod(NAMESPACE, third) is not None
    assert lost_agents.FIELD not in state_of(app, key)


def test_an_agent_that_connects_just_before_its_connect_timeout_check_is_kept(
        app, kube, jenkins_fake):
    """The poll found it offline; it connected before the timeout check deleted its pod and
    Jenkins node: Jenkins may hand it the build any moment, so it is left (and marked online:
    the check saw it connected), not deleted from under the build."""
    key = push(app)
    work(app)
    agent, node = state_of(app, key)["agent"], state_of(app, key)["node"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node,
                        states={c["name"]: running(time.time() - 120) for c in
                                kube.pod(NAMESPACE, agent)["spec"]["containers"]})
    assert jenkins_fake.agent_connects(*pod_agent(kube, agent), "pod") is None
    rt = runtime.current()
    result = online.check_connect_timeouts(rt, now=time.time() + 61)
    assert result == {"agents_replaced": 0, "agents_timed_out": 0}
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert state_of(app, key).get("agent_online_at")  # seen by the check: no poll needed
    assert jenkins_fake.dispatch() == [(int(state_of(app, key)["queue_item"]), agent)]


def test_a_late_start_failure_of_the_pod_a_build_had_before_is_not_its_new_ones(
        app, kube, jenkins_fake):
    """A watch event of the old pod that lagged (its ErrImagePull, read after the build was
    placed again) queues a fail of that pod's agent: the build, on its new agent, is left."""
    key, agent, node, request = partitioned_build(app, kube)
    kube.kubelet_confirms_deletion(NAMESPACE, agent)
    work(app)
    new = state_of(app, key)["agent"]
    result = failures.fail_start(key, agent, "ErrImagePull", "pulling image: not found")
    assert result == {"build_key": key,
                      "skipped": f"agent {agent} is no longer the build's (now {new})"}
    assert state_of(app, key)["status"] == "triggered" and "fail_reason" not in state_of(app, key)
    assert kube.pod(NAMESPACE, new) is not None and new in jenkins_fake.nodes
    assert jenkins_fake.cancelled_items == []


def test_a_build_placed_again_is_found_in_jenkins_after_a_restart_not_triggered_twice(
        app, kube, jenkins_fake):
    """After a Jenkins restart each triggered build is looked for in its queue by the agent
    name its item carries (workers.engine.lost_triggers): the first one, whatever agent it has now.
    Looked for under its new name, it was taken for lost and triggered a second time."""
    key, agent, node, request = partitioned_build(app, kube)
    kube.kubelet_confirms_deletion(NAMESPACE, agent)
    work(app)
    assert state_of(app, key)["agent"] != agent
    [item] = [b.queue_id for b in jenkins_fake.builds]
    jenkins_fake.save_queue()
    rt = runtime.current()
    restart(rt, jenkins_fake, time.time() + 5, hard=True)

    passed = reconcile.reconcile_once(rt, now=time.time() + 10)

    assert passed["lost_builds_retriggered"] == 0
    assert [b.queue_id for b in jenkins_fake.builds] == [item]
    assert state_of(app, key)[lost_triggers.FIELD] == jenkins_fake.session


def test_a_release_queued_before_the_build_was_placed_again_deletes_its_new_agent(
        app, kube, jenkins_fake):
    """A person aborts the build's Pipeline run (STARTED comes before any agent connects)
    while its pod is being placed again: the web reads the build's agent then, the old one,
    into the release job, which waits for the provision's lease and runs after the provision
    gave the build a new agent. It releases the agent the build has, not the one it had:
    released by the old name, the new pod, its Secret and its Jenkins node (whose label the
    build's item waited on: a Replay of the build would land on it) were left behind."""
    key, agent, node, request = partitioned_build(app, kube)
    item = int(state_of(app, key)["queue_item"])
    run = jenkins_fake.finish_build(item, "ABORTED")
    response = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                      json=jenkins_fake.notification(run, "COMPLETED"))
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    kube.kubelet_confirms_deletion(NAMESPACE, agent)
    new = tasks.provision_agent(request)["agent"]
    assert new != agent and kube.pod(NAMESPACE, new) is not None and new in jenkins_fake.nodes
    work(app)  # the release job, with the agent name the web read
    assert state_of(app, key)["status"] == "released"
    assert kube.pod(NAMESPACE, new) is None and new not in jenkins_fake.nodes
    assert agent_secret_name(new) not in kube.secrets(NAMESPACE)


def test_an_agent_running_its_build_while_taken_offline_by_hand_is_not_timed_out(
        app, kube, jenkins_fake):
    """Its agent connected and took the build between two polls; then a person marked the
    node temporarily offline (Jenkins' "Mark this node temporarily offline", before some
    maintenance): Jenkins reports it offline (Computer.isOffline: temporarilyOffline || no
    channel), so no poll sees it online. The build runs on its executor: it connected. Taken
    for an agent that never connected, past the connect timeout its Jenkins node and pod were
    deleted from under the running build (and, placed again once, the build failed)."""
    key = push(app)
    work(app)
    agent, node = state_of(app, key)["agent"], state_of(app, key)["node"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node,
                        states={c["name"]: running(time.time() - 120) for c in
                                kube.pod(NAMESPACE, agent)["spec"]["containers"]})
    assert jenkins_fake.agent_connects(*pod_agent(kube, agent), "pod") is None
    assert jenkins_fake.dispatch() == [(int(state_of(app, key)["queue_item"]), agent)]
    jenkins_fake.nodes[agent].temporarily_offline = True  # by hand, in Jenkins' UI
    rt = runtime.current()
    assert online.notice_online(rt) == 0
    result = online.check_connect_timeouts(rt, now=time.time() + 61)
    assert result == {"agents_replaced": 0, "agents_timed_out": 0}
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert state_of(app, key).get("agent_online_at")  # not asked again


def test_a_build_placed_again_after_its_agent_connected_waits_for_its_new_agent(
        app, kube, jenkins_fake):
    """Its agent connected (seen online) but Jenkins had not handed it the build (e.g. an item
    blocked behind the job's running build: disableConcurrentBuilds), and its pod was drained:
    the pass places the build again, under a new name. The new agent has not connected: the
    build is pending again, so its connect timeout applies. With the old agent's online mark
    kept, no poll looked at the new agent, and one that never connected was never re-placed
    nor failed: the build waited until its pod's deadline."""
    key = push(app)
    work(app)
    agent = state_of(app, key)["agent"]
    assert jenkins_fake.agent_connects(*pod_agent(kube, agent), "pod") is None
    rt = runtime.current()
    assert online.notice_online(rt) == 1
    kube.delete_pod(NAMESPACE, agent)  # drained
    jenkins_fake.agent_process_ends("pod")
    later = time.time() + rt.settings.provision_lease_seconds + 1
    assert reconcile.reconcile_once(rt, now=later)["stalled_builds_restarted"] == 1
    work(app)
    build = state_of(app, key)
    new = build["agent"]
    assert new != agent and kube.pod(NAMESPACE, new) is not None
    assert not build.get("agent_online_at")
    kube.kubelet_status(NAMESPACE, new, phase="Running", node=build["node"],
                        states={c["name"]: running(time.time() - 120) for c in
                                kube.pod(NAMESPACE, new)["spec"]["containers"]})
    result = online.check_connect_timeouts(rt, now=time.time() + 61)
    assert result["agents_replaced"] == 1


def test_an_old_agent_connecting_while_its_node_is_deleted_cannot_take_the_build(
        app, kube, jenkins_fake):
    """The old pod is gone from the API, its process still running (force-deleted from a
    node cut off: it tries to connect every 10 s). The provision finds its agent offline and
    deletes its Jenkins node; between that read and the deletion the process connects, and
    Jenkins hands it the build's queue item at once (it waits on that node's label). The
    node is taken offline (changeOfflineCause: it takes no new work) before it is read and
    deleted, so the old process gets nothing; before, it took the build, whose run then
    lost its node under it."""
    key = push(app)
    work(app)
    agent = state_of(app, key)["agent"]
    request = json.loads(state_of(app, key)["request"])
    item = int(state_of(app, key)["queue_item"])
    old = pod_agent(kube, agent)
    kube.delete_pod(NAMESPACE, agent)  # gone from the API; its process runs on
    arrived, release = jenkins_fake.hold_next(f"/computer/{agent}/doDelete")
    taken: list = []

    def old_process_connects() -> None:
        try:
            assert arrived.wait(10), "the old node was not deleted"
            assert jenkins_fake.agent_connects(*old, "old-pod") is None
            taken.extend(jenkins_fake.dispatch())
        finally:
            release.set()

    side = threading.Thread(target=old_process_connects)
    side.start()
    try:
        new = tasks.provision_agent(request)["agent"]
    finally:
        release.set()
        side.join(10)
    assert taken == []  # not the build's agent
    assert new != agent and agent not in jenkins_fake.nodes
    assert jenkins_fake.agent_connects(*pod_agent(kube, new), "new-pod") is None
    assert jenkins_fake.dispatch() == [(item, new)]


def test_an_agent_connecting_while_its_connect_timeout_deletes_its_node_gets_nothing(
        app, kube, jenkins_fake):
    """Past its connect timeout, the agent is found offline and its Jenkins node deleted; it
    connects between that read and the deletion. Taken offline before it was read, it is
    handed nothing; before, Jenkins handed it the build's item at once, and the run lost its
    node (and then its pod) under it."""
    key = push(app)
    work(app)
    agent, node = state_of(app, key)["agent"], state_of(app, key)["node"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node,
                        states={c["name"]: running(time.time() - 120) for c in
                                kube.pod(NAMESPACE, agent)["spec"]["containers"]})
    arrived, release = jenkins_fake.hold_next(f"/computer/{agent}/doDelete")
    taken: list = []

    def agent_connects() -> None:
        try:
            assert arrived.wait(10), "the node was not deleted"
            assert jenkins_fake.agent_connects(*pod_agent(kube, agent), "pod") is None
            taken.extend(jenkins_fake.dispatch())
        finally:
            release.set()

    side = threading.Thread(target=agent_connects)
    side.start()
    try:
        result = online.check_connect_timeouts(runtime.current(), now=time.time() + 61)
    finally:
        release.set()
        side.join(10)
    assert taken == []
    assert result["agents_replaced"] == 1 and agent not in jenkins_fake.nodes


def test_a_jenkins_user_without_agent_disconnect_still_places_the_build_again(
        app, kube, jenkins_fake):
    """Jenkins refuses the old node's changeOfflineCause (403: the user lacks Agent/Disconnect,
    Computer.doChangeOfflineCause): logged, and the build is placed again as before, its old
    node read and deleted; a refused offline never fails the build."""
    key = push(app)
    work(app)
    agent = state_of(app, key)["agent"]
    request = json.loads(state_of(app, key)["request"])
    kube.delete_pod(NAMESPACE, agent)  # drained before its agent connected
    jenkins_fake.fail_next(403, path_prefix=f"/computer/{agent}/changeOfflineCause")
    new = tasks.provision_agent(request)["agent"]
    assert new != agent and agent not in jenkins_fake.nodes
    assert jenkins_fake.requests_to(f"/computer/{agent}/changeOfflineCause", "POST")


class _HeldAfter(logging.Handler):
    """Holds the thread that logs a message containing `text` (once) until `go` is set."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.held, self.go = text, threading.Event(), threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage() and not self.held.is_set():
            self.held.set()
            self.go.wait(30)


def test_a_provision_held_up_past_its_lease_leaves_the_build_to_the_one_started_again(
        app, kube, jenkins_fake, monkeypatch, caplog):
    """A provision held up (its worker frozen, or cut off from Redis) after it read that the
    build's pod is gone, while the reconcile loop freed its lease (unrenewed: workers.engine.
    repairs restart_stalled) and the provision it started again placed the build under a new
    name: the first went on to rename the build from its stale read (deleting the old name's
    node again, clearing the new pod's marks), and only then saw its lease lost. It stops
    before the rename."""
    monkeypatch.setattr(leases, "RENEW_MOST_SECONDS", 0.25)  # its renewals every 0.25 s
    key = push(app)
    work(app)
    agent = state_of(app, key)["agent"]
    request = json.loads(state_of(app, key)["request"])
    kube.delete_pod(NAMESPACE, agent)  # drained before its agent connected
    rt = runtime.current()
    lease_key = tasks.lease_key(rt, key)
    read = _HeldAfter(f'"GET /api/v1/namespaces/{NAMESPACE}/pods/{agent} ')  # urllib3's line
    http = logging.getLogger("urllib3.connectionpool")
    level, errors = http.level, []

    def provision() -> None:
        try:
            tasks.provision_agent(request)
        except RetryableError as err:
            errors.append(str(err))
    http.addHandler(read)
    http.setLevel(logging.DEBUG)
    thread = threading.Thread(target=provision, daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="ci_autoscaler.heartbeat"):
            thread.start()
            assert read.held.wait(30), "the provision never read the build's pod"
            # freed as its holder's (unrenewed), then taken by the provision started again
            rt.state.redis.set(lease_key, leases.RENEWED + "the provision started again")
            wait_until(lambda: any(r.getMessage().startswith("lease lost while its task runs")
                                   for r in caplog.records), timeout=30,
                       what="the held-up provision's heartbeat finds its lease another's")
            read.go.set()
            thread.join(30)
    finally:
        read.go.set()
        http.removeHandler(read)
        http.setLevel(level)
    assert state_of(app, key)["agent"] == agent and PREVIOUS not in state_of(app, key)
    assert agent in jenkins_fake.nodes  # left to the holder of the lease
    assert errors and "lease lost before a new agent name" in errors[0], errors
