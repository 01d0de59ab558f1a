"""The agents' PodDisruptionBudget (agents.podDisruptionBudget): a drain waits for this
installation's running builds instead of evicting them.

Its selector must pick exactly the pods the service makes for this installation: the labels
are read from the product's own manifests (workers.core.pods, workers.core.scale_up), never
restated here. Two releases sharing an agent namespace must never both select one pod: the
Eviction API refuses to evict a pod more than one budget selects (500 "This pod has more than
one PodDisruptionBudget, which the eviction subresource does not support",
pkg/registry/core/pod/storage/eviction.go), so such a pod could never be drained.

Rendered by Helm's own SDK (tests/support/helm_chart.py); no cluster, no helm binary.
"""

from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.support.helm_chart import (
    CHART, NAMESPACE, REQUIRED_VALUES, env_of, find, objects_of, one, render, render_files)
from workers.core import scale_up
from workers.core.cluster import Resources
from workers.core.installation_pods import label_value
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import WARM_CLAIMED, WARM_IDLE, WARM_LABEL, agent_pod_manifest
from workers.core.sizing import template_default

ON = {"agents": {"podDisruptionBudget": {"enabled": True}}}
# The oldest Kubernetes the chart allows (Chart.yaml kubeVersion) and a recent one, as
# test_helm_chart.py validates every option set. The budget is not in an option set of
# helm/ci-autoscaler/ci: test_helm_upgrade.py installs each with a chart of 3 December, whose
# schema refuses keys added since.
KUBE_VERSIONS = ("1.29.0", "1.33.0")


def _values(**sections: Any) -> dict[str, Any]:
    out = {**REQUIRED_VALUES, **ON}
    for key, section in sections.items():
        out[key] = {**out.get(key, {}), **section}
    return out


def _objs(values: dict[str, Any], release: str = "cia") -> list[dict[str, Any]]:
    return objects_of(render_files(values, release=release))


def _engine_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    worker = one(objs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    return {k: e.get("value") for k, e in env_of(worker).items()}


def _agent_pod(objs: list[dict[str, Any]], *, warm: str = "") -> dict[str, Any]:
    """The pod this release's worker would make for a build: the product's manifest with the
    installation and agent namespace the chart gives the worker."""
    env = _engine_env(objs)
    build = BuildRequest(build_key="k" * 20, agent_name="cia-build-0123456789ab",
                         source="gitlab", project="g/p", ref="refs/heads/main", sha="0" * 40,
                         user="u", job="build", template="maven")
    pod = agent_pod_manifest(build=build, template=PodTemplate(), namespace=env["AGENT_NAMESPACE"],
                             size=template_default(PodTemplate()),
                             jenkins_url="http://jenkins.invalid/",
                             installation=env["CI_AUTOSCALER_INSTALLATION"])
    if warm:  # as workers.warm.agents.start marks a warm agent's pod ("true"), and
        pod["metadata"]["labels"][WARM_LABEL] = warm  # workers.warm.protect a claimed one
    return pod


def _scale_up_pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    env = _engine_env(objs)
    pod = scale_up.manifest(build_key="k" * 20, template_name="maven", template=PodTemplate(),
                            requests=[Resources(1000, 2**30)],
                            installation=env["CI_AUTOSCALER_INSTALLATION"])
    pod["metadata"]["namespace"] = env["AGENT_NAMESPACE"]
    return pod


def _selects(pdb: dict[str, Any], pod: dict[str, Any]) -> bool:
    """A PodDisruptionBudget's selection, as the API server's (same namespace; a LabelSelector:
    matchLabels and matchExpressions ANDed, apimachinery's labels.Selector)."""
    if pdb["metadata"]["namespace"] != pod["metadata"]["namespace"]:
        return False
    labels = pod["metadata"].get("labels", {})
    selector = pdb["spec"]["selector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def test_off_by_default():
    assert find(render("default"), "PodDisruptionBudget", "agents") == []


@pytest.fixture(scope="module")
def objs():
    return _objs(_values())


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_budget_is_valid_for_kubernetes_and_lints_clean(objs, version):
    kubernetes_validate.validate(one(objs, "PodDisruptionBudget", "agents"), version,
                                 strict=True)
    report = helm_python.lint(CHART, _values(), strict=True, kube_version=f"v{version}")
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []


def test_the_budget_selects_the_release_s_build_pods_and_nothing_else(objs):
    pdb = one(objs, "PodDisruptionBudget", "agents")
    assert pdb["metadata"]["namespace"] == f"{NAMESPACE}-agents"
    assert _selects(pdb, _agent_pod(objs))
    # An idle warm agent would hold a drain for ever; a scale-up pod is there to be evicted.
    assert not _selects(pdb, _agent_pod(objs, warm=WARM_IDLE))
    # A claimed one runs a build (tests/integration/test_warm_claim_pdb.py: on kmock).
    assert _selects(pdb, _agent_pod(objs, warm=WARM_CLAIMED))
    assert not _selects(pdb, _scale_up_pod(objs))


def test_no_running_build_may_be_evicted_and_a_pod_not_ready_may(objs):
    """An integer minAvailable: agent pods have no controller, and for such pods the
    disruption controller counts only an integer minAvailable (pkg/controller/disruption,
    getExpectedPodCount; with maxUnavailable or a percentage it leaves them out as
    "unmanaged" and allows every eviction). At config.maxAgents no build pod may go."""
    spec = one(objs, "PodDisruptionBudget", "agents")["spec"]
    assert spec["minAvailable"] == 50 and "maxUnavailable" not in spec
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    spec = one(_objs(_values(config={"maxAgents": 120})), "PodDisruptionBudget", "agents")["spec"]
    assert spec["minAvailable"] == 120
    spec = one(_objs(_values(agents={"podDisruptionBudget": {"enabled": True, "minAvailable": 7}})),
               "PodDisruptionBudget", "agents")["spec"]
    assert spec["minAvailable"] == 7


@pytest.mark.parametrize("bad", [{"minAvailable": "100%"}, {"maxUnavailable": 0}])
def test_a_budget_kubernetes_would_not_apply_to_agents_is_refused(bad):
    with pytest.raises(helm_python.HelmValuesError):
        _objs(_values(agents={"podDisruptionBudget": {"enabled": True, **bad}}))


@pytest.mark.parametrize("installation", [
    "", "prod", "prod/ci-autoscaler",
    "team-a" * 8 + "/ci-autoscaler",  # 62: kept whole
    "x" * 53 + "/-" + "y" * 20,  # cut at the "/": trailing "." and "-" dropped, then the hash
    "a" * 100 + "/" + "b" * 99,
])
def test_the_selector_s_installation_label_is_the_one_the_service_puts_on_its_pods(installation):
    objs = _objs(_values(settings={"installation": installation}))
    identity = _engine_env(objs)["CI_AUTOSCALER_INSTALLATION"]
    assert identity == (installation or f"{NAMESPACE}/cia")
    pdb = one(objs, "PodDisruptionBudget", "agents")
    assert pdb["spec"]["selector"]["matchLabels"]["ci-autoscaler.io/installation"] == \
        label_value(identity)
    assert _selects(pdb, _agent_pod(objs))


@pytest.mark.parametrize("agents", [{}, {"namespace": "shared-agents"}])
def test_two_releases_sharing_an_agent_namespace_never_select_one_pod_twice(agents):
    """Two releases in one namespace (both "<namespace>-agents"), or two pointed at one."""
    renders = [_objs(_values(agents={**ON["agents"], **agents}), release=r)
               for r in ("cia", "cib")]
    pdbs = [one(objs, "PodDisruptionBudget", "agents") for objs in renders]
    assert pdbs[0]["metadata"]["namespace"] == pdbs[1]["metadata"]["namespace"]
    assert pdbs[0]["metadata"]["name"] != pdbs[1]["metadata"]["name"]
    for objs in renders:
        pod = _agent_pod(objs)
        assert [_selects(pdb, pod) for pdb in pdbs].count(True) == 1


def test_a_budget_with_no_count_to_keep_is_refused():
    """config.maxAgents deleted (`--set config.maxAgents=null`: the service then caps nothing,
    workers/config/config_file.py max_agents None) left minAvailable 0 by default: a budget that allows
    every eviction, while the operator turned it on so that a drain waits for builds."""
    values = _values(config={"maxAgents": None})
    with pytest.raises(helm_python.HelmRenderError, match="agents.podDisruptionBudget.minAvailable"):
        _objs(values)
    values["agents"]["podDisruptionBudget"] = {"enabled": True, "minAvailable": 500}
    assert one(_objs(values), "PodDisruptionBudget", "agents")["spec"]["minAvailable"] == 500
