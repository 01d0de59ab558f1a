"""The Procfile's web line on reloads (SIGHUP, a master re-executed on USR2) and its metrics
directory: split from test_procfile.py, as each starts a real gunicorn and one module runs on
one xdist worker (--dist loadscope), so the two halves run side by side."""

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_procfile import _procfile_line
from tests.support.payloads import EXAMPLE_CONFIG
from tests.support.monitoring import wait_until
from tests.support.redis_server import free_port
from tests.support.web_process import ROOT, answers, mapped_metrics_dir, web_env, web_process


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
    old one's PROMETHEUS_MULTIPROC_DIR (the master made it, and passes it on: pre_exec), and
    the old master's workers go on serving and counting in their files until it is stopped. Its
    on_starting deleted every file there, as a fresh start does with an earlier run's: what the
    old workers had counted, and went on counting, was gone from /metrics."""
    port = free_port()
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1")
    log = tmp_path / "web.log"
    metrics_dir = None
    try:
        with web_process(_procfile_line("web"), env, port, log) as web:
            metrics_dir = _metrics_dir_of(web.pid)
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
            shutil.rmtree(metrics_dir, ignore_errors=True)  # the new master, never stopped


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
    """The metrics directory the workers of master `pid` count in (made by the master once it
    listens, so in no process's initial environment)."""
    return wait_until(lambda: mapped_metrics_dir(pid), timeout=20,
                      what="the workers counting in a metrics directory")


def test_the_metrics_directory_the_web_line_makes_is_removed_when_the_web_stops(
        redis_url, tmp_path):
    """The web line made a metrics directory under $TMPDIR on every start (once `mktemp -d`,
    a file in it for every worker that ever ran), and nothing removed it: on a developer's
    machine, or a VM run by systemd or honcho, they piled up. Gunicorn's master removes it as
    it exits."""
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
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1",
                  PROMETHEUS_MULTIPROC_DIR=str(given))
    with web_process(_procfile_line("web"), env, port, tmp_path / "web.log"):
        pass
    assert given.is_dir()


def test_a_metrics_directory_given_that_does_not_exist_yet_is_made_and_counted_in(
        redis_url, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR naming a directory not made yet (a .env's /tmp/ci-metrics after
    a reboot): the Procfile's old line replaced it with its own `mktemp -d` and served; run as
    given, every worker failed to boot on its counter file (FileNotFoundError) and gunicorn
    gave up ("Worker failed to boot"). The master makes it, and the workers count in it."""
    port = free_port()
    given = tmp_path / "not-made" / "metrics"
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="2",
                  PROMETHEUS_MULTIPROC_DIR=str(given))
    with web_process(_procfile_line("web"), env, port, tmp_path / "web.log") as web:
        assert _metrics_dir_of(web.pid) == given
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/gitlab", data=b"{}", method="POST",
            headers={"X-Gitlab-Token": "wrong"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
        assert _unauthorized_count(port) == 1
    assert given.is_dir()  # given: left in place


# The Dockerfile's CMD, the chart's and the Procfile's: `ci-autoscaler web`, which execs
# gunicorn's script, which a USR2 execs again as it was started.
IMAGE_COMMAND = "exec ci-autoscaler web"


def _new_master(old: int) -> int | None:
    """The master that a USR2 forked from `old` and exec'd (GUNICORN_PID in its environment)."""
    for pid in Path(f"/proc/{old}/task/{old}/children").read_text().split():
        if b"GUNICORN_PID=" in Path(f"/proc/{pid}/environ").read_bytes():
            return int(pid)
    return None


def _gone(pid: int) -> bool:
    """Ended (reaped, or a zombie of a parent that is not this test)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_master_re_executed_on_usr2_shares_the_metrics_directory_the_image_command_made(
        redis_url, tmp_path):
    """The image's command (gunicorn with the shipped config, no PROMETHEUS_MULTIPROC_DIR) makes
    its metrics directory in on_starting, after gunicorn took its Config's env_orig; a USR2
    execs the new master with env_orig (gunicorn arbiter.reexec), so it made a second one: the
    two masters' workers, serving side by side, each counted apart (a counter reset for
    Prometheus at each switch), and the old master, ending with a re-executed child
    (server.reexec_pid), left its own directory under /tmp for good. `ci-autoscaler web` ran
    gunicorn as `python -m gunicorn`, which a USR2 re-executed as `python .../gunicorn/
    __main__.py`: gunicorn's `http` package shadowed the standard library's, the new master's
    worker could not boot, and it shut down, leaving no web once the old master stopped."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    env = web_env(redis_url, PORT=str(port), WEB_CONCURRENCY="1", TMPDIR=str(temp))
    log = tmp_path / "web.log"
    new = None
    try:
        with web_process(IMAGE_COMMAND, env, port, log) as web:
            [made] = temp.glob("ci-autoscaler-metrics-*")
            os.kill(web.pid, signal.SIGUSR2)
            new = wait_until(lambda: log.read_text().count("Booting worker") >= 2
                             and _new_master(web.pid), timeout=30,
                             what="the new master's worker")
            assert list(temp.glob("ci-autoscaler-metrics-*")) == [made], \
                log.read_text()[-1500:]
            os.kill(web.pid, signal.SIGTERM)  # the old master stopped, as after a USR2 upgrade
            web.wait(timeout=30)
            wait_until(lambda: "Master has been promoted" in log.read_text(), timeout=30,
                       what="the new master promoted")
            assert made.is_dir() and answers(port)  # the new master's, serving
    finally:
        if new is not None:
            os.kill(new, signal.SIGTERM)
            wait_until(lambda: _gone(new), timeout=30, what="the new master ended")
    assert list(temp.glob("ci-autoscaler-metrics-*")) == [], log.read_text()[-1500:]
