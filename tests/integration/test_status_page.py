"""GET /status in a real browser (Debian's chromium, headless, started here): builds in flight
with their stage and node, builds waiting with their reasons in arrival order, the nodes' free
CPU and memory, nodes needed and the shortfall, the last failures with their reasons; no
secret anywhere in it; a screenshot kept under the test's tmp dir. Then the web process as
production runs it (gunicorn) with an admin port: the page there, and 404 for /status and
/metrics on the public port. And a fresh web process on an empty Redis exports what waits and
what is short as 0.

The cluster, Jenkins and the worker are the real parts of the other integration tests: kmock
over HTTP, the Jenkins fake, the worker's own watch and RQ's SimpleWorker, on a real Redis."""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from html import escape
from html.parser import HTMLParser

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_start_failures import cleaned_up, until
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app, work
from tests.support.browser import dump_dom, parse, screenshot
from tests.support.kmock_cluster import RATE_LIMITED
from tests.support.monitoring import serve_app
from tests.support.payloads import fixture
from tests.support.redis_server import free_port
from tests.support.web_process import GUNICORN, ROOT, web_env, web_process
from workers import runtime
from workers.agent_starts import online as agent_start
from workers.core.routing import AGENT_PARAMETER

# Two nodes with room for one agent each (900m + the agent's 100m; 768Mi + 256Mi).
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 900m, default: 900m, max: 900m}
    memory: {min: 768Mi, default: 768Mi, max: 768Mi}
"""
# A branch name is the pusher's text: git allows '<' and '>' in one (git check-ref-format).
HOSTILE_REF = "refs/heads/fix/<script>document.title='owned'</script>"
ERROR_WITH_TOKEN = f"Jenkins said: bad token {GITLAB_TOKEN} in request"
# A registry's 429 as containerd words it, its URL quoting a user:password@ (a mirror or proxy
# configured with one), and a long tail: the page cuts it and drops the credentials.
PULL_PASSWORD = "pull-s3cret-pw"
PULL_ERROR_WITH_USERINFO = RATE_LIMITED.replace(
    "https://registry-1", f"https://robot:{PULL_PASSWORD}@registry-1") + " tail" * 100


@pytest.fixture
def world(app_on_cluster):
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(
        ("node-a", "1", "2Gi"), ("node-b", "1", "2Gi")))
    runtime.current()  # the worker's runtime: its watch sees the kubelet's writes
    return app


def push(app, n: int, ref: str = "refs/heads/main") -> str:
    body = fixture("gitlab_push_real_lrz.json")
    body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
    body["ref"] = ref
    response = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": f"status-{n}"})
    assert response.status_code == 202, response.json
    return response.json["build_key"]


def state(app):
    return app.extensions["ci_autoscaler"].state


def busy_cluster(app, kube, jenkins_fake) -> dict[str, str]:
    """One build running on its node, one whose image cannot be pulled (failed), one placed
    in the room that failure freed, one waiting: their keys by role."""
    running = push(app, 0)
    failing = push(app, 1)
    work(app)
    waited = push(app, 2, ref=HOSTILE_REF)
    work(app)
    assert state(app).get_build(waited)["status"] == "waiting"

    agent = state(app).get_build(running)["agent"]
    kube.bind_pod(NAMESPACE, agent, state(app).get_build(running)["node"])
    kube.kubelet_status(NAMESPACE, agent, phase="Running")
    run = jenkins_fake.start_build(int(state(app).get_build(running)["queue_item"]))
    jenkins_fake.connect_agent(agent)
    assert agent_start.poll(runtime.current(), connect_timeouts=False)["agents_online"] == 1
    note = fixture("jenkins_notification_started.json")
    note.update(name="build", url="job/build/")
    note["build"].update(number=run.number, parameters={AGENT_PARAMETER: agent})
    assert app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                  json=note).status_code == 200

    bad = state(app).get_build(failing)["agent"]
    kube.image_pull_backoff(NAMESPACE, bad)
    until(app, cleaned_up(kube, jenkins_fake, bad))  # failed; its room goes to `waited`
    assert state(app).get_build(waited)["status"] == "triggered"
    waiting = push(app, 3)
    work(app)
    assert state(app).get_build(waiting)["status"] == "waiting"
    return {"running": running, "failing": failing, "waited": waited, "waiting": waiting}


def test_the_status_page_in_a_browser_shows_every_build_where_it_is_and_no_secret(
        world, kube, jenkins_fake, tmp_path, caplog):
    builds = busy_cluster(world, kube, jenkins_fake)
    # An error text that quoted a token (as a proxy's or Jenkins' message might) is blanked.
    state(world).update_build(builds["failing"], error=ERROR_WITH_TOKEN)
    # As workers.engine.blocked_builds parks a build Jenkins holds back.
    state(world).update_build(builds["waited"], parked_at="1",
                              wait_detail="Build #1 is already in progress (ETA: N/A)")
    # The kubelet retries the placed build's image pull (a registry's 429): the worker's
    # watch notes the error in the build's record (workers.agent_starts.pulls).
    placed_agent = state(world).get_build(builds["waited"])["agent"]
    kube.image_pull_backoff(NAMESPACE, placed_agent, reason="ErrImagePull",
                            error=PULL_ERROR_WITH_USERINFO)
    until(world, lambda: state(world).get_build(builds["waited"]).get("pull_error"))
    # nor is the URL's password kept in the record or the worker's log
    assert PULL_PASSWORD not in state(world).get_build(builds["waited"])["pull_error"]
    assert not [r for r in caplog.records if PULL_PASSWORD in str(vars(r))]
    running = state(world).get_build(builds["running"])
    secrets = [GITLAB_TOKEN, PULL_PASSWORD, JENKINS_TOKEN, jenkins_fake.token,
               *(node.secret for node in jenkins_fake.nodes.values())]
    assert jenkins_fake.nodes[running["agent"]].secret in secrets

    with serve_app(world) as base:
        html = dump_dom(f"{base}/status", tmp_path)
        shot = screenshot(f"{base}/status", tmp_path / "status.png", tmp_path)
        raw = urllib.request.urlopen(f"{base}/status", timeout=10).read().decode()
    print(f"status page screenshot: {shot}")
    assert shot.stat().st_size > 20_000  # a page was drawn, not a blank

    page = parse(html)
    assert '<meta http-equiv="refresh" content="10">' in raw
    assert "script" not in page.elements  # no JavaScript, and the hostile ref stays text
    header, *in_flight = page.tables["in-flight-builds"]
    rows = [dict(zip(header, row)) for row in in_flight]
    by_ref = {r["Ref"]: r for r in rows}
    assert set(by_ref) == {"refs/heads/main", HOSTILE_REF}  # the running and the placed one
    live = next(r for r in rows
                if r["Node"] == running["node"] and r["Stage"].startswith("started"))
    assert live["Project"] == running["project"] and live["Job"] == "build"
    assert live["CPU"] == "0.9" and live["Memory"] == "0.75 GiB"  # the build's size
    assert by_ref[HOSTILE_REF]["Stage"].startswith("placed")
    assert "waiting in Jenkins: Build #1 is already in progress (ETA: N/A)" in \
        by_ref[HOSTILE_REF]["Stage"]
    pulling = by_ref[HOSTILE_REF]["Stage"].split("image pull failing for ", 1)[1]
    assert re.match(r"\d+s, the kubelet retries it: ErrImagePull: failed to copy: ", pulling)
    assert "429 Too Many Requests" in pulling and "https://[redacted]@registry-1" in pulling
    assert len(pulling) < 400 and pulling.endswith("...")  # cut at ERROR_SHOWN_CHARS
    assert "robot" not in pulling  # the user name goes with the password
    assert "pull failing" not in by_ref["refs/heads/main"]["Stage"]  # the running one pulled

    header, *waiting = page.tables["waiting-builds"]
    assert len(waiting) == 1
    row = dict(zip(header, waiting[0]))
    assert row["Why"].startswith("waiting for capacity: insufficient cpu, 1 node needed")
    assert "no node has 1 CPU" in row["Why"] or "lack cpu" in row["Why"]

    header, *failures = page.tables["failed-builds"]
    assert len(failures) == 1
    failure = dict(zip(header, failures[0]))
    assert failure["Reason"].startswith("ImagePullBackOff")
    assert "[hidden]" in failure["Reason"] and GITLAB_TOKEN not in failure["Reason"]

    header, *nodes = page.tables["node-table"]
    free = {r[0]: dict(zip(header, r)) for r in nodes}
    assert set(free) == {"node-a", "node-b"}
    assert {f["Free CPU"] for f in free.values()} == {"0"}
    figures = {r[0]: r[1] for r in page.tables["capacity-figures"]}
    assert figures["Nodes needed"] == "1"
    assert figures["Shortfall"] == "1 CPU, 1.00 GiB"

    for secret in secrets:
        assert secret not in html and secret not in raw


def test_with_an_admin_port_the_page_is_there_and_the_public_port_answers_404(
        world, kube, jenkins_fake, tmp_path, redis_url):
    builds = busy_cluster(world, kube, jenkins_fake)
    public, admin = free_port(), free_port()
    env = web_env(redis_url, CI_AUTOSCALER_BIND=f"127.0.0.1:{public}",
                  CI_AUTOSCALER_ADMIN_BIND=f"127.0.0.1:{admin}",
                  CI_AUTOSCALER_CONFIG=str(tmp_path / "config.yaml"),
                  PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    with web_process(GUNICORN, env, public, tmp_path / "web.log"):
        html = dump_dom(f"http://127.0.0.1:{admin}/status", tmp_path)
        metrics = get(f"http://127.0.0.1:{admin}/metrics")
        answers = {path: get(f"http://127.0.0.1:{public}{path}")
                   for path in ("/status", "/metrics", "/healthz", "/no-such-page")}
        # The Host header does not choose the port: the listener that took the request does.
        spoofed = get(f"http://127.0.0.1:{public}/status", host=f"127.0.0.1:{admin}")
        webhook_on_admin = get(f"http://127.0.0.1:{admin}/webhooks/gitlab", data=b"{}")
        webhook_on_public = get(f"http://127.0.0.1:{public}/webhooks/gitlab", data=b"{}")
    page = parse(html)
    rows = page.tables["in-flight-builds"][1:]
    assert any(state(world).get_build(builds["running"])["node"] in row for row in rows)
    assert len(page.tables["waiting-builds"]) == 2  # the header and the waiting build
    assert metrics[0] == 200 and "ci_autoscaler_build_stage_seconds_bucket" in metrics[1]
    assert answers["/status"][0] == answers["/metrics"][0] == 404
    # the very 404 of a path that does not exist: the public port does not tell there is more
    assert answers["/status"] == answers["/metrics"] == answers["/no-such-page"]
    assert json.loads(answers["/status"][1])["error"] == "not_found"
    assert answers["/healthz"][0] == 200
    assert spoofed[0] == 404
    assert webhook_on_admin[0] == 404
    assert webhook_on_public[0] == 401  # served there: no token, refused


def test_a_fresh_web_process_on_an_empty_redis_exports_waiting_needed_and_short_as_0(
        own_redis, tmp_path):
    port = free_port()
    env = web_env(own_redis.url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}",
                  PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    with web_process(GUNICORN, env, port, tmp_path / "web.log"):
        code, text = get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    for reason in ("cap", "insufficient_cpu", "insufficient_memory", "no_matching_node"):
        assert values["ci_autoscaler_builds_waiting", (("reason", reason),)] == 0
    for name in ("ci_autoscaler_nodes_needed", "ci_autoscaler_capacity_shortfall_cores",
                 "ci_autoscaler_capacity_shortfall_bytes",
                 "ci_autoscaler_builds_waiting_for_capacity"):
        assert values[name, ()] == 0, name
    assert values["ci_autoscaler_capacity_state_age_seconds", ()] == float("inf")


def get(url: str, *, host: str | None = None, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_web_refuses_an_admin_port_that_is_the_public_one(redis_url):
    port = free_port()
    env = web_env(redis_url, CI_AUTOSCALER_BIND=f"127.0.0.1:{port}",
                  CI_AUTOSCALER_ADMIN_BIND=f"0.0.0.0:{port}")
    result = subprocess.run([sys.executable, "-c", "import service.wsgi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "the admin port needs one of its own" in result.stderr


class _Tags(HTMLParser):
    """A page's structure: its tags, with their attributes' names, in order."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, tuple(name for name, _ in attrs)))

    def handle_endtag(self, tag):
        self.tags.append(("/" + tag,))


@pytest.mark.parametrize("token", ["a", "td", "div", "t&k"])
def test_a_short_token_is_blanked_in_the_data_and_leaves_the_page_whole(redis_url, token):
    """A webhook token that is also a word of the page's HTML (a, td, div): the page blanked
    every secret in the whole rendered text, tags included, so "<td>" became "<[hidden]>" and
    "<head>" "<he[hidden]d>", a page no browser could read. The data (what Redis holds) is
    blanked, as before, and the template's own text is left whole."""
    whole = make_app(redis_url)  # the suite's tokens: found nowhere in the page
    short = make_app(redis_url, jenkins_webhook_token=token)
    ref = f"refs/heads/{token}-fix"
    state(whole).update_build("status-short-token", status="failed", project="team/app",
                              ref=ref, job="build", template="small",
                              fail_reason="start_failed", error=f"refused: token {token}-fix")
    expected = whole.test_client().get("/status").get_data(as_text=True)
    answer = short.test_client().get("/status")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert escape(ref) in expected  # the row is on the page
    assert _Tags(html).tags == _Tags(expected).tags
    assert "[hidden]-fix" in html
    assert f"{token}-fix" not in html and escape(f"{token}-fix") not in html  # as printed


def test_a_password_in_a_url_of_a_wait_detail_is_never_on_the_page(redis_url):
    """Jenkins' or the cluster's reason a build waits is shown as it was told (wait_detail),
    blanked of the configured secrets only: a URL in it with a user:password@ (a Jenkins URL
    given as https://user:token@host, an agent URL, a proxy's) showed the password to whoever
    reads /status. The page drops it as the commit status and the cut fields do
    (core.redaction)."""
    app = make_app(redis_url)
    detail = ("Waiting for next available executor: agent could not reach "
              "https://ci-bot:wait-s3cret-pw@jenkins.example.com/computer/agent-1/")
    ctx = app.extensions["ci_autoscaler"]
    ctx.state.update_build("status-url-password", status="waiting", project="team/app",
                           ref="refs/heads/main", job="build", template="small",
                           wait_reason="cap", wait_detail=detail, parked_at="1")
    ctx.capacity.add_waiting("status-url-password", 1.0)
    answer = app.test_client().get("/status")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert "jenkins.example.com/computer/agent-1/" in html  # the detail is on the page
    assert "wait-s3cret-pw" not in html and "ci-bot:" not in html
