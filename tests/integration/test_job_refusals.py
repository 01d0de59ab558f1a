"""A Jenkins job that cannot take our builds (not parameterized, disabled, missing our
parameters) fails the build for good, through the real path: a GitLab push to the webhook,
the worker's mover, an RQ SimpleWorker with the production failure handler and scheduler,
kmock over HTTP and the Jenkins fake. Its one pod and Jenkins node are cleaned up, the RQ job is
not retried and the reconcile loop does not provision it again."""

import json
import logging
import time

import pytest
from rq import SimpleWorker

from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE, PUSH
from tests.support.app import GITLAB_TOKEN
from tests.support.jenkins_fake import FREESTYLE_JOB, GROOVY_LABEL_ASSIGNMENT
from workers import runtime
from workers.engine import jobs, reconcile, tasks
from workers.checks import jobs as job_checks
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER
from workers.engine.intake import Mover
from workers.adapters.redis_state import SERIALIZER

LEASE_SECONDS = 20
CONFIG = """
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: small
    parameters: {GIT_COMMIT: "{sha}", NOT_DECLARED: "x"}
templates:
  small:
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    maxConcurrent: 2
"""
OURS = [AGENT_PARAMETER, BUILD_KEY_PARAMETER]


@pytest.fixture
def app(app_on_cluster):
    return app_on_cluster(CONFIG, namespace=NAMESPACE,
                          CI_AUTOSCALER_PROVISION_LEASE_SECONDS=str(LEASE_SECONDS))


def run_worker(app) -> None:
    """`ci-autoscaler worker --burst`: the mover, then the jobs, with the production failure
    handler and RQ's scheduler (which would move a retried job back to the queue)."""
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()
    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER)
    worker.push_exc_handler(jobs.failure_handler(tasks.engine_metrics(runtime.current()),
                                                 state))
    worker.work(burst=True, with_scheduler=True)


def pod_creates(kube) -> list[str]:
    return [r for r in kube.requests()
            if r.startswith(f"POST /api/v1/namespaces/{NAMESPACE}/pods")]


def metrics(app) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def assert_refused_for_good(app, kube, jenkins_fake, key, message, caplog):
    state = app.extensions["ci_autoscaler"].state
    rt = runtime.current()
    assert len(pod_creates(kube)) == 1  # exactly one pod...
    assert kube.pods(NAMESPACE) == []  # ...and it is gone,
    assert jenkins_fake.nodes == {}  # with its Jenkins node
    build = state.get_build(key)
    assert build["status"] == "failed"
    assert message in build["error"]
    assert state.queue.failed_job_registry.count == 1
    assert state.queue.scheduled_job_registry.count == 0  # the RQ retry stopped
    assert rt.capacity.reservations() == {} and rt.capacity.slots() == {}
    refusals = [r for r in caplog.records if r.getMessage().startswith("build refused")]
    assert len(refusals) == 1 and message in refusals[0].error

    # A reconcile pass long after the lease does not provision it again.
    result = reconcile.reconcile_once(rt, now=time.time() + 20 * LEASE_SECONDS)
    assert result["stalled_builds_restarted"] == 0
    assert state.queue.count == 0
    run_worker(app)
    assert len(pod_creates(kube)) == 1

    text = metrics(app)
    assert 'ci_autoscaler_jobs_failed_total{task="provision_agent"} 1.0' in text
    assert 'ci_autoscaler_errors_total{component="provision",kind="permanent"} 1.0' in text
    assert 'ci_autoscaler_agents_deleted_total{reason="job_refused",template="small"} 1.0' \
        in text


@pytest.mark.parametrize("job, message", [
    ({"parameters": None}, "This build is not parameterized!"),
    ({"disabled": True}, "build is not buildable!"),
    ({"parameters": ["GIT_COMMIT", AGENT_PARAMETER]},
     f"does not declare the parameter {BUILD_KEY_PARAMETER}"),
    # A freestyle job runs where its own label expression says, which takes no parameter
    # (AbstractProject.getAssignedLabel): with a String CI_AUTOSCALER_AGENT its build waited
    # in Jenkins' queue for good while its agent idled
    ({"kind": FREESTYLE_JOB, "agent_parameter_type": "StringParameterDefinition"},
     f"whose {AGENT_PARAMETER} is a StringParameterDefinition"),
], ids=["not-parameterized", "disabled", "no-build-key", "freestyle-string-agent"])
def test_a_job_that_cannot_take_the_build_fails_it_for_good_and_cleans_up(
        app, kube, jenkins_fake, caplog, job, message):
    jenkins_fake.add_job("build", **job)
    caplog.set_level(logging.INFO)

    key = push(app.test_client(), 1)
    run_worker(app)

    assert jenkins_fake.requests_to("/job/build/buildWithParameters") == []  # read, not tried
    assert jenkins_fake.builds == []
    assert_refused_for_good(app, kube, jenkins_fake, key, message, caplog)
    # The job is a Pipeline (the fake's default kind, as Jenkins' _class says): one refused
    # for its parameters is told that its Jenkinsfile's reach it only after a run.
    error = app.extensions["ci_autoscaler"].state.get_build(key)["error"]
    assert ("JENKINS-41929" in error) == (not job.get("disabled") and "kind" not in job), error


def test_a_freestyle_job_whose_groovy_label_script_reads_a_string_agent_takes_the_build(
        app, kube, jenkins_fake):
    """The Groovy Label Assignment plugin's script puts the build on the label it returns,
    the build's parameters bound in it: a String CI_AUTOSCALER_AGENT steers a freestyle job
    that way, so its builds are triggered, not refused."""
    jenkins_fake.add_job("build", kind=FREESTYLE_JOB,
                         agent_parameter_type="StringParameterDefinition",
                         properties=(GROOVY_LABEL_ASSIGNMENT,))

    push(app.test_client(), 1)
    run_worker(app)

    assert len(jenkins_fake.requests_to("/job/build/buildWithParameters", "POST")) == 1
    assert len(jenkins_fake.builds) == 1


@pytest.mark.parametrize("change, reads, message", [
    # 500 with Jenkins' error page, which hides the message: the adapter reads the job again
    ({"parameters": None}, 2, "This build is not parameterized!"),
    ({"disabled": True}, 1, "build is not buildable!"),  # 409, the message in its text
    # a plugin's QueueDecisionHandler vetoed it: a 302 to the job's page, no queue item
    ({"vetoed": True}, 1, "it queued no build (a plugin's QueueDecisionHandler vetoed it"),
], ids=["not-parameterized", "disabled", "vetoed"])
def test_a_job_changed_since_it_was_read_is_refused_by_jenkins_itself_and_not_retried(
        app, kube, jenkins_fake, caplog, change, reads, message):
    """The reading is a minute old: Jenkins' own answer to the trigger (500 with its error
    page, or 409) is the permanent error, with Jenkins' message."""
    job = jenkins_fake.add_job("build", parameters=OURS)
    job_checks.definition(runtime.current().jenkins, "build")  # read while it was fine
    job.disabled = change.get("disabled", False)
    job.vetoed = change.get("vetoed", False)
    job.parameters = change.get("parameters", job.parameters)
    caplog.set_level(logging.INFO)

    key = push(app.test_client(), 1)
    run_worker(app)

    assert len(jenkins_fake.requests_to("/job/build/buildWithParameters", "POST")) == 1
    assert len(jenkins_fake.requests_to("/job/build/api/json", "GET")) == reads
    assert jenkins_fake.builds == []
    assert_refused_for_good(app, kube, jenkins_fake, key, message, caplog)
    assert "Logging ID" not in state_error(app, key) and "IOException" not in state_error(app, key)


def test_a_job_fixed_after_a_refusal_takes_the_next_build_at_once(app, kube, jenkins_fake):
    """README: a new Pipeline's builds are refused until it has run once by hand; the operator
    runs it (its Jenkinsfile's parameters now declared) and pushes again. The reading that
    refused the first build was kept for a minute, so the next push was refused for good too,
    by a job Jenkins would have run: a refusal is read again before it fails a build."""
    jenkins_fake.add_job("build", parameters=None)
    state = app.extensions["ci_autoscaler"].state
    refused = push(app.test_client(), 1)
    run_worker(app)
    assert state.get_build(refused)["status"] == "failed"

    jenkins_fake.add_job("build", parameters=[*OURS, "GIT_COMMIT"])  # the Pipeline ran once
    key = push(app.test_client(), 2)
    run_worker(app)

    assert [b.parameters[BUILD_KEY_PARAMETER] for b in jenkins_fake.builds] == [key]
    assert state.get_build(key)["status"] != "failed", state.get_build(key)


def state_error(app, key) -> str:
    return app.extensions["ci_autoscaler"].state.get_build(key)["error"]


def test_parameters_the_job_does_not_declare_are_warned_about_once_and_builds_go_on(
        app, kube, jenkins_fake, caplog):
    jenkins_fake.add_job("build", parameters=[*OURS, "GIT_COMMIT"])
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.checks.jobs")

    keys = [push(app.test_client(), n) for n in (1, 2)]
    run_worker(app)

    assert sorted(b.parameters[BUILD_KEY_PARAMETER] for b in jenkins_fake.builds) == sorted(keys)
    assert all("NOT_DECLARED" not in b.parameters for b in jenkins_fake.builds)
    warnings = [r for r in caplog.records
                if r.getMessage() == "Jenkins will drop parameters the job does not declare"]
    assert len(warnings) == 1 and warnings[0].parameters == ["NOT_DECLARED"]
    assert warnings[0].job == "build"
    # one reading of the job for both builds
    assert len(jenkins_fake.requests_to("/job/build/api/json", "GET")) == 1


def test_a_build_whose_template_is_gone_fails_for_good_and_its_commit_builds_again(
        app, kube, jenkins_fake, tmp_path):
    """A push queued, then the worker restarted with its template renamed (a new release of
    the config file): its provision raised "unknown pod template" and left it queued, so the
    reconcile loop provisioned it again every lease period, for ever, and its commit's run
    mark (30 days: workers.config.settings.RUN_MARK_MIN_TTL_SECONDS) held that commit "in
    flight": the same commit pushed again was a duplicate, and never built. It is refused now,
    as a job Jenkins cannot start is."""
    jenkins_fake.add_job("build", parameters=OURS + ["GIT_COMMIT", "NOT_DECLARED"])
    state = app.extensions["ci_autoscaler"].state
    key = push(app.test_client(), 1)
    Mover(state).drain()  # its state written on the template of then, its job queued
    (tmp_path / "config.yaml").write_text(CONFIG.replace("small", "renamed"))
    runtime.install(None)  # the worker restarts with the new file
    run_worker(app)

    build = state.get_build(key)
    assert build["status"] == "failed", build
    assert "unknown pod template 'small'" in build["error"]
    result = reconcile.reconcile_once(runtime.current(), now=time.time() + 20 * LEASE_SECONDS)
    assert result["stalled_builds_restarted"] == 0
    body = json.loads(PUSH)
    body["checkout_sha"] = body["after"] = f"{2:040x}"  # push(client, 1)'s commit, again
    again = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": "push-1-again"})
    assert again.status_code == 202, again.json
    Mover(state, routes=runtime.current().config.routes).drain()  # the worker's, as it runs
    run_worker(app)
    assert state.get_build(again.json["build_key"])["status"] == "triggered"
