"""End to end with Debian's Prometheus and Alertmanager: Prometheus scrapes the running
service every second, the kmock cluster runs out of capacity, CIClusterShortOfCapacity fires
and Alertmanager delivers it to a webhook receiver on loopback with the nodes-needed figure;
a node joins, the waiting builds are placed, and the resolution is delivered.

The rules are the shipped file with every `for` rewritten to 1s by the test (a copy in the
test's directory); the shipped file is not changed."""

import time

from tests.integration.test_metrics_exported import work
from tests.integration.test_placement_on_cluster import cluster, push  # noqa: F401
from tests.support.dashboards import rules_with_for
from tests.support.monitoring import (
    Alertmanager, Prometheus, WebhookReceiver, running, serve_app, wait_until)
from workers import runtime
from workers.engine import reconcile

ALERT = "CIClusterShortOfCapacity"
FIRING_WITHIN_SECONDS = 60


def _firing(prometheus: Prometheus) -> dict | None:
    return next((a for a in prometheus.alerts()
                 if a["labels"]["alertname"] == ALERT and a["state"] == "firing"), None)


def test_short_of_capacity_pages_through_alertmanager_and_resolves(cluster, kube, tmp_path):
    rules = tmp_path / "rules-for-1s.yaml"
    rules.write_text(rules_with_for("1s"))
    with WebhookReceiver() as receiver, serve_app(cluster) as base:
        alertmanager = Alertmanager(tmp_path / "alertmanager", webhook_url=receiver.url)
        prometheus = Prometheus(tmp_path / "prometheus", rule_files=[rules],
                                targets={"ci-autoscaler": base.removeprefix("http://")},
                                alertmanager=alertmanager.url)
        with running(alertmanager, prometheus):
            # 1. Prometheus scrapes the running service.
            wait_until(lambda: prometheus.query('up{job="ci-autoscaler"} == 1')["data"]["result"],
                       timeout=30, what="Prometheus scraping the service")
            assert _firing(prometheus) is None

            # 2. The cluster runs out of capacity: room for 12 one-core agents by requests (8
            # by use, then 4 admitted by cpu requests), 14 pushes.
            client = cluster.test_client()
            keys = [push(client, i) for i in range(14)]
            work(cluster)
            out_of_capacity = time.monotonic()

            # 3. Prometheus shows the alert firing within 60 s.
            alert = wait_until(lambda: _firing(prometheus), timeout=FIRING_WITHIN_SECONDS,
                               what=f"{ALERT} firing in Prometheus")
            assert alert["labels"]["severity"] == "critical"
            assert float(alert["value"]) == 1

            # 4. Alertmanager delivers it, with how many nodes of which shape.
            note = receiver.next_alert(ALERT, "firing", timeout=FIRING_WITHIN_SECONDS)
            delivered = time.monotonic() - out_of_capacity
            assert delivered < FIRING_WITHIN_SECONDS
            assert note["annotations"]["description"] == (
                "1 more node(s) of 4 cores and 16GiB memory are needed to place the 2 build(s) "
                "waiting for capacity.")
            assert note["annotations"]["runbook_url"].endswith(
                "docs/runbooks.md#ciclustershortofcapacity")
            assert note["labels"]["severity"] == "critical"

            # 5. Capacity returns: a node joins (through the API, so the watch sees it), the
            # reconcile loop places the waiting builds, and the resolution is delivered.
            capacity_back = time.monotonic()
            kube.create_node("fresh", cpu="4", memory="16Gi")
            kube.set_node_usage("fresh", cpu="0", memory="0")
            rt = runtime.current()
            wait_until(lambda: reconcile.reconcile_once(rt)["nodes_needed"] == 0, timeout=30,
                       what="the waiting builds placed on the new node")
            state = cluster.extensions["ci_autoscaler"].state
            assert [state.get_build(k).get("node") for k in keys].count("fresh") == 2
            resolved = receiver.next_alert(ALERT, "resolved", timeout=FIRING_WITHIN_SECONDS)
            assert resolved["labels"]["alertname"] == ALERT
            print(f"{ALERT}: delivered {delivered:.1f}s after the cluster ran out of capacity; "
                  f"resolution {time.monotonic() - capacity_back:.1f}s after a node joined")
