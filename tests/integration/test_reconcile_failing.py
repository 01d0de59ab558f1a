"""Reconcile passes that fail show as failing, since when and why, on the status page and in
/metrics (ci_autoscaler_reconcile_failing_seconds, _pass_age_seconds; alert CIReconcileFailing),
until a pass ends without error: the capacity state alone, which decisions keep fresh, and the
leader's record of its last full pass, which nothing read, said nothing of it. The leader's
pass as run_forever runs it (reconcile.leader_pass), on real redis-server, kmock over HTTP and
the Jenkins fake."""

import re
import time

import pytest

from tests.integration.test_pass_without_jenkins import CONFIG, back
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import exported
from tests.support.app import JENKINS_TOKEN, cluster_app
from workers import runtime
from workers.engine import reconcile
from workers.adapters.pass_store import PassStore


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    with cluster_app(monkeypatch, tmp_path, redis_url=redis_url, kube=kube,
                     jenkins_fake=jenkins_fake, config=CONFIG, namespace=NAMESPACE) as app:
        yield app


def page(app) -> str:
    answer = app.test_client().get("/status")
    assert answer.status_code == 200
    return re.sub(r"\s+", " ", answer.get_data(as_text=True))


def failing_line(text: str) -> str:
    found = re.search(r'<span class="alert" id="reconcile-failing">(.*?)</span>', text)
    assert found, "no failing line on the page"
    return found.group(1)


def test_a_pass_that_raises_every_time_shows_as_failing_since_its_first_failure(
        app, kube, jenkins_fake):
    """After one good pass, the agent namespace's pods can no longer be listed (403: a Role
    taken away), so every pass raises. The page says since when passes fail, how many, and the
    error (its call and status only), the metrics how long; the last good pass keeps its time."""
    rt = runtime.current()
    reconcile.leader_pass(rt, "leader-1")
    assert 'id="reconcile-last"' in page(app)
    assert exported(app, "ci_autoscaler_reconcile_failing_seconds") == 0
    good = PassStore(rt.state.redis, prefix=rt.state.prefix).read().last_ok_at
    kube.fail("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", status=403, reason="Forbidden",
              message=f'pods is forbidden: User "system:serviceaccount:ci:cia" cannot list '
                      f'resource "pods" (token {JENKINS_TOKEN})')

    reconcile.leader_pass(rt, "leader-1")
    first = PassStore(rt.state.redis, prefix=rt.state.prefix).read().failing_since
    time.sleep(1.1)
    reconcile.leader_pass(rt, "leader-1")

    line = failing_line(page(app))
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(first))
    # The last good pass was one sleep ago, or more on a loaded machine.
    shown = re.match(rf"Reconcile failing since {re.escape(since)} \(2 passes in a row; last "
                     r"pass without error: (\d+)s ago\): PermanentError: pods in ", line)
    assert shown and 1 <= int(shown.group(1)) <= time.time() - good + 1, line
    assert "403" in line and "Jenkins steps" not in line
    assert JENKINS_TOKEN not in page(app) and "cannot list" not in line  # no body, no secret
    assert exported(app, "ci_autoscaler_reconcile_failing_seconds") >= 1
    assert exported(app, "ci_autoscaler_reconcile_pass_age_seconds") >= time.time() - good - 1


def test_passes_without_jenkins_show_as_failing_until_jenkins_is_back(app, jenkins_fake):
    """A pass whose Jenkins steps could not run (Jenkins down) did the rest, capacity state
    included: still failing, said so; the first pass with Jenkins back ends it."""
    rt = runtime.current()
    assert exported(app, "ci_autoscaler_reconcile_pass_age_seconds") == float("inf")
    jenkins_fake.go_down()

    reconcile.leader_pass(rt, "leader-1")

    line = failing_line(page(app))
    assert "(1 pass in a row, the last without its Jenkins steps; last pass without error: " \
           "none yet): Unavailable: " in line
    assert exported(app, "ci_autoscaler_reconcile_failing_seconds") > 0  # failing since then
    back(jenkins_fake)
    reconcile.leader_pass(rt, "leader-1")
    text = page(app)
    assert 'id="reconcile-failing"' not in text and 'id="reconcile-last"' in text
    assert exported(app, "ci_autoscaler_reconcile_failing_seconds") == 0
    assert exported(app, "ci_autoscaler_reconcile_pass_age_seconds") < 60


def test_a_pass_whose_one_jenkins_step_failed_on_its_own_is_not_shown_without_jenkins(
        app, jenkins_fake):
    """Jenkins refuses the list of its computers for good (403: Overall/Read or Computer
    permissions taken from our user), so the step that deletes our agents without a pod
    fails each pass; the pass's other Jenkins steps all ran (workers.engine.jenkins_steps). It
    shows as failing, with the 403, and not as a pass "without its Jenkins steps": that says
    Jenkins was away or overloaded, and sends an operator after the wrong thing (runbook
    CIReconcileFailing: "whether that pass ran without its Jenkins steps")."""
    rt = runtime.current()
    jenkins_fake.fail_next(403, times=1000, path_prefix="/computer/api/json")

    reconcile.leader_pass(rt, "leader-1")

    passes = PassStore(rt.state.redis, prefix=rt.state.prefix).read()
    assert passes.failing_since is not None and "403" in passes.error
    assert not passes.partial
    assert "Jenkins steps" not in failing_line(page(app))


def test_the_time_since_any_pass_ended_is_exported_failed_ones_included(app, kube):
    """ci_autoscaler_reconcile_idle_seconds (alert CIReconcileNotRunning): +Inf before the
    first pass (no reconcile process yet), then the time since the last pass ended, a failed
    one too; only a leader that runs no pass at all lets it grow."""
    rt = runtime.current()
    assert exported(app, "ci_autoscaler_reconcile_idle_seconds") == float("inf")
    reconcile.leader_pass(rt, "leader-1")
    assert exported(app, "ci_autoscaler_reconcile_idle_seconds") < 5
    kube.fail("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", status=403, reason="Forbidden",
              message="pods is forbidden")
    time.sleep(1.1)
    reconcile.leader_pass(rt, "leader-1")  # fails

    assert exported(app, "ci_autoscaler_reconcile_idle_seconds") < 1
    assert exported(app, "ci_autoscaler_reconcile_pass_age_seconds") >= 1  # the good one's
    time.sleep(1.1)  # no pass meanwhile
    assert exported(app, "ci_autoscaler_reconcile_idle_seconds") >= 1
