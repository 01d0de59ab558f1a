"""Re-runs on the real path (web app, real redis-server, RQ worker, kmock over HTTP, the Jenkins
fake): a commit builds again when it is pushed again after its build finished, as a run of its
own (agent, pod, Jenkins node and build); a delivery id is a duplicate within its window, and
a second push of a commit whose run is in flight is a duplicate."""

import json

from tests.integration.test_caps import complete
from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE, PUSH
from tests.support.app import GITLAB_TOKEN, work
from workers.adapters.expiry import expire_ended
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER

CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small, parameters: {GIT_COMMIT: "{sha}"}}
templates:
  small:
    podRetention: onFailure
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""


def push(client, delivery: str):
    """The same push (same project, ref and commit) in a delivery of the given id."""
    return client.post("/webhooks/gitlab", data=PUSH, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery, "Content-Type": "application/json"})


def pods(kube) -> list[str]:
    return sorted(p["metadata"]["name"] for p in kube.pods(NAMESPACE))


def run_to_the_end(app, kube, jenkins_fake, key: str, status: str = "SUCCESS") -> str:
    """The run's agent comes up and its Jenkins build ends (COMPLETED through the web app);
    the worker releases it. Returns the run's agent."""
    agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    complete(app.test_client(), jenkins_fake, agent, status=status)
    work(app)
    return agent


def test_a_commit_pushed_again_after_its_build_finished_builds_again_as_a_run_of_its_own(
        make_world, kube, jenkins_fake):
    app = make_world(CONFIG)
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    first = push(client, "delivery-1")
    assert first.status_code == 202
    work(app)
    old_agent = run_to_the_end(app, kube, jenkins_fake, first.json["build_key"], status="FAILURE")
    assert state.get_build(first.json["build_key"])["status"] == "retained"
    assert pods(kube) == [old_agent]  # the failed run's pod, kept for debugging

    second = push(client, "delivery-2")  # e.g. a force-push back to this commit
    assert second.status_code == 202, second.json
    work(app)

    assert second.json["build_key"] != first.json["build_key"]
    new_agent = state.get_build(second.json["build_key"])["agent"]
    assert new_agent != old_agent
    assert pods(kube) == sorted([old_agent, new_agent])  # the kept pod is left alone
    assert list(jenkins_fake.nodes) == [new_agent]
    old_build, new_build = jenkins_fake.builds
    assert old_build.parameters[BUILD_KEY_PARAMETER] == first.json["build_key"]
    assert (new_build.parameters[BUILD_KEY_PARAMETER], new_build.parameters[AGENT_PARAMETER]) \
        == (second.json["build_key"], new_agent)
    assert new_build.parameters["GIT_COMMIT"] == old_build.parameters["GIT_COMMIT"]
    assert state.get_build(second.json["build_key"])["status"] == "triggered"


def test_the_same_delivery_is_a_duplicate_within_its_window_even_after_the_build(
        make_world, kube, jenkins_fake):
    app = make_world(CONFIG)
    client = app.test_client()
    first = push(client, "delivery-1")
    work(app)
    run_to_the_end(app, kube, jenkins_fake, first.json["build_key"])
    assert pods(kube) == []

    again = push(client, "delivery-1")  # GitLab's "Resend" reuses the Idempotency-Key
    assert again.status_code == 200
    assert again.json == {"status": "duplicate", "build_key": first.json["build_key"],
                          "reason": "delivery already taken"}
    work(app)
    assert pods(kube) == [] and len(jenkins_fake.builds) == 1


def test_a_second_push_of_a_commit_whose_run_is_in_flight_is_a_duplicate(
        make_world, kube, jenkins_fake):
    app = make_world(CONFIG)
    client = app.test_client()
    first = push(client, "delivery-1")
    # Still in the intake (no build state yet), then provisioned, then running in Jenkins.
    while_queued = push(client, "delivery-2")
    work(app)
    agent = app.extensions["ci_autoscaler"].state.get_build(first.json["build_key"])["agent"]
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    (build,) = jenkins_fake.builds
    jenkins_fake.start_build(build.queue_id)
    while_running = push(client, "delivery-3")
    work(app)

    for answer in (while_queued, while_running):
        assert answer.status_code == 200
        assert answer.json == {"status": "duplicate", "build_key": first.json["build_key"],
                               "reason": "a run of this commit is in flight"}
    assert pods(kube) == [agent] and len(jenkins_fake.builds) == 1

    run_to_the_end(app, kube, jenkins_fake, first.json["build_key"])
    # delivery-3 was turned away as a duplicate and made nothing: sent again once the run is
    # over, it is a run of its own
    assert push(client, "delivery-3").status_code == 202
    work(app)
    assert len(pods(kube)) == 1 and len(jenkins_fake.builds) == 2


def test_a_second_run_retried_or_redelivered_still_makes_one_pod_and_one_build(
        make_world, kube, jenkins_fake):
    app = make_world(CONFIG)
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    first = push(client, "delivery-1")
    work(app)
    run_to_the_end(app, kube, jenkins_fake, first.json["build_key"])
    second = push(client, "delivery-2")
    work(app)

    request = json.loads(state.get_build(second.json["build_key"])["request"])
    state.queue.enqueue("workers.tasks.provision_agent", kwargs={"build": request})  # a retry
    assert push(client, "delivery-2").json["status"] == "duplicate"  # and a redelivery
    work(app)

    assert pods(kube) == [state.get_build(second.json["build_key"])["agent"]]
    assert [b.parameters[BUILD_KEY_PARAMETER] for b in jenkins_fake.builds] \
        == [first.json["build_key"], second.json["build_key"]]


def test_a_run_longer_than_the_build_ttl_is_in_flight_till_its_end(make_world, kube, jenkins_fake):
    """CI_AUTOSCALER_BUILD_TTL_SECONDS counts from a build's end: its commit's run mark goes
    with its state (expiry). The mark had that TTL from the push, so a run that waited or ran
    longer (a 2 h build under a 1 h TTL; a test's TTL of seconds) was no longer in flight: the
    same commit pushed again (another hook's delivery) built a second time while it ran, and
    the catch-up, which reads the mark as "built", built the head again."""
    app = make_world(CONFIG, CI_AUTOSCALER_BUILD_TTL_SECONDS="5")
    client = app.test_client()
    key = push(client, "delivery-long").json["build_key"]
    work(app)
    state = app.extensions["ci_autoscaler"].state
    mark = f"{state.prefix}commit:{state.get_build(key)['commit']}"
    assert state.redis.ttl(mark) > 5  # kept while the run is in flight, however long
    run_to_the_end(app, kube, jenkins_fake, key)
    ended = state.redis.zscore(f"{state.prefix}ended", key)
    assert expire_ended(state, now=ended + 5, ttl_seconds=5) == 1
    assert not state.redis.exists(mark)  # gone with the run's state, 5 s after its end
