"""The shipped dashboard, rule file and runbooks, read as the tests need them."""

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
DASHBOARD = DASHBOARDS / "ci-autoscaler.json"
RULES = DASHBOARDS / "alerts.yaml"
RULE_TESTS = DASHBOARDS / "alerts_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$namespace": ".*",
                     "$release": ".*"}
_METRIC = re.compile(r"\bci_autoscaler_[a-z0-9_]+")
# The series label that names an installation's Helm release (the chart's ServiceMonitor copies
# the web Service's ci-autoscaler.io/release onto every series): a label, not a metric.
RELEASE_LABEL = "ci_autoscaler_io_release"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included (rows themselves too)."""
    out = []
    for panel in (board or dashboard())["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def variable_queries() -> list[str]:
    out = []
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def as_grafana_sends(expr: str, **chosen: str) -> str:
    """`expr` as Grafana sends it, each variable at "All" unless `chosen` (name -> value)."""
    for name, value in {**GRAFANA_VARIABLES, **{f"${k}": v for k, v in chosen.items()}}.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown dashboard variable in {expr!r}"
    return expr


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def rules_with_for(duration: str) -> str:
    """The shipped rule file with every `for` rewritten (for tests that cannot wait 5m)."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = duration
    return yaml.safe_dump(data, sort_keys=False)


def metric_names(text: str) -> set[str]:
    """The ci_autoscaler_ metric names an expression (or a template) mentions, as exported:
    a histogram's ``_bucket``/``_sum``/``_count`` series included."""
    return set(_METRIC.findall(text)) - {RELEASE_LABEL}


def names_in_dashboard_and_rules() -> dict[str, set[str]]:
    """Where each metric name is used: name -> {"dashboard: <panel>", "rule: <alert>"}."""
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"dashboard: {title}")
    for query in variable_queries():
        for name in metric_names(query):
            used.setdefault(name, set()).add("dashboard: variable")
    for rule in rules():
        text = rule["expr"] + json.dumps(rule.get("annotations", {}))
        for name in metric_names(text):
            used.setdefault(name, set()).add(f"rule: {rule['alert']}")
    return used
