"""A job's history through everyday builds and renames.

It is fed by the builds that ran through (Jenkins' SUCCESS, UNSTABLE), not by those Jenkins
ended early (FAILURE: a compile error, a failing first step; ABORTED: a user's
cancel, a timeout; NOT_BUILT), which stopped before the steps that use the memory. Folded,
five broken pushes of a new job taught it a size a tenth of what it builds at, and its first
good build was OOM-killed; after an OOM kill, five such runs counted as clean builds and
lifted the kill's floor, so the next good build died again at the size that killed it. A
failed run that peaked above what the history holds still teaches (it may have failed of
that memory). A job renamed in Jenkins keeps its history under its new name.

On real parts, as tests/integration/test_job_history.py: redis-server, kmock over HTTP
serving PodMetrics, the Jenkins fake, the worker's own sampling."""

import time

from tests.integration.test_build_stages import record
from tests.integration.test_job_history import (
    CONFIG, GIB, NAMESPACE, finish, oom_kill_seen, sampled, usage)
from tests.integration.test_placement_on_cluster import push
from tests.support.app import JENKINS_TOKEN, work
from workers import runtime
from workers.core.routing import AGENT_PARAMETER
from workers.engine import reconcile


def one_build(app, kube, jenkins_fake, n: int, memories: list[str], result: str) -> dict:
    key = push(app.test_client(), n)
    work(app)
    rec = record(app, key)
    sampled(kube, rec["agent"], memories)
    finish(app, jenkins_fake, key, result)
    return rec


def test_runs_jenkins_ended_early_teach_no_size_and_lift_no_oom_floor(
        app_on_cluster, kube, jenkins_fake):
    app = app_on_cluster(CONFIG.replace("RETRY", "false"), namespace=NAMESPACE,
                         CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                         nodes=(("node-a", "16", "6Gi"),))  # no headroom past the 4Gi default
    for n, result in enumerate(["FAILURE", "FAILURE", "ABORTED", "FAILURE", "NOT_BUILT"]):
        one_build(app, kube, jenkins_fake, n, ["180Mi", "200Mi"], result)
    assert usage().history("build", "mvn").builds == 0
    rec = one_build(app, kube, jenkins_fake, 5, ["1100Mi", "1228Mi"], "SUCCESS")
    assert int(rec["memory_bytes"]) == 4 * GIB, rec  # the template's default, not ~256Mi
    assert usage().history("build", "mvn").builds == 1  # a run through teaches

    # a failed run above what the history holds teaches (it may have failed of that memory)
    one_build(app, kube, jenkins_fake, 6, ["2000Mi"], "FAILURE")
    assert usage().history("build", "mvn").builds == 2
    for n in range(7, 10):
        one_build(app, kube, jenkins_fake, n, ["1100Mi", "1228Mi"], "UNSTABLE")
    killed = push(app.test_client(), 10)
    work(app)
    oom_kill_seen(kube, record(app, killed)["agent"])
    finish(app, jenkins_fake, killed, "FAILURE")
    floor = usage().history("build", "mvn").oom_floor_bytes
    assert floor
    for n in range(11, 16):  # a broken commit, pushed five times
        one_build(app, kube, jenkins_fake, n, ["180Mi"], "FAILURE")
    after = push(app.test_client(), 16)
    work(app)
    assert record(app, after)["size_source"] == "oom", record(app, after)


def test_a_job_renamed_in_jenkins_keeps_its_history_under_its_new_name(
        app_on_cluster, kube, jenkins_fake):
    """A person renames the job while a build waits in its queue (Jenkins refuses a rename
    only while the job builds, Job.checkRename); the reconcile pass records the new name
    (workers.engine.run_confirm.job_renamed), and the operator's route follows it. The job's
    five builds of history stayed under the old name: the renamed job started over at its
    template's default."""
    app = app_on_cluster(CONFIG.replace("RETRY", "false"), namespace=NAMESPACE,
                         CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                         nodes=(("node-a", "16", "6Gi"),))
    for n in range(5):
        one_build(app, kube, jenkins_fake, n, ["1100Mi", "1228Mi"], "SUCCESS")
    key = push(app.test_client(), 5)
    work(app)
    rec = record(app, key)
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, rec["agent"])
    jenkins_fake.rename_job("build", "build-legacy")
    jenkins_fake.start_build(build.queue_id)
    rt = runtime.current()
    reconcile.reconcile_once(rt, now=time.time() + rt.settings.lost_event_seconds + 1)
    assert record(app, key)["job"] == "build-legacy"
    sampled(kube, rec["agent"], ["1100Mi", "1228Mi"])
    jenkins_fake.finish_build(build.queue_id, "SUCCESS")
    assert app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                  json=jenkins_fake.notification(build)).status_code == 202
    work(app)
    assert usage().history("build-legacy", "mvn").builds == 6
