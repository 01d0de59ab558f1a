"""Debian's Prometheus, Alertmanager and promtool for the tests, a webhook receiver for the
notifications Alertmanager sends, and the web app served on a loopback port.

`make test` installs the Debian packages when missing; if a binary is still missing the test
fails and says so (it never skips). Each server runs on a free port in its own temporary
directory, with its log kept there, and is stopped with SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from werkzeug.serving import make_server

from tests.support.redis_server import free_port

START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
T = TypeVar("T")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test` (it installs Debian's prometheus "
                    "and prometheus-alertmanager) or `apt-get install -y prometheus "
                    "prometheus-alertmanager`")
    return path


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def wait_until(check: Callable[[], T], *, timeout: float, what: str | Callable[[], str],
               interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`
    (a callable `what` is asked then, so it can tell the state at the time of the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said}: not within {timeout:.0f}s")
        time.sleep(interval)


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class _Server:
    """A binary started in its own directory, ready once GET /-/ready answers 200."""

    name = ""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = directory / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self, config: dict[str, Any]) -> None:
        self.config_path = self.directory / f"{self.name}.yml"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> _Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.directory)
        wait_until(self._ready, timeout=START_TIMEOUT_SECONDS,
                   what=f"{self.name} on {self.url} ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                 + self.log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Prometheus(_Server):
    """Scrapes `targets` (job name -> host:port) and evaluates `rule_files` every second,
    sending alerts to `alertmanager` (a URL) when given."""

    name = "prometheus"

    def __init__(self, directory: Path, *, targets: dict[str, str] | None = None,
                 rule_files: list[Path] = (), alertmanager: str | None = None,
                 labels: dict[str, dict[str, str]] | None = None):
        """`labels`: job name -> labels put on every series of its target (as a
        ServiceMonitor's relabelling does)."""
        super().__init__(directory)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [
                {"targets": [target], **({"labels": (labels or {})[job]}
                                         if job in (labels or {}) else {})}]}
                for job, target in (targets or {}).items()],
        }
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [
                {"targets": [urllib.parse.urlparse(alertmanager).netloc]}]}]}
        self._write_config(config)

    def _command(self) -> list[str]:
        return [binary("prometheus"), f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer to an instant query; an expression that does not parse answers
        400 with errorType "bad_data", returned here like any answer."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return get_json(url)
        except urllib.error.HTTPError as err:
            return json.loads(err.read())

    def alerts(self) -> list[dict[str, Any]]:
        return get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]

    def alert_state(self, name: str) -> str | None:
        """The alert's state ("pending", "firing"), None while it is quiet."""
        return next((a["state"] for a in self.alerts() if a["labels"]["alertname"] == name),
                    None)

    def evaluated_after(self, moment: datetime, name: str | None = None) -> bool:
        """The alert rule `name` (every alert rule, without one) was evaluated after `moment`,
        healthy: a quiet alert shows nothing else."""
        groups = get_json(f"{self.url}/api/v1/rules?type=alert")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"] if name is None or r["name"] == name]
        assert rules, f"no alert rule {name!r}"
        return all(r["health"] == "ok" and datetime.fromisoformat(r["lastEvaluation"]) > moment
                   for r in rules)


class Alertmanager(_Server):
    """Routes every alert to one webhook receiver, grouped by alert name, with 1 s waits."""

    name = "alertmanager"

    def __init__(self, directory: Path, *, webhook_url: str):
        super().__init__(directory)
        config = {
            "route": {"receiver": "test", "group_by": ["alertname"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [
                {"url": webhook_url, "send_resolved": True}]}],
        }
        self._write_config(config)

    def _command(self) -> list[str]:
        return [binary("prometheus-alertmanager"), f"--config.file={self.config_path}",
                f"--storage.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                "--log.level=warn"]


class WebhookReceiver:
    """An HTTP server on loopback that keeps every JSON body POSTed to it (Alertmanager's
    webhook notifications), in arrival order."""

    def __init__(self) -> None:
        self.notifications: queue.Queue[dict[str, Any]] = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.notifications.put(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(STOP_TIMEOUT_SECONDS)

    def next_alert(self, alertname: str, status: str, *, timeout: float) -> dict[str, Any]:
        """The first alert named `alertname` in `status` ("firing" or "resolved") in the
        notifications to come, awaited up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {status} {alertname} notification within {timeout:.0f}s")
            try:
                note = self.notifications.get(timeout=left)
            except queue.Empty:
                continue
            for alert in note["alerts"]:
                if alert["labels"].get("alertname") == alertname and alert["status"] == status:
                    return alert


@contextlib.contextmanager
def running(*servers: _Server) -> Iterator[None]:
    """Start the servers in order, stop them in reverse on exit, whatever happens."""
    started: list[_Server] = []
    try:
        for server in servers:
            started.append(server)  # before start: a server that never gets ready is stopped too
            server.start()
        yield
    finally:
        for server in reversed(started):
            server.stop()


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """The Flask app on a free loopback port in a thread (werkzeug's threaded server);
    yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT_SECONDS)


def scrape(base_url: str) -> str:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as response:
        return response.read().decode()
