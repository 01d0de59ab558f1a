"""The GitLab adapter (python-gitlab) against the GitLab API fake over HTTP: project paths are
URL-encoded, lists are read page by page, errors become ours without the token, and a commit
status (issue 20) is posted with the api scope only."""

import pytest
import requests

from tests.support.gitlab_fake import GitLabFake, Redirector
from workers.adapters import gitlab as gitlab_api
from workers.core.errors import PermanentError, RetryableError
from workers.core.models import EventKind

A, B = "a" * 40, "b" * 40


def test_heads_are_read_through_the_encoded_path_and_every_page(gitlab_fake):
    gitlab_fake.add_project("team/sub/app", branches={f"b{n:03}": A for n in range(205)},
                            tags={"v1": B})
    gl = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)
    listing = gitlab_api.project_heads(gl=gl, project="team/sub/app")
    heads = listing.heads
    assert len(heads) == 206 and listing.unlisted == {} and heads[-1].ref == "refs/tags/v1" and heads[-1].sha == B
    assert {r.path for r in gitlab_fake.requests} == {
        "/api/v4/projects/team%2Fsub%2Fapp/repository/branches",
        "/api/v4/projects/team%2Fsub%2Fapp/repository/tags"}
    assert gitlab_api.project_heads(gl=gl, project="team/sub/app",
                                    kinds=[EventKind.TAG_PUSH]).heads == heads[-1:]


def test_errors_are_ours_with_the_status_and_never_the_token(gitlab_fake):
    gitlab_fake.add_project("team/app", branches={"main": A})
    gl = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)
    with pytest.raises(PermanentError, match="404 Project Not Found"):
        gitlab_api.project_heads(gl=gl, project="team/gone")
    bad = gitlab_api.client(url=gitlab_fake.url, token="glpat-wrong-1234")
    with pytest.raises(gitlab_api.TokenRefused, match="401") as err:
        gitlab_api.project_heads(gl=bad, project="team/app")
    assert "glpat-wrong-1234" not in str(err.value)
    gitlab_fake.throttle_next(1, retry_after=120)  # longer than a call may wait
    with pytest.raises(RetryableError) as err:
        gitlab_api.project_heads(gl=gl, project="team/app")
    assert err.value.retry_after == 120
    with GitLabFake() as gone:
        url = gone.url
    with pytest.raises(RetryableError, match="unreachable"):
        gitlab_api.project_heads(gl=gitlab_api.client(url=url, token="x", timeout=2),
                                 project="team/app")


def test_a_group_lists_its_projects_and_its_subgroups(gitlab_fake):
    for path in ("team/app", "team/sub/lib", "other/x"):
        gitlab_fake.add_project(path)
    gl = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)
    assert gitlab_api.group_project_identities(gl=gl, group="team") == [
        (gitlab_fake.projects[p].id, p) for p in ("team/app", "team/sub/lib")]


def test_a_project_is_looked_up_by_its_old_path_until_another_takes_it_and_by_its_id(
        gitlab_fake):
    """GET /projects/:id by a moved project's old path answers the project with its new path
    (API::Helpers#find_project follows the redirect) until a group or project is made there:
    then ProjectNotFound, or the new one; by its id, the moved project always."""
    moved = gitlab_fake.add_project("team/app")
    gl = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)
    gitlab_fake.rename_project("team/app", "platform/app")
    assert gitlab_api.project_identity(gl=gl, project="team/app") == (moved.id, "platform/app")
    gitlab_fake.add_group("team")
    with pytest.raises(gitlab_api.ProjectNotFound, match="404 Project Not Found"):
        gitlab_api.project_identity(gl=gl, project="team/app")
    assert gitlab_api.project_identity(gl=gl, project=moved.id) == (moved.id, "platform/app")
    other = gitlab_fake.add_project("team/app")
    assert gitlab_api.project_identity(gl=gl, project="team/app") == (other.id, "team/app")


def test_a_commit_status_needs_the_api_scope_and_comes_back_as_gitlab_stored_it(gitlab_fake):
    gitlab_fake.add_project("team/app", branches={"main": A})
    read_only = gitlab_api.client(url=gitlab_fake.url, token=gitlab_fake.token)
    with pytest.raises(PermanentError, match="403: insufficient_scope"):
        gitlab_api.set_commit_status(gl=read_only, project="team/app", sha=A, state="pending",
                                     name="ci-autoscaler/build")
    gitlab_fake.tokens["glpat-api-5678"] = {"api"}
    gl = gitlab_api.client(url=gitlab_fake.url, token="glpat-api-5678")
    status = gitlab_api.set_commit_status(
        gl=gl, project="team/app", sha=A, state="running", name="ci-autoscaler/build",
        target_url="https://jenkins.example.com/job/build/7/", description="on node-a")
    assert (status["status"], status["name"], status["ref"]) == \
        ("running", "ci-autoscaler/build", "main")
    assert gitlab_fake.projects["team/app"].statuses[0]["target_url"] == \
        "https://jenkins.example.com/job/build/7/"
    with pytest.raises(PermanentError, match="400"):
        gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state="done",
                                     name="ci-autoscaler/build")


def test_a_refused_token_is_told_to_need_the_scope_of_the_call(gitlab_fake):
    """An expired or revoked token (401) on a status post: the operator is told to give a
    token with api (GitLab refuses a status post with read_api, 403 insufficient_scope); told
    read_api, as for the catch-up, the token they made next turned commit statuses off."""
    gitlab_fake.add_project("team/app", branches={"main": A})
    expired = gitlab_api.client(url=gitlab_fake.url, token="glpat-expired-9012")
    with pytest.raises(gitlab_api.TokenRefused, match="401") as err:
        gitlab_api.set_commit_status(gl=expired, project="team/app", sha=A, state="pending",
                                     name="ci-autoscaler/build")
    assert "with the api scope" in str(err.value) and "read_api" not in str(err.value)
    assert "glpat-expired-9012" not in str(err.value)
    with pytest.raises(gitlab_api.TokenRefused, match="with the read_api scope"):
        gitlab_api.project_heads(gl=expired, project="team/app")


def test_a_status_refused_on_a_protected_branch_says_what_the_token_lacks(gitlab_fake):
    """GitLab answers a status on a protected branch (or tag) 403 "403 Forbidden" when the
    token's user may not push or merge to it (Ci::PipelinePolicy: protected_ref prevents
    update_pipeline), as it is by default for a Developer on the default branch: statuses
    went on every other branch, and on main the log said "403: 403 Forbidden" alone."""
    gitlab_fake.add_project("team/app", branches={"main": A, "fix": B})
    gitlab_fake.protect("team/app", "main")
    gl = api_client(gitlab_fake)
    gitlab_fake.roles["glpat-api-5678"] = "developer"
    assert gitlab_api.set_commit_status(gl=gl, project="team/app", sha=B, state="pending",
                                        name="ci-autoscaler/build", ref="fix")
    with pytest.raises(PermanentError, match="403") as err:
        gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state="pending",
                                     name="ci-autoscaler/build", ref="main")
    assert "protected" in str(err.value) and "Developer" in str(err.value)
    assert "glpat-api-5678" not in str(err.value)


def api_client(gitlab_fake):
    gitlab_fake.tokens["glpat-api-5678"] = {"api"}
    return gitlab_api.client(url=gitlab_fake.url, token="glpat-api-5678")


def test_a_commit_status_moves_as_gitlabs_state_machine_allows(gitlab_fake):
    """lib/api/commit_statuses.rb: the pending or running status of that name is moved; an
    invalid transition is 400 with the state machine's message; a finished one is not moved
    again, a new status starts."""
    gitlab_fake.add_project("team/app", branches={"main": A})
    gl = api_client(gitlab_fake)

    def post(state, **kw):
        return gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state=state,
                                            name="ci-autoscaler/build", **kw)
    first = post("pending", description="waiting for capacity")
    with pytest.raises(PermanentError, match="Cannot transition status via :enqueue from "
                                             ":pending"):
        post("pending", description="waiting: cap")
    assert post("running")["id"] == first["id"]
    with pytest.raises(PermanentError, match="Cannot transition status via :run from :running"):
        post("running")
    with pytest.raises(PermanentError, match="via :enqueue from :running"):
        post("pending")
    done = post("success")
    assert done["id"] == first["id"] and done["finished_at"]
    assert post("failed")["id"] != first["id"]  # a finished status is not found again
    assert [s for s, _, _ in gitlab_fake.status_history("team/app")] == \
        ["pending", "pending", "running", "running", "pending", "success", "failed"]
    with pytest.raises(PermanentError, match="is too long"):
        post("running", target_url="https://jenkins.example.com/" + "x" * 250)


def test_a_throttled_or_failing_status_post_says_how_long_to_wait(gitlab_fake):
    """With no retries of its own, the call ends at once with the wait GitLab asked for."""
    gitlab_fake.add_project("team/app", branches={"main": A})
    gl = api_client(gitlab_fake)
    gitlab_fake.outage(30, status=429, retry_after=7)
    with pytest.raises(RetryableError, match="429") as err:
        gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state="pending",
                                     name="ci-autoscaler/build", max_retries=0)
    assert err.value.retry_after == 7
    gitlab_fake.outage(30, status=500)
    with pytest.raises(RetryableError, match="500") as err:
        gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state="pending",
                                     name="ci-autoscaler/build", max_retries=0)
    assert err.value.retry_after is None
    assert gitlab_fake.answered(429) == 1 and gitlab_fake.answered(500) == 1
    gitlab_fake.outage(0)
    assert gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state="pending",
                                        name="ci-autoscaler/build")["status"] == "pending"


@pytest.mark.parametrize("elsewhere", ["localhost", "another port"])
def test_a_redirect_to_another_origin_is_not_sent_the_token(gitlab_fake, elsewhere):
    """python-gitlab follows a redirected read, and requests keeps its PRIVATE-TOKEN header
    on a redirect to another origin (it drops only Authorization): a GITLAB_URL redirected
    elsewhere (a sign-in proxy's SSO host, a host name now someone else's, another service
    on another port of the host) got the token with every read of every catch-up pass. Here
    the other origin is the fake itself, at another host name or port than GITLAB_URL's: it
    is asked without the token, and answers 401. The same origin is sent the token."""
    gitlab_fake.add_project("team/app", branches={"main": A})
    location = gitlab_fake.url.replace("127.0.0.1", "localhost") \
        if elsewhere == "localhost" else gitlab_fake.url
    with Redirector(gitlab_fake.url, location=location) as front:
        gl = gitlab_api.client(url=front.gitlab_url, token=gitlab_fake.token)
        with pytest.raises(gitlab_api.TokenRefused):
            gitlab_api.project_heads(gl=gl, project="team/app")
    assert gitlab_fake.requests and {r.status for r in gitlab_fake.requests} == {401}
    with Redirector(gitlab_fake.url) as front:  # the same origin: the token goes on
        gl = gitlab_api.client(url=front.gitlab_url, token=gitlab_fake.token)
        assert gitlab_api.project_heads(gl=gl, project="team/app").heads


@pytest.mark.parametrize(("before", "after", "kept"), [
    ("http://gitlab.example/api/v4/x", "https://gitlab.example/api/v4/x", True),
    ("http://gitlab.example:80/api/v4/x", "https://gitlab.example:443/api/v4/x", True),
    ("https://gitlab.example/gitlab/api/v4/x", "https://gitlab.example:443/api/v4/x", True),
    ("https://gitlab.example/api/v4/x", "http://gitlab.example/api/v4/x", False),
    ("http://gitlab.example:8080/api/v4/x", "https://gitlab.example:8443/api/v4/x", False),
    ("https://gitlab.example/api/v4/x", "https://gitlab.example:8443/api/v4/x", False),
    ("https://gitlab.example/api/v4/x", "https://sso.example/login", False)])
def test_every_token_header_goes_on_to_the_same_origin_only(before, after, kept):
    """Which redirect keeps the token, as requests judges its Authorization header
    (Session.should_strip_auth): the same scheme, host and port, or http to https on the
    default ports of one host (omnibus-gitlab's redirect_http_to_https, which a test cannot
    bind). python-gitlab's token in whichever header it sends it (PRIVATE-TOKEN, JOB-TOKEN,
    or Authorization for an OAuth token: gitlab._backends.requests_backend)."""
    tokens = {"PRIVATE-TOKEN": "p", "JOB-TOKEN": "j", "Authorization": "Bearer o"}
    session = gitlab_api.PacedSession()
    session.trust_env = False  # no ~/.netrc of the machine's
    response = requests.Response()
    response.request = requests.Request("GET", before, headers=tokens).prepare()
    redirected = requests.Request("GET", after, headers=tokens).prepare()
    session.rebuild_auth(redirected, response)
    assert {k: redirected.headers.get(k) for k in tokens} == (
        tokens if kept else dict.fromkeys(tokens))


def test_a_message_cut_short_keeps_no_head_of_a_token_it_quotes(gitlab_fake):
    """GitLab's message is kept to its first 200 characters: one quoting a credential where the
    cut fell (a front repeating the request's PRIVATE-TOKEN; an old token has no glpat- prefix
    that redaction knows) kept its head, which no later blanking of the whole token finds."""
    old_token = "Zx81kq2PLm4Rt7vWn3Yb"  # a personal access token of GitLab < 14.5
    gitlab_fake.add_project("team/app", branches={"main": A})
    gl = api_client(gitlab_fake)
    message = "request refused " + "x" * 154 + f" PRIVATE-TOKEN: {old_token} (WAF rule 942)"
    assert message.index(old_token) < 200 < message.index(old_token) + len(old_token)
    gitlab_fake.fail_status_posts(1, message)
    with pytest.raises(PermanentError) as err:
        gitlab_api.set_commit_status(gl=gl, project="team/app", sha=A, state="pending",
                                     name="ci-autoscaler/build")
    assert "GitLab answered 400: request refused xxx" in str(err.value)
    assert old_token[:4] not in str(err.value), str(err.value)
