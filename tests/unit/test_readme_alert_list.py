"""The README's list of the shipped alerts names every alert of dashboards/alerts.yaml, and
only those: an operator reading "Metrics, alerts and the dashboard" to learn what can page
them missed CIWebhookIntakeBacklog, CIWebhookIntakeFailed and CIAgentsLost, which the rule
file (and the chart, the same bytes) ships with runbook sections of their own."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _shipped_alerts() -> set[str]:
    rules = yaml.safe_load((ROOT / "dashboards/alerts.yaml").read_text())
    return {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}


def _readme_alert_list() -> str:
    """The README's bullet on `dashboards/alerts.yaml`, up to the next bullet."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("- `dashboards/alerts.yaml`: the Prometheus rule file")
    end = readme.index("\n- ", start + 1)
    return readme[start:end]


def test_the_readme_lists_every_shipped_alert_and_no_other():
    named = set(re.findall(r"\bCI[A-Z][A-Za-z]+\b", _readme_alert_list()))
    shipped = _shipped_alerts()
    assert not shipped - named, f"README's alert list lacks {sorted(shipped - named)}"
    assert not named - shipped, f"README's alert list names no alert: {sorted(named - shipped)}"
