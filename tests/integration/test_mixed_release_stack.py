"""A rolling upgrade half-way, through the Procfile's processes: today's web, worker and
reconcile loop beside the last landed release's (its tree from `git archive`), on one Redis,
kmock over HTTP and the Jenkins fake, as `helm upgrade` runs them for minutes (README,
Development, rolling upgrades). Pushes reach either web; the old worker provisions the first
ones alone, then the new one starts and the old one stops, as pods roll; each build's end
goes to the other web; the reconcile loops lead in turn (the old one first). Every build is
triggered once, runs on its agent and is released, and neither web's pages fail on what the
other release wrote."""

import json
import tarfile
import uuid
from pathlib import Path

import redis
import yaml

# its Cluster plays kube-scheduler, the kubelets, the agents and Jenkins in its namespace
from tests.integration.test_issue9_operator import NAMESPACE, Cluster
from tests.support.jenkins_fake import JenkinsFake
from tests.support.kmock_cluster import running_kube
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from tests.support.procfile import Stack, running_stack
from tests.support.redis_server import RedisServer, free_port
from workers.core.routing import BUILD_KEY_PARAMETER

ROOT = Path(__file__).resolve().parents[2]
# The release landed before today's (tests/fixtures/task_signatures.json has its rows)
LANDED = "5511fce"
SOON = 90
PUSHES = 6
CONFIG = {
    "routes": [{"project": "*", "ref": "refs/heads/*", "job": "build", "template": "jdk"}],
    "templates": {"jdk": {"cpu": {"min": "1", "default": "1", "max": "1"},
                          "memory": {"min": "1Gi", "default": "1Gi", "max": "1Gi"}}},
}


def landed_tree(base: Path) -> Path:
    """The landed release's code (workers/, service/), run with today's virtualenv: its
    dependencies are today's (pyproject.toml unchanged since). Extracted from its archive kept
    with the tests (tests/fixtures/releases/ci-autoscaler-<commit>.tar.gz, made by `git archive
    --format=tar <commit> workers service | gzip -n -9`): a checkout's history is not relied on
    (a shallow clone, a tarball, CI's checkout may have none), as for the old charts
    (tests.support.helm_chart.chart_at)."""
    archive = ROOT / "tests" / "fixtures" / "releases" / f"ci-autoscaler-{LANDED}.tar.gz"
    assert archive.is_file(), f"no archive of release {LANDED}: {archive}"
    tree = base / LANDED
    tree.mkdir()
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(tree, filter="data")
    return tree


def landed(tree: Path, command: str) -> str:
    """A Procfile line run from the landed tree (PYTHONPATH before the editable install)."""
    return f"cd {tree} && export PYTHONPATH={tree} && {command}"


def push(web: Stack, tag: str) -> str:
    commit = uuid.uuid5(uuid.NAMESPACE_URL, tag).hex + uuid.uuid5(uuid.NAMESPACE_DNS, tag).hex[:8]
    body = fixture("gitlab_push_real_lrz.json") | {
        "ref": f"refs/heads/feature/{tag}", "after": commit, "checkout_sha": commit}
    status, answer = web.gitlab(json.dumps(body).encode(), "Push Hook", str(uuid.uuid4()))
    assert status == 202, answer
    return answer["build_key"]


def listening(logs: Path, name: str, times: int) -> None:
    wait_until(lambda: (logs / f"{name}.log").read_text().count("Listening on") >= times,
               timeout=SOON, what=f"{name} listening")


def passes(logs: Path, name: str, times: int) -> None:
    wait_until(lambda: (logs / f"{name}.log").read_text().count('"msg":"reconciled"') >= times,
               timeout=SOON, what=f"{name}'s passes")


def test_todays_processes_and_the_landed_releases_build_every_push_once(tmp_path):
    tree = landed_tree(tmp_path)
    server = RedisServer(tmp_path / "redis").start()
    config = tmp_path / "ci-autoscaler.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    logs = tmp_path / "logs"
    logs.mkdir()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with running_kube(tmp_path) as kube, JenkinsFake() as jenkins:
            kube.add_namespace(NAMESPACE)
            for name in ("node-a", "node-b"):
                kube.add_node(name, cpu="16", memory="64Gi")
                kube.set_node_usage(name, cpu="0", memory="0")
            with running_stack(redis_url=server.url, kube=kube, jenkins_fake=jenkins,
                               config=config, namespace=NAMESPACE, logs=logs,
                               CI_AUTOSCALER_SCALE_UP_PODS="false") as today:
                # passes every second (the leader's lease lapses after 3), so that each
                # release's loop, leading in turn, runs passes over the other's builds
                fast = today.commands["reconcile"] + " --interval 1"
                today.procs["reconcile"].terminate()
                today.procs["reconcile"].wait(timeout=SOON)
                for line in ("worker", "reconcile"):
                    today.start_line(line, f"old-{line}", command=landed(tree, fast if (
                        line == "reconcile") else today.commands[line]))
                # the old web pod: its own port and spool (the chart's are per pod)
                old_web = Stack.__new__(Stack)
                old_web.port, old_web.logs, old_web.env = free_port(), logs, today.env
                (logs / "old-spool").mkdir()
                today.start_line("web", "old-web", command=landed(tree, today.commands["web"]),
                                 env={"PORT": str(old_web.port),
                                      "CI_AUTOSCALER_SPOOL_DIR": str(logs / "old-spool")})
                wait_until(old_web.answers, timeout=30, what=lambda: today.text()[-3000:])
                webs = (old_web, today)
                cluster = Cluster(today, kube, jenkins)
                try:
                    # the rolling order: the old worker alone, then the new one beside it,
                    # then the old one stopped (its builds are released by the new one)
                    today.procs["worker"].terminate()
                    today.procs["worker"].wait(timeout=SOON)
                    listening(logs, "old-worker", 1)
                    keys = [push(webs[i % 2], f"mixed-{i}") for i in range(PUSHES // 2)]
                    wait_until(lambda: all(r.hget(f"cia:build:{k}", "node") for k in keys),
                               timeout=SOON, what=lambda: today.text()[-3000:])
                    before = (logs / "worker.log").read_text().count("Listening on")
                    today.start_line("worker")
                    listening(logs, "worker", before + 1)
                    today.procs["old-worker"].terminate()
                    passes(logs, "old-reconcile", 2)
                    led = (logs / "reconcile.log").read_text().count('"msg":"reconciled"')
                    today.start_line("reconcile", command=fast)
                    today.procs["old-reconcile"].terminate()
                    keys += [push(webs[i % 2], f"mixed-{i}") for i in range(PUSHES // 2, PUSHES)]
                    for i, key in enumerate(keys):
                        run = wait_until(lambda: next(
                            (b for b in jenkins.build_with(BUILD_KEY_PARAMETER, key)
                             if b.state == "running" and b.number is not None), None),
                            timeout=SOON, what=lambda: f"{key} running: {today.text()[-3000:]}")
                        run = jenkins.finish_build(run.queue_id, "SUCCESS")
                        for phase in ("COMPLETED", "FINALIZED"):  # to the other web
                            status, answer = webs[(i + 1) % 2].jenkins(
                                jenkins.notification(run, phase))
                            assert status in (200, 202), (status, answer)
                    wait_until(lambda: all(r.hget(f"cia:build:{k}", "status") == "released"
                                           for k in keys), timeout=SOON,
                               what=lambda: [r.hgetall(f"cia:build:{k}") for k in keys])
                    passes(logs, "reconcile", led + 2)  # today's over the old one's builds
                    for web in webs:
                        for path in ("/metrics", "/status"):
                            status, text = web.request(path)
                            assert status == 200, (web.port, path, text[:2000])
                finally:
                    cluster.stop()
                for key in keys:  # a restart of a build another release provisions, none
                    assert len(jenkins.build_with(BUILD_KEY_PARAMETER, key)) == 1, key
                worked = {name: (logs / f"{name}.log").read_text().count("agent placed")
                          for name in ("worker", "old-worker")}
                assert all(worked.values()), worked  # both releases' workers provisioned
    finally:
        server.stop()
