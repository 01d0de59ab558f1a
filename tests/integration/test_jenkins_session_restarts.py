"""A Jenkins restart is told from an outage by Jenkins' session (X-Jenkins-Session, new on
every start of the controller: workers.agent_starts.jenkins_away), for a Pipeline run left to
decide after its agent was lost (workers.engine.lost_runs).

A restart drops the controller's timer that cancels a deleted node's block
(RemovedNodeListener) and resumes the block on the gone node's own label: the run's time
starts again, and a block waiting on that label is the resumed one for a while. An outage
(connections refused, the same controller and session after it) does neither. Before, every
failed call was taken for a restart: a network that dropped every few minutes kept a run that
never decides from its abort, and held a retry's block from its new agent for 6 minutes; a
restart between two passes, with no call of ours failing, was not noticed at all, and the
resumed block was taken for the retry's (its rest run on a new agent, without its workspace).
Behind a proxy that strips the header, every absence is still taken for a restart.

Real redis-server, kmock over HTTP, the Jenkins fake (its restart makes a new session and
resumes a deleted node's block; `cut_off` refuses connections while the controller runs on);
the set-up of test_lost_pipeline_runs."""

import pytest

from tests.integration import test_start_failures as starts
from tests.integration.test_lost_pipeline_runs import JOB, evicted, pipeline_on_its_agent
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.agent_starts import jenkins_away
from workers.core.errors import Unavailable
from workers.engine import lost_runs, reconcile

app = starts.app  # one template (small, 1Gi), two nodes, the worker's runtime watching


def handed_over(app, kube, jenkins_fake) -> tuple[str, str, object, float]:
    """A Pipeline run whose agent was evicted, left to decide, and a pass that saw its pod
    missing: (key, agent, the run, when it was handed over)."""
    key, agent, block = pipeline_on_its_agent(app, kube, jenkins_fake, agent_retry_count=2)
    evicted(app, kube, jenkins_fake, agent)
    handed = float(starts.state_of(app).get_build(key)[lost_runs.LOST_RUN_AT_FIELD])
    reconcile.reconcile_once(runtime.current(), now=handed + 1)  # its pod missing: noticed
    return key, agent, block.run, handed


def outage(jenkins_fake, at: float) -> None:
    """Jenkins cannot be reached for a pass at `at`, and answers again after it, unchanged."""
    jenkins_fake.cut_off()
    with pytest.raises(Unavailable):
        reconcile.reconcile_once(runtime.current(), now=at)
    jenkins_fake.reachable()


def agents(kube) -> list[str]:
    return [p["metadata"]["name"] for p in kube.pods(NAMESPACE)]


def test_a_restart_between_two_passes_with_no_call_failing_is_noticed_by_its_session(
        app, kube, jenkins_fake):
    key, agent, run, handed = handed_over(app, kube, jenkins_fake)
    rt = runtime.current()
    jenkins_fake.restart()  # down, loaded and serving again between two passes
    assert jenkins_away.last(rt.state) == 0  # no call of ours failed
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.run is run and resumed.label == agent  # on the gone node's own label

    noticed = handed + 240
    reconcile.reconcile_once(rt, now=noticed)  # a new session: a restart
    assert jenkins_away.restarted(rt, noticed + 1) == noticed
    assert jenkins_away.last(rt.state) == noticed  # the agents' connect clocks too
    reconcile.reconcile_once(rt, now=noticed + 90)  # the resumed block waits: no new agent
    starts.work(app)
    assert starts.state_of(app).get_build(key)["agent"] == agent and agents(kube) == []

    (again,) = jenkins_fake.removed_node_timeout()  # the resume gives up: the retry's block
    assert resumed.state == "cancelled" and again.run is run
    # the restart's time, not the hand-over's: the run has not had its time
    reconcile.reconcile_once(rt, now=handed + lost_runs.RUN_DECIDES_SECONDS + 1)
    assert jenkins_fake.stopped_builds == [] and run.state == "running"
    reconcile.reconcile_once(rt, now=noticed + lost_runs.RESUMED_BLOCK_SECONDS + 1)
    starts.work(app)
    new = starts.state_of(app).get_build(key)["agent"]
    assert new != agent and agents(kube) == [new]  # placed again for the retry's block


def test_outages_after_the_hand_over_keep_no_run_from_its_bound(app, kube, jenkins_fake):
    """Node removal detection off: nothing ends the block, and the run is aborted at its
    bound, whatever the network did meanwhile."""
    key, agent, run, handed = handed_over(app, kube, jenkins_fake)
    rt = runtime.current()
    for at in (200, 400, 590):  # a network that drops every few minutes
        outage(jenkins_fake, handed + at)
        reconcile.reconcile_once(rt, now=handed + at + 5)
    assert jenkins_away.last(rt.state) == handed + 590  # agents' connect clocks wait
    assert jenkins_away.restarted(rt, handed + 596) == 0  # the same session throughout
    assert starts.state_of(app).get_build(key)["status"] == "running"

    reconcile.reconcile_once(rt, now=handed + lost_runs.RUN_DECIDES_SECONDS + 1)

    build = starts.state_of(app).get_build(key)
    assert (build["status"], build["fail_reason"]) == ("failed", "pod_lost"), build
    assert jenkins_fake.stopped_builds == [(JOB, run.number)]


def test_the_retry_s_block_after_an_outage_gets_its_new_agent_at_once(
        app, kube, jenkins_fake):
    key, agent, run, handed = handed_over(app, kube, jenkins_fake)
    rt = runtime.current()
    outage(jenkins_fake, handed + 100)
    # Jenkins' own cancel: its timer ran on through the outage; the retry asks again
    (again,) = jenkins_fake.removed_node_timeout()
    assert again.run is run

    for later in (300, 301):  # (the first makes the label probe, for Jenkins to name the
        # label its waiting items ask: workers.engine.label_probe)
        reconcile.reconcile_once(rt, now=handed + later)
    starts.work(app)

    new = starts.state_of(app).get_build(key)["agent"]
    assert new != agent and agents(kube) == [new]
    kube.kubelet_status(NAMESPACE, new, phase="Running", node="node-b")
    jenkins_fake.connect_agent(new)
    assert jenkins_fake.dispatch() == [(again.queue_id, new)]
    assert jenkins_fake.stopped_builds == [] and run.state == "running"


def test_without_the_session_header_an_outage_is_taken_for_a_restart_as_before(
        app, kube, jenkins_fake):
    """A proxy that strips X-Jenkins-Session: a restart cannot be told from an outage, so
    every absence is taken for one (the resumed block's time given), as before sessions."""
    jenkins_fake.session_header = False
    key, agent, run, handed = handed_over(app, kube, jenkins_fake)
    rt = runtime.current()
    outage(jenkins_fake, handed + 100)
    (again,) = jenkins_fake.removed_node_timeout()
    assert jenkins_away.restarted(rt, handed + 101) == handed + 100

    for later in (300, 301):  # may be a resumed block: no new agent
        reconcile.reconcile_once(rt, now=handed + later)
    starts.work(app)
    assert starts.state_of(app).get_build(key)["agent"] == agent and agents(kube) == []

    reconcile.reconcile_once(rt, now=handed + 100 + lost_runs.RESUMED_BLOCK_SECONDS + 1)
    starts.work(app)
    new = starts.state_of(app).get_build(key)["agent"]
    assert new != agent and agents(kube) == [new]


def test_a_pass_notices_a_restart_that_no_build_asked_about(app, kube, jenkins_fake):
    """No lost run, no agent on its way up: the pass still looks at the session its reads
    showed, so a restart is known (to connect clocks, and to a hand-over that comes later)
    from the first pass after it, not from the first question about it."""
    rt = runtime.current()
    reconcile.reconcile_once(rt, now=1000.0)
    jenkins_fake.restart()

    reconcile.reconcile_once(rt, now=1015.0)

    assert jenkins_away.last(rt.state) == 1015.0  # read without looking again
    assert jenkins_away.restarted(rt, 1016.0) == 1015.0
