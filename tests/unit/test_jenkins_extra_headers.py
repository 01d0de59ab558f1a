"""JENKINS_API_EXTRA_HEADERS (python-jenkins' own variable: one `Name: value` a line) is checked
by its lines' form as the settings load: python-jenkins drops a line without ':' without a word,
so a proxy's credential written `Name=value` was never sent, and every Jenkins call of the
worker, the reconcile loop and check-config --live got the proxy's refusal instead."""

import jenkins
import pytest

from workers.config.settings import load_settings
from workers.core.errors import ConfigError

CREDENTIAL = "c2VjcmV0LXByb3h5LWNyZWRlbnRpYWw"


def test_python_jenkins_drops_a_line_without_a_colon_unsent(monkeypatch):
    """The real library's behaviour the check stands on."""
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", f"X-Proxy-Auth={CREDENTIAL}")
    session = jenkins.Jenkins("http://jenkins.invalid:8080")._session
    assert not any(CREDENTIAL in str(v) for v in session.headers.values())
    assert not any(name.startswith("X-Proxy-Auth") for name in session.headers)


@pytest.mark.parametrize("headers, lines", [
    (f"X-Proxy-Auth={CREDENTIAL}", "line 1"),
    (f"X-A: 1\nX-Proxy-Auth {CREDENTIAL}\n\nX-B: 2", "line 2"),
    (f" X-Proxy-Auth: {CREDENTIAL}", "line 1"),  # requests refuses a name with white space
])
def test_a_line_python_jenkins_would_not_send_is_refused_by_its_number(monkeypatch, headers,
                                                                        lines):
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", headers)
    with pytest.raises(ConfigError) as refused:
        load_settings(warn_unknown=False)
    [problem] = refused.value.problems
    assert problem.startswith(f"JENKINS_API_EXTRA_HEADERS: {lines} is not `Name: value`")
    assert CREDENTIAL not in problem


@pytest.mark.parametrize("headers", ["", f"X-Proxy-Auth: {CREDENTIAL}",
                                     f"X-A: 1\r\nX-Proxy-Auth:{CREDENTIAL}\r\n\n"])
def test_header_lines_python_jenkins_sends_are_taken(monkeypatch, headers):
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", headers)
    settings = load_settings(warn_unknown=False)
    assert CREDENTIAL not in repr(settings)
