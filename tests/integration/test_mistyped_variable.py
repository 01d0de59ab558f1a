"""A CI_AUTOSCALER_* variable that no setting reads is named in the process's log with the
setting it is closest to: CI_AUTOSCALER_TARGETUTILISATION (for _TARGET_UTILISATION) was
ignored without a word, the worker placing builds at the default target the operator meant to
change. The variables the project reads outside Settings are not named."""

import os
import subprocess
import sys
from pathlib import Path

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
