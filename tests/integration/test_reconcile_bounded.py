"""A reconcile process asked to stop (SIGTERM: the pod has 60 s before it is SIGKILLed) ends
the step under way before its next build, and a wait for a Retry-After at once, not after the
step's last build or the wait's end; what it did not reach, the next pass does. So does a
leader whose lease another instance took over mid-step."""

import signal
import threading
import time

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_reconcile_repairs import LOST_EVENT_SECONDS, pod_names
from tests.integration.test_reconcile_repairs import app, state_of  # noqa: F401 (fixture)
from tests.integration.test_worker_and_reconcile_processes import Process
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters.lease import Lease

BUILDS = 12
STOPPED = "reconcile pass stopped: the process is stopping (the next pass does the rest)"


def _builds_whose_completed_was_lost(app, kube, jenkins_fake) -> list[str]:
    """BUILDS builds that ran and ended in Jenkins, their COMPLETED lost, last heard of long
    ago: finish_lost_builds asks Jenkins about each, one after the other."""
    kube.add_node("node-b", cpu="8", memory="32Gi")  # room for them all (node-a: 8 cores)
    client = app.test_client()
    keys = [push(client, n) for n in range(BUILDS)]
    work(app)
    state = state_of(app)
    for build in jenkins_fake.builds:
        jenkins_fake.start_build(build.queue_id)
        jenkins_fake.finish_build(build.queue_id)
    long_ago = time.time() - 10 * LOST_EVENT_SECONDS
    for key in keys:
        assert state.get_build(key)["status"] == "triggered"
        # written by hand: update_build stamps updated_at with the time of the write
        state.redis.hset(state._k("build", key), "updated_at", str(long_ago))
    return keys


def _asked_about_a_run(jenkins_fake) -> bool:
    return bool(_items_asked(list(jenkins_fake.requests)))


def _items_asked(requests: list) -> set[str]:
    """The queue items asked about: a build's first question of finish_lost_builds."""
    return {r.path for r in requests if r.path.startswith("/queue/item/")}


def _no_build_begun_after(jenkins_fake, mark: int) -> None:
    """The step asked about no build after the `mark`-th request (the stop, or the lease
    lost) but those it had begun: the build under way ended it. What it costs in time is the
    build's remaining one-second calls (five: its run's state, its result, the node's read,
    delete and check), and a loaded machine's start and end of the process on top (8.8 s
    seen beside a full run: a bound of 8 s failed a step that had stopped as it should)."""
    requests = list(jenkins_fake.requests)
    begun = _items_asked(requests[mark:]) - _items_asked(requests[:mark])
    assert not begun, f"the step went on to another build: {sorted(begun)}"


# The whole step (BUILDS builds of six one-second calls each) takes over a minute; what the
# stop leaves is one build's calls: well within this.
ENDED_WITHIN_SECONDS = 30


def test_sigterm_in_a_step_over_many_builds_on_a_slow_jenkins_ends_the_process_in_seconds(
        app, kube, jenkins_fake):
    """Each of finish_lost_builds' builds costs a few Jenkins calls of a second each (a slow
    controller): the step took half a minute, which a SIGTERM waited out before the pass
    ended, past the pod's grace period. Now the step ends before its next build."""
    keys = _builds_whose_completed_was_lost(app, kube, jenkins_fake)
    rt = runtime.current()
    jenkins_fake.latency_seconds = 1.0
    reconciler = Process("reconcile", "--interval", "60")
    try:
        wait_until(lambda: _asked_about_a_run(jenkins_fake), timeout=60,
                   what="the pass asking Jenkins about the builds")
        mark = len(jenkins_fake.requests)
        signalled = time.monotonic()
        reconciler.proc.send_signal(signal.SIGTERM)
        code = reconciler.proc.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        reconciler.stop(signal.SIGKILL)
    assert code == 0, "".join(reconciler.raw[-20:])
    _no_build_begun_after(jenkins_fake, mark)  # the build under way, then the end
    assert took < ENDED_WITHIN_SECONDS, f"{took:.1f} s after SIGTERM"
    assert reconciler.said(STOPPED) == 1, "".join(reconciler.raw[-20:])
    assert not rt.state.redis.exists(rt.state.prefix + "reconcile-lock")
    state = state_of(app)
    left = [k for k in keys if state.get_build(k)["status"] != "released"]
    assert left, "the step ran to its end"

    jenkins_fake.latency_seconds = 0.0  # the next pass does the rest
    result = reconcile.reconcile_once(rt)
    assert result["lost_builds_released"] == len(left)
    assert all(state.get_build(k)["status"] == "released" for k in keys)
    assert pod_names(kube) == []


def test_sigterm_during_a_retry_after_wait_ends_the_process_at_once(app, kube, jenkins_fake):
    """Jenkins answers 429 with Retry-After: 30 (a rate-limiting proxy): the call waited 30 s
    before it was made again, after the SIGTERM too. Now the wait ends on it."""
    _builds_whose_completed_was_lost(app, kube, jenkins_fake)
    jenkins_fake.fail_next(429, path_prefix="/queue/item/", headers={"Retry-After": "30"})
    reconciler = Process("reconcile", "--interval", "60")
    try:
        wait_until(lambda: _asked_about_a_run(jenkins_fake), timeout=60,
                   what="the pass asking Jenkins about the builds")
        signalled = time.monotonic()
        reconciler.proc.send_signal(signal.SIGTERM)
        code = reconciler.proc.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        reconciler.stop(signal.SIGKILL)
    assert code == 0, "".join(reconciler.raw[-20:])
    assert took < 5, f"{took:.1f} s after SIGTERM"
    assert reconciler.said(STOPPED) == 1, "".join(reconciler.raw[-20:])


def test_a_lease_taken_over_mid_step_ends_the_step_before_its_next_build(
        app, kube, jenkins_fake):
    """The lease was checked between steps only: a step over many builds on a slow Jenkins
    went on acting for half a minute after another instance had taken the lease over, the two
    leaders repairing the same builds at once."""
    keys = _builds_whose_completed_was_lost(app, kube, jenkins_fake)
    rt = runtime.current()
    jenkins_fake.latency_seconds = 1.0
    interval = 1.0
    lease = Lease(rt.state.redis, rt.state.prefix + "reconcile-lock",
                  reconcile.LOCK_PERIODS * interval)
    held_at = time.monotonic()
    assert lease.hold()
    outcome: list[bool] = []
    leader = threading.Thread(target=lambda: outcome.append(reconcile.leader_pass(
        rt, "me", lease, interval, stop=threading.Event(), held_at=held_at)))
    leader.start()
    try:
        wait_until(lambda: _asked_about_a_run(jenkins_fake), timeout=60,
                   what="the pass asking Jenkins about the builds")
        mark = len(jenkins_fake.requests)
        rt.state.redis.set(lease.key, "another-instance")  # taken over
        taken = time.monotonic()
        leader.join(60)
        took = time.monotonic() - taken
    finally:
        jenkins_fake.latency_seconds = 0.0
        leader.join(60)
    assert outcome == [False]  # the lease lost
    _no_build_begun_after(jenkins_fake, mark)
    assert took < interval + ENDED_WITHIN_SECONDS, f"{took:.1f} s after the lease was taken"
    state = state_of(app)
    assert [k for k in keys if state.get_build(k)["status"] != "released"]


def test_a_lease_taken_over_during_a_retry_after_wait_ends_the_wait(app, kube, jenkins_fake):
    """Jenkins answers 429 with Retry-After: 30 while the lease is taken over: the wait ran to
    its end (a call's waits, up to 90 s, outlast the 45 s lease), the pass acting on beside the
    new leader. Now the wait ends once the lease is known lost (its renewal, each second)."""
    _builds_whose_completed_was_lost(app, kube, jenkins_fake)
    rt = runtime.current()
    jenkins_fake.fail_next(429, path_prefix="/queue/item/", headers={"Retry-After": "30"})
    interval = 1.0
    lease = Lease(rt.state.redis, rt.state.prefix + "reconcile-lock",
                  reconcile.LOCK_PERIODS * interval)
    held_at = time.monotonic()
    assert lease.hold()
    outcome: list[bool] = []
    leader = threading.Thread(target=lambda: outcome.append(reconcile.leader_pass(
        rt, "me", lease, interval, stop=threading.Event(), held_at=held_at)))
    leader.start()
    try:
        wait_until(lambda: _asked_about_a_run(jenkins_fake), timeout=60,
                   what="the pass asking Jenkins about the builds")
        rt.state.redis.set(lease.key, "another-instance")  # taken over during the wait
        taken = time.monotonic()
        leader.join(60)
        took = time.monotonic() - taken
    finally:
        leader.join(60)
    assert outcome == [False]  # the lease lost
    # fails without the fix: the 30 s wait ran out first
    assert took < interval + 5, f"{took:.1f} s after the lease was taken"
    # the call not made again, no build after it asked about
    assert len([r for r in list(jenkins_fake.requests) if r.path.startswith("/queue/item/")]) == 1


def _agent_polls(jenkins_fake) -> int:
    return sum(1 for r in list(jenkins_fake.requests) if r.path.startswith("/computer/api/json"))


def test_sigterm_during_a_retry_after_wait_of_an_agent_poll_between_passes_ends_it_at_once(
        app, kube, jenkins_fake):
    """Between passes the leader asks Jenkins every 2 s which agents on their way up are
    online, outside the pass and its bound: a 429 with Retry-After: 30 there was waited out,
    up to three times, after the SIGTERM too (most of a reconcile pod's time is spent between
    passes), past the pod's 60 s grace period, its lease held. Now the wait ends on it."""
    push(app.test_client(), 0)
    work(app)  # its pod made, its agent on its way up: asked about between passes
    reconciler = Process("reconcile", "--interval", "60")
    try:
        wait_until(lambda: reconciler.said("reconciled"), timeout=60, what="the first pass")
        before = _agent_polls(jenkins_fake)
        jenkins_fake.fail_next(429, times=20, path_prefix="/computer/api/json",
                               headers={"Retry-After": "30"})
        wait_until(lambda: _agent_polls(jenkins_fake) > before, timeout=30,
                   what="an agent poll between passes")
        signalled = time.monotonic()
        reconciler.proc.send_signal(signal.SIGTERM)
        code = reconciler.proc.wait(timeout=60)  # the grace period
        took = time.monotonic() - signalled
    finally:
        reconciler.stop(signal.SIGKILL)
    assert code == 0, "".join(reconciler.raw[-20:])
    assert took < 5, f"{took:.1f} s after SIGTERM"
    assert reconciler.said("agent poll failed") == 0, "".join(reconciler.raw[-20:])


def test_a_retry_after_wait_of_an_agent_poll_between_passes_ends_before_the_lease_expires(
        app, kube, jenkins_fake):
    """Between passes nothing renews the lease during a poll: a 429 with Retry-After: 30 was
    waited out (up to three times) past the lease's TTL, the poll acting on beside the
    instance that took the lease over. Now the wait ends once less than a period is left."""
    push(app.test_client(), 0)
    work(app)  # its pod made, its agent on its way up: asked about between passes
    rt = runtime.current()
    interval = 3.0  # the lease: 9 s, a poll's waits end 6 s after its renewal
    lease = Lease(rt.state.redis, rt.state.prefix + "reconcile-lock",
                  reconcile.LOCK_PERIODS * interval)
    assert lease.hold()
    jenkins_fake.fail_next(429, times=20, path_prefix="/computer/api/json",
                           headers={"Retry-After": "30"})
    before = _agent_polls(jenkins_fake)
    started = time.monotonic()
    # one poll (after 2 s), then the period is over
    poller = threading.Thread(target=reconcile._poll_agents_until, args=(
        rt, threading.Event(), started + 3, lease))
    poller.start()
    poller.join(60)
    took = time.monotonic() - started
    assert _agent_polls(jenkins_fake) == before + 1  # the call not made again
    # fails without the fix: the 30 s wait ran out first
    assert took < 2 + interval * 2 + 4, f"{took:.1f} s"
