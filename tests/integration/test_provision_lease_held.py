"""A provision job (not a re-drive) for a build whose lease another task holds: a duplicate
delivery's job, or a re-drive or the reconcile pass's restart racing it. The holder decides
the build and settles it, so the job leaves it to it, as a re-drive does
(tests/integration/test_redrive_deferrals.py). Before, it raised: counted a provision error
(CIProvisioningFailing's ratio), logged a warning, and RQ retried it up to five times, each
try one more error. A lease its dead holder stopped renewing is still freed and the build
provisioned (workers.adapters.lease free_if_stale). Through the webhook, the mover, RQ's
worker with the production failure handler, a real redis-server, kmock and the Jenkins fake.
"""

import logging

import pytest

from tests.integration.test_jenkins_token_refused import run_retries
from tests.integration.test_job_refusals import CONFIG, OURS, pod_creates, run_worker
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_redrive_deferrals import provision_errors
from tests.support.app import app_on_cluster, production_env  # noqa: F401 (the fixtures)
from workers import runtime
from workers.adapters.lease import RENEWED, stale_seconds
from workers.engine import tasks


@pytest.fixture
def app(app_on_cluster):  # noqa: F811 (the default provision lease: 60 s, freed after 20)
    return app_on_cluster(CONFIG, namespace=NAMESPACE)


def test_a_provision_job_whose_build_another_task_holds_leaves_it_quietly(
        app, kube, jenkins_fake, caplog):
    jenkins_fake.add_job("build", parameters=OURS)
    key = push(app.test_client(), 0)
    rt = runtime.current()
    holder = tasks.provision_lease(rt, key, renewed=True)  # alive: just took it
    assert holder.acquire()
    errors_before = provision_errors(app)
    state = app.extensions["ci_autoscaler"].state

    with caplog.at_level(logging.INFO, logger="ci_autoscaler"):
        run_worker(app)

    assert provision_errors(app) - errors_before == 0  # 1 before the fix
    assert state.queue.scheduled_job_registry.count == 0  # no RQ retry (1 before)
    assert state.queue.failed_job_registry.count == 0
    # no warning (RQ's ERROR with its traceback under a plain worker, PoolWorker's 'job failed;
    # it will be retried' in production, before)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert pod_creates(kube) == []  # the holder's to make
    assert state.get_build(key)["status"] == "queued"  # not failed: the holder settles it
    assert rt.state.redis.get(holder.key).decode() == holder.token  # its lease untouched
    holder.release()


def test_a_provision_job_frees_the_lease_of_a_dead_holder_and_provisions(
        app, kube, jenkins_fake):
    jenkins_fake.add_job("build", parameters=OURS)
    key = push(app.test_client(), 0)
    rt = runtime.current()
    seconds = rt.settings.provision_lease_seconds
    unrenewed = stale_seconds(seconds) + 1  # its holder's last renewal that long ago
    rt.state.redis.set(tasks.lease_key(rt, key), RENEWED + "dead",
                       px=int((seconds - unrenewed) * 1000))
    errors_before = provision_errors(app)

    run_worker(app)

    build = app.extensions["ci_autoscaler"].state.get_build(key)
    assert build["status"] == "triggered", build  # 'queued' before: left to a dead task
    assert len(pod_creates(kube)) == 1
    assert provision_errors(app) - errors_before == 0


def test_a_provision_job_whose_build_a_short_step_holds_is_retried(app, kube, jenkins_fake):
    """A lease taken for a short step (a reconcile repair's look, a fail that may drop the
    failure as not the build's: workers.engine.failures), not renewed: its holder provisions
    nothing. Left to it, the build sat queued with no job until the reconcile pass found it
    stalled, a lease period later (ten while the queue holds jobs); RQ retries the job."""
    jenkins_fake.add_job("build", parameters=OURS)
    key = push(app.test_client(), 0)
    rt = runtime.current()
    step = tasks.provision_lease(rt, key)  # not renewed: lost_triggers', a fail's
    assert step.acquire()
    state = app.extensions["ci_autoscaler"].state

    run_worker(app)

    assert state.queue.scheduled_job_registry.count == 1  # 0 before: skipped as 'held'
    assert pod_creates(kube) == []
    step.release()  # its step ends, the build untouched

    run_retries(app)

    assert state.get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1
