"""`helm upgrade` of an installed release never trips on an immutable field.

Helm patches each object the new chart renders under the kind and name of one it installed;
the API server refuses a change to an immutable field ("field is immutable") and the upgrade
fails, the release left failed. The classic chart bug is a label that changes with every chart
version (helm.sh/chart, app.kubernetes.io/version) or with a value, put into a selector or a
StatefulSet's volumeClaimTemplates: the first upgrade of every installation fails. The rules
are in tests/support/immutable_fields.py, each with the validation that enforces it.

Rendered by Helm's own SDK (tests/support/helm_chart.py); no cluster, no helm binary.
"""

import copy
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from tests.support.helm_chart import (
    CHART, NAMESPACE, ROOT, chart_at, chart_copy, option_sets, render_chart)
from tests.support.immutable_fields import immutable_changes, key, upgrade_breaks

SETS = tuple(option_sets())

# The installed chart: main as of the merge of 'i17-security' (2026-12-03 09:13 UTC), the
# oldest commit on main whose chart renders every one of today's option sets (the earlier
# charts' schemas refuse keys today's value files give: networkPolicy.agents, redis.sentinel,
# web.spool, redis.external.webUrl). A release installed from it is the oldest that
# `helm upgrade -f <the same values>` can move to today's chart. Fixed, not "HEAD~n": the test
# must compare with the same old chart on every run. Its archive is kept with the tests
# (tests/fixtures/charts; helm_chart.chart_at), not read from git: CI's checkout may have no
# history. (The charts from 26 November on, each
# rendered with its own ci/ value files, upgrade to today's with no refused change either:
# checked by hand when this test was written.)
OLD_COMMIT = "fa30561a6cdf3fd7277d40c37128c33aa8aa6205"

# What an operator changes between releases that no selector, volumeClaimTemplate or PVC
# depends on: image tags, resources, replica counts, the service's settings and config.
_RESOURCES = {"requests": {"cpu": "300m", "memory": "300Mi"}, "limits": {"memory": "900Mi"}}
CHANGES: dict[str, Any] = {
    "image": {"tag": "9.9.9"},
    "web": {"replicas": 3, "concurrency": 4, "resources": _RESOURCES},
    "worker": {"replicas": 5, "provisionConcurrency": 4, "resources": _RESOURCES},
    "reconcile": {"intervalSeconds": 30, "resources": _RESOURCES},
    "redis": {"image": {"tag": "7.4.7-alpine"}, "appendfsync": "everysec",
              "resources": {"requests": {"cpu": "200m", "memory": "400Mi"},
                            "limits": {"memory": "1Gi"}},
              "sentinel": {"replicas": 5, "quorum": 3}},
    "jenkinsController": {"image": {"tag": "2.540.1-jdk21"}, "javaOpts": "-Xmx3g",
                          "resources": {"requests": {"cpu": "1", "memory": "3Gi"},
                                        "limits": {"memory": "6Gi"}}},
    "settings": {"logLevel": "DEBUG", "targetUtilisation": 0.7},
    "config": {"maxAgents": 80},
}
# Keys whose value is a label selector (nodeSelector is not one: it matches nodes' labels,
# and an operator may change it).
SELECTOR_KEYS = ("selector", "podSelector", "namespaceSelector", "labelSelector")


def _deep_merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = _deep_merged(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _changed_values(name: str) -> dict[str, Any]:
    return _deep_merged(option_sets()[name], CHANGES)


def _bump(chart: Path, version: str, app_version: str) -> Path:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"], meta["appVersion"] = version, app_version
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return chart


def _selectors(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every label selector anywhere in the objects, by object and path."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str, owner: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in SELECTOR_KEYS:
                    out[f"{owner} {path}.{k}"] = v
                walk(v, f"{path}.{k}", owner)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", owner)

    for obj in objs:
        walk(obj, "", " ".join(key(obj, NAMESPACE)[1:]))
    return out


def _claims(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every StatefulSet's volumeClaimTemplates and every PVC's spec, by object."""
    out = {}
    for obj in objs:
        name = " ".join(key(obj, NAMESPACE)[1:])
        if obj["kind"] == "StatefulSet":
            out[name] = obj["spec"].get("volumeClaimTemplates")
        elif obj["kind"] == "PersistentVolumeClaim":
            out[name] = obj["spec"]
    return out


def version_problems(before: list[dict], after: list[dict]) -> list[str]:
    """What differs between two renders of one release that must not: a refused change, a
    selector, a volumeClaimTemplate, a PVC's spec."""
    problems = [f"{obj}: {change}" for obj, changes in
                upgrade_breaks(before, after, NAMESPACE).items() for change in changes]
    for what, of in (("selector", _selectors), ("claim", _claims)):
        old, new = of(before), of(after)
        problems += [f"{what} {where}: {old.get(where)!r} -> {new.get(where)!r}"
                     for where in sorted(old.keys() | new.keys())
                     if old.get(where) != new.get(where)]
    return problems


def _labels(objs: list[dict[str, Any]], label: str) -> set[str]:
    return {o["metadata"]["labels"][label] for o in objs
            if label in o["metadata"].get("labels", {})}


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def old_chart(tmp_path_factory):
    return helm_python.Chart.load(chart_at(OLD_COMMIT, tmp_path_factory.mktemp("old-chart")))


@pytest.fixture(scope="module")
def chart():
    return helm_python.Chart.load(CHART)


@pytest.fixture(scope="module")
def bumped_chart(tmp_path_factory):
    copy_ = chart_copy(tmp_path_factory.mktemp("bumped"))
    return helm_python.Chart.load(_bump(copy_, "7.8.9", "6.5.4"))


@pytest.fixture(scope="module")
def broken_chart(tmp_path_factory):
    """The classic bug, on purpose: helm.sh/chart among the selector labels (which the
    volumeClaimTemplates' labels use too), rendered at two chart versions."""
    copy_ = chart_copy(tmp_path_factory.mktemp("broken"))
    helpers = copy_ / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    anchor = "app.kubernetes.io/name: {{ include \"ci-autoscaler.name\" $ctx }}\n"
    assert anchor in text
    helpers.write_text(text.replace(
        anchor, anchor + "helm.sh/chart: {{ include \"ci-autoscaler.chart\" $ctx }}\n", 1))
    return helm_python.Chart.load(copy_), helm_python.Chart.load(_bump(copy_, "7.8.9", "6.5.4"))


# -- an installation of the old chart upgraded to today's ------------------------------------

@pytest.mark.parametrize("option_set", SETS)
def test_upgrading_from_the_old_chart_changes_no_immutable_field(old_chart, chart, option_set):
    values = option_sets()[option_set]
    installed = render_chart(old_chart, values)
    upgraded = render_chart(chart, values, upgrade=True)
    assert upgrade_breaks(installed, upgraded, NAMESPACE) == {}
    # Every StatefulSet and claim is still there by its name: one renamed is no error, but its
    # pods start on new, empty volumes (the bundled Redis's keys gone). One exception, on
    # purpose: the web's spool PVC of the charts whose web was a Deployment of one pod, now a
    # StatefulSet with a claim per pod; Helm keeps the old PVC (helm.sh/resource-policy) and the
    # README ("Upgrades") and the NOTES say to drain it first, or to keep it as existingClaim.
    stateful = {key(o, NAMESPACE) for o in installed
                if o["kind"] in ("StatefulSet", "PersistentVolumeClaim")}
    gone = stateful - {key(o, NAMESPACE) for o in upgraded}
    if option_set == "spool-pvc":
        old_claim = ("", "PersistentVolumeClaim", NAMESPACE, "cia-ci-autoscaler-web-spool")
        assert gone == {old_claim}
        assert next(o for o in installed if key(o, NAMESPACE) == old_claim)["metadata"][
            "annotations"]["helm.sh/resource-policy"] == "keep"
        notes = (ROOT / "README.md").read_text().partition("**Upgrades.**")[2]
        assert "`<release>-ci-autoscaler-web-spool`" in notes.partition("\n## ")[0]
    else:
        assert gone == set()
    assert any(k[1] == "Deployment" for k in {key(o, NAMESPACE) for o in installed})


def test_the_old_chart_comparison_catches_a_version_in_a_selector(old_chart, broken_chart):
    for option_set, statefulsets in (("default", {"redis"}), ("jenkins", {"redis", "jenkins"})):
        values = option_sets()[option_set]
        breaks = upgrade_breaks(render_chart(old_chart, values),
                                render_chart(broken_chart[1], values, upgrade=True), NAMESPACE)
        names = {k.split()[1].rpartition("-")[2]: v for k, v in breaks.items()}
        assert {k for k in breaks if k.startswith("Deployment")} == {
            f"Deployment {NAMESPACE}/cia-ci-autoscaler-{c}" for c in ("web", "worker",
                                                                   "reconcile")}
        for sts in statefulsets:
            assert any(c.startswith("spec.selector") for c in names[sts])
            assert any(c.startswith("spec.volumeClaimTemplates") for c in names[sts])


# -- the same release at another chart version and other values ------------------------------

@pytest.mark.parametrize("option_set", SETS)
def test_a_new_version_and_other_values_keep_selectors_and_claims(chart, bumped_chart,
                                                                    option_set):
    before = render_chart(chart, option_sets()[option_set])
    after = render_chart(bumped_chart, _changed_values(option_set), upgrade=True)
    # The premise: the version labels and the image did change.
    for label in ("helm.sh/chart", "app.kubernetes.io/version"):
        assert _labels(before, label).isdisjoint(_labels(after, label)), label
    assert "9.9.9" not in yaml.safe_dump(before) and "9.9.9" in yaml.safe_dump(after)
    assert _selectors(before) and version_problems(before, after) == []


def test_the_version_comparison_catches_a_version_in_a_selector(broken_chart):
    before = render_chart(broken_chart[0], option_sets()["jenkins"])
    after = render_chart(broken_chart[1], _changed_values("jenkins"), upgrade=True)
    problems = version_problems(before, after)
    for kind_name in ("Deployment ci/cia-ci-autoscaler-web",
                      "StatefulSet ci/cia-ci-autoscaler-redis",
                      "StatefulSet ci/cia-ci-autoscaler-jenkins"):
        assert any(p.startswith(f"{kind_name}: spec.selector") for p in problems), kind_name
    assert any(p.startswith("selector Service") for p in problems)
    assert any(p.startswith("claim StatefulSet ci cia-ci-autoscaler-jenkins") for p in problems)


# -- the rules themselves --------------------------------------------------------------------

def _obj(kind: str, api: str = "v1", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "x"}, **fields}


def _sts(**spec: Any) -> dict[str, Any]:
    base = {"serviceName": "x", "selector": {"matchLabels": {"a": "1"}}, "replicas": 1,
            "template": {"metadata": {"labels": {"a": "1"}}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Gi"}}}}]}
    return _obj("StatefulSet", "apps/v1", spec=base | spec)


def _pvc(storage: str, **spec: Any) -> dict[str, Any]:
    return _obj("PersistentVolumeClaim", spec={
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}, **spec})


def test_a_statefulset_may_change_only_its_replicas_template_and_update_fields():
    old = _sts()
    assert immutable_changes(old, _sts(replicas=3, template={"metadata": {"labels": {
        "a": "1", "v": "2"}}}, updateStrategy={"type": "OnDelete"}, minReadySeconds=5)) == []
    # A default written out is no change; a quantity in other units is the same quantity.
    assert immutable_changes(old, _sts(podManagementPolicy="OrderedReady")) == []
    same_size = _sts()
    same_size["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] = {
        "storage": "8192Mi"}
    assert immutable_changes(old, same_size) == []
    assert immutable_changes(old, _sts(serviceName="y"))
    assert immutable_changes(old, _sts(podManagementPolicy="Parallel"))
    assert immutable_changes(old, _sts(selector={"matchLabels": {"a": "1", "v": "2"}}))
    grown = _sts()
    grown["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"] = {"v": "2"}
    assert immutable_changes(old, grown)


def test_a_claim_may_only_grow():
    assert immutable_changes(_pvc("8Gi"), _pvc("10Gi")) == []
    assert immutable_changes(_pvc("8Gi"), _pvc("4Gi"))
    assert immutable_changes(_pvc("8Gi"), _pvc("8Gi", storageClassName="fast"))
    assert immutable_changes(_pvc("8Gi"), _pvc("8Gi", volumeMode="Filesystem")) == []


def test_deployments_services_bindings_and_immutable_secrets():
    dep = _obj("Deployment", "apps/v1", spec={"selector": {"matchLabels": {"a": "1"}},
                                               "replicas": 1})
    assert immutable_changes(dep, dep | {"spec": dep["spec"] | {"replicas": 4}}) == []
    assert immutable_changes(dep, dep | {"spec": dep["spec"] | {"selector": {}}})
    svc = _obj("Service", spec={"ports": [{"port": 80}]})
    assert immutable_changes(svc, _obj("Service", spec={"ports": [{"port": 81}]})) == []
    assert immutable_changes(svc, _obj("Service", spec={"clusterIP": "None"}))
    binding = _obj("RoleBinding", "rbac.authorization.k8s.io/v1", roleRef={"name": "a"})
    assert immutable_changes(binding, binding | {"roleRef": {"name": "b"}})
    secret = _obj("Secret", data={"k": "YQ=="})
    assert immutable_changes(secret, secret | {"data": {"k": "Yg=="}}) == []
    frozen = secret | {"immutable": True}
    assert immutable_changes(frozen, frozen | {"data": {"k": "Yg=="}})
    assert immutable_changes(frozen, secret)


# -- the values an upgrade cannot change (README, "Upgrades") ----------------------------------

# (option set, changed values, the object the API server then refuses to patch, or None)
VALUE_CHANGES = [
    ("minimal", {"redis": {"sentinel": {"enabled": True}}},
     "StatefulSet ci/cia-ci-autoscaler-redis"),
    ("redis-sentinel", {"redis": {"sentinel": {"enabled": False}}},
     "StatefulSet ci/cia-ci-autoscaler-redis"),
    ("minimal", {"redis": {"persistence": {"size": "16Gi"}}},
     "StatefulSet ci/cia-ci-autoscaler-redis"),
    ("minimal", {"redis": {"persistence": {"storageClass": "fast"}}},
     "StatefulSet ci/cia-ci-autoscaler-redis"),
    ("jenkins", {"jenkinsController": {"persistence": {"size": "40Gi"}}},
     "StatefulSet ci/cia-ci-autoscaler-jenkins"),
    ("jenkins", {"jenkinsController": {"persistence": {"storageClass": "fast"}}},
     "StatefulSet ci/cia-ci-autoscaler-jenkins"),
    ("spool-pvc", {"web": {"spool": {"persistence": {"size": "4Gi"}}}},
     "StatefulSet ci/cia-ci-autoscaler-web"),
    ("spool-pvc", {"web": {"spool": {"persistence": {"storageClass": "fast"}}}},
     "StatefulSet ci/cia-ci-autoscaler-web"),
    ("spool-pvc", {"web": {"replicas": 3}}, None),
]


def _value_path(changes: dict[str, Any]) -> str:
    k, v = next(iter(changes.items()))
    return f"{k}.{_value_path(v)}" if isinstance(v, dict) else k


def _value(changes: Any) -> Any:
    return _value(next(iter(changes.values()))) if isinstance(changes, dict) else changes


@pytest.mark.parametrize("option_set,changes,refused", VALUE_CHANGES,
                         ids=[f"{s}:{_value_path(c)}={_value(c)}" for s, c, _ in VALUE_CHANGES])
def test_the_values_an_upgrade_cannot_change_are_the_readmes(chart, option_set, changes,
                                                             refused):
    before = render_chart(chart, option_sets()[option_set])
    after = render_chart(chart, _deep_merged(option_sets()[option_set], changes), upgrade=True)
    assert list(upgrade_breaks(before, after, NAMESPACE)) == ([refused] if refused else [])
    notes = (ROOT / "README.md").read_text().partition("**Upgrades.**")[2].partition("\n## ")[0]
    if refused:
        assert f"`{_value_path(changes)}`" in notes
