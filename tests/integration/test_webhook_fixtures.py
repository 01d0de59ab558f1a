"""Every real capture of ../shared/fixtures/webhooks, sent as its sender sends it, is accepted or
refused as the sender's rules say (the fixtures' SOURCES.md): GitLab counts any 4xx or 5xx
towards disabling the hook, so every event that is handled or deliberately ignored is a 2xx, and
only a misconfigured hook (no or a wrong token) a 4xx. A fixture added to the directory without
a verdict here fails the suite, so none goes unchecked."""

import json

import pytest

from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN
from tests.support.payloads import FIXTURES, fixture, fixture_bytes
from workers.core.routing import AGENT_PARAMETER

ZERO = "0" * 40
# file -> (endpoint, headers as the sender sends them, status, answer's "status"). Headers from
# SOURCES.md: GitLab sends X-Gitlab-Event and X-Gitlab-Token; the Jenkins Notification plugin
# no header (its token travels in the URL); GitHub its own headers and no GitLab token.
VERDICTS = {
    "gitlab_push_real_lrz.json": ("gitlab", {"X-Gitlab-Event": "Push Hook"}, 202, "queued"),
    "gitlab_tag_push_create_real_lrz.json":
        ("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, 202, "queued"),
    "gitlab_tag_push_delete_real_lrz.json":
        ("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, 200, "ignored"),
    "gitlab_merge_request_open_real_lrz.json":
        ("gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, 200, "ignored"),
    "gitlab_merge_request_merge_real_lrz.json":
        ("gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, 200, "ignored"),
    "gitlab_job_gitlabcom_2023_gogitlab.json":
        ("gitlab", {"X-Gitlab-Event": "Job Hook"}, 200, "ignored"),
    "jenkins_notification_started.json": ("jenkins", {}, 200, "ignored"),
    "jenkins_notification_completed_unstable.json": ("jenkins", {}, 200, "ignored"),
    "jenkins_notification_finalized.json": ("jenkins", {}, 200, "ignored"),
    "jenkins_notification_finished_legacy.json": ("jenkins", {}, 200, "ignored"),
    # A GitHub delivery pointed at our GitLab endpoint carries no X-Gitlab-Token: a
    # misconfigured hook, the one case for a 4xx.
    "github_workflow_job_completed.json":
        ("gitlab-as-github", {"X-GitHub-Event": "workflow_job"}, 401, "unauthorized"),
}


def send(client, endpoint: str, body: bytes, headers: dict[str, str]):
    if endpoint == "jenkins":  # the plugin: POST, JSON, token in the URL
        return client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", data=body,
                           headers={"Content-Type": "application/json;charset=UTF-8"})
    token = {} if endpoint == "gitlab-as-github" else {"X-Gitlab-Token": GITLAB_TOKEN}
    return client.post("/webhooks/gitlab", data=body, headers={
        "Content-Type": "application/json", **token, **headers})


def test_every_fixture_has_a_verdict():
    assert {path.name for path in FIXTURES.glob("*.json")} == set(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_each_fixture_is_answered_as_its_sender_expects(client, stored, name):
    endpoint, headers, status, result = VERDICTS[name]
    response = send(client, endpoint, fixture_bytes(name), headers)
    assert (response.status_code, response.json["status"]) == (status, result), response.json
    assert stored() == (1 if status == 202 else 0)


def test_a_github_delivery_with_our_token_is_still_no_build(client, stored):
    response = send(client, "gitlab", fixture_bytes("github_workflow_job_completed.json"),
                    {"X-GitHub-Event": "workflow_job"})
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert stored() == 0


def test_an_annotated_tag_builds_its_commit_not_the_tag_object(client, jobs):
    body = fixture("gitlab_tag_push_create_real_lrz.json")
    assert body["after"] != body["checkout_sha"]
    response = send(client, "gitlab", json.dumps(body).encode(),
                    {"X-Gitlab-Event": "Tag Push Hook"})
    assert response.status_code == 202
    [job] = jobs()
    build = job.kwargs["build"]
    assert build["sha"] == body["checkout_sha"]
    assert build["parameters"]["GIT_COMMIT"] == body["checkout_sha"]
    assert build["parameters"]["GIT_TAG"] == "v0.2.0-test"


# The push capture as GitLab changes it for the other kinds of push (SOURCES.md: a deletion has
# after = 40 zeros and checkout_sha null; a new branch before = 40 zeros; `commits` may be empty).
PUSH_VARIANTS = {
    "branch deleted": ({"after": ZERO, "checkout_sha": None, "commits": [],
                        "total_commits_count": 0}, 200, "ignored"),
    "branch created": ({"before": ZERO, "ref": "refs/heads/feature/x"}, 202, "queued"),
    "branch created at a known commit, no commits":
        ({"before": ZERO, "ref": "refs/heads/feature/y", "commits": [],
          "total_commits_count": 0}, 202, "queued"),
    "force-pushed back, no commits": ({"commits": [], "total_commits_count": 0}, 202, "queued"),
}


@pytest.mark.parametrize("variant", sorted(PUSH_VARIANTS))
def test_each_kind_of_push_is_answered_as_gitlab_expects(client, stored, variant):
    change, status, result = PUSH_VARIANTS[variant]
    body = fixture("gitlab_push_real_lrz.json") | change
    response = send(client, "gitlab", json.dumps(body).encode(), {"X-Gitlab-Event": "Push Hook"})
    assert (response.status_code, response.json["status"]) == (status, result), response.json
    assert stored() == (1 if status == 202 else 0)


# The Notification plugin's phases for a run on one of our agents (jenkinsci/notification-plugin
# Phase.java: QUEUED, STARTED, COMPLETED, FINALIZED, and NONE, which its `notifyEndpoints`
# step may send; FINISHED before plugin 1.6). Each alone, on a fresh build.
PHASES = {"QUEUED": (200, "ignored"), "STARTED": (200, "recorded"),
          "COMPLETED": (202, "queued"), "FINALIZED": (202, "queued"),
          "FINISHED": (202, "queued"), "NONE": (200, "ignored")}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_each_notification_phase_of_our_build_is_answered_2xx(client, jobs, phase):
    push = send(client, "gitlab", fixture_bytes("gitlab_push_real_lrz.json"),
                {"X-Gitlab-Event": "Push Hook"})
    jobs()  # the mover records the build and its agent
    state = client.application.extensions["ci_autoscaler"].state
    body = fixture("jenkins_notification_completed_unstable.json")
    body.update(name="build", url="job/build/")  # the job the example's routes start
    body["build"]["phase"] = phase
    body["build"]["parameters"][AGENT_PARAMETER] = state.get_build(
        push.json["build_key"])["agent"]
    if phase in ("QUEUED", "STARTED"):
        del body["build"]["status"]  # null fields are left out; no result yet
    response = send(client, "jenkins", json.dumps(body).encode(), {})
    assert (response.status_code, response.json["status"]) == PHASES[phase], response.json
