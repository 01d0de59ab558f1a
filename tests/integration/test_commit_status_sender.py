"""The commit status queue (workers.adapters.status_queue) on a real redis-server, and the
sender's answers to GitLab's refusals against the GitLab API fake over HTTP: builds are
records written as the mover and the worker write them, the sender is driven pass by pass
(send_due, sweep) with a clock the test moves."""

import logging
import math
import threading
import time

import pytest
import redis

from tests.support.gitlab_fake import GitLabFake, Redirector
from tests.support.monitoring import wait_until
from workers.adapters import gitlab as gitlab_api
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState
from workers.adapters.status_queue import StatusQueue
from workers.commit_statuses import sender as status_sender, touch
from workers.config.settings import Settings
from workers.core.commit_status import (DECISION_SETTLE_SECONDS, RELEASE_SETTLE_SECONDS,
                                        WAIT_TEXT_SETTLE_SECONDS)

PROJECT = "team/app"
API_TOKEN = "glpat-sender-api-4Xw2"
SHA = "c0ffee" * 6 + "c0ff"


class Clock:
    """The sender's clock, which the test moves (it starts just after the touches' time)."""

    def __init__(self):
        self.now = time.time() + 1

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state(redis_url):
    return RedisState(redis.Redis.from_url(redis_url))


@pytest.fixture
def queue(state):
    return StatusQueue(state.redis)


def build(state: RedisState, key: str, **fields) -> None:
    """A build's record as the mover writes it (workers.engine.intake), then the worker's fields."""
    record = {"status": "queued", "project": PROJECT, "sha": SHA, "job": "build",
              "delivery": "gitlab:d-" + key, "received_at": "1000000"} | fields
    state.redis.hset(f"{state.prefix}build:{key}", mapping=record)
    state.redis.zadd(f"{state.prefix}builds", {key: float(record["received_at"])})


def test_a_touch_counts_only_while_a_sender_is_on_and_collapses(state, queue):
    assert not queue.touch("b1", now=10)  # no sender: nothing piles up
    assert queue.backlog() == 0
    queue.switch_on(ttl_seconds=60)
    assert queue.touch("b1", now=10) and not queue.touch("b1", now=11)  # once in the set
    queue.later("b1", at=50)  # a retry's time
    touch(state, "b1")  # a new change does not bring a retry forward
    assert queue.next_due() == 50
    queue.later("b1", at=20)  # nor does an earlier retry time
    assert queue.next_due() == 50
    assert queue.claim(now=49, limit=10) == []
    assert queue.claim(now=50, limit=10) == ["b1"] and queue.backlog() == 0
    queue.switch_off()
    assert not queue.touch("b2", now=60)


def test_sent_and_attempts_never_make_a_stray_record(state, queue):
    assert queue.failed_attempt("gone") == 0
    queue.sent("gone", "success")
    assert state.get_build("gone") == {}
    build(state, "b1")
    assert queue.failed_attempt("b1") == 1 and queue.failed_attempt("b1") == 2
    queue.sent("b1", "running")
    rec = state.get_build("b1")
    assert rec["status_sent"] == "running" and "status_attempts" not in rec


@pytest.fixture
def gitlab(redis_url):
    with GitLabFake() as fake:
        fake.tokens[API_TOKEN] = {"api"}
        fake.add_project(PROJECT, branches={"main": SHA})
        yield fake


def make_sender(state, gitlab, token=API_TOKEN, clock=None, url=None):
    gl = gitlab_api.client(url=url or gitlab.url, token=token)
    sender = status_sender.Sender(state=state, capacity=CapacityStore(state.redis), gl=gl,
                                  secrets=(token,), clock=clock or Clock())
    sender.queue.switch_on(ttl_seconds=60)
    return sender


def test_a_state_gitlab_has_already_counts_as_sent(state, gitlab):
    """A post that landed but whose answer was lost is tried again: GitLab's 400 'Cannot
    transition status via :run from :running' means it has that state."""
    sender = make_sender(state, gitlab)
    gitlab_api.set_commit_status(gl=sender.gl, project=PROJECT, sha=SHA, state="running",
                                 name="ci-autoscaler/build")  # the lost answer's post
    build(state, "b1", status="running")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"already": 1}
    assert state.get_build("b1")["status_sent"] == "running"
    build(state, "b1", status="done", result="FAILURE")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["failed"]


def test_a_build_is_first_posted_with_the_workers_decision_not_queued(state, gitlab):
    """GitLab takes one pending text per status (``enqueue`` from pending is refused, the
    description with it): a "queued" posted while the worker was deciding was all the commit
    ever showed, never why the build waited. A queued build waits for the decision, at most
    DECISION_SETTLE_SECONDS from when it was received, then is posted as it is."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    received = clock.now
    build(state, "waits", received_at=str(received))
    build(state, "stuck", job="deploy", received_at=str(received))  # no worker takes it
    touch(state, "waits")
    touch(state, "stuck")
    assert status_sender.send_due(sender) == {"later": 2}
    assert gitlab.projects[PROJECT].status_posts == []

    build(state, "waits", status="waiting", wait_reason="insufficient_memory",
          updated_at=str(clock.now))  # the worker's decision: no room
    touch(state, "waits")
    clock.now += WAIT_TEXT_SETTLE_SECONDS
    assert status_sender.send_due(sender) == {"sent": 1, "later": 1}
    clock.now = received + DECISION_SETTLE_SECONDS
    assert status_sender.send_due(sender) == {"sent": 1}
    posted = {s["name"]: (s["status"], s["description"])
              for s in gitlab.projects[PROJECT].statuses}
    assert posted["ci-autoscaler/deploy"] == ("pending", "queued")
    assert posted["ci-autoscaler/build"][0] == "pending"
    assert posted["ci-autoscaler/build"][1].startswith("waiting for capacity: insufficient memory")


def test_a_build_keeps_the_status_name_it_was_first_posted_under(state, gitlab):
    """An upgrade gives the installation an identity (the chart's release name), which names
    its statuses (workers.core.commit_status.status_name): a build whose pending status went
    out under the plain name moves that one on (a new name would leave it pending for ever
    beside the new one); a build first posted after names the installation."""
    sender = make_sender(state, gitlab)
    build(state, "before")
    touch(state, "before")
    assert status_sender.send_due(sender) == {"sent": 1}
    state.redis.hdel(f"{state.prefix}build:before", "status_name")  # as a version before left it
    sender.installation = "prod/ci-autoscaler"  # the upgraded sender

    build(state, "before", status="running")
    build(state, "after", delivery="gitlab:d-after-push")
    touch(state, "before")
    touch(state, "after")
    assert status_sender.send_due(sender) == {"sent": 2}

    assert {s["name"]: s["status"] for s in gitlab.projects[PROJECT].statuses} == {
        "ci-autoscaler/build": "running", "ci-autoscaler/build (prod/ci-autoscaler)": "pending"}
    assert state.get_build("after")["status_name"] == "ci-autoscaler/build (prod/ci-autoscaler)"
    sender.installation = ""  # named once: a later change of identity does not rename it
    build(state, "after", status="done", result="SUCCESS")
    touch(state, "after")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert {s["name"]: s["status"] for s in gitlab.projects[PROJECT].statuses} == {
        "ci-autoscaler/build": "running", "ci-autoscaler/build (prod/ci-autoscaler)": "success"}


def test_a_token_without_the_api_scope_turns_commit_statuses_off(state, gitlab):
    gitlab.tokens["glpat-read-only-77"] = {"read_api"}
    sender = make_sender(state, gitlab, token="glpat-read-only-77")
    for key in ("b1", "b2"):
        build(state, key)
        touch(state, key)
    assert status_sender.send_due(sender) == {"refused": 1}  # the first says it all
    assert "api scope" in sender.off
    status_sender.run_forever(sender, threading.Event())  # returns at once
    assert not state.redis.exists(sender.queue.on_key) and sender.queue.backlog() == 0
    assert gitlab.answered(403) == 1


def test_a_refused_build_is_posted_failed_not_canceled(state, gitlab):
    """workers.engine.tasks.refuse releases the build (released, no result), then marks it failed: a
    pass that reads it in between posts nothing, and the failure goes once it is written."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "b1", status="released", released_at=str(clock.now))
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"unchanged": 1}
    build(state, "b1", status="failed", error="job build is disabled")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert gitlab.status_history(PROJECT) == [
        ("failed", "build could not start: job build is disabled", 201)]


def test_the_sweep_finishes_what_no_event_announces(state, gitlab):
    """A build released without a result (its end never notified) is canceled once settled;
    the sweep looks at every open build of the window, and at none that is done."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "lost", status="released", released_at=str(clock.now),
          received_at=str(clock.now - 600))
    build(state, "done", status="released", result="SUCCESS", status_sent="success",
          received_at=str(clock.now - 600))
    build(state, "adopted", delivery="", received_at=str(clock.now - 600))
    assert status_sender.sweep(sender) == 1
    assert status_sender.send_due(sender) == {"unchanged": 1}  # not settled yet
    clock.now += RELEASE_SETTLE_SECONDS
    assert status_sender.sweep(sender) == 1
    assert status_sender.send_due(sender) == {"sent": 1}
    assert gitlab.status_history(PROJECT) == [
        ("canceled", "ended without a result from Jenkins", 201)]
    assert status_sender.sweep(sender) == 0  # final now


def test_a_build_released_without_a_result_is_canceled_as_it_settles_not_at_the_sweep(
        state, gitlab):
    """Released without a result (a build found cancelled in Jenkins' queue, its end never
    notified): its release's touch finds it settling, and nothing touches it again. It is
    looked at again as it settles: left to the minute's sweep, GitLab showed it pending or
    running up to a minute longer (and the operator's check of issue 20 timed out)."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "lost", status="released", released_at=str(clock.now))
    touch(state, "lost")
    assert status_sender.send_due(sender) == {"unchanged": 1}
    clock.now += RELEASE_SETTLE_SECONDS - 1
    assert status_sender.send_due(sender) == {}  # not settled yet
    clock.now += 1
    assert status_sender.send_due(sender) == {"sent": 1}
    assert gitlab.status_history(PROJECT) == [
        ("canceled", "ended without a result from Jenkins", 201)]


def test_a_description_never_carries_the_token(state, gitlab):
    sender = make_sender(state, gitlab)
    build(state, "b1", status="failed", fail_reason="ErrImagePull",
          error=f"container build: ErrImagePull: pull https://ci:{API_TOKEN}@registry/app")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    [(state_, text, _)] = gitlab.status_history(PROJECT)
    assert state_ == "failed" and API_TOKEN not in text and "ci:" not in text


def test_the_sender_slows_down_before_the_rate_limit_and_meets_no_429(state, gitlab):
    """GitLab's RateLimit-* headers (a window of 5 posts per 2 s here): the posts pause for
    the window's reset when one request is left, and the sender's loop, not the HTTP client,
    waits (the client never sleeps, so the stop flag is kept)."""
    gitlab.rate_limit(5, 2)
    sender = status_sender.from_settings(
        Settings(gitlab_url=gitlab.url, gitlab_api_token=API_TOKEN), state,
        CapacityStore(state.redis))
    sender.queue.switch_on(ttl_seconds=60)
    for n in range(9):
        build(state, f"b{n}", status="running", job=f"job-{n}")  # nine statuses
        touch(state, f"b{n}")
    thread, stop = status_sender.start(sender, poll=0.05)
    try:
        wait_until(lambda: len(gitlab.status_history(PROJECT)) == 9, timeout=30,
                   what="nine statuses posted")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert gitlab.answered(429) == 0
    assert all(a == 201 for _, _, a in gitlab.status_history(PROJECT))
    assert sender.gl.session.paused_seconds == 0  # the client itself never slept


def test_a_status_gitlab_answers_409_for_is_posted_again_not_dropped(state, gitlab):
    """GitLab posts a commit's statuses under a lock per project and sha, and answers 409
    "Another update to this commit status is in progress" when another update holds it past
    its wait (Ci::CreateCommitStatusService#execute): GitLab has not taken that state. Taken
    as final, the commit showed "running" for ever (a merge waiting for it, blocked)."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "b1", status="running")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    build(state, "b1", status="done", result="SUCCESS")
    touch(state, "b1")
    gitlab.hold_status_lock(PROJECT, SHA)  # another system's update of this commit
    assert status_sender.send_due(sender) == {"retried": 1}
    assert state.get_build("b1")["status_sent"] == "running"
    gitlab.release_status_lock(PROJECT, SHA)
    clock.now = sender.queue.next_due()
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["success"]
    assert [answer for _, _, answer in gitlab.status_history(PROJECT)] == [201, 409, 201]


def test_a_409_holds_back_that_commits_status_alone(state, gitlab):
    """GitLab's lock is per project and sha (Ci::CreateCommitStatusService#pipeline_lock_key):
    a 409 says nothing of other commits, and every other build's post goes on. Paced as a 5xx
    was, one commit that another tool kept updating held every status of every project for
    up to 2 minutes at each of its tries."""
    other = "b0a7" * 10
    gitlab.push(PROJECT, "fix", other)
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "b1", status="running")
    build(state, "b2", status="running", sha=other, delivery="gitlab:d-b2")
    touch(state, "b1")
    touch(state, "b2")
    gitlab.hold_status_lock(PROJECT, SHA)
    assert status_sender.send_due(sender) == {"retried": 1, "sent": 1}
    assert sender.not_before <= clock.now  # nothing else waits for it
    assert [(s["sha"], s["status"]) for s in gitlab.projects[PROJECT].statuses] == [
        (other, "running")]
    assert sender.queue.next_due() > clock.now  # b1 waits its back-off
    gitlab.release_status_lock(PROJECT, SHA)
    clock.now = sender.queue.next_due()
    assert status_sender.send_due(sender) == {"sent": 1}


def test_a_status_post_outwaits_gitlabs_wait_for_its_lock(state, gitlab):
    """GitLab answers a post that meets its lock held only after 20 tries 0.5 s apart
    (Ci::CreateCommitStatusService#pipeline_lock_params), 10 s, and the update takes up to
    about 2 s more: the sender's client, given the 10 s of other calls, gave up first and
    took the 409 (or the 201) for GitLab unreachable."""
    sender = status_sender.from_settings(
        Settings(gitlab_url=gitlab.url, gitlab_api_token=API_TOKEN), state,
        CapacityStore(state.redis))
    assert sender.gl.timeout > 10.0 + 2.0  # GitLab's wait for the lock, then its p99


def test_a_status_whose_link_gitlab_refuses_is_posted_without_it(state, gitlab):
    """GitLab validates a status's target_url (GenericCommitStatus: an addressable_url, so
    http(s) only and, on an instance that blocks requests to hosts off its allowlist,
    Gitlab::HTTP_V2::UrlBlocker's "Requests to hosts and IP addresses not on the Allow List
    are denied") and answers 400 {"message": {"target_url": [...]}} with nothing saved. Taken
    as a refusal of the state, the running and the failed status were both dropped, and the
    commit showed the build pending for ever; the state goes on without its link."""
    gitlab.deny_requests_except("gitlab.example.com")  # Jenkins' host is not on the list
    sender = make_sender(state, gitlab)
    build(state, "b1", status="running", build_url="https://jenkins.example.com/job/build/7/")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    build(state, "b1", status="done", result="FAILURE")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [(s["status"], s["target_url"]) for s in gitlab.projects[PROJECT].statuses] == [
        ("failed", None)]
    assert [(s, a) for s, _, a in gitlab.status_history(PROJECT)] == [
        ("running", 400), ("running", 201), ("failed", 400), ("failed", 201)]
    assert state.get_build("b1")["status_sent"] == "failed"


def test_a_status_posted_again_without_its_link_waits_for_the_pause_gitlab_asked(state,
                                                                                  gitlab):
    """The refusal of the link came with the quota at its reserve (RateLimit-Remaining 0 of
    1 here): the post without the link waited for nothing, so it met the 429 that the pause
    was to avoid. It waits for the window's reset, as every post does, and goes without the
    link then; nothing else is sent meanwhile."""
    gitlab.deny_requests_except("gitlab.example.com")
    gitlab.rate_limit(1, 60)
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    # the session from_settings gives it: it reads the pauses, this loop keeps them
    session = gitlab_api.PacedSession(max_wait_seconds=math.inf, sleep=lambda _: None)
    sender.gl = gitlab_api.client(url=gitlab.url, token=API_TOKEN, session=session)
    build(state, "b1", status="running", build_url="https://jenkins.example.com/job/build/7/")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"retried": 1}
    assert gitlab.answered(429) == 0 and gitlab.status_history(PROJECT) == [
        ("running", "running", 400)]
    reset = int(gitlab._rate_limit_headers()["RateLimit-Reset"])
    assert sender.not_before >= clock.now + (reset - time.time()) - 1
    assert status_sender.send_due(sender) == {}  # all wait
    gitlab.rate_limit(100, 60)  # the window's reset
    clock.now = sender.queue.next_due()
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [(s["status"], s["target_url"]) for s in gitlab.projects[PROJECT].statuses] == [
        ("running", None)]
    assert gitlab.answered(429) == 0


def test_a_build_of_a_force_pushed_commit_still_gets_its_final_status(state, gitlab):
    """A force-push moves the branch away while the old commit's build runs: GitLab still
    holds that commit and takes a status with its ref as posted (Ci::CreateCommitStatusService
    #validate looks up the ref only when none is posted), so the build ends failed, not
    running for ever. A commit the repository no longer holds is 404 "Commit Not Found",
    refused for good and not tried again."""
    sender = make_sender(state, gitlab)
    build(state, "b1", status="running", ref="refs/heads/main")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    gitlab.push(PROJECT, "main", "f0f0" * 10)  # the force-push
    build(state, "b1", status="done", result="FAILURE")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [(s["ref"], s["status"]) for s in gitlab.projects[PROJECT].statuses] == [
        ("main", "failed")]

    gitlab.forget_commit(PROJECT, SHA)  # housekeeping pruned it
    build(state, "b2", status="running", ref="refs/heads/main", job="test")
    touch(state, "b2")
    assert status_sender.send_due(sender) == {"refused": 1}
    assert gitlab.status_history(PROJECT)[-1][2] == 404
    assert state.get_build("b2")["status_sent"] == "running"  # not tried again


@pytest.mark.parametrize("message, everyone", [
    ("Failed to obtain a lock", False),
    ("PG::QueryCanceled: ERROR:  canceling statement due to statement timeout\n", True)])
def test_a_400_for_gitlabs_own_failure_is_posted_again_not_dropped(state, gitlab, message,
                                                                   everyone):
    """GitLab (since Ci::Pipelines::AddJobService rescues any StandardError, gitlab-org/
    gitlab work item 556736) answers 400 with the exception's message when adding the status
    to its pipeline fails: its lock on the pipeline held past its wait ('Failed to obtain a
    lock', Gitlab::ExclusiveLeaseHelpers), or a database error (ActiveRecord's 'PG::...'
    message). Nothing was saved, and the same post later is taken; taken as GitLab's final
    word, the failed status was dropped and the commit showed the build running for ever."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "b1", status="running")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    build(state, "b1", status="done", result="FAILURE")
    touch(state, "b1")
    gitlab.fail_status_posts(1, message)
    assert status_sender.send_due(sender) == {"retried": 1}
    assert state.get_build("b1")["status_sent"] == "running"
    assert (sender.not_before > clock.now) is everyone  # a lock holds that commit alone
    clock.now = sender.queue.next_due()
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["failed"]
    assert [a for _, _, a in gitlab.status_history(PROJECT)] == [201, 400, 201]


def test_a_database_failure_after_an_outage_is_posted_again_not_dropped(state, gitlab):
    """GitLab down for ten minutes (its 5xx tried again, GITLAB_FAILURE_TRIES times here),
    then one 400 'PG::...' as it comes back: that is GitLab's own failure once, posted again.
    Every failed try was counted towards GITLAB_FAILURE_TRIES, and the first database error
    after the outage was taken as GitLab's final answer: the status dropped for good."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "b1", status="running")
    touch(state, "b1")
    gitlab.outage(3600, status=500)
    for _ in range(status_sender.GITLAB_FAILURE_TRIES):
        assert status_sender.send_due(sender) == {"retried": 1}
        clock.now = sender.queue.next_due()
    gitlab.outage(0)
    gitlab.fail_status_posts(1, "PG::QueryCanceled: ERROR:  canceling statement due to "
                                "statement timeout\n")
    assert status_sender.send_due(sender) == {"retried": 1}
    clock.now = sender.queue.next_due()
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["running"]


def test_a_status_reaches_a_project_renamed_after_the_push(state, gitlab):
    """A build's record names its project by the path the push gave, and the project is
    renamed (or moved) while the build runs: GitLab keeps the old path as a redirect that
    its API follows (find_by_full_path(id, follow_redirects: true)), so the final status
    reaches the project by its old path; its id stays, and so do its commits."""
    sender = make_sender(state, gitlab)
    build(state, "b1", status="running", ref="refs/heads/main")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    gitlab.rename_project(PROJECT, "platform/app")
    build(state, "b1", status="done", result="SUCCESS")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [s["status"] for s in gitlab.projects["platform/app"].statuses] == ["success"]
    assert gitlab.requests[-1].path == "/api/v4/projects/team%2Fapp/statuses/" + SHA


def test_a_gitlab_url_that_redirects_writes_says_where_and_is_tried_again_later(state, gitlab,
                                                                              caplog):
    """GITLAB_URL is plain http and GitLab redirects it to https (omnibus-gitlab's
    redirect_http_to_https; here an old URL root, on the same origin too): reads follow the 301, so the catch-up works, but python-gitlab
    refuses a redirected POST (RedirectError, no HTTP status), which was taken for GitLab
    unreachable. It is logged with the URL to set, and every post waits the longest back-off
    (as for a refused token). Commit statuses are not turned off: a redirect for a while only
    (a maintenance page in front of GitLab) kept them off until a restart, and the one
    refusal counted let CIGitLabCommitStatusFailing resolve within 15 minutes."""
    clock = Clock()
    with Redirector(gitlab.url) as front:
        assert gitlab_api.project_heads(gl=gitlab_api.client(url=front.gitlab_url,
                                                             token=API_TOKEN),
                                        project=PROJECT).heads  # reads go through
        sender = make_sender(state, gitlab, url=front.gitlab_url, clock=clock)
        for key in ("b1", "b2"):
            build(state, key, status="running", job=key)
            touch(state, key)
        with caplog.at_level(logging.WARNING, logger="ci_autoscaler.commit_status"):
            assert status_sender.send_due(sender) == {"retried": 1}
        said = [r.error for r in caplog.records if r.getMessage() == "commit status deferred"]
        assert len(said) == 1 and f"set GITLAB_URL to {front.url} " in said[0]
        assert API_TOKEN not in said[0]
        assert not sender.off and sender.not_before == clock.now + sender.retry_max_seconds
        assert gitlab.status_history(PROJECT) == []
        front.redirecting = False  # the redirect is over
        clock.now = sender.not_before
        assert status_sender.send_due(sender) == {"sent": 2}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["running", "running"]


def test_a_database_failure_gitlab_repeats_for_one_commit_holds_back_the_others_a_while_only(
        state, gitlab):
    """A 400 'PG::...' is GitLab's own failure, tried again as a 5xx is, every post waiting
    (above). One that GitLab repeats for this commit alone (a statement that times out on its
    pipeline each time) was tried every 2 minutes for as long as the build is kept, 7 days,
    and every other build's status waited behind it: after GITLAB_FAILURE_TRIES tries in a
    row, it is taken as GitLab's answer, and the other builds' statuses go."""
    clock = Clock()
    sender = make_sender(state, gitlab, clock=clock)
    build(state, "b1", status="running")
    touch(state, "b1")
    gitlab.fail_status_posts(status_sender.GITLAB_FAILURE_TRIES, "PG::QueryCanceled: ERROR:  canceling statement due to "
                                   "statement timeout\n")
    for _ in range(status_sender.GITLAB_FAILURE_TRIES - 1):
        assert status_sender.send_due(sender) == {"retried": 1}
        clock.now = sender.queue.next_due()
    assert status_sender.send_due(sender) == {"refused": 1}
    assert state.get_build("b1")["status_sent"] == "running"  # not tried again
    build(state, "b2", status="running", job="test", sha="c" * 40)
    gitlab.push(PROJECT, "other", "c" * 40)
    touch(state, "b2")
    assert status_sender.send_due(sender) == {"sent": 1}


def test_a_push_naming_another_project_by_id_has_its_statuses_posted_by_its_path(state, gitlab,
                                                                                   caplog):
    """Routing reads the push's path; its `project.id` is the pusher's word too. A push
    naming the routed project by path and another one by id had every status of its build
    posted with our API token onto the other project's commit (issue 17: a webhook token
    holder reached further than a build: a "success" on any project the token may write)."""
    other = gitlab.add_project("secure/core", branches={"main": SHA})
    sender = make_sender(state, gitlab)
    build(state, "b1", status="running", ref="refs/heads/main", project_id=str(other.id))
    touch(state, "b1")
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.commit_status"):
        assert status_sender.send_due(sender) == {"sent": 1}
    build(state, "b1", status="done", result="SUCCESS")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [(s, a) for s, _, a in gitlab.status_history(PROJECT)] == [
        ("running", 201), ("success", 201)]
    assert gitlab.projects["secure/core"].statuses == []
    assert gitlab.status_history("secure/core") == []
    assert "names another project" in caplog.text
    assert "project_id" not in state.get_build("b1")  # its later posts: by the path too


def test_a_push_whose_id_is_its_projects_posts_by_the_id_after_one_lookup(state, gitlab):
    """The id checked once per project (one GET), then used: a rename later keeps it."""
    project_id = gitlab.projects[PROJECT].id
    sender = make_sender(state, gitlab)
    for key in ("b1", "b2"):
        build(state, key, status="running", ref="refs/heads/main", job=key,
              project_id=str(project_id))
        touch(state, key)
    assert status_sender.send_due(sender) == {"sent": 2}
    lookups = [r.path for r in gitlab.requests if r.method == "GET"]
    assert lookups == [f"/api/v4/projects/{project_id}"], lookups
    assert gitlab.requests[-1].path == f"/api/v4/projects/{project_id}/statuses/{SHA}"
    assert len(gitlab.projects[PROJECT].statuses) == 2


def test_a_project_renamed_before_its_builds_first_status_gets_it_by_its_id(state, gitlab):
    """Renamed or moved after the push (its id kept): the id's path is no longer the push's,
    and GitLab follows the push's path, kept as a redirect, to that id (API::Helpers#
    find_project: find_by_full_path(id, follow_redirects: true)): the id is the push's
    project, and the statuses go to it by the id, two GETs the first time, none after."""
    project_id = gitlab.projects[PROJECT].id
    gitlab.rename_project(PROJECT, "team/app-renamed")
    sender = make_sender(state, gitlab)
    for key in ("b1", "b2"):
        build(state, key, status="running", ref="refs/heads/main", job=key,
              project_id=str(project_id))
        touch(state, key)
    assert status_sender.send_due(sender) == {"sent": 2}
    assert len([r for r in gitlab.requests if r.method == "GET"]) == 2
    assert [s for s, _, _ in gitlab.status_history("team/app-renamed")] == ["running"] * 2
    assert state.get_build("b1")["project_id"] == str(project_id)


def test_gitlab_failing_the_lookup_of_a_push_project_id_posts_by_the_path(state, gitlab,
                                                                       caplog):
    """A 429 on the lookup is not waited for: the status goes by the path, the id dropped."""
    sender = make_sender(state, gitlab)
    build(state, "b1", status="running", ref="refs/heads/main",
          project_id=str(gitlab.projects[PROJECT].id))
    touch(state, "b1")
    gitlab.throttle_next(1, retry_after=1)
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.commit_status"):
        assert status_sender.send_due(sender) == {"sent": 1}
    assert [s for s, _, _ in gitlab.status_history(PROJECT)] == ["running"]
    assert "could not say" in caplog.text
    assert "project_id" not in state.get_build("b1")


def test_a_pipeline_made_of_the_commit_after_its_first_status_leaves_none_pending(state,
                                                                                  gitlab):
    """GitLab puts a status posted without a `pipeline_id` into the newest pipeline of its
    sha and ref (Ci::CreateCommitStatusService#first_matching_pipeline) and looks for the
    pending one to move there only. A pipeline made of the commit after the build's first
    status (the project's own CI, a "Run pipeline" by hand) took the build's later states
    as a status of its own, and left the first pipeline's "pending" for ever: a pipeline
    the project lists as pending, with a build that ended long ago. Every status of a build
    goes into the pipeline its first one went into (its answer's pipeline_id)."""
    sender = make_sender(state, gitlab)
    build(state, "b1", status="waiting", wait_reason="capacity", ref="refs/heads/main")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    first = gitlab.projects[PROJECT].statuses[0]["pipeline_id"]
    gitlab.add_pipeline(PROJECT, SHA, "main")  # run by hand, on the same commit
    build(state, "b1", status="running", started_at="1000010")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    build(state, "b1", status="done", result="SUCCESS")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [(s["pipeline_id"], s["status"]) for s in gitlab.projects[PROJECT].statuses] == [
        (first, "success")]


def test_a_build_whose_pipeline_was_deleted_gets_its_status_in_another(state, gitlab):
    """The pipeline of a build's first status deleted (by a Maintainer) while it runs: GitLab
    answers 404 "Pipeline for pipeline_id, sha and ref Not Found"; the status goes again
    without it, into the newest pipeline, not dropped."""
    sender = make_sender(state, gitlab)
    build(state, "b1", status="running", started_at="1000010", ref="refs/heads/main")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    gitlab.delete_pipeline(PROJECT, gitlab.projects[PROJECT].statuses[0]["pipeline_id"])
    build(state, "b1", status="done", result="FAILURE")
    touch(state, "b1")
    assert status_sender.send_due(sender) == {"sent": 1}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["failed"]


def advance(state: RedisState, sender, key: str = "b1", **fields):
    """The build's record as the worker changes it, then the sender's next pass: its results."""
    build(state, key, **fields)
    touch(state, key)
    return status_sender.send_due(sender)


def test_a_build_an_earlier_release_began_keeps_its_status_in_its_pipeline(state, gitlab):
    """A build in flight across the upgrade: a release before pipelines were kept sent its
    first status (a state sent, no status_pipeline_id). Posted without a pipeline_id, its
    later states went into a pipeline made of the commit meanwhile, and the first pipeline's
    "pending" stayed for ever. Its status's pipeline is looked up once (GitLab's list of the
    commit's statuses of that name and ref, each with its pipeline_id), and kept."""
    sender = make_sender(state, gitlab)
    assert advance(state, sender, status="waiting", wait_reason="capacity",
                   ref="refs/heads/main") == {"sent": 1}
    first = gitlab.projects[PROJECT].statuses[0]["pipeline_id"]
    state.redis.hdel(f"{state.prefix}build:b1", "status_pipeline_id")  # as that release left it
    gitlab.add_pipeline(PROJECT, SHA, "main")  # run by hand, on the same commit
    assert advance(state, sender, status="running", started_at="1000010") == {"sent": 1}
    assert advance(state, sender, status="done", result="SUCCESS") == {"sent": 1}
    assert [(s["pipeline_id"], s["status"]) for s in gitlab.projects[PROJECT].statuses] == [
        (first, "success")]
    lists = [r for r in gitlab.requests if r.method == "GET" and r.path.endswith("/statuses")]
    assert len(lists) == 1 and lists[0].query["ref"] == "main"


def test_a_gitlab_that_names_no_pipeline_is_not_asked_for_the_statuses(state, gitlab):
    """A GitLab before gitlab-org/gitlab!127559 names no pipeline in its answer: the build's
    statuses go into the newest pipeline as before, and no post costs a lookup."""
    sender = make_sender(state, gitlab)
    gitlab.names_pipelines = False
    assert advance(state, sender, status="running", started_at="1000010",
                   ref="refs/heads/main") == {"sent": 1}
    assert advance(state, sender, status="done", result="SUCCESS") == {"sent": 1}
    assert [s["status"] for s in gitlab.projects[PROJECT].statuses] == ["success"]
    assert not [r for r in gitlab.requests if r.method == "GET" and "statuses" in r.path]


def test_a_status_whose_answer_was_lost_keeps_its_pipeline(state, gitlab):
    """The first post landed but its answer (and the pipeline it names) was lost: GitLab's
    400 "Cannot transition" says it has the state. The pipeline that status is in is looked
    up before the next post, not taken as none: a pipeline made of the commit meanwhile took
    the final state, and left the first one running for ever."""
    sender = make_sender(state, gitlab)
    gitlab_api.set_commit_status(gl=sender.gl, project=PROJECT, sha=SHA, state="running",
                                 name="ci-autoscaler/build", ref="main")  # the lost answer's
    first = gitlab.projects[PROJECT].statuses[0]["pipeline_id"]
    assert advance(state, sender, status="running", started_at="1000010",
                   ref="refs/heads/main") == {"already": 1}
    gitlab.add_pipeline(PROJECT, SHA, "main")  # run by hand, on the same commit
    assert advance(state, sender, status="done", result="SUCCESS") == {"sent": 1}
    assert [(s["pipeline_id"], s["status"]) for s in gitlab.projects[PROJECT].statuses] == [
        (first, "success")]
