"""gunicorn's own error-log lines, loaded from the shipped config (service/gunicorn.conf.py
logger_class): a line with a traceback ("Error handling request <URI>", as gunicorn's
workers log an exception of a request: gunicorn/workers/base.py handle_error) shows no secret,
neither in its message nor in its traceback; gunicorn's format and the stack are kept."""

import sys

import pytest
from gunicorn.app.wsgiapp import WSGIApplication

from service.cli import GUNICORN_CONF
from workers.config.settings import load_settings
from workers.telemetry import logs

TOKEN = "gitlab-hook-token-7c1e2a"


@pytest.fixture(autouse=True)
def _own_secrets(monkeypatch):
    """load_settings tells the process's log lines its secrets: these are the test's alone."""
    monkeypatch.setattr(logs, "_secrets", logs._secrets)
    monkeypatch.setattr(logs, "_redactor", logs._redactor)


def _gunicorn_logger(monkeypatch, path):
    """gunicorn's logger as its master makes it from the shipped config (Arbiter.setup)."""
    monkeypatch.setattr(sys, "argv", ["gunicorn", "-c", str(GUNICORN_CONF), "service.wsgi:app"])
    app = WSGIApplication()
    app.cfg.set("errorlog", str(path))
    return app.cfg.logger_class(app.cfg)


def _request_failed():
    try:
        raise ConnectionError(f"redis://:{TOKEN}@redis:6379/0 unreachable, sent {TOKEN}")
    except ConnectionError as err:
        raise RuntimeError(f"hook {TOKEN} not stored") from err


def test_a_traceback_in_gunicorns_error_log_shows_no_secret(monkeypatch, tmp_path):
    load_settings(warn_unknown=False, gitlab_webhook_token=TOKEN)
    log = _gunicorn_logger(monkeypatch, tmp_path / "error.log")
    try:
        _request_failed()
    except RuntimeError:
        log.exception("Error handling request %s", f"/webhooks/gitlab/{TOKEN}")
    text = (tmp_path / "error.log").read_text()
    assert TOKEN not in text
    assert "[ERROR] Error handling request /webhooks/gitlab/[redacted]" in text
    assert "in _request_failed" in text  # the stack is still told
    assert "RuntimeError: hook [redacted] not stored" in text
