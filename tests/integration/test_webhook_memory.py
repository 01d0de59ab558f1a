"""Memory per webhook, measured in the real web process (gunicorn with service/gunicorn.conf.py,
one worker): the worker's peak RSS (the kernel's VmHWM, reset before each request through
/proc/PID/clear_refs) grows by less than 64 MiB for a push at the body limit, and for a push
of 20 MB (past the limit: read in pieces, its 20 MB ref past what a field kept may be,
answered 200 ignored; service.trimmed_body), and for a Jenkins
notification at the limit. Issue 17: one 25 MiB push took a worker from 61 MB to 864 MB; the
chart gives the web 384 MiB."""

import json
import os
import urllib.request
from pathlib import Path

import pytest

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
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


def _post(port: int, body: bytes, delivery: str, *, jenkins: bool = False) -> tuple[int, dict]:
    if jenkins:  # as the Notification plugin posts: the token in the URL
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/jenkins?token={JENKINS_TOKEN}", data=body,
            method="POST", headers={"Content-Type": "application/json;charset=UTF-8"})
    else:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhooks/gitlab", data=body, method="POST",
            headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
                     "Content-Type": "application/json", "Idempotency-Key": delivery})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def _peak_growth(web, body: bytes, delivery: str, *, jenkins: bool = False
                 ) -> tuple[tuple[int, dict], int]:
    """The answer, and how far the worker's peak RSS rose above its RSS before the request."""
    Path(f"/proc/{web.worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib(web.worker, "VmRSS")
    answer = _post(web.port, body, delivery, jenkins=jenkins)
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


def _notification_at(size: int, where: str) -> bytes:
    """A COMPLETED of the Notification plugin's shape, exactly `size` bytes, one field of its
    `build` (`where`) a long run of empty objects: the plugin's own payload has free-form
    parts (scm, artifacts, parameters), and the token that lets a body in is shared by every
    job and travels in job configs and URLs (issue 17)."""
    head = {"name": "build", "url": "job/build/", "build": {
        "full_url": "http://jenkins.example/job/build/7/", "number": 7, "queue_id": 70,
        "phase": "COMPLETED", "status": "SUCCESS", "url": "job/build/7/",
        "parameters": {"CI_AUTOSCALER_AGENT": "cia-build-000000000000"},
        "scm": {}, where: "@FILL@"}}
    text = json.dumps(head).encode()
    room = size - len(text) + len(b'"@FILL@"')
    if where == "parameters":  # the agent's parameter after the filler, as a key of it
        tail = b'"CI_AUTOSCALER_AGENT": "cia-build-000000000000"}'
        filler, i = bytearray(b"{"), 0
        while len(filler) + len(tail) + 16 < room:  # distinct keys: a dict of them all
            filler += b'"%x":{},' % i
            i += 1
        filler += b" " * (room - len(filler) - len(tail)) + tail
    else:
        count = (room - 2) // 3
        filler = b"[" + b",".join([b"{}"] * count)
        filler += b" " * (room - len(filler) - 1) + b"]"
    body = text.replace(b'"@FILL@"', filler, 1)
    assert len(body) == size, (len(body), size)
    return body


@pytest.mark.parametrize("where", ["artifacts", "parameters"])
def test_a_jenkins_notification_at_the_limit_stays_under_64_mib_of_peak_rss(web, where, capsys):
    """A notification is parsed for the fields it is read for only, as a push is: parsed whole
    (orjson), 4 MiB of empty objects made a million dicts, +133 MiB for one request and 568
    MB peak for eight at once in one worker, which the chart's 384 MiB pod does not hold."""
    _post(web.port, _notification_at(64 * 1024, where), "warm-up", jenkins=True)
    body = _notification_at(DEFAULT_MAX_BODY_BYTES, where)
    answer, growth = _peak_growth(web, body, "at-limit", jenkins=True)
    assert answer[0] == 200 and answer[1]["status"] == "ignored", answer  # no build of ours
    with capsys.disabled():
        print(f"\nwebhook memory: Jenkins notification at the limit ({where}): peak RSS "
              f"+{growth / 2**20:.1f} MiB")
    assert growth < GROWTH_LIMIT_BYTES
    assert growth < len(body) + 12 * 2**20  # "within a few MiB of its body size"
