"""A Jenkins controller restart loses no build and fails none. Real redis-server, kmock over
HTTP, the Jenkins fake restarting as Jenkins does (tests/support/jenkins_fake.py, "a controller
restart"): connections refused while it is down, every URL 503 with its loading page while it
loads, then back with every agent offline until it connects again, the queue restored with its
ids, Pipelines resumed, a running freestyle build lost as FAILURE, and no Notification event
for what ended while it was away."""

import dataclasses
import logging
import threading
import time

import pytest
import requests

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported, one_build, state_of
from tests.integration.test_warm_agents import pod_names, pool_of, record, warm_up
from tests.support.app import JENKINS_TOKEN, cluster_app, one_template_config, work
from tests.support.jenkins_fake import FREESTYLE_JOB, JenkinsFake
from tests.support.kmock_cluster import running
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.agent_starts import jenkins_away, online as agent_start
from workers.core.errors import CIAutoscalerError, Overloaded, PermanentError, Unavailable
from workers.core.ports import BuildState
from workers.core.warm_pool import WarmState

CONNECT_TIMEOUT_SECONDS = 60
LOST_EVENT_SECONDS = 30
CONFIG = one_template_config(f"""
    cpu: {{min: "1", default: "1", max: "1"}}
    memory: {{min: 1Gi, default: 1Gi, max: 1Gi}}
    agentConnectTimeoutSeconds: {CONNECT_TIMEOUT_SECONDS}
""")
RETRY_ONCE = Backoff(attempts=2, base_seconds=0)  # a refused crumb is fetched anew


def adapter_for(fake: JenkinsFake) -> JenkinsAdapter:
    return JenkinsAdapter(url=fake.url, user=fake.user or "", token=fake.token, timeout=5,
                          backoff=RETRY_ONCE)


def test_the_fake_restarts_as_jenkins_does_and_the_adapter_reads_each_phase_as_transient(
        jenkins_fake):
    """Down: connection refused; loading: 503 and the loading page, for reads and writes
    alike, before any credential is looked at; both Unavailable (retryable), never "not
    found" or a PermanentError. Back: queued items keep their ids (Queue.load), left items
    are forgotten, a running freestyle build is FAILURE (Run.reload), a Pipeline still runs
    (its work on the agent queued again, as a new item on the agent's name), every agent is
    offline, and the old crumb is refused once (the adapter fetches a new one)."""
    jenkins = adapter_for(jenkins_fake)
    jenkins_fake.add_job("freestyle", kind=FREESTYLE_JOB)
    for name in ("cia-a", "cia-b"):
        jenkins.ensure_node(name, label=name, remote_fs="/home/jenkins/agent")
        jenkins_fake.connect_agent(name)
    queued = jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": "cia-none"})
    pipeline = jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": "cia-a"})
    freestyle = jenkins.trigger_build("freestyle", {"CI_AUTOSCALER_AGENT": "cia-b"})
    assert sorted(item for item, _ in jenkins_fake.dispatch()) == [pipeline, freestyle]
    assert jenkins.online_agents() == {"cia-a", "cia-b"}

    jenkins_fake.go_down()
    with pytest.raises(Unavailable) as down:
        jenkins.build_state("build", queued)
    assert "ConnectionError" in str(down.value)
    jenkins_fake.come_up()
    anonymous = requests.post(f"{jenkins_fake.url}/computer/doCreateItem", timeout=5)
    assert anonymous.status_code == 503  # not 403: no security while loading
    assert "Please wait while Jenkins is getting ready to work" in anonymous.text
    for call in (lambda: jenkins.build_state("build", queued), jenkins.online_agents,
                 lambda: jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": "cia-x"}),
                 lambda: jenkins.delete_node("cia-a")):
        with pytest.raises(Unavailable) as loading:
            call()
        assert not isinstance(loading.value, PermanentError)
        assert "HTTP 503" in str(loading.value)
    assert "cia-a" in jenkins_fake.nodes and len(jenkins_fake.builds) == 3  # nothing done
    jenkins_fake.finish_loading()

    assert jenkins.build_state("build", queued) == (BuildState.QUEUED, None)
    assert jenkins.build_state("build", pipeline) == (BuildState.RUNNING, 1)
    assert jenkins.build_state("freestyle", freestyle) == (BuildState.FINISHED, 1)
    assert jenkins_fake.builds[2].result == "FAILURE"
    assert jenkins.online_agents() == set()
    assert pipeline in jenkins_fake.forgotten_items  # its left item: found through its run
    [resumed] = [i for i in jenkins.queue_items() if i.id > freestyle]  # its work, rescheduled
    assert "‘cia-a’" in resumed.why
    crumbs_before = len(jenkins_fake.requests_to("/crumbIssuer/api/json"))
    assert jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": "cia-y"}) > freestyle
    assert len(jenkins_fake.requests_to("/crumbIssuer/api/json")) == crumbs_before + 1


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE,
                     nodes=(("node-a", "8", "32Gi"), ("node-b", "8", "32Gi")),
                     CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS)) as app:
        yield app


def away_for(rt, jenkins_fake, start: float, seconds: float) -> float:
    """Jenkins restarts: down, then loading, for `seconds` in all from `start`, with a
    reconcile pass in each phase (its Jenkins steps stop at the first call to Jenkins, after
    its retries, and the pass raises that error once the rest is done); returns when it serves
    again."""
    jenkins_fake.go_down()
    with pytest.raises(CIAutoscalerError):
        reconcile.reconcile_once(rt, now=start)
    jenkins_fake.come_up()
    with pytest.raises(CIAutoscalerError):
        reconcile.reconcile_once(rt, now=start + seconds)
    jenkins_fake.finish_loading()
    return start + seconds


def notify(app, jenkins_fake, build, phase: str) -> None:
    answer = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                    json=jenkins_fake.notification(build, phase))
    assert answer.status_code in (200, 202), answer.get_json()
    work(app)


def test_an_agent_that_could_not_connect_while_jenkins_was_away_is_not_timed_out(
        app, kube, jenkins_fake):
    """Its pod ran longer than agentConnectTimeoutSeconds, but Jenkins was restarting all
    that time: the agent gets its full time from when Jenkins was last seen away, and is
    re-placed only when it still has not connected by then."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    started = time.time()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={"jnlp": running(started)})

    back = away_for(rt, jenkins_fake, started + CONNECT_TIMEOUT_SECONDS - 10, 20)
    passed = reconcile.reconcile_once(rt, now=back + 10)  # the agent retries every 10 s

    assert passed["agents_replaced"] == passed["agents_timed_out"] == 0
    assert kube.pod(NAMESPACE, agent) is not None and agent in jenkins_fake.nodes
    assert state.get_build(key)["status"] == "triggered"
    # Still not connected a connect timeout after Jenkins came back: re-placed, as ever.
    late = reconcile.reconcile_once(rt, now=back + CONNECT_TIMEOUT_SECONDS + 1)
    assert late["agents_replaced"] == 1 and kube.pod(NAMESPACE, agent) is None
    work(app)
    agent = state.get_build(key)["agent"]  # a new name (workers.engine.agent_names)
    assert kube.pod(NAMESPACE, agent) is not None  # the build's new pod
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(item, agent)]  # the same queue item, kept
    assert state.get_build(key)["status"] != "failed"


def test_a_slow_answer_is_not_jenkins_away_and_stops_no_connect_clock(app, kube, jenkins_fake):
    """A Jenkins that answers too slowly (a read timeout: the connection was taken, Jenkins is
    up) is not away: agents still connect to it. A pass that such a timeout fails records no
    absence, so an agent that never connects is still re-placed when its time is up (were
    each slow pass taken for a restart, a Jenkins slow now and then would hold every connect
    clock, and the warm pools' and the lost warm agents', for ever)."""
    key, agent, _ = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    started = time.time()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={"jnlp": running(started)})
    slow = dataclasses.replace(rt, jenkins=JenkinsAdapter(
        url=jenkins_fake.url, user=jenkins_fake.user or "", token=jenkins_fake.token,
        timeout=0.3, backoff=Backoff(attempts=1, base_seconds=0)))
    jenkins_fake.slow_next("/computer/api/json", 1.5)  # the pass's online poll

    with pytest.raises(CIAutoscalerError) as timed_out:
        reconcile.reconcile_once(slow, now=started + CONNECT_TIMEOUT_SECONDS - 10)
    assert "Timeout" in str(timed_out.value) and not isinstance(timed_out.value, Unavailable)
    assert isinstance(timed_out.value, Overloaded)  # the pass asked Jenkins nothing more
    assert jenkins_away.last(state) == 0
    late = reconcile.reconcile_once(rt, now=started + CONNECT_TIMEOUT_SECONDS + 1)
    assert late["agents_replaced"] == 1 and kube.pod(NAMESPACE, agent) is None


def test_an_agent_that_connects_after_the_restart_runs_its_queued_build(
        app, kube, jenkins_fake):
    """A triggered build still queued: Jenkins restores its item with the same id, and
    nothing of it is judged lost while Jenkins is away or after, however long it waits."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    now = time.time()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={"jnlp": running(now)})
    back = away_for(rt, jenkins_fake, now + 5, 20)
    jenkins_fake.connect_agent(agent)
    passed = reconcile.reconcile_once(rt, now=back + 3 * LOST_EVENT_SECONDS)

    assert passed["agents_online"] == 1 and passed["lost_builds_released"] == 0
    assert jenkins_fake.dispatch() == [(item, agent)]
    build = jenkins_fake.builds[0]
    notify(app, jenkins_fake, build, "STARTED")
    assert state.get_build(key)["status"] == "running"
    jenkins_fake.finish_build(item)
    notify(app, jenkins_fake, build, "COMPLETED")
    assert state.get_build(key)["status"] == "released"
    assert jenkins_fake.cancelled_items == [] and jenkins_fake.stopped_builds == []


def running_build(app, kube, jenkins_fake):
    """One build running on its connected agent, its STARTED taken; (key, agent, build)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        node=state_of(app).get_build(key)["node"],
                        states={"jnlp": running(time.time())})
    jenkins_fake.connect_agent(agent)
    assert agent_start.notice_online(runtime.current()) == 1
    assert jenkins_fake.dispatch() == [(item, agent)]
    build = jenkins_fake.builds[0]
    notify(app, jenkins_fake, build, "STARTED")
    assert state_of(app).get_build(key)["status"] == "running"
    return key, agent, build


def test_a_pipeline_whose_agent_is_offline_after_the_restart_is_neither_lost_nor_failed(
        app, kube, jenkins_fake):
    """The Pipeline resumes: its work on the agent waits in the queue as a new item on the
    agent's own name until the agent connects again. Its pod stays, its build is not aborted,
    that item gets no second agent, whatever the passes meanwhile; it ends as any build."""
    key, agent, build = running_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    back = away_for(rt, jenkins_fake, time.time() + 5, 30)

    offline = reconcile.reconcile_once(rt, now=back + 60)  # its agent offline for a minute
    later = reconcile.reconcile_once(rt, now=back + 60 + 3 * LOST_EVENT_SECONDS)

    for passed in (offline, later):
        assert passed["lost_agents_failed"] == passed["lost_builds_released"] == 0
        assert passed["pods_deleted"] == passed["jenkins_agents_deleted"] == 0
        assert passed["queue_items_adopted"] == passed["stalled_builds_restarted"] == 0
    assert state.get_build(key)["status"] == "running"
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [agent]
    assert agent in jenkins_fake.nodes and jenkins_fake.stopped_builds == []
    [resumed] = [b for b in jenkins_fake.node_blocks if b.state == "queued"]
    assert resumed.label == agent and resumed.queue_id > build.queue_id
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(resumed.queue_id, agent)]
    jenkins_fake.finish_build(build.queue_id)
    notify(app, jenkins_fake, build, "COMPLETED")
    assert state.get_build(key)["status"] == "released"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes


def test_a_freestyle_build_the_restart_ended_is_released_though_no_event_came(
        app, kube, jenkins_fake):
    """A freestyle build the restart killed (Jenkins loads it as FAILURE, and sends no
    COMPLETED ever) is released once `lost_event_seconds` have passed without a word from it,
    its pod and Jenkins node deleted; not aborted, not counted as an agent lost."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB)
    key, agent, build = running_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    heard = time.time()  # its STARTED
    back = away_for(rt, jenkins_fake, heard + 1, 5)
    assert build.result == "FAILURE"

    early = reconcile.reconcile_once(rt, now=back + 1)
    assert early["lost_builds_released"] == 0
    passed = reconcile.reconcile_once(rt, now=heard + LOST_EVENT_SECONDS + 1)

    assert passed["lost_builds_released"] == 1 and passed["lost_agents_failed"] == 0
    assert state.get_build(key)["status"] == "released"
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert jenkins_fake.stopped_builds == []
    assert exported(app, 'ci_autoscaler_agents_lost_total{template="small"}') == 0


WARM_CONFIG = f"""
routes:
  - {{project: "*", ref: "refs/*", job: build, template: small}}
templates:
  small:
    cpu: {{min: 900m, default: 900m, max: 900m}}
    memory: {{min: 512Mi, default: 768Mi, max: 768Mi}}
    agentConnectTimeoutSeconds: {CONNECT_TIMEOUT_SECONDS}
    warm: {{min: 1, max: 1, idleSeconds: 600}}
"""


@pytest.fixture
def warm_app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=WARM_CONFIG, namespace=NAMESPACE) as app:
        yield app


def test_idle_warm_agents_are_kept_through_a_restart_while_they_reconnect(
        warm_app, kube, jenkins_fake):
    """Every idle warm agent is offline when Jenkins is back, until its agent's next retry:
    the pool keeps them for their connect time from when Jenkins was last seen away (one
    that never reconnects is replaced after that, as ever), and a push takes the one back."""
    rt = runtime.current()
    [idle] = warm_up(rt, kube, jenkins_fake, "node-a")
    back = away_for(rt, jenkins_fake, time.time() + 1, 20)

    passed = reconcile.reconcile_once(rt, now=back + 5)  # before its agent's next retry

    assert passed["warm_started"] == 0
    assert [e.name for e in pool_of(rt)] == [idle] and idle in pod_names(kube)
    jenkins_fake.connect_agent(idle)
    reconcile.reconcile_once(rt, now=back + 10)
    assert [(e.name, e.state) for e in pool_of(rt)] == [(idle, WarmState.IDLE)]
    key = push(warm_app.test_client(), 0)
    work(warm_app)
    assert record(warm_app, key)["agent"] == idle


def test_an_idle_warm_agent_that_does_not_reconnect_after_a_restart_is_replaced_in_time(
        warm_app, kube, jenkins_fake):
    rt = runtime.current()
    [idle] = warm_up(rt, kube, jenkins_fake, "node-a")
    back = away_for(rt, jenkins_fake, time.time() + 1, 20)

    passed = reconcile.reconcile_once(rt, now=back + CONNECT_TIMEOUT_SECONDS + 1)

    assert idle not in pod_names(kube) and passed["warm_started"] == 1  # its replacement
    assert [e.name for e in pool_of(rt)] != [idle]


def test_a_pass_while_jenkins_is_away_still_refreshes_the_capacity_state(
        app, kube, jenkins_fake):
    """The pass's Jenkins steps stop at its first call to Jenkins, and it is counted as
    failed; the capacity state (nodes needed, shortfall), which needs no Jenkins, is written
    all the same, so a long restart does not leave /metrics stale (CICapacityStateStale)."""
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    before = float(rt.capacity.read_state()[0]["updated_at"])
    jenkins_fake.go_down()

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt)

    assert float(rt.capacity.read_state()[0]["updated_at"]) > before


def test_a_push_while_jenkins_is_down_gets_its_build_once_jenkins_is_back(
        app, kube, jenkins_fake):
    """Its provision fails at the Jenkins node (nothing is made: no pod, no build) and waits
    for its job's retries; past a lease period the reconcile pass provisions it again, once
    Jenkins serves: one pod, one Jenkins build."""
    rt, state = runtime.current(), state_of(app)
    jenkins_fake.go_down()
    key = push(app.test_client(), 0)
    work(app)  # the provision's job fails and is scheduled again (JOB_RETRY)
    assert state.get_build(key)["status"] == "queued" and kube.pods(NAMESPACE) == []
    jenkins_fake.come_up()
    jenkins_fake.finish_loading()

    passed = reconcile.reconcile_once(rt, now=time.time() + rt.settings.provision_lease_seconds
                                      + 1)
    work(app)

    assert passed["stalled_builds_restarted"] == 1
    build = state.get_build(key)
    assert build["status"] == "triggered"
    assert [p["metadata"]["name"] for p in kube.pods(NAMESPACE)] == [build["agent"]]
    assert len(jenkins_fake.builds) == 1 and build["agent"] in jenkins_fake.nodes


def test_the_reconcile_loop_says_jenkins_is_away_in_one_warning_line_not_a_traceback(
        app, kube, jenkins_fake, caplog):
    """A restart is routine: each pass whose Jenkins steps it stops says so as a warning,
    the error counted, without the stack trace of a failed pass (kept for what is not
    Jenkins' absence)."""
    rt, stop = runtime.current(), threading.Event()
    jenkins_fake.go_down()
    caplog.set_level(logging.INFO, logger="ci_autoscaler.reconcile")
    loop = threading.Thread(target=reconcile.run_forever, args=(rt, stop),
                            kwargs={"interval": 60}, daemon=True)
    loop.start()
    try:
        said = wait_until(lambda: [r for r in caplog.records
                                   if r.name == "ci_autoscaler.reconcile"
                                   and r.levelno >= logging.WARNING],
                          timeout=30, what="the pass's log line")
    finally:
        stop.set()
        loop.join(30)
    assert not loop.is_alive()
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in said] == [
        (logging.WARNING, "reconcile pass without Jenkins: Jenkins is unavailable", None)]
    # what the pass did without Jenkins, in that line
    assert said[0].jenkins_steps_skipped > 0 and said[0].nodes_needed == 0
    assert exported(app, 'ci_autoscaler_errors_total{component="reconcile",'
                         'kind="retryable"}') == 1


def test_a_connect_timeout_fail_that_jenkins_going_away_stopped_is_finished_once_it_is_back(
        app, kube, jenkins_fake):
    """An agent that never connects, re-placed once and still not connected, has its build
    failed (agent_connect_timeout): marked failed first, then its queue item is to be
    cancelled, and Jenkins goes away right then (503 through every retry). A pass while it is
    still away leaves the pod; the first with Jenkins back finishes that fail: item
    cancelled, pod and Jenkins node deleted, slot freed.
    Left to the stray pods repair (a failed build's pod), it was released as finished and its
    queue item waited in Jenkins for ever, for an agent no one makes."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    started = time.time()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={"jnlp": running(started)})
    first = reconcile.reconcile_once(rt, now=started + CONNECT_TIMEOUT_SECONDS + 1)
    assert first["agents_replaced"] == 1
    work(app)  # its new pod, on the other node, of a new name (workers.engine.agent_names)
    agent = state.get_build(key)["agent"]
    again = time.time()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={"jnlp": running(again)})
    jenkins_fake.fail_next(503, times=4, path_prefix="/queue/cancelItem")  # every retry

    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt, now=again + CONNECT_TIMEOUT_SECONDS + 1)

    assert state.get_build(key)["fail_reason"] == "agent_connect_timeout"
    assert jenkins_fake.cancelled_items == [] and kube.pod(NAMESPACE, agent) is not None
    jenkins_fake.go_down()  # still away at the next pass: the pod is left for the fail
    with pytest.raises(Unavailable):
        reconcile.reconcile_once(rt, now=again + CONNECT_TIMEOUT_SECONDS + 16)
    assert kube.pod(NAMESPACE, agent) is not None
    jenkins_fake.come_up()
    jenkins_fake.finish_loading()
    later = reconcile.reconcile_once(rt, now=again + CONNECT_TIMEOUT_SECONDS + 31)

    assert jenkins_fake.cancelled_items == [item]
    assert kube.pod(NAMESPACE, agent) is None and agent not in jenkins_fake.nodes
    assert state.get_build(key)["status"] == "failed" and rt.capacity.slots() == {}
    assert later["pods_deleted"] == 0  # finished as a fail, not released as a stray pod


def test_a_connect_timeout_fail_whose_node_deletion_jenkins_fails_frees_the_build_at_once(
        app, kube, jenkins_fake):
    """The other half-way point: the queue item cancelled and the pod deleted, then Jenkins
    answers 503 to the Jenkins node's deletion, every retry. The release goes on without it
    (tasks.delete_node_or_leave): the build is failed with its slot and reservation given
    back in that pass, and the node goes in the next (delete_agentless_nodes)."""
    key, agent, item = one_build(app, kube, jenkins_fake)
    rt, state = runtime.current(), state_of(app)
    state.update_build(key, connect_timeouts=1)  # re-placed once already
    started = time.time()
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=state.get_build(key)["node"],
                        states={"jnlp": running(started)})
    jenkins_fake.fail_next(503, times=4, path_prefix=f"/computer/{agent}/doDelete")  # every retry

    passed = reconcile.reconcile_once(rt, now=started + CONNECT_TIMEOUT_SECONDS + 1)

    assert passed["agents_timed_out"] == 1 and jenkins_fake.cancelled_items == [item]
    assert kube.pod(NAMESPACE, agent) is None and agent in jenkins_fake.nodes
    assert state.get_build(key)["status"] == "failed" and rt.capacity.slots() == {}
    assert rt.capacity.reservation_records() == {}
    later = reconcile.reconcile_once(rt, now=started + CONNECT_TIMEOUT_SECONDS + 16)
    assert later["jenkins_agents_deleted"] == 1 and agent not in jenkins_fake.nodes
