"""Redirects a Jenkins call meets besides a proxy's sign-in page (that one:
test_jenkins_sign_in_redirect.py): Jenkins' own, which end the call (a POST's answer: the
page it names is never needed), wherever they point; a proxy's move of a POST to another
host, which never reaches Jenkins; and a proxy's redirect loop. Over HTTP, through the
Jenkins fake and a front playing the proxy (tests/support/https_redirect.py)."""

import time

import pytest

from tests.integration.test_jenkins_adapter import NODE, ONE_CALL, REMOTE_FS, adapter_for
from tests.support.https_redirect import HttpsRedirect
from tests.support.jenkins_fake import JenkinsFake
from workers.adapters.jenkins import MAX_REDIRECTS, JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.errors import Overloaded, Unauthorized

# The calls Jenkins answers with a redirect of its own, and what each then says.
OWN_REDIRECTS = {
    "disable_agent": (lambda a: a.disable_agent(NODE, "parked"), True),
    "enable_agent": (lambda a: a.enable_agent(NODE), True),
    "delete_node": (lambda a: a.delete_node(NODE), True),
    "abort_build": (lambda a: a.abort_build("app", 1), None),
}


@pytest.mark.parametrize("call", sorted(OWN_REDIRECTS))
def test_jenkins_own_redirect_naming_its_internal_address_ends_the_call(
        jenkins_fake, call, monkeypatch):
    """Behind a proxy that passes on neither Host nor X-Forwarded-Proto, Jenkins' redirect
    after a delete, an offline or a stop names its own address (http://jenkins:8080/...,
    made absolute by the container). Followed, that GET went to another host with our
    JENKINS_API_EXTRA_HEADERS credential and the crumb (in the clear, had it named http://
    where JENKINS_URL is https://), without Authorization (requests drops it there:
    Session.rebuild_auth), so Jenkins answered 403, and a node deleted or a run stopped was
    reported as a permanent failure."""
    monkeypatch.setenv("JENKINS_API_EXTRA_HEADERS", "X-Proxy-Token: proxy-secret")
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)
    jenkins_fake.start_build(adapter.trigger_build("app", {"A": "1"}))
    if call == "enable_agent":
        adapter.disable_agent(NODE, "parked")
    internal = f"localhost:{jenkins_fake.url.rsplit(':', 1)[1]}"  # the same fake, named so
    jenkins_fake.redirect_base = f"http://{internal}"
    run, answer = OWN_REDIRECTS[call]

    assert run(adapter) == answer

    assert [r.path for r in jenkins_fake.requests if r.headers.get("Host") == internal] == []
    if call == "delete_node":
        assert jenkins_fake.nodes == {}
    if call == "abort_build":
        assert jenkins_fake.stopped_builds == [("app", 1)]
    if call in ("disable_agent", "enable_agent"):
        assert jenkins_fake.nodes[NODE].temporarily_offline == (call == "disable_agent")


@pytest.mark.parametrize("status", [301, 308])
def test_a_node_create_moved_to_another_host_is_not_taken_for_made(status):
    """A front that sends every call to another name of the same site (nginx's
    `return 301 https://ci.example.com$request_uri;` for an alias), set up while a worker
    had its crumb: the create's redirect names computer/doCreateItem, a path under computer/,
    and was taken for Jenkins' own answer, 'made', though the POST never reached Jenkins.
    Jenkins never sends a call on to its own page; the move is refused naming where it
    went, so JENKINS_URL can be set to it."""
    with JenkinsFake(user=None) as fake, HttpsRedirect(fake.url) as front:
        adapter = JenkinsAdapter(url=front.url, user="", token="", backoff=ONE_CALL)
        assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is True  # crumb read
        other = f"http://localhost:{fake.url.rsplit(':', 1)[1]}"
        front.target, front.status = other, status

        with pytest.raises(Unauthorized, match=f"redirect to {other}/computer/doCreateItem"):
            adapter.ensure_node("cia-agent-2", label="cia-agent-2", remote_fs=REMOTE_FS)

        assert set(fake.nodes) == {NODE}


@pytest.mark.parametrize("status", [301, 302, 308])
def test_a_proxys_redirect_loop_is_unauthorized_after_a_few_hops(status):
    """An https redirect behind a load balancer that ends TLS and talks http to the ingress
    (ingress-nginx's ssl-redirect without use-forwarded-headers) sends every call back to
    the same URL. requests went round 30 times, each hop with the full timeout, then its
    TooManyRedirects was read as "Jenkins answered HTTP 3xx", a permanent error: a
    provision failed for good, its pod deleted. It is the installation's to fix, as a
    proxy's sign-in is: Unauthorized, not retried within the call."""
    with HttpsRedirect("http://placeholder", status=status) as front:
        front.target = front.url  # the same URL again
        adapter = JenkinsAdapter(url=front.url, user="u", token="t", backoff=Backoff(attempts=4))

        with pytest.raises(Unauthorized, match="redirect loop"):
            adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

        assert front.asked == MAX_REDIRECTS + 1


def test_a_calls_timeout_bounds_all_its_redirects_together():
    """Each hop of a call had the full timeout (requests' resolve_redirects sends every hop
    with the same one): through a slow proxy's moves a call took up to six timeouts, past a
    job's RQ timeout and a reconcile pass's bound. The timeout is the call's now: once it
    has passed, no further hop is asked, and the call is a timeout (Overloaded) as one slow
    answer is."""
    timeout, delay = 1.0, 0.4
    with HttpsRedirect("http://placeholder", status=308) as front:
        front.target, front.delay_seconds = front.url, delay  # a slow front, moving again
        adapter = JenkinsAdapter(url=front.url, user="u", token="t", timeout=timeout,
                                 backoff=ONE_CALL)
        started = time.monotonic()

        with pytest.raises(Overloaded, match="Timeout"):
            adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

        # 0.4 s a hop: asked at 0, 0.4 and 0.8 s; the third hop given the 0.2 s left
        assert front.asked <= int(timeout / delay) + 1 < MAX_REDIRECTS + 1
        assert time.monotonic() - started < 2 * timeout  # six hops took 2.4 s


def test_a_move_to_another_port_that_drops_our_token_is_unauthorized_naming_it():
    """http://ci:8080 moved to https://ci:8443 (the same page): requests sends the call on
    without Authorization (Session.should_strip_auth: only http:80 -> https:443 keeps it),
    so Jenkins answered the crumb read 403, as to anonymous, a permanent error for every
    call and every build. The move's address in JENKINS_URL works: it is named, and the
    builds wait (Unauthorized) meanwhile."""
    with JenkinsFake() as fake, HttpsRedirect(fake.url) as front:
        adapter = JenkinsAdapter(url=front.url, user=fake.user or "", token=fake.token,
                                 backoff=ONE_CALL)

        with pytest.raises(Unauthorized, match=f"redirect to {fake.url}/crumbIssuer/api/json"):
            adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS)

        assert fake.nodes == {} and fake.requests == []
        assert JenkinsAdapter(url=fake.url, user=fake.user or "", token=fake.token,
                              backoff=ONE_CALL).ensure_node(NODE, label=NODE,
                                                            remote_fs=REMOTE_FS) is True
