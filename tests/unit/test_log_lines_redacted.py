"""A JSON log line (workers.telemetry.logs) shows none of the process's secrets, whichever of
its texts holds one: the message, a field (an error's text, nested in a list or a mapping, an
object logged as its str()), the error of an exception logged with it; nor a URL's
user:password@. Numbers stay numbers."""

import io
import json
import logging

import pytest

from workers.telemetry import logs

# A Jenkins API token as Jenkins makes them: no word a pattern would know
TOKEN = "11d4e0c2b7a95f3e81c6a2d9b0f4e7c315"


class Quoting:
    def __str__(self) -> str:
        return f"an object quoting {TOKEN}"


@pytest.fixture
def line(monkeypatch):
    monkeypatch.setattr(logs, "_secrets", ())  # this test's alone, restored after
    monkeypatch.setattr(logs, "_redactor", logs.Redactor())
    logs.hide_secrets([TOKEN, ""])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("test_log_lines_redacted")
    log.addHandler(handler)

    def logged(*args, exc: BaseException | None = None, **extra) -> dict:
        try:
            if exc is None:
                log.warning(*args, extra=extra)
            else:
                try:
                    raise exc
                except BaseException:
                    log.exception(*args, extra=extra)
        finally:
            stream.seek(0)
            text = stream.read()
            stream.seek(0)
            stream.truncate()
        assert TOKEN not in text and "hunter2" not in text, text
        return json.loads(text)

    yield logged
    log.removeHandler(handler)


def test_the_processes_secrets_are_in_no_text_of_a_line(line):
    shown = line("GitLab answered: %s", f"Basic ci:{TOKEN}",
                 error=f"set the commit status: GitLab answered 400: {TOKEN}",
                 why=["waiting", {"page": f"http://ci:hunter2@jenkins.example/ {TOKEN}"}],
                 seen=Quoting(), attempts=3, waited_seconds=1.5, retried=True, agent=None)
    assert shown["msg"] == "GitLab answered: Basic ci:[redacted]"
    assert shown["error"] == "set the commit status: GitLab answered 400: [redacted]"
    assert shown["why"] == ["waiting", {"page": "http://[redacted]@jenkins.example/ [redacted]"}]
    assert shown["seen"] == "an object quoting [redacted]"
    assert (shown["attempts"], shown["waited_seconds"], shown["retried"], shown["agent"]) \
        == (3, 1.5, True, None)


def test_the_error_of_an_exception_logged_names_no_secret(line):
    shown = line("reconcile pass failed", exc=RuntimeError(f"refused {TOKEN} at "
                                                             "redis://:hunter2@redis:6379/0"))
    assert shown["error"] == "RuntimeError: refused [redacted] at redis://[redacted]@redis:6379/0"


def test_a_secret_told_stays_hidden_when_more_are_told(line):
    logs.hide_secrets(["another-secret-value"])
    shown = line("told: %s and %s", TOKEN, "another-secret-value")
    assert shown["msg"] == "told: [redacted] and [redacted]"


def test_the_credentials_as_sent_are_in_no_line(line):
    """A proxy in front of Jenkins refusing a request with a page that repeats its headers
    quotes them as sent: the Authorization python-jenkins sends (Basic, the base64 of
    JENKINS_USER:JENKINS_API_TOKEN, requests.auth._basic_auth_str), in which the token's own
    text is not; and JENKINS_API_EXTRA_HEADERS' values (the proxy's own credential), a plain
    setting no line blanked."""
    from workers.config.settings import load_settings

    load_settings(warn_unknown=False, jenkins_user="ci-bot", jenkins_api_token=TOKEN,
                  jenkins_api_extra_headers="X-Proxy-Token: hush-5d1e9f\r\n"
                                            "Proxy-Authorization: Bearer pq7Rw2Zt9kLm")
    basic = "Y2ktYm90OjExZDRlMGMyYjdhOTVmM2U4MWM2YTJkOWIwZjRlN2MzMTU="  # base64 ci-bot:TOKEN
    shown = line("Jenkins answered 403: %s", f"refused Authorization: Basic {basic} "
                 "X-Proxy-Token: hush-5d1e9f Proxy-Authorization: Bearer pq7Rw2Zt9kLm")
    assert shown["msg"] == ("Jenkins answered 403: refused Authorization: Basic [redacted] "
                            "X-Proxy-Token: [redacted] Proxy-Authorization: [redacted]")
    shown = line("the proxy wants %s", "pq7Rw2Zt9kLm")
    assert shown["msg"] == "the proxy wants [redacted]"


def test_an_extra_header_that_holds_no_credential_is_shown(line):
    """JENKINS_API_EXTRA_HEADERS' Host or Accept is no credential: blanked, its value took the
    host out of every build link the texts show."""
    from workers.config.settings import load_settings

    settings = load_settings(warn_unknown=False, jenkins_api_extra_headers=(
        "Host: jenkins.internal\nX-Proxy-Token: hush-5d1e9f"))
    assert "jenkins.internal" not in settings.secret_values
    shown = line("build %s", "https://jenkins.internal/job/build/7/ hush-5d1e9f")
    assert shown["msg"] == "build https://jenkins.internal/job/build/7/ [redacted]"
