"""The Procfile's processes (web, worker, reconcile) with secrets of the shapes operators have:
a Jenkins API token as Jenkins makes them ("11" and 32 hex digits, no word a pattern knows), a
GitLab personal access token made before GitLab's glpat- prefix (20 characters), a Redis
password in REDIS_URL. Outside answers quote them (a front before GitLab answering a commit
status post 400 with a message that repeats the request's credential and a URL with
user:password@, Jenkins failing a node create with a page that does the same): no log line,
/status, /metrics, commit status or text RQ keeps in Redis shows any of them."""

import base64
import json
import urllib.error
import urllib.request
import uuid
import zlib

import redis
import yaml

from tests.support.gitlab_fake import GitLabFake
from tests.support.jenkins_fake import FREESTYLE_JOB, JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import GITLAB_TOKEN, JENKINS_TOKEN, running_stack
from tests.support.redis_server import RedisServer, free_port

NAMESPACE = "ci-agents-secrets"
PROJECT, PROJECT_ID = "team/app", 4242
GITLAB_API_TOKEN = "Zx81kq2PLm4Rt7vWn3Yb"  # a personal access token of GitLab < 14.5
REDIS_PASSWORD = "cobaltHarbor31"
CONFIG = {"routes": [{"project": "*", "ref": "refs/heads/*", "job": "build", "template": "t"}],
          "templates": {"t": {"cpu": {"min": "500m", "default": "500m", "max": "500m"},
                              "memory": {"min": "512Mi", "default": "512Mi",
                                         "max": "512Mi"}}}}


def _readable(value: bytes) -> str:
    try:
        value = zlib.decompress(value)  # RQ keeps a job's data and failure compressed
    except zlib.error:
        pass
    return value.decode("utf-8", "replace")


def _redis_text(client: redis.Redis) -> str:
    """Every key and value in Redis, as text: what `rq info`, RQ's dashboard or anyone with
    access to Redis reads (a failed job's exc_info, its Result)."""
    texts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values = {"string": lambda: [client.get(key)],
                  "hash": lambda: [v for kv in client.hgetall(key).items() for v in kv],
                  "list": lambda: client.lrange(key, 0, -1),
                  "set": lambda: list(client.smembers(key)),
                  "zset": lambda: client.zrange(key, 0, -1),
                  "stream": lambda: [v for _, fields in client.xrange(key)
                                     for kv in fields.items() for v in kv]}[kind]()
        texts += [_readable(key), *(_readable(v) for v in values if v is not None)]
    return "\n".join(texts)


def _get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()


def test_no_secret_of_the_processes_is_shown_when_outside_answers_quote_them(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    config = tmp_path / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = tmp_path / "logs"
    logs.mkdir()
    admin = free_port()
    sha = "ab" * 20
    try:
        with running_kube(tmp_path) as kube, JenkinsFake() as jenkins, GitLabFake() as gitlab:
            kube.add_namespace(NAMESPACE)
            kube.add_node("node-a", cpu="8", memory="32Gi")
            kube.set_node_usage("node-a", cpu="0", memory="0")
            jenkins.add_job("build", kind=FREESTYLE_JOB)
            gitlab.tokens[GITLAB_API_TOKEN] = {"api"}
            gitlab.add_project(PROJECT, project_id=PROJECT_ID)
            gitlab.push(PROJECT, "main", sha)
            # The Authorization python-jenkins sends, as a page repeating it quotes it
            # (requests.auth._basic_auth_str): the token's own text is not in it
            basic = base64.b64encode(f"{jenkins.user}:{jenkins.token}".encode()).decode()
            secrets = [jenkins.token, GITLAB_API_TOKEN, REDIS_PASSWORD, GITLAB_TOKEN,
                       JENKINS_TOKEN, basic]
            quoted = (f"refused: {url} PRIVATE-TOKEN {GITLAB_API_TOKEN} "
                      f"Basic {basic} ({jenkins.token})")
            assert len(quoted) < 200  # what of GitLab's message is kept (workers.adapters.gitlab)
            with running_stack(redis_url=url, kube=kube, jenkins_fake=jenkins, config=config,
                               namespace=NAMESPACE, logs=logs, GITLAB_URL=gitlab.url,
                               GITLAB_API_TOKEN=GITLAB_API_TOKEN,
                               CI_AUTOSCALER_ADMIN_BIND=f"127.0.0.1:{admin}",
                               CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS="3600") as stack:
                # Ci::CreateCommitStatusService answers a failure inside GitLab 400 with its
                # message (tests/support/gitlab_fake.py fail_status_posts); here the message
                # quotes what it was sent. Jenkins' 500 page does too, then its 400 on the
                # trigger (a form refused: hudson/model/AbstractModelObject/error.jelly) fails
                # the job for good, whose failure RQ keeps.
                gitlab.fail_status_posts(5, quoted)
                jenkins.fail_next(500, times=2, path_prefix="/computer/doCreateItem",
                                  body=quoted)
                jenkins.fail_next(400, times=3, path_prefix="/job/build/build", body=quoted)
                push = fixture("gitlab_push_real_lrz.json") | {
                    "ref": "refs/heads/main", "after": sha, "checkout_sha": sha,
                    "project_id": PROJECT_ID}
                push["project"] = push["project"] | {"id": PROJECT_ID,
                                                     "path_with_namespace": PROJECT}
                status, answer = stack.gitlab(json.dumps(push).encode(), "Push Hook",
                                              str(uuid.uuid4()))
                assert status == 202, answer
                client = redis.Redis.from_url(url)
                wait_until(lambda: client.hget(f"cia:build:{answer['build_key']}", "status")
                           == b"failed", timeout=60, what="the build failed")
                wait_until(lambda: gitlab.answered(400, "/statuses/") >= 1, timeout=60,
                           what=lambda: f"a status post refused: "
                           f"{gitlab.status_history(PROJECT)}")
                wait_until(lambda: "commit status not taken by GitLab" in stack.text(),
                           timeout=30, what="the refusal logged")
                pages = {path: _get(admin, path) for path in ("/status", "/metrics")}
                stored = _redis_text(client)
                posted = json.dumps(gitlab.projects[PROJECT].status_posts)
            text = stack.text()
    finally:
        server.stop()
    assert "commit status not taken by GitLab" in text and "[redacted]" in text
    shown = {"logs": text, **pages, "redis": stored, "commit statuses": posted}
    assert {where: [s for s in secrets if s in value] for where, value in shown.items()} \
        == {where: [] for where in shown}
