"""The commit status a build's record calls for, GitLab's transitions, the texts and the
retry pauses (workers.core.commit_status)."""

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from workers.core.commit_status import (
    DECISION_SETTLE_SECONDS, DESCRIPTION_MAX_CHARS, RELEASE_SETTLE_SECONDS, RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS, WAIT_TEXT_SETTLE_SECONDS, State, description, may_follow, redact,
    ref_name, result_state, retry_delay, to_send, wait_text_ready, wanted)
from workers.core.start_failures import connect_timeout

SHA = "3f2a9c0d" * 5
BASE = {"project": "group/app", "sha": SHA, "job": "build", "delivery": "gitlab:abc",
        "status": "queued", "ref": "refs/heads/feature/x"}


def want(**fields):
    return wanted({**BASE, **fields}, nodes_needed=2)


@pytest.mark.parametrize("fields, state, text", [
    ({}, State.PENDING, "queued"),
    ({"status": "waiting", "wait_reason": "insufficient_memory"}, State.PENDING,
     "waiting for capacity: insufficient memory, 2 nodes needed"),
    ({"status": "waiting", "wait_reason": "cap", "wait_detail": "maven 10/10"},
     State.PENDING, "waiting: cap (maven 10/10)"),
    # a full ResourceQuota: named, and no nodes (more would not start it)
    ({"status": "waiting", "wait_reason": "quota", "wait_detail":
      "ResourceQuota compute: requests.cpu 8 of 8 used, the pod asks 2"}, State.PENDING,
     "waiting: quota (ResourceQuota compute: requests.cpu 8 of 8 used, the pod asks 2)"),
    # an admin's pause (`pods: 0`): named the same way, no nodes either
    ({"status": "waiting", "wait_reason": "paused", "wait_detail":
      "ResourceQuota pause: pods 0 of 0 used, the pod asks 1"}, State.PENDING,
     "waiting: paused (ResourceQuota pause: pods 0 of 0 used, the pod asks 1)"),
    ({"status": "triggered", "node": "node-a"}, State.PENDING, "agent starting on node-a"),
    ({"status": "triggered", "node": "node-a", "parked_at": "100",
      "wait_detail": "Build #5 is already in progress (ETA: 4 min 10 sec)"}, State.PENDING,
     "waiting in Jenkins: Build #5 is already in progress (ETA: 4 min 10 sec)"),
    ({"status": "running", "node": "node-a"}, State.RUNNING, "running on node-a"),
    ({"status": "done", "result": "SUCCESS"}, State.SUCCESS,
     "build succeeded (Jenkins: SUCCESS)"),
    ({"status": "released", "result": "UNSTABLE"}, State.FAILED,
     "build failed (Jenkins: UNSTABLE)"),
    ({"status": "released", "result": "FAILURE"}, State.FAILED, "build failed (Jenkins: FAILURE)"),
    ({"status": "released", "result": "ABORTED"}, State.CANCELED,
     "build canceled (Jenkins: ABORTED)"),
    ({"status": "failed", "fail_reason": "ErrImagePull",
      "error": "container build: ErrImagePull: pull access denied", "result": "ABORTED"},
     State.FAILED, "agent could not start: container build: ErrImagePull: pull access denied"),
    ({"status": "failed", "fail_reason": "pod_lost",
      "error": "agent pod cia-build-1 gone for 61s while its build ran", "result": "ABORTED"},
     State.FAILED, "agent lost while the build ran: agent pod cia-build-1 gone for 61s while "
                   "its build ran"),
    ({"status": "failed", "error": "job build is disabled"}, State.FAILED,
     "build could not start: job build is disabled"),
    ({"status": "released", "released_at": "100"}, State.CANCELED,
     "ended without a result from Jenkins"),
    # its build container OOM-killed: failed, out of memory, whatever Jenkins made of it,
    # but its SUCCESS (workers.job_history.learn)
    ({"status": "released", "oom_killed_bytes": str(1696 * 2**20), "result": "OOMKilled"},
     State.FAILED, "build ran out of memory: OOM-killed at its 1696Mi limit"),
    ({"status": "released", "oom_killed_bytes": str(2 * 2**30), "result": "ABORTED",
      "replaced_by": "oom-retry:x"}, State.FAILED,
     "build ran out of memory: OOM-killed at its 2Gi limit; started again with more memory"),
    ({"status": "released", "oom_killed_bytes": str(1500000000), "result": "FAILURE"},
     State.FAILED, "build ran out of memory: OOM-killed at its 1.4Gi limit"),
    ({"status": "released", "oom_killed_bytes": str(2 * 2**30), "result": "SUCCESS"},
     State.SUCCESS, "build succeeded (Jenkins: SUCCESS)"),
    # a Pipeline run left to decide after its agent was lost (workers.engine.lost_runs): running
    # while it decides, failed with the loss's reason if it ended without retrying, its
    # SUCCESS standing
    ({"status": "running", "node": "node-a", "lost_run": "pod: Evicted: low on memory",
      "lost_run_at": "1"}, State.RUNNING, "running on node-a"),
    ({"status": "released", "lost_run": "pod: Evicted: low on memory", "lost_run_at": "1",
      "result": "ABORTED"}, State.FAILED,
     "agent lost while the build ran: pod: Evicted: low on memory"),
    ({"status": "released", "lost_run": "pod: Evicted", "lost_run_at": "1",
      "result": "SUCCESS"}, State.SUCCESS, "build succeeded (Jenkins: SUCCESS)"),
    # while its image pull fails for now (workers.agent_starts.pulls)
    ({"status": "triggered", "node": "node-a", "pull_error": "ErrImagePull: 429 Too Many "
      "Requests"}, State.PENDING, "agent starting on node-a: image pull failing, the kubelet "
                                  "retries: ErrImagePull: 429 Too Many Requests"),
    ({"status": "released", "result": "UNKNOWN",
      "result_unconfirmed": "Jenkins discarded the run before its result was read"},
     State.CANCELED, "build ended, result unknown: Jenkins discarded the run before its "
                     "result was read"),
])
def test_the_record_decides_the_state_and_its_text(fields, state, text):
    w = want(**fields)
    assert (w.state, w.description) == (state, text)
    assert w.name == "ci-autoscaler/build" and (w.project, w.sha) == ("group/app", SHA)
    assert w.ref == "feature/x"  # GitLab keeps a status per name and ref


@pytest.mark.parametrize("ref, name", [("refs/heads/main", "main"), ("refs/tags/v1.2", "v1.2"),
                                       ("refs/heads/a/b", "a/b"), ("", None)])
def test_a_ref_is_named_as_gitlabs_api_names_it(ref, name):
    assert ref_name(ref) == name


@pytest.mark.parametrize("installation, record, name", [
    ("", {}, "ci-autoscaler/build"),  # one installation per GitLab: the name users have
    ("prod/ci-autoscaler", {}, "ci-autoscaler/build (prod/ci-autoscaler)"),
    # the name the build's first status went under, whatever the identity is now
    ("prod/ci-autoscaler", {"status_name": "ci-autoscaler/build"}, "ci-autoscaler/build"),
    ("", {"status_name": "ci-autoscaler/build (a)"}, "ci-autoscaler/build (a)"),
])
def test_the_status_is_named_for_an_installation_with_an_identity(installation, record, name):
    assert wanted({**BASE, **record}, installation=installation).name == name


def test_running_and_final_states_link_the_jenkins_build_and_pending_does_not():
    url = "https://jenkins.example.com/job/build/7/"
    assert want(status="running", build_url=url).target_url == url
    assert want(status="done", result="SUCCESS", build_url=url).target_url == url
    assert want(status="waiting", wait_reason="cap", build_url=url).target_url is None
    assert want(status="running", build_url="https://ci:s3cret@jenkins.example.com/job/b/7/"
                ).target_url == "https://jenkins.example.com/job/b/7/"
    # GitLab refuses a target_url past 255 characters, and with it the whole status
    assert want(status="running", build_url="https://j/" + "x" * 300).target_url is None


def test_an_agent_connect_timeout_is_failed_with_its_reason():
    failure = connect_timeout("ci-build-7", 300, 2)  # as workers.agent_starts.online fails it
    w = want(status="failed", fail_reason=failure.reason, error=failure.detail)
    assert (w.state, w.description) == (
        State.FAILED, "agent could not start: agent ci-build-7 not online in Jenkins 300s "
                      "after its pod ran (attempt 2)")


@pytest.mark.parametrize("fields", [
    {"delivery": ""},  # a Jenkins queue item we adopted: no commit of ours
    {"sha": ""}, {"project": ""}, {"job": ""},
])
def test_a_build_without_a_gitlab_commit_gets_no_status(fields):
    assert want(**fields) is None


def test_a_release_without_a_result_is_its_end_only_once_settled():
    """workers.engine.tasks.refuse releases the build, then marks it failed: a sender reading in
    between must not post canceled."""
    released = {**BASE, "status": "released", "released_at": "1000"}
    assert wanted(released, now=1000 + RELEASE_SETTLE_SECONDS - 1) is None
    assert wanted(released, now=1000 + RELEASE_SETTLE_SECONDS).state == State.CANCELED
    refused = {**released, "status": "failed", "error": "job build is disabled"}
    assert wanted(refused, now=1000.5).state == State.FAILED
    done = {**released, "result": "SUCCESS"}
    assert wanted(done, now=1000.5).state == State.SUCCESS


def test_a_build_the_catch_up_found_gets_a_status():
    assert want(delivery="catch-up:gitlab|group/app|refs/heads/main|" + SHA) is not None


@pytest.mark.parametrize("sent, state, ok", [
    (None, State.PENDING, True), (None, State.RUNNING, True), (None, State.SUCCESS, True),
    ("pending", State.PENDING, False),  # "Cannot transition status via :enqueue from :pending"
    ("pending", State.RUNNING, True), ("pending", State.CANCELED, True),
    ("running", State.RUNNING, False),  # "Cannot transition status via :run from :running"
    ("running", State.PENDING, False),  # "... via :enqueue from :running"
    ("running", State.FAILED, True),
    ("success", State.FAILED, False), ("failed", State.RUNNING, False),
])
def test_only_what_gitlab_takes_after_the_last_state_is_sent(sent, state, ok):
    w = want(status="running")
    assert (to_send(sent, replace(w, state=state)) is not None) == ok
    assert may_follow(None if sent is None else State(sent), state) == ok


def test_a_final_state_is_never_followed():
    for final in ("success", "failed", "canceled"):
        assert all(to_send(final, want(status=s)) is None
                   for s in ("queued", "waiting", "running"))


@pytest.mark.parametrize("result, state", [
    ("SUCCESS", State.SUCCESS), ("success", State.SUCCESS), ("UNSTABLE", State.FAILED),
    ("FAILURE", State.FAILED), ("ABORTED", State.CANCELED), ("NOT_BUILT", State.CANCELED),
    ("UNKNOWN", State.FAILED), ("", State.FAILED)])
def test_jenkins_results_map_to_gitlab_states(result, state):
    assert result_state(result) == state


def test_a_description_carries_no_secret_and_fits_gitlab():
    secret = "s3cr3t-jenkins-api-token"
    text = ("container build: ErrImagePull: failed to pull https://robot:hunter2@registry."
            f"example.com/app?access_token=abc123 with {secret} and glpat-AbCdEf0123456789 "
            + "x" * 400)
    out = description(text, [secret])
    assert len(out) == DESCRIPTION_MAX_CHARS and out.endswith("…")
    for leaked in (secret, "hunter2", "robot:", "abc123", "glpat-AbCd"):
        assert leaked not in out
    assert "registry.example.com/app" in out



@pytest.mark.parametrize("image", ["registry.example.com/ci/glue-service-runner:1.0",
                                   "ghcr.io/acme/glance-api-builder:2",
                                   "quay.io/org/gltf-tools-runtime@sha256:" + "3f" * 32])
def test_a_pull_error_keeps_its_image_name_and_digest(image):
    """A pull error (the status page, the build's record) is redacted now: an image named
    gl<1-4 letters>-<8 more> (glue-service-runner, glance-api-builder) was taken for a
    GitLab token and shown as "[redacted]", the one word that says which image failed.
    GitLab's token prefixes are its own few (docs: "Token prefixes"); a digest is no token."""
    message = (f'Failed to pull image "{image}": rpc error: code = Unknown desc = '
               "unexpected status from HEAD request: 429 Too Many Requests")
    assert redact(message) == message


@pytest.mark.parametrize("prefix", ["glpat", "gldt", "glrt", "glcbt", "glptt", "glft", "glimt",
                                    "gloas", "glsoat", "glffct", "glagent", "glwt"])
def test_every_gitlab_token_prefix_is_redacted(prefix):
    token = f"{prefix}-AbCdEf0123456789_xyz"
    assert token[:len(prefix) + 4] not in redact(f"token {token} refused")

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


@given(st.text(max_size=600), st.text(alphabet=_TOKEN_CHARS, min_size=4, max_size=40))
def test_no_description_is_longer_than_gitlab_keeps_or_holds_the_secret(text, secret):
    out = description(text + secret + text, [secret])
    assert len(out) <= DESCRIPTION_MAX_CHARS
    # between the markers (a secret that is a piece of the marker, "dact", shows inside it)
    assert all(secret not in piece for piece in out.split("[redacted]"))


def test_retries_back_off_exponentially_to_a_cap_and_honour_retry_after():
    pauses = [retry_delay(n) for n in range(1, 12)]
    assert pauses[0] == RETRY_FIRST_SECONDS and pauses[1] == 2 * RETRY_FIRST_SECONDS
    assert pauses == sorted(pauses) and max(pauses) == RETRY_MAX_SECONDS
    assert retry_delay(1, retry_after=30) == 30
    assert retry_delay(10, retry_after=5) == RETRY_MAX_SECONDS
    # GitLab answering 500 for a minute: a handful of tries, and the next one comes within
    # the cap after it recovers.
    elapsed, tries = 0.0, 0
    while elapsed < 60:
        tries += 1
        elapsed += retry_delay(tries)
    assert tries <= 6 and elapsed - 60 <= RETRY_MAX_SECONDS


def test_a_waiting_text_waits_for_the_capacity_state_computed_after_the_decision():
    waiting = {**BASE, "status": "waiting", "updated_at": "100.0"}
    assert not wait_text_ready(waiting, capacity_at=99.0, now=101)
    assert not wait_text_ready(waiting, capacity_at=None, now=101)
    assert wait_text_ready(waiting, capacity_at=100.0, now=101)
    assert wait_text_ready(waiting, capacity_at=99.0, now=100 + WAIT_TEXT_SETTLE_SECONDS)
    assert wait_text_ready({**waiting, "status": "running"}, capacity_at=None, now=101)


def test_a_queued_build_waits_for_the_workers_decision_a_while_at_most():
    queued = {**BASE, "received_at": "100.0"}
    assert not wait_text_ready(queued, capacity_at=None, now=101)
    assert wait_text_ready(queued, capacity_at=None, now=100 + DECISION_SETTLE_SECONDS)
    assert wait_text_ready({**queued, "status": "pod_created"}, capacity_at=None, now=101)
    assert wait_text_ready({**queued, "started_at": "100.5"}, capacity_at=None, now=101)
    assert wait_text_ready({**BASE}, capacity_at=None, now=101)  # no time kept: long past

