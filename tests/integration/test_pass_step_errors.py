"""A Jenkins step of a reconcile pass that fails for a reason of its own (a 403 on one build's
queue item, a malformed answer) does not stop the Jenkins steps after it: only Jenkins' absence
(workers.engine.jenkins_steps) does. Real redis-server, kmock over HTTP, the Jenkins fake."""

import time

from tests.integration.test_jenkins_restart import CONNECT_TIMEOUT_SECONDS
from tests.integration.test_jenkins_restart import app  # noqa: F401 (the same cluster)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from tests.support.kmock_cluster import running, waiting
from workers import runtime
from workers.engine import reconcile
from workers.adapters.jenkins import NODE_DESCRIPTION
from workers.agent_starts import jenkins_away
from workers.core.errors import Overloaded, PermanentError


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def test_a_forbidden_queue_item_of_one_build_stops_no_later_jenkins_step(
        app, kube, jenkins_fake):
    """Jenkins refuses one build's queue item for good (403: its job's Read permission taken
    from our user), so the lost-build check raises a PermanentError on every pass. Jenkins is
    otherwise fine: the steps after it still run in the same pass, each pass (an agent that
    never connected is re-placed, an agent of ours with no pod and no build is deleted);
    the error is reported with the pass, as failed, not as skipped steps."""
    keys = [push(app.test_client(), i) for i in range(2)]
    work(app)
    rt, state = runtime.current(), state_of(app)
    refused, silent = (state.get_build(key) for key in keys)
    started = time.time()
    kube.kubelet_status(NAMESPACE, silent["agent"], phase="Running", node=silent["node"],
                        states={"jnlp": running(started)})  # its agent never connects
    jenkins_fake.add_node("cia-left-behind", label="cia-left-behind",
                          description=NODE_DESCRIPTION)
    jenkins_fake.fail_next(403, times=1000, path_prefix=f"/queue/item/{refused['queue_item']}/")

    passed, error = reconcile.reconcile_pass(rt, now=started + CONNECT_TIMEOUT_SECONDS + 1)

    assert isinstance(error, PermanentError) and "403" in str(error)
    assert passed["agents_replaced"] == 1 and kube.pod(NAMESPACE, silent["agent"]) is None
    assert passed["jenkins_agents_deleted"] == 1 and "cia-left-behind" not in jenkins_fake.nodes
    assert passed.get("jenkins_steps_skipped", 0) == 0
    assert passed["jenkins_steps_failed"] == 1
    assert state.get_build(keys[0])["status"] == "triggered"  # asked again next pass


def test_jenkins_asking_to_slow_down_skips_the_later_jenkins_steps(app, kube, jenkins_fake):
    """429 with a Retry-After longer than a pass waits (Overloaded, like a read timeout): Jenkins
    is up but struggling, so the pass asks it nothing more, as while it is away; it is not
    recorded as away (agents still connect to it)."""
    keys = [push(app.test_client(), 0)]
    work(app)
    rt, state = runtime.current(), state_of(app)
    jenkins_fake.add_node("cia-left-behind", label="cia-left-behind",
                          description=NODE_DESCRIPTION)
    jenkins_fake.fail_next(429, times=1000, path_prefix="/computer/api/json",
                           headers={"Retry-After": "120"})

    passed, error = reconcile.reconcile_pass(rt)

    assert isinstance(error, Overloaded) and "429" in str(error)
    assert passed["jenkins_steps_skipped"] > 0 and "cia-left-behind" in jenkins_fake.nodes
    assert jenkins_away.last(state) == 0
    assert state.get_build(keys[0])["status"] == "triggered"


def test_an_overloaded_jenkins_stops_the_start_failure_sweep_whose_fails_end_later(
        app, kube, jenkins_fake):
    """Two pods that can never start (ErrImagePull); Jenkins asks us to slow down (429, a
    Retry-After longer than a pass waits) as the sweep asks about the first one's queue item,
    once the build is marked failed. Overloaded stops the pass's Jenkins steps at the step
    that meets it (workers.engine.jenkins_steps), the sweep included: the second build is not asked
    about, the pass says it failed, and the stray pods repair leaves the first one's pod to
    the next pass, which cancels both queue items.
    The sweep let only Unavailable through: it went on to the next build, the pass ended as
    passed, and the stray pods repair released the first build's pod as finished, so its
    queue item waited in Jenkins for ever for an agent no one makes."""
    keys = [push(app.test_client(), i) for i in range(2)]
    work(app)
    rt, state = runtime.current(), state_of(app)
    items = sorted(int(state.get_build(key)["queue_item"]) for key in keys)
    for key in keys:
        build = state.get_build(key)
        kube.kubelet_status(NAMESPACE, build["agent"], phase="Pending", node=build["node"],
                            states={"jnlp": waiting("ErrImagePull")})
    jenkins_fake.fail_next(429, path_prefix="/queue/item/", headers={"Retry-After": "120"})

    passed, error = reconcile.reconcile_pass(rt)

    assert isinstance(error, Overloaded) and "429" in str(error)
    asked = [r.path for r in jenkins_fake.requests if r.path.startswith("/queue/item/")]
    assert len(asked) == 1, asked
    assert passed["jenkins_steps_skipped"] > 0
    assert len(kube.pods(NAMESPACE)) == 2 and jenkins_fake.cancelled_items == []
    passed, error = reconcile.reconcile_pass(rt)
    assert error is None and passed["start_failures"] == 2
    assert sorted(jenkins_fake.cancelled_items) == items and kube.pods(NAMESPACE) == []
    assert [state.get_build(key)["status"] for key in keys] == ["failed", "failed"]


def test_an_overloaded_jenkins_stops_the_connect_timeout_check(app, kube, jenkins_fake):
    """Two agents that never connect, each re-placed once already: both builds are to fail
    (agent_connect_timeout). Jenkins asks us to slow down (429) as the first one's queue item
    is cancelled: the check stops there, the pass says so, and the next pass, Jenkins fine,
    finishes that fail and makes the other. The check let only Unavailable through: it
    cancelled the next build's item on the struggling Jenkins all the same, and the pass
    ended as passed."""
    keys = [push(app.test_client(), i) for i in range(2)]
    work(app)
    rt, state = runtime.current(), state_of(app)
    started = time.time()
    for key in keys:
        build = state.get_build(key)
        state.update_build(key, connect_timeouts=1)  # re-placed once already
        kube.kubelet_status(NAMESPACE, build["agent"], phase="Running", node=build["node"],
                            states={"jnlp": running(started)})
    items = sorted(int(state.get_build(key)["queue_item"]) for key in keys)
    jenkins_fake.fail_next(429, path_prefix="/queue/cancelItem",
                           headers={"Retry-After": "120"})
    late = started + CONNECT_TIMEOUT_SECONDS + 1

    passed, error = reconcile.reconcile_pass(rt, now=late)

    assert isinstance(error, Overloaded) and "429" in str(error)
    assert len(jenkins_fake.requests_to("/queue/cancelItem", "POST")) == 1
    assert jenkins_fake.cancelled_items == []
    passed, error = reconcile.reconcile_pass(rt, now=late + 1)
    assert error is None, error
    assert sorted(jenkins_fake.cancelled_items) == items
    assert [state.get_build(key)["fail_reason"] for key in keys] == \
        ["agent_connect_timeout"] * 2
