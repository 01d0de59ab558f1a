"""A reconcile pass whose Kubernetes call, in a step that needs no Jenkins, meets a 429 or a
5xx as the process is asked to stop (SIGTERM) or loses its lease: the stop ends the call's
retries (workers.adapters.run_bound), and the call fails with its last error. The pass was
logged as "reconcile pass failed" with a traceback, counted in errors_total and recorded as a
failed pass on the status page, though nothing failed but the stop's doing; now it is a
stopped pass, as a stop between steps is. Real redis-server, kmock over HTTP, the Jenkins
fake."""

import logging
import threading

from tests.integration.test_reconcile_bounded import _builds_whose_completed_was_lost

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import OURS, app  # noqa: F401 (the fixture)
from tests.integration.test_start_failures import exported
from tests.support.kmock_cluster import PODS
from workers import runtime
from workers.engine import reconcile
from workers.adapters.pass_store import PassStore
from workers.core.pods import BUILD_KEY_LABEL

STRAY = "cia-left-behind"
STOPPED = "reconcile pass stopped: the process is stopping (the next pass does the rest)"


def test_a_kubernetes_429_cut_short_by_sigterm_ends_the_pass_as_stopped(app, kube, caplog):
    # an orphan pod (ours, no build known): delete_stray_pods, a step needing no Jenkins,
    # deletes it
    kube.add_pod(NAMESPACE, STRAY, node="node-a",
                 labels={**OURS, BUILD_KEY_LABEL: "no-such-build"})
    stop = threading.Event()
    kube.before_next("delete", PODS, stop.set)  # SIGTERM as the delete is under way
    kube.fail("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{STRAY}", status=429,
              reason="TooManyRequests", times=4)
    rt = runtime.current()
    caplog.set_level(logging.INFO, logger="ci_autoscaler")

    assert reconcile.leader_pass(rt, "me", stop=stop) is True

    said = [r.getMessage() for r in caplog.records]
    # fails without the fix: "reconcile pass failed", with the 429's trace
    assert STOPPED in said and "reconcile pass failed" not in said, said
    assert not any(r.exc_info for r in caplog.records if r.name == "ci_autoscaler.reconcile")
    [stopped] = [r for r in caplog.records if r.getMessage() == STOPPED]
    assert "HTTP 429" in stopped.error  # the call it cut short, said with it
    passes = PassStore(rt.state.redis, prefix=rt.state.prefix).read()
    assert passes.failing_since is None and passes.failed_passes == 0
    assert exported(app, 'ci_autoscaler_errors_total{component="reconcile",kind="retryable"}') \
        == 0


def test_a_jenkins_step_s_error_before_a_stop_is_counted_and_logged(
        app, kube, jenkins_fake, caplog):
    """A Jenkins step's first error is kept for the pass to count and log at its end; a pass
    stopped after it (SIGTERM) never got there: a 403 on a build's queue item (a permission
    our Jenkins user lacks) went unsaid and uncounted as long as stops came first."""
    _builds_whose_completed_was_lost(app, kube, jenkins_fake)
    stop = threading.Event()
    jenkins_fake.fail_next(403, path_prefix="/queue/item/")
    arrived, go_on = jenkins_fake.hold_next("/queue/item/")
    rt = runtime.current()
    caplog.set_level(logging.INFO, logger="ci_autoscaler")
    outcome: list[bool] = []
    leader = threading.Thread(target=lambda: outcome.append(
        reconcile.leader_pass(rt, "me", stop=stop)))
    leader.start()
    try:
        assert arrived.wait(30)
        stop.set()  # SIGTERM while finish_lost_builds asks about the first build
    finally:
        go_on.set()
        leader.join(60)

    assert outcome == [True]
    said = [r.getMessage() for r in caplog.records]
    assert STOPPED in said, said
    # fails without the fix: neither said nor counted
    [failed] = [r for r in caplog.records
                if r.getMessage() == "reconcile Jenkins step failed before the pass ended"]
    assert "403" in failed.error
    assert exported(app, 'ci_autoscaler_errors_total{component="reconcile",kind="permanent"}') \
        == 1
