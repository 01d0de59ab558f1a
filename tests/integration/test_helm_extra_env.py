"""values.yaml's extraEnv: the settings the chart has no value of (CI_AUTOSCALER_FATAL_WAITING_REASONS,
say) reach the web, worker and reconcile containers, after the chart's own, so that a name given
twice takes the operator's value (Kubernetes: the last of a duplicated env name wins). Before,
an operator on the chart could not set them at all."""

import copy

import helm_python
import pytest

from tests.support.helm_chart import REQUIRED_VALUES, objects_of, render_files

EXTRA = [{"name": "CI_AUTOSCALER_FATAL_WAITING_REASONS", "value": "ErrImagePull,InvalidImageName"},
         {"name": "CI_AUTOSCALER_LOG_FORMAT_EXTRA", "valueFrom": {
             "secretKeyRef": {"name": "ops-settings", "key": "extra"}}},
         {"name": "WEB_CONCURRENCY", "value": "4"}]  # one of the web's own, overridden


def _containers(values: dict) -> dict[str, dict]:
    return {obj["metadata"]["name"].rsplit("-", 1)[-1]: obj["spec"]["template"]["spec"]
            ["containers"][0] for obj in objects_of(render_files(values))
            if obj["kind"] == "Deployment"}


def test_extra_env_comes_last_in_each_process_of_the_chart():
    containers = _containers(REQUIRED_VALUES | {"extraEnv": EXTRA})
    assert set(containers) == {"web", "worker", "reconcile"}, set(containers)
    for name, container in containers.items():
        assert container["env"][-len(EXTRA):] == EXTRA, (name, container["env"][-5:])
    # what the web then runs with: the last WEB_CONCURRENCY
    web = {e["name"]: e.get("value") for e in containers["web"]["env"]}
    assert web["WEB_CONCURRENCY"] == "4"


def test_without_extra_env_the_containers_are_as_before():
    plain, empty = _containers(REQUIRED_VALUES), _containers(REQUIRED_VALUES | {"extraEnv": []})
    assert plain == empty
    assert not any(e["name"] == "CI_AUTOSCALER_FATAL_WAITING_REASONS"
                   for c in plain.values() for e in c["env"])


@pytest.mark.parametrize("entry,why", [
    ({"value": "x"}, "missing property 'name'"),
    ({"name": "HAS SPACE", "value": "x"}, "does not match"),
    ({"name": "X", "value": 3}, "got number, want string"),
    ({"name": "X", "valeu": "typo"}, "additional properties 'valeu' not allowed"),
])
def test_a_bad_extra_env_entry_is_refused_naming_it(entry, why):
    values = copy.deepcopy(REQUIRED_VALUES) | {"extraEnv": [entry]}
    with pytest.raises(helm_python.HelmError, match=f"extraEnv/0.*{why}"):
        render_files(values)
