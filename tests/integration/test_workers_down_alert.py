"""CIWorkersDown on Debian's Prometheus, scraping the running web with no worker at all (KEDA's
scale to zero, or every worker crashed): what counts the waiting work (the RQ queue, the
intake) is read by the web from Redis at scrape time, so it is there while no worker is.
Quiet at rest; firing once a push waits; resolved once a worker has taken it."""

from datetime import datetime, timedelta, timezone

from tests.integration.test_placement_on_cluster import cluster, push  # noqa: F401
from tests.support.app import work
from tests.support.dashboards import rules_with_for
from tests.support.monitoring import Prometheus, running, serve_app, wait_until

ALERT = "CIWorkersDown"


def test_workers_down_pages_only_while_a_push_waits_with_no_worker(cluster, tmp_path):
    rules = tmp_path / "rules-for-1s.yaml"
    rules.write_text(rules_with_for("1s"))
    with serve_app(cluster) as base:
        prometheus = Prometheus(tmp_path / "prometheus", rule_files=[rules],
                                targets={"ci-autoscaler": base.removeprefix("http://")})
        with running(prometheus):
            at_rest = ('ci_autoscaler_workers == 0'
                       ' and on() ci_autoscaler_intake_events{state="waiting"} == 0'
                       ' and on() ci_autoscaler_queue_jobs{state="queued"} == 0')
            wait_until(lambda: prometheus.query(at_rest)["data"]["result"], timeout=30,
                       what="Prometheus scraping no worker, nothing waiting")
            # Scraped at rest, then evaluated (for: 1s) twice over: pending, then firing, if at all.
            moment = datetime.now(timezone.utc) + timedelta(seconds=3)
            wait_until(lambda: prometheus.evaluated_after(moment, ALERT), timeout=30,
                       what=f"{ALERT} evaluated 3 s after the scrape")
            assert prometheus.alert_state(ALERT) is None  # no worker, nothing waiting: at rest

            key = push(cluster.test_client(), 0)
            wait_until(lambda: prometheus.alert_state(ALERT) == "firing", timeout=30,
                       what=f"{ALERT} firing while a push waits with no worker")

            work(cluster)  # a worker comes and takes it
            assert cluster.extensions["ci_autoscaler"].state.get_build(key).get("node")
            wait_until(lambda: prometheus.alert_state(ALERT) is None, timeout=30,
                       what=f"{ALERT} resolved once nothing waits")
