"""Issue 21 (each job sized from its history, OOM kills teach) checked as an operator meets it,
through the Procfile's processes (web under gunicorn, `ci-autoscaler worker`,
`ci-autoscaler reconcile`: tests.support.procfile), configured only as README.md says, on a
real redis-server, kmock over HTTP (pods, metrics.k8s.io) and the Jenkins fake. One stack for
the module; its inputs differ from tests/integration/test_procfile_features.py's: a key
prefix of our own and no installation identity, `CI_AUTOSCALER_HISTORY_MIN_BUILDS=3`, a
freestyle job in nested folders whose names Jenkins URL-encodes, a Pipeline job in a folder,
a template whose default is below what its jobs use (the recommendation clamped to max), a
template with a service container, runs whose metrics-server samples come late or never,
STARTED notifications as the plugin sends them, and OOM kills whose COMPLETED (FAILURE)
arrives at once, twice in a row and at the template's max.

The checks, in order (they share the stack's state):
- `ci-autoscaler recommend` with no history: a table saying so, `--json` an empty list that
  `python -m json.tool` reads;
- a job's builds whose PodMetrics never came (the pod ended before metrics-server's first
  scrape) teach nothing; one whose first samples were missing teaches from those it has;
- after 3 sampled builds the next is sized from its job's history: its pod asks about 1.15 x
  its p95 peak in total (the peak is the pod's, the agent's JVM in it: the build gets that
  less agentMemory), CPU at its p90, and the status page says `history`; a size hint wins
  over the history (`hint`);
- a template whose default is below what its job peaks at: the recommendation is what the
  pod asks at its max; CPU from history never goes above the template's default;
- `history: off`: the template's size, and its OOM kills still counted;
- a hinted build on a busy node gets its hint; one beside it finds less than its default
  free, and the status page and the log say `pressure`; the hinted one, whose only container
  is OOM-killed (its pod Failed), is retried above its hint, not at it;
- a postgres service's OOM kill (its own fixed memory) is not the build's: not counted, not
  retried;
- a job with a service container, peaking near 1.2 GiB over its containers: its pod asks
  about 1.4 GiB in total, the service's memory and the agent's inside it;
- an OOM-killed build container while Jenkins says FAILURE: one retry, bigger, of the same
  folder job with the same parameters; the retry OOM-killed too is not retried again; the
  next push starts at the raised size (`oom`), and one killed at the template's max is not
  started again; oom_kills_total{template} counts each kill; `recommend` shows the kills;
- `recommend` lists the folder jobs, as a table and as JSON piped to `python -m json.tool`;
- the processes end with 0, having logged no error and no secret.
"""

import json
import re
import subprocess
import sys

import pytest
import redis

from tests.support.jenkins_fake import FREESTYLE_JOB, JenkinsFake
from tests.support.kmock_cluster import running_kube, terminated
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import running_stack
from workers.core.quantity import memory_bytes
from workers.core.routing import AGENT_PARAMETER

NAMESPACE = "ci-history"
PREFIX = "bb21:"
MIB, GIB = 2**20, 2**30
AGENT_MEMORY = 256 * MIB  # agentMemory's default: the injected agent's share (README)
SOON = 30
FREESTYLE = "Team A/svc/C++ build"  # Jenkins: job/Team%20A/job/svc/job/C++%20build/
PIPELINE = "data/etl nightly"
TIGHT = "ops/tight"
UNSIZED = "ops/no history"
SOLO = "solo builds/app"
CONFIG = f"""
routes:
  - {{project: "*", ref: "refs/heads/fs/*", job: "{FREESTYLE}", template: small,
     parameters: {{GIT_COMMIT: "{{sha}}"}}}}
  - {{project: "*", ref: "refs/heads/tight/*", job: "{TIGHT}", template: tight,
     parameters: {{GIT_COMMIT: "{{sha}}"}}}}
  - {{project: "*", ref: "refs/heads/off/*", job: "{UNSIZED}", template: unsized,
     parameters: {{GIT_COMMIT: "{{sha}}"}}}}
  - {{project: "*", ref: "refs/heads/solo/*", job: "{SOLO}", template: solo,
     parameters: {{GIT_COMMIT: "{{sha}}"}}}}
  - {{project: "*", ref: "refs/heads/etl/*", job: "{PIPELINE}", template: etl,
     parameters: {{GIT_COMMIT: "{{sha}}", GIT_BRANCH: "{{branch}}"}}}}
templates:
  small:
    image: gcc:14
    cpu: {{min: 250m, default: "2", max: "4"}}
    memory: {{min: 256Mi, default: 2Gi, max: 4Gi}}
  tight:
    cpu: {{min: 250m, default: "1", max: "2"}}
    memory: {{min: 256Mi, default: 512Mi, max: 1Gi}}
  unsized:
    history: off
    cpu: {{min: 250m, default: "1", max: "2"}}
    memory: {{min: 256Mi, default: 1Gi, max: 2Gi}}
  solo:
    retryOnOOM: true
    nodeSelector: {{pool: small}}
    tolerations: [{{key: dedicated, value: small, effect: NoSchedule}}]
    cpu: {{min: 250m, default: "1", max: "2"}}
    memory: {{min: 256Mi, default: 1Gi, max: 4Gi}}
  etl:
    retryOnOOM: true
    containers:
      - {{name: etl, image: "python:3.12", build: true}}
      - {{name: postgres, image: "postgres:16", cpu: 250m, memory: 256Mi,
         env: {{POSTGRES_PASSWORD: test}}}}
    cpu: {{min: 500m, default: "1", max: "2"}}
    memory: {{min: 512Mi, default: 1Gi, max: 3Gi}}
"""


@pytest.fixture(scope="module")
def parts(redis_server, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushdb()
    logs = tmp_path_factory.mktemp("history-operator")
    config = logs / "ci.yaml"
    config.write_text(CONFIG)
    with running_kube(tmp_path_factory.mktemp("kube")) as kube, JenkinsFake() as jenkins:
        jenkins.add_job(FREESTYLE, kind=FREESTYLE_JOB, parameters=[
            "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT"])
        jenkins.add_job(TIGHT, parameters=[
            "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT"])
        jenkins.add_job(UNSIZED, parameters=[
            "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT"])
        jenkins.add_job(SOLO, parameters=[
            "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT", "CI_AUTOSCALER_MEMORY"])
        jenkins.add_job(PIPELINE, parameters=[
            "CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT", "GIT_BRANCH"])
        for node in ("n1", "n2"):
            kube.add_node(node, cpu="16", memory="64Gi")
            kube.set_node_usage(node, cpu="1", memory="4Gi")
        # a busy node: no headroom for `solo`, whose builds keep their default (or hint)
        kube.add_node("s1", cpu="4", memory="1400Mi", labels={"pool": "small"}, taints=[
            {"key": "dedicated", "value": "small", "effect": "NoSchedule"}])
        kube.set_node_usage("s1", cpu="100m", memory="300Mi")
        kube.add_namespace(NAMESPACE)
        with running_stack(redis_url=redis_server.url, kube=kube, jenkins_fake=jenkins,
                           config=config, namespace=NAMESPACE, logs=logs,
                           CI_AUTOSCALER_KEY_PREFIX=PREFIX,
                           CI_AUTOSCALER_HISTORY_MIN_BUILDS="3",
                           CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2") as stack:
            yield stack, kube, jenkins, redis.Redis.from_url(redis_server.url,
                                                             decode_responses=True)


# -- GitLab, the kubelet, metrics-server and Jenkins, played --------------------------------

_pushes = iter(range(1, 10**6))


def push(stack, branch: str, **extra) -> tuple[str, str]:
    """A push of a new commit to `branch`: its sha and build key."""
    sha = f"{next(_pushes):x}".rjust(40, "b")
    body = fixture("gitlab_push_real_lrz.json") | {
        "ref": f"refs/heads/{branch}", "after": sha, "checkout_sha": sha} | extra
    status, answer = stack.gitlab(json.dumps(body).encode(), "Push Hook", f"d-{sha}")
    assert status == 202, answer
    return sha, answer["build_key"]


def record(r, key: str) -> dict[str, str]:
    return r.hgetall(f"{PREFIX}build:{key}")


def triggered(r, key: str) -> dict[str, str]:
    return wait_until(lambda: (got := record(r, key)).get("status") == "triggered" and got,
                      timeout=SOON, what=lambda: f"build {key} triggered: {record(r, key)}")


def build_of(jenkins, sha: str):
    return wait_until(lambda: jenkins.build_with("GIT_COMMIT", sha), timeout=SOON,
                      what=f"the build of {sha[:10]} in Jenkins")[0]


def the_pod(kube, agent: str) -> dict:
    return wait_until(lambda: kube.pod(NAMESPACE, agent), timeout=SOON, what=f"pod {agent}")


def requested(kube, agent: str, container: str) -> int:
    pod = the_pod(kube, agent)
    [c] = [c for c in pod["spec"]["containers"] if c["name"] == container]
    text = c["resources"]["requests"]["memory"]
    units = {"Mi": MIB, "Gi": GIB}
    return int(text[:-2]) * units[text[-2:]]


def pod_memory(kube, agent: str) -> int:
    """What the agent's pod asks in total: its containers' memory requests (the init
    container's, the agent's at most, never raises it: workers.core.podsize)."""
    return sum(memory_bytes(c["resources"]["requests"]["memory"])
               for c in the_pod(kube, agent)["spec"]["containers"])


def runs(stack, kube, jenkins, build) -> str:
    """The scheduler binds the pod, the kubelet runs it, the agent connects, Jenkins starts
    the build on it and the plugin says STARTED; the agent's name."""
    agent = build.parameters[AGENT_PARAMETER]
    pod = the_pod(kube, agent)
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    node = terms[0]["matchExpressions"][0]["values"][0]
    kube.kubelet_status(NAMESPACE, agent, phase="Running", node=node)
    wait_until(lambda: agent in jenkins.nodes, timeout=SOON, what=f"Jenkins node {agent}")
    jenkins.connect_agent(agent)
    assert (build.queue_id, agent) in jenkins.dispatch()
    assert stack.jenkins(jenkins.notification(build, "STARTED"))[0] in (200, 202)
    return agent


def sampled(kube, r, agent: str, memories: list, cpu, first: int = 0) -> None:
    """metrics-server's samples of the agent's pod (its labels copied, as metrics-server
    does), stamped from `first` on; each awaited in the run's record. A sample is one
    container's memory, or a list of them (then `cpu` is a list too): the pod's use is their
    sum."""
    labels = the_pod(kube, agent)["metadata"]["labels"]
    for i, memory in enumerate(memories, start=first):
        kube.set_pod_usage(NAMESPACE, agent, cpu=cpu, memory=memory, labels=labels,
                           timestamp=f"2026-03-01T00:{i:02d}:00Z")
        wait_until(lambda: f"T00:{i:02d}:00Z" in (r.hget(f"{PREFIX}usage:run:{agent}", "stamp")
                                                 or ""),
                   timeout=SOON, what=f"sample {i} of {agent} taken")


def complete(stack, jenkins, build, key: str, r, result: str = "SUCCESS") -> None:
    run = jenkins.finish_build(build.queue_id, result)
    assert stack.jenkins(jenkins.notification(run, "COMPLETED"))[0] == 202
    assert stack.jenkins(jenkins.notification(run, "FINALIZED"))[0] in (200, 202)
    wait_until(lambda: record(r, key).get("status") == "released", timeout=SOON,
               what=lambda: f"build {key} released: {record(r, key)}")


def recommend(stack, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["ci-autoscaler", "recommend", *flags], env=stack.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def recommended(stack) -> dict[str, dict]:
    return {row["job"]: row for row in json.loads(recommend(stack, "--json").stdout)}


def metric(stack, name: str, **labels: str) -> float | None:
    status, body = stack.request("/metrics")
    assert status == 200
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0][len(name) + 1:] == want:
            return float(line.rsplit(" ", 1)[1])
    return None


# -- the checks ------------------------------------------------------------------------------

def test_recommend_with_no_history_says_so_and_its_json_is_an_empty_list(parts):
    stack, *_ = parts
    table = recommend(stack)
    assert table.stdout.splitlines()[0].split()[:3] == ["JOB", "TEMPLATE", "BUILDS"]
    assert "no job history yet" in table.stdout
    as_json = recommend(stack, "--json")
    assert json.loads(as_json.stdout) == []
    piped = subprocess.run([sys.executable, "-m", "json.tool"], input=as_json.stdout,
                           capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0, piped.stderr


def test_history_sizes_a_freestyle_folder_job_from_the_samples_it_has(parts):
    stack, kube, jenkins, r = parts
    # A build whose pod ended before metrics-server's first scrape: nothing to learn.
    sha, key = push(stack, "fs/unsampled")
    build = build_of(jenkins, sha)
    assert build.job == FREESTYLE
    runs(stack, kube, jenkins, build)
    complete(stack, jenkins, build, key, r)
    assert FREESTYLE not in recommended(stack)

    # Three builds peaking near 700-800Mi; the second's first samples never came
    # (metrics-server's lag after a pod starts): it has its later ones only.
    for memories, first in ((["500Mi", "760Mi", "640Mi"], 0), (["800Mi"], 5),
                            (["720Mi", "700Mi"], 0)):
        sha, key = push(stack, "fs/run")
        build = build_of(jenkins, sha)
        agent = runs(stack, kube, jenkins, build)
        sampled(kube, r, agent, memories, cpu="300m", first=first)
        complete(stack, jenkins, build, key, r)
    row = recommended(stack)[FREESTYLE]
    assert (row["template"], row["builds_seen"], row["oom_kills"]) == ("small", 3, 0)
    assert 800 * MIB <= row["p95_peak_memory_bytes"] <= 850 * MIB, row
    assert 300 <= row["recommended_cpu_millis"] <= 350, row

    # The next build's pod asks about 1.15 x 800Mi in total, the agent's share inside it;
    # the status page says where the size came from. A hinted one gets its hint.
    sha, key = push(stack, "fs/run")
    rec = triggered(r, key)
    memory = int(rec["memory_bytes"])
    sized = build_of(jenkins, sha)
    asked = pod_memory(kube, sized.parameters[AGENT_PARAMETER])
    assert 900 * MIB <= asked <= 1000 * MIB, asked / MIB
    assert asked == row["recommended_memory_bytes"]
    assert memory == asked - AGENT_MEMORY == row["build_memory_bytes"], (memory, row)
    assert rec["size_source"] == "history"
    assert requested(kube, sized.parameters[AGENT_PARAMETER], "jnlp") == memory + AGENT_MEMORY
    hinted_sha, hinted_key = push(stack, "fs/big", push_options={
        "ci": {"variable": {"CI_AUTOSCALER_MEMORY=1536Mi": 1}}})
    hinted = triggered(r, hinted_key)
    assert hinted["size_source"] == "hint"
    assert int(hinted["memory_bytes"]) >= 1536 * MIB
    status, page = stack.request("/status")
    assert status == 200
    rows = [row for row in page.decode().split("<tr>") if f"<td>{FREESTYLE}</td>" in row]
    assert sorted(re.findall(r'class="size-source">(\w+)<', "".join(rows))) == \
        ["hint", "history"], rows
    for done_sha, done_key in ((sha, key), (hinted_sha, hinted_key)):
        build = build_of(jenkins, done_sha)
        runs(stack, kube, jenkins, build)
        complete(stack, jenkins, build, done_key, r)
    assert recommended(stack)[FREESTYLE]["builds_seen"] == 3  # unsampled runs add nothing


def test_a_default_below_what_the_job_uses_is_raised_to_max_and_cpu_never_above_default(parts):
    stack, kube, jenkins, r = parts
    for _ in range(3):
        sha, key = push(stack, "tight/run")
        build = build_of(jenkins, sha)
        agent = runs(stack, kube, jenkins, build)
        sampled(kube, r, agent, ["1200Mi", "1536Mi"], cpu="1800m")
        complete(stack, jenkins, build, key, r)
    row = recommended(stack)[TIGHT]
    # 1.15 x 1.5Gi, clamped to what the pod asks at max: 1Gi and the agent's 256Mi
    assert row["recommended_memory_bytes"] == GIB + AGENT_MEMORY, row
    assert row["build_memory_bytes"] == GIB, row
    # p90 1.8 cores: the default at most (the agent's 100m beside it in the pod)
    assert (row["recommended_cpu_millis"], row["build_cpu_millis"]) == (1100, 1000), row
    sha, key = push(stack, "tight/run")
    rec = triggered(r, key)
    assert (int(rec["memory_bytes"]), rec["size_source"]) == (GIB, "history")
    build = build_of(jenkins, sha)
    runs(stack, kube, jenkins, build)
    complete(stack, jenkins, build, key, r)


def test_history_off_sizes_from_the_template_and_still_counts_its_oom_kills(parts):
    stack, kube, jenkins, r = parts
    for _ in range(3):
        sha, key = push(stack, "off/run")
        build = build_of(jenkins, sha)
        agent = runs(stack, kube, jenkins, build)
        sampled(kube, r, agent, ["300Mi"], cpu="200m")
        complete(stack, jenkins, build, key, r)
    assert UNSIZED not in recommended(stack)
    sha, key = push(stack, "off/run")
    rec = triggered(r, key)
    assert "size_source" not in rec and int(rec["memory_bytes"]) >= GIB, rec
    build = build_of(jenkins, sha)
    runs(stack, kube, jenkins, build)
    oom_killed(stack, kube, jenkins, r, build, key, container="jnlp")
    # README: an OOM-killed build container is counted, "whatever the template"
    wait_until(lambda: metric(stack, "ci_autoscaler_oom_kills_total", template="unsized") == 1,
               timeout=SOON, what="the kill counted")
    assert len(jenkins.build_with("GIT_COMMIT", sha)) == 1


def test_a_hinted_build_killed_by_oom_is_retried_bigger_than_its_hint(parts):
    """A pusher's hint is below what the build needs; its only container is OOM-killed, so
    the pod ends Failed (restartPolicy Never). The retry is "started again once at the bigger
    size" (issue 21): not at the hint again, where it would die the same way."""
    stack, kube, jenkins, r = parts
    sha, key = push(stack, "solo/run", push_options={
        "ci": {"variable": {"CI_AUTOSCALER_MEMORY=512Mi": 1}}})
    first = build_of(jenkins, sha)
    rec = triggered(r, key)
    given = int(rec["memory_bytes"])
    assert rec["size_source"] == "hint" and given < 2 * GIB, rec
    assert "size_moved" not in rec  # it got its hint
    assert [line for line in stack.text().splitlines() if key in line
            and "default size from the build's hint" in line and '"hint"' in line]

    # Beside it, an unhinted build finds less than its default free: pressure shrinks it,
    # and the status page and the log say so beside where its default came from.
    other_sha, other_key = push(stack, "solo/other")
    other = triggered(r, other_key)
    assert int(other["memory_bytes"]) < GIB and other["size_moved"] == "pressure", other
    status, page = stack.request("/status")
    rows = [row for row in page.decode().split("<tr>") if f"<td>{SOLO}</td>" in row]
    assert sorted(re.findall(r'class="size-source">(\w+)</td>\s*<td class="size-moved">(\S+)<',
                             "".join(rows))) == [("hint", "—"), ("template", "pressure")], rows
    assert [line for line in stack.text().splitlines() if other_key in line
            and "build size moved from its default" in line and '"pressure"' in line]
    other_build = build_of(jenkins, other_sha)
    runs(stack, kube, jenkins, other_build)
    complete(stack, jenkins, other_build, other_key, r)

    runs(stack, kube, jenkins, first)
    oom_killed(stack, kube, jenkins, r, first, key, container="jnlp", phase="Failed")
    [retry] = wait_until(lambda: [b for b in jenkins.build_with("GIT_COMMIT", sha)
                                  if b is not first], timeout=SOON, what="the retry")
    assert retry.parameters.get("CI_AUTOSCALER_MEMORY") == \
        first.parameters.get("CI_AUTOSCALER_MEMORY")  # the same parameters
    retried = triggered(r, record(r, key)["replaced_by"])
    assert int(retried["memory_bytes"]) >= 2 * given, (given, retried)
    assert retried["size_source"] == "oom"
    assert requested(kube, retry.parameters[AGENT_PARAMETER], "jnlp") >= 2 * given
    runs(stack, kube, jenkins, retry)
    complete(stack, jenkins, retry, record(r, key)["replaced_by"], r)


def oom_killed(stack, kube, jenkins, r, build, key: str, container: str = "etl",
               phase: str = "Running", recorded: bool = True) -> None:
    """The kubelet OOM-kills the build container (the service goes on); Jenkins ends the run
    FAILURE and the plugin says so at once, before any worker need have seen the kill."""
    agent = build.parameters[AGENT_PARAMETER]
    wait_until(lambda: record(r, key).get("agent_online_at"), timeout=SOON,
               what="the agent seen online")
    kube.kubelet_status(NAMESPACE, agent, phase=phase,
                        states={container: terminated("OOMKilled", 137)})
    complete(stack, jenkins, build, key, r, "FAILURE")
    if not recorded:
        return
    wait_until(lambda: record(r, key).get("oom_killed_bytes"), timeout=SOON,
               what=lambda: f"the OOM kill recorded on {key}: {record(r, key)}")


def test_oom_kills_retry_once_bigger_and_stop_at_max(parts):
    stack, kube, jenkins, r = parts
    assert metric(stack, "ci_autoscaler_oom_kills_total", template="etl") == 0
    # Three clean builds first (on an idle cluster a build with no history gets the
    # template's max by headroom: killed there, there is nothing bigger to retry at), their
    # pods peaking near 1.2 GiB over the build container (the agent's JVM in it) and postgres.
    for _ in range(3):
        sha, key = push(stack, "etl/nightly")
        build = build_of(jenkins, sha)
        agent = runs(stack, kube, jenkins, build)
        sampled(kube, r, agent, [["700Mi", "200Mi"], ["1000Mi", "228Mi"]],
                cpu=["700m", "100m"])
        complete(stack, jenkins, build, key, r)

    # The next pod asks about 1.15 x 1.2 GiB in total: postgres' 256Mi and the agent's 256Mi
    # inside it, not on top (the build gets the rest).
    sha, key = push(stack, "etl/nightly")
    build = build_of(jenkins, sha)
    agent = build.parameters[AGENT_PARAMETER]
    memory = int(triggered(r, key)["memory_bytes"])
    asked = pod_memory(kube, agent)
    assert 1.28 * GIB <= asked <= 1.48 * GIB, asked / GIB
    assert requested(kube, agent, "postgres") == 256 * MIB
    assert requested(kube, agent, "etl") == memory + AGENT_MEMORY == asked - 256 * MIB

    # Its postgres service, at its own fixed memory, is OOM-killed and the build fails: not
    # the build's kill (README), nothing counted, nothing retried.
    runs(stack, kube, jenkins, build)
    oom_killed(stack, kube, jenkins, r, build, key, container="postgres", recorded=False)
    assert metric(stack, "ci_autoscaler_oom_kills_total", template="etl") == 0
    assert "oom_killed_bytes" not in record(r, key)
    assert len(jenkins.build_with("GIT_COMMIT", sha)) == 1

    sha, key = push(stack, "etl/nightly")
    first = build_of(jenkins, sha)
    assert first.job == PIPELINE
    rec = triggered(r, key)
    given = int(rec["memory_bytes"])
    assert rec["size_source"] == "history" and given < GIB, rec
    runs(stack, kube, jenkins, first)
    oom_killed(stack, kube, jenkins, r, first, key)

    # One retry: a new build of the same folder job, same parameters, its own agent, bigger.
    [retry] = wait_until(lambda: [b for b in jenkins.build_with("GIT_COMMIT", sha)
                                  if b is not first], timeout=SOON, what="the retry")
    assert retry.job == PIPELINE
    same = {k: v for k, v in first.parameters.items()
            if k not in (AGENT_PARAMETER, "CI_AUTOSCALER_BUILD_KEY")}
    assert {k: v for k, v in retry.parameters.items()
            if k not in (AGENT_PARAMETER, "CI_AUTOSCALER_BUILD_KEY")} == same
    retry_key = record(r, key)["replaced_by"]
    bigger = int(triggered(r, retry_key)["memory_bytes"])
    assert bigger >= 2 * given, (given, bigger)
    assert requested(kube, retry.parameters[AGENT_PARAMETER], "etl") == bigger + AGENT_MEMORY

    # The retry is OOM-killed too: not retried again.
    runs(stack, kube, jenkins, retry)
    oom_killed(stack, kube, jenkins, r, retry, retry_key)

    # The next push starts at the raised size: the template's max by now.
    sha3, key3 = push(stack, "etl/nightly")
    third = build_of(jenkins, sha3)
    rec = triggered(r, key3)
    assert (int(rec["memory_bytes"]), rec["size_source"]) == (3 * GIB, "oom")
    assert len(jenkins.build_with("GIT_COMMIT", sha)) == 2
    assert not record(r, retry_key).get("replaced_by")

    # Killed at the template's max, it is not started again: the same size dies the same way.
    runs(stack, kube, jenkins, third)
    oom_killed(stack, kube, jenkins, r, third, key3)
    wait_until(lambda: "OOM-killed build not started again" in stack.text(), timeout=SOON,
               what="the log saying the build at max is not started again")
    assert len(jenkins.build_with("GIT_COMMIT", sha3)) == 1
    assert not record(r, key3).get("replaced_by")
    # killed while it ran, its agent had connected: not logged as a pod that cannot start
    # (the pod watch's line, which may come after the release's: a full run under load read
    # the logs before it)
    said = wait_until(lambda: [line for line in stack.text().splitlines()
                               if key3 in line and "agent pod" in line], timeout=SOON,
                      what="the pod watch's line on the killed build's pod")
    assert not any("cannot start" in line for line in said), said
    assert metric(stack, "ci_autoscaler_oom_kills_total", template="etl") == 3
    row = recommended(stack)[PIPELINE]
    assert (row["template"], row["builds_seen"], row["oom_kills"], row["source"]) == \
        ("etl", 3, 3, "oom"), row
    # what the pod asks at max: the build's 3Gi, the agent's and postgres' 256Mi each
    assert (row["recommended_memory_bytes"], row["build_memory_bytes"]) == \
        (3 * GIB + 512 * MIB, 3 * GIB), row


def test_recommend_lists_the_folder_jobs_as_a_table_and_as_json(parts):
    stack, *_ = parts
    table = recommend(stack).stdout
    header, *lines = table.splitlines()
    assert header.split()[:3] == ["JOB", "TEMPLATE", "BUILDS"]
    for job, template in ((FREESTYLE, "small"), (TIGHT, "tight"), (PIPELINE, "etl")):
        assert [line for line in lines if line.startswith(f"{job} ")
                and line[len(job):].split()[0] == template], table
    # memory in units, as in the other columns: not a raw 760598190 beside 864Mi
    assert not [w for line in lines for w in line.split() if w.isdigit() and int(w) >= 1024], \
        table
    as_json = recommend(stack, "--json").stdout
    piped = subprocess.run([sys.executable, "-m", "json.tool"], input=as_json,
                           capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0, piped.stderr
    assert {row["job"] for row in json.loads(piped.stdout)} == {FREESTYLE, TIGHT, PIPELINE, SOLO}


def test_the_processes_end_with_0_having_logged_no_error_and_no_secret(parts):
    stack, _, jenkins, _ = parts
    codes = stack.stop()
    assert codes == {"web": 0, "worker": 0, "reconcile": 0}, stack.text()[-3000:]
    text = stack.text()
    assert [line for line in text.splitlines() if '"level":"error"' in line] == []
    secrets = [stack.env["GITLAB_WEBHOOK_TOKEN"], stack.env["JENKINS_WEBHOOK_TOKEN"],
               jenkins.token, *(node.secret for node in jenkins.nodes.values())]
    assert [s for s in secrets if s in text] == []
