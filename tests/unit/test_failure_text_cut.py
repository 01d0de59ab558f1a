"""What a failed job's stored and logged text keeps of an HTTP client library's error
(workers.concurrency.failure_text): the status line, never the page or the headers answered."""

import sys

import pytest
from gitlab import exceptions as gl_errors
from kubernetes.client.exceptions import ApiException

from workers.concurrency.failure_text import BODY_NOT_SHOWN, failure_text
from workers.core.errors import PermanentError

COOKIE = "_oauth2_proxy=cookie-4b7e21"
CSRF = "csrf-value-0d9c3f"
TOKEN = "gitlab-api-token-a1b2c3d4"


def _failure(cause: BaseException) -> tuple:
    try:
        try:
            raise cause
        except Exception as err:
            raise PermanentError("create the pod of agent x failed: HTTP 422") from err
    except PermanentError:
        return sys.exc_info()


def _kubernetes_error() -> ApiException:
    err = ApiException(status=422, reason="Unprocessable Entity")
    err.headers = {"Audit-Id": "1", "Set-Cookie": COOKIE}
    err.body = f'{{"kind": "Status", "message": "denied: {CSRF}"}}'
    return err


def _gitlab_error() -> gl_errors.GitlabHttpError:
    # python-gitlab's error for a page that is no JSON: its whole content
    page = f'<html><form><input name="authenticity_token" value="{CSRF}">{TOKEN}</form></html>'
    return gl_errors.GitlabHttpError(response_code=502, error_message=page.encode())


@pytest.mark.parametrize("cause, kept", [
    (_kubernetes_error(), "(422)\nReason: Unprocessable Entity"),
    (_gitlab_error(), "GitlabHttpError: 502 [the page"),
])
def test_a_librarys_error_keeps_its_status_but_not_the_page_nor_headers(cause, kept):
    text = failure_text(_failure(cause), secrets=(TOKEN,))
    assert "PermanentError: create the pod of agent x failed: HTTP 422" in text
    assert COOKIE not in text and CSRF not in text and TOKEN not in text
    assert kept in text and BODY_NOT_SHOWN in text


def test_our_own_multi_line_message_is_kept_whole_but_redacted():
    message = "two problems:\nJENKINS_URL: required\nsee https://ci:hunter22@jenkins.example"
    text = failure_text((PermanentError, PermanentError(message), None))
    assert "JENKINS_URL: required" in text and "hunter22" not in text


def test_a_one_line_connection_error_keeps_its_cause_past_a_long_url():
    """requests' ConnectionError is one line: the URL asked, then the cause at its end. Cut at
    KEPT_CHARS, a Jenkins API URL with its tree= query left "Connection refused" out of the
    text and of a log line's error, and said a page was not shown where none was answered."""
    import socket

    import requests
    from workers.concurrency.failure_text import last_error

    with socket.socket() as closed:  # bound, never listening: a connection to it is refused
        closed.bind(("127.0.0.1", 0))
        url = (f"http://127.0.0.1:{closed.getsockname()[1]}/computer/api/json?tree=computer"
               "%5BdisplayName%2Coffline%2CtemporarilyOffline%2CofflineCauseReason%2C"
               "assignedLabels%5Bname%5D%2Cexecutors%5BcurrentExecutable%5Burl%5D%5D%5D")
        try:
            requests.get(url, timeout=5)
        except requests.ConnectionError:
            exc_info = sys.exc_info()
    assert len(str(exc_info[1])) > 300  # the case: past KEPT_CHARS
    error = last_error(exc_info)
    assert error.startswith("requests.exceptions.ConnectionError: HTTPConnectionPool")
    assert "Connection refused" in error and BODY_NOT_SHOWN not in error
    assert BODY_NOT_SHOWN not in failure_text(exc_info)


def test_a_first_line_cut_short_keeps_no_head_of_a_secret_it_quotes():
    """python-jenkins' first line is kept to KEPT_CHARS: one quoting a Jenkins API token where
    the cut fell ("11" and 32 hex digits: no pattern knows it) kept its head, which the
    redaction of the whole token (the worker's secrets) then missed."""
    import jenkins

    token = "11d4e0c2b7a95f3e81c6a2d9b0f4e7c315"
    first = "Error in request: " + "x" * 260 + f" Basic ci:{token} refused"
    assert first.index(token) < 300 < first.index(token) + len(token)
    cause = jenkins.JenkinsException(first + "\n<html>the page</html>")
    text = failure_text(_failure(cause), secrets=(token,))
    assert "Error in request: xxx" in text and BODY_NOT_SHOWN in text
    assert token[:4] not in text, text
