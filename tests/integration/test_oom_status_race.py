"""An OOM-killed build's commit status when Jenkins' result is written before its release
records the kill (workers.core.oom_settle): on real parts, as tests/integration/
test_commit_status.py runs them (kmock over HTTP, the Jenkins fake, the sender's thread
posting to the GitLab API fake, whose state machine refuses a second final status)."""

import time

from tests.integration.test_build_stages import notify, record
from tests.integration import test_commit_status
from tests.integration.test_commit_status import (
    SENT_SECONDS, arrives, oom_killed_while_running, posted)
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.commit_statuses import sender as status_sender
from workers.adapters.retry import Backoff
from workers.core import commit_status

world = test_commit_status.world  # the fixture: the worker's runtime, the sender's thread


def run_retries(app) -> None:
    """The RQ retries scheduled so far, due now (RQ's scheduler would move them back to the
    queue after their interval), then the worker."""
    queue = app.extensions["ci_autoscaler"].state.queue
    registry = queue.scheduled_job_registry
    for job_id in registry.get_job_ids():
        job = queue.fetch_job(job_id)
        registry.remove(job)
        queue.enqueue_job(job)
    work(app)


def test_an_oom_killed_build_whose_release_is_retried_after_jenkins_aborted_posts_out_of_memory(
        world, kube, jenkins_fake, gitlab_fake):
    """Jenkins' ABORTED is recorded at the release's start; the pod's delete fails (a 500 of
    the API server), so the release waits for its RQ retry, and with it the OOM kill's record
    (workers.job_history.learn, at the release's end). The sender posted "canceled (Jenkins:
    ABORTED)" in that gap, for good: GitLab refuses the failed that followed. Now the final
    status waits for the kill, and reads failed, out of memory."""
    app, sender = world
    key, run, agent, limit = oom_killed_while_running(app, kube, jenkins_fake, gitlab_fake)
    rt = runtime.current()
    # the release's read of the pod fails through the adapter's tries (Backoff.attempts: 4);
    # a failed DELETE would not do: kmock deletes before it answers, and the next try's 404
    # is success
    kube.fail("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{agent}", status=500,
              times=Backoff().attempts)
    aborted = jenkins_fake.finish_build(run.queue_id, "ABORTED")
    assert notify(app, agent, aborted, "COMPLETED") == 202
    work(app)  # the release: the result recorded, then the pod's read fails: an RQ retry
    ended = record(app, key)
    assert ended["result"] == "ABORTED" and commit_status.OOM_FIELD not in ended, ended
    assert app.extensions["ci_autoscaler"].state.queue.scheduled_job_registry.count == 1

    # the failed release touched nothing (its ledger does, at its end): the sender's sweep
    # (every SWEEP_SECONDS in its loop) finds the build open; it posts its end, or puts it off
    status_sender.sweep(sender)
    due = sender.queue.due_key
    wait_until(lambda: commit_status.is_final(record(app, key).get("status_sent")) or (
        rt.state.redis.zscore(due, key) or 0) > time.time(), timeout=SENT_SECONDS,
        interval=0.02, what="the sender looking at the build's end")
    assert [s for s, _, _ in posted(gitlab_fake, 0)][-1] == "running", posted(gitlab_fake, 0)

    run_retries(app)  # the release again: the pod gone, the OOM kill recorded
    assert int(record(app, key)[commit_status.OOM_FIELD]) > 0
    arrives(gitlab_fake, 0, "failed")
    assert posted(gitlab_fake, 0)[-1] == (
        "failed", f"build ran out of memory: OOM-killed at its {limit} limit", 201)
    assert not any(s == "canceled" for s, _, _ in posted(gitlab_fake, 0))
