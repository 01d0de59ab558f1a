"""Where a build's time goes, on real parts: two pushes on a cluster with room for one agent.
The first runs at once; the second waits for capacity, then is placed when the first one's pod
is deleted, and runs. Real redis-server, kmock over HTTP (the scheduler's binding and the
kubelet's states written through the API, so the worker's own watch sees them), the Jenkins
fake; the worker's parts run as in production (runtime.current(), the mover, RQ's
SimpleWorker, the agent online poll).

Each build's record holds every stage it went through, in order, and
ci_autoscaler_build_stage_seconds{stage,template} counts each stage once per build."""

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import JENKINS_TOKEN, mover, work
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from workers import runtime
from workers.agent_starts import online as agent_start
from workers.core.routing import AGENT_PARAMETER
from workers.core.stages import FIELD, ORDER, TIMED, Stage, observed_field, timeline
from workers.stage_timings import ledger

# One node with room for one agent: the build's 900m and 768Mi plus the injected agent's 100m
# and 256Mi make 1 core and 1Gi.
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
"""
WATCH_SECONDS = 10  # the worker's watch sees a pod event well within this


@pytest.fixture
def app(app_on_cluster):
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(("node-a", "1", "2Gi"),))
    runtime.current()  # the worker's runtime: its ClusterWatch lists and watches pods
    return app


def notify(app, agent: str, run, phase: str) -> int:
    """The Jenkins Notification plugin's event for this run, with the page it names; a
    STARTED taken by the worker's mover too."""
    note = fixture("jenkins_notification_completed_unstable.json")
    note.update(name="build", url="job/build/")
    note["build"].update(phase=phase, number=run.number, status=run.result or "",
                         url=f"job/build/{run.number}/",
                         full_url=f"{jenkins_url(app)}/job/build/{run.number}/",
                         parameters={AGENT_PARAMETER: agent}, queue_id=run.queue_id)
    status = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                    json=note).status_code
    if phase == "STARTED":
        mover(app).drain()  # the worker's intake mover applies it (workers.engine.started)
    return status


def jenkins_url(app) -> str:
    """JENKINS_URL: a run's page is taken from a notification only under it
    (workers.engine.run_links)."""
    return app.extensions["ci_autoscaler"].settings.jenkins_url.rstrip("/")


def record(app, key: str) -> dict[str, str]:
    return app.extensions["ci_autoscaler"].state.get_build(key)


def scheduled(app, kube, key: str) -> None:
    """kube-scheduler binds the build's pod to node-a; the worker's watch records it."""
    kube.bind_pod(NAMESPACE, record(app, key)["agent"], "node-a")
    wait_until(lambda: FIELD[Stage.SCHEDULED] in record(app, key), timeout=WATCH_SECONDS,
               what="the worker's pod watch recording the pod scheduled")


def runs(app, kube, jenkins_fake, key: str, *, started_first: bool):
    """The pod runs, its agent connects, Jenkins starts the build on it: for a Pipeline its
    STARTED comes before the agent is online (`started_first`), for a freestyle job after."""
    agent = record(app, key)["agent"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running")
    item = int(record(app, key)["queue_item"])
    run = jenkins_fake.start_build(item)
    if started_first:
        assert notify(app, agent, run, "STARTED") == 200
    jenkins_fake.connect_agent(agent)
    assert agent_start.poll(runtime.current(), connect_timeouts=False)["agents_online"] == 1
    if not started_first:
        assert notify(app, agent, run, "STARTED") == 200
    return run


def finishes(app, jenkins_fake, key: str, run) -> None:
    run = jenkins_fake.finish_build(run.queue_id)
    assert notify(app, record(app, key)["agent"], run, "COMPLETED") == 202
    work(app)  # the release: the pod deleted; it re-drives what waits


def stage_counts(app) -> dict[str, float]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "ci_autoscaler_build_stage_seconds")
    return {s.labels["stage"]: s.value for s in family.samples
            if s.name.endswith("_count") and s.labels["template"] == "small"}


def in_order(rec: dict[str, str], *, pipeline: bool) -> list[str]:
    """The stages the record holds, checked to be in order by their own times: the scheduling
    time is the API server's, to the second; a Pipeline's STARTED precedes its agent online
    (it counts from then: workers.core.stages.NEEDS)."""
    times = [(s, float(rec[FIELD[s]])) for s in ORDER if FIELD[s] in rec
             and not (pipeline and s == Stage.STARTED)]
    for (a, ta), (b, tb) in zip(times, times[1:]):
        slack = 1.0 if Stage.SCHEDULED in (a, b) else 0.0
        assert ta <= tb + slack, f"{a} at {ta} after {b} at {tb}"
    if pipeline:
        assert float(rec["started_at"]) <= float(rec["agent_online_at"])
    return [s.stage.value for s in timeline(rec)]


def test_a_push_that_waits_then_runs_shows_every_stage_in_its_record_and_the_histogram(
        app, kube, jenkins_fake):
    client = app.test_client()
    assert stage_counts(app) == {s.value: 0 for s in TIMED}  # every series there at 0

    first = push(client, 0)
    work(app)
    assert record(app, first)["status"] == "triggered"
    second = push(client, 1)
    work(app)
    assert record(app, second)["status"] == "waiting"  # the cluster is full
    assert record(app, second)["first_wait_reason"] == "insufficient_cpu"

    scheduled(app, kube, first)
    run = runs(app, kube, jenkins_fake, first, started_first=True)
    assert record(app, first)["build_url"] == f"{jenkins_url(app)}/job/build/{run.number}/"
    finishes(app, jenkins_fake, first, run)
    assert kube.pod(NAMESPACE, record(app, first)["agent"]) is None
    # The release re-drove the waiting build: it has room now.
    assert record(app, second)["status"] == "triggered" and record(app, second)["node"]

    scheduled(app, kube, second)
    run = runs(app, kube, jenkins_fake, second, started_first=False)
    finishes(app, jenkins_fake, second, run)

    everything = [s.value for s in ORDER]
    assert in_order(record(app, second), pipeline=False) == everything
    assert in_order(record(app, first), pipeline=True) == [s for s in everything
                                                          if s != "waiting"]
    for key in (first, second):
        rec = record(app, key)
        assert rec["status"] == "released"
        reached = {s.stage for s in timeline(rec)}
        # every stage it reached was observed once, its seconds kept in its record
        assert {s for s in TIMED if observed_field(s) in rec} == reached - {Stage.RECEIVED}
    # The second build's wait for capacity is its 'placed' stage: it ended when the first
    # build's pod was deleted.
    second_rec = record(app, second)
    waited = float(second_rec["placed_at"]) - float(second_rec["waiting_at"])
    assert float(second_rec[observed_field(Stage.PLACED)]) == pytest.approx(waited, abs=0.002)
    assert float(second_rec["placed_at"]) >= float(record(app, first)["pod_deleted_at"])

    counts = stage_counts(app)
    assert counts == {"queued": 2, "waiting": 1, "placed": 2, "scheduled": 2, "online": 2,
                      "started": 2, "finished": 2, "deleted": 2}


def test_a_stage_is_counted_once_however_often_it_is_recorded(app, kube, jenkins_fake):
    """Redelivered events, a second pass and a relist of the watch change nothing."""
    key = push(app.test_client(), 0)
    work(app)
    scheduled(app, kube, key)
    before = stage_counts(app)
    rt = runtime.current()
    assert ledger.record(rt.state, key, Stage.PLACED, at=time.time() + 60) == []
    assert ledger.record(rt.state, key, Stage.SCHEDULED) == []
    kube.bind_pod(NAMESPACE, record(app, key)["agent"], "node-a")  # another event
    assert stage_counts(app) == before
    assert before["placed"] == 1 and before["scheduled"] == 1
    # A build whose state is gone (expired) gets no stray record from a late event.
    assert ledger.record(rt.state, "gone-build", Stage.SCHEDULED) == []
    assert record(app, "gone-build") == {}


def test_a_pod_bound_before_its_provision_ends_still_counts_its_placement(
        app, kube, jenkins_fake):
    """kube-scheduler binds a pod within milliseconds of its create, while the provision still
    waits on its trigger (Jenkins' answer): the worker's watch records SCHEDULED first. The
    placement recorded after it was left unobserved (a later stage was observed already), and
    ci_autoscaler_build_stage_seconds counted one build placed less than it scheduled."""
    arrived, release = jenkins_fake.hold_next("/job/build/build")
    key = push(app.test_client(), 0)
    bound: list[BaseException | None] = []

    def kube_scheduler() -> None:  # binds the pod while the trigger is held
        try:
            assert arrived.wait(WATCH_SECONDS * 3), "the trigger never reached Jenkins"
            wait_until(lambda: kube.pods(NAMESPACE), timeout=WATCH_SECONDS, what="the pod")
            (pod,) = kube.pods(NAMESPACE)
            kube.bind_pod(NAMESPACE, pod["metadata"]["name"], "node-a")
            wait_until(lambda: FIELD[Stage.SCHEDULED] in record(app, key),
                       timeout=WATCH_SECONDS, what="the worker's watch recording it scheduled")
            bound.append(None)
        except BaseException as err:  # reported by the test's thread
            bound.append(err)
        finally:
            release.set()

    binder = threading.Thread(target=kube_scheduler, daemon=True)
    binder.start()
    work(app)  # the provision: its create, and its trigger held until the pod is bound
    binder.join(WATCH_SECONDS)
    assert bound == [None], bound
    rec = record(app, key)
    assert rec["status"] == "triggered", rec
    assert [s.stage.value for s in timeline(rec)] == ["received", "queued", "placed", "scheduled"]
    assert {s: rec.get(observed_field(Stage(s))) is not None
            for s in ("queued", "placed", "scheduled")} == dict.fromkeys(
                ("queued", "placed", "scheduled"), True), rec
    counts = stage_counts(app)
    assert (counts["placed"], counts["scheduled"]) == (1, 1), counts
