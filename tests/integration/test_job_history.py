"""Each job sized from its own history, on real parts (issue 21): real redis-server, kmock over
HTTP serving the agents' PodMetrics (metrics.k8s.io, as metrics-server does), the Jenkins
fake; the worker's own ClusterWatch samples the agents, RQ runs provision and release.

- Five builds of a job peaking near 1.2 GiB, on a template default of 4 GiB: the sixth's pod
  asks for about 1.4 GiB in total (p95 peak × 1.15, rounded up to 32 MiB: the peak is the
  pod's, the agent's JVM in it, so the build gets that less agentMemory).
- An OOMKilled build container raises the next build's memory to at least twice; with
  retryOnOOM the build is started again once, at that size, and only once.
- `ci-autoscaler recommend` prints the table, and `--json` parses.
"""

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_build_stages import notify, record
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_warm_claim_nodes import CORDONED, change_node
from tests.support.app import JENKINS_TOKEN, work
from tests.support.kmock_cluster import terminated
from tests.support.monitoring import wait_until
from service.app import create_app
from workers import runtime
from workers.engine import reconcile
from workers.core import commit_status
from workers.adapters.usage_store import UsageStore
from workers.core.pods import AGENT_CONTAINER
from workers.core.quantity import memory_bytes
from workers.core.routing import AGENT_PARAMETER
from workers.job_history.watch import LATE_TASK, OomWatch

NAMESPACE = "ci-agents"
GIB, MIB = 2**30, 2**20
AGENT_MEMORY = 256 * MIB  # the injected agent's share of the build container (agentMemory)
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: mvn}
templates:
  mvn:
    cpu: {min: 500m, default: "1", max: "4"}
    memory: {min: 512Mi, default: 4Gi, max: 16Gi}
    retryOnOOM: RETRY
"""
SAMPLE_SECONDS = 15  # the worker's metrics poll (0.2 s here) takes a new sample well within


@pytest.fixture(params=[False, True], ids=["plain", "retryOnOOM"])
def app(request, app_on_cluster):
    app = app_on_cluster(CONFIG.replace("RETRY", "true" if request.param else "false"),
                         namespace=NAMESPACE, CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                         nodes=(("node-a", "16", "6Gi"),))  # no headroom to grow a 4Gi default
    runtime.current()
    app.config["retry_on_oom"] = request.param
    return app


def oom_kill_seen(kube, agent: str) -> None:
    """The kubelet OOM-kills the agent's build container while it runs, and the worker's pod
    watch records the kill. Its pod has no other container, and restartPolicy Never: the
    kubelet sets its phase Failed (kubelet getPhase: every container terminated, one failed)."""
    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    runs = f"{runtime.current().settings.key_prefix}usage:run:{agent}"
    wait_until(lambda: runtime.current().state.redis.hget(runs, "oom_limit") is not None,
               timeout=SAMPLE_SECONDS, what="the OOM kill recorded by the pod watch")


def usage() -> UsageStore:
    rt = runtime.current()
    return UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)


def agent_container(kube, agent: str) -> dict:
    pod = kube.pod(NAMESPACE, agent)
    return next(c for c in pod["spec"]["containers"] if c["name"] == AGENT_CONTAINER)


def pod_memory(kube, agent: str) -> int:
    """What the agent's pod asks in total: its containers' memory requests (the init
    container's, the agent's at most, never raises it: workers.core.podsize)."""
    pod = kube.pod(NAMESPACE, agent)
    return sum(memory_bytes(c["resources"]["requests"]["memory"])
               for c in pod["spec"]["containers"])


def sampled(kube, agent: str, memories: list[str], cpu: str = "700m") -> None:
    """metrics-server's samples of the running agent, one per stamp; each is awaited in the
    run's record (the worker's poll writes it)."""
    # a running pod's (metrics-server serves none for a pod that is not Running: kmock_cluster)
    if (kube.pod(NAMESPACE, agent).get("status") or {}).get("phase") != "Running":
        kube.kubelet_status(NAMESPACE, agent, phase="Running")
    labels = kube.pod(NAMESPACE, agent)["metadata"]["labels"]
    runs = f"{runtime.current().settings.key_prefix}usage:cpu:{agent}"
    for i, memory in enumerate(memories):
        kube.set_pod_usage(NAMESPACE, agent, cpu=cpu, memory=memory, labels=labels,
                           timestamp=f"2024-01-01T00:00:{i:02d}Z")
        wait_until(lambda: runtime.current().state.redis.llen(runs) == i + 1,
                   timeout=SAMPLE_SECONDS, what=f"sample {i} of {agent} recorded")


def finish(app, jenkins_fake, key: str, result: str = "SUCCESS") -> None:
    rec = record(app, key)
    run = jenkins_fake.start_build(int(rec["queue_item"]))
    run = jenkins_fake.finish_build(run.queue_id, result)
    assert notify(app, rec["agent"], run, "COMPLETED") == 202
    work(app)


def build_once(app, kube, jenkins_fake, n: int, memories: list[str]) -> str:
    key = push(app.test_client(), n)
    work(app)
    assert record(app, key)["status"] == "triggered"
    sampled(kube, record(app, key)["agent"], memories)
    finish(app, jenkins_fake, key)
    return key


def test_five_builds_teach_the_sixth_its_size_and_an_oom_kill_doubles_it(
        app, kube, jenkins_fake, tmp_path):
    first = push(app.test_client(), 0)
    work(app)
    assert int(record(app, first)["memory_bytes"]) == 4 * GIB  # no history yet
    sampled(kube, record(app, first)["agent"], ["900Mi", "1200Mi", "1000Mi"])
    finish(app, jenkins_fake, first)
    for n in range(1, 5):
        build_once(app, kube, jenkins_fake, n, ["1100Mi", "1228Mi"])
    history = usage().history("build", "mvn")
    assert history.builds == 5

    sixth = push(app.test_client(), 5)
    work(app)
    rec = record(app, sixth)
    memory = int(rec["memory_bytes"])
    asked = pod_memory(kube, rec["agent"])  # about 1.15 x the pod's 1.2 GiB peak, no more
    assert 1.28 * GIB <= asked <= 1.48 * GIB, asked / GIB
    assert memory == asked - AGENT_MEMORY, (memory, asked)  # the agent's share inside
    assert rec["size_source"] == "history"
    status_page = app.test_client().get("/status").get_data(as_text=True)
    assert '<td class="size-source">history</td>' in status_page  # where its size came from
    container = agent_container(kube, rec["agent"])
    assert container["resources"]["requests"]["memory"] == f"{(memory + AGENT_MEMORY) // MIB}Mi"

    # The sixth build's container is OOM-killed while it runs (the kubelet's status).
    oom_kill_seen(kube, rec["agent"])
    finish(app, jenkins_fake, sixth, "FAILURE")
    history = usage().history("build", "mvn")
    assert history.oom_kills == 1
    # GitLab reads why: out of memory at the size it had (Jenkins' FAILURE kept as its result)
    ended = record(app, sixth)
    limit = memory + AGENT_MEMORY  # its container's, as the pod's spec has it
    assert (int(ended["oom_killed_bytes"]), ended["result"]) == (limit, "FAILURE"), ended
    shown = commit_status.wanted(ended)
    assert shown.state == "failed" and shown.description.startswith(
        f"build ran out of memory: OOM-killed at its {limit // MIB}Mi limit"), shown
    assert ("started again with more memory" in shown.description) == \
        app.config["retry_on_oom"]
    assert history.oom_floor_bytes >= 2 * memory
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "ci_autoscaler_oom_kills")
    assert {s.labels["template"]: s.value for s in family.samples
            if s.name.endswith("_total")} == {"mvn": 1.0}

    retries = [k for k in runtime.current().state.builds_since(0)
               if record(app, k).get("retry_of") == sixth]
    if app.config["retry_on_oom"]:
        assert len(retries) == 1
        work(app)  # the retry's provision
        retry = record(app, retries[0])
        assert retry["status"] == "triggered"
        assert int(retry["memory_bytes"]) >= 2 * memory
        assert record(app, sixth)["replaced_by"] == retries[0]
        # the same parameters, its own agent: one new Jenkins build, and only one
        triggered = jenkins_fake.build_with(AGENT_PARAMETER, retry["agent"])
        assert len(triggered) == 1
        assert triggered[0].parameters["GIT_COMMIT"] == \
            jenkins_fake.build_with(AGENT_PARAMETER, rec["agent"])[0].parameters["GIT_COMMIT"]
        # a COMPLETED delivered again releases nothing new and starts nothing more
        run = jenkins_fake.build_with(AGENT_PARAMETER, rec["agent"])[0]
        assert notify(app, rec["agent"], run, "COMPLETED") in (200, 202)
        work(app)
        assert [k for k in runtime.current().state.builds_since(0)
                if record(app, k).get("retry_of") == sixth] == retries
    else:
        assert retries == []
        seventh = push(app.test_client(), 6)
        work(app)
        assert int(record(app, seventh)["memory_bytes"]) >= 2 * memory
        assert record(app, seventh)["size_source"] == "oom"

    # What an operator sees: `ci-autoscaler recommend`, as a table and as JSON.
    env = {**os.environ}
    cli = [sys.executable, "-m", "service.cli", "recommend"]
    table = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["JOB", "TEMPLATE", "BUILDS"]
    assert row.split()[:3] == ["build", "mvn", "5"]  # the OOM-killed run is counted as a kill
    as_json = subprocess.run(cli + ["--json"], env=env, capture_output=True, text=True,
                             timeout=60)
    rows = json.loads(as_json.stdout)
    assert [(r["job"], r["template"], r["builds_seen"], r["oom_kills"]) for r in rows] == \
        [("build", "mvn", 5, 1)]
    assert rows[0]["recommended_memory_bytes"] >= 2 * memory
    assert rows[0]["default_memory_bytes"] == 4 * GIB


def test_history_off_keeps_the_template_default(app, kube, jenkins_fake, tmp_path,
                                                 monkeypatch):
    config = tmp_path / "off.yaml"
    config.write_text(CONFIG.replace("RETRY", "false") + "    history: off\n")
    monkeypatch.setenv("CI_AUTOSCALER_CONFIG", str(config))
    runtime.install(None)
    app = create_app()
    runtime.current()
    for n in range(5):
        build_once(app, kube, jenkins_fake, n, ["1228Mi"])
    sixth = push(app.test_client(), 5)
    work(app)
    assert int(record(app, sixth)["memory_bytes"]) == 4 * GIB
    assert "size_source" not in record(app, sixth)


def test_a_build_oom_killed_at_the_templates_most_memory_is_not_started_again(
        app_on_cluster, kube, jenkins_fake):
    """retryOnOOM starts the build again at a bigger size; one that had the template's most
    memory already would get the same size and be killed the same way: it is not retried
    (its OOM is still learned and counted)."""
    app = app_on_cluster(CONFIG.replace("max: 16Gi", "max: 4Gi").replace("RETRY", "true"),
                         namespace=NAMESPACE, CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                         nodes=(("node-a", "16", "16Gi"),))
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert int(rec["memory_bytes"]) == 4 * GIB  # the template's max
    oom_kill_seen(kube, rec["agent"])
    finish(app, jenkins_fake, key, "FAILURE")
    assert usage().history("build", "mvn").oom_kills == 1
    assert [k for k in runtime.current().state.builds_since(0)
            if record(app, k).get("retry_of") == key] == []
    assert "replaced_by" not in record(app, key)
    assert len(jenkins_fake.builds) == 1


def test_a_cpu_hint_leaves_the_memory_to_the_jobs_oom_kill(app_on_cluster, kube, jenkins_fake):
    """A route that hints CPU alone (`parameters: {CI_AUTOSCALER_CPU: "2"}`, as README's
    example): the hint wins for the CPU it names, and says nothing of memory. Its builds'
    memory was the template's default (and headroom) whatever the job taught, so an
    OOM-killed job was killed again at the same size on every push: its kill doubled nothing."""
    app = app_on_cluster(CONFIG.replace("RETRY", "false").replace(
        "template: mvn}", 'template: mvn, parameters: {CI_AUTOSCALER_CPU: "2"}}').replace(
        "default: 4Gi", "default: 1Gi"), namespace=NAMESPACE,
        CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
        # node-a: no headroom to grow a 1Gi default; node-b, cordoned till the second push
        nodes=(("node-a", "16", "1800Mi"), ("node-b", "16", "16Gi")))
    rt = runtime.current()
    change_node(rt, kube, "node-b", CORDONED)
    first = push(app.test_client(), 0)
    work(app)
    rec = record(app, first)
    assert (int(rec["cpu_millis"]), int(rec["memory_bytes"])) == (2000, GIB)
    oom_kill_seen(kube, rec["agent"])
    finish(app, jenkins_fake, first, "FAILURE")

    change_node(rt, kube, "node-b", {"spec": {"unschedulable": False}})  # room, and more
    second = push(app.test_client(), 1)
    work(app)
    again = record(app, second)
    assert again["size_source"] == "oom", again
    # twice what the killed pod asked in total, the agent's share inside; not grown by headroom
    assert int(again["memory_bytes"]) == 2 * (GIB + AGENT_MEMORY) - AGENT_MEMORY, again
    assert int(again["cpu_millis"]) >= 2000  # the hint's CPU (headroom may add to it)


@pytest.mark.parametrize("seen", ["after-the-release", "in-its-deleted-event"])
def test_an_oom_kill_the_watch_sees_only_after_the_release_still_counts(
        app, kube, jenkins_fake, seen):
    """The build container is OOM-killed; Jenkins ends the run (FAILURE: its agent gone) and
    the release deletes the pod before the kubelet's status says OOMKilled (its status
    manager writes the final status of a pod being deleted, then confirms the deletion:
    pkg/kubelet/status/status_manager.go), or before the watch read it (a watch that was
    away sees the pod's last status only in its DELETED event). The release had folded the
    run with no OOM kill in it: the build read plain FAILURE, and the job's history missed the
    kill, so its next build was not sized up (nor started again with retryOnOOM); the kill,
    marked on a run already taken, was left behind. Now it is folded late, as the release
    would have."""
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    agent, memory = rec["agent"], int(rec["memory_bytes"])
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")  # it runs
    kube.hold_deletions("node-a")  # its kubelet confirms a deletion once its last status is out
    finish(app, jenkins_fake, key, "FAILURE")
    released = record(app, key)
    assert released.get("released_at") and commit_status.OOM_FIELD not in released, released
    assert kube.pod(NAMESPACE, agent)["metadata"].get("deletionTimestamp")  # Terminating

    kube.kubelet_status(NAMESPACE, agent, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)},
                        unseen=seen == "in-its-deleted-event")
    # then the kubelet confirms the deletion (kmock removes a pod being deleted at the
    # status write already: its DELETED event carries that status)
    if kube.pod(NAMESPACE, agent) is not None:
        kube.kubelet_confirms_deletion(NAMESPACE, agent)

    def learned():
        work(app)
        return record(app, key).get(commit_status.OOM_FIELD)
    wait_until(learned, timeout=SAMPLE_SECONDS, what="the late OOM kill folded in")
    ended = record(app, key)
    limit = memory + AGENT_MEMORY  # its container's, as the pod's spec had it
    assert (int(ended[commit_status.OOM_FIELD]), ended["result"]) == (limit, "FAILURE"), ended
    shown = commit_status.wanted(ended)
    assert shown.state == "failed" and shown.description.startswith(
        f"build ran out of memory: OOM-killed at its {limit // MIB}Mi limit"), shown
    history = usage().history("build", "mvn")
    assert history.oom_kills == 1 and history.oom_floor_bytes >= 2 * memory
    retried = [k for k in runtime.current().state.builds_since(0)
               if record(app, k).get("retry_of") == key]
    assert len(retried) == (1 if app.config["retry_on_oom"] else 0)
    assert not usage().oom_pending(agent)  # nothing left behind


def _rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def released_failed_build(app, kube, jenkins_fake) -> tuple[str, dict]:
    """A build that ran and failed (FAILURE), released; its pod as the watch had it."""
    key = push(app.test_client(), 0)
    work(app)
    agent = record(app, key)["agent"]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node="node-a")
    pod = copy.deepcopy(kube.pod(NAMESPACE, agent))
    finish(app, jenkins_fake, key, "FAILURE")
    assert record(app, key).get("released_at")
    return key, pod


def oom_killed_at(pod: dict, at: float) -> dict:
    """The pod's status as the kubelet writes an OOM kill of its build container ending at
    `at` (containerStatuses[].state.terminated.finishedAt: the runtime's time of the exit)."""
    killed = copy.deepcopy(pod)
    killed["status"] = {"phase": "Failed", "containerStatuses": [{
        "name": AGENT_CONTAINER, "ready": False, "restartCount": 0,
        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                 "startedAt": _rfc3339(at - 60),
                                 "finishedAt": _rfc3339(at)}}}]}
    return killed


def oom_watch() -> OomWatch:
    """Another worker's OOM watch, as workers.runtime builds it (events handed to it here)."""
    rt = runtime.current()
    return OomWatch(store=usage(), namespace=NAMESPACE, templates=rt.config.templates,
                    state=rt.state, installation=rt.settings.installation)


def test_an_oom_kill_long_after_the_release_is_not_the_builds(app, kube, jenkins_fake):
    """A failed build's pod kept for debugging (podRetention: onFailure) runs on after the
    release; a person's `kubectl exec` in it is OOM-killed an hour later. That kill ended
    nothing of the build: folded late, it raised the job's next memory floor and, with
    retryOnOOM, started again a build that had failed on its own tests."""
    key, pod = released_failed_build(app, kube, jenkins_fake)
    released = float(record(app, key)["released_at"])
    oom_watch()("MODIFIED", oom_killed_at(pod, released + 3600))
    work(app)
    ended = record(app, key)
    assert commit_status.OOM_FIELD not in ended and not ended.get("replaced_by"), ended
    assert usage().history("build", "mvn").oom_kills == 0


def test_a_late_oom_kill_seen_by_two_workers_in_two_events_is_folded_by_one_job(
        app, kube, jenkins_fake):
    """Each worker's watch sees the pod's last status twice (its MODIFIED, then its DELETED
    event): each event queued a learn_late job, and two of them run at once could each take
    the run (marked again between one's take and its record) and count the kill twice."""
    key, pod = released_failed_build(app, kube, jenkins_fake)
    killed = oom_killed_at(pod, float(record(app, key)["released_at"]) - 5)
    for watch in (oom_watch(), oom_watch()):
        watch("MODIFIED", killed)
        watch("DELETED", killed)
    queued = runtime.current().state.queue.jobs
    assert [j.func_name for j in queued if j.func_name == LATE_TASK] == [LATE_TASK]
    work(app)
    assert commit_status.OOM_FIELD in record(app, key)
    assert usage().history("build", "mvn").oom_kills == 1


class ReleasedMeanwhile(redis.Redis):
    """A worker's connection to the real redis-server whose first pipeline (the watch's mark
    of the run) waits for `meanwhile` to run first: the release running between the watch's
    read of the build and its mark, as two processes interleave."""

    meanwhile = None

    def pipeline(self, *args, **kwargs):
        then, self.meanwhile = self.meanwhile, None
        if then is not None:
            then()
        return super().pipeline(*args, **kwargs)


def test_an_oom_kill_marked_as_the_release_takes_the_run_still_counts(
        app, kube, jenkins_fake, redis_url):
    """The kubelet writes the kill's status as the release deletes the pod: the watch read the
    build not released yet, then the release took the run (nothing in it), then the watch
    marked it. Nobody took that mark: the kill was lost, as before the late fold."""
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    kube.kubelet_status(NAMESPACE, rec["agent"], phase="Running", node="node-a")
    killed = oom_killed_at(copy.deepcopy(kube.pod(NAMESPACE, rec["agent"])), time.time())
    run = jenkins_fake.finish_build(jenkins_fake.start_build(int(rec["queue_item"])).queue_id,
                                    "FAILURE")
    assert notify(app, rec["agent"], run, "COMPLETED") == 202  # its release queued
    rt = runtime.current()
    connection = ReleasedMeanwhile.from_url(redis_url)
    connection.meanwhile = lambda: work(app)  # the release runs now
    watch = OomWatch(store=UsageStore(connection, prefix=rt.settings.key_prefix),
                     namespace=NAMESPACE, templates=rt.config.templates, state=rt.state,
                     installation=rt.settings.installation)
    watch("MODIFIED", killed)
    connection.close()
    assert record(app, key).get("released_at")  # it ran in between
    work(app)
    assert commit_status.OOM_FIELD in record(app, key)
    assert usage().history("build", "mvn").oom_kills == 1


def test_a_kill_folded_between_a_watchs_read_and_its_mark_leaves_no_mark(
        app, kube, jenkins_fake, redis_url):
    """Two watches see the kill after the release: one marks the run and queues its late fold;
    the other reads the build (no kill on it yet), the fold runs, then it marks the run again.
    That mark, which nothing would take, was left behind until its TTL (full runs under load:
    test_warm_oom_late's and this module's 'nothing left behind')."""
    key, pod = released_failed_build(app, kube, jenkins_fake)
    killed = oom_killed_at(pod, float(record(app, key)["released_at"]) - 5)
    oom_watch()("MODIFIED", killed)  # marks the run, queues its late fold
    rt = runtime.current()
    connection = ReleasedMeanwhile.from_url(redis_url)
    connection.meanwhile = lambda: work(app)  # the late fold runs now
    watch = OomWatch(store=UsageStore(connection, prefix=rt.settings.key_prefix),
                     namespace=NAMESPACE, templates=rt.config.templates, state=rt.state,
                     installation=rt.settings.installation)
    watch("DELETED", killed)
    connection.close()
    assert commit_status.OOM_FIELD in record(app, key)  # folded in between
    assert usage().history("build", "mvn").oom_kills == 1
    assert not usage().oom_pending(record(app, key)["agent"])


def test_recommend_with_redis_away_says_so_without_a_traceback(tmp_path):
    """The command caught redis-py's errors, but the state adapter raises its own for a Redis
    it cannot reach: an operator got a Python traceback, exit 1."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("RETRY", "false"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CI_AUTOSCALER_"))}
    done = subprocess.run([sys.executable, "-m", "service.cli", "recommend"], env=env | {
        "REDIS_URL": "redis://127.0.0.1:1/0", "CI_AUTOSCALER_CONFIG": str(config)},
        capture_output=True, text=True, timeout=60)
    # where it looked, never a password; and that no REDIS_URL was given, when so (a laptop's
    # first `recommend` asked 127.0.0.1:6379 and said only "ConnectionError")
    assert (done.returncode, done.stderr) == (
        1, "error: Redis at 127.0.0.1:1/0: ConnectionError\n"), done.stderr
    default = subprocess.run([sys.executable, "-m", "service.cli", "recommend"], env=env | {
        "CI_AUTOSCALER_CONFIG": str(config), "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=60)
    assert default.stderr.endswith(
        "error: Redis at 127.0.0.1:6379/0: ConnectionError (neither REDIS_URL nor "
        "REDIS_SENTINELS is set: this is the default)\n") or default.returncode == 0, \
        default.stderr


def test_an_oom_killed_build_of_a_renamed_job_is_started_again_under_its_new_name(
        app_on_cluster, kube, jenkins_fake):
    """A person renamed the job while the build waited (Jenkins refuses a rename only while
    the job builds, Job.checkRename); the reconcile pass followed it (run_confirm
    .job_renamed: the build's job is the new name, and its OOM kill raises that name's
    floor). retryOnOOM started the build again under the name its request was made with:
    Jenkins has no job by it any more (the retry refused, the build failed for good), or a
    new one given the old name, whose run would not be the build's. It is started under the
    job's name now, sized from that name's floor."""
    app = app_on_cluster(CONFIG.replace("RETRY", "true"), namespace=NAMESPACE,
                         CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                         nodes=(("node-a", "16", "16Gi"),))
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    [build] = jenkins_fake.build_with(AGENT_PARAMETER, rec["agent"])
    jenkins_fake.rename_job("build", "build-legacy")
    jenkins_fake.start_build(build.queue_id)
    rt = runtime.current()
    reconcile.reconcile_once(rt, now=time.time() + rt.settings.lost_event_seconds + 1)
    assert record(app, key)["job"] == "build-legacy"
    oom_kill_seen(kube, rec["agent"])
    jenkins_fake.finish_build(build.queue_id, "FAILURE")
    assert app.test_client().post(f"/webhooks/jenkins?token={JENKINS_TOKEN}",
                                  json=jenkins_fake.notification(build)).status_code == 202
    work(app)
    [retry] = [k for k in rt.state.builds_since(0) if record(app, k).get("retry_of") == key]

    work(app)  # the retry's provision

    again = record(app, retry)
    assert (again["status"], again["job"]) == ("triggered", "build-legacy"), again
    assert int(again["memory_bytes"]) >= 2 * int(rec["memory_bytes"])
    [run] = jenkins_fake.build_with(AGENT_PARAMETER, again["agent"])
    assert run.job == "build-legacy"


def test_an_oom_kill_of_a_build_whose_size_the_record_lacks_doubles_the_pod_once(
        app_on_cluster, kube, jenkins_fake):
    """A provision whose pod create was made but whose answer was lost (a timeout, a 500 on
    its way back) is retried by RQ; the retry finds the pod and writes only the build's
    status (workers.engine.tasks), so the record has no memory_bytes. The OOM kill then
    knows the build's size from the killed container's limit alone, which holds the injected
    agent's share (and any memory-backed volume's): taken as the build's size and made a pod
    total again, the agent counted twice and the job's next memory was raised past double."""
    app = app_on_cluster(CONFIG.replace("RETRY", "false"), namespace=NAMESPACE,
                         CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                         nodes=(("node-a", "16", "6Gi"),))
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert int(rec["memory_bytes"]) == 4 * GIB
    limit = memory_bytes(agent_container(kube, rec["agent"])["resources"]["limits"]["memory"])
    assert limit == 4 * GIB + AGENT_MEMORY
    # the record as that retried provision leaves it
    runtime.current().state.redis.hdel(
        f"{runtime.current().settings.key_prefix}build:{key}", "memory_bytes")
    oom_kill_seen(kube, rec["agent"])
    finish(app, jenkins_fake, key, "FAILURE")
    history = usage().history("build", "mvn")
    assert history.oom_kills == 1
    assert history.oom_floor_bytes == 2 * limit, (history.oom_floor_bytes - 2 * limit) / MIB
