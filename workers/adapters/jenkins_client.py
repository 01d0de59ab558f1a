"""python-jenkins' client as the Jenkins adapter (workers.adapters.jenkins) uses it: every
redirect judged before it is followed (Jenkins' own ends the call, a proxy's sign-in page is
never asked: ``SignInRedirect``), one timeout for a call and all its hops, and requests'
environment settings read once per target.
"""

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import jenkins
import requests

from workers.telemetry import logs

# Where Jenkins itself sends the requests we make when it answers one with a redirect: to an
# agent's or the agents' page (ComputerSet.doDoCreateItem, Computer.doDoDelete: HttpRedirect
# "..", doToggleOffline, doChangeOfflineCause: redirectToDot), to a run's page (Run.doStop:
# forwardToPreviousPage), to the root (Queue.doCancelItem before 2.x: the Referer
# python-jenkins sends). Its API pages and JNLP file are never redirected. Jetty makes a
# relative redirect absolute with the scheme and Host the request came with, so behind a
# proxy that passes on neither Host nor X-Forwarded-Proto, Jenkins' own name the controller's
# internal address (http://jenkins:8080/computer/): only the path is read, under Jenkins'
# base path (the root on our own address only). Such a redirect is Jenkins' answer, the
# call done: it is not followed (python-jenkins reads nothing of the page it names).
_JENKINS_REDIRECTS = ("computer", "job")
# The most redirects one call follows: the moves of proxies on the way (http to https, a
# slash), a few at most; Jenkins' own end the call. More is a loop (an https redirect behind a
# load balancer that ends TLS sends every call back to itself): requests' own bound, 30
# (Session.max_redirects), held a worker ~30 timeouts. All hops share the call's one timeout
# (Client._request).
MAX_REDIRECTS = 5
# The header of Jenkins' session (Jenkins.SESSION_HASH, new on every start of the controller),
# which hudson.model.Api.setHeaders sends with every API page (api/json, api/xml): jenkinsci/
# jenkins core/src/main/java/hudson/model/Api.java (doJson -> setHeaders); the CLI's
# session-id command prints the same value "to allow clients to reliably wait for a restart"
# (hudson.cli.SessionIdCommand).
SESSION_HEADER = "X-Jenkins-Session"
# Where Jenkins sends a trigger it queued: the item's page, `req.getContextPath() + '/' +
# item.getUrl()` ("queue/item/25/"), with 201 (ParametersDefinitionProperty
# .buildWithParameters)
_QUEUE_ITEM = re.compile(r"/queue/item/([0-9]+)/?$")


class NothingQueued(Exception):
    """Jenkins answered a trigger with a Location that is no queue item (`path`, without its
    query): the job's own page when a QueueDecisionHandler vetoed the build
    (ParametersDefinitionProperty.buildWithParameters: no item, so sendRedirect("."))."""

    def __init__(self, path: str):
        super().__init__(f"no queue item in the answer's Location ({path})")
        self.path = path


class NotJenkinsPage(requests.HTTPError):
    """An HTML page answered 200 where Jenkins never answers so: a POST of ours (Jenkins
    answers one it took with a redirect, 201 or 302, or 204; one it refuses with an error
    status: a refused form is its error page, 400 with X-Error, hudson/model/
    AbstractModelObject/error.jelly) or a page we read (api/json is JSON, hudson.model.Api;
    the JNLP file application/x-java-jnlp-file). A front before Jenkins that answers at the
    URL asked with its own sign-in form (tests/support/jenkins_fake.py sign_in_pages) does:
    taken for Jenkins' answer, it was a node made, a trigger refused for good (no Location),
    an agent secret or a node page "unusable"."""


class SignInRedirect(requests.HTTPError):
    """A redirect Jenkins does not make: a sign-in page of a proxy that authenticates in front
    of Jenkins (oauth2-proxy's nginx integration answers 302 /oauth2/sign_in?rd=... when our
    credential, JENKINS_API_EXTRA_HEADERS, is refused)."""


def _moved(response: requests.Response, source: SplitResult, target: SplitResult) -> bool:
    """Whether a redirect to the same page of the same host (`target`, from `source`) sends
    the request on unchanged: a proxy moving plain http to https (ingress-nginx's
    ssl-redirect answers 308) or adding a slash. Never from https to http (our credentials
    would travel in the clear); never a POST that requests would send on as a GET (a 301,
    302 or 303: Session.rebuild_method): Jenkins would not get the call."""
    return not (source.scheme == "https" and target.scheme != "https") \
        and (response.status_code in (307, 308)
             or response.request.method in ("GET", "HEAD"))


def _session_of(response: requests.Response) -> tuple[bool, str | None]:
    """What an answer says of Jenkins' session: (False, None) nothing (not an API page, which
    alone carries the header); an API page answered 200, its header ("" when it has none: a
    proxy that strips it); an answer of 5xx (Jenkins' 503 while it loads, a proxy's 502 while
    it is away), None: the session seen before may be gone."""
    if response.status_code >= 500:
        return True, None
    if response.status_code == 200 and "/api/" in urlsplit(response.url or "").path:
        return True, str(response.headers.get(SESSION_HEADER) or "")
    return False, None


def _not_jenkins_page(response: requests.Response) -> bool:
    """Whether `response` is a 200 HTML page to a call Jenkins never answers so
    (NotJenkinsPage)."""
    if response.status_code != 200:
        return False
    kind = str(response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind not in ("text/html", "application/xhtml+xml"):
        return False
    path = urlsplit(response.url or "").path
    return response.request.method == "POST" or path.endswith(("/api/json", ".jnlp"))


def redirect_target(err: BaseException) -> str:
    """Where a SignInRedirect pointed, without its query (which may carry a token)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, SignInRedirect):
            return str(seen.args[0]) if seen.args else ""
        seen = seen.__cause__ or seen.__context__
    return ""


class Client(jenkins.Jenkins):
    """python-jenkins' client; a call Jenkins answers with a redirect is answered with the
    redirect itself (python-jenkins follows every one, as requests does by default).

    The environment's settings of a request (proxies and no_proxy, the CA bundle: requests'
    ``merge_environment_settings``) are read once per scheme, host and stream mode: requests
    reads them from the whole of ``os.environ`` on every request, about a sixth of a
    worker's CPU in Jenkins calls in a burst (bench/provision.py; a pod's environment holds
    a variable or two for every Service of its namespace). A client is one thread's
    (JenkinsAdapter), and a process does not change its environment while it runs."""

    def __init__(self, *args: Any, seen: Callable[[str | None], None] | None = None,
                 **kwargs: Any) -> None:
        logs.hide_extra_header_values()  # python-jenkins' __init__ logs them, values and all
        super().__init__(*args, **kwargs)
        # Told Jenkins' session as each answer shows it (_saw): what every API page carries
        # comes with the calls made anyway, no request of its own
        self._seen = seen
        self._environment: dict[tuple[str, str, bool | None], dict[str, Any]] = {}
        # whether our calls carry a user and API token (Authorization), see _followed
        self._credentials = bool(kwargs.get("username") or kwargs.get("password"))
        # Jenkins words a queue item's reason (`why`, whose label the adoption reads:
        # workers.core.jenkins_queue) in the request's language, and in its JVM's (a
        # controller run with LANG=de_DE.UTF-8) when the request names none: Queue.Item
        # .getWhy through the LocaleProvider of WebAppMain, Functions.getCurrentLocale. The
        # Locale plugin's "ignore browser preference" overrides this (README).
        self._session.headers["Accept-Language"] = "en"

    def _request(self, req: requests.Request, stream: bool | None = None) -> requests.Response:
        """Redirects followed as requests.Session.send does (resolve_redirects), a hop at a
        time, each judged (_followed) before the next is asked: a sign-in page is never
        asked, so never sent our JENKINS_API_EXTRA_HEADERS credential (requests drops only
        Authorization on the way to another host: Session.rebuild_auth), the crumb, or a
        POST's body (307, 308). The call ends at Jenkins' own redirect, never at a proxy's
        move (that is not Jenkins' answer).

        The timeout is the whole call's, hops included: each hop is given what is left of
        it. requests gives each hop the full timeout (resolve_redirects sends every hop with
        the same one), so a call through MAX_REDIRECTS slow moves took six timeouts, past a
        job's RQ timeout or a reconcile pass's bound; past the deadline the call is a
        ReadTimeout, as one slow answer is.

        What the answer says of Jenkins' session (_session_of) is told to `seen`, and a
        connection that fails tells it the session is not known any more."""
        prepared = self._session.prepare_request(req)
        try:
            response = self._sent(prepared, stream)
        except requests.ConnectionError:
            self._saw(None)  # no answer: the session seen before may be gone
            raise
        says, session = _session_of(response)
        if says:
            self._saw(session)
        if _not_jenkins_page(response):
            raise NotJenkinsPage(f"HTTP {response.status_code} with an HTML page",
                                 response=response)
        return response

    def _saw(self, session: str | None) -> None:
        if self._seen is not None:
            self._seen(session)

    def _sent(self, prepared: requests.PreparedRequest,
              stream: bool | None) -> requests.Response:
        """The request sent, and each redirect judged and followed (_request)."""
        deadline = time.monotonic() + self.timeout \
            if isinstance(self.timeout, (int, float)) else None
        response = self._session.send(prepared, timeout=self.timeout, allow_redirects=False,
                                      **self._settings(prepared.url, stream))
        hops: list[requests.Response] = []
        while self._followed(response):
            hops.append(response)
            if len(hops) > MAX_REDIRECTS:
                raise requests.TooManyRedirects(f"Exceeded {MAX_REDIRECTS} redirects.",
                                                response=response)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                response.close()
                raise requests.ReadTimeout(f"no answer within {self.timeout}s over "
                                           f"{len(hops)} redirects", request=response.request)
            # the next hop's request as requests makes it (method, body, auth, cookies),
            # not sent by it: it would give the hop the full timeout
            hop = next(self._session.resolve_redirects(response, response.request,
                                                       yield_requests=True))
            response = self._session.send(hop, timeout=self.timeout if left is None else left,
                                          allow_redirects=False,
                                          **self._settings(hop.url, stream))
        if hops:
            response.history = hops
        return response

    def _followed(self, response: requests.Response) -> bool:
        """Whether the redirect `response` is to be followed: only a proxy's move of the same
        page (_moved). Jenkins' own (_JENKINS_REDIRECTS) is its answer, the call done: not
        followed, for the page it names is not needed (one GET less in every delete, offline
        and stop; the agents' page lists every node), and it may name Jenkins' internal
        address, where the GET went without Authorization (Session.rebuild_auth: a 403,
        reported as a permanent failure of a call that was done) and with our
        JENKINS_API_EXTRA_HEADERS credential and the crumb, over plain http too. One that
        is neither is a SignInRedirect: followed, a sign-in page answers 200
        with a form, which was taken for a node made, and for a build refused for good (no
        Location), while a credential Jenkins refuses (401) is retried. A move that would not
        reach Jenkins unchanged is refused the same way: the message names where it went."""
        location = response.headers.get("Location") if response.is_redirect else None
        if location is None:
            return False
        target = urlsplit(urljoin(response.url or "", location))
        source = urlsplit(response.url or "")
        if target.path.rstrip("/") == source.path.rstrip("/"):
            # the same page elsewhere is a proxy's move (Jenkins sends a call on to another
            # page): followed if the call goes on unchanged to the same host; if not, it
            # never reaches Jenkins (to another host, without Authorization: rebuild_auth),
            # yet, its path being Jenkins' own page's (computer/doCreateItem), it was taken
            # for Jenkins' answer: a node create 'made'
            # Not either when requests would send it on without our user and token: to
            # another port or scheme than http:80 -> https:443 (Session.should_strip_auth,
            # which rebuild_auth applies), Jenkins answered 403 (anonymous), a permanent
            # error for every call, where the move's address in JENKINS_URL works.
            if target.hostname == source.hostname and _moved(response, source, target) \
                    and not (self._credentials and self._session.should_strip_auth(
                        response.url or "", target.geturl())):
                return True
            raise SignInRedirect(f"{target.scheme}://{target.netloc}{target.path}",
                                 response=response)
        base = urlsplit(self.server)
        rest = target.path[len(base.path):] if target.path.startswith(base.path) else None
        if rest is not None and (rest.split("/", 1)[0] in _JENKINS_REDIRECTS or (
                not rest and (target.scheme, target.netloc) == (base.scheme, base.netloc))):
            return False
        raise SignInRedirect(f"{target.scheme}://{target.netloc}{target.path}",
                             response=response)

    def _settings(self, url: str | None, stream: bool | None) -> dict[str, Any]:
        parts = urlsplit(url or "")
        key = (parts.scheme, parts.netloc, stream)
        settings = self._environment.get(key)
        if settings is None:
            settings = self._environment[key] = self._session.merge_environment_settings(
                url, {}, stream, self._session.verify, None)
        return dict(settings)  # the caller's to change, as requests' own answer is

    def build_job(self, name: str, parameters: Any = None, token: str | None = None) -> int:
        """python-jenkins' build_job, the queue item's number read only off a queue item's
        Location. Its own read the last segment of any Location: the redirect to the job's
        page of a vetoed trigger gave a ValueError, or, for a job named by a number ("2024",
        "team/42"), that number, taken for a queue item that is not the build's."""
        response = self.jenkins_request(requests.Request(
            "POST", self.build_job_url(name, parameters, token)))
        location = response.headers.get("Location")
        if location is None:
            raise jenkins.EmptyResponseException(
                f"Header 'Location' not found in response from server[{self.server}]")
        path = urlsplit(urljoin(response.url or self.server, location)).path
        found = _QUEUE_ITEM.search(path)
        if found is None:
            raise NothingQueued(path)
        return int(found.group(1))
