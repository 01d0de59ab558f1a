"""The Procfile's web line, run as Heroku, honcho and foreman run it (through a shell, with
PORT in the environment): it serves on $PORT unless CI_AUTOSCALER_BIND says otherwise."""

import json
import os
import shlex
import shutil
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


def _workers(web: subprocess.Popen) -> list[str]:
    return Path(f"/proc/{web.pid}/task/{web.pid}/children").read_text().split()


def _one_worker_web(redis_url: str, tmp_path: Path) -> tuple[Path, int, dict[str, str], Path]:
    """The example config in a file of the test's own, and a one-worker web's port, environment
    and log."""
    config = tmp_path / "ci.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    port = free_port()
    env = web_env(redis_url, PORT=str(port), CI_AUTOSCALER_CONFIG=str(config),
                  WEB_CONCURRENCY="1")
    return config, port, env, tmp_path / "web.log"


def test_a_config_file_broken_while_the_web_runs_leaves_it_serving_what_it_checked(
        redis_url, tmp_path):
    """The file changed in place (a ConfigMap volume follows its ConfigMap) and a gunicorn
    worker is replaced (killed after its timeout, or out of memory): the replacement loads the
    copy the master checked at start (service.startup.snapshot) and serves. Before, it loaded
    the broken file and could not boot: gunicorn respawned it for ever, or (exit 3) halted the
    whole web, while GitLab sends no failed delivery again. SIGHUP with the file broken logs
    the refusal by field and keeps the checked copy; a web started anew refuses the file."""
    config, port, env, log = _one_worker_web(redis_url, tmp_path)
    with web_process(_procfile_line("web"), env, port, log) as web:
        config.write_text(config.read_text().replace("    template: maven       #",
                                                     "    tempalte: maven       #", 1))
        [worker] = _workers(web)
        os.kill(int(worker), signal.SIGKILL)
        wait_until(lambda: _workers(web) not in ([], [worker]) and answers(port), timeout=20,
                   what="a new worker serving")
        assert web.poll() is None, log.read_text()[-1500:]

        os.kill(web.pid, signal.SIGHUP)
        wait_until(lambda: "config refused on reload" in log.read_text(), timeout=20,
                   what="the reload's refusal in the log")
        [refused] = [json.loads(line) for line in log.read_text().splitlines()
                     if "config refused on reload" in line]  # a JSON line, as the service's
        assert (refused["level"], refused["logger"]) == ("error", "ci_autoscaler.web")
        assert refused["problem"].endswith("routes[1].tempalte: unknown field"), refused
        wait_until(lambda: len(_workers(web)) == 1 and answers(port), timeout=20,
                   what="the reloaded web serving")
        assert web.poll() is None, log.read_text()[-1500:]
    again = subprocess.run(["sh", "-c", _procfile_line("web")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2, again.stderr[-1500:]
    assert f"error: {config}:31: routes[1].tempalte: unknown field" in again.stderr


def test_a_master_re_executed_on_usr2_leaves_the_old_masters_copy_of_the_config_file(
        redis_url, tmp_path):
    """gunicorn's USR2 execs a new master with the environment its config had at the last
    SIGHUP (arbiter.reexec: cfg.env_orig, taken as reload() builds a new Config), so after a
    refused reload the new master is told the old master's copy is its own: its snapshot
    deleted it, and a worker the old master started next read the file itself again."""
    config = tmp_path / "ci.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    env = web_env(redis_url, PORT=str(port), CI_AUTOSCALER_CONFIG=str(config),
                  WEB_CONCURRENCY="1", TMPDIR=str(temp))
    log = tmp_path / "web.log"
    with web_process(_procfile_line("web"), env, port, log) as web:
        [old_copy] = temp.glob("ci-autoscaler-config-*")
        good = config.read_text()
        config.write_text(good.replace("    template: maven       #",
                                       "    tempalte: maven       #", 1))
        os.kill(web.pid, signal.SIGHUP)
        wait_until(lambda: "config refused on reload" in log.read_text(), timeout=20,
                   what="the reload's refusal in the log")
        config.write_text(good)
        os.kill(web.pid, signal.SIGUSR2)
        wait_until(lambda: log.read_text().count("Booting worker") >= 3, timeout=30,
                   what="the new master's worker")
        assert old_copy.exists(), log.read_text()[-1500:]
        assert len(list(temp.glob("ci-autoscaler-config-*"))) == 2
    # each master removes its own on exit (the new one may end after the old one)
    wait_until(lambda: not list(temp.glob("ci-autoscaler-config-*")), timeout=30,
               what="both masters' copies removed")


def _unauthorized_count(port: int) -> float:
    """The web's count of GitLab deliveries refused for their token, as /metrics reads it."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ci_autoscaler_webhooks_total{")
               and 'source="gitlab"' in line and 'result="unauthorized"' in line)


def test_a_master_re_executed_on_usr2_keeps_the_old_workers_metrics_files(redis_url, tmp_path):
    """The new master of a USR2 (arbiter.reexec: GUNICORN_PID in its environment) shares the
    old one's PROMETHEUS_MULTIPROC_DIR (the Procfile exported it before gunicorn started), and
    the old master's workers go on serving and counting in their files until it is stopped. Its
    on_starting deleted every file there, as a fresh start does with an earlier run's: what the
    old workers had counted, and went on counting, was gone from /metrics."""
    port = free_port()
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1")
    log = tmp_path / "web.log"
    metrics_dir = None
    try:
        with web_process(_procfile_line("web"), env, port, log) as web:
            environ = Path(f"/proc/{web.pid}/environ").read_bytes().split(b"\0")
            [metrics_dir] = [Path(v.split(b"=", 1)[1].decode()) for v in environ
                             if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/webhooks/gitlab", data=b"{}", method="POST",
                headers={"X-Gitlab-Token": "wrong"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401
            assert _unauthorized_count(port) == 1
            old_files = set(metrics_dir.glob("*.db"))

            os.kill(web.pid, signal.SIGUSR2)
            wait_until(lambda: log.read_text().count("Booting worker") >= 2, timeout=30,
                       what="the new master's worker")
            assert old_files <= set(metrics_dir.glob("*.db")), log.read_text()[-1500:]
            assert _unauthorized_count(port) == 1
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)  # the Procfile's mktemp -d


def test_a_config_file_not_in_utf8_is_refused_on_sighup_and_the_web_serves_on(
        redis_url, tmp_path):
    """A file saved in Latin-1 (an 'é' in a comment) raised UnicodeDecodeError, no ConfigError:
    out of on_reload it ended gunicorn's main loop ("Unhandled exception"), every worker with
    it, where a refused file is to be logged and the checked copy kept."""
    config, port, env, log = _one_worker_web(redis_url, tmp_path)
    with web_process(_procfile_line("web"), env, port, log) as web:
        config.write_bytes(config.read_bytes() + "# café\n".encode("latin-1"))
        os.kill(web.pid, signal.SIGHUP)
        wait_until(lambda: "config refused on reload" in log.read_text()
                   or web.poll() is not None, timeout=20, what="the reload's refusal")
        assert web.poll() is None, log.read_text()[-1500:]
        assert f"{config}: not UTF-8 text" in log.read_text()
        wait_until(lambda: len(_workers(web)) == 1 and answers(port), timeout=20,
                   what="the reloaded web serving")


def _metrics_dir_of(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [given] = [Path(v.split(b"=", 1)[1].decode()) for v in environ
               if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return given


def test_the_metrics_directory_the_web_line_makes_is_removed_when_the_web_stops(
        redis_url, tmp_path):
    """The web line's `mktemp -d` made a directory under $TMPDIR on every start (a file in it
    for every worker that ever ran), and nothing removed it: on a developer's machine, or a VM
    run by systemd or honcho, they piled up. Gunicorn's master removes it as it exits."""
    port = free_port()
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1", TMPDIR=str(tmp_path))
    with web_process(_procfile_line("web"), env, port, tmp_path / "web.log") as web:
        metrics_dir = _metrics_dir_of(web.pid)
        assert metrics_dir.parent == tmp_path and metrics_dir.is_dir()
    assert not metrics_dir.exists(), (tmp_path / "web.log").read_text()[-1500:]


def test_a_metrics_directory_given_to_the_web_is_left_in_place(redis_url, tmp_path):
    """The chart's emptyDir, or one a user names: not the web's to remove."""
    port = free_port()
    given = tmp_path / "metrics"
    given.mkdir()
    command = "exec gunicorn -c service/gunicorn.conf.py service.wsgi:app"
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1",
                  PROMETHEUS_MULTIPROC_DIR=str(given))
    with web_process(command, env, port, tmp_path / "web.log"):
        pass
    assert given.is_dir()
