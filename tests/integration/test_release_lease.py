"""A release acts only while it holds the build's lease (workers.engine.tasks release_agent).

Over the Kubernetes API mock, real Redis and the Jenkins HTTP fake, as test_agent_names."""

import logging
import threading

from tests.integration.test_agent_names import _HeldAfter, state_of
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_stuck_terminating import app  # noqa: F401 (the fixture)
from tests.integration.test_unschedulable import push
from tests.support.app import JENKINS_TOKEN, mover, work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.adapters import lease as leases
from workers.core.errors import RetryableError
from workers.engine import tasks


def test_a_release_held_up_past_its_lease_leaves_the_build_to_the_provision_started_again(
        app, kube, jenkins_fake, monkeypatch, caplog):
    """A person aborts a build whose pod was drained before its agent connected. Its release
    is held up (its worker frozen, cut off from Redis, or Jenkins slow to answer the run's
    page) while the reconcile loop frees its unrenewed lease and provisions the build again
    (workers.engine.repairs restart_stalled). The release went on beside that provision:
    it marked the build done and released and freed its room while the new pod was being
    made, and that pod was left running for a released build. It stops, and its retry
    releases the build once the lease is its own again."""
    monkeypatch.setattr(leases, "RENEW_MOST_SECONDS", 0.25)  # its renewals every 0.25 s
    key = push(app)
    work(app)
    agent, item = state_of(app, key)["agent"], int(state_of(app, key)["queue_item"])
    kube.delete_pod(NAMESPACE, agent)  # drained before its agent connected
    run = jenkins_fake.finish_build(item, "ABORTED")
    response = app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                      json=jenkins_fake.notification(run, "COMPLETED"))
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    state = app.extensions["ci_autoscaler"].state
    mover(app).drain()
    [job] = [j for j in state.queue.get_jobs() if j.func_name.endswith("release_agent")]
    lease_key = tasks.lease_key(runtime.current(), key)
    read = _HeldAfter('"GET /job/')  # urllib3's line of the release's read of the run
    http = logging.getLogger("urllib3.connectionpool")
    level, errors = http.level, []

    def release() -> None:
        try:
            job.func(*job.args, **job.kwargs)
        except RetryableError as err:
            errors.append(str(err))
    http.addHandler(read)
    http.setLevel(logging.DEBUG)
    thread = threading.Thread(target=release, daemon=True)
    try:
        with caplog.at_level(logging.WARNING, logger="ci_autoscaler.heartbeat"):
            thread.start()
            assert read.held.wait(30), "the release never read the run"
            # freed as its holder's (unrenewed), then taken by the provision started again
            state.redis.set(lease_key, leases.RENEWED + "the provision started again")
            wait_until(lambda: any(r.getMessage().startswith("lease lost while its task runs")
                                   for r in caplog.records), timeout=30,
                       what="the held-up release's heartbeat finds its lease another's")
            read.go.set()
            thread.join(30)
    finally:
        read.go.set()
        http.removeHandler(read)
        http.setLevel(level)
    assert errors and "lease lost before its end recorded" in errors[0], errors
    assert state_of(app, key)["status"] == "triggered"  # left to the lease's holder
    assert state.redis.get(lease_key) == (leases.RENEWED + "the provision started again").encode()
    state.redis.delete(lease_key)  # that provision ended
    job.func(*job.args, **job.kwargs)  # the release's retry
    assert state_of(app, key)["status"] == "released"
