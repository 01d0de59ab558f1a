"""The Grafana dashboard: importable shape (Grafana 10+), a stable uid, datasource and
namespace variables, units on every panel, the panels the issue asks for, and every query
parsed by a real Prometheus (Debian's) after Grafana's variable substitution; the "where the
time goes" queries also answered by a Prometheus that scraped the service's stage histogram."""

import pytest

from tests.support.dashboards import (
    RELEASE_LABEL, as_grafana_sends, dashboard, dashboard_queries, panels, variable_queries)
from tests.support.app import make_app
from tests.support.monitoring import Prometheus, running, serve_app, wait_until
from workers.core.stages import TIMED
from workers.telemetry.metrics import BUILD_STAGE_SECONDS

UID = "ci-autoscaler"  # links and provisioning depend on it: never change it
PANELS = {
    "CPU per node: free, requested, used", "Memory per node: free, requested, used",
    "Builds waiting and nodes needed", "Nodes needed", "Provisioning latency",
    "Webhook rate by result", "Queue depth and workers", "Stage time p50", "Stage time p95",
    "Warm agents by state", "Warm agent hit rate", "GitLab catch-up failing for",
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


def test_release_is_a_variable_that_all_queries_filter_on():
    """Two releases in one namespace are two installations (the alerts keep them apart by
    RELEASE_LABEL, which the chart's ServiceMonitor adds): the panels merged them. "All"
    matches series without the label (no Prometheus Operator)."""
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    release = variables["release"]
    assert release["type"] == "query" and release["datasource"]["uid"] == "${datasource}"
    assert release["includeAll"] is True and release["allValue"] == ".*"
    assert release["definition"] == \
        f'label_values(ci_autoscaler_workers{{namespace=~"$namespace"}}, {RELEASE_LABEL})'
    for title, expr in dashboard_queries():
        assert f'{RELEASE_LABEL}=~"$release"' in expr, f"{title}: not filtered by release"


class _Exposition:
    """A scrape target serving fixed /metrics text: two installations' own values."""

    def __init__(self, text: str):
        self.text = text.encode()

    def __call__(self, environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
        return [self.text]


def test_a_release_s_panels_show_its_values_alone_and_all_works_without_the_label(tmp_path):
    """Releases a and b in one namespace (nodes needed 3 and 5): the release chosen, the
    panel shows its own; without the label (no ServiceMonitor), "All" still answers."""
    text = "# TYPE ci_autoscaler_nodes_needed gauge\nci_autoscaler_nodes_needed {}\n" \
           "# TYPE ci_autoscaler_workers gauge\nci_autoscaler_workers 1\n"
    [expr] = [e for t, e in dashboard_queries() if t == "Nodes needed"]
    with serve_app(_Exposition(text.format(3))) as a, serve_app(_Exposition(text.format(5))) as b, \
            serve_app(_Exposition(text.format(7))) as bare:
        server = Prometheus(
            tmp_path / "prometheus",
            targets={"a": a.removeprefix("http://"), "b": b.removeprefix("http://"),
                     "bare": bare.removeprefix("http://")},
            labels={"a": {"namespace": "ci", RELEASE_LABEL: "a"},
                    "b": {"namespace": "ci", RELEASE_LABEL: "b"},
                    "bare": {"namespace": "other"}})
        with running(server):
            def value(**chosen: str) -> float | None:
                result = server.query(as_grafana_sends(expr, **chosen))["data"]["result"]
                return float(result[0]["value"][1]) if result else None

            # Prometheus scrapes each target at its own offset within the interval: every
            # one awaited, or release a's first scrape may still be to come
            wait_until(lambda: all(value(**chosen) is not None for chosen in (
                {"namespace": "ci", "release": "a"}, {"namespace": "ci", "release": "b"},
                {"namespace": "other"})), timeout=30, what="a first scrape of every target")
            assert value(namespace="ci", release="a") == 3  # fails without the fix: 5
            assert value(namespace="ci", release="b") == 5
            assert value(namespace="other") == 7  # "All": the label absent


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


def test_where_the_time_goes_is_a_row_with_p50_and_p95_per_stage():
    board = dashboard()["panels"]
    row = next(i for i, p in enumerate(board) if p["title"] == "Where the time goes")
    assert board[row]["type"] == "row"
    after = [p["title"] for p in board[row + 1:row + 3]]
    assert after == ["Stage time p50", "Stage time p95"]
    for panel, quantile in zip(board[row + 1:row + 3], ("0.5", "0.95")):
        [target] = panel["targets"]
        assert target["expr"].startswith(f"histogram_quantile({quantile}, max by (le, stage) ")
        assert "ci_autoscaler_build_stage_seconds_bucket" in target["expr"]
        assert target["legendFormat"] == "{{stage}}"
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_where_the_time_goes_answers_one_series_per_stage_from_a_real_scrape(
        redis_url, tmp_path):
    """The service's /metrics, scraped every second by Prometheus; each stage observed in
    Redis (as the engine does) at its own known seconds: the p50 and p95 queries, as Grafana
    sends them, give one series per stage, each in its bucket."""
    app = make_app(redis_url)
    engine = app.extensions["ci_autoscaler"].metrics
    seconds = dict(zip((s.value for s in TIMED), (0.3, 0.7, 300, 7, 15, 40, 2000, 1.5)))
    queries = {quantile: as_grafana_sends(expr) for title, expr in dashboard_queries()
               if title in ("Stage time p50", "Stage time p95")
               for quantile in [expr.split(",")[0].removeprefix("histogram_quantile(")]}
    with serve_app(app) as base:
        server = Prometheus(tmp_path / "prometheus",
                            targets={"ci-autoscaler": base.removeprefix("http://")})
        with running(server):
            wait_until(lambda: server.query("ci_autoscaler_build_stage_seconds_count")["data"][
                "result"], timeout=30, what="a first scrape of the stage histogram at 0")
            for stage, value in seconds.items():
                for _ in range(5):
                    engine.stage_reached("maven", stage, value)

            def answered() -> dict[str, dict[str, float]] | None:
                out = {}
                for quantile, expr in queries.items():
                    result = server.query(expr)["data"]["result"]
                    values = {r["metric"]["stage"]: float(r["value"][1]) for r in result
                              if r["value"][1] != "NaN"}
                    if set(values) != set(seconds):
                        return None
                    out[quantile] = values
                return out

            answers = wait_until(answered, timeout=30, what="p50 and p95 for every stage")
    buckets = (0, *BUILD_STAGE_SECONDS.buckets, float("inf"))
    for stage, value in seconds.items():
        upper = next(b for b in buckets if b >= value)
        lower = buckets[buckets.index(upper) - 1]
        for quantile in ("0.5", "0.95"):
            assert lower <= answers[quantile][stage] <= upper, (stage, quantile, answers)


def test_the_warm_agent_panels_answer_from_a_real_scrape(redis_url, tmp_path):
    """Warm agents in the store and claims counted (as the engine does), /metrics scraped
    by Prometheus: the panels' queries, as Grafana sends them, give the agents by state and
    the share of hits."""
    import redis

    from workers.adapters.warm_store import WarmStore
    from workers.core.cluster import Resources

    app = make_app(redis_url)
    engine = app.extensions["ci_autoscaler"].metrics
    store = WarmStore(redis.Redis.from_url(redis_url),
                      prefix=app.extensions["ci_autoscaler"].state.prefix)
    for name in ("w1", "w2"):
        store.add("maven", name, size=Resources(1000, 2**30), node="n", now=1.0)
    store.mark_idle("maven", "w2")
    queries = {title: as_grafana_sends(expr) for title, expr in dashboard_queries()
               if title in ("Warm agents by state", "Warm agent hit rate")}
    with serve_app(app) as base:
        server = Prometheus(tmp_path / "prometheus",
                            targets={"ci-autoscaler": base.removeprefix("http://")})
        with running(server):
            wait_until(lambda: server.query("ci_autoscaler_warm_hits_total")["data"]["result"],
                       timeout=30, what="a first scrape of the warm hits at 0")
            for hit in (True, True, True, False):
                engine.warm_claim("maven", hit=hit)

            def answered() -> dict[str, dict[str, float]] | None:
                states = {r["metric"]["state"]: float(r["value"][1]) for r in server.query(
                    queries["Warm agents by state"])["data"]["result"]
                    if r["metric"]["template"] == "maven"}
                rate = {r["metric"]["template"]: float(r["value"][1]) for r in server.query(
                    queries["Warm agent hit rate"])["data"]["result"]}
                return (states, rate) if rate.get("maven") and states.get("idle") else None

            states, rate = wait_until(answered, timeout=30, what="the warm agent panels")
    assert states == {"starting": 1, "idle": 1, "claimed": 0}
    assert rate["maven"] == pytest.approx(0.75)
    panel = next(p for p in panels() if p["title"] == "Warm agent hit rate")
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
