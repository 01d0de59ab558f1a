"""/metrics of the running service after real traffic: every metric the dashboard and the
rules name is exported, the export is the catalogue (no more, no less), promtool's linter
has nothing to say, and counts made in worker processes (RQ's SimpleWorker command and a
forking `rq worker`) reach the web's /metrics without leaving a multiprocess file behind;
a running worker is counted, and no longer once it stops."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_placement_on_cluster import cluster, push  # noqa: F401
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app, work
from tests.support.dashboards import ROOT, names_in_dashboard_and_rules
from tests.support.monitoring import promtool, scrape, serve_app, wait_until
from tests.support.payloads import fixture
from workers.engine import catchup
from workers.telemetry import metrics as catalogue
from workers import runtime
from workers.engine import reconcile
from workers.adapters import gitlab as gitlab_api
from workers.core.catchup import CatchUpSources
from workers.agent_starts import online as agent_start
from workers.core.routing import AGENT_PARAMETER
from workers.engine.intake import Mover
from workers.concurrency import pool_worker
from workers.telemetry import exposition


def notify(client, agent: str, phase: str, number: int) -> int:
    note = fixture("jenkins_notification_started.json" if phase == "STARTED"
                   else "jenkins_notification_completed_unstable.json")
    note.update(name="build", url="job/build/")  # the route's job, as the plugin names it
    note["build"].update(phase=phase, number=number)
    note["build"]["parameters"] = {AGENT_PARAMETER: agent}
    return client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", json=note).status_code


def traffic(app, jenkins_fake, gitlab_fake) -> list[str]:
    """Pushes (one more than the cluster has room for), a duplicate, a wrong token, a bad
    body; the worker places them; two agents connect (their start measured), one build
    starts, one completes and is released (in the Jenkins fake too: a build still queued on a
    released agent would be adopted again); a catch-up pass over a project whose webhook
    GitLab disabled."""
    client = app.test_client()
    keys = [push(client, i) for i in range(9)]
    body = fixture("gitlab_push_real_lrz.json")
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
               "Idempotency-Key": "push-0"}
    assert client.post("/webhooks/gitlab", json=body, headers=headers).status_code == 200
    assert client.post("/webhooks/gitlab", json=body, headers=headers | {
        "X-Gitlab-Token": "wrong"}).status_code == 401
    assert client.post("/webhooks/gitlab", data=b"{", headers=headers | {
        "Idempotency-Key": "bad"}).status_code == 400
    work(app)
    state = app.extensions["ci_autoscaler"].state
    agents = [state.get_build(k)["agent"] for k in keys]
    runs = [jenkins_fake.start_build(jenkins_fake.build_with(AGENT_PARAMETER, agent)[0].queue_id)
            for agent in agents[:2]]
    assert notify(client, agents[0], "STARTED", runs[0].number) == 200
    assert notify(client, agents[0], "STARTED", runs[0].number) == 200  # redelivered: once
    assert notify(client, agents[1], "STARTED", runs[1].number) == 200
    for agent in agents[:2]:  # measured when the computer is online, once
        jenkins_fake.connect_agent(agent)
    assert agent_start.poll(runtime.current())["agents_online"] == 2
    jenkins_fake.finish_build(runs[1].queue_id)
    assert notify(client, agents[1], "COMPLETED", runs[1].number) == 202
    work(app)
    reconcile.reconcile_once(runtime.current())
    rt = runtime.current()
    gitlab_fake.add_project("team/app", branches={"main": "a" * 40})
    gitlab_fake.add_hook("team/app", "https://ci.example.com/webhooks/gitlab",
                         alert_status="temporarily_disabled", disabled_until=time.time() + 60)
    cu = catchup.CatchUp(settings=rt.settings, config=rt.config.model_copy(
        update={"catch_up": CatchUpSources(projects=("team/app",))}), state=rt.state,
        gl=gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token))
    assert catchup.catch_up_once(cu)["hooks_disabled"] == 1
    return keys


def exported(text: str) -> dict[str, set[str]]:
    """Family name -> the sample names it exported (a histogram's _bucket, _sum, _count)."""
    return {f.name: {s.name for s in f.samples} for f in text_string_to_metric_families(text)}


def test_every_metric_of_the_dashboard_and_the_rules_is_exported_after_traffic(
        cluster, jenkins_fake, gitlab_fake):
    traffic(cluster, jenkins_fake, gitlab_fake)
    with serve_app(cluster) as base:
        text = scrape(base)
    samples = set().union(*exported(text).values())
    missing = {name: sorted(where) for name, where in names_in_dashboard_and_rules().items()
               if name not in samples}
    assert not missing, f"named but not exported: {missing}"
    # promtool's linter (naming, units, _total) has nothing to say about ours.
    ours = "".join(line + "\n" for line in text.splitlines()
                   if "ci_autoscaler_" in line)  # the client's own process_* are not ours
    result = promtool("check", "metrics", stdin=ours)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_the_export_is_exactly_the_catalogue_with_its_children_at_zero(cluster, jenkins_fake,
                                                                      gitlab_fake):
    traffic(cluster, jenkins_fake, gitlab_fake)
    with serve_app(cluster) as base:
        text = scrape(base)
    families = {f.name: f for f in text_string_to_metric_families(text)
                if f.name.startswith("ci_autoscaler_")}
    declared = {m.name.removesuffix("_total") if m.kind == catalogue.Kind.COUNTER else m.name
                for m in catalogue.CATALOGUE}
    assert set(families) == declared
    assert text.count("# TYPE ci_autoscaler_errors_total counter") == 1  # merged, not twice
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in families.values() for s in f.samples}
    # The traffic's own figures (8 placed at once, the 9th once the release freed a slot),
    # and the pre-initialised children at 0.
    assert values["ci_autoscaler_agents_created_total", (("template", "small"),)] == 9
    assert values["ci_autoscaler_agents_deleted_total", (("reason", "build_completed"),
                                                          ("template", "small"))] == 1
    assert values["ci_autoscaler_agents_deleted_total", (("reason", "unschedulable"),
                                                          ("template", "small"))] == 0
    assert values["ci_autoscaler_agent_start_failures_total", (("reason", "ImagePullBackOff"),
                                                               ("template", "small"))] == 0
    assert values["ci_autoscaler_provision_duration_seconds_count",
                  (("template", "small"),)] == 9
    assert values["ci_autoscaler_agent_start_duration_seconds_count",
                  (("template", "small"),)] == 2
    assert values["ci_autoscaler_agents", (("phase", "running"), ("template", "small"))] == 1
    assert values["ci_autoscaler_agents", (("phase", "pending"), ("template", "small"))] == 7
    assert values["ci_autoscaler_agents", (("phase", "releasing"), ("template", "small"))] == 0
    assert values["ci_autoscaler_queue_jobs", (("queue", "ci-autoscaler"),
                                               ("state", "queued"))] == 0
    assert values["ci_autoscaler_queue_jobs", (("queue", "ci-autoscaler"),
                                               ("state", "failed"))] == 0
    assert values["ci_autoscaler_workers", (("queue", "ci-autoscaler"),)] == 0  # burst: gone
    assert values["ci_autoscaler_intake_events", (("state", "waiting"),)] == 0  # all made jobs
    assert values["ci_autoscaler_intake_events", (("state", "failed"),)] == 0
    assert values["ci_autoscaler_builds_waiting_for_capacity", ()] == 0  # the release re-drove
    assert values["ci_autoscaler_errors_total", (("component", "provision"),
                                                 ("kind", "permanent"))] == 0
    assert values["ci_autoscaler_node_used_cores", (("node", "busy"),)] == 2.4
    assert values["ci_autoscaler_gitlab_hook_disabled", (("project", "team/app"),)] == 1
    assert values["ci_autoscaler_errors_total", (("component", "catch_up"),
                                                 ("kind", "permanent"))] == 0
    for name, labels in values:
        assert not {"build", "build_key", "pod", "agent", "url"} & {k for k, _ in labels}, name
    assert GITLAB_TOKEN not in text and JENKINS_TOKEN not in text


@pytest.mark.parametrize("command", [["-m", "service.cli", "worker", "--burst"],
                                     ["-m", "rq.cli", "worker", "--burst"]],
                         ids=["ci-autoscaler-worker", "forking-rq-worker"])
def test_counts_made_in_worker_processes_reach_metrics_and_leave_no_files(
        cluster, tmp_path, command):
    client = cluster.test_client()
    for i in range(2):
        push(client, i)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    state = cluster.extensions["ci_autoscaler"].state
    if command[1] == "rq.cli":  # plain `rq worker`: a work-horse forked per job
        command = command + ["--url", os.environ["REDIS_URL"], "--serializer",
                             "rq.serializers.JSONSerializer", state.queue.name]
        Mover(state).drain()  # it has no mover: the pushes made jobs here
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True,
                            text=True, timeout=120,
                            env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(multiproc)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert state.queue.finished_job_registry.get_job_count(cleanup=False) == 2

    text = client.get("/metrics").get_data(as_text=True)
    assert 'ci_autoscaler_agents_created_total{template="small"} 2.0' in text
    assert 'ci_autoscaler_provision_duration_seconds_count{template="small"} 2.0' in text
    assert list(Path(multiproc).iterdir()) == []  # no file per PID, however many processes


def _workers(client) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("ci_autoscaler_workers{"))


def _start_worker() -> subprocess.Popen:
    """`ci-autoscaler worker` in a process group of its own (with its RQ scheduler child), as
    in a container."""
    return subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--log-level",
                             "WARNING"], cwd=ROOT, env=dict(os.environ), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_workers_counts_a_live_worker_and_drops_it_when_it_stops(cluster):
    client = cluster.test_client()
    assert _workers(client) == 0
    proc = _start_worker()
    try:
        wait_until(lambda: _workers(client) == 1, timeout=30, what="the worker counted")
    finally:
        proc.terminate()  # SIGTERM: RQ's warm shutdown unregisters the worker
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert _workers(client) == 0


def test_workers_drops_a_worker_killed_without_its_shutdown(cluster, monkeypatch):
    """A worker SIGKILLed (the OOM killer, its node lost) never unregisters, and RQ's key for
    it lives worker_ttl + 60 s (480 s) after its last heartbeat: the gauge counted the dead
    worker for 8 minutes, and CIWorkersDown (for: 5m) paged 13 minutes after the last worker
    died. A worker counts while it beats: an idle one beats each DEQUEUE_SECONDS."""
    assert exposition.WORKER_SILENT_SECONDS >= 3 * pool_worker.DEQUEUE_SECONDS
    monkeypatch.setattr(exposition, "WORKER_SILENT_SECONDS", 5.0)  # not 90 s in a test
    client = cluster.test_client()
    proc = _start_worker()
    try:
        wait_until(lambda: _workers(client) == 1, timeout=30, what="the worker counted")
    finally:
        # SIGKILL to the container's every process: no warm shutdown, its registration left
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    state = cluster.extensions["ci_autoscaler"].state
    assert state.redis.smembers(f"rq:workers:{state.queue.name}")  # still registered
    wait_until(lambda: _workers(client) == 0, timeout=20, what="the killed worker dropped")


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    """A Content-Type read strictly: a parameter named twice is malformed (RFC 2045 5.1 names
    each once). Go's mime.ParseMediaType refused any (before Go 1.18; since, only twice with
    different values: "mime: duplicate parameter name"), and Prometheus 3 fails a scrape whose
    Content-Type does not parse unless fallback_scrape_protocol is set
    (textparse.extractMediaType)."""
    media_type, *parts = (part.strip() for part in header.split(";"))
    params: dict[str, str] = {}
    for part in parts:
        name, _, value = part.partition("=")
        assert name.lower() not in params, f"mime: duplicate parameter name in {header!r}"
        params[name.lower()] = value
    return media_type.lower(), params


def test_the_metrics_content_type_names_each_parameter_once(app):
    """/metrics answered "text/plain; version=1.0.0; charset=utf-8; charset=utf-8" (Flask's
    mimetype= adds a charset to one that has it): a header a strict parser refuses, and with
    it the scrape (Prometheus 3 parses it only because today's Go lets equal duplicates by)."""
    with serve_app(app) as base, urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        media_type, params = _media_type(answer.headers["Content-Type"])
    assert media_type == "text/plain"  # the Prometheus text format, by its version
    assert params.get("charset", "utf-8").lower() == "utf-8"
    assert params.get("version") in ("0.0.4", "1.0.0")


def test_start_failures_of_a_waiting_reason_the_operator_made_fatal_exist_at_zero(redis_url):
    """CI_AUTOSCALER_FATAL_WAITING_REASONS may name more kubelet reasons than the defaults
    (README: RegistryUnavailable; pkg/kubelet/images/types.go). Their start-failure series
    were not exported until a first failure made them at 1, and increase() counts nothing for
    a series' first sample (Prometheus docs, "Query functions", increase()): CIAgentStartFailing
    (> 2 in 30 minutes) stayed silent for 3 builds of a template failing RegistryUnavailable."""
    app = make_app(redis_url, fatal_waiting_reasons_text="ErrImagePull,RegistryUnavailable")
    text = app.test_client().get("/metrics").get_data(as_text=True)
    zero = {(s.labels["template"], s.labels["reason"]): s.value
            for f in text_string_to_metric_families(text)
            if f.name == "ci_autoscaler_agent_start_failures"
            for s in f.samples if s.name.endswith("_total")}
    templates = app.extensions["ci_autoscaler"].config.templates
    assert templates
    for template in templates:
        assert zero[template, "RegistryUnavailable"] == 0
        assert zero[template, "ImagePullBackOff"] == 0  # the defaults' stay, counted before
