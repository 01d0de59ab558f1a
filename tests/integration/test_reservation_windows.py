"""Windows in which a pod of ours could be counted neither by its reservation nor by the
watched snapshot, so that a node takes more agents than its room: driven one step at a time,
on real parts (Redis, kmock over HTTP and the worker's ClusterWatch, RQ jobs)."""

import pytest

from tests.integration.test_placement_on_cluster import CONFIG, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile, tasks
from workers.engine.intake import Mover

WAIT_SECONDS = 30  # awaited events; generous for a loaded machine


@pytest.fixture
def node_of_two(app_on_cluster):
    """One node with room for two agents by requests (a pod of CONFIG asks 1 core, 1Gi); no
    metrics.k8s.io usage, so placement counts requests."""
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(("only", "2", "16Gi"),))


def test_a_reservation_released_while_a_decision_is_made_leaves_its_running_pod_counted(
        node_of_two, kube, monkeypatch):
    """A decision reads the reservations and leaves their builds' pods out of the node's room
    (they are counted in flight instead). A reconcile pass that released one (its pod seen
    Running) before the decision's reservation was taken left that pod counted nowhere: the
    reservation script summed the reservations live then against a room computed without
    the pod, so a build placed in between by another worker and this one both got the node's
    last slot: three agents on a node with room for two."""
    app = node_of_two
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    rt = runtime.current()
    first = push(client, 0)
    work(app)
    agent = state.get_build(first)["agent"]
    # kube-scheduler binds it, the kubelet runs it; the worker's watch sees it on the node
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="only")
    wait_until(lambda: rt.view.pods_on("only") == 1, timeout=WAIT_SECONDS,
               what="the worker's watch saw the running pod on its node")
    assert set(rt.capacity.reservations()) == {first}  # no pass has run yet
    second, third = push(client, 1), push(client, 2)
    Mover(state).drain()
    builds = {job.kwargs["build"]["build_key"]: job.kwargs["build"]
              for job in state.queue.get_jobs()}
    state.queue.empty()  # provisioned by hand below, in the order under test

    # The third build's decision has read the first's reservation (room for one more beside
    # it); then a pass releases it, and another worker places the second build, which sees
    # the first's pod and the last slot; then the third's reservation is taken.
    decide, between = rt.view.decide, []

    def decide_then_others_act(*args, **kwargs):
        decision = decide(*args, **kwargs)
        if not between:
            between.append(reconcile.release_settled_reservations(rt))
            between.append(tasks.provision_agent(builds[second]))
        return decision
    monkeypatch.setattr(rt.view, "decide", decide_then_others_act)
    result = tasks.provision_agent(builds[third])
    assert between[0] == 1  # the first's reservation went between the read and the script
    assert between[1]["agent"] == state.get_build(second)["agent"]  # placed on the node
    assert result == {"build_key": third, "waiting": "insufficient_cpu"}
    assert set(rt.capacity.reservations()) == {second}
    assert len(kube.pods(NAMESPACE)) == 2


def test_a_pod_not_bound_yet_keeps_its_reservation_past_its_time_to_live(node_of_two, kube):
    """A snapshot counts a pod's requests on its node once kube-scheduler has bound it; until
    then only its reservation counts it. A reservation ran out after its time to live
    (RESERVATION_TTL_SECONDS) while its pod still stood unbound (a scheduler slow or away;
    in the 300-push test, where no scheduler binds, a build whose trigger kept failing
    for minutes), and its room went to the next build: three agents for a node with room for
    two once the pods were bound. A reconcile pass now renews it while the pod stands
    unbound."""
    app = node_of_two
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    rt = runtime.current()
    first = push(client, 0)
    work(app)
    assert kube.pods(NAMESPACE)[0]["spec"].get("nodeName") is None  # not bound yet
    # Its time to live nearly over (taken again with one second left, as if two minutes had
    # gone by with the pod unbound)
    node, size, _ = rt.capacity.reservation_records()[first]
    assert rt.capacity.reserve(node=node, build_key=first, size=size, capacity=size,
                               ttl_seconds=1)
    expires = float(rt.capacity.reservation_records()[first][2].rsplit("|", 1)[1])
    assert reconcile.release_settled_reservations(rt) == 0
    wait_until(lambda: redis_now(state) > expires + 0.1, timeout=WAIT_SECONDS,
               what="the reservation's first time to live over")
    assert first in rt.capacity.reservations()  # renewed by the pass
    second, third = push(client, 1), push(client, 2)
    work(app)
    assert state.get_build(second)["node"] == "only"
    build = state.get_build(third)
    assert (build["status"], build.get("node")) == ("waiting", None), build
    assert len(kube.pods(NAMESPACE)) == 2


def test_a_pod_being_deleted_before_it_was_bound_does_not_keep_its_reservation(
        node_of_two, kube):
    """kube-scheduler binds no pod being deleted, and gives it no Unschedulable condition
    either; one not bound is gone at once, unless a finalizer another controller holds keeps
    it (then for as long as that controller does not let go, maybe for ever). The pass
    renewed its reservation as that of a pod waiting to be bound: its node's room stayed
    taken by a pod that will never run on it."""
    app = node_of_two
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    rt = runtime.current()
    first = push(client, 0)
    work(app)
    agent = state.get_build(first)["agent"]
    kube.delete_held_by_finalizer(NAMESPACE, agent)
    wait_until(lambda: any(p.deleting for p in rt.cluster.list_pods()), timeout=WAIT_SECONDS,
               what="the pod listed as being deleted")
    node, size, _ = rt.capacity.reservation_records()[first]
    assert rt.capacity.reserve(node=node, build_key=first, size=size, capacity=size,
                               ttl_seconds=1)
    expires = float(rt.capacity.reservation_records()[first][2].rsplit("|", 1)[1])
    reconcile.release_settled_reservations(rt)
    wait_until(lambda: redis_now(state) > expires + 0.1, timeout=WAIT_SECONDS,
               what="the reservation's time to live over")
    assert first not in rt.capacity.reservations()  # not renewed: it ran out


def redis_now(state) -> float:
    seconds, micros = state.redis.time()
    return seconds + micros / 1e6


@pytest.fixture
def small_and_big(app_on_cluster):
    """A node with room for one agent and one with room for two (CONFIG's pods ask 1 core)."""
    return app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(
        ("a-small", "1", "16Gi"), ("b-big", "2", "16Gi")))


def test_a_pod_bound_to_another_candidate_than_its_reserved_node_counts_where_it_is(
        small_and_big, kube):
    """A pod may go to any of its candidate nodes (required node affinity, ours preferred):
    kube-scheduler has the last word. While its reservation counted it on the node we chose,
    the decisions left it out of the node it was bound to as well (every pod of a reserved
    build was left out, wherever it stood), so that node's room looked free and the next
    build went there too: two agents on a node with room for one."""
    app = small_and_big
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    rt = runtime.current()
    first = push(client, 0)
    work(app)
    build = state.get_build(first)
    assert (build["node"], build["candidates"]) == ("b-big", "b-big,a-small")
    # the scheduler takes the other candidate; the pod is not running yet, so its
    # reservation (on b-big) stays
    kube.bind_pod(NAMESPACE, build["agent"], "a-small")
    wait_until(lambda: rt.view.pods_on("a-small") == 1, timeout=WAIT_SECONDS,
               what="the worker's watch saw the pod bound to a-small")
    assert reconcile.release_settled_reservations(rt) == 0
    second = push(client, 1)
    work(app)
    assert state.get_build(second)["node"] == "b-big"  # a-small is full


def test_a_reservation_outlives_a_provision_slow_to_make_its_pod(node_of_two, kube,
                                                                  monkeypatch):
    """A reservation is taken at placement; the pod is made after the build's Jenkins node
    and its secret (ensure_node, agent_secret), calls retried with backoff and Retry-After
    (a Jenkins overloaded or restarting: minutes). It ran out meanwhile, with no pod yet for
    a snapshot to count, nor an unbound one for a pass to renew it by: its room went to the
    next builds, and once its pod was made the node held three agents for a room of two.
    A pass now renews the reservation of a build whose provision runs and has no pod yet."""
    app = node_of_two
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    rt = runtime.current()
    first, second, third = push(client, 0), push(client, 1), push(client, 2)
    Mover(state).drain()
    builds = {job.kwargs["build"]["build_key"]: job.kwargs["build"]
              for job in state.queue.get_jobs()}
    state.queue.empty()  # provisioned by hand below, in the order under test

    ensure_node, between = rt.jenkins.ensure_node, []

    def slow_jenkins_meanwhile(*args, **kwargs):
        if not between:
            # Placed, no pod yet; its time to live nearly over (taken again with one second
            # left, as if two minutes of retries had gone by), then a pass runs
            node, size, _ = rt.capacity.reservation_records()[first]
            assert rt.capacity.reserve(node=node, build_key=first, size=size, capacity=size,
                                       ttl_seconds=1)
            expires = float(rt.capacity.reservation_records()[first][2].rsplit("|", 1)[1])
            between.append(reconcile.release_settled_reservations(rt))
            wait_until(lambda: redis_now(state) > expires + 0.1, timeout=WAIT_SECONDS,
                       what="the reservation's first time to live over")
            between.append(set(rt.capacity.reservations()))
            # other workers place the next builds
            between.append(tasks.provision_agent(builds[second]))
            between.append(tasks.provision_agent(builds[third]))
        return ensure_node(*args, **kwargs)
    monkeypatch.setattr(rt.jenkins, "ensure_node", slow_jenkins_meanwhile)
    result = tasks.provision_agent(builds[first])
    assert result["agent"] == state.get_build(first)["agent"]
    assert between[0] == 0  # nothing released
    assert between[1] == {first}  # renewed by the pass
    assert between[2]["agent"] == state.get_build(second)["agent"]  # the node's last slot
    assert between[3] == {"build_key": third, "waiting": "insufficient_cpu"}
    assert len(kube.pods(NAMESPACE)) == 2
