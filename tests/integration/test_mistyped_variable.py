"""A CI_AUTOSCALER_* variable that no setting reads is named in the process's log with the
setting it is closest to: CI_AUTOSCALER_TARGETUTILISATION (for _TARGET_UTILISATION) was
ignored without a word, the worker placing builds at the default target the operator meant to
change. The variables the project reads outside Settings are not named."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helm_chart import containers, find, objects_of, option_sets, pod_specs, \
    render_files
from tests.support.payloads import EXAMPLE_CONFIG
from workers.config.settings import known_variables
from workers.config.unknown_variables import unknown

ROOT = Path(__file__).resolve().parents[2]


def test_a_mistyped_variable_is_named_with_the_setting_it_is_closest_to(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CI_AUTOSCALER_")}
    env |= {"CI_AUTOSCALER_CONFIG": str(EXAMPLE_CONFIG), "JENKINS_URL": "http://127.0.0.1:1",
            "JENKINS_USER": "u", "JENKINS_API_TOKEN": "secret-value-1",
            "KUBECONFIG": str(tmp_path / "none"),  # the worker stops there, after its settings
            "CI_AUTOSCALER_TARGETUTILISATION": "0.5", "CI_AUTOSCALER_LIVENESS_FILE": "",
            "CI_AUTOSCALER_FIXTURES": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--burst"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if "no setting" in line]
    assert len(lines) == 1, result.stderr[-1500:]
    assert "CI_AUTOSCALER_TARGETUTILISATION is no setting of ci-autoscaler: ignored (did you " \
           "mean CI_AUTOSCALER_TARGET_UTILISATION?)" in lines[0]
    assert "0.5" not in lines[0]


def test_every_variable_the_project_reads_is_known():
    environ = {name: "x" for name in known_variables() | {
        "CI_AUTOSCALER_LIVENESS_FILE", "CI_AUTOSCALER_METRICS_DIR_MADE",
        "CI_AUTOSCALER_CONFIG_SNAPSHOT", "CI_AUTOSCALER_FIXTURES", "PATH", "HOME",
        # a Jenkins build's parameters, where check-config runs in a build on our agent
        "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "CI_AUTOSCALER_CPU"}}
    assert unknown(known_variables(), environ) == {}
    assert unknown(known_variables(), {"CI_AUTOSCALER_LOG_FORMAT_EXTRA": "x"}) == {
        "CI_AUTOSCALER_LOG_FORMAT_EXTRA": None}  # an operator's own: named, nothing suggested


def _service_links(service: dict) -> set[str]:
    """The variables the kubelet gives every container of the namespace for this Service
    (kubernetes pkg/kubelet/envvars/envvars.go FromServices and makeLinkVariables; kubelet_pods.go
    getServiceEnvVarMap leaves out a Service with no cluster IP, a headless one)."""
    if service["spec"].get("clusterIP") == "None":
        return set()
    name = service["metadata"]["name"].upper().replace("-", "_")
    out = {f"{name}_SERVICE_HOST", f"{name}_SERVICE_PORT", f"{name}_PORT"}
    for port in service["spec"]["ports"]:
        if port.get("name"):
            out.add(f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
        link = f"{name}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
        out |= {link, f"{link}_PROTO", f"{link}_PORT", f"{link}_ADDR"}
    return out


@pytest.mark.parametrize("option_set", sorted(option_sets()))
def test_no_variable_the_charts_pods_are_given_is_named(option_set):
    """Installed as the README says (`helm install ci-autoscaler`), the chart's Services are
    ci-autoscaler, ci-autoscaler-redis...: Kubernetes gives every pod of the namespace
    CI_AUTOSCALER_PORT, CI_AUTOSCALER_SERVICE_HOST, CI_AUTOSCALER_REDIS_PORT_6379_TCP_ADDR...,
    which every process logged as an operator's mistake ("CI_AUTOSCALER_PORT is no setting of
    ci-autoscaler: ignored (did you mean CI_AUTOSCALER_CPU?)"). Nor the chart's own env."""
    objs = objects_of(render_files(option_sets()[option_set], release="ci-autoscaler"))
    given = {link for service in find(objs, "Service") for link in _service_links(service)}
    assert "CI_AUTOSCALER_PORT" in given and "CI_AUTOSCALER_SERVICE_HOST" in given
    given |= {env["name"] for _, spec in pod_specs(objs) for container in containers(spec)
              for env in container.get("env", [])}
    environ = dict.fromkeys(given, "x")
    assert unknown(known_variables(), environ) == {}
    # and a mistyped setting beside them is still named
    assert unknown(known_variables(), environ | {"CI_AUTOSCALER_TARGETUTILISATION": "0.5"}) == {
        "CI_AUTOSCALER_TARGETUTILISATION": "CI_AUTOSCALER_TARGET_UTILISATION"}


def test_only_a_setting_is_suggested():
    """A build's parameters and the web's own internal names are not named as what an operator
    meant: following "did you mean CI_AUTOSCALER_CPU?" (a parameter a Jenkins build gets) for
    CI_AUTOSCALER_CPUS, they set a variable every process ignores without a word."""
    assert unknown(known_variables(), {"CI_AUTOSCALER_CPUS": "4", "CI_AUTOSCALER_BUILDKEY": "k",
                                       "CI_AUTOSCALER_METRICS_DIR": "/tmp/m",
                                       "CI_AUTOSCALER_LIVENES_FILE": "/tmp/l"}) == {
        "CI_AUTOSCALER_CPUS": None, "CI_AUTOSCALER_BUILDKEY": None,
        "CI_AUTOSCALER_METRICS_DIR": None,
        "CI_AUTOSCALER_LIVENES_FILE": "CI_AUTOSCALER_LIVENESS_FILE"}
