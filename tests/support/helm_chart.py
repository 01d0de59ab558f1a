"""The Helm chart as Helm renders it: through Helm's own Go SDK (PyPI helm-python-sdk), with no
helm binary and no cluster. Renders are cached per option set: a chart renders in milliseconds,
but the tests read the same manifests many times.

The option sets are the chart's documented ones: the default values (plus only what the chart
requires of every install: the tokens, the Redis password and where Jenkins is) and every
helm/ci-autoscaler/ci/<name>-values.yaml (chart-testing's convention).
"""

import functools
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ci-autoscaler"
RELEASE, NAMESPACE = "cia", "ci"

# Kinds that come from CRDs: kubernetes-validate has no schema for them; tests check their
# required fields themselves.
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# What the chart refuses to render without (no secret is generated; agents' egress is denied
# but for DNS, Jenkins and what is listed; the worker cannot start without a Jenkins).
REQUIRED_VALUES: dict[str, Any] = {
    "jenkins": {"url": "https://jenkins.example.com", "user": "ci-autoscaler"},
    "secrets": {"gitlabWebhookToken": "g" * 40, "jenkinsWebhookToken": "j" * 40,
                "jenkinsApiToken": "a" * 34},
    "redis": {"password": "r" * 40},
    "networkPolicy": {"agents": {"jenkins": {"addresses": ["10.20.0.15/32"]}}},
}


def option_sets() -> dict[str, dict[str, Any]]:
    sets = {"default": REQUIRED_VALUES}
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text()) or {}
    return sets


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_files(values: dict[str, Any], *, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` would make them."""
    return _chart().render(values, name=release, namespace=namespace, is_install=True)


def render_chart(chart: helm_python.Chart, values: dict[str, Any], *,
                 upgrade: bool = False) -> list[dict[str, Any]]:
    """The objects of any chart (an old one, an edited copy) as `helm install` makes them, or
    with `upgrade` as `helm upgrade` makes its second revision."""
    return objects_of(chart.render(values, name=RELEASE, namespace=NAMESPACE,
                                   is_install=not upgrade, is_upgrade=upgrade,
                                   revision=2 if upgrade else 1))


def chart_copy(dest: Path) -> Path:
    """A copy of today's chart under dest, for a test to edit."""
    return Path(shutil.copytree(CHART, dest / CHART.name))


OLD_CHARTS = ROOT / "tests" / "fixtures" / "charts"


def chart_at(commit: str, dest: Path) -> Path:
    """The chart as of `commit`, extracted under dest from its archive kept with the tests
    (tests/fixtures/charts/ci-autoscaler-<first 7 of commit>.tar.gz, made by `git archive
    --format=tar <commit> helm/ci-autoscaler | gzip -n -9`): a checkout's history is not
    relied on (a shallow clone, a tarball, CI's checkout have none)."""
    archive = OLD_CHARTS / f"ci-autoscaler-{commit[:7]}.tar.gz"
    assert archive.is_file(), f"no archive of the chart of {commit}: {archive}"
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / CHART.relative_to(ROOT)


def objects_of(files: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        out += [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]
    return out


@functools.cache
def _files(name: str) -> dict[str, str]:
    return render_files(option_sets()[name])


def render(name: str) -> list[dict[str, Any]]:
    """The objects of one option set, parsed afresh (a test may change them)."""
    return objects_of(_files(name))


def notes(name: str) -> str:
    return _files(name)["ci-autoscaler/templates/NOTES.txt"]


def is_builtin(obj: dict[str, Any]) -> bool:
    return not obj["apiVersion"].startswith(CRD_GROUPS)


def find(objs: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (
        component is None
        or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]


def one(objs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, component)
    assert len(found) == 1, f"expected one {kind} {component or ''}, got {len(found)}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    for obj in objs:
        if obj["kind"] in WORKLOAD_KINDS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield (f"CronJob/{obj['metadata']['name']}",
                   obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}
