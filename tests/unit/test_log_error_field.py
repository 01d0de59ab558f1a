"""The `error` a JSON log line names for an exception logged with it (workers.telemetry.logs):
the exception's type and status, never the page or headers an HTTP library put after them."""

import io
import json
import logging

import jenkins
from kubernetes.client.exceptions import ApiException

from workers.telemetry.logs import JsonFormatter

CSRF = "csrf-value-77e0a1"


def _error_logged(err: BaseException) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test_log_error_field")
    log.addHandler(handler)
    try:
        try:
            raise err
        except BaseException:
            log.exception("reconcile pass failed")
    finally:
        log.removeHandler(handler)
    return json.loads(stream.getvalue())["error"]


def test_a_kubernetes_error_is_named_by_its_status_not_its_body():
    err = ApiException(status=422, reason="Unprocessable Entity")
    err.headers = {"Set-Cookie": f"session={CSRF}"}
    err.body = json.dumps({"kind": "Status", "message": f"denied {CSRF}"})
    error = _error_logged(err)
    assert "(422) Reason: Unprocessable Entity" in error
    assert CSRF not in error


def test_a_python_jenkins_error_is_named_by_its_first_line_not_the_page():
    err = jenkins.JenkinsException(
        "Error in request. Possibly authentication failed [403]: Forbidden\n"
        f'<html><input name="csrf" value="{CSRF}">\n</html>')
    error = _error_logged(err)
    assert "Possibly authentication failed [403]: Forbidden" in error
    assert CSRF not in error and "</html>" not in error


def test_any_other_error_is_named_as_before():
    assert _error_logged(ValueError("bad value")) == "ValueError: bad value"
