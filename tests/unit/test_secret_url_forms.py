"""A secret as a URL carries it, percent-encoded (RFC 3986: what a path or a query may not hold
as it is), is blanked as the secret itself is (workers.config.settings: secret_values). A token
put in a hook's path (`/webhooks/gitlab/<token>`) reaches gunicorn's access log, which an
operator may turn on, and its "Error handling request" line, as the URI sent (RAW_URI): a
token of non-ASCII characters or white space (what an operator typed into GitLab) showed
there encoded, where neither its own text nor its latin-1 form (PATH_INFO's) is found."""

import pytest

from service.refused_requests import hidden_atoms
from workers.config.settings import load_settings
from workers.telemetry import logs


@pytest.fixture(autouse=True)
def _own_secrets(monkeypatch):
    """load_settings tells the process's log lines its secrets (logs.hide_secrets): these
    tests' are theirs alone, restored after."""
    monkeypatch.setattr(logs, "_secrets", logs._secrets)
    monkeypatch.setattr(logs, "_redactor", logs._redactor)

TOKEN = "Schl\u00fcssel f\u00fcr Stra\u00dfe+1"
SENT = "Schl%C3%BCssel%20f%C3%BCr%20Stra%C3%9Fe+1"  # as GitLab's Ruby URI sends the path


def test_a_token_in_a_hook_urls_path_is_not_in_the_access_log_encoded():
    secrets = load_settings(warn_unknown=False, gitlab_webhook_token=TOKEN).secret_values
    raw = f"/webhooks/gitlab/{SENT}"
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": raw, "SERVER_PROTOCOL": "HTTP/1.1",
               "PATH_INFO": f"/webhooks/gitlab/{TOKEN}".encode().decode("latin-1")}
    atoms = hidden_atoms({"r": f"POST {raw} HTTP/1.1", "{raw_uri}e": raw,
                          "U": environ["PATH_INFO"]}, environ, secrets)
    assert atoms["r"] == "POST /webhooks/gitlab/[redacted] HTTP/1.1"
    assert atoms["{raw_uri}e"] == atoms["U"] == "/webhooks/gitlab/[redacted]"


def test_a_token_in_a_query_is_blanked_however_it_is_encoded():
    secrets = load_settings(warn_unknown=False, jenkins_webhook_token="a/b c=d&e").secret_values
    from workers.core.redaction import redact

    assert redact("GET /x?t=a%2Fb%20c%3Dd%26e and a/b%20c=d&e", secrets) \
        == "GET /x?t=[redacted] and [redacted]"


def test_a_token_with_a_byte_that_is_no_utf_8_is_read():
    """os.environ keeps such a byte as a lone surrogate (surrogateescape): the settings load,
    and the byte's percent-encoded form is blanked too."""
    token = b"tok\xffen-1234".decode("utf-8", "surrogateescape")
    secrets = load_settings(warn_unknown=False, gitlab_webhook_token=token).secret_values
    assert token in secrets and "tok%FFen-1234" in secrets


def test_a_short_extra_header_value_is_not_made_a_secret():
    """The status page blanks a secret whatever its length (service.status.Scrub): a credential
    header's value of a character or two is no credential, and would take every such
    character out of the page."""
    secrets = load_settings(warn_unknown=False, jenkins_api_extra_headers=(
        "X-Api-Key: 1\nProxy-Authorization: Bearer ab\nX-Proxy-Token: hush-5d1e9f")).secret_values
    assert "hush-5d1e9f" in secrets and not {"1", "ab"} & set(secrets), secrets
