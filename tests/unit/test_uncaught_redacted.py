"""An uncaught exception, in the main thread or another, is logged as a redacted JSON line
(workers.telemetry.uncaught, installed by logs.configure as every process starts): Python's own
hooks printed its traceback as it was, a message quoting a token or a URL's password and all.
Run in a process of its own: the hooks are the interpreter's, and so is the exit code."""

import json
import os
import subprocess
import sys

TOKEN = "jenkins-api-token-5f3a9c"

# A process as ours start: the logs configured, the settings loaded (which tell the logs their
# secrets); then an error quoting the token, of a thread, and one of the main thread.
SCRIPT = f"""
import threading
from workers.config.settings import load_settings
from workers.telemetry import logs

logs.configure()
settings = load_settings(warn_unknown=False)

def side():
    raise RuntimeError("Jenkins refused https://bot:{TOKEN}@ci.example/ with " + {TOKEN!r})

thread = threading.Thread(target=side, name="side")
thread.start()
thread.join()
raise ValueError("GET https://ci.example/job/x?token=abc failed: " + {TOKEN!r})
"""


def test_uncaught_exceptions_are_logged_redacted_and_the_exit_code_kept():
    env = {**os.environ, "JENKINS_USER": "bot", "JENKINS_API_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1  # the interpreter's, as before
    assert TOKEN not in done.stderr + done.stdout
    assert "token=abc" not in done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    by_thread = {line["thread_name"]: line for line in lines if line["msg"] == "uncaught exception"}
    assert set(by_thread) == {"side", "MainThread"}
    assert by_thread["side"]["error"].startswith("RuntimeError: Jenkins refused")
    assert by_thread["MainThread"]["error"].startswith("ValueError: GET")
    assert "[redacted]" in by_thread["MainThread"]["error"]
    assert 'in side' in by_thread["side"]["traceback"]  # where it was raised, still told


# Ctrl-C during a retry's wait, inside the `except` of a failure that quoted the token: Python
# prints the KeyboardInterrupt with its whole chain ("During handling of the above exception,
# another exception occurred"), the first exception's message and all.
CTRL_C_SCRIPT = f"""
from workers.config.settings import load_settings
from workers.telemetry import logs

logs.configure()
settings = load_settings(warn_unknown=False)
try:
    raise ConnectionError("Jenkins refused https://bot:{TOKEN}@ci.example/ with " + {TOKEN!r})
except ConnectionError:
    raise KeyboardInterrupt
"""


def test_ctrl_c_during_a_failures_handling_shows_no_secret_and_ends_as_python_does():
    env = {**os.environ, "JENKINS_USER": "bot", "JENKINS_API_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == -2  # killed by SIGINT, as Python ends on an uncaught Ctrl-C
    assert TOKEN not in done.stderr + done.stdout
    assert "Jenkins refused https://[redacted]@ci.example/" in done.stderr  # the chain still told
    assert done.stderr.rstrip().endswith("KeyboardInterrupt")
