"""The real Jenkins adapter: the ``Jenkins`` port of ``workers.core.ports`` over python-jenkins.

Every call goes through python-jenkins' own request machinery, so basic auth (user + API token)
and the CSRF crumb apply. Library errors become the project's own, chained with ``from``:
connection errors, timeouts, 429 and 5xx are ``RetryableError``; other 4xx are
``PermanentError``. Messages name the operation and the HTTP status only, never a response
body, so the API token and agent secrets cannot leak through them.

python-jenkins hides the status in different places: 404 is ``NotFoundException``; 401, 403
and 500 are a plain ``JenkinsException`` raised while handling the ``requests.HTTPError``
(so the status is on ``__context__``); any other 4xx/5xx is the raw ``HTTPError``; and
``get_node_info``/``node_exists`` turn every one of these into "does not exist". Hence the
existence checks here are our own GETs, and the status is read from the exception chain.
"""

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import jenkins
import requests

from workers.core.errors import PermanentError, RetryableError

NODE_DESCRIPTION = "ci-autoscaler agent"


def _status(err: BaseException) -> int | None:
    """The HTTP status behind a python-jenkins or requests error, if there was an answer."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, jenkins.NotFoundException):
            return 404
        response = getattr(seen, "response", None)
        if isinstance(seen, requests.RequestException) and response is not None:
            return response.status_code
        seen = seen.__cause__ or seen.__context__
    return None


def _body(err: BaseException) -> str:
    """The body of the HTTP answer behind an error (for matching only, never for messages)."""
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(seen, requests.RequestException) and response is not None:
            return response.text
        seen = seen.__cause__ or seen.__context__
    return ""


class JenkinsAdapter:
    """``workers.core.ports.Jenkins`` against a real Jenkins controller."""

    def __init__(self, *, url: str, user: str, token: str, timeout: float = 10) -> None:
        self._server = jenkins.Jenkins(url, username=user, password=token, timeout=timeout)

    def ensure_node(self, name: str, *, label: str, remote_fs: str) -> bool:
        with self._translated(f"create node {name!r}"):
            if self._node_exists(name):
                return False
            try:
                self._server.create_node(
                    name, numExecutors=1, nodeDescription=NODE_DESCRIPTION, remoteFS=remote_fs,
                    labels=label, exclusive=True, launcher=jenkins.LAUNCHER_JNLP,
                    launcher_params={})  # fresh dict: the library's default is shared and mutated
            except (jenkins.JenkinsException, requests.HTTPError) as err:
                # Created concurrently: the library's own pre-check, or Jenkins' 400 answer.
                if "already exists" in str(err) or "already exists" in _body(err):
                    return False
                raise
        return True

    def agent_secret(self, name: str) -> str:
        url = self._url(f"computer/{quote(name, safe='')}/jenkins-agent.jnlp")
        with self._translated(f"read the agent secret of node {name!r}"):
            body = self._server.jenkins_open(requests.Request("GET", url))
        try:  # the secret is the first <argument> of <application-desc>
            secret = ET.fromstring(body).findtext("./application-desc/argument", "").strip()
        except ET.ParseError as err:
            raise PermanentError(f"Jenkins served no JNLP file for node {name!r}") from err
        if not secret:
            raise PermanentError(f"the JNLP file of node {name!r} holds no secret")
        return secret

    def trigger_build(self, job: str, parameters: dict[str, str]) -> int:
        with self._translated(f"trigger job {job!r}"):
            return self._server.build_job(job, dict(parameters))

    def delete_node(self, name: str) -> bool:
        try:
            with self._translated(f"delete node {name!r}"):
                if not self._node_exists(name):
                    return False
                self._server.delete_node(name)
        except PermanentError as err:
            if _status(err) == 404:  # deleted by someone else between the check and the POST
                return False
            raise
        return True

    def _url(self, path: str) -> str:
        return self._server.server + path  # python-jenkins keeps the base URL with a final "/"

    def _node_exists(self, name: str) -> bool:
        url = self._url(f"computer/{quote(name, safe='')}/api/json?tree=displayName")
        try:
            self._server.jenkins_request(requests.Request("GET", url))
        except jenkins.NotFoundException:
            return False
        return True

    @contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except (jenkins.JenkinsException, requests.RequestException) as err:
            status = _status(err)
            if status == 403 and "crumb" in _body(err).lower():
                # python-jenkins caches the crumb forever; drop it so the next call fetches anew.
                self._server.crumb = None
                raise RetryableError(f"Jenkins refused the CSRF crumb to {what}") from err
            if status is None:
                if isinstance(err, jenkins.EmptyResponseException):
                    raise PermanentError(f"Jenkins gave an unusable answer to {what}") from err
                # No answer (connection, timeout) or a failed library post-check: state unknown.
                raise RetryableError(f"could not {what} in Jenkins: "
                                     f"{type(err).__name__}") from err
            if status == 429 or status >= 500:
                raise RetryableError(f"Jenkins answered HTTP {status} to {what}") from err
            raise PermanentError(f"Jenkins answered HTTP {status} to {what}") from err
