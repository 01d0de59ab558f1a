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
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG, fixture, fixture_bytes
from tests.support.procfile import GITLAB_TOKEN, running_stack
from tests.support.redis_server import RedisServer
from tests.support.sentinel import MASTER_NAME, SentinelSet
from workers.adapters.redis_state import RedisState
from workers.core.routing import AGENT_PARAMETER
from workers.engine.intake import PROVISION_TASK, Mover, record

NAMESPACE = "ci-agents"
ZERO = "0" * 40
PUSH = "gitlab_push_real_lrz.json"


def _cluster(kube) -> None:
    """Room for every build at once (a build waiting for room is not triggered in Jenkins),
    under the example's maxAgents (50)."""
    for node in ("node-a", "node-b"):  # the example's template selects Linux nodes
        kube.add_node(node, cpu="64", memory="256Gi", labels={"kubernetes.io/os": "linux"})
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
    """Nothing spooled, nothing in the intake or held by a mover, no provision job waiting:
    every push taken so far has been turned into its build (or found a duplicate). Other
    jobs (the reconcile pass's) may come and go on RQ's queue."""
    status, text = stack.request("/metrics")
    spooled = [line for line in text.decode().splitlines()
               if line.startswith("ci_autoscaler_spool_events") and not line.endswith(" 0.0")]
    try:
        intake = sum(conn.llen(k) for k in conn.scan_iter("cia:intake*", _type="list")
                     if k != b"cia:intake:failed")
        provisions = [job for job in conn.lrange("rq:queue:ci-autoscaler", 0, -1)
                      if b"provision" in (conn.hget(b"rq:job:" + job, "description") or b"")]
    except redis.RedisError:
        return False
    return status == 200 and not spooled and intake == 0 and not provisions


def restart(stack, name: str) -> None:
    """A Procfile line started again, as a process manager restarts a dead process."""
    stack.start_line(name)
    if name == "web":
        wait_until(stack.answers, timeout=30, what="the restarted web answering")


def kill(stack, name: str) -> None:
    """SIGKILL to a process's whole group (for the web: gunicorn's master and every worker at
    once), as the kernel's OOM killer or a node's loss would."""
    os.killpg(stack.procs[name].pid, signal.SIGKILL)
    stack.procs[name].wait(10)


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
                       WEB_CONCURRENCY="2") as stack:
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
        # The plugin sends QUEUED, then COMPLETED and FINALIZED together, and ignores our
        # answer (REALITY.md): one lost is not sent again.
        answers["QUEUED"] = stack.jenkins(jenkins_fake.notification(first, "QUEUED"))
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
        assert answers["QUEUED"][0] == 200
        assert answers["COMPLETED"] == (202, {"status": "spooled"})
        assert answers["FINALIZED"][0] in (200, 202)
        assert all(status < 500 for status, _ in answers.values()), answers

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
        # The build whose COMPLETED came during the outage has its agent released, from that
        # notification (the reconcile pass would ask Jenkins only after
        # CI_AUTOSCALER_LOST_EVENT_SECONDS, 60 s).
        wait_until(lambda: agent not in jenkins_fake.nodes, timeout=20,
                   what="the agent of the build that completed during the outage released")


def test_web_killed_after_spooled_answers_redis_back_empty_and_worker_killed_in_the_drain(
        own_redis, kube, jenkins_fake, tmp_path):
    """The web SIGKILLed right after its spooled 202s and started again while Redis is still
    away; Redis then comes back with an empty dataset (restarted without its AOF), and the
    worker is SIGKILLed while the drained pushes become builds, and started again."""
    _cluster(kube)
    conn = redis.Redis.from_url(own_redis.url)
    shas = [_sha(100 + n) for n in range(12)]
    with running_stack(redis_url=own_redis.url, kube=kube, jenkins_fake=jenkins_fake,
                       config=EXAMPLE_CONFIG, namespace=NAMESPACE, logs=tmp_path,
                       WEB_CONCURRENCY="2",
                       # a killed worker's half-done provisions are taken over once their
                       # lease lapses (README, CI_AUTOSCALER_PROVISION_LEASE_SECONDS)
                       CI_AUTOSCALER_PROVISION_LEASE_SECONDS="6") as stack:
        # Redis goes away under a worker at work, as in an operator's running stack: RQ's
        # worker registered and its loop starting. (One Redis left as it started, the case
        # this test met now and then under load, is test_worker_redis_away.py's: the worker
        # exited then, and nothing built the spooled pushes.)
        wait_until(lambda: "Listening on" in (stack.logs / "worker.log").read_text(),
                   timeout=60, what="the worker's RQ loop started")
        own_redis.stop()
        for n, sha in enumerate(shas[:10]):  # spread over both gunicorn workers
            status, body = gitlab(stack, _push(sha, ref=f"refs/heads/b{n}"), "Push Hook",
                                  key=f"kill-{n}")
            assert (status, body["status"]) == (202, "spooled"), body
        kill(stack, "web")
        restart(stack, "web")
        assert stack.request("/readyz")[0] == 200  # the spool takes pushes: in the Service
        # A Resend of a delivery the killed web spooled, and a new push, to the new web.
        assert gitlab(stack, _push(shas[0], ref="refs/heads/b0"), "Push Hook",
                      key="kill-0")[1]["status"] == "duplicate"
        assert gitlab(stack, _push(shas[10], ref="refs/heads/b10"), "Push Hook",
                      key="kill-10")[0] == 202

        # The worker is killed while it triggers a drained push's build: Jenkins queues that
        # build, but its answer never reaches the worker.
        arrived, release = jenkins_fake.hold_next("/job/build/buildWithParameters")
        own_redis.start()  # no AOF: an empty dataset
        assert arrived.wait(60), "a drained push's trigger"
        kill(stack, "worker")
        release.set()
        assert gitlab(stack, _push(shas[11], ref="refs/heads/b11"), "Push Hook",
                      key="kill-11")[0] == 202
        restart(stack, "worker")
        for n, sha in enumerate(shas):
            # a full run under load once met the last push unbuilt after 90 s: its lines and
            # the worker's last ones tell where it stopped
            wait_until(lambda: built(jenkins_fake, sha), timeout=90, what=lambda: (
                f"build of {sha} (refs/heads/b{n}): " + "".join(
                    line for line in stack.text().splitlines(keepends=True)
                    if f'refs/heads/b{n}"' in line or f"kill-{n}" in line)
                + "".join((stack.logs / "worker.log").read_text().splitlines(
                    keepends=True)[-40:])))
        wait_until(lambda: settled(stack, conn), timeout=30, what="spool and intake empty")
        counts = [built(jenkins_fake, sha) for sha in shas]
        print("builds per push", counts)
        assert counts == [1] * len(shas)


def test_redis_full_spool_full_and_a_resend_of_the_refused_push(
        aof_redis, kube, jenkins_fake, tmp_path):
    """Redis at maxmemory (noeviction: it refuses writes, README "Redis memory"): pushes go to
    the spool. Then Redis away with the spool at its bound: 503 with a JSON reason, nothing
    spooled lost, and the person's Resend of the refused push, once Redis is back, builds it."""
    _cluster(kube)
    conn = redis.Redis.from_url(aof_redis.url)
    conn.config_set("maxmemory-policy", "noeviction")
    with running_stack(redis_url=aof_redis.url, kube=kube, jenkins_fake=jenkins_fake,
                       config=EXAMPLE_CONFIG, namespace=NAMESPACE, logs=tmp_path,
                       CI_AUTOSCALER_SPOOL_MAX_EVENTS="3") as stack:
        conn.config_set("maxmemory", 1)  # every write refused: "OOM command not allowed"
        status, body = gitlab(stack, _push(_sha(200)), "Push Hook", key="full-0")
        assert (status, body["status"]) == (202, "spooled"), body
        conn.config_set("maxmemory", 0)
        wait_until(lambda: built(jenkins_fake, _sha(200)), timeout=60, what="the OOM push built")

        aof_redis.stop()
        answers = [gitlab(stack, _push(_sha(201 + n), ref=f"refs/heads/f{n}"), "Push Hook",
                          key=f"full-{n + 1}") for n in range(4)]
        assert [a[0] for a in answers] == [202, 202, 202, 503], answers
        assert answers[3][1]["status"] == "unavailable" and "full" in answers[3][1]["reason"]
        aof_redis.start()
        status, _ = gitlab(stack, _push(_sha(204), ref="refs/heads/f3"), "Push Hook",
                           key="full-4")  # the Resend: same Idempotency-Key
        assert status == 202
        for n in range(5):
            wait_until(lambda: built(jenkins_fake, _sha(200 + n)), timeout=60,
                       what=f"build {n}")
        wait_until(lambda: settled(stack, conn), timeout=30, what="spool and intake empty")
        assert [built(jenkins_fake, _sha(200 + n)) for n in range(5)] == [1] * 5

        # Redis hung (SIGSTOP: a stalled node, a long fork) rather than gone: each push waits
        # CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS (2 s, within GitLab's 10 s) and is spooled; the
        # writes Redis took before it stalled run when it goes on. Each is built once.
        pid = int((aof_redis.directory / "redis.pid").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(3) as pool:
                hung = list(pool.map(lambda n: gitlab(
                    stack, _push(_sha(210 + n), ref=f"refs/heads/h{n}"), "Push Hook",
                    key=f"hung-{n}"), range(3)))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [status for status, _ in hung] == [202] * 3, hung
        for n in range(3):
            wait_until(lambda: built(jenkins_fake, _sha(210 + n)), timeout=60,
                       what=f"hung push {n}")
        wait_until(lambda: settled(stack, conn), timeout=30, what="spool and intake empty")
        assert [built(jenkins_fake, _sha(210 + n)) for n in range(3)] == [1] * 3


def test_an_unusable_spool_directory_answers_503_with_a_reason_only_while_redis_is_away(
        own_redis, kube, jenkins_fake, tmp_path):
    _cluster(kube)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with running_stack(redis_url=own_redis.url, kube=kube, jenkins_fake=jenkins_fake,
                       config=EXAMPLE_CONFIG, namespace=NAMESPACE, logs=tmp_path,
                       CI_AUTOSCALER_SPOOL_DIR=str(blocker / "spool")) as stack:
        assert gitlab(stack, _push(_sha(300)), "Push Hook", key="u-0")[0] == 202
        # built before Redis goes: this Redis keeps no AOF, and a restart empties it
        wait_until(lambda: built(jenkins_fake, _sha(300)), timeout=60, what="the first build")
        own_redis.stop()
        status, body = gitlab(stack, _push(_sha(301), ref="refs/heads/u1"), "Push Hook",
                              key="u-1")
        assert status == 503 and body["status"] == "unavailable" and body["reason"], body
        own_redis.start()
        assert gitlab(stack, _push(_sha(301), ref="refs/heads/u1"), "Push Hook",
                      key="u-1")[0] == 202
        wait_until(lambda: built(jenkins_fake, _sha(301)), timeout=60, what="the resent push")


def test_sentinel_failover_during_a_burst_with_resends_through_the_procfile(
        kube, jenkins_fake, tmp_path):
    """The Procfile's processes given REDIS_SENTINELS and REDIS_SENTINEL_MASTER alone, as the
    README's settings table says (CI_AUTOSCALER_REDIS_MIN_REPLICAS: "default 0; 1 with
    Sentinel"); in the middle of a burst of pushes sent 8 at a time (GitLab sends each
    project's hooks concurrently), some of them Resent, the replica stalls (SIGSTOP: a
    lagging replica, a network blip), then the master is SIGKILLed and the replica, going on
    again, is promoted without what it missed; the old master comes back (its pod restarted)
    and the sentinels make it a replica. Every delivery 2xx, every push built once."""
    _cluster(kube)
    sentinels = SentinelSet(tmp_path / "sentinel").start()  # its replica in sync
    shas = [_sha(400 + n) for n in range(40)]
    killed = threading.Event()
    try:
        with running_stack(redis_url="redis:///0", kube=kube, jenkins_fake=jenkins_fake,
                           config=EXAMPLE_CONFIG, namespace=NAMESPACE, logs=tmp_path,
                           WEB_CONCURRENCY="2", REDIS_SENTINELS=sentinels.addresses,
                           REDIS_SENTINEL_MASTER=MASTER_NAME) as stack:
            def send(n: int) -> tuple[int, str]:
                if n == 10:
                    sentinels.replica.proc.send_signal(signal.SIGSTOP)
                if n == 20:
                    sentinels.master.kill()
                    sentinels.replica.proc.send_signal(signal.SIGCONT)
                    killed.set()
                status, body = gitlab(stack, _push(shas[n], ref=f"refs/heads/s{n}"),
                                      "Push Hook", key=f"s-{n}")
                if n % 7 == 0:  # a person's Resend of it, at once
                    again, _ = gitlab(stack, _push(shas[n], ref=f"refs/heads/s{n}"),
                                      "Push Hook", key=f"s-{n}")
                    status = max(status, again)
                return status, body.get("status", "")

            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(send, range(len(shas))))
            statuses = [status for status, _ in answers]
            print("answers", {s: statuses.count(s) for s in set(statuses)},
                  "spooled", sum(1 for _, word in answers if word == "spooled"))
            assert killed.is_set() and all(200 <= status < 300 for status in statuses), answers
            wait_until(lambda: sentinels.master_port() == sentinels.replica.port, timeout=30,
                       what="the replica promoted")
            # The old master's pod back, empty, as the promoted one's replica (the chart's
            # Redis pods ask the sentinels whom to follow as they start).
            sentinels.master.replica_of = sentinels.replica.port
            sentinels.master.start()
            for sha in shas:
                wait_until(lambda: built(jenkins_fake, sha), timeout=90, what=f"build of {sha}")
            promoted = redis.Redis(port=sentinels.replica.port)
            wait_until(lambda: settled(stack, promoted), timeout=30,
                       what="spool and intake empty")
            counts = [built(jenkins_fake, sha) for sha in shas]
            print("builds per push", {c: counts.count(c) for c in set(counts)})
            assert counts == [1] * len(shas)
    finally:
        sentinels.stop()


def test_a_live_mover_makes_jobs_of_what_it_held_through_a_redis_error(redis_url, redis_conn):
    """What the failover above showed now and then: a push's record left on a running
    worker's claimed list (claimed, then a Redis error before its job was written), never
    built while that worker lived, its heartbeat keeping the reconcile pass's recovery away.
    Here the error is the job's own script failing on the real Redis (RQ's queue key of the
    wrong type), then mended."""
    state = RedisState(redis_conn)
    build = {"build_key": "gitlab-held-1", "agent_name": "build-held", "source": "gitlab",
             "project": "p/q", "ref": "refs/heads/main", "sha": "c" * 40, "user": "u",
             "job": "build", "template": "maven", "parameters": {}, "received_at": 1.0,
             "node_label": ""}
    redis_conn.set(state.queue.key, "not a list")  # RQ's RPUSH in the job's script fails
    mover = Mover(RedisState(redis.Redis.from_url(redis_url)), name="held", block_seconds=0.2)
    thread, stop = mover.start()
    try:
        assert state.intake.push(delivery_id="gitlab:held-1", mark=build["build_key"],
                                 record=record("gitlab:held-1", build), ttl_seconds=60)
        wait_until(lambda: state.intake.held("held"), timeout=10,
                   what="the record claimed, its job refused")
        redis_conn.delete(state.queue.key)  # Redis takes the job's writes again
        jobs = lambda: [j.kwargs["build"]["build_key"] for j in state.queue.get_jobs()  # noqa
                        if j.func_name == PROVISION_TASK]
        wait_until(jobs, timeout=10, what="the held record made a job")
        assert jobs() == ["gitlab-held-1"] and state.intake.held("held") == []
    finally:
        stop.set()
        thread.join(timeout=10)
