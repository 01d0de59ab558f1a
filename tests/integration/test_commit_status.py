"""GitLab commit statuses on real parts: pushes go through the webhook, the worker (kmock over
HTTP, the Jenkins fake) and Jenkins' notifications as in production, and the sender runs in
its thread as in the reconcile process, posting to the GitLab API fake over HTTP
(tests/support/gitlab_fake.py: GitLab's state machine, its 400s, 429 + Retry-After).

The outage test runs GitLab down for OUTAGE_SECONDS, not a minute, with the sender's back-off
scaled down to match (first 0.2 s, at most 1 s instead of 2 s and 120 s): the schedule is a
pure function of the tries and Retry-After (workers.core.commit_status.retry_delay), whose
test holds it to a handful of tries over a real minute and a prompt try after it; here the
same loop and the same code run, only faster."""

import json
import time

import pytest

from tests.integration.test_build_stages import (
    CONFIG, WATCH_SECONDS, finishes, notify, record, runs, scheduled)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env, work
from tests.support.gitlab_fake import captured_project_id
from tests.support.monitoring import wait_until
from service.app import create_app
from tests.support.kmock_cluster import terminated
from workers import runtime
from workers.engine import reconcile, tasks
from workers.commit_statuses import sender as status_sender
from workers.core import commit_status
from workers.core.pods import AGENT_CONTAINER
from workers.core.models import BuildRequest
from workers.engine.intake import Mover

PROJECT = "hephaestustest/demo-repository"  # the push fixture's project
API_TOKEN = "glpat-status-api-9Zq4xT"
SENT_SECONDS = 10  # a touched build's status reaches GitLab well within this
OUTAGE_SECONDS = 5.0


def sha(n: int) -> str:
    return f"{n + 1:040x}"  # tests.integration.test_placement_on_cluster.push


@pytest.fixture
def world(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, gitlab_fake):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    gitlab_fake.tokens[API_TOKEN] = {"api"}
    gitlab_fake.add_project(PROJECT, branches={f"branch-{n}": sha(n) for n in range(3)},
                            project_id=captured_project_id())
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, GITLAB_URL=gitlab_fake.url,
                   GITLAB_API_TOKEN=API_TOKEN)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent
    runtime.install(None)
    app = create_app()
    rt = runtime.current()  # the worker's runtime, watching pods
    sender = status_sender.from_settings(rt.settings, rt.state, rt.capacity)
    sender.retry_first_seconds, sender.retry_max_seconds = 0.2, 1.0
    thread, stop = status_sender.start(sender, poll=0.05)
    wait_until(lambda: rt.state.redis.exists(sender.queue.on_key), timeout=SENT_SECONDS,
               what="the sender switched on")
    yield app, sender
    stop.set()
    thread.join(timeout=15)
    runtime.install(None)


def state_of(app):
    return app.extensions["ci_autoscaler"].state


def posted(gitlab_fake, n: int) -> list[tuple[str, str, int]]:
    return gitlab_fake.status_history(PROJECT, sha(n))


def arrives(gitlab_fake, n: int, state: str) -> None:
    wait_until(lambda: any(s == state and a == 201 for s, _, a in posted(gitlab_fake, n)),
               timeout=SENT_SECONDS, what=f"status {state} of push {n} posted")


def _sample(app, line: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return float(next(x for x in text.splitlines() if x.startswith(line)).rsplit(" ", 1)[1])


def exported(app, result: str) -> float:
    return _sample(app, f'ci_autoscaler_commit_status_total{{result="{result}"}} ')


def backlog(app) -> float:
    return _sample(app, "ci_autoscaler_commit_status_backlog ")


def test_a_push_that_waits_then_runs_posts_pending_with_the_reason_running_then_success(
        world, kube, jenkins_fake, gitlab_fake):
    app, _ = world
    client = app.test_client()
    assert exported(app, "sent") == 0  # the series exists at 0
    first = push(client, 0)
    work(app)
    arrives(gitlab_fake, 0, "pending")  # agent starting on node-a
    second = push(client, 1)
    work(app)
    assert record(app, second)["status"] == "waiting"  # the cluster is full
    arrives(gitlab_fake, 1, "pending")

    scheduled(app, kube, first)
    run = runs(app, kube, jenkins_fake, first, started_first=True)
    finishes(app, jenkins_fake, first, run)  # its release re-drives the second: placed
    assert record(app, second)["status"] == "triggered"
    scheduled(app, kube, second)
    run = runs(app, kube, jenkins_fake, second, started_first=False)
    arrives(gitlab_fake, 1, "running")
    finishes(app, jenkins_fake, second, run)
    arrives(gitlab_fake, 1, "success")

    # the run's page as Jenkins' API names it (Run.getAbsoluteUrl), not the notification's
    url = f"{jenkins_fake.url}/job/build/{run.number}/"
    assert posted(gitlab_fake, 1) == [
        ("pending", "waiting for capacity: insufficient cpu, 1 node needed", 201),
        ("running", "running on node-a", 201),
        ("success", "build succeeded (Jenkins: SUCCESS)", 201)]
    [status] = [s for s in gitlab_fake.projects[PROJECT].statuses if s["sha"] == sha(1)]
    assert (status["name"], status["ref"], status["status"], status["target_url"]) == \
        ("ci-autoscaler/build", "main", "success", url)  # the push's branch
    arrives(gitlab_fake, 0, "success")
    # the first ran and finished without the test waiting in between: its running may have
    # been collapsed into its success
    assert [s for s, _, _ in posted(gitlab_fake, 0)] in (["pending", "running", "success"],
                                                        ["pending", "success"])
    assert all(a == 201 for n in (0, 1) for _, _, a in posted(gitlab_fake, n))
    assert exported(app, "sent") == len(posted(gitlab_fake, 0)) + 3
    assert exported(app, "refused") == 0


def test_two_provision_jobs_of_one_build_post_its_status_once(
        world, kube, jenkins_fake, gitlab_fake):
    """A second provision job of the build (a restart by the reconcile loop while RQ still
    had the first one's retry, a resume) runs after the first made the pod: it touches the
    build's status again, and the sender, which posts the build's newest state and not
    each touch, posts nothing new."""
    app, _ = world
    key = push(app.test_client(), 0)
    Mover(state_of(app)).drain()
    request = BuildRequest.from_dict(json.loads(record(app, key)["request"]))
    tasks.queue_provision(runtime.current(), request)
    assert len(state_of(app).queue.get_job_ids()) == 2

    work(app)
    arrives(gitlab_fake, 0, "pending")
    wait_until(lambda: backlog(app) == 0, timeout=SENT_SECONDS, what="the sender idle")

    assert [(s, a) for s, _, a in posted(gitlab_fake, 0)] == [("pending", 201)]
    assert (exported(app, "sent"), exported(app, "already")) == (1, 0)  # no second post
    assert len(jenkins_fake.builds) == 1 and len(kube.pods(NAMESPACE)) == 1


def test_an_image_pull_failure_posts_failed_with_the_reason(
        world, kube, jenkins_fake, gitlab_fake):
    app, _ = world
    key = push(app.test_client(), 0)
    work(app)
    agent = record(app, key)["agent"]
    image = kube.pod(NAMESPACE, agent)["spec"]["containers"][0]["image"]
    kube.image_pull_backoff(NAMESPACE, agent)
    deadline = time.monotonic() + WATCH_SECONDS
    while record(app, key).get("status") != "failed":  # the watch queues the failure
        assert time.monotonic() < deadline, "the build was not failed"
        work(app)
        time.sleep(0.02)
    arrives(gitlab_fake, 0, "failed")
    state, text, answer = posted(gitlab_fake, 0)[-1]
    assert (state, answer) == ("failed", 201)
    assert text.startswith("agent could not start: container jnlp: ImagePullBackOff: Back-off "
                           f'pulling image "{image}": ErrImagePull: {image}: not found')
    # whatever was posted before it was a pending one, taken
    assert all((s, a) == ("pending", 201) for s, _, a in posted(gitlab_fake, 0)[:-1])


@pytest.mark.parametrize("status", [500, 429])
def test_gitlab_down_or_throttling_delays_no_provisioning_and_the_final_state_arrives(
        world, kube, jenkins_fake, gitlab_fake, status):
    app, sender = world
    gitlab_fake.outage(OUTAGE_SECONDS, status=status, retry_after=1)
    until = time.monotonic() + OUTAGE_SECONDS
    key = push(app.test_client(), 0)
    started = time.monotonic()
    work(app)  # the provision: its touches are queued, no GitLab call
    provisioned = time.monotonic()
    assert record(app, key)["status"] == "triggered" and kube.pod(NAMESPACE, record(app, key)[
        "agent"]) is not None
    assert provisioned < until, f"provisioning took {provisioned - started:.1f}s"
    # meanwhile the sender is trying, and failing, and backing off
    wait_until(lambda: gitlab_fake.answered(status, "/statuses/") >= 2, timeout=SENT_SECONDS,
               what="the sender trying during the outage")
    # the build, waiting for its retry (awaited: while the sender has claimed it for a try,
    # it is off the due set, and on a loaded machine a sample can fall in that window)
    wait_until(lambda: backlog(app) == 1, timeout=OUTAGE_SECONDS / 2,
               what="the build in the backlog, waiting for its retry")
    scheduled(app, kube, key)
    run = runs(app, kube, jenkins_fake, key, started_first=True)
    finishes(app, jenkins_fake, key, run)
    assert record(app, key)["status"] == "released"
    arrives(gitlab_fake, 0, "success")
    assert time.monotonic() >= until
    tries = gitlab_fake.answered(status, "/statuses/")
    # paced: at most one try per Retry-After (429), or per back-off step (500)
    assert 2 <= tries <= OUTAGE_SECONDS / (1.0 if status == 429 else 0.2) + 1
    taken = [(s, a) for s, _, a in posted(gitlab_fake, 0) if a == 201]
    assert taken[-1] == ("success", 201)
    assert len(taken) <= 3  # collapsed: what waited out the outage went as its newest state
    assert exported(app, "retried") == tries and exported(app, "sent") == len(taken)
    assert record(app, key)["status_sent"] == "success" and backlog(app) == 0
    assert "status_attempts" not in record(app, key)
    assert len(posted(gitlab_fake, 0)) == len(taken)  # the outage's answers came before
    status_posts = sum(1 for r in gitlab_fake.requests if "/statuses/" in r.path)
    assert status_posts == tries + len(taken)


def oom_killed_while_running(app, kube, jenkins_fake, gitlab_fake):
    """Push 0's build runs (GitLab shows it running), then the kubelet OOM-kills its build
    container and the worker's watch records the kill. Returns the build's key, its Jenkins
    run, its agent and the memory limit the container had."""
    key = push(app.test_client(), 0)
    work(app)
    scheduled(app, kube, key)
    run = runs(app, kube, jenkins_fake, key, started_first=True)
    arrives(gitlab_fake, 0, "running")
    agent = record(app, key)["agent"]
    limit = kube.pod(NAMESPACE, agent)["spec"]["containers"][0]["resources"]["limits"]["memory"]

    jenkins_fake.disconnect_agent(agent)  # the JVM died with the container
    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    rt = runtime.current()
    wait_until(lambda: rt.state.redis.hget(f"{rt.settings.key_prefix}usage:run:{agent}",
                                           "oom_limit") is not None,
               timeout=SENT_SECONDS, what="the OOM kill seen by the worker's watch")
    return key, run, agent, limit


def test_an_oom_killed_build_released_before_jenkins_reports_posts_failed_out_of_memory(
        world, kube, jenkins_fake, gitlab_fake):
    """The kubelet OOM-kills the build's container while it runs; the reconcile pass releases
    its pod that ended before Jenkins reports a result (a Pipeline waits minutes for a gone
    agent). GitLab read "canceled: ended without a result from Jenkins"; now it reads failed,
    out of memory, at the limit the container had, and the record's result says so. Jenkins'
    later ABORTED changes neither."""
    app, _ = world
    key, run, agent, limit = oom_killed_while_running(app, kube, jenkins_fake, gitlab_fake)
    reconcile.reconcile_once(runtime.current())  # released as an ended pod: no Jenkins result
    work(app)

    ended = record(app, key)
    assert (ended["status"], ended["result"]) == ("released", "OOMKilled"), ended
    arrives(gitlab_fake, 0, "failed")
    state, text, answer = posted(gitlab_fake, 0)[-1]
    assert (state, answer) == ("failed", 201)
    assert text == f"build ran out of memory: OOM-killed at its {limit} limit"
    assert not any(s == "canceled" for s, _, _ in posted(gitlab_fake, 0))

    aborted = jenkins_fake.finish_build(run.queue_id, "ABORTED")
    notify(app, agent, aborted, "COMPLETED")
    work(app)
    assert commit_status.wanted(record(app, key)).state == "failed"
    assert [s for s, _, a in posted(gitlab_fake, 0) if a == 201][-1] == "failed"
