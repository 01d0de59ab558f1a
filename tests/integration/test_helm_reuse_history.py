"""`helm upgrade --reuse-values` from ANY earlier chart renders, with today's defaults for what
the old chart did not have.

Helm renders the new templates with the old release's values alone (helm's action/upgrade.go,
reuseValues: the chart's values.yaml is replaced by the old chart's, coalesced with the
release's config), so every value added since is missing. Before the chart filled them in
(_helpers.tpl, ci-autoscaler.defaults), a release installed from a chart of before 4 December
could not be upgraded so at all: "nil pointer evaluating interface {}.enabled" on
settings.scaleUpPods, redis.sentinel, ...

The reference is the same upgrade without --reuse-values: `helm upgrade -f <the old values>`
coalesces today's values.yaml under them. Both must render the same objects: an old value is
kept either way (Helm's rule for --reuse-values), a missing one is today's default.

Rendered by Helm's own SDK (tests/support/helm_chart.py); no cluster, no helm binary.
"""

import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.support.helm_chart import (
    CHART, OLD_CHARTS, REQUIRED_VALUES, ROOT, chart_at, chart_copy, env_of, one, render_chart)

# The old charts whose values.yaml is kept with the tests (a checkout may have no history):
# tests/fixtures/charts/values-<commit>.yaml (`git show <commit>:helm/ci-autoscaler/values.yaml`)
# or, for the two whose whole chart is archived there, the archive's.
OLD = {
    "c02fc13": "the first chart (26 Nov): no agent namespace, no Sentinel, no spool",
    "5b275f3": "agents in their own namespace (2 Dec), networkPolicy.agents new",
    "7e35468": "redis.sentinel new (3 Dec), before settings.scaleUpPods",
    "fa30561": "the merge of i17-security (3 Dec): the one found failing",
    "890d05c": "settings.installation new (4 Dec), before settings.scaleUpPods",
    "c4a262a": "before the last thirty chart commits (5 Dec)",
}
ARCHIVED = {"fa30561": "fa30561a6cdf3fd7277d40c37128c33aa8aa6205",
            "c4a262a": "c4a262abdd05c976cd07a6b6e1afc255c549a387"}
FIRST_CHART = "c02fc1314d7067fa89e72b974b56df7ef0ef33cc"
INCLUDE = '{{- include "ci-autoscaler.defaults" . -}}'


def _old_values_text(commit: str, tmp: Path) -> str:
    if commit in ARCHIVED:
        return (chart_at(ARCHIVED[commit], tmp) / "values.yaml").read_text()
    return (OLD_CHARTS / f"values-{commit}.yaml").read_text()


def _deep_merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _reused(old_values: str, tmp: Path) -> helm_python.Chart:
    """Today's chart with an old values.yaml in place of its own: what `helm upgrade
    --reuse-values` renders for a release installed from that chart."""
    new = chart_copy(tmp)
    (new / "values.yaml").write_text(old_values)
    return helm_python.Chart.load(new)


@pytest.fixture(scope="module")
def today():
    return helm_python.Chart.load(CHART)


def _both(today, old_values: str, tmp: Path, config: dict[str, Any]):
    """(--reuse-values, -f old values) renders of one upgrade; `config` is what the operator
    gave the release (--set), REQUIRED_VALUES being what every install must."""
    reused = render_chart(_reused(old_values, tmp), config, upgrade=True)
    given = render_chart(today, _deep_merged(yaml.safe_load(old_values), config), upgrade=True)
    return reused, given


@pytest.mark.parametrize("commit", OLD, ids=[f"{c} {why}" for c, why in OLD.items()])
def test_reusing_an_old_release_s_values_renders_with_today_s_defaults(today, tmp_path, commit):
    old_values = _old_values_text(commit, tmp_path / "old")
    reused, given = _both(today, old_values, tmp_path / "new", REQUIRED_VALUES)
    assert reused == given


def test_the_settings_old_charts_lacked_get_their_defaults(tmp_path):
    """What went wrong by name, for the first chart and the one found failing."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for commit in ("c02fc13", "fa30561"):
        old = yaml.safe_load(_old_values_text(commit, tmp_path / commit))
        assert "scaleUpPods" not in old["settings"]  # what this test is about
        objs = render_chart(_reused(_old_values_text(commit, tmp_path / commit),
                                    tmp_path / f"new-{commit}"), REQUIRED_VALUES, upgrade=True)
        worker = one(objs, "Deployment", "worker")["spec"]["template"]["spec"]
        env = env_of(worker["containers"][0])
        assert env["CI_AUTOSCALER_SCALE_UP_PODS"]["value"] == "true"
        assert env["CI_AUTOSCALER_SCALE_UP_IMAGE"]["value"] == \
            defaults["settings"]["scaleUpPods"]["image"]
        assert env["CI_AUTOSCALER_INSTALLATION"]["value"] == "ci/cia"
        reconcile = one(objs, "Deployment", "reconcile")["spec"]["template"]["spec"]
        assert reconcile["terminationGracePeriodSeconds"] == 60
        assert one(objs, "NetworkPolicy", "agents")  # the agents' default-deny egress


def test_a_default_the_operator_deleted_stays_deleted(today, tmp_path):
    """`--set key=null` is Helm's way to drop a default (here the maven template's
    nodeSelector, kubernetes.io/os: linux); every chart has had it, so missing it is the
    operator's choice, not an old chart's gap, and it is not given back."""
    config = _deep_merged(REQUIRED_VALUES, {"config": {"templates": {"maven": {
        "nodeSelector": None}}}})
    reused, given = _both(today, _old_values_text("c02fc13", tmp_path / "old"),
                          tmp_path / "new", config)
    for objs in (reused, given):
        data = one(objs, "ConfigMap", "config")["data"]
        config_file = yaml.safe_load(next(iter(data.values())))
        maven = config_file["templates"]["maven"]
        assert "nodeSelector" not in maven and maven["image"]


def test_every_template_takes_the_defaults_before_it_reads_a_value():
    """A template reading .Values before the include fails (or renders nothing) on old values
    when it happens to render before every other template that includes it."""
    templates = sorted((CHART / "templates").glob("*.yaml")) + [CHART / "templates/NOTES.txt"]
    assert len(templates) > 30
    assert [t.name for t in templates if t.read_text().splitlines()[0] != INCLUDE] == []


def test_the_defaults_are_today_s_values_yaml_and_the_first_chart_s_keys_are_its_keys(tmp_path):
    """files/defaults.yaml links values.yaml (one file: they cannot drift); the first chart's
    key tree is what ci-autoscaler.fillDefaults leaves deleted."""
    assert (CHART / "files/defaults.yaml").read_text() == (CHART / "values.yaml").read_text()

    def keys(d):
        return {k: keys(v) if isinstance(v, dict) and v else None for k, v in d.items()}
    first = yaml.safe_load(_old_values_text("c02fc13", tmp_path))
    assert yaml.safe_load((CHART / "files/first-chart-keys.yaml").read_text()) == keys(first)


def _history() -> list[str]:
    if shutil.which("git") is None:
        return []
    out = subprocess.run(["git", "log", "--format=%H", "--", "helm/ci-autoscaler/values.yaml"],
                         cwd=ROOT, capture_output=True, text=True)
    commits = out.stdout.split() if out.returncode == 0 else []
    return commits if FIRST_CHART in commits else []  # a shallow clone: not all of history


def test_every_values_yaml_in_git_history_renders_as_with_today_s_defaults(today, tmp_path):
    """The same as the first test, over every version of values.yaml the checkout's history
    has (a few seconds); without the history (a shallow clone, a tarball), over the old
    values kept with the tests, so that it never passes without rendering one."""
    commits = _history()
    problems = []
    for i, commit in enumerate(commits or list(OLD)):
        text = subprocess.run(["git", "show", f"{commit}:helm/ci-autoscaler/values.yaml"],
                              cwd=ROOT, capture_output=True, text=True, check=True
                              ).stdout if commits else _old_values_text(commit, tmp_path)
        try:
            reused, given = _both(today, text, tmp_path / str(i), REQUIRED_VALUES)
        except Exception as e:  # noqa: BLE001 - the render's error is the finding
            problems.append(f"{commit[:7]}: {str(e)[:300]}")
            continue
        if reused != given:
            problems.append(f"{commit[:7]}: renders otherwise than with -f its values")
    assert problems == []


def _key_digest(values: dict[str, Any]) -> str:
    def keys(d):
        return {k: keys(v) if isinstance(v, dict) and v else None for k, v in d.items()}
    return hashlib.sha256(json.dumps(keys(values), sort_keys=True).encode()).hexdigest()[:16]


def test_values_keys_is_the_digest_of_today_s_key_tree():
    """valuesKeys tells a render on today's values.yaml (nothing to fill) from one on an older
    chart's (--reuse-values): it must change whenever a key is added, so it is the key tree's
    digest. A key added or renamed in values.yaml: set valuesKeys to the digest this prints."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["valuesKeys"] == _key_digest(values)


@pytest.mark.parametrize("upgrade", [False, True])
def test_a_default_deleted_on_install_or_a_plain_upgrade_stays_deleted(today, upgrade):
    """`--set key=null` drops a default (Helm's documented way) of a key any chart since the
    first one added too: on OpenShift the DNS pods carry no k8s-app: kube-dns, and an Ingress
    controller's pods may have no common label (podSelector {}: every pod of its namespace).
    Given back, the selectors AND the default label in again: agents cannot resolve a name
    (every build fails at its clone) and the webhooks are blocked."""
    config = _deep_merged(REQUIRED_VALUES, {"networkPolicy": {
        "agents": {"dns": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}},
            "podSelector": {"matchLabels": {"k8s-app": None,
                                            "dns.operator.openshift.io/daemonset-dns": "default"}}}},
        "web": {"ingressController": {"podSelector": {"matchLabels": None}},
                "prometheus": {"podSelector": None}}}})  # values.yaml's documented way
    objs = render_chart(today, config, upgrade=upgrade)
    dns = one(objs, "NetworkPolicy", "agents")["spec"]["egress"]
    assert "kube-dns" not in json.dumps(dns) and "daemonset-dns" in json.dumps(dns)
    web_ingress = one(objs, "NetworkPolicy", "web")["spec"]["ingress"]
    assert "podSelector" not in web_ingress[0]["from"][0]  # the Ingress controller
    assert "podSelector" not in web_ingress[1]["from"][0]  # Prometheus, on the admin port
