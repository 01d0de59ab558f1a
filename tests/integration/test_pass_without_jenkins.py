"""A reconcile pass while Jenkins is away (down, or loading after a restart) still does every
step that needs no Jenkins (workers.engine.jenkins_steps): stray pods are deleted, settled
reservations released, stale slots freed, scale-up pods synced, the capacity state written;
its Jenkins steps wait for the next pass, which also deletes what the release could not (a
released build's Jenkins node). Real redis-server, kmock over HTTP, the Jenkins fake restarting
as Jenkins does (tests/support/jenkins_fake.py, "a controller restart")."""

import time

import pytest

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_scale_up_pods import make_app, scale_up_pods, waiting_for_room
from tests.support.app import cluster_app, work
from tests.support.kmock_cluster import running, waiting
from workers import runtime
from workers.engine import reconcile
from workers.adapters.jenkins import NODE_DESCRIPTION
from workers.core.errors import Unauthorized, Unavailable
from workers.core.pods import BUILD_KEY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE

DEADLINE_SECONDS = 600
CONFIG = f"""
routes:
  - {{project: "*", ref: "refs/*", job: build, template: small}}
templates:
  small:
    cpu: {{min: "1", default: "1", max: "1"}}
    memory: {{min: 1Gi, default: 1Gi, max: 1Gi}}
    activeDeadlineSeconds: {DEADLINE_SECONDS}
    maxConcurrent: 4
"""


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        yield app


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def placed(app, count: int) -> list[tuple[str, str]]:
    """`count` pushes, each made into a pod and a queued build: (key, agent) each."""
    keys = [push(app.test_client(), i) for i in range(count)]
    work(app)
    builds = [state_of(app).get_build(key) for key in keys]
    assert [b["status"] for b in builds] == ["triggered"] * count, builds
    return [(key, b["agent"]) for key, b in zip(keys, builds)]


def cpu_requested(pod) -> int:
    """The pod's CPU request in millicores (its containers'; its init containers run first)."""
    def millis(quantity: str) -> int:
        return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)
    return sum(millis(c["resources"]["requests"]["cpu"]) for c in pod["spec"]["containers"])


def back(jenkins_fake) -> None:
    jenkins_fake.come_up()
    jenkins_fake.finish_loading()


def test_a_pod_past_its_deadline_is_deleted_while_jenkins_is_down_and_its_node_once_back(
        app, kube, jenkins_fake):
    """The pass's first Jenkins call (which agents are online?) fails; the stray pod is
    deleted and its build released all the same (reservation and slot given back); its Jenkins
    node, which only Jenkins can delete, goes in the first pass after Jenkins is back
    (delete_agentless_nodes). An orphan pod (its build unknown) waits for Jenkins: only
    Jenkins can say its agent runs nothing (Redis may have lost the record of a build that
    runs: workers.engine.orphans); it goes with its node in that same pass."""
    [(key, agent)] = placed(app, 1)
    # A kubelet took it: one still Pending past its deadline is failed instead, by a pass
    # with Jenkins (workers.engine.repairs._fail_never_started)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    rt, state = runtime.current(), state_of(app)
    kube.add_pod(NAMESPACE, "cia-left-behind", node="node-a",
                 labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE, BUILD_KEY_LABEL: "no-such-build"})
    kube.kubelet_status(NAMESPACE, "cia-left-behind", phase="Running")  # its agent may run
    jenkins_fake.add_node("cia-left-behind", label="cia-left-behind",
                          description=NODE_DESCRIPTION)
    assert key in rt.capacity.reservation_records() and rt.capacity.slots() == {key: "small"}
    late = time.time() + DEADLINE_SECONDS + 121  # the deadline and its grace, past
    written = float(rt.capacity.read_state()[0]["updated_at"])
    jenkins_fake.go_down()

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt, now=late)

    assert float(rt.capacity.read_state()[0]["updated_at"]) > written  # the pass went on
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == ["cia-left-behind"]
    assert state.get_build(key)["status"] == "released"
    assert rt.capacity.reservation_records() == {} and rt.capacity.slots() == {}
    assert {agent, "cia-left-behind"} <= set(jenkins_fake.nodes)  # they wait for Jenkins
    back(jenkins_fake)
    passed = reconcile.reconcile_once(rt, now=late + 15)
    assert passed["pods_deleted"] == 1 and kube.pods(NAMESPACE) == []
    assert passed["jenkins_agents_deleted"] == 1  # the orphan's went with its pod
    assert not {agent, "cia-left-behind"} & set(jenkins_fake.nodes)


def test_a_pod_still_pending_past_its_deadline_waits_for_jenkins_to_fail_its_build(
        app, kube, jenkins_fake):
    """A pod no kubelet took, past its deadline, is a start failure (repairs._fail_never_started):
    released while Jenkins is away, its queue item waited for good on a gone agent's label.
    It is left to the first pass with Jenkins, which fails the build and cancels the item."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    late = time.time() + DEADLINE_SECONDS + 121  # the deadline and its grace, past
    jenkins_fake.go_down()

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt, now=late)

    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
    assert state.get_build(key)["status"] == "triggered"
    back(jenkins_fake)
    assert reconcile.reconcile_once(rt, now=late + 15)["pods_deleted"] == 1
    build = state.get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_failed"), build
    assert kube.pods(NAMESPACE) == []
    (queued,) = jenkins_fake.builds
    assert queued.queue_id == item and queued.state == "cancelled"


def test_orphan_pods_whose_agent_never_runs_are_deleted_while_jenkins_is_down(
        app, kube, jenkins_fake):
    """An orphan pod (its build unknown) waits for Jenkins' word that its agent runs nothing
    (workers.engine.orphans), but not one whose agent cannot run: one the kubelet never took
    (Pending, Unschedulable: no container ran; kept, it asked the cluster autoscaler for a
    node for as long as Jenkins was away, and activeDeadlineSeconds never counts for it) and
    one that ended (Failed). A Running one is kept till Jenkins can be asked."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, BUILD_KEY_LABEL: "no-such-build"}
    for name in ("cia-unplaced", "cia-ended", "cia-running"):
        kube.add_pod(NAMESPACE, name, labels=labels)
        jenkins_fake.add_node(name, label=name, description=NODE_DESCRIPTION)
    kube.set_pod_unschedulable(NAMESPACE, "cia-unplaced", since=time.time() - 60)
    kube.kubelet_status(NAMESPACE, "cia-ended", phase="Failed", node="node-a")
    kube.kubelet_status(NAMESPACE, "cia-running", phase="Running", node="node-a")
    jenkins_fake.go_down()

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(runtime.current())

    # fails without the fix: all three kept while Jenkins is away
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == ["cia-running"]


def test_settled_reservations_are_released_and_stale_slots_freed_while_jenkins_loads(
        app, kube, jenkins_fake):
    """One build's pod runs (its requests show in the snapshot: its reservation would count
    it twice); another's release left its slot behind. With every Jenkins URL answering 503,
    the pass releases the one and frees the other, and the capacity state it writes counts
    the running pod once."""
    (running_key, running_agent), (ended_key, ended_agent) = placed(app, 2)
    rt, state = runtime.current(), state_of(app)
    kube.kubelet_status(NAMESPACE, running_agent, phase="Running", node="node-a",
                        states={"jnlp": running(time.time())})
    kube.delete_pod(NAMESPACE, ended_agent)
    state.update_build(ended_key, status="released")  # as a release that left the slot
    jenkins_fake.go_down()
    jenkins_fake.come_up()  # loading: 503 for every URL

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)

    assert rt.capacity.reservation_records() == {}
    assert rt.capacity.slots() == {running_key: "small"}
    _, nodes = rt.capacity.read_state()
    assert nodes["node-a"]["requested"][0] == cpu_requested(kube.pod(NAMESPACE, running_agent))


def test_a_pod_that_cannot_start_waits_for_jenkins_to_fail_its_build(app, kube, jenkins_fake):
    """Not every stray pod goes while Jenkins is away: one whose agent never connected and
    whose pod failed is a start failure, which needs Jenkins (its queue item cancelled).
    Released now, its build would be marked released, not failed, and its queue item would
    wait for an agent that never comes; so it is left, and failed once Jenkins is back."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    kube.set_pod_phase(NAMESPACE, agent, "Failed")
    jenkins_fake.go_down()

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)

    assert kube.pod(NAMESPACE, agent) is not None
    assert state.get_build(key)["status"] == "triggered"
    back(jenkins_fake)
    passed = reconcile.reconcile_once(rt)
    assert passed["start_failures"] == 1 and kube.pod(NAMESPACE, agent) is None
    assert state.get_build(key)["fail_reason"] == "pod_failed"
    assert jenkins_fake.cancelled_items == [item] and agent not in jenkins_fake.nodes


def test_jenkins_going_away_during_the_start_failure_sweep_leaves_its_pods_alone_too(
        app, kube, jenkins_fake):
    """Jenkins answers the pass's first question (which agents are online?), then goes away
    as the sweep asks it about the build whose pod failed: the sweep stops, and the stray
    pods repair leaves that pod to it, as when Jenkins was away from the start."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    kube.set_pod_phase(NAMESPACE, agent, "Failed")
    jenkins_fake.fail_next(503, times=4, path_prefix=f"/queue/item/{item}/")  # every retry

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)

    assert kube.pod(NAMESPACE, agent) is not None
    assert state.get_build(key)["status"] == "triggered"
    assert reconcile.reconcile_once(rt)["start_failures"] == 1
    assert state.get_build(key)["fail_reason"] == "pod_failed"
    assert jenkins_fake.cancelled_items == [item]



def test_a_build_the_sweep_failed_as_jenkins_went_away_has_its_queue_item_cancelled_later(
        app, kube, jenkins_fake):
    """A pod that can never start (ErrImagePull) is failed without asking Jenkins whether it
    is one (fail_reason written), then Jenkins goes away as the sweep cancels its queue item.
    The build is failed but its item still waits: the stray pods repair leaves its pod, and a
    pass once Jenkins is back finishes the fail (item cancelled, pod and node deleted), where
    that repair released it as finished and the item waited for ever. (The fail_start job a
    worker's watch queued is never run here: as when no worker saw the event, or the job's
    retries ran out during the outage; the sweep is the backstop.)"""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    kube.kubelet_status(NAMESPACE, agent, phase="Pending", node="node-a",
                        states={"jnlp": waiting("ErrImagePull")})
    jenkins_fake.fail_next(503, times=4, path_prefix=f"/queue/item/{item}/")  # every retry

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)

    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    assert kube.pod(NAMESPACE, agent) is not None and jenkins_fake.cancelled_items == []
    passed = reconcile.reconcile_once(rt)
    assert passed["start_failures"] == 1
    assert jenkins_fake.cancelled_items == [item]
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert state.get_build(key)["status"] == "failed"



def test_a_stray_pod_whose_jenkins_node_jenkins_fails_to_delete_is_released_all_the_same(
        app, kube, jenkins_fake):
    """Jenkins is up but fails the node's deletion, every retry (500: a config it cannot save,
    its disk full; or timeouts, a slow Jenkins: RetryableError, not Unavailable). The release
    goes on as while Jenkins is away, the node left to delete_agentless_nodes: stopped
    half-way after the pod's delete, the build was left neither released nor with a pod (its
    slot and reservation held), and the pass stopped before writing the capacity state."""
    [(key, agent)] = placed(app, 1)
    # Its agent runs (a pod still Pending past its deadline is failed instead, its agent's
    # computer asked first: workers.engine.repairs._fail_never_started)
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    jenkins_fake.connect_agent(agent)
    rt, state = runtime.current(), state_of(app)
    late = time.time() + DEADLINE_SECONDS + 121  # the deadline and its grace, past
    written = float(rt.capacity.read_state()[0]["updated_at"])
    jenkins_fake.fail_next(500, times=4, path_prefix=f"/computer/{agent}/")  # every retry

    reconcile.reconcile_once(rt, now=late)

    assert kube.pod(NAMESPACE, agent) is None
    assert state.get_build(key)["status"] == "released"
    assert rt.capacity.reservation_records() == {} and rt.capacity.slots() == {}
    assert float(rt.capacity.read_state()[0]["updated_at"]) > written
    assert agent in jenkins_fake.nodes
    assert reconcile.reconcile_once(rt, now=late + 15)["jenkins_agents_deleted"] == 1
    assert agent not in jenkins_fake.nodes


@pytest.fixture
def crowded(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    yield make_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake)
    runtime.install(None)


def test_builds_waiting_for_room_get_their_scale_up_pods_while_jenkins_is_down(
        crowded, kube, jenkins_fake):
    """The builds that wait for room need a Pending pod for a cluster autoscaler to add a
    node (workers.engine.scale_up): Kubernetes only, so a Jenkins outage does not hold the nodes
    back. Their re-drive, which registers agents in Jenkins, waits for it."""
    keys = [push(crowded.test_client(), i) for i in range(4)]
    work(crowded)
    waiting = waiting_for_room(crowded, keys)
    assert len(waiting) >= 2
    rt = runtime.current()
    jenkins_fake.go_down()

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)

    assert sorted(scale_up_pods(kube)) == sorted(waiting)
    assert waiting_for_room(crowded, keys) == waiting  # not re-driven: Jenkins is away


def test_a_build_the_sweep_failed_whose_item_jenkins_would_not_cancel_keeps_its_pod_till_it_does(
        app, kube, jenkins_fake):
    """A pod that can never start (ErrImagePull) has its build failed by the sweep, and
    Jenkins fails the cancel of its queue item through every retry (500: Jenkins is up, so
    the pass's Jenkins steps go on). The fail stopped half-way, and the stray pods repair
    leaves its pod to the sweep of the next pass, which cancels the item. It released the pod
    as a finished build's (the sweep had run, so starts were taken as judged): the item then
    waited on the label of an agent gone, and the adoption made an agent for it in the same
    pass, so the failed build ran after all (with the same image, failing again, up to five
    adoptions)."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    kube.kubelet_status(NAMESPACE, agent, phase="Pending", node="node-a",
                        states={"jnlp": waiting("ErrImagePull")})
    jenkins_fake.fail_next(500, times=4, path_prefix="/queue/cancelItem")  # every retry

    first = reconcile.reconcile_once(rt)

    assert state.get_build(key)["fail_reason"] == "ErrImagePull"
    assert first["queue_items_adopted"] == 0 and jenkins_fake.cancelled_items == []
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
    second = reconcile.reconcile_once(rt)
    assert second["start_failures"] == 1 and jenkins_fake.cancelled_items == [item]
    assert second["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []
    assert agent not in jenkins_fake.nodes and state.get_build(key)["status"] == "failed"


def test_a_build_the_sweep_failed_whose_item_jenkins_refuses_to_cancel_is_cleaned_up_anyway(
        app, kube, jenkins_fake, caplog):
    """As above, but Jenkins refuses the cancel for good (403: our user lacks Job/Cancel).
    Waiting for a cancel that never comes kept the failed build's pod, its node room and its
    Jenkins agent for ever, one more with each such build; the fail now cleans up all the
    same, and says loudly that the item is left in Jenkins' queue."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    kube.kubelet_status(NAMESPACE, agent, phase="Pending", node="node-a",
                        states={"jnlp": waiting("ErrImagePull")})
    jenkins_fake.fail_next(403, times=1000, path_prefix="/queue/cancelItem",
                           body="ci-autoscaler is missing the Job/Cancel permission")

    first = reconcile.reconcile_once(rt)

    assert state.get_build(key)["status"] == "failed" and first["start_failures"] == 1
    assert kube.pods(NAMESPACE) == [] and agent not in jenkins_fake.nodes
    assert jenkins_fake.cancelled_items == [] and first["queue_items_adopted"] == 0
    refused = [r for r in caplog.records if "could not stop it in Jenkins" in r.getMessage()]
    assert len(refused) == 1 and "403" in refused[0].error and str(item) in refused[0].error
    second = reconcile.reconcile_once(rt)
    assert second["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []


@pytest.mark.parametrize("refused", [None, "/queue/item/"], ids=["every-call", "the-read"])
def test_a_failed_build_whose_state_jenkins_would_not_tell_keeps_its_pod_till_it_does(
        app, kube, jenkins_fake, refused):
    """Only a cancel Jenkins refuses is given up on: a read that fails (401 while the API
    token is being rotated: Jenkins' BasicHeaderProcessor answers every call so until the new
    one is in place) says nothing of the cancel. The fail took it for a refusal: it released
    the pod before it had even asked to cancel, the sweep (which goes by pods) never came back
    to it, and the item stayed in Jenkins' queue for good, on the label of an agent gone
    (adopted, and the failed build run, once its state expired). With every call refused,
    the pass's first Jenkins step stops the others (workers.engine.jenkins_steps), the sweep too;
    with only the fail's own read refused, the fail is begun and waits for it."""
    [(key, agent)] = placed(app, 1)
    rt, state = runtime.current(), state_of(app)
    item = int(state.get_build(key)["queue_item"])
    kube.kubelet_status(NAMESPACE, agent, phase="Pending", node="node-a",
                        states={"jnlp": waiting("ErrImagePull")})
    token = jenkins_fake.token
    if refused is None:
        jenkins_fake.token = "rotated"  # ours no longer valid
    else:
        jenkins_fake.fail_next(401, times=100, path_prefix=refused,
                               body="Invalid password/token for user: ci-autoscaler")

    with pytest.raises(Unauthorized, match="401"):
        reconcile.reconcile_once(rt)

    assert state.get_build(key).get("fail_reason") == (None if refused is None
                                                       else "ErrImagePull")
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
    jenkins_fake.token = token  # the new token in place
    jenkins_fake.clear_failures()
    second = reconcile.reconcile_once(rt)
    assert second["start_failures"] == 1 and jenkins_fake.cancelled_items == [item]
    assert second["queue_items_adopted"] == 0 and kube.pods(NAMESPACE) == []
    assert agent not in jenkins_fake.nodes and state.get_build(key)["status"] == "failed"
