"""Memory per webhook, measured in the real web process (gunicorn with service/gunicorn.conf.py,
one worker): the worker's peak RSS (the kernel's VmHWM, reset before each request through
/proc/PID/clear_refs) grows by less than 64 MiB for a push at the body limit, and for a push
of 20 MB (past the limit: read in pieces, dropped, answered 200 ignored). Issue 17: one 25 MiB
push took a worker from 61 MB to 864 MB; the chart gives the web 384 MiB."""

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.support.app import GITLAB_TOKEN
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, web_env, web_process
from workers.config.settings import DEFAULT_MAX_BODY_BYTES

GROWTH_LIMIT_BYTES = 64 * 2**20
COMMITS = 20  # GitLab lists at most 20 (its webhook docs)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _worker_pid(shell_pid: int) -> int:
    """The one gunicorn worker: the process two levels below the shell, or one if the shell
    exec'd gunicorn's master."""
    level = [shell_pid]
    for _ in range(3):
        below = [c for p in level for c in _children(p)]
        if not below:
            break
        cmdlines = {c: Path(f"/proc/{c}/cmdline").read_bytes() for c in below}
        level = below
        if all(b"gunicorn" in cmdlines[c] for c in below) and \
                all(not _children(c) for c in below):
            break
    assert len(level) == 1, level
    return level[0]


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _push_at(size: int, *, sha: str) -> bytes:
    """A real push, with 20 commits whose changed files fill it to exactly `size` bytes."""
    base = fixture("gitlab_push_real_lrz.json")
    commit = base["commits"][0]
    files_per_commit = max(1, size // COMMITS // 64)
    base["commits"] = [dict(commit, added=[f"src/module_{c}/file_{i:06d}.java"
                                           for i in range(files_per_commit)])
                       for c in range(COMMITS)]
    base.update(after=sha, checkout_sha=sha, total_commits_count=COMMITS)
    body = json.dumps(base).encode()
    while len(body) > size:  # trim whole files, then pad the message to the byte
        base["commits"][-1]["added"].pop()
        body = json.dumps(base).encode()
    base["commits"][-1]["message"] += "x" * (size - len(body))
    body = json.dumps(base).encode()
    assert len(body) == size
    return body


@pytest.fixture
def web(redis_url, tmp_path):
    port = free_port()
    env = web_env(redis_url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    with web_process(GUNICORN, env, port, tmp_path / "web.log") as proc:
        proc.port, proc.worker = port, _worker_pid(proc.pid)
        yield proc


def _post(port: int, body: bytes, delivery: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/gitlab", data=body, method="POST",
        headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
                 "Content-Type": "application/json", "Idempotency-Key": delivery})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def _peak_growth(web, body: bytes, delivery: str) -> tuple[tuple[int, dict], int]:
    """The answer, and how far the worker's peak RSS rose above its RSS before the request."""
    Path(f"/proc/{web.worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib(web.worker, "VmRSS")
    answer = _post(web.port, body, delivery)
    return answer, (_status_kib(web.worker, "VmHWM") - before) * 1024


def test_a_push_at_the_limit_and_one_of_20_mb_stay_under_64_mib_of_peak_rss(web, capsys):
    _post(web.port, _push_at(64 * 1024, sha="1" * 40), "warm-up")  # imports, pools, arenas
    at_limit, growth = _peak_growth(web, _push_at(DEFAULT_MAX_BODY_BYTES, sha="2" * 40),
                                    "at-limit")
    assert at_limit[0] == 202, at_limit
    huge = json.dumps(fixture("gitlab_push_real_lrz.json") | {
        "ref": "refs/heads/" + "x" * (20 * 2**20)}).encode()
    ignored, huge_growth = _peak_growth(web, huge, "huge-ref")
    assert (ignored[0], ignored[1]["status"]) == (200, "ignored"), ignored
    with capsys.disabled():
        print(f"\nwebhook memory: push at the limit ({DEFAULT_MAX_BODY_BYTES} bytes): peak RSS "
              f"+{growth / 2**20:.1f} MiB; 20 MB push (ignored): +{huge_growth / 2**20:.1f} MiB")
    assert growth < GROWTH_LIMIT_BYTES
    assert huge_growth < GROWTH_LIMIT_BYTES
    assert os.path.exists(f"/proc/{web.worker}")  # the same worker answered throughout
