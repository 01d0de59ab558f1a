"""A burst: many builds wait (the template's cap reached), and re-drives overlap: a release's
job, the next release's, the reconcile pass's, each provision's once-more. A pass that meets a
build whose lease another task holds (that task is provisioning it, and settles it: placed, or
back to waiting) leaves it to that task. Measured on real parts (a GitLab push to the webhook,
the worker's mover, RQ, a real redis-server, kmock over HTTP and the Jenkins fake), as counts of
lines, errors and Redis reads, not as time:

- such a deferral is no error: counted, every waiting build of every overlapping pass was a
  provision error, and CIProvisioningFailing (errors over errors plus agents made, > 0.5 for
  15 minutes) paged through a long burst in which nothing failed;
- it is no warning line per build per pass (a worker under a burst logged thousands).
"""

import logging

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, run_worker)
from tests.integration.test_placement_on_cluster import push
from workers import runtime
from workers.engine import redrive, tasks

WAITING = 30  # the template's cap is 2: every build after the first two waits


def provision_errors(app) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('ci_autoscaler_errors_total{component="provision"'))


def test_builds_another_task_is_provisioning_are_left_to_it_quietly_and_cheaply(
        app, kube, jenkins_fake, caplog):
    jenkins_fake.add_job("build", parameters=OURS)
    client = app.test_client()
    keys = [push(client, n) for n in range(2 + WAITING)]
    run_worker(app)
    rt = runtime.current()
    waiting = rt.capacity.waiting()
    assert len(waiting) == WAITING and set(waiting) < set(keys)
    # Another pass is at work on them (a re-drive a release queued, on another worker thread
    # or process): it holds their leases while it decides each.
    leases = [tasks.provision_lease(rt, key) for key in waiting]
    assert all(lease.acquire() for lease in leases)
    errors_before = provision_errors(app)

    with caplog.at_level(logging.INFO, logger="ci_autoscaler"):
        result = redrive.redrive(rt)

    assert result == {"placed": 0, "waiting": WAITING}
    assert rt.capacity.waiting() == waiting  # every one still waits, for the holder to settle
    # none of them is an error: 30 counted before the fix
    assert provision_errors(app) - errors_before == 0
    # no warning per build: 30 lines before the fix; one line for the pass
    warnings = [r for r in caplog.records
                if r.levelno >= logging.WARNING and r.name == "ci_autoscaler.tasks"]
    assert warnings == [], [r.getMessage() for r in warnings]
    deferred = [r for r in caplog.records if getattr(r, "deferred", None)]
    assert [r.deferred for r in deferred] == [WAITING]
    for lease in leases:
        lease.release()
