"""The Procfile's web line, run as Heroku, honcho and foreman run it (through a shell, with
PORT in the environment): it serves on $PORT unless CI_AUTOSCALER_BIND says otherwise."""

import json
import urllib.request

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
        assert f"Listening at: http://0.0.0.0:{port}" in (tmp_path / "web.log").read_text()


def test_an_explicit_bind_wins_over_port(redis_url, tmp_path):
    port, bind_port = free_port(), free_port()
    env = web_env(redis_url, PORT=str(port), CI_AUTOSCALER_BIND=f"127.0.0.1:{bind_port}")
    with web_process(_procfile_line("web"), env, bind_port, tmp_path / "web.log"):
        assert not answers(port)
