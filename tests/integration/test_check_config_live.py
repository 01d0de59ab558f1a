"""`ci-autoscaler check-config --live FILE` against the Jenkins fake and kmock over HTTP, as a
process configured from the environment (JENKINS_*, KUBECONFIG, AGENT_NAMESPACE): exit 2 with
one line per problem naming the job, parameter, verb or namespace; 0 when all is well. The
worker and the reconcile loop log the same checks at start, as warnings."""

import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.test_worker_and_reconcile_processes import Process
from tests.support.monitoring import wait_until
from workers.checks import live
from workers.config.config_file import load_file_config
from workers.config.settings import load_settings
from workers.core.pod_security import ENFORCE_LABEL
from workers.core.rbac import RIGHTS

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ci-agents"
CONFIG = """
routes:
  - project: "*"
    ref: "refs/heads/*"
    job: team/build
    template: small
    parameters: {GIT_COMMIT: "{sha}", GIT_BRANCH: "{branch}", CI_AUTOSCALER_CPU: "2"}
templates:
  small:
    cpu: {min: 500m, default: "1", max: "2"}
    memory: {min: 1Gi, default: 1Gi, max: 2Gi}
    volumes:  # restricted admits no nfs volume (baseline does)
      - {name: cache, mountPath: /cache, nfs: {server: nfs.example.com, path: /cache}}
"""
DECLARED = ["CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY", "GIT_COMMIT", "GIT_BRANCH"]


@pytest.fixture
def env(tmp_path, kube, jenkins_fake, redis_url):
    """A cluster and a Jenkins where all is well; the config file; the environment."""
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    kube.add_node("node-a")
    kube.set_node_usage("node-a", cpu="500m", memory="2Gi")
    kube.add_namespace(NAMESPACE, labels={ENFORCE_LABEL: "baseline"})
    jenkins_fake.add_job("team/build", parameters=DECLARED)
    values = {"JENKINS_URL": jenkins_fake.url, "JENKINS_USER": jenkins_fake.user,
              "JENKINS_API_TOKEN": jenkins_fake.token, "KUBECONFIG": str(kube.kubeconfig_path),
              "AGENT_NAMESPACE": NAMESPACE, "CI_AUTOSCALER_CONFIG": str(config),
              "REDIS_URL": redis_url}
    return config, values


def check_live(config: Path, values: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("JENKINS_", "KUBERNETES_SERVICE"))} | values
    return subprocess.run([sys.executable, "-m", "service.cli", "check-config", "--live",
                           str(config)], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=120)


def check_live_in_process(config: Path, values: dict[str, str], monkeypatch,
                          capsys) -> subprocess.CompletedProcess:
    """The same command through the CLI's own entry point (argument parsing, settings from the
    environment, exit code, stdout and stderr), in this process: a fresh `python -m service.cli`
    spent 2-4 s quiet (10-30 s under the suite's load) importing the Kubernetes client's
    pydantic models before checking anything, once per call. Which checks run and what they
    say is the same code; the process boundary itself (and python-jenkins' logging set-up
    with no root handler) is kept by check_live in the tests that are about it."""
    from service import cli
    for name in [n for n in os.environ if n.startswith(("JENKINS_", "KUBERNETES_SERVICE"))]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        code = cli.main(["check-config", "--live", str(config)])
    finally:
        logging.captureWarnings(False)  # main() routes warnings to logging, for its process
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["check-config", "--live", str(config)], code, out, err)


def errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line.removeprefix("error: ") for line in result.stderr.splitlines()
            if line.startswith("error: ")]


def assert_no_secret(result, jenkins_fake):
    out = result.stdout + result.stderr
    assert jenkins_fake.token not in out
    assert not re.search(r"[0-9a-f]{64}", out)  # no agent secret (a jnlpMac: 64 hex)


def test_all_well_exits_0_with_what_was_checked(env, kube, jenkins_fake):
    config, values = env

    result = check_live(config, values)

    assert result.returncode == 0, result.stderr
    assert "live: ok" in result.stdout and f"{len(RIGHTS)} RBAC rights allowed" in result.stdout
    assert errors(result) == []
    # the probe agent was registered, its secret read, and it is gone again
    [created] = jenkins_fake.requests_to("/computer/doCreateItem", "POST")
    probe = created.query.get("name") or created.form.get("name")
    assert probe.startswith("cia-check-") and jenkins_fake.nodes == {}
    assert jenkins_fake.requests_to(f"/computer/{probe}/jenkins-agent.jnlp", "GET")
    # one access review per right, namespaced ones in the agent namespace
    assert len(kube.reviews) == len(RIGHTS)
    assert {"verb": "create", "group": "", "resource": "pods", "namespace": NAMESPACE} \
        in kube.reviews
    assert {"verb": "get", "group": "", "resource": "pods", "subresource": "log",
            "namespace": NAMESPACE} in kube.reviews
    assert {"verb": "get", "group": "", "resource": "namespaces", "name": NAMESPACE} \
        in kube.reviews
    assert_no_secret(result, jenkins_fake)


def test_problems_exit_2_one_line_each_naming_the_job_parameter_verb_and_level(
        env, kube, jenkins_fake, monkeypatch, capsys):
    config, values = env
    jenkins_fake.add_job("team/build", parameters=["CI_AUTOSCALER_AGENT", "GIT_COMMIT"])
    kube.deny("create", "pods", namespace=NAMESPACE)
    kube.deny("list", "nodes", group="metrics.k8s.io")
    kube.add_namespace(NAMESPACE, labels={ENFORCE_LABEL: "restricted"})
    kube.remove_node_metrics()

    result = check_live_in_process(config, values, monkeypatch, capsys)

    assert result.returncode == 2
    lines = errors(result)
    assert "job 'team/build': does not declare the parameter CI_AUTOSCALER_BUILD_KEY, which " \
           "ci-autoscaler passes to every build" in lines
    assert "job 'team/build': does not declare the parameter GIT_BRANCH, which its route " \
           "passes: Jenkins drops it without a word" in lines
    assert "RBAC: create pods is denied in namespace ci-agents" in lines
    assert "RBAC: list nodes.metrics.k8s.io is denied cluster-wide" in lines
    [level] = [line for line in lines if "Pod Security" in line]
    assert level.startswith("namespace ci-agents: Pod Security level restricted refuses the "
                            "pod of template 'small': ")
    assert "nfs" in level
    [metrics] = [line for line in lines if line.startswith("metrics-server:")]
    assert "metrics.k8s.io does not answer" in metrics and "404" in metrics
    assert not any("CI_AUTOSCALER_CPU" in line for line in lines)  # a size hint: ours
    assert len(lines) == 6, lines
    assert_no_secret(result, jenkins_fake)


def test_a_missing_namespace_a_job_that_is_not_parameterized_and_no_agent_rights(
        env, kube, jenkins_fake, monkeypatch, capsys):
    config, values = env
    jenkins_fake.add_job("team/build", parameters=None)
    jenkins_fake.missing_permissions = {"Agent/Create"}
    values["AGENT_NAMESPACE"] = "no-such-namespace"

    result = check_live_in_process(config, values, monkeypatch, capsys)

    assert result.returncode == 2
    [created] = jenkins_fake.requests_to("/computer/doCreateItem", "POST")
    probe = created.query.get("name") or created.form.get("name")
    assert errors(result) == [
        "job 'team/build': This build is not parameterized! (job 'team/build' declares no "
        "parameters; it must declare CI_AUTOSCALER_AGENT and CI_AUTOSCALER_BUILD_KEY; a "
        "Pipeline's Jenkinsfile `parameters` reach its job only after a run of that "
        "Jenkinsfile (JENKINS-41929): run the job once by hand, or declare them in the job's "
        "configuration)",
        f"Jenkins: cannot register an agent (Agent/Create): Jenkins answered HTTP 403 to "
        f"create node {probe!r}: the Jenkins user lacks the Agent/Create permission "
        "(Jenkins-wide: builds wait until it is granted)",
        "namespace no-such-namespace: does not exist (AGENT_NAMESPACE)"]
    assert jenkins_fake.nodes == {}


# ---- the checks one by one, in-process ------------------------------------------------------

def test_a_routed_job_that_does_not_exist_or_is_a_folder_or_disabled(env, jenkins_fake, kube):
    config, values = env
    jenkins_fake.jobs = {"team/other", "off"}
    jenkins_fake.add_job("off", disabled=True)
    file = load_file_config(config)

    assert live.jenkins_jobs(_jenkins(jenkins_fake), file) == ["job 'team/build': Jenkins has "
                                                               "no job 'team/build'"]
    folder = file.model_copy(update={"routes": tuple(
        r.model_copy(update={"job": "team"}) for r in file.routes)})
    assert live.jenkins_jobs(_jenkins(jenkins_fake), folder) == [
        "job 'team': 'team' in Jenkins is a Folder, not a job"]
    off = file.model_copy(update={"routes": tuple(
        r.model_copy(update={"job": "off"}) for r in file.routes)})
    assert live.jenkins_jobs(_jenkins(jenkins_fake), off) == [
        "job 'off': off is not buildable! (job 'off' is disabled)"]


def test_a_probe_agent_that_cannot_be_deleted_is_named_for_deletion_by_hand(env, jenkins_fake):
    probe = "cia-check-test"
    jenkins_fake.missing_permissions = {"Agent/Connect", "Agent/Delete"}

    problems = live.jenkins_agents(_jenkins(jenkins_fake), name=probe)

    assert list(jenkins_fake.nodes) == [probe]
    assert problems == [
        f"Jenkins: cannot read an agent's secret (Agent/Connect): Jenkins answered HTTP 403 to "
        f"read the agent secret of node {probe!r}: the Jenkins user lacks the Agent/Connect "
        "permission (Jenkins-wide: builds wait until it is granted)",
        f"Jenkins: cannot delete an agent (Agent/Delete): Jenkins answered HTTP 403 to delete "
        f"node {probe!r}: the Jenkins user lacks the Agent/Delete permission; delete node "
        f"{probe} by hand"]


def test_the_reconcile_loop_logs_the_checks_at_start_as_warnings_and_runs_on(
        env, jenkins_fake, monkeypatch):
    config, values = env
    jenkins_fake.add_job("team/build", parameters=None)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GITLAB_WEBHOOK_TOKEN", "t-gitlab")
    monkeypatch.setenv("JENKINS_WEBHOOK_TOKEN", "t-jenkins")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    loop = Process("reconcile", "--interval", "0.3")
    try:
        wait_until(lambda: loop.said("start-up check found a problem"), timeout=60,
                   what="the start-up check's warning")
        wait_until(lambda: loop.said("reconciled"), timeout=30, what="a reconcile pass")
    finally:
        code = loop.stop()
    [warning] = [line for line in loop.lines if line.get("msg") == "start-up check found a "
                                                                   "problem"]
    assert warning["level"] == "warning" and warning["component"] == "reconcile"
    assert warning["problem"].startswith("job 'team/build': This build is not parameterized!")
    assert code == 0
    assert jenkins_fake.token not in "".join(loop.raw)


def test_the_start_up_checks_log_a_pass_when_all_is_well(env, jenkins_fake, caplog):
    config, values = env
    caplog.set_level(logging.INFO, logger="ci_autoscaler.checks.live")
    report = live.run(load_settings(**_settings(values)), load_file_config(config))

    live.log_report(report, component="worker")

    records = [r for r in caplog.records if r.name == "ci_autoscaler.checks.live"]
    # The tests' redis-server runs without the append-only file: a risk, which fails nothing
    # (workers.checks.redis_durability; test_redis_durability)
    [risk] = [r for r in records if r.getMessage() == "start-up check found a risk"]
    assert risk.risk.startswith("Redis: appendonly no")
    [record] = [r for r in records if r is not risk]
    assert record.getMessage() == "start-up checks passed" and record.component == "worker"
    assert len(record.checked) == 8  # the LimitRanges too
    assert record.checked[0] == "Redis evicts no key (maxmemory-policy noeviction)"


def _settings(values: dict[str, str]) -> dict[str, str]:
    return {"jenkins_url": values["JENKINS_URL"], "jenkins_user": values["JENKINS_USER"],
            "jenkins_api_token": values["JENKINS_API_TOKEN"],
            "kubeconfig": values["KUBECONFIG"], "agent_namespace": values["AGENT_NAMESPACE"],
            "redis_url": values["REDIS_URL"]}


def _jenkins(fake):
    from workers.adapters.jenkins import JenkinsAdapter
    from workers.adapters.retry import Backoff
    return JenkinsAdapter(url=fake.url, user=fake.user, token=fake.token,
                          backoff=Backoff(attempts=1))


def test_a_probe_deleted_meanwhile_by_a_reconcile_pass_is_tried_again(env, jenkins_fake):
    first = "cia-check-first"
    # the secret's request waits in the fake until the node is gone
    arrived = jenkins_fake.slow_next(f"/computer/{first}/jenkins-agent.jnlp", seconds=1.0)

    def reconcile_pass_deletes_it():  # as delete_agentless_nodes does: our agent, no build
        assert arrived.wait(10)
        jenkins_fake.nodes.pop(first)
    deleter = threading.Thread(target=reconcile_pass_deletes_it)
    deleter.start()

    problems = live.jenkins_agents(_jenkins(jenkins_fake), name=first)

    deleter.join()
    assert problems == []
    created = jenkins_fake.requests_to("/computer/doCreateItem", "POST")
    assert len(created) == 2 and jenkins_fake.nodes == {}


CLAIM_CONFIG = CONFIG.replace(
    "      - {name: cache, mountPath: /cache, nfs: {server: nfs.example.com, path: /cache}}",
    "      - {name: cache, mountPath: /cache, persistentVolumeClaim: {claimName: maven-cache},"
    " accessMode: ReadWriteMany}")


def test_a_claim_a_template_mounts_that_does_not_exist_is_named(env, kube, jenkins_fake,
                                                                 monkeypatch, capsys):
    """The example's maven template mounts the claim maven-cache: copied without making it,
    every agent pod waited Unschedulable (kube-scheduler's VolumeBinding: persistentvolumeclaim
    "maven-cache" not found), and no check said so before the first push."""
    config, values = env
    config.write_text(CLAIM_CONFIG)

    result = check_live_in_process(config, values, monkeypatch, capsys)

    assert result.returncode == 2, result.stderr
    assert errors(result) == [
        f"namespace {NAMESPACE}: claim maven-cache, which template 'small' mounts, does not "
        "exist: its pods would wait Unschedulable (persistentvolumeclaim \"maven-cache\" not "
        "found)"]

    kube.add_bound_claim(NAMESPACE, "maven-cache", zone="zone-a")
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 0, result.stderr
    assert f"namespace {NAMESPACE} has the claims the templates mount" in result.stdout


def test_a_runtime_class_a_template_names_that_does_not_exist_is_named(
        env, kube, jenkins_fake, monkeypatch, capsys):
    """A template whose pods run under gVisor (podSpecPatch: {runtimeClassName: gvisor}) on a
    cluster without that RuntimeClass: the API server's RuntimeClass admission refuses every
    pod of it (pod rejected: RuntimeClass "gvisor" not found), and no check said so before
    the first push."""
    config, values = env
    config.write_text(CONFIG + "    podSpecPatch: {runtimeClassName: gvisor}\n")

    result = check_live_in_process(config, values, monkeypatch, capsys)

    assert result.returncode == 2, result.stderr
    assert errors(result) == [
        "runtime class gvisor, which template 'small' names, does not exist: the API server "
        "would refuse its pods (RuntimeClass \"gvisor\" not found)"]
    kube.add_runtime_class("gvisor", "runsc")
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 0, result.stderr
    assert "the runtime classes the templates name exist" in result.stdout


def test_the_values_of_jenkins_extra_headers_are_never_printed(env, jenkins_fake):
    """python-jenkins warns of the headers JENKINS_API_EXTRA_HEADERS adds, values and all,
    through logging.warning (jenkins.Jenkins.__init__): with no handler on the root logger,
    as in `check-config --live`, that call sets up logging's basicConfig and the line went out
    as bare text, a proxy's credential in front of Jenkins with it (the service's own handler
    hides the values: workers.telemetry.logs). The headers still go with every request."""
    config, values = env

    result = check_live(config, values | {
        "JENKINS_API_EXTRA_HEADERS": "X-Proxy-Token: hush-5d1e9\nX-Team: ci"})

    assert result.returncode == 0, result.stderr
    assert "hush-5d1e9" not in result.stdout + result.stderr
    assert {r.headers.get("X-Proxy-Token") for r in jenkins_fake.requests} == {"hush-5d1e9"}


def test_a_routed_job_written_in_another_case_than_jenkins_names_it(env, jenkins_fake):
    """Jenkins finds an item by its name in any case (Jenkins.items and AbstractFolder.items
    are CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), so a route's 'Team/Build' starts
    the job 'team/build'; but every name Jenkins gives back (queue items, runs, the
    Notification plugin's URL) is 'team/build', and each is compared with the route's as
    written: its COMPLETED was ignored as another job's, a retried trigger found no queued
    item (a second build), a Replay was not adopted. Said, with the name to write."""
    config, values = env
    file = load_file_config(config)
    cased = file.model_copy(update={"routes": tuple(
        r.model_copy(update={"job": "Team/Build"}) for r in file.routes)})

    assert live.jenkins_jobs(_jenkins(jenkins_fake), cased) == [
        "job 'Team/Build': Jenkins names it 'team/build'; write it so: the names Jenkins gives "
        "back (queue items, runs, notifications) are compared with the route's as written"]
    assert live.jenkins_jobs(_jenkins(jenkins_fake), file) == []


def test_a_limit_range_max_below_what_a_template_needs_at_least_is_named(
        env, kube, jenkins_fake, monkeypatch, capsys):
    """A per-container max below a template's min (with the injected agent's 100m beside
    the build) had every build of it fail as pod_refused, and no check said so before the
    first push; a max the template's range can meet sizes its pods down, and is fine."""
    config, values = env
    kube.add_limit_range(NAMESPACE, "caps", [{"type": "Container", "max": {"cpu": "1"}}])
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 0, result.stderr
    assert f"namespace {NAMESPACE}'s LimitRanges admit every template's size" in result.stdout

    kube.add_limit_range(NAMESPACE, "tight", [{"type": "Container", "max": {"cpu": "500m"}}])
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 2, result.stderr
    assert errors(result) == [
        f"namespace {NAMESPACE}: the LimitRange per-container cpu max 500m is beyond what "
        "template 'small' can be sized to (its min..max, with the agent's share): the API "
        "server refuses its every pod, and each build fails (pod_refused)"]


def test_a_pod_max_below_what_a_templates_pod_needs_at_least_is_named(
        env, kube, jenkins_fake, monkeypatch, capsys):
    """A Pod item bounds the sum of the pod's containers (the build's 500m min and the
    injected agent's 100m here): a Pod max below it had every build fail as pod_refused
    ("maximum cpu usage per Pod is 500m, but limit is 600m."); one the range can meet sizes
    the pod down, and is fine."""
    config, values = env
    kube.add_limit_range(NAMESPACE, "per-pod", [{"type": "Pod", "max": {"cpu": "600m"}}])
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 0, result.stderr

    kube.add_limit_range(NAMESPACE, "tighter", [{"type": "Pod", "max": {"cpu": "500m"}}])
    result = check_live_in_process(config, values, monkeypatch, capsys)
    assert result.returncode == 2, result.stderr
    assert errors(result) == [
        f"namespace {NAMESPACE}: the LimitRange per-pod cpu max 500m is beyond what "
        "template 'small' can be sized to (its min..max, with the agent's share): the API "
        "server refuses its every pod, and each build fails (pod_refused)"]


def test_an_ephemeral_storage_or_gpu_ask_beyond_a_limit_range_is_named(env, kube,
                                                                        jenkins_fake):
    """A template's ephemeralStorage and extended resources are what its builds need, and
    nothing sizes them: one above a per-container or per-pod max (or below a min) had every
    pod refused ("maximum ephemeral-storage usage per Container is 1Gi, but request is 2Gi.",
    limitranger maxConstraint) and every build fail as pod_refused, while the check said the
    LimitRanges admitted every template. Only the sized cpu and memory were compared."""
    config, _ = env
    file = load_file_config(config)
    small = file.templates["small"].model_copy(update={
        "ephemeral_storage": 2 * 2**30, "resources": {"nvidia.com/gpu": 1}})
    asks = file.model_copy(update={"templates": {"small": small}})
    kube.add_limit_range(NAMESPACE, "fits", [
        {"type": "Container", "max": {"ephemeral-storage": "4Gi", "nvidia.com/gpu": "1"}}])
    assert live.limit_ranges(kube.api_client(), NAMESPACE, asks) == []

    kube.add_limit_range(NAMESPACE, "tight", [
        {"type": "Container", "max": {"ephemeral-storage": "1Gi"}},
        {"type": "Pod", "min": {"nvidia.com/gpu": "2"}}])
    said = "is not met by what template 'small' asks (ephemeralStorage, resources): the API " \
           "server refuses its every pod, and each build fails (pod_refused)"
    assert live.limit_ranges(kube.api_client(), NAMESPACE, asks) == [
        f"namespace {NAMESPACE}: the LimitRange per-container ephemeral-storage max 1Gi {said}",
        f"namespace {NAMESPACE}: the LimitRange per-pod nvidia.com/gpu min 2 {said}"]
    assert live.limit_ranges(kube.api_client(), NAMESPACE, file) == []


def test_a_ratio_on_a_resource_some_container_asks_none_of_is_named(env, kube, jenkins_fake):
    """A Container maxLimitRequestRatio refuses a container asking none of its resource
    ("ephemeral-storage max limit to request ratio per Container is 2, but no request is
    specified or request is 0.", limitranger limitRequestRatioConstraint) unless a
    defaultRequest gives it one: with ephemeral-storage only the build container may ask,
    so every pod was refused, every build failed as pod_refused, and the check said
    nothing."""
    config, _ = env
    file = load_file_config(config)
    kube.add_limit_range(NAMESPACE, "ratio", [
        {"type": "Container", "maxLimitRequestRatio": {"ephemeral-storage": "2"}}])
    assert live.limit_ranges(kube.api_client(), NAMESPACE, file) == [
        f"namespace {NAMESPACE}: the LimitRange per-container ephemeral-storage "
        "maxLimitRequestRatio 2 (none asked by jenkins-agent, jnlp) refuses every pod of "
        "template 'small': a container asking none of it is refused, and no LimitRange gives "
        "it a default request and limit; each build fails (pod_refused)"]
    # a default (stored with its defaultRequest) gives every container one: fine
    kube.add_limit_range(NAMESPACE, "ratio", [
        {"type": "Container", "maxLimitRequestRatio": {"ephemeral-storage": "2"},
         "default": {"ephemeral-storage": "1Gi"}}])
    assert live.limit_ranges(kube.api_client(), NAMESPACE, file) == []


def test_a_ratio_whose_resource_only_a_min_defaults_is_named(env, kube, jenkins_fake):
    """A Container `min` is stored as the item's defaultRequest (SetDefaults_LimitRangeItem)
    but gives no default limit: a container asking none of the resource gets the request and
    no limit, and the ratio refuses it, 403 "ephemeral-storage max limit to request ratio per
    Container is 2, but no limit is specified or limit is 0." (limitRequestRatioConstraint).
    The check took the defaultRequest alone for enough and said nothing, while every pod was
    refused (the fake LimitRanger refuses it as the API server does)."""
    config, _ = env
    file = load_file_config(config)
    kube.add_limit_range(NAMESPACE, "ratio", [
        {"type": "Container", "maxLimitRequestRatio": {"ephemeral-storage": "2"},
         "min": {"ephemeral-storage": "1Gi"}}])
    assert live.limit_ranges(kube.api_client(), NAMESPACE, file) == [
        f"namespace {NAMESPACE}: the LimitRange per-container ephemeral-storage "
        "maxLimitRequestRatio 2 (none asked by jenkins-agent, jnlp) refuses every pod of "
        "template 'small': a container asking none of it is refused, and no LimitRange gives "
        "it a default request and limit; each build fails (pod_refused)"]


def test_a_pod_bound_on_ephemeral_storage_no_container_limits_is_named(env, kube,
                                                                      jenkins_fake):
    """A Pod max of ephemeral-storage checks the pod's summed limits, and no container of
    ours names an ephemeral-storage limit (the build container asks its ephemeralStorage as a
    request only): the API server refuses every pod, 403 "maximum ephemeral-storage usage
    per Pod is 10Gi.  No limit is specified." (limitranger maxConstraint on podLimits), every
    build fails as pod_refused, though the 2Gi asked is well within the max. The check only
    compared the amount asked with the max, and said nothing."""
    config, _ = env
    file = load_file_config(config)
    small = file.templates["small"].model_copy(update={"ephemeral_storage": 2 * 2**30})
    asks = file.model_copy(update={"templates": {"small": small}})
    kube.add_limit_range(NAMESPACE, "pod", [
        {"type": "Pod", "max": {"ephemeral-storage": "10Gi"}}])
    assert live.limit_ranges(kube.api_client(), NAMESPACE, asks) == [
        f"namespace {NAMESPACE}: the LimitRange per-pod ephemeral-storage max 10Gi (no "
        "container names a limit of it) refuses every pod of template 'small': the API "
        "server finds no sum of it to check; each build fails (pod_refused)"]
    # a Container default gives every container a limit of it: summed, fine
    kube.add_limit_range(NAMESPACE, "pod", [
        {"type": "Pod", "max": {"ephemeral-storage": "10Gi"}},
        {"type": "Container", "default": {"ephemeral-storage": "2Gi"}}])
    assert live.limit_ranges(kube.api_client(), NAMESPACE, asks) == []
