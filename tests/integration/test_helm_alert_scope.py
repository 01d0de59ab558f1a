"""The chart's PrometheusRule, as rendered per release, through Debian's promtool: each
installation is told apart by its namespace and its release (the ServiceMonitor copies the web
Service's ci-autoscaler.io/release onto every series), and CIAutoscalerDown's absent() names the
release's own namespace and release. absent() over every namespace stayed quiet, however long
one installation's targets had vanished, while another installation was scraped."""

import re

import yaml

from tests.support.dashboards import RELEASE_LABEL, RULES, rules
from tests.support.helm_chart import objects_of, one, option_sets, render_files
from tests.support.monitoring import promtool

RUNBOOK = "https://github.com/ci-autoscaler/ci-autoscaler/blob/main/docs/runbooks.md#ciautoscalerdown"


def _rendered(release: str, namespace: str, **changes) -> list[dict]:
    return objects_of(render_files(option_sets()["monitoring"] | changes,
                                   release=release, namespace=namespace))


def _down(rule_spec: dict) -> dict:
    return next(r for g in rule_spec["groups"] for r in g["rules"]
                if r["alert"] == "CIAutoscalerDown")


def _series_label(service_label: str) -> str:
    """A Service label as the Prometheus Operator writes it on series from spec.targetLabels:
    every character but [a-zA-Z0-9_] made "_" (sanitizeLabelName, pkg/prometheus/promcfg.go)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", service_label)


def _up(namespace: str, release: str, pod: str, values: str) -> dict:
    return {"series": f'up{{job="ci-autoscaler",namespace="{namespace}",'
                      f'ci_autoscaler_io_release="{release}",pod="{pod}"}}',
            "values": values}


def _fires_at_5m(namespace: str, release: str) -> list[dict]:
    return [
        {"eval_time": "4m", "alertname": "CIAutoscalerDown", "exp_alerts": []},
        {"eval_time": "5m", "alertname": "CIAutoscalerDown", "exp_alerts": [{
            "exp_labels": {"severity": "critical", "namespace": namespace,
                           "ci_autoscaler_io_release": release},
            "exp_annotations": {
                "summary": "ci-autoscaler is down or not scraped.",
                "description": (
                    f"No ci-autoscaler target in namespace {namespace} of release {release} "
                    "has been scraped successfully for 5 minutes (or none is found at all): "
                    "GitLab may get errors for its pushes, and no capacity alert can fire."),
                "runbook_url": RUNBOOK}}]},
    ]


def _promtool_test(tmp_path, rule_spec: dict, tests: list[dict]):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_spec, sort_keys=False))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests},
        sort_keys=False))
    return promtool("test", "rules", "test.yaml", cwd=tmp_path)


def test_every_series_carries_the_release_the_rules_tell_installations_apart_by():
    objs = _rendered("blue", "ci")
    monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service", "web")
    [label] = monitor["spec"]["targetLabels"]
    assert service["metadata"]["labels"][label] == "blue"
    series_label = _series_label(label)
    assert series_label == RELEASE_LABEL
    # Every aggregation of the shipped rules keeps it, and so does every query they make.
    for rule in rules():
        for by in re.findall(r"\b(?:max|sum) by \(([^)]*)\)", rule["expr"]):
            assert series_label in by.split(", "), (rule["alert"], by)
        for query in re.findall(r'printf "(max\([^"]*)"', rule["annotations"]["description"]):
            assert f"{series_label}=%q" in query, (rule["alert"], query)


def test_an_installation_whose_targets_vanish_pages_beside_one_that_is_scraped(tmp_path):
    """Release blue in namespace ci has no target at all (its web Service or ServiceMonitor
    deleted, or no web pod left), while release green is scraped in another namespace and
    release red in the same one."""
    rule = one(_rendered("blue", "ci"), "PrometheusRule")
    tests = [
        {"name": "blue vanished; green (namespace ci-b) and red (namespace ci) are scraped",
         "interval": "1m",
         "input_series": [_up("ci-b", "green", "web-a", "1x10"),
                          _up("ci", "red", "web-a", "1x10")],
         "alert_rule_test": _fires_at_5m("ci", "blue")},
        {"name": "blue is scraped: quiet",
         "interval": "1m",
         "input_series": [_up("ci", "blue", "web-a", "1x10"),
                          _up("ci-b", "green", "web-a", "1x10")],
         "alert_rule_test": [{"eval_time": "10m", "alertname": "CIAutoscalerDown",
                              "exp_alerts": []}]},
        {"name": "blue's last pod down (up 0), red in its namespace up: blue pages",
         "interval": "1m",
         "input_series": [_up("ci", "blue", "web-a", "0x10"),
                          _up("ci", "red", "web-a", "1x10")],
         "alert_rule_test": _fires_at_5m("ci", "blue")},
    ]
    result = _promtool_test(tmp_path, rule["spec"], tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_release_scopes_its_own_absent_and_ships_the_rules_otherwise_unchanged():
    shipped = yaml.safe_load(RULES.read_text())
    for release, namespace in (("blue", "ci"), ("green", "ci-b")):
        spec = one(_rendered(release, namespace), "PrometheusRule")["spec"]
        expr = _down(spec)["expr"]
        assert expr.startswith('absent(up{job=~".*ci-autoscaler.*", '
                               f'namespace="{namespace}", '
                               f'ci_autoscaler_io_release="{release}"}})'), expr
        _down(spec)["expr"] = _down(shipped)["expr"]
        assert spec == shipped


def test_without_the_charts_service_monitor_the_absent_is_left_global():
    """Series scraped some other way may carry neither label: an absent() naming them would
    fire for ever."""
    objs = _rendered("blue", "ci", serviceMonitor={"enabled": False})
    assert not [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert _down(one(objs, "PrometheusRule")["spec"]) == _down(yaml.safe_load(RULES.read_text()))
