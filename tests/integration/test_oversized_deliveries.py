"""Deliveries past the web's body limit (4 MiB), through the real web process (gunicorn with
service/gunicorn.conf.py): a real GitLab push can be larger (20 commits, each with its message,
which has no bound, and its added, modified and removed files; GitLab sends up to 25 MB), and
so can the Jenkins Notification plugin's COMPLETED (the run's log lines, per its endpoint's
"Log" setting, its artifacts and changed files). Neither sender sends one again: GitLab never
re-sends by itself, and the plugin ignores our answer (REALITY.md). Such a push was answered
200 ignored and lost; such a COMPLETED was 413, and its agent waited for a reconcile pass.
Both are read in pieces and trimmed (service.trimmed_body), at a worker's memory far below
the body's."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_webhook_memory import _push_at, _status_kib, _worker_pid
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app, mover
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, web_env, web_process
from workers.config.settings import DEFAULT_MAX_BODY_BYTES
from workers.core.routing import AGENT_PARAMETER

SIZE = DEFAULT_MAX_BODY_BYTES * 3  # past the limit, well within GitLab's 25 MB
# Peak RSS growth allowed for one such delivery: far below its size (read whole, it cost
# about its size and more: tests/integration/test_webhook_memory.py).
GROWTH_LIMIT_BYTES = 8 * 2**20


@pytest.fixture(scope="module")
def web(redis_server, tmp_path_factory):
    """One web process for the module (its start is most of a test's time); each test's
    redis_url flushes the database."""
    port = free_port()
    env = web_env(redis_server.url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    with web_process(GUNICORN, env, port, tmp_path_factory.mktemp("web") / "web.log") as proc:
        proc.port, proc.worker = port, _worker_pid(proc.pid)
        yield proc


def _post(web, path: str, body: bytes, *, chunked: bool = False, **headers: str
          ) -> tuple[tuple[int, dict], int]:
    """The answer, and how far the worker's peak RSS rose above its RSS before the request."""
    Path(f"/proc/{web.worker}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib(web.worker, "VmRSS")
    data = (body[i:i + 65536] for i in range(0, len(body), 65536)) if chunked else body
    request = urllib.request.Request(f"http://127.0.0.1:{web.port}{path}", data=data,
                                     method="POST", headers={
                                         "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:  # a 4xx: its JSON reason
        answer = err.code, json.loads(err.read())
    return answer, (_status_kib(web.worker, "VmHWM") - before) * 1024


def _gitlab(web, body: bytes, delivery: str, *, chunked: bool = False):
    return _post(web, "/webhooks/gitlab", body, chunked=chunked, **{
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery})


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_push_past_the_limit_is_queued_not_lost(redis_conn, web, capsys, chunked):
    _gitlab(web, _push_at(64 * 1024, sha="1" * 40), "warm-up")  # imports, pools, arenas
    body = _push_at(SIZE, sha="2" * 40)
    (status, answer), growth = _gitlab(web, body, "large", chunked=chunked)
    with capsys.disabled():
        print(f"\noversized push ({len(body)} bytes, chunked {chunked}): peak RSS "
              f"+{growth / 2**20:.1f} MiB")
    assert (status, answer["status"]) == (202, "queued"), answer
    assert any(b"2" * 40 in record for record in redis_conn.lrange("cia:intake", 0, -1))
    # chunked (no sender of ours), the main loop holds its first limit's worth before a thread
    # reads on, and read_body a copy of it
    assert growth < GROWTH_LIMIT_BYTES + (2 * DEFAULT_MAX_BODY_BYTES if chunked else 0)


def test_a_completed_past_the_limit_queues_the_release(redis_url, redis_conn, web, capsys):
    """A COMPLETED with the run's log lines (the plugin's `build.log`) and artifacts, for a
    build on our agent: its release is queued, not refused 413."""
    (status, pushed), _ = _gitlab(web, _push_at(64 * 1024, sha="3" * 40), "p-1")
    assert status == 202, pushed
    app = make_app(redis_url)  # the worker's mover makes the build's record and agent name
    mover(app).drain()
    agent = app.extensions["ci_autoscaler"].state.get_build(pushed["build_key"])["agent"]
    note = fixture("jenkins_notification_completed_unstable.json")
    note.update(name="build", url="job/build/")  # the job the example's routes start
    line = "[INFO] Building module %06d ... " + "x" * 100 + "\n"
    note["build"].update(
        parameters={AGENT_PARAMETER: agent}, phase="COMPLETED", status="SUCCESS",
        log="".join(line % i for i in range(SIZE // len(line % 0) + 1)),
        artifacts={f"target/lib-{i}.jar": {"archive": f"http://jenkins/job/build/1/"
                                           f"artifact/target/lib-{i}.jar"}
                   for i in range(2000)})
    body = json.dumps(note).encode()
    assert len(body) > SIZE
    (status, answer), growth = _post(web, f"/webhooks/jenkins?token={JENKINS_TOKEN}", body)
    with capsys.disabled():
        print(f"\noversized COMPLETED ({len(body)} bytes): peak RSS +{growth / 2**20:.1f} MiB")
    assert (status, answer["status"], answer.get("build_key")) == \
        (202, "queued", pushed["build_key"]), answer
    assert any(b"release" in record for record in redis_conn.lrange("cia:intake", 0, -1))
    assert growth < GROWTH_LIMIT_BYTES
