"""An OOM-killed build started again bigger (retryOnOOM) shows on its commit: on real parts,
as tests/integration/test_commit_status.py runs them (the webhook, the worker on kmock over
HTTP, the Jenkins fake, the sender's thread posting to the GitLab API fake, which keeps
GitLab's state machine: a finished status of a name is not found again, so the next post of
that name starts a new one in the pipeline, lib/api/commit_statuses.rb)."""

import pytest

from tests.integration.test_build_stages import notify, record
from tests.integration.test_commit_status import (
    API_TOKEN, PROJECT, SENT_SECONDS, oom_killed_while_running, posted, sha)
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env, work
from tests.support.gitlab_fake import captured_project_id
from tests.support.monitoring import wait_until
from service.app import create_app
from workers import runtime
from workers.commit_statuses import sender as status_sender

# Pod at the default: 512Mi + the agent's 256Mi; the retry's pod asks twice that (capped at
# max 1Gi + 256Mi), which node-a (2Gi) holds once the killed pod is gone.
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    retryOnOOM: true
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 256Mi, default: 512Mi, max: 1Gi}
"""


@pytest.fixture
def world(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, gitlab_fake):
    """test_commit_status's world, with a template that retries OOM kills."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    gitlab_fake.tokens[API_TOKEN] = {"api"}
    gitlab_fake.add_project(PROJECT, branches={"branch-0": sha(0)},
                            project_id=captured_project_id())
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, GITLAB_URL=gitlab_fake.url,
                   GITLAB_API_TOKEN=API_TOKEN)
    kube.add_node("node-a", cpu="1", memory="2Gi")  # room for one agent at a time
    runtime.install(None)
    app = create_app()
    rt = runtime.current()  # the worker's runtime, watching pods
    sender = status_sender.from_settings(rt.settings, rt.state, rt.capacity)
    thread, stop = status_sender.start(sender, poll=0.05)
    wait_until(lambda: rt.state.redis.exists(sender.queue.on_key), timeout=SENT_SECONDS,
               what="the sender switched on")
    yield app, sender
    stop.set()
    thread.join(timeout=15)
    runtime.install(None)


def test_the_retry_of_an_oom_killed_build_shows_on_its_commit(
        world, kube, jenkins_fake, gitlab_fake):
    """The killed build's status reads failed, out of memory, started again; the retry's
    own states follow under the same name on the same commit and ref (a new status GitLab
    starts after the failed one), so the developer sees the retry run and end. Before, the
    retry's record had no commit: nothing was posted for it, and the commit kept the red
    status of a build whose retry may well have passed."""
    app, _ = world
    key, run, agent, limit = oom_killed_while_running(app, kube, jenkins_fake, gitlab_fake)
    failed = jenkins_fake.finish_build(run.queue_id, "FAILURE")
    assert notify(app, agent, failed, "COMPLETED") == 202
    work(app)  # the release folds the kill and queues the retry's provision
    retry = record(app, key).get("replaced_by")
    assert retry, record(app, key)
    wait_until(lambda: any(s == "failed" for s, _, _ in posted(gitlab_fake, 0)),
               timeout=SENT_SECONDS, what="the killed build's failed status")
    texts = [t for s, t, _ in posted(gitlab_fake, 0) if s == "failed"]
    assert texts[-1].endswith("started again with more memory"), texts
    work(app)  # the retry's provision: its pod
    assert record(app, retry).get("agent") and record(app, retry)["status"] in (
        "pod_created", "triggered"), record(app, retry)
    after_failed = lambda: posted(gitlab_fake, 0)[  # noqa: E731
        [s for s, _, _ in posted(gitlab_fake, 0)].index("failed") + 1:]
    wait_until(lambda: any(s == "pending" and a == 201 for s, _, a in after_failed()),
               timeout=SENT_SECONDS, what=lambda: f"the retry's pending status: "
               f"{posted(gitlab_fake, 0)}")
    state, text, _ = next(p for p in after_failed() if p[0] == "pending")
    assert "OOM" in text and "more memory" in text, text
    names = {p["name"] for p in gitlab_fake.projects[PROJECT].status_posts
             if p["sha"] == sha(0)}
    assert names == {"ci-autoscaler/build"}, names
