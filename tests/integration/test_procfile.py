"""The Procfile's web line, run as Heroku, honcho and foreman run it (through a shell, with
PORT in the environment): it serves on $PORT unless CI_AUTOSCALER_BIND says otherwise."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.payloads import EXAMPLE_CONFIG
from tests.support.monitoring import wait_until
from tests.support.redis_server import free_port
from tests.support.web_process import ROOT, answers, web_env, web_process


def _procfile_line(name: str) -> str:
    lines = (ROOT / "Procfile").read_text().splitlines()
    [command] = [line.split(":", 1)[1].strip() for line in lines if line.startswith(f"{name}:")]
    return command


def test_the_procfile_web_line_serves_on_port(redis_url, tmp_path):
    port = free_port()
    env = web_env(redis_url, PORT=str(port))
    with web_process(_procfile_line("web"), env, port, tmp_path / "web.log"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        # Every address, IPv4 and IPv6: [::] takes both here (net.ipv6.bindv6only 0)
        assert f"Listening at: http://[::]:{port}" in (tmp_path / "web.log").read_text()


def test_a_web_concurrency_the_settings_take_is_the_number_of_workers_run(redis_url, tmp_path):
    """WEB_CONCURRENCY=" 1" (a space from a .env file or a YAML value): the settings took it as
    1, and gunicorn's config, which read only a plain run of digits, ran its default 2 workers
    without a word."""
    port = free_port()
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY=" 1 ")
    log = tmp_path / "web.log"
    with web_process(_procfile_line("web"), env, port, log) as web:
        wait_until(lambda: log.read_text().count("Booting worker") >= 1, timeout=30,
                   what="a worker booted")
        children = Path(f"/proc/{web.pid}/task/{web.pid}/children").read_text().split()
        assert len(children) == 1, log.read_text()[-1500:]


def test_an_explicit_bind_wins_over_port(redis_url, tmp_path):
    port, bind_port = free_port(), free_port()
    env = web_env(redis_url, PORT=str(port), CI_AUTOSCALER_BIND=f"127.0.0.1:{bind_port}")
    with web_process(_procfile_line("web"), env, bind_port, tmp_path / "web.log"):
        assert not answers(port)


def test_the_web_serves_on_a_socket_its_supervisor_passed(redis_url, tmp_path):
    """CI_AUTOSCALER_BIND=fd://N: gunicorn listens on the open socket N (gunicorn.util.
    parse_address, gunicorn.sock.create_sockets), as systemd's socket activation, circus or
    einhorn pass one; the settings refused it as no host:port, exit 2."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        env = web_env(redis_url, CI_AUTOSCALER_BIND=f"fd://{listener.fileno()}")
        with web_process(_procfile_line("web"), env, port, tmp_path / "web.log",
                         pass_fds=(listener.fileno(),)):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                assert json.loads(r.read()) == {"status": "ok"}


def test_the_insecure_warning_is_a_log_line_as_the_others_are(redis_url, tmp_path):
    """Without tokens, on purpose (CI_AUTOSCALER_INSECURE_NO_TOKENS), the web warns at start.
    gunicorn's master checked the settings before anything set up the service's logging, so
    its warning went out through Python's last-resort handler as bare text, without its level,
    logger or the settings it names: a log pipeline that reads JSON lines (every other line of
    the service) dropped or misfiled the one line saying the webhooks are open."""
    port = free_port()
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1", GITLAB_WEBHOOK_TOKEN="",
                  JENKINS_WEBHOOK_TOKEN="", CI_AUTOSCALER_INSECURE_NO_TOKENS="1")
    log = tmp_path / "web.log"
    with web_process(_procfile_line("web"), env, port, log):
        pass
    lines = [line for line in log.read_text().splitlines() if "INSECURE" in line]
    assert len(lines) == 2, lines  # the master's, at start, and its one worker's
    for line in lines:
        record = json.loads(line)
        assert (record["level"], record["logger"], record["msg"], record["missing"]) == (
            "warning", "ci_autoscaler.web", "INSECURE: webhooks accept requests without a token",
            ["GITLAB_WEBHOOK_TOKEN", "JENKINS_WEBHOOK_TOKEN"])


# systemd starting a socket-activated service (sd_listen_fds(3)): the sockets of its
# ListenStream= lines as descriptors 3, 4, ..., their number in LISTEN_FDS and, in LISTEN_PID,
# the pid of the process it executes (kept by the Procfile line's exec into gunicorn).
SOCKET_ACTIVATED = """
import fcntl, os, sys
fds = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1].split(",")]
for n, fd in enumerate(fds):
    os.dup2(fd, 3 + n)
    os.close(fd)
os.environ |= {"LISTEN_FDS": str(len(fds)), "LISTEN_PID": str(os.getpid())}
os.execvp("sh", ["sh", "-c", sys.argv[2]])
"""


# The longest a web may take to exit or serve; either comes in seconds, even under load.
STILL_RUNS_SECONDS = 120


def _socket_activated(listeners: list[socket.socket]) -> str:
    fds = ",".join(str(listener.fileno()) for listener in listeners)
    return (f"{shlex.quote(sys.executable)} -c {shlex.quote(SOCKET_ACTIVATED)} {fds} "
            f"{shlex.quote(_procfile_line('web'))}")


def test_socket_activated_the_web_serves_the_admin_port_systemd_passed(redis_url, tmp_path):
    """Two ListenStream= sockets, the second the admin port: gunicorn serves both, /metrics on
    the admin one only (service.ports)."""
    with socket.create_server(("127.0.0.1", 0)) as public, \
            socket.create_server(("127.0.0.1", 0)) as admin:
        port, admin_port = public.getsockname()[1], admin.getsockname()[1]
        env = web_env(redis_url, CI_AUTOSCALER_ADMIN_BIND=f"127.0.0.1:{admin_port}")
        with web_process(_socket_activated([public, admin]), env, port, tmp_path / "web.log",
                         pass_fds=(public.fileno(), admin.fileno())):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics",
                                        timeout=5) as r:
                assert r.status == 200
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_socket_activated_the_web_refuses_an_admin_bind_it_would_drop(redis_url, tmp_path):
    """systemd's socket activation with CI_AUTOSCALER_ADMIN_BIND of a port it passed no socket
    of: gunicorn serves the passed sockets alone (gunicorn/arbiter.py: systemd.listen_fds;
    sock.create_sockets binds no address then), so the admin port was never listened on, and
    /metrics and /status were served nowhere, without a word. Refused, naming both."""
    with socket.create_server(("127.0.0.1", 0)) as public:
        # drawn while the public socket is held: never its port (a free_port() drawn first
        # was the next bind-to-0's port 12 times in 203,143 tries here)
        admin_port = free_port()
        env = web_env(redis_url, CI_AUTOSCALER_ADMIN_BIND=f"127.0.0.1:{admin_port}")
        log = tmp_path / "web.log"
        with log.open("w") as err:
            proc = subprocess.Popen(["sh", "-c", _socket_activated([public])], cwd=ROOT,
                                    env=env, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, pass_fds=(public.fileno(),))
        try:
            # Awaited: its exit, or the bug's own sign, the web serving on the passed socket.
            # Not a 20 s bound on a start that is slow under load: a full run's gunicorn
            # (imports, config file) can take most of it on 2 loaded cores (8.8 s seen here
            # at load 9), and a bound overrun said "still runs" of a web about to exit 2.
            wait_until(lambda: proc.poll() is not None or answers(public.getsockname()[1]),
                       timeout=STILL_RUNS_SECONDS, what=lambda: f"the web's exit: {tail(log)}")
            assert proc.poll() is not None, f"the web still runs: {tail(log)}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    stderr = log.read_text()
    assert proc.returncode == 2, stderr[-1500:]
    [line] = [line for line in stderr.splitlines() if "CI_AUTOSCALER_ADMIN_BIND" in line]
    assert line.startswith("error: CI_AUTOSCALER_ADMIN_BIND: gunicorn serves only the sockets "
                           "systemd passed (LISTEN_FDS=1"), line
    assert f"127.0.0.1:{admin_port}" in line, line


def tail(log: Path) -> str:
    return log.read_text()[-1500:]


@pytest.mark.parametrize("fault", ["config", "token", "redis_url"])
def test_the_procfile_web_line_refuses_to_start_on_a_bad_config_or_no_token(
        redis_url, tmp_path, fault):
    """The web exits 2, naming the field once, as the worker and the reconcile process do. Before,
    each gunicorn worker printed the error and exited 2, which gunicorn answers by starting
    another (only exit codes 3 and 4 halt its arbiter): the web ran for ever, busy respawning,
    and a process manager saw it up."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE_CONFIG.read_text().replace("    template: maven       #",
                                                      "    tempalte: maven       #", 1))
    env = web_env(redis_url, PORT=str(free_port()))
    env |= {"config": {"CI_AUTOSCALER_CONFIG": str(bad)}, "token": {"GITLAB_WEBHOOK_TOKEN": ""},
            "redis_url": {"REDIS_URL": "127.0.0.1:6379"}}[fault]
    try:
        result = subprocess.run(["sh", "-c", _procfile_line("web")], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"the web still runs: {err.stderr.decode()[-1500:]}") from None
    expected = {"config": f"error: {bad}:31: routes[1].tempalte: unknown field",
                "token": "error: GITLAB_WEBHOOK_TOKEN: required (webhook tokens have no default)",
                "redis_url": "error: REDIS_URL: must start with redis://"}[fault]
    assert result.returncode == 2, result.stderr[-1500:]
    assert result.stderr.count(expected) == 1, result.stderr[-1500:]


@pytest.mark.parametrize("name", ["worker", "reconcile"])
def test_the_procfile_engine_lines_refuse_a_redis_url_that_is_no_url(tmp_path, name):
    """`REDIS_URL=host:port`, as many tools take it: refused at once naming the variable, as any
    other setting is. Before, a ValueError traceback from redis-py, exit 1."""
    env = web_env("127.0.0.1:6379", JENKINS_URL="http://127.0.0.1:1", JENKINS_USER="ci",
                  JENKINS_API_TOKEN="t", KUBECONFIG=str(tmp_path / "none"))
    result = subprocess.run(["sh", "-c", _procfile_line(name)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-1500:]
    assert "error: REDIS_URL: must start with redis://" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["web", "worker", "reconcile"])
def test_the_procfile_lines_refuse_a_jenkins_url_that_is_no_http_url(redis_url, tmp_path, name):
    """`JENKINS_URL=jenkins:8080`, a host and port as in many a setup guide: refused at once
    naming the variable (as the chart's schema refuses it: `^(|https?://.+)$`). Before, every
    process started; the worker's start-up check logged only "TypeError", each build's
    provision failed with requests' TypeError traceback until its retries ran out, and
    `check-config --live` ended in that traceback."""
    env = web_env(redis_url, PORT=str(free_port()), JENKINS_URL="jenkins:8080",
                  JENKINS_USER="ci", JENKINS_API_TOKEN="t", KUBECONFIG=str(tmp_path / "none"))
    try:
        result = subprocess.run(["sh", "-c", _procfile_line(name)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"the {name} still runs: {err.stderr.decode()[-1500:]}") from None
    assert result.returncode == 2, result.stderr[-1500:]
    assert result.stderr.count("error: JENKINS_URL: must be an http:// or https:// URL") == 1, \
        result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def _started_and_stopped_on(url: str, tmp_path: Path) -> tuple[Path, list[dict]]:
    """The Procfile's web (one worker) on REDIS_URL `url`, started and stopped: its log file
    and the JSON records in it."""
    port = free_port()
    env = web_env(url, PORT=str(port), WEB_CONCURRENCY="1")
    log = tmp_path / "web.log"
    with web_process(_procfile_line("web"), env, port, log):
        pass
    return log, [json.loads(line) for line in log.read_text().splitlines()
                 if line.startswith("{")]


def test_the_web_warns_when_redis_refuses_its_password_not_that_redis_does_not_answer(
        own_redis, tmp_path):
    """A web whose REDIS_URL has a wrong password (a rotated Secret, a typo) serves, spooling
    every push, and logged at start only, at info, "Redis's maxmemory-policy not checked",
    reason "Redis does not answer": Redis did answer, and nothing said the setting was wrong.
    Now a warning names REDIS_URL's user or password (never the value)."""
    import redis as redis_py

    redis_py.Redis.from_url(own_redis.url).config_set("requirepass", "right-pw-31")
    url = own_redis.url.replace("redis://", "redis://:wrong-pw-17@")
    log, records = _started_and_stopped_on(url, tmp_path)
    assert [(r["level"], r["error"]) for r in records if r["msg"].startswith(
        "Redis refuses REDIS_URL's user or password")] == [("warning", "AuthenticationError")]
    assert "wrong-pw-17" not in log.read_text()


def test_the_web_warns_once_when_redis_has_not_the_database_its_url_names(own_redis, tmp_path):
    """REDIS_URL's /16 with Redis' default `databases 16`: every connection's SELECT is
    refused (`ERR DB index is out of range`) and every push spooled. The start said
    "Redis's maxmemory-policy not checked" at info; now one warning, in Redis' words."""
    _, records = _started_and_stopped_on(own_redis.url.rsplit("/", 1)[0] + "/16", tmp_path)
    assert [(r["level"], r["error"]) for r in records if r["msg"].startswith(
        "Redis refuses what REDIS_URL asks of it")] == [("warning", "DB index is out of range")]


def test_the_worker_line_refuses_a_redis_url_whose_database_is_no_number(redis_url, tmp_path):
    """`REDIS_URL=redis://host:6379/l` (an l for a 1) or `/ci`: redis-py reads a path that is
    no number as no database (parse_url swallows int()'s ValueError), so the worker ran on
    database 0, beside whatever else keeps its keys there, and said nothing. Refused at once,
    naming the variable, as a URL redis-py cannot read is."""
    env = web_env(redis_url.rsplit("/", 1)[0] + "/l",
                  JENKINS_URL="http://127.0.0.1:1", JENKINS_USER="ci", JENKINS_API_TOKEN="t",
                  KUBECONFIG=str(tmp_path / "none"))
    try:
        result = subprocess.run(["sh", "-c", _procfile_line("worker")], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"the worker runs on database 0: {err.stderr!r:.1500}") from None
    assert result.returncode == 2, result.stderr[-1500:]
    assert "error: REDIS_URL: the database after host[:port]/ must be a number" in result.stderr
    assert "Traceback" not in result.stderr
