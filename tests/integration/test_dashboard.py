"""The Grafana dashboard: importable shape (Grafana 10+), a stable uid, datasource and
namespace variables, units on every panel, the panels the issue asks for, and every query
parsed by a real Prometheus (Debian's) after Grafana's variable substitution."""

import pytest

from tests.support.dashboards import (
    as_grafana_sends, dashboard, dashboard_queries, panels, variable_queries)
from tests.support.monitoring import Prometheus, running

UID = "ci-autoscaler"  # links and provisioning depend on it: never change it
PANELS = {
    "CPU per node: free, requested, used", "Memory per node: free, requested, used",
    "Builds waiting and nodes needed", "Nodes needed", "Provisioning latency",
    "Webhook rate by result", "Queue depth and workers",
}


def test_the_dashboard_has_a_stable_uid_and_is_for_grafana_10():
    board = dashboard()
    assert board["uid"] == UID
    assert board["id"] is None  # so an import never overwrites another dashboard by id
    assert board["schemaVersion"] >= 38  # Grafana 10.0


def test_datasource_and_namespace_are_variables():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    namespace = variables["namespace"]
    assert namespace["type"] == "query"
    assert namespace["datasource"]["uid"] == "${datasource}"
    for title, expr in dashboard_queries():
        assert 'namespace=~"$namespace"' in expr, f"{title}: not filtered by namespace"


def test_every_panel_has_a_unit_and_uses_the_datasource_variable():
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_panels_of_the_issue_are_there_with_unique_ids():
    titles = {p["title"] for p in panels()}
    assert PANELS <= titles, PANELS - titles
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    latency = next(p for p in panels() if p["title"] == "Provisioning latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p90", "p99"]


@pytest.fixture
def prometheus(tmp_path):
    server = Prometheus(tmp_path / "prometheus")
    with running(server):
        yield server


def test_every_dashboard_query_parses_in_prometheus(prometheus):
    queries = dashboard_queries()
    assert len(queries) > 20
    for title, expr in queries:
        answer = prometheus.query(as_grafana_sends(expr))
        assert answer["status"] == "success", f"{title}: {answer.get('error')}\n{expr}"
    # The namespace variable's label_values(metric, label) is Grafana's, not PromQL: its
    # metric selector must parse.
    for query in variable_queries():
        metric = query.removeprefix("label_values(").split(",")[0]
        assert prometheus.query(metric)["status"] == "success", query


def test_a_query_that_does_not_parse_is_caught(prometheus):
    answer = prometheus.query("sum by (le (rate(ci_autoscaler_webhooks_total[1m]))")
    assert answer["status"] == "error" and answer["errorType"] == "bad_data"
