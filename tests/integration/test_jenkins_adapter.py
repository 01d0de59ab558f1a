"""JenkinsAdapter against the Jenkins fake over real HTTP (python-jenkins does every request)."""

import io
import json
import logging
import socket
import sys
import threading

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.support.fault_proxy import FaultProxy
from tests.support.jenkins_fake import FREESTYLE_JOB, GROOVY_LABEL_ASSIGNMENT, JNLP_LAUNCHER, \
    JenkinsFake
from workers.telemetry import logs
from workers.adapters.jenkins import NODE_DESCRIPTION, JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.errors import ConfigError, PermanentError, PermissionMissing, RetryableError, \
    Unauthorized
from workers.core.ports import BuildState

ONE_CALL = Backoff(attempts=1)

NODE = "cia-agent-1"
REMOTE_FS = "/home/jenkins/agent"


def adapter_for(fake: JenkinsFake, *, token: str | None = None,
                timeout: float = 5, backoff: Backoff = ONE_CALL) -> JenkinsAdapter:
    """One call per operation, no retries: these tests read how a single answer is translated
    (the retries themselves are tested in test_retries.py)."""
    return JenkinsAdapter(url=fake.url, user=fake.user or "", token=token or fake.token,
                          timeout=timeout, backoff=backoff)


def installed(fake: JenkinsFake, installation: str) -> JenkinsAdapter:
    """The adapter of one installation among several sharing the Jenkins."""
    return JenkinsAdapter(url=fake.url, user=fake.user or "", token=fake.token,
                          backoff=ONE_CALL, installation=installation)


def chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def test_ensure_node_creates_an_exclusive_jnlp_node_with_one_executor_labelled_by_name(
        jenkins_fake):
    created = adapter_for(jenkins_fake).ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

    assert created is True
    node = jenkins_fake.nodes[NODE]
    assert (node.num_executors, node.exclusive, node.label) == (1, True, NODE)
    assert (node.launcher, node.remote_fs) == (JNLP_LAUNCHER, REMOTE_FS)
    assert node.description == "ci-autoscaler agent"


def test_ensure_node_twice_returns_false_and_keeps_a_single_node(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

    again = adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

    assert again is False  # Jenkins' 400 "already exists"
    assert list(jenkins_fake.nodes) == [NODE]


def test_ensure_node_is_one_post_without_checks_or_the_redirected_page(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node("warm-up", label="warm-up", remote_fs=REMOTE_FS)  # auth and crumb
    before = len(jenkins_fake.requests)
    assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is True
    assert [(r.method, r.path) for r in jenkins_fake.requests[before:]] == [
        ("POST", "/computer/doCreateItem")]  # python-jenkins' create_node made four requests


def test_ensure_node_reuses_a_node_created_meanwhile(jenkins_fake):
    # made by an earlier attempt, or another worker
    jenkins_fake.add_node(NODE, label=NODE, description=NODE_DESCRIPTION)

    assert adapter_for(jenkins_fake).ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is False
    assert list(jenkins_fake.nodes) == [NODE]


@pytest.mark.parametrize("installation,description,reused", [
    ("", "", False),  # made by hand
    ("", f"{NODE_DESCRIPTION} of installation prod", False),
    ("staging", f"{NODE_DESCRIPTION} of installation prod", False),
    ("staging", f"{NODE_DESCRIPTION} of installation staging", True),
    # An agent of a build in flight while staging was upgraded (it keeps its name).
    ("staging", NODE_DESCRIPTION, True),
], ids=["by hand", "another's, none here", "another's", "ours", "ours from before"])
def test_ensure_node_reuses_a_node_only_with_this_installations_description(
        jenkins_fake, installation, description, reused):
    jenkins_fake.add_node(NODE, label=NODE, description=description)
    adapter = installed(jenkins_fake, installation)
    if reused:
        assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is False
    else:  # reused, its secret would be ours, and our release would delete it
        with pytest.raises(PermanentError, match="not this installation's"):
            adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    assert jenkins_fake.nodes[NODE].description == description  # left as it was


@pytest.mark.parametrize("installation,description,deleted", [
    ("", "", False),  # made by hand
    ("", f"{NODE_DESCRIPTION} of installation prod", False),
    ("staging", f"{NODE_DESCRIPTION} of installation prod", False),
    ("staging", f"{NODE_DESCRIPTION} of installation staging", True),
    ("staging", NODE_DESCRIPTION, True),  # ours from before the upgrade (its release)
], ids=["by hand", "another's, none here", "another's", "ours", "ours from before"])
def test_delete_node_deletes_only_a_node_with_this_installations_description(
        jenkins_fake, installation, description, deleted):
    jenkins_fake.add_node(NODE, label=NODE, description=description)

    assert installed(jenkins_fake, installation).delete_node(NODE) is deleted

    assert (NODE not in jenkins_fake.nodes) is deleted
    assert jenkins_fake.requests_to(f"/computer/{NODE}/doDelete") == [] or deleted


def test_each_installation_lists_only_the_agents_with_its_description(jenkins_fake):
    for installation in ("", "staging", "prod"):
        installed(jenkins_fake, installation).ensure_node(
            f"cia-{installation or 'plain'}", label="x", remote_fs=REMOTE_FS)
    jenkins_fake.add_node("by-hand", label="x")

    plain, prod = installed(jenkins_fake, ""), installed(jenkins_fake, "prod")
    assert (plain.list_agents(), plain.legacy_agents()) == (["cia-plain"], [])
    # The plain ones may be prod's from before its upgrade: its build state tells.
    assert (prod.list_agents(), prod.legacy_agents()) == (["cia-prod"], ["cia-plain"])


def test_agent_secret_returns_the_secret_of_that_node_from_its_jnlp_file(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    adapter.ensure_node("other", label="other", remote_fs=REMOTE_FS)

    assert adapter.agent_secret(NODE) == jenkins_fake.nodes[NODE].secret
    assert adapter.agent_secret("other") == jenkins_fake.nodes["other"].secret
    assert jenkins_fake.requests_to(f"/computer/{NODE}/jenkins-agent.jnlp", "GET")


def test_agent_secret_of_an_unknown_node_raises_permanent_error(jenkins_fake):
    with pytest.raises(PermanentError, match="404"):
        adapter_for(jenkins_fake).agent_secret("nobody")


def test_trigger_build_returns_the_queue_id_from_location_and_sends_the_parameters(
        jenkins_fake):
    jenkins_fake.add_job("app/build", parameters=["AGENT_LABEL", "COMMIT"])
    adapter = adapter_for(jenkins_fake)
    first = adapter.trigger_build("app/build", {"AGENT_LABEL": NODE, "COMMIT": "abc123"})
    second = adapter.trigger_build("app/build", {"AGENT_LABEL": "cia-agent-2", "COMMIT": "d"})

    assert [first, second] == [b.queue_id for b in jenkins_fake.builds]
    assert first != second
    assert jenkins_fake.builds[0].job == "app/build"
    assert jenkins_fake.builds[0].parameters == {"AGENT_LABEL": NODE, "COMMIT": "abc123"}
    posted = jenkins_fake.requests_to("/job/app/job/build/buildWithParameters", "POST")
    # no quiet period: without delay, Jenkins holds the item 5 s before it may start
    assert posted[0].query == {"AGENT_LABEL": NODE, "COMMIT": "abc123", "delay": "0sec"}
    jenkins_fake.start_build(first)  # buildable at once


def test_queue_items_and_runs_carry_who_queued_them_read_through_the_tree(jenkins_fake):
    """Each item's and run's CauseAction, read through the queue's and the run's `tree`
    (hudson.model.Api exports only what it names: the causes are there only because the
    tree asks for them): our trigger is our API user's Cause$UserIdCause
    (ParameterizedJobMixIn.getBuildCause without a build token), a timer's names no one."""
    jenkins_fake.add_job("app/build", parameters=["COMMIT"])
    adapter = adapter_for(jenkins_fake)
    ours = adapter.trigger_build("app/build", {"COMMIT": "abc123"})
    timer = jenkins_fake.queue_build("app/build", label="", parameters={"COMMIT": "d"})

    causes = {item.id: item.causes for item in adapter.queue_items()}
    assert causes == {ours: (("hudson.model.Cause$UserIdCause", jenkins_fake.user),),
                      timer.queue_id: (("hudson.triggers.TimerTrigger$TimerTriggerCause", ""),)}
    run = jenkins_fake.start_build(ours)
    assert adapter.run_info("app/build", run.number).causes == causes[ours]
    bare = requests.get(f"{jenkins_fake.url}/queue/api/json?tree=items[id]",
                        auth=(jenkins_fake.user, jenkins_fake.token), timeout=5).json()
    assert bare["items"] == [{"_class": "hudson.model.Queue$BuildableItem",
                              "id": timer.queue_id}]


def test_a_build_an_anonymous_request_queued_names_no_user():
    """A Jenkins whose anonymous user may build: the item's UserIdCause has no userId
    (Cause.UserIdCause(): User.current() is null), "anonymous" its userName; not a timer's."""
    with JenkinsFake(user=None) as fake:
        fake.add_job("app", parameters=["A"])
        adapter = JenkinsAdapter(url=fake.url, user="", token="", backoff=ONE_CALL)
        adapter.trigger_build("app", {"A": "1"})

        [item] = adapter.queue_items()
        assert item.causes == (("hudson.model.Cause$UserIdCause", ""),)
        raw = requests.get(f"{fake.url}/queue/api/json", timeout=5).json()
        [cause] = [c for a in raw["items"][0]["actions"] for c in a.get("causes", [])]
        assert cause["userId"] is None and cause["userName"] == "anonymous"


def test_the_fake_holds_a_build_asked_for_without_delay_in_the_quiet_period(jenkins_fake):
    """As Jenkins does (Queue.WaitingItem): what our trigger's delay=0sec avoids."""
    jenkins_fake.add_job("app/build", parameters=["COMMIT"])
    answer = requests.post(f"{jenkins_fake.url}/job/app/job/build/buildWithParameters",
                           params={"COMMIT": "abc"}, auth=(jenkins_fake.user, jenkins_fake.token),
                           headers=jenkins_fake.crumb_headers(), allow_redirects=False,
                           timeout=10)
    assert answer.status_code == 201
    (build,) = jenkins_fake.builds
    item = requests.get(f"{jenkins_fake.url}/queue/item/{build.queue_id}/api/json",
                        auth=(jenkins_fake.user, jenkins_fake.token), timeout=10).json()
    assert item["_class"] == "hudson.model.Queue$WaitingItem" and not item["buildable"]
    assert item["why"].startswith("In the quiet period. Expires in ")
    with pytest.raises(AssertionError, match="quiet period"):
        jenkins_fake.start_build(build.queue_id)


@pytest.mark.parametrize("find", [True, False])
def test_a_trigger_whose_answer_was_lost_is_not_started_twice_once_its_build_runs(
        jenkins_fake, find):
    """The answer to a trigger Jenkins took is lost (a proxy's 500 after the fact) and an
    agent already online has started the build before the retry: Jenkins folds a request
    with the same parameters only into a queued item, so a blind retry starts the build a
    second time. With find_by the retry finds the running build by its key parameter."""
    jenkins_fake.add_job("app/build", parameters=["AGENT_LABEL", "BUILD_KEY"])
    jenkins_fake.start_on_arrival = True
    proxy = FaultProxy(jenkins_fake.url, ratio=0, seed=1, kubernetes=False).start()
    try:
        proxy.fail_next("POST", "/job/app/job/build/buildWithParameters", status=500,
                        after=True)
        adapter = JenkinsAdapter(url=proxy.url, user=jenkins_fake.user or "",
                                 token=jenkins_fake.token, timeout=5,
                                 backoff=Backoff(attempts=2, base_seconds=0))
        queue_item = adapter.trigger_build(
            "app/build", {"AGENT_LABEL": NODE, "BUILD_KEY": "k1"},
            find_by=("BUILD_KEY", "k1") if find else None)
    finally:
        proxy.stop()
    assert [b.state for b in jenkins_fake.builds][:1] == ["running"]
    if find:
        assert [b.queue_id for b in jenkins_fake.builds] == [queue_item]
    else:  # what the retry did without it: a second build of the same parameters
        assert len(jenkins_fake.builds) == 2


def test_trigger_build_of_an_unknown_job_raises_permanent_error(jenkins_fake):
    jenkins_fake.jobs = {"known"}
    with pytest.raises(PermanentError, match="404"):
        adapter_for(jenkins_fake).trigger_build("unknown", {"A": "1"})
    assert jenkins_fake.builds == []


def test_delete_node_deletes_and_a_second_delete_returns_false(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

    assert adapter.delete_node(NODE) is True
    assert jenkins_fake.nodes == {}
    assert adapter.delete_node(NODE) is False


def test_delete_node_of_a_node_deleted_by_someone_else_meanwhile_returns_false(jenkins_fake):
    jenkins_fake.add_node(NODE, description=NODE_DESCRIPTION)
    jenkins_fake.fail_next(404, path_prefix=f"/computer/{NODE}/doDelete")

    assert adapter_for(jenkins_fake).delete_node(NODE) is False


CALLS = {
    "ensure_node": lambda a: a.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS),
    "agent_secret": lambda a: a.agent_secret(NODE),
    "trigger_build": lambda a: a.trigger_build("app", {"A": "1"}),
    "delete_node": lambda a: a.delete_node(NODE),
}


@pytest.mark.parametrize("status", [500, 502, 503, 429])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_server_errors_and_429_raise_retryable_error(jenkins_fake, call, status):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    jenkins_fake.fail_next(status, headers={"Retry-After": "3"} if status == 429 else None)

    with pytest.raises(RetryableError, match=str(status)):
        CALLS[call](adapter)


def test_server_error_on_the_crumb_fetch_raises_retryable_and_the_next_call_works(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    jenkins_fake.fail_next(500, path_prefix="/crumbIssuer/")

    with pytest.raises(RetryableError):
        adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is True


def test_without_a_user_no_authorization_header_is_sent(monkeypatch):
    """No JENKINS_USER: python-jenkins sent Basic auth of an empty user and password
    ("Basic Og=="), which Jenkins answers 401 on every URL (BasicHeaderProcessor), so a
    Jenkins whose anonymous user may do the calls, or whose proxy in front authenticates
    from JENKINS_API_EXTRA_HEADERS, refused every call; a proxy's own Authorization there
    was replaced by it. Now no Authorization goes but the extra header's."""
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", "X-Proxy-Token: proxy-secret")
    with JenkinsFake(user=None) as fake:
        adapter = JenkinsAdapter(url=fake.url, user="", token="", backoff=ONE_CALL)

        assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is True

        assert [r.headers.get("Authorization") for r in fake.requests] == [None, None]
        assert {r.headers.get("X-Proxy-Token") for r in fake.requests} == {"proxy-secret"}


def test_an_api_token_without_its_user_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="JENKINS_USER: required with JENKINS_API_TOKEN") \
            as caught:
        JenkinsAdapter(url="http://127.0.0.1:1", user="", token="11" + "ab" * 16)
    assert "ab" * 16 not in str(caught.value)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_wrong_token_raises_unauthorized_at_once_without_the_token_in_any_message(
        jenkins_fake, call):
    """A 401 is our credentials, not the object: retryable (a rotated or revoked token is
    fixed by an operator), named for the settings to check, and not retried within the call
    (every attempt would get the same answer)."""
    wrong = "11" + "f00d" * 8
    adapter_for(jenkins_fake).ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    adapter = adapter_for(jenkins_fake, token=wrong, backoff=Backoff(attempts=4))
    before = len(jenkins_fake.requests)

    with pytest.raises(Unauthorized, match="HTTP 401 to .*: JENKINS_USER / JENKINS_API_TOKEN "
                       "not accepted") as caught:
        CALLS[call](adapter)

    assert isinstance(caught.value, RetryableError)
    assert len(jenkins_fake.requests) - before == 1  # the crumb is not asked for with a token
    for err in chain(caught.value):
        assert wrong not in str(err) and wrong not in repr(err)
        assert jenkins_fake.token not in str(err)
    assert list(jenkins_fake.nodes) == ([] if call == "ensure_node" else [NODE])


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_call_jenkins_takes_as_anonymous_is_unauthorized_naming_the_settings(
        jenkins_fake, call):
    """No JENKINS_USER / JENKINS_API_TOKEN reached Jenkins (not set, or a proxy before it
    drops Authorization): Jenkins takes the call as anonymous and answers 403 naming
    anonymous and the permission it lacks (HudsonAuthenticationEntryPoint: X-Required-
    Permission hudson.model.Hudson.Read). That was PermissionMissing, "the Jenkins user lacks
    the Overall/Read permission", a permanent error failing every build for good, where a
    wrong token (401) makes them wait: the credentials are the installation's to fix, as
    there."""
    adapter_for(jenkins_fake).ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    adapter = JenkinsAdapter(url=jenkins_fake.url, user="", token="", backoff=ONE_CALL)

    with pytest.raises(Unauthorized, match="HTTP 403 to .* as anonymous .*JENKINS_USER / "
                       "JENKINS_API_TOKEN") as caught:
        CALLS[call](adapter)

    assert isinstance(caught.value, RetryableError)
    assert list(jenkins_fake.nodes) == ([] if call == "ensure_node" else [NODE])


@pytest.fixture
def not_jenkins():
    """An address that is not Jenkins' and answers every path 200 with an HTML page: a
    JENKINS_URL without Jenkins' context path in front of a single-page app's catch-all, or
    another site's landing page."""
    @Request.application
    def page(request: Request) -> Response:
        return Response("<!DOCTYPE html><html><body>Welcome</body></html>",
                        content_type="text/html")
    server = make_server("127.0.0.1", 0, page, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.mark.parametrize("call", sorted(CALLS))
def test_an_address_serving_no_jenkins_api_is_named_not_a_library_error(not_jenkins, call):
    """python-jenkins reads the CSRF crumb before every call (maybe_add_crumb) with a bare
    json.loads: an HTML page there raised its JSONDecodeError out of the adapter, so every
    provision failed with "Expecting value: line 1 column 1 (char 0)" and a traceback, no
    word of Jenkins' address. Jenkins serves crumbIssuer/api/json as JSON always: the
    address is the installation's to fix (Unauthorized, as a proxy's sign-in page is)."""
    adapter = JenkinsAdapter(url=not_jenkins, user="u", token="t", backoff=ONE_CALL)

    with pytest.raises(Unauthorized, match="no JSON .*JENKINS_URL") as caught:
        CALLS[call](adapter)

    assert isinstance(caught.value, RetryableError)


def test_a_jenkins_url_without_jenkins_context_path_is_named_not_a_failed_build():
    """Jenkins run with `--prefix=/jenkins` and JENKINS_URL written without it: every path
    outside the context answers 404 (Jetty's default handler), computer/doCreateItem too,
    which every Jenkins has. That was "HTTP 404 to create node", a permanent error failing
    each build for good, and the start-up check said Agent/Create was missing. The address
    is the installation's to fix (Unauthorized): the builds wait for it."""
    with JenkinsFake(context_path="/jenkins") as fake:
        root = fake.url[:-len("/jenkins")]
        adapter = JenkinsAdapter(url=root, user=fake.user or "", token=fake.token,
                                 backoff=ONE_CALL)

        with pytest.raises(Unauthorized, match="404 .*computer/doCreateItem.*JENKINS_URL"):
            adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

        assert fake.nodes == {}


@pytest.mark.parametrize(("call", "permission", "error"), [
    ("trigger_build", "Item.Build", PermissionMissing),  # the job's (or folder's) own setting
    ("delete_node", "Computer.Delete", PermissionMissing),  # a release's call: no build fails
    ("ensure_node", "Computer.Create", Unauthorized),  # Jenkins-wide: every build alike, so
    ("agent_secret", "Computer.Connect", Unauthorized)])  # they wait until it is granted
def test_forbidden_raises_permanent_error_or_waits_for_a_jenkins_wide_permission(
        jenkins_fake, call, permission, error):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    # Jenkins' own 403 names the permission (AccessDeniedException3.reportAsHeaders); one
    # naming none is a front's (test_jenkins_sign_in_redirect)
    jenkins_fake.fail_next(403, body=f"ci-autoscaler is missing the {permission} permission",
                           headers={"X-Required-Permission": f"hudson.model.{permission}"})

    with pytest.raises(error, match="403") as caught:
        CALLS[call](adapter)

    assert ("wait until it is granted" in str(caught.value)) == (error is Unauthorized)


def test_agent_secret_never_appears_in_an_error_message(jenkins_fake):
    jenkins_fake.add_node(NODE, launcher=JNLP_LAUNCHER)
    secret = jenkins_fake.nodes[NODE].secret
    jenkins_fake.fail_next(500, path_prefix=f"/computer/{NODE}/jenkins-agent.jnlp",
                           body=f"<argument>{secret}</argument>")

    with pytest.raises(RetryableError) as caught:
        adapter_for(jenkins_fake).agent_secret(NODE)
    assert secret not in str(caught.value)


def test_crumb_is_fetched_once_and_sent_on_every_post(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    adapter.trigger_build("app", {"A": "1"})
    adapter.delete_node(NODE)

    assert len(jenkins_fake.requests_to("/crumbIssuer/api/json", "GET")) == 1
    posts = [r for r in jenkins_fake.requests if r.method == "POST"]
    assert {r.path for r in posts} == {"/computer/doCreateItem", "/job/app/buildWithParameters",
                                       f"/computer/{NODE}/doDelete"}
    assert all(jenkins_fake.crumb_valid(r) for r in posts)


def test_a_stale_crumb_raises_retryable_and_the_next_call_fetches_a_fresh_one(jenkins_fake):
    jenkins_fake.add_job("app", parameters=["A"])
    adapter = adapter_for(jenkins_fake)
    adapter.trigger_build("app", {"A": "1"})
    jenkins_fake.rotate_crumb()  # as a Jenkins restart does

    with pytest.raises(RetryableError, match="crumb"):
        adapter.trigger_build("app", {"A": "2"})
    assert adapter.trigger_build("app", {"A": "2"}) == 2
    assert len(jenkins_fake.requests_to("/crumbIssuer/api/json", "GET")) == 2


def test_the_fake_refuses_a_crumb_sent_without_the_session_it_was_issued_in(jenkins_fake):
    """Jenkins since 2.176 (SECURITY-626) issues a crumb for the web session of the request
    that read it (DefaultCrumbIssuer.issueCrumb hashes req.getSession().getId()) and checks
    it against the session of the POST (validateCrumb): a script that reads the crumb and
    drops the cookie is refused 403 "No valid crumb"."""
    jenkins_fake.add_job("app", parameters=["A"])
    auth = (jenkins_fake.user, jenkins_fake.token)
    issued = requests.get(f"{jenkins_fake.url}/crumbIssuer/api/json", auth=auth, timeout=5)
    crumb = {issued.json()["crumbRequestField"]: issued.json()["crumb"]}
    assert jenkins_fake.session_cookie in issued.cookies

    def trigger(**cookies: str) -> requests.Response:
        return requests.post(f"{jenkins_fake.url}/job/app/buildWithParameters",
                             params={"A": "1"}, auth=auth, headers=crumb, cookies=cookies,
                             allow_redirects=False, timeout=5)

    refused = trigger()
    assert refused.status_code == 403 and "No valid crumb" in refused.text
    assert trigger(**issued.cookies.get_dict()).status_code == 201
    jenkins_fake.expire_web_sessions()
    assert trigger(**issued.cookies.get_dict()).status_code == 403


def test_the_crumb_goes_with_its_session_cookie_and_is_read_again_once_the_session_ended():
    """The adapter's POSTs carry the session cookie its crumb was issued with, under a
    context path too (Jetty scopes the cookie to it); once Jenkins ends the session (its
    timeout, or a restart), the refused crumb is read again in a new session and the call
    goes through on its retry."""
    with JenkinsFake(context_path="/jenkins") as fake:
        fake.add_job("team/app", parameters=["A"])
        adapter = JenkinsAdapter(url=fake.url + "/", user=fake.user or "", token=fake.token,
                                 backoff=Backoff(attempts=2, base_seconds=0.01))

        assert adapter.trigger_build("team/app", {"A": "1"}) == 1
        fake.expire_web_sessions()
        assert adapter.trigger_build("team/app", {"A": "2"}) == 2

        posts = fake.requests_to("/job/team/job/app/buildWithParameters", "POST")
        assert len(posts) == 3 and all(fake.crumb_valid(r) for r in posts)
        cookies = [r.headers["Cookie"] for r in posts]
        assert cookies[0] == cookies[1] != cookies[2]  # the ended session's, then a new one
        assert len(fake.requests_to("/crumbIssuer/api/json", "GET")) == 2


def test_connection_refused_raises_retryable_error():
    fake = JenkinsFake().start()
    url = fake.url
    fake.stop()  # nothing listens on that port any more

    with pytest.raises(RetryableError):
        JenkinsAdapter(url=url, user="u", token="t", backoff=ONE_CALL).trigger_build("app", {"A": "1"})


def test_no_answer_within_the_timeout_raises_retryable_error():
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        with pytest.raises(RetryableError, match="Timeout"):
            JenkinsAdapter(url=url, user="u", token="t", timeout=0.2, backoff=ONE_CALL).agent_secret(NODE)


# ---- jobs: their definitions, and the answers of a job that refuses builds for good -------

def test_job_definition_reads_buildable_and_the_declared_parameters(jenkins_fake):
    jenkins_fake.add_job("team/app", parameters=["CI_AUTOSCALER_AGENT", "GIT_COMMIT"])
    jenkins_fake.add_job("plain", parameters=None)
    jenkins_fake.add_job("off", disabled=True)
    adapter = adapter_for(jenkins_fake)

    app = adapter.job_definition("team/app")
    assert (app.name, app.buildable, app.parameters) == (
        "team/app", True, ("CI_AUTOSCALER_AGENT", "GIT_COMMIT"))
    assert adapter.job_definition("Team/App").name == "team/app"  # Jenkins' own name
    assert adapter.job_definition("plain").parameters is None
    assert adapter.job_definition("off").buildable is False
    assert adapter.job_definition("team").buildable is None  # a folder, not a job
    [read] = jenkins_fake.requests_to("/job/team/job/app/api/json", "GET")
    assert read.query == {
        "tree": "fullName,buildable,property[parameterDefinitions[name,type]]"}
    assert app.agent_parameter_type == "StringParameterDefinition"
    jenkins_fake.add_job("freestyle", kind=FREESTYLE_JOB)  # its agent a Label parameter
    assert adapter.job_definition("freestyle").agent_parameter_type == \
        "LabelParameterDefinition"
    assert adapter.job_definition("plain").agent_parameter_type == ""
    assert app.properties == ("hudson.model.ParametersDefinitionProperty",)
    jenkins_fake.add_job("steered", kind=FREESTYLE_JOB, properties=(GROOVY_LABEL_ASSIGNMENT,))
    assert adapter.job_definition("steered").properties == (
        "hudson.model.ParametersDefinitionProperty", GROOVY_LABEL_ASSIGNMENT)


def test_a_freestyle_jobs_agent_label_parameter_is_read_from_its_queue_item_and_run(
        jenkins_fake):
    """A freestyle job takes its agent as a Label parameter (NodeLabel Parameter plugin),
    whose LabelParameterValue exports its `label` and no `value`: read as "" before, the
    build's queue item and run carried no agent for the checks that follow a run by it."""
    jenkins_fake.add_job("team/app", kind=FREESTYLE_JOB,
                         parameters=["CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY"])
    adapter = adapter_for(jenkins_fake)
    queue_id = adapter.trigger_build("team/app", {"CI_AUTOSCALER_AGENT": NODE,
                                                  "CI_AUTOSCALER_BUILD_KEY": "k1"})

    [item] = adapter.queue_items()
    assert item.parameters == {"CI_AUTOSCALER_AGENT": NODE, "CI_AUTOSCALER_BUILD_KEY": "k1"}
    assert adapter.queue_item(queue_id).parameters["CI_AUTOSCALER_AGENT"] == NODE
    jenkins_fake.add_node(NODE, label=NODE)
    jenkins_fake.connect_agent(NODE)
    jenkins_fake.dispatch()
    run = adapter.run_info("team/app", 1)
    assert run is not None and run.parameters["CI_AUTOSCALER_AGENT"] == NODE


def test_job_definition_of_an_unknown_job_is_none(jenkins_fake):
    jenkins_fake.jobs = {"known"}

    assert adapter_for(jenkins_fake).job_definition("unknown") is None


def test_a_disabled_job_is_a_permanent_error_with_jenkins_message_and_no_retry(jenkins_fake):
    jenkins_fake.add_job("team/app", disabled=True)
    adapter = adapter_for(jenkins_fake, backoff=Backoff(attempts=4, base_seconds=0.01))

    with pytest.raises(PermanentError) as caught:
        adapter.trigger_build("team/app", {"CI_AUTOSCALER_AGENT": NODE})

    assert str(caught.value) == ("Jenkins refused to start job 'team/app': "
                                 "team/app is not buildable!")
    assert len(jenkins_fake.requests_to("/job/team/job/app/buildWithParameters")) == 1


@pytest.mark.parametrize("shown", [False, True], ids=["hidden", "stack-trace-shown"])
def test_a_job_that_is_not_parameterized_is_a_permanent_error_and_no_retry(shown):
    with JenkinsFake(show_stack_trace=shown) as fake:
        fake.add_job("plain", parameters=None)
        adapter = adapter_for(fake, backoff=Backoff(attempts=4, base_seconds=0.01))

        with pytest.raises(PermanentError) as caught:
            adapter.trigger_build("plain", {"CI_AUTOSCALER_AGENT": NODE})

        assert str(caught.value) == ("Jenkins refused to start job 'plain': "
                                     "This build is not parameterized!")
        assert len(fake.requests_to("/job/plain/buildWithParameters")) == 1
        # Jenkins' page hides the message by default: then the job itself is read.
        assert len(fake.requests_to("/job/plain/api/json")) == (0 if shown else 1)


def test_a_500_that_is_not_jenkins_own_error_page_stays_retryable(jenkins_fake):
    jenkins_fake.add_job("plain", parameters=None)  # would be "not parameterized"...
    jenkins_fake.fail_next(500, path_prefix="/job/")  # ...but this 500 is a proxy's

    with pytest.raises(RetryableError, match="500"):
        adapter_for(jenkins_fake).trigger_build("plain", {"A": "1"})
    assert jenkins_fake.requests_to("/job/plain/api/json") == []


def test_a_500_on_a_parameterized_job_stays_retryable_after_reading_it(jenkins_fake):
    jenkins_fake.add_job("app", parameters=["A"])
    jenkins_fake.fail_next(500, path_prefix="/job/app/buildWithParameters",
                           body="<h2>Oops!</h2><p>Logging ID=1b2c</p>")

    with pytest.raises(RetryableError, match="500"):
        adapter_for(jenkins_fake).trigger_build("app", {"A": "1"})
    assert len(jenkins_fake.requests_to("/job/app/api/json")) == 1


# -- a build whose agent cannot start: cancel, abort, and which agents are online ------------

def test_a_queued_item_is_cancelled_and_then_reads_as_cancelled(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    queue_id = adapter.trigger_build("build", {"CI_AUTOSCALER_AGENT": NODE})

    adapter.cancel_queue_item(queue_id)

    assert jenkins_fake.cancelled_items == [queue_id]
    cancel = jenkins_fake.requests_to("/queue/cancelItem", "POST")
    assert [r.query for r in cancel] == [{"id": str(queue_id)}]
    assert jenkins_fake.crumb_valid(cancel[0])
    assert adapter.build_state("build", queue_id) == (BuildState.CANCELLED, None)
    assert adapter.queue_items() == []


def test_cancelling_an_item_that_left_the_queue_or_is_unknown_is_no_error(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    queue_id = adapter.trigger_build("build", {"CI_AUTOSCALER_AGENT": NODE})
    jenkins_fake.start_build(queue_id)

    adapter.cancel_queue_item(queue_id)  # Jenkins answers 500: a LeftItem cannot be cancelled
    adapter.cancel_queue_item(9999)  # 404: swallowed by python-jenkins

    assert jenkins_fake.cancelled_items == []
    assert [r.path for r in jenkins_fake.requests if r.method == "POST"][-2:] == [
        "/queue/cancelItem", "/queue/cancelItem"]
    assert adapter.build_state("build", queue_id)[0] == BuildState.RUNNING


def test_a_cancel_that_fails_for_another_reason_is_an_error(jenkins_fake):
    jenkins_fake.fail_next(503, path_prefix="/queue/cancelItem")
    with pytest.raises(RetryableError, match="cancel queue item 7"):
        adapter_for(jenkins_fake).cancel_queue_item(7)


def test_a_running_build_is_aborted_and_a_finished_one_left_alone(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    first = adapter.trigger_build("folder/build", {"CI_AUTOSCALER_AGENT": "a"})
    second = adapter.trigger_build("folder/build", {"CI_AUTOSCALER_AGENT": "b"})
    running = jenkins_fake.start_build(first)
    done = jenkins_fake.finish_build(second)

    adapter.abort_build("folder/build", running.number)
    adapter.abort_build("folder/build", done.number)
    adapter.abort_build("folder/build", 99)  # no such build: 404, nothing to stop

    assert jenkins_fake.stopped_builds == [("folder/build", running.number)]
    assert (running.state, running.result) == ("finished", "ABORTED")
    assert done.result == "SUCCESS"
    assert adapter.build_state("folder/build", first) == (BuildState.FINISHED, running.number)
    stop = f"/job/folder/job/build/{running.number}/stop"
    assert jenkins_fake.requests_to(stop, "POST")
    # Jenkins answers the stop with a redirect to the build's page: the call's end, the
    # page is not asked (test_jenkins_redirects.py)
    assert not jenkins_fake.requests_to(f"/job/folder/job/build/{running.number}/", "GET")


def test_online_agents_are_the_computers_whose_agent_connected_in_one_call(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    for name in ("cia-a", "cia-b"):
        adapter.ensure_node(name, label=name, remote_fs=REMOTE_FS)
    assert adapter.online_agents() == set()

    jenkins_fake.connect_agent("cia-b")
    before = len(jenkins_fake.requests)
    assert adapter.online_agents() == {"cia-b"}
    assert [(r.path, r.query) for r in jenkins_fake.requests[before:]] == [
        ("/computer/api/json", {"tree": "computer[displayName,offline]"})]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("bypassed", [False, True])
def test_every_call_goes_through_the_environments_proxy_unless_no_proxy_names_the_host(
        jenkins_fake, monkeypatch, bypassed):
    """requests' environment settings are read once per host by a client (adapters.jenkins_client
    Client), not on every request: the proxy still applies to every call, the first and the
    ones after, and NO_PROXY still lets the host bypass it."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_dead_port()}")  # nothing listens
    if bypassed:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    adapter = adapter_for(jenkins_fake)
    for _ in range(2):
        if bypassed:
            assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) in (True, False)
        else:
            with pytest.raises(RetryableError):
                adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    assert (NODE in jenkins_fake.nodes) is bypassed


# Jenkins gives a job's URL out escaped (Util.rawEncode of each name: "Team A/my build" is
# job/Team%20A/job/my%20build/), in queue items' tasks as everywhere; the job is named as the
# routes name it, unescaped.
SPACED_JOB = "Team A/my build+1"


# Jenkins.checkGoodName refuses "?*/\%!@#$^&|<>[]:;" in an item's name, but a multibranch
# project names a branch's job by NameMangler: "feature/x" is the job "feature%2Fx".
@pytest.mark.parametrize("job", [SPACED_JOB, "r+d (v2)/über~x, it's=1", "repo/feature%2Fx"])
def test_a_queued_item_of_a_job_whose_name_needs_escaping_names_that_job(jenkins_fake, job):
    item = jenkins_fake.queue_build(job, label="maven")

    (seen,) = adapter_for(jenkins_fake).queue_items()

    assert (seen.id, seen.job) == (item.queue_id, job)


def test_find_queue_item_finds_a_queued_build_of_a_job_whose_name_needs_escaping(
        jenkins_fake):
    """A lost trigger's lookup (workers.engine.lost_triggers) and a retried trigger's: not found, a
    build of such a job was triggered twice."""
    item = jenkins_fake.queue_build(SPACED_JOB, label="maven",
                                    parameters={"CI_AUTOSCALER_AGENT": NODE})

    found = adapter_for(jenkins_fake).find_queue_item(SPACED_JOB, "CI_AUTOSCALER_AGENT", NODE)

    assert found == item.queue_id


@pytest.mark.parametrize("where", ["queue", "known"])
def test_find_queue_item_finds_the_build_of_a_job_named_in_another_case(jenkins_fake, where):
    """A route naming job "Build" triggers Jenkins' "build" (Jenkins finds items in any case:
    Jenkins.items is CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER); a person may rename
    "Build" to "build", AbstractItem.renameTo), whose queue item's task names it "build".
    Compared exactly, the lookup of a build whose trigger's answer was lost (a failed start's
    cancel: workers.engine.failures; a lost trigger after a restart: its recorded item's page)
    found nothing, and the item waited in Jenkins' queue for an agent that never came."""
    jenkins_fake.add_job("build")
    item = jenkins_fake.queue_build("build", label=NODE,
                                    parameters={"CI_AUTOSCALER_AGENT": NODE})
    adapter = adapter_for(jenkins_fake)

    found = adapter.find_queue_item(
        "Build", "CI_AUTOSCALER_AGENT", NODE,
        **({"queue": []} if where == "known" else {}),
        known=item.queue_id if where == "known" else None)

    assert found == item.queue_id


def test_extra_headers_are_sent_and_their_values_never_logged(jenkins_fake, monkeypatch):
    """python-jenkins adds the headers of JENKINS_API_EXTRA_HEADERS (a proxy's credential in
    front of Jenkins, say) and logs them, values too, as a warning: our log line names them
    only (workers.telemetry.logs)."""
    stream = io.StringIO()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    # configure installs the process's uncaught-exception hooks (workers.telemetry.uncaught):
    # restored after, else pytest's own threading.excepthook is gone for every later test of
    # this worker, and a thread's crash there no longer fails or warns
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    logs.configure("INFO", stream=stream)
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", "X-Proxy-Token: hush-5d1e9\nX-Team: ci")

    adapter_for(jenkins_fake).queue_items()

    [request] = [r for r in jenkins_fake.requests if r.path == "/queue/api/json"]
    assert request.headers.get("X-Proxy-Token") == "hush-5d1e9"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [said] = [line for line in lines if "JENKINS_API_EXTRA_HEADERS" in line["msg"]]
    assert "X-Proxy-Token" in said["msg"] and "X-Team" in said["msg"]
    assert "hush-5d1e9" not in stream.getvalue()


@pytest.mark.parametrize("job", ["app", "2024", "team/42"])
def test_a_vetoed_trigger_queued_nothing_whatever_the_job_is_named(jenkins_fake, job):
    """A plugin's QueueDecisionHandler vetoed the build: Jenkins answers with a redirect to
    the job's own page (ParametersDefinitionProperty: sendRedirect(".")), no queue item.
    python-jenkins read the last segment of any Location as the item's number: for a job
    named by a number (a project id, a year), the job's name came back as a queue item,
    and the build was taken for triggered on an item that is not its own."""
    jenkins_fake.add_job(job, parameters=["A"]).vetoed = True

    with pytest.raises(PermanentError, match="it queued no build"):
        adapter_for(jenkins_fake).trigger_build(job, {"A": "1"})
    assert jenkins_fake.builds == []


def test_a_trigger_redirected_to_another_page_than_the_jobs_stays_retryable(jenkins_fake):
    """Only the job's own page is a veto's answer: another redirect our client takes for
    Jenkins' own (under job/) queued nothing we know of, and is not the build's to fail."""
    jenkins_fake.add_job("app", parameters=["A"])
    jenkins_fake.fail_next(302, path_prefix="/job/app/buildWithParameters",
                           headers={"Location": f"{jenkins_fake.url}/job/other/"})

    with pytest.raises(RetryableError, match="redirect to /job/other/, not a queue item"):
        adapter_for(jenkins_fake).trigger_build("app", {"A": "1"})


def test_a_jenkins_on_an_internal_ca_is_trusted_through_requests_ca_bundle(tmp_path, monkeypatch):
    """README (REQUESTS_CA_BUNDLE) and the chart's caBundle: the client that reads each host's
    environment settings once (jenkins_client.Client._settings) still takes the CA bundle from
    the environment, so a Jenkins whose certificate an internal CA signed is reached; without
    the bundle, certificate verification fails, as on a real cluster."""
    import http.server
    import ssl
    import subprocess
    import threading

    from workers.adapters.jenkins_client import Client

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    class Me(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = json.dumps({"id": "ci-autoscaler"}).encode()
            self.send_response(200 if self.path.startswith("/me/api/json") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Me)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(requests.exceptions.SSLError):
            Client(url, username="ci-autoscaler", password="t0ken", timeout=5).get_whoami()
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        client = Client(url, username="ci-autoscaler", password="t0ken", timeout=5)
        assert client.get_whoami()["id"] == "ci-autoscaler"
    finally:
        server.shutdown()
        server.server_close()


def test_runs_carrying_finds_a_pipeline_run_on_the_controller_under_its_job_s_name_now(
        jenkins_fake):
    """A Pipeline's run goes on on a one-off executor (WorkflowRun is a Queue.FlyweightTask),
    in an `input` before any node block too: found by the parameter it carries under its
    job's name now; one of a job we may not READ shows no run (its executor's
    currentExecutable is null: Executor.getCurrentExecutableForApi), and is no error."""
    jenkins_fake.add_job("build")
    jenkins_fake.add_job("secret/deploy")
    ours = jenkins_fake.queue_build("build", label=NODE, parameters={"CI_AUTOSCALER_AGENT": NODE})
    hidden = jenkins_fake.queue_build("secret/deploy", label="x",
                                      parameters={"CI_AUTOSCALER_AGENT": NODE})
    jenkins_fake.start_pipeline_on_controller(ours.queue_id)
    jenkins_fake.start_pipeline_on_controller(hidden.queue_id)
    jenkins_fake.move_job("build", "archive")
    jenkins_fake.unreadable = {"secret"}
    adapter = adapter_for(jenkins_fake)

    [run] = adapter.runs_carrying("CI_AUTOSCALER_AGENT", NODE)

    assert (run.job, run.number) == ("archive/build", 1)
    assert adapter.runs_carrying("CI_AUTOSCALER_AGENT", "cia-other-1") == []
