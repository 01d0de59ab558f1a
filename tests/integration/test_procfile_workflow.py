"""The everyday workflow through the Procfile's three processes, each line run through a shell
as honcho and foreman run it, on a real Redis, kmock over HTTP and the Jenkins fake: a push, its
build, its end, a second push to the same branch, a tag push, a branch and a tag deleted. Every
answer is what the sender's rules expect, every agent goes when its build ends, and no process
logs an error or a secret (the webhook tokens, the Jenkins API token, an agent's secret)."""

import json

import pytest

from tests.support.monitoring import wait_until
from tests.support.payloads import EXAMPLE_CONFIG, fixture, fixture_bytes
from tests.support.jenkins_fake import JenkinsFake
from tests.support.procfile import GITLAB_TOKEN, JENKINS_TOKEN, running_stack
from workers.core.routing import AGENT_PARAMETER

NAMESPACE = "ci-agents"
ZERO = "0" * 40


@pytest.fixture
def stack(redis_url, kube, jenkins_fake, tmp_path):
    for node in ("node-a", "node-b"):  # the example's template selects Linux nodes
        kube.add_node(node, cpu="8", memory="32Gi", labels={"kubernetes.io/os": "linux"})
        kube.set_node_usage(node, cpu="500m", memory="2Gi")
    # The chart can enforce Pod Security `restricted` on the agents' namespace
    # (agents.podSecurity.enforce); kmock then refuses any pod not hardened to it.
    kube.add_namespace(NAMESPACE, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    with running_stack(redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                       config=EXAMPLE_CONFIG, namespace=NAMESPACE, logs=tmp_path) as running:
        yield running


def _push(sha: str, **change) -> bytes:
    return json.dumps(fixture("gitlab_push_real_lrz.json")
                      | {"after": sha, "checkout_sha": sha} | change).encode()


def test_push_build_end_second_push_tag_and_deletions_through_the_procfile(
        stack, kube, jenkins_fake):
    pods = lambda: sorted(p["metadata"]["name"] for p in kube.pods(NAMESPACE))  # noqa: E731

    def build_of(sha: str):
        return wait_until(lambda: jenkins_fake.build_with("GIT_COMMIT", sha), timeout=60,
                          what=f"the build of {sha[:8]} in Jenkins")[0]

    first_sha = fixture("gitlab_push_real_lrz.json")["checkout_sha"]
    assert stack.gitlab(fixture_bytes("gitlab_push_real_lrz.json"), "Push Hook", "d-1")[0] == 202
    first = build_of(first_sha)
    agent = first.parameters[AGENT_PARAMETER]
    wait_until(lambda: agent in pods() and agent in jenkins_fake.nodes, timeout=60,
               what="the first build's pod and Jenkins agent")
    agent_secrets = [jenkins_fake.nodes[agent].secret]
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(first.queue_id, agent)]
    assert stack.jenkins(jenkins_fake.notification(first, "QUEUED"))[1]["status"] == "ignored"
    assert stack.jenkins(jenkins_fake.notification(first, "STARTED"))[1]["status"] == "recorded"

    # A second push to the same branch while the first build runs: a build of its own.
    assert stack.gitlab(_push("b" * 40, before=first_sha), "Push Hook", "d-2")[0] == 202
    second = build_of("b" * 40)
    assert second.parameters[AGENT_PARAMETER] != agent

    jenkins_fake.finish_build(first.queue_id, "SUCCESS")
    assert stack.jenkins(jenkins_fake.notification(first, "COMPLETED"))[0] == 202
    assert stack.jenkins(jenkins_fake.notification(first, "FINALIZED"))[1]["status"] \
        == "duplicate"
    wait_until(lambda: agent not in pods() and agent not in jenkins_fake.nodes, timeout=60,
               what="the first build's pod and agent deleted")

    tag = fixture("gitlab_tag_push_create_real_lrz.json")
    assert stack.gitlab(fixture_bytes("gitlab_tag_push_create_real_lrz.json"),
                        "Tag Push Hook", "d-3")[0] == 202
    tagged = build_of(tag["checkout_sha"])
    assert tagged.parameters["GIT_TAG"] == "v0.2.0-test"

    deleted = _push(ZERO, before="b" * 40, checkout_sha=None, commits=[], total_commits_count=0)
    assert stack.gitlab(deleted, "Push Hook", "d-4") == (
        200, {"status": "ignored", "reason": "branch deleted"})
    assert stack.gitlab(fixture_bytes("gitlab_tag_push_delete_real_lrz.json"),
                        "Tag Push Hook", "d-5")[1]["status"] == "ignored"

    # The other two builds run and end: nothing of ours is left.
    for build in (second, tagged):
        name = build.parameters[AGENT_PARAMETER]
        wait_until(lambda: name in jenkins_fake.nodes, timeout=60, what=f"agent {name}")
        agent_secrets.append(jenkins_fake.nodes[name].secret)
        jenkins_fake.connect_agent(name)
    jenkins_fake.dispatch()
    for build in (second, tagged):
        jenkins_fake.finish_build(build.queue_id, "FAILURE")
        assert stack.jenkins(jenkins_fake.notification(build, "COMPLETED"))[0] == 202
    wait_until(lambda: not pods() and not jenkins_fake.nodes, timeout=60,
               what="every pod and agent deleted")
    assert len(jenkins_fake.builds) == 3

    codes = stack.stop()
    assert codes == {"web": 0, "worker": 0, "reconcile": 0}, stack.text()[-3000:]
    text = stack.text()
    errors = [line for line in text.splitlines() if '"level":"error"' in line]
    assert errors == [], errors
    secrets = [GITLAB_TOKEN, JENKINS_TOKEN, jenkins_fake.token, *agent_secrets]
    assert [s for s in secrets if s in text] == []


def test_a_jenkins_under_a_path_and_a_folder_job_through_the_procfile(
        redis_url, kube, tmp_path):
    """Jenkins as many run it behind a reverse proxy: `--prefix=/jenkins`, JENKINS_URL written
    with its final slash, and the routes' job in a folder (`team/build`, the URL
    job/team/job/build). A push builds on its agent, whose pod connects to the prefixed URL;
    STARTED and COMPLETED, which name the job by its URL, release the agent."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi", labels={"kubernetes.io/os": "linux"})
        kube.set_node_usage(node, cpu="500m", memory="2Gi")
    kube.add_namespace(NAMESPACE)
    config = tmp_path / "folder.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("    job: build", "    job: team/build"))
    pods = lambda: [p["metadata"]["name"] for p in kube.pods(NAMESPACE)]  # noqa: E731
    with JenkinsFake(context_path="/jenkins") as jenkins, running_stack(
            redis_url=redis_url, kube=kube, jenkins_fake=jenkins, config=config,
            namespace=NAMESPACE, logs=tmp_path, JENKINS_URL=f"{jenkins.url}/") as stack:
        assert stack.gitlab(fixture_bytes("gitlab_push_real_lrz.json"), "Push Hook", "p-1")[0] \
            == 202
        [build] = wait_until(lambda: jenkins.builds, timeout=60, what="the build in Jenkins")
        assert build.job == "team/build"
        agent = build.parameters[AGENT_PARAMETER]
        wait_until(lambda: agent in pods() and agent in jenkins.nodes, timeout=60,
                   what="the build's pod and Jenkins agent")
        [pod] = [p for p in kube.pods(NAMESPACE) if p["metadata"]["name"] == agent]
        env = {e["name"]: e.get("value") for c in pod["spec"]["containers"]
               for e in c.get("env", [])}
        assert env["JENKINS_URL"] == f"{jenkins.url}/"  # http://127.0.0.1:PORT/jenkins/
        jenkins.connect_agent(agent)
        assert jenkins.dispatch() == [(build.queue_id, agent)]
        assert stack.jenkins(jenkins.notification(build, "STARTED"))[1]["status"] == "recorded"
        jenkins.finish_build(build.queue_id, "SUCCESS")
        assert stack.jenkins(jenkins.notification(build, "COMPLETED"))[0] == 202
        wait_until(lambda: agent not in pods() and agent not in jenkins.nodes, timeout=60,
                   what="the pod and agent deleted")
        codes = stack.stop()
    assert codes == {"web": 0, "worker": 0, "reconcile": 0}, stack.text()[-3000:]
    assert [line for line in stack.text().splitlines() if '"level":"error"' in line] == []


# A multibranch Pipeline names the job of branch "feature/login" "feature%2Flogin" (branch-api
# NameEncoder: '/' is no item name's), whose URL escapes it once more (Util.rawEncode:
# job/app/job/feature%252Flogin/); a job a person names may hold spaces and non-ASCII letters.
@pytest.mark.parametrize("job", ["app/feature%2Flogin", "Team A/über build"],
                         ids=["multibranch-branch", "spaces-non-ascii"])
def test_a_job_whose_name_jenkins_escapes_in_its_urls_through_the_procfile(
        redis_url, kube, tmp_path, job):
    """The route names the job as Jenkins' full name has it (`fullName`); the trigger, the
    agent's build, STARTED and COMPLETED (whose `url` is the escaped one) and the release all
    find that one job, JENKINS_URL written without its final slash under a context path."""
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi", labels={"kubernetes.io/os": "linux"})
        kube.set_node_usage(node, cpu="500m", memory="2Gi")
    kube.add_namespace(NAMESPACE)
    config = tmp_path / "escaped.yaml"
    config.write_text(EXAMPLE_CONFIG.read_text().replace("    job: build",
                                                         f"    job: {json.dumps(job)}"))
    pods = lambda: [p["metadata"]["name"] for p in kube.pods(NAMESPACE)]  # noqa: E731
    with JenkinsFake(context_path="/jenkins") as jenkins, running_stack(
            redis_url=redis_url, kube=kube, jenkins_fake=jenkins, config=config,
            namespace=NAMESPACE, logs=tmp_path, JENKINS_URL=jenkins.url) as stack:
        assert stack.gitlab(fixture_bytes("gitlab_push_real_lrz.json"), "Push Hook", "e-1")[0] \
            == 202
        [build] = wait_until(lambda: jenkins.builds, timeout=60, what="the build in Jenkins")
        assert build.job == job
        agent = build.parameters[AGENT_PARAMETER]
        wait_until(lambda: agent in pods() and agent in jenkins.nodes, timeout=60,
                   what="the build's pod and Jenkins agent")
        jenkins.connect_agent(agent)
        assert jenkins.dispatch() == [(build.queue_id, agent)]
        started = jenkins.notification(build, "STARTED")
        assert "%25" in started["url"] or "%20" in started["url"]  # escaped as Jenkins does
        assert stack.jenkins(started)[1]["status"] == "recorded"
        jenkins.finish_build(build.queue_id, "SUCCESS")
        assert stack.jenkins(jenkins.notification(build, "COMPLETED"))[0] == 202
        wait_until(lambda: agent not in pods() and agent not in jenkins.nodes, timeout=60,
                   what="the pod and agent deleted")
        codes = stack.stop()
    assert codes == {"web": 0, "worker": 0, "reconcile": 0}, stack.text()[-3000:]
    assert [line for line in stack.text().splitlines() if '"level":"error"' in line] == []
    assert [line for line in stack.text().splitlines() if '"level":"warning"' in line
            and "job" in line] == []
