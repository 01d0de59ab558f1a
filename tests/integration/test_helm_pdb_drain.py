"""The web and worker PodDisruptionBudgets never block a node drain for good."""

import copy

import helm_python
import pytest

from tests.support.helm_chart import find, objects_of, option_sets, render_files


def _values(max_unavailable):
    values = copy.deepcopy(option_sets()["default"])
    values["podDisruptionBudget"] = {"enabled": True, "maxUnavailable": max_unavailable}
    return values


@pytest.mark.parametrize("max_unavailable", [0, "0%", "00%"])
def test_a_budget_that_lets_no_pod_go_is_refused_naming_the_field(max_unavailable):
    """maxUnavailable 0 (or 0%) allows no eviction of a web or worker pod: `kubectl drain`
    of any node running one retries for ever, and a node pool upgrade stalls (kubernetes.io,
    "Specifying a Disruption Budget for your Application": "If you set maxUnavailable to 0%
    or 0 ... you will be unable to successfully drain a Node running one of those Pods").
    The schema let it through and both budgets were made so."""
    with pytest.raises(helm_python.HelmRenderError,
                       match=r"podDisruptionBudget\.maxUnavailable: .*drain"):
        render_files(_values(max_unavailable))


@pytest.mark.parametrize("max_unavailable", [1, 2, "50%", "1%"])
def test_a_budget_that_lets_a_pod_go_is_made_for_web_and_worker(max_unavailable):
    objs = objects_of(render_files(_values(max_unavailable)))
    budgets = find(objs, "PodDisruptionBudget", "web") + find(objs, "PodDisruptionBudget", "worker")
    assert [b["spec"]["maxUnavailable"] for b in budgets] == [max_unavailable] * 2
