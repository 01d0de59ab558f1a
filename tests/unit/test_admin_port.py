"""The admin port (CI_AUTOSCALER_ADMIN_BIND): which paths each port serves (service.ports), and
the settings that name it (a host:port of its own)."""

import json

import pytest

from service.ports import PortRoles
from service.status import Scrub, duration
from workers.config.settings import bind_port, load_settings
from workers.core.errors import ConfigError

PUBLIC, ADMIN = 8080, 9090


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"served"]


@pytest.mark.parametrize("path, port, served", [
    ("/metrics", ADMIN, True), ("/status", ADMIN, True),
    ("/metrics", PUBLIC, False), ("/status", PUBLIC, False),
    ("/webhooks/gitlab", PUBLIC, True), ("/webhooks/jenkins", PUBLIC, True),
    ("/webhooks/gitlab", ADMIN, False), ("/anything", ADMIN, False),
    ("/healthz", PUBLIC, True), ("/healthz", ADMIN, True),
    ("/readyz", PUBLIC, True), ("/readyz", ADMIN, True),
    # as Flask's router reads them (it served //metrics and ///status on the public port)
    ("//metrics", PUBLIC, False), ("///status", PUBLIC, False),
    ("//metrics", ADMIN, True), ("//webhooks//gitlab", ADMIN, False),
])
def test_each_port_serves_its_own_paths(path, port, served):
    """The environ as gunicorn makes it: SERVER_PORT is the listener's; the Host header, the
    client's to write, names the other port and changes nothing."""
    answered = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": str(port), "HTTP_HOST": f"127.0.0.1:{ADMIN + PUBLIC - port}"}
    body = b"".join(PortRoles(app, admin_port=ADMIN)(
        environ, lambda status, headers: answered.append(status)))
    assert (answered == ["200 OK"]) is served
    if not served:
        assert answered == ["404 NOT FOUND"]
        assert json.loads(body) == {
            "error": "not_found", "reason": "The requested URL was not found on the server. "
            "If you entered the URL manually please check your spelling and try again."}


@pytest.mark.parametrize("bind, port", [
    ("0.0.0.0:9090", 9090), ("[::]:9090", 9090), ("localhost:1", 1), ("127.0.0.1:65535", 65535),
    ("9090", None), ("host:", None), ("host:0", None), ("host:65536", None), ("host:x", None),
])
def test_a_bind_names_its_port(bind, port):
    assert bind_port(bind) == port


def test_the_admin_bind_is_checked_when_the_settings_load():
    assert load_settings(admin_bind="127.0.0.1:9090").admin_port == 9090
    assert load_settings().admin_port is None
    with pytest.raises(ConfigError, match="is not host:port"):
        load_settings(admin_bind="9090")
    with pytest.raises(ConfigError, match="needs one of its own"):
        load_settings(admin_bind="127.0.0.1:8080")  # the public default
    with pytest.raises(ConfigError, match="needs one of its own"):
        load_settings(admin_bind="127.0.0.1:5000", port="5000")
    assert load_settings(admin_bind="127.0.0.1:8080", bind="0.0.0.0:8000").admin_port == 8080


@pytest.mark.parametrize("env, problem", [
    ({"CI_AUTOSCALER_BIND": "8080"}, "CI_AUTOSCALER_BIND: '8080' is not host:port"),
    ({"CI_AUTOSCALER_BIND": "0.0.0.0"}, "CI_AUTOSCALER_BIND: '0.0.0.0' is not host:port"),
    ({"PORT": "http"}, "PORT: 'http' is not a port"),
    ({"PORT": "0"}, "PORT: '0' is not a port"),
    ({"CI_AUTOSCALER_BIND": "fd://x"}, "CI_AUTOSCALER_BIND: 'fd://x' is not host:port"),
    ({"CI_AUTOSCALER_BIND": "tcp://0.0.0.0"}, "CI_AUTOSCALER_BIND: 'tcp://0.0.0.0' is not"),
    ({"CI_AUTOSCALER_BIND": "fd://3", "CI_AUTOSCALER_ADMIN_BIND": "0.0.0.0:9090"},
     "CI_AUTOSCALER_ADMIN_BIND: gunicorn serves only the descriptor"),
])
def test_a_public_bind_or_port_gunicorn_would_misread_is_refused(monkeypatch, env, problem):
    """gunicorn reads a bind without ':' as a host on its port 8000: CI_AUTOSCALER_BIND=8080
    made it look up a host named 8080, and 0.0.0.0 listened on 8000, not where the README's
    host:port and the Service expect it."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("env", [{"CI_AUTOSCALER_BIND": "127.0.0.1:8081"}, {"PORT": "5000"},
                                 {"CI_AUTOSCALER_BIND": "unix:/run/ci-autoscaler.sock"},
                                 {"CI_AUTOSCALER_BIND": "[::]:8080"},
                                 {"CI_AUTOSCALER_BIND": "unix:///run/ci-autoscaler.sock"},
                                 {"CI_AUTOSCALER_BIND": "tcp://0.0.0.0:8080"},
                                 {"CI_AUTOSCALER_BIND": "fd://3"}])
def test_a_bind_gunicorn_reads_as_written_is_taken(monkeypatch, env):
    """Each form gunicorn's parse_address takes (gunicorn/util.py): host:port, [v6]:port,
    tcp://host:port, unix:PATH and unix://PATH, and fd://N, a socket already listening, passed
    by a supervisor (systemd's socket activation, circus, einhorn)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    load_settings()


def test_secrets_are_blanked_longest_first_and_durations_read_as_people_write_them():
    scrub = Scrub(["abc", "abcdef", ""])
    assert scrub("x abcdef y abc") == "x [hidden] y [hidden]"
    assert [duration(s) for s in (None, -1, 42, 185, 7440)] == ["—", "0s", "42s", "3m 05s",
                                                                 "2h 04m"]
