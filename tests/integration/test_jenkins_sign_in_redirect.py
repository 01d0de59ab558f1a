"""A proxy that authenticates in front of Jenkins and no longer takes our credential answers
every call with a redirect to its sign-in page (oauth2-proxy behind nginx's auth_request, as
its docs set it up: 302 /oauth2/sign_in?rd=..., which answers 200 with a form). Followed, that
page was taken for Jenkins' answer: a node "made" that was not, a build "refused for good"
(no Location) whose pod was deleted and which was never built, an agent secret or a node page
"unusable". A redirect Jenkins does not make is now what a 401 is: our credentials, retried,
the build waiting (workers.adapters.jenkins_client SignInRedirect). Through the real path: the
webhook, the mover, an RQ SimpleWorker with the production failure handler, the reconcile
pass, kmock over HTTP and the Jenkins fake."""

import time

import pytest

from tests.integration.test_jenkins_adapter import CALLS, NODE, ONE_CALL, REMOTE_FS, \
    adapter_for
from tests.integration.test_jenkins_token_refused import assert_waits, passes, run_retries, \
    state_of
from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, pod_creates, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.https_redirect import HttpsRedirect
from tests.support.jenkins_fake import SIGN_IN_PATH, JenkinsFake
from workers.adapters.jenkins import JenkinsAdapter
from workers.core.errors import RetryableError, Unauthorized

HINT = "not a Jenkins page: a proxy's sign-in? (JENKINS_API_EXTRA_HEADERS not accepted)"


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_sign_in_redirect_is_unauthorized_and_changes_nothing(jenkins_fake, call):
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    nodes = set(jenkins_fake.nodes)
    jenkins_fake.sign_in_redirects(times=10)

    with pytest.raises(Unauthorized, match="redirect to http://127.0.0.1:[0-9]+/oauth2/sign_in, "
                       ) as caught:
        CALLS[call](adapter)

    assert isinstance(caught.value, RetryableError) and HINT in str(caught.value)
    assert "rd=" not in str(caught.value)  # the redirect's query is not repeated
    assert set(jenkins_fake.nodes) == nodes and jenkins_fake.builds == []
    jenkins_fake.sign_in_redirects(times=0)  # the proxy takes our credential again
    CALLS[call](adapter)


def test_jenkins_own_redirects_are_followed_as_before(jenkins_fake):
    """Jenkins redirects after making or deleting a node, and after stopping a run: those
    are its answers, not a sign-in."""
    adapter = adapter_for(jenkins_fake)
    assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is True
    assert adapter.disable_agent(NODE, "parked") is True
    queue_id = adapter.trigger_build("app", {"A": "1"})
    jenkins_fake.start_build(queue_id)
    adapter.abort_build("app", 1)
    assert adapter.delete_node(NODE) is True
    assert jenkins_fake.stopped_builds == [("app", 1)] and jenkins_fake.nodes == {}


def test_a_build_whose_trigger_meets_a_sign_in_redirect_waits_and_is_triggered_once(
        app, kube, jenkins_fake):
    """Refused for good before: failed, its pod deleted, never built."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.sign_in_redirects(times=1000, path_prefix="/job/build/buildWithParameters")

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 2, time.time())

    assert_waits(app, kube, jenkins_fake, key, pods=1)
    jenkins_fake.sign_in_redirects(times=0)
    passes(app, 1, later)
    run_retries(app)

    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state_of(app).get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1 and len(kube.pods(NAMESPACE)) == 1



@pytest.mark.parametrize("call", sorted(CALLS))
def test_the_sign_in_page_is_never_asked_so_never_sent_our_proxy_credential(
        jenkins_fake, call, monkeypatch):
    """The redirect is judged before it is followed: requests drops only Authorization on
    the way to another host (Session.rebuild_auth), so the proxy's credential (a header of
    JENKINS_API_EXTRA_HEADERS, read by python-jenkins), the crumb and, for a 307 or 308, a
    POST's body went to the sign-in page, wherever the proxy's Location sent them."""
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", "X-Proxy-Token: proxy-secret")
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    jenkins_fake.sign_in_redirects(times=10)

    with pytest.raises(Unauthorized):
        CALLS[call](adapter)

    assert [r for r in jenkins_fake.requests if r.path == SIGN_IN_PATH] == []


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_front_moving_every_call_to_https_is_followed_as_before(call):
    """JENKINS_URL http://..., the ingress in front answering 308 to the same page on https:
    every call was taken for a sign-in (crumbIssuer/, queue/, a job's api/json are no pages
    Jenkins redirects to), Unauthorized for ever, where it had worked. The same page at
    another address is no sign-in page. (A Jenkins letting anonymous in: requests drops
    Authorization on the port change the test needs, never on http:80 -> https:443.)"""
    with JenkinsFake(user=None) as fake, HttpsRedirect(fake.url) as front:
        adapter = JenkinsAdapter(url=front.url, user="", token="", backoff=ONE_CALL)
        adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
        if call == "ensure_node":
            fake.nodes.clear()

        CALLS[call](adapter)

        assert front.asked > 0 and (NODE in fake.nodes) == (call != "delete_node")


def test_a_node_create_a_front_would_turn_into_a_get_is_not_taken_for_made():
    """nginx's `return 301 https://$host$request_uri;`: requests sends a POST on after a 301,
    302 or 303 as a GET (Session.rebuild_method), so the create never reaches Jenkins. The
    create stops at Jenkins' own redirect (computer/...), and the front's 301 to the same
    page was taken for it: a node "made" that was not. Jenkins never redirects a call to its
    own page; such a move is refused as a sign-in is (Unauthorized, retried), naming it."""
    with JenkinsFake(user=None) as fake, HttpsRedirect(fake.url, status=301) as front:
        adapter = JenkinsAdapter(url=front.url, user="", token="", backoff=ONE_CALL)

        with pytest.raises(Unauthorized, match=f"redirect to {fake.url}/computer/doCreateItem"):
            adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

        assert fake.nodes == {}


# A front that answers at the URL asked with its sign-in page, no redirect: oauth2-proxy in
# front of Jenkins itself answers it 403, a forms-login gateway 200 (JenkinsFake.sign_in_pages).
# Jenkins never answers our calls 200 with HTML, and names the permission in every 403 of its
# own (X-Required-Permission). Before: the 200 to a node create was taken for a node made, to a
# trigger for a build refused for good (no Location), to the JNLP file and the node's page for
# "unusable"; the 403 to a trigger failed the build for good.
PAGE_HINT = "not Jenkins' answer: a proxy's sign-in page?"


@pytest.mark.parametrize(("call", "status"), [(call, 200) for call in sorted(CALLS)] + [
    (call, 403) for call in ("agent_secret", "ensure_node", "trigger_build")])
def test_a_sign_in_page_in_place_of_jenkins_answer_is_unauthorized_and_changes_nothing(
        jenkins_fake, call, status):
    """A 403 naming no permission to a call whose refusal fails the build; elsewhere (a
    release's node delete, a pass's step) it stays that object's refusal."""
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    if call == "ensure_node":
        jenkins_fake.nodes.clear()
    nodes = set(jenkins_fake.nodes)
    jenkins_fake.sign_in_pages(times=10, status=status)

    with pytest.raises(Unauthorized, match=f"HTTP {status} with an HTML page") as caught:
        CALLS[call](adapter)

    assert PAGE_HINT in str(caught.value) and "<" not in str(caught.value)
    assert set(jenkins_fake.nodes) == nodes and jenkins_fake.builds == []
    jenkins_fake.sign_in_pages(times=0)  # the front takes our credential again
    CALLS[call](adapter)


@pytest.mark.parametrize("status", [200, 403])
def test_a_build_whose_trigger_meets_a_sign_in_page_waits_and_is_triggered_once(
        app, kube, jenkins_fake, status):  # noqa: F811
    """Failed for good before, its pod deleted, never built."""
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.sign_in_pages(times=1000, path_prefix="/job/build/buildWithParameters",
                               status=status)

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 2, time.time())

    assert_waits(app, kube, jenkins_fake, key, pods=1)
    jenkins_fake.sign_in_pages(times=0)
    passes(app, 1, later)
    run_retries(app)

    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state_of(app).get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1 and len(kube.pods(NAMESPACE)) == 1


# Before its trigger a provision reads Jenkins' session (the root's api/json) and the job's
# definition (workers.checks.jobs.before_trigger): a front's 403 sign-in page there failed the
# build for good as well, where the build itself is first to reach Jenkins after its agent is
# registered (a warm agent claimed; the front's credential expiring between the node create
# and the trigger). Jenkins answers neither read with a 403 naming no permission: Overall/Read
# and Job/Read missing are AccessDeniedException3 (X-Required-Permission), a job our user may
# only discover is 403 "Please login to access job" (Jenkins.getItem), which is the job's.
@pytest.mark.parametrize("prefix", ["/job/build/", "/api/json"])
def test_a_sign_in_page_to_the_reads_before_a_trigger_makes_the_build_wait(
        app, kube, jenkins_fake, prefix):  # noqa: F811
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.sign_in_pages(times=1000, path_prefix=prefix, status=403)

    key = push(app.test_client(), 1)
    run_worker(app)
    later = passes(app, 2, time.time())

    build = state_of(app).get_build(key)  # (the root's session may be known from a job read)
    assert build["status"] not in ("failed", "released") and not build.get("error"), build
    assert state_of(app).queue.failed_job_registry.count == 0  # no job failed for good
    jenkins_fake.sign_in_pages(times=0)
    passes(app, 1, later)
    run_retries(app)

    assert [b.parameters["CI_AUTOSCALER_BUILD_KEY"] for b in jenkins_fake.builds] == [key]
    assert state_of(app).get_build(key)["status"] == "triggered"
    assert len(pod_creates(kube)) == 1
