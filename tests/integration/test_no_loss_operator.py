"""Issue 16 ("no push is ever lost") checked as an operator would, through the Procfile's three
processes (web under gunicorn, `ci-autoscaler worker`, `ci-autoscaler reconcile`), configured
as the README says, on real redis-server processes: Redis outages of several kinds while GitLab
sends what it sends (pushes, tag pushes, deletions, merge requests, a person's "Resend") and
Jenkins reports builds in flight. Every delivery gets 2xx (or a 4xx/503 with a JSON reason
where the README says so), and every push is built exactly once.

GitLab's behaviour (REALITY.md, "GitLab webhooks"): it never re-sends a failed delivery by
itself; "Resend" reuses the `Idempotency-Key` (GitLab 17.4+), while older GitLab sends only
`X-Gitlab-Event-UUID`. The Jenkins Notification plugin ignores our answer.
"""

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG, fixture, fixture_bytes
from tests.support.procfile import GITLAB_TOKEN, ROOT, running_stack
from tests.support.redis_server import RedisServer
from workers.core.routing import AGENT_PARAMETER

NAMESPACE = "ci-agents"
ZERO = "0" * 40
PUSH = "gitlab_push_real_lrz.json"


def _cluster(kube) -> None:
    for node in ("node-a", "node-b"):  # the example's template selects Linux nodes
        kube.add_node(node, cpu="16", memory="64Gi", labels={"kubernetes.io/os": "linux"})
        kube.set_node_usage(node, cpu="500m", memory="2Gi")
    kube.add_namespace(NAMESPACE)


def _push(sha: str, ref: str = "refs/heads/main", **change) -> bytes:
    return json.dumps(fixture(PUSH) | {"after": sha, "checkout_sha": sha, "ref": ref}
                      | change).encode()


def _sha(n: int) -> str:
    return f"{n:040x}"


def gitlab(stack, body: bytes, event: str, *, key: str | None,
           event_uuid: str | None = None) -> tuple[int, dict]:
    """A delivery with the headers GitLab 17.x sends (REALITY.md): a "Resend" keeps the
    Idempotency-Key; `key=None` is a GitLab before 17.4, which sends only the event UUID."""
    headers = {"Content-Type": "application/json", "User-Agent": "GitLab/17.6.1",
               "X-Gitlab-Event": event, "X-Gitlab-Token": GITLAB_TOKEN,
               "X-Gitlab-Instance": "https://gitlab.lrz.de",
               "X-Gitlab-Webhook-UUID": "0b7d3b1e-3c2a-4d57-9a51-5c2b2d0b8f10",
               "X-Gitlab-Event-UUID": event_uuid or str(uuid.uuid4())}
    if key is not None:
        headers["Idempotency-Key"] = key
    status, raw = stack.request("/webhooks/gitlab", body, headers)
    return status, json.loads(raw or b"{}")


def built(jenkins_fake, sha: str) -> int:
    return len(jenkins_fake.build_with("GIT_COMMIT", sha))


def settled(stack, conn: redis.Redis) -> bool:
    """Nothing spooled, nothing in the intake or on RQ's queue: every push taken so far has
    been turned into its build (or found a duplicate)."""
    status, text = stack.request("/metrics")
    metrics = text.decode()
    spooled = [line for line in metrics.splitlines()
               if line.startswith("ci_autoscaler_spool_events") and not line.endswith(" 0.0")]
    try:
        queued = sum(conn.llen(k) for k in conn.scan_iter("*intake*", _type="list")) \
            + sum(conn.llen(k) for k in conn.scan_iter("rq:queue:*", _type="list"))
    except redis.RedisError:
        return False
    return status == 200 and not spooled and queued == 0


def restart_web(stack) -> None:
    """The web's Procfile line started again, as a process manager restarts a dead process."""
    command = next(line.split(":", 1)[1].strip() for line in
                   (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    with (stack.logs / "web.log").open("a") as log:
        stack.procs["web"] = subprocess.Popen(
            ["sh", "-c", command], cwd=ROOT, env=stack.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(stack.answers, timeout=30, what="the restarted web answering")


def kill_web(stack) -> None:
    """SIGKILL to the web's whole process group: gunicorn's master and every worker, at once,
    as the kernel's OOM killer or a node's loss would."""
    os.killpg(stack.procs["web"].pid, signal.SIGKILL)
    stack.procs["web"].wait(10)


@pytest.fixture
def aof_redis(tmp_path):
    """A redis-server with AOF on, as the chart runs it: stopped and started again it keeps
    its data (README, "Redis durability")."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    yield server
    server.stop()


def test_outage_mix_of_gitlab_events_resends_and_jenkins_notifications(
        aof_redis, kube, jenkins_fake, tmp_path):
    _cluster(kube)
    conn = redis.Redis.from_url(aof_redis.url)
    with running_stack(redis_url=aof_redis.url, kube=kube, jenkins_fake=jenkins_fake,
                       config=EXAMPLE_CONFIG, namespace=NAMESPACE, logs=tmp_path,
                       WEB_CONCURRENCY="2", CI_AUTOSCALER_LOST_EVENT_SECONDS="2") as stack:
        # A build in flight before the outage: queued, its agent connected, STARTED.
        assert gitlab(stack, _push(_sha(1)), "Push Hook", key="k-1")[0] == 202
        [first] = wait_until(lambda: jenkins_fake.build_with("GIT_COMMIT", _sha(1)),
                             timeout=60, what="the first build")
        agent = first.parameters[AGENT_PARAMETER]
        wait_until(lambda: agent in jenkins_fake.nodes, timeout=60, what="its agent")
        jenkins_fake.connect_agent(agent)
        jenkins_fake.dispatch()
        assert stack.jenkins(jenkins_fake.notification(first, "STARTED"))[0] == 200

        aof_redis.stop()
        answers = {}
        answers["push"] = gitlab(stack, _push(_sha(2)), "Push Hook", key="k-2")
        answers["resend"] = gitlab(stack, _push(_sha(2)), "Push Hook", key="k-2")
        answers["old-gitlab"] = gitlab(stack, _push(_sha(3), ref="refs/heads/dev"),
                                       "Push Hook", key=None, event_uuid="e-3")
        answers["old-gitlab resend"] = gitlab(stack, _push(_sha(3), ref="refs/heads/dev"),
                                              "Push Hook", key=None, event_uuid="e-3")
        tag = fixture("gitlab_tag_push_create_real_lrz.json")
        answers["tag"] = gitlab(stack, fixture_bytes("gitlab_tag_push_create_real_lrz.json"),
                                "Tag Push Hook", key="k-tag")
        answers["tag delete"] = gitlab(
            stack, fixture_bytes("gitlab_tag_push_delete_real_lrz.json"), "Tag Push Hook",
            key="k-tag-del")
        answers["branch delete"] = gitlab(
            stack, _push(ZERO, ref="refs/heads/dev", before=_sha(3), checkout_sha=None,
                         commits=[], total_commits_count=0), "Push Hook", key="k-del")
        for name in ("gitlab_merge_request_open_real_lrz.json",
                     "gitlab_merge_request_merge_real_lrz.json"):
            answers[name] = gitlab(stack, fixture_bytes(name), "Merge Request Hook",
                                   key=f"k-{name}")
        answers["bad json"] = gitlab(stack, b"{not json", "Push Hook", key="k-bad")
        jenkins_fake.finish_build(first.queue_id, "SUCCESS")
        # The plugin sends COMPLETED and FINALIZED together, and ignores our answer.
        answers["COMPLETED"] = stack.jenkins(jenkins_fake.notification(first, "COMPLETED"))
        answers["FINALIZED"] = stack.jenkins(jenkins_fake.notification(first, "FINALIZED"))
        print({name: (status, body.get("status")) for name, (status, body) in answers.items()})

        assert answers["push"][0] == 202 and answers["push"][1]["status"] == "spooled"
        assert answers["resend"][0] == 200 and answers["resend"][1]["status"] == "duplicate"
        assert answers["old-gitlab"][1]["status"] == "spooled"
        assert answers["old-gitlab resend"][1]["status"] == "duplicate"
        assert answers["tag"][0] == 202
        for name in ("tag delete", "branch delete", "gitlab_merge_request_open_real_lrz.json",
                     "gitlab_merge_request_merge_real_lrz.json"):
            assert answers[name][0] == 200 and answers[name][1]["status"] == "ignored", name
        assert answers["bad json"][0] == 400 and answers["bad json"][1]["reason"]
        # README, "Jenkins notifications": without Redis they are answered 503 (the plugin
        # ignores it) and the reconcile pass asks Jenkins about the build instead.
        assert all(status < 500 or name in ("COMPLETED", "FINALIZED")
                   for name, (status, _) in answers.items()), answers

        aof_redis.start()
        # A resend once Redis is back, of a delivery answered from the spool: the web may take
        # it before its drainer moves the spooled row (202, and the row is then a duplicate)
        # or after (200 duplicate); either way it is built once (below).
        assert gitlab(stack, _push(_sha(2)), "Push Hook", key="k-2")[0] in (200, 202)
        for sha in (_sha(2), _sha(3), tag["checkout_sha"]):
            wait_until(lambda: built(jenkins_fake, sha), timeout=60, what=f"build of {sha}")
        assert gitlab(stack, _push(_sha(3), ref="refs/heads/dev"), "Push Hook", key=None,
                      event_uuid="e-3")[0] == 200
        wait_until(lambda: settled(stack, conn), timeout=30, what="spool and intake empty")
        counts = {sha[-4:]: built(jenkins_fake, sha)
                  for sha in (_sha(1), _sha(2), _sha(3), tag["checkout_sha"])}
        print("builds per commit", counts)
        assert set(counts.values()) == {1}, counts
        # The build whose COMPLETED came during the outage has its agent released in the end.
        wait_until(lambda: agent not in jenkins_fake.nodes, timeout=60,
                   what="the agent of the build that completed during the outage released")
