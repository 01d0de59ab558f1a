"""The web, started as an operator starts it outside Kubernetes (the Procfile's web line through
a shell, as honcho and foreman run it; `ci-autoscaler web` as `make run` runs it; gunicorn with
the shipped config, as an image's old command did), refuses a PORT or WEB_CONCURRENCY it cannot
use naming the variable and why, exit 2, never a traceback: WEB_CONCURRENCY=two was a
ValueError traceback (gunicorn's config module and ours did int() on it; the Procfile's line,
gunicorn's own, still gave it), WEB_CONCURRENCY=0 started a master with no worker at all, whose
port took connections and answered none, and PORT=abc got gunicorn's "'abc' is not a valid port
number." naming no variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_procfile import _procfile_line
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
from tests.support.payloads import EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py",
            "service.wsgi:app"]
WEB = [sys.executable, "-m", "service.cli", "web"]  # `ci-autoscaler web`, what `make run` runs
PROCFILE = ["sh", "-c", _procfile_line("web")]  # as honcho and foreman run it


@pytest.mark.parametrize("command, variable, value, reason", [
    (WEB, "WEB_CONCURRENCY", "two", "WEB_CONCURRENCY: a whole number of worker processes"),
    (WEB, "WEB_CONCURRENCY", "0", "WEB_CONCURRENCY: Input should be greater than or equal to 1"),
    (WEB, "WEB_CONCURRENCY", "", "WEB_CONCURRENCY: Input should be a valid integer"),
    (WEB, "WEB_CONCURRENCY", "4.0", "WEB_CONCURRENCY: a whole number of worker processes"),
    (PROCFILE, "WEB_CONCURRENCY", "two", "WEB_CONCURRENCY: a whole number of worker processes"),
    (PROCFILE, "WEB_CONCURRENCY", "", "WEB_CONCURRENCY: Input should be a valid integer"),
    (PROCFILE, "WEB_CONCURRENCY", "0",
     "WEB_CONCURRENCY: Input should be greater than or equal to 1"),
    (PROCFILE, "PORT", "abc", "PORT: 'abc' is not a port"),
    (GUNICORN, "WEB_CONCURRENCY", "0",
     "WEB_CONCURRENCY: Input should be greater than or equal to 1"),
    (GUNICORN, "PORT", "abc", "PORT: 'abc' is not a port"),
    (WEB, "PORT", "abc", "PORT: 'abc' is not a port"),
], ids=["web-two-workers", "web-no-worker", "web-empty-workers", "web-decimal-workers",
        "procfile-two-workers",
        "procfile-empty-workers", "procfile-no-worker", "procfile-port", "gunicorn-no-worker",
        "gunicorn-port", "web-port"])
def test_the_web_refuses_a_setting_it_cannot_use_naming_it(tmp_path, command, variable, value,
                                                           reason):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROMETHEUS_") and k not in ("PORT", "CI_AUTOSCALER_BIND")}
    env |= {"CI_AUTOSCALER_CONFIG": str(EXAMPLE_CONFIG), "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
            "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN, "REDIS_URL": "redis://127.0.0.1:1/0",
            "TMPDIR": str(tmp_path), variable: value,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    # A web that started anyway serves until killed: the timeout is the failure then.
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2, result.stderr[-1500:]
    assert f"error: {reason}" in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]


@pytest.mark.parametrize("command", [WEB, PROCFILE, GUNICORN], ids=["web", "procfile", "gunicorn"])
def test_the_web_refuses_a_metrics_directory_it_cannot_make_naming_it(tmp_path, command):
    """PROMETHEUS_MULTIPROC_DIR under a file (or anywhere it cannot be made): each worker died
    on its counter file with a traceback, and gunicorn ended "Worker failed to boot" naming no
    variable."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROMETHEUS_") and k not in ("PORT", "CI_AUTOSCALER_BIND")}
    env |= {"CI_AUTOSCALER_CONFIG": str(EXAMPLE_CONFIG), "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
            "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN, "REDIS_URL": "redis://127.0.0.1:1/0",
            "TMPDIR": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(blocker / "metrics"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2, result.stderr[-1500:]
    assert f"error: PROMETHEUS_MULTIPROC_DIR: {blocker / 'metrics'}" in result.stderr, \
        result.stderr[-1500:]
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
