"""The real Jenkins adapter: the ``Jenkins`` port of ``workers.core.ports`` over python-jenkins.

Every call goes through python-jenkins' own request machinery, so basic auth (user + API token)
and the CSRF crumb apply. Library errors become the project's own, chained with ``from``:
connection errors, timeouts, 429 and 5xx are ``RetryableError`` (no connection and 503 the
subclass ``Unavailable``: Jenkins down or restarting; a read timeout and 429 the subclass
``Overloaded``: a slow Jenkins, not an absent one); 401 (our user or API token refused) is
``Unauthorized``, retryable: a token being rotated or revoked is the installation's fault, not
the build's; other 4xx are ``PermanentError``. A redirect Jenkins does not make (a sign-in
page of a proxy before it: ``SignInRedirect``) and a proxy's redirect loop are
``Unauthorized`` too, and so is an answer that is not Jenkins' in place of its own: an HTML page
answered 200 (``NotJenkinsPage``: a front's sign-in form at the URL asked), or, to a call whose
refusal fails a build (its trigger and the reads of Jenkins' root and the job before it, its
agent's node and secret), a 403 naming no permission (oauth2-proxy's sign-in page; Jenkins' own
403s name the permission, or the crumb, but for a job our user may only discover).
Messages name the operation and the HTTP status only, never a response body, so the API token
and agent secrets cannot leak through them. The exception: a build
request Jenkins refuses for good (409 "<job> is not buildable!", 500 "This build is not
parameterized!") is a ``PermanentError`` carrying that message, matched in Jenkins' error text
(or, when its error page hides it, confirmed by reading the job), never the body itself.

python-jenkins hides the status in different places: 404 is ``NotFoundException``; 401, 403
and 500 are a plain ``JenkinsException`` raised while handling the ``requests.HTTPError``
(so the status is on ``__context__``); any other 4xx/5xx is the raw ``HTTPError``; and
``get_node_info``/``node_exists`` turn every one of these into "does not exist". Hence the
existence checks here are our own GETs, and the status is read from the exception chain.
"""

import json
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import jenkins
import requests

from workers.adapters.jenkins_client import MAX_REDIRECTS, SESSION_HEADER, Client, \
    NotJenkinsPage, NothingQueued, SignInRedirect, redirect_target
from workers.adapters.jenkins_permissions import as_anonymous, discover_only, \
    jenkins_wide, missing_permission
from workers.adapters.retry import DEFAULT_BACKOFF, Backoff, retry_after_seconds, retrying
from workers.core import label_probe
from workers.core.errors import ConfigError, NotOurs, NotReadBack, Overloaded, \
    PermanentError, PermissionMissing, RetryableError, Unauthorized, Unavailable
from workers.core.jenkins_jobs import NOT_PARAMETERIZED, JobDefinition
from workers.core.jenkins_queue import job_of_url, run_of, run_of_url, same_job
from workers.core.ports import AgentActivity, BuildState, QueueItem, RunInfo, RunRef
from workers.core.routing import AGENT_PARAMETER

T = TypeVar("T")
log = logging.getLogger("ci_autoscaler.jenkins")

# What our Jenkins nodes carry as their description: how list_agents knows ours. The plain
# text is what every version wrote before installations had an identity, and what one without
# an identity still writes (node_description).
NODE_DESCRIPTION = "ci-autoscaler agent"
# How a job's runs are read (_runs), newest first, in pages of RUNS_PAGE: the first from
# `builds`, the newest 100 runs (Job.getNewBuilds: getBuilds().limit(100)), whatever range is
# asked, so a busy job's run of ours falls off it; the next ones from `allBuilds` (Job
# .getBuilds, visibility -2: only when a tree names it) with a Stapler range {M,N}, runs M to
# N-1. That costs Jenkins more: Range.apply(List) asks the RunList its size(), which iterates
# (and loads) every run the job keeps; `builds` iterates 100 at most. So only a busy job's
# lookup, its run not among the newest 100, pays it.
RUNS_PAGE = 100
# The pages read at most: 1 without a bound in time (`since`), RUNS_MAX_PAGES with one (runs
# newer than the build's trigger are read until an older one shows, or this many pages).
RUNS_MAX_PAGES = 10
# Jenkins' clock against ours: a run is taken for older than our trigger only when its
# timestamp is this much before it (Run's timestamp is Jenkins' clock).
CLOCK_SKEW_SECONDS = 300.0
# The built-in node's computer in computer/api/json: listed always, and no agent.
BUILT_IN_COMPUTER = "hudson.model.Hudson$MasterComputer"
# the offlineCause of a computer whose agent connected and lost its channel (_channel_lost_at)
CHANNEL_TERMINATION = "hudson.slaves.OfflineCause$ChannelTermination"
# A Pipeline node block's executable on an agent's executor (workflow-durable-task-step
# ExecutorStepExecution.PlaceholderTask.PlaceholderExecutable): its _class ends so
PLACEHOLDER_EXECUTABLE = "$PlaceholderExecutable"
# CrumbFilter's refusal of a POST without a valid crumb: sendError(403, "No valid crumb was
# included in the request") (jenkins core hudson/security/csrf/CrumbFilter.java), matched on
# these words, never on "crumb" alone: every Jenkins page drawn with l:layout (its 403
# access-denied page too) carries the crumb in its <head>.
_CRUMB_REFUSED = "no valid crumb"
# The label probe's remote directory: Jenkins requires one; no agent ever uses it.
PROBE_REMOTE_FS = "/nonexistent/ci-autoscaler-label-probe"
# What job_definition reads: the job's full name as Jenkins has it (a request names it in any
# case), whether it can be built, and its parameters' names.
JOB_TREE = "fullName,buildable,property[parameterDefinitions[name,type]]"
# Stapler's HttpResponses.error(409, IOException): a stack trace whose first line is
# "java.io.IOException: <full name> is not buildable!" (ParameterizedJobMixIn).
_NOT_BUILDABLE = re.compile(r"[\w.$]+: (.{1,300} is not buildable!?)")
# Jenkins' own error page for an exception (oops.jelly): it shows the exception only with
# SHOW_STACK_TRACE, but always a logging ID; a proxy's or Jetty's 500 has none.
_JENKINS_ERROR_PAGE = "Logging ID="


def node_description(installation: str) -> str:
    """The description of the Jenkins nodes this installation registers."""
    return f"{NODE_DESCRIPTION} of installation {installation}" if installation \
        else NODE_DESCRIPTION


def _no_quiet_period(parameters: dict[str, str]) -> dict[str, str]:
    """The request's query: the build's parameters and `delay=0sec`. Without `delay`, Jenkins
    holds the item for the job's quiet period (Jenkins' global one, 5 s by default:
    ParameterizedJobMixIn.doBuildWithParameters), so a build on an agent already online
    (a warm one) started 5 s late. `delay` is no build parameter (a job declaring one of that
    name, left unset by the route, would get "0sec")."""
    return {**parameters, "delay": "0sec"} if "delay" not in parameters else dict(parameters)


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


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    """Whether `err`, or an error it was raised from, is a `kind`."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unreachable(err: BaseException) -> bool:
    """Whether an error without an answer had no connection behind it (requests'
    ConnectionError: refused, reset, or a connect timeout), not a read timeout."""
    return _caused_by(err, requests.ConnectionError)


def _timed_out(err: BaseException) -> bool:
    """A call Jenkins took but did not answer in time (requests' ReadTimeout; a connect
    timeout is a ConnectionError too, so _unreachable has it first)."""
    return _caused_by(err, requests.Timeout)


def _response(err: BaseException) -> requests.Response | None:
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(seen, requests.RequestException) and response is not None:
            return response
        seen = seen.__cause__ or seen.__context__
    return None


def _channel_lost_at(cause: Any) -> float | None:
    """When the computer's channel closed under its agent (Unix time), from its exported
    offlineCause (Computer.getOfflineCause): only SlaveComputer's channel listener makes an
    OfflineCause.ChannelTermination, on a close with a cause (the agent process gone, also
    in setChannel's handshake, before the computer came online), and setChannel clears it
    once an agent is connected (jenkinsci/jenkins, hudson/slaves/SlaveComputer.java). A
    never connected inbound agent has no cause (or LaunchFailed); one taken offline by hand
    shows a UserCause over it (since core 2.482 the node's temporary cause, which
    getOfflineCause returns first; the ChannelTermination shows again once it is brought
    back). Its timestamp (OfflineCause.getTimestamp, exported) is in ms."""
    if not isinstance(cause, dict) or cause.get("_class") != CHANNEL_TERMINATION:
        return None
    try:
        return int(cause["timestamp"]) / 1000
    except (KeyError, TypeError, ValueError):
        return None


def _job_path(job: str) -> str:
    """ "folder/name" -> "job/folder/job/name/" """
    return "".join(f"job/{quote(part, safe='')}/" for part in job.split("/") if part)


def _parameters(actions: list[Any] | None) -> dict[str, str]:
    """The build parameters from a queue item's or a build's actions (their trees name
    `parameters[name,value,label]`): a StringParameterValue exports its `value`; the NodeLabel
    Parameter plugin's LabelParameterValue (and NodeParameterValue, its subclass), a freestyle
    job's CI_AUTOSCALER_AGENT (workers.core.jenkins_jobs.LABEL_FROM_JOB), its `label` only
    (`@Exported(visibility = 3) private String label`)."""
    found: dict[str, str] = {}
    for action in actions or []:
        for parameter in (action or {}).get("parameters") or []:
            if isinstance(parameter, dict) and "name" in parameter:
                value = parameter["value"] if "value" in parameter \
                    else parameter.get("label", "")
                found[str(parameter["name"])] = str(value)
    return found


def _causes(actions: list[Any] | None) -> tuple[tuple[str, str], ...]:
    """(class, userId) of each cause in a queue item's or a run's CauseAction."""
    return tuple((str(cause.get("_class") or ""), str(cause.get("userId") or ""))
                 for action in actions or [] for cause in (action or {}).get("causes") or []
                 if isinstance(cause, dict))


def _definition(job: str, page: dict[str, Any]) -> JobDefinition:
    """A job page read with JOB_TREE as a JobDefinition: parameters from its
    ParametersDefinitionProperty (None without one); `buildable` None for an item that has no
    such field (a folder)."""
    properties = [p for p in page.get("property") or []
                  if isinstance(p, dict) and "parameterDefinitions" in p]
    names = None if not properties else tuple(
        str(d["name"]) for p in properties for d in p.get("parameterDefinitions") or []
        if isinstance(d, dict) and d.get("name"))
    buildable = page.get("buildable")
    full_name = page.get("fullName")  # AbstractItem.getFullName, @Exported
    # ParameterDefinition.getType, @Exported: the definition class's simple name
    agent_type = next((str(d.get("type") or "") for p in properties
                       for d in p.get("parameterDefinitions") or []
                       if isinstance(d, dict) and d.get("name") == AGENT_PARAMETER), "")
    # every JobProperty shows its _class under any tree (see LABEL_ASSIGNING_PROPERTIES)
    classes = tuple(str(p["_class"]) for p in page.get("property") or []
                    if isinstance(p, dict) and p.get("_class"))
    return JobDefinition(name=full_name if isinstance(full_name, str) and full_name else job,
                         kind=str(page.get("_class", "")),
                         buildable=None if buildable is None else bool(buildable),
                         parameters=names, agent_parameter_type=agent_type,
                         properties=classes)


def _body(err: BaseException) -> str:
    """The body of the HTTP answer behind an error (for matching only, never for messages)."""
    response = _response(err)
    return response.text if response is not None else ""


class JenkinsAdapter:
    """``workers.core.ports.Jenkins`` against a real Jenkins controller.

    Safe to share between threads: each thread talks through a python-jenkins client of its
    own (made on its first call), because a client keeps state no lock guards: the cached
    crumb (read, then indexed; another thread may drop it in between, see `_translated`), its
    requests Session (a crumb belongs to the web session whose cookie it came with), and the
    auth it resolves on its first call.

    `installation` (settings `installation`) names this installation among those that share
    the Jenkins: the nodes it registers carry it in their description, and only nodes with
    that description are listed as its agents or reused when they exist already."""

    def __init__(self, *, url: str, user: str, token: str, timeout: float = 10,
                 backoff: Backoff = DEFAULT_BACKOFF, installation: str = "") -> None:
        if token and not user:
            # Jenkins takes an API token only with its user's name (BasicHeaderProcessor
            # answers ":token" 401): refused here, by name, not at the first call
            raise ConfigError(["JENKINS_USER: required with JENKINS_API_TOKEN (the Jenkins "
                               "user the API token belongs to)"])
        # No user: no Authorization header at all. python-jenkins sends Basic auth for any
        # user and password not None, "" and "" too ("Basic Og=="), which Jenkins refuses
        # 401 on every URL, those anonymous may read included (jenkins.security
        # .BasicHeaderProcessor authenticates every Basic header), and which would replace
        # an Authorization of JENKINS_API_EXTRA_HEADERS (requests' auth is applied last).
        credentials = {"username": user, "password": token} if user else {}
        self._connect = lambda: Client(url, timeout=timeout, seen=self._saw, **credentials)
        self._local = threading.local()
        self._backoff = backoff
        # Jenkins' session as the last answer that told it showed it, and when (monotonic);
        # None after an answer that says it may be gone (jenkins_client._session_of)
        self._session: tuple[str, float] | None = None
        self._description = node_description(installation)
        self._probe_name = label_probe.probe_name(installation)
        self._probe_description = label_probe.probe_description(installation)

    @property
    def _server(self) -> jenkins.Jenkins:
        """This thread's client."""
        server = getattr(self._local, "server", None)
        if server is None:
            server = self._local.server = self._connect()
        return server

    def ensure_node(self, name: str, *, label: str, remote_fs: str) -> bool:
        return self._retried(f"create node {name!r}",
                             lambda: self._ensure_node(name, label=label, remote_fs=remote_fs))

    def _ensure_node(self, name: str, *, label: str, remote_fs: str) -> bool:
        """One POST, the form python-jenkins' create_node sends, without what that call adds
        around it: a GET before (does the node exist?), the GET of the nodes page Jenkins
        redirects to, and a GET after (does it exist now?). Jenkins' own answer says it all: a
        redirect when made, 400 "Agent called ... already exists" when it was there (an
        earlier attempt's). One round trip instead of four, in every provision; a node that
        was there is read once more, to reuse it only if it is ours (`_reusable`)."""
        if self._create_node(name, description=self._description, label=label,
                             remote_fs=remote_fs):
            return True
        self._reusable(name)
        return False

    def _create_node(self, name: str, *, description: str, label: str, remote_fs: str,
                     agent: bool = True) -> bool:
        """POST the node (an inbound agent, 1 executor, EXCLUSIVE: only what asks for its
        label runs on it); True if made, False if Jenkins has one of that name already.
        `agent`: a build's agent, whose refusal fails the build (not the label probe)."""
        form = {"nodeDescription": description, "numExecutors": 1, "remoteFS": remote_fs,
                "labelString": label, "mode": "EXCLUSIVE",
                "retentionStrategy": {"stapler-class": "hudson.slaves.RetentionStrategy$Always"},
                "nodeProperties": {"stapler-class-bag": "true"},
                "launcher": {"stapler-class": jenkins.LAUNCHER_JNLP}}
        request = requests.Request("POST", self._url(jenkins.CREATE_NODE), data={
            "name": name, "type": jenkins.NODE_TYPE, "json": json.dumps(form)})
        with self._translated(f"create node {name!r}", fails_a_build=agent):
            try:
                self._server.jenkins_open(request)
            except (jenkins.JenkinsException, requests.HTTPError) as err:
                if "already exists" in str(err) or "already exists" in _body(err):
                    return False
                # The same 400 worded in another language (the Locale plugin forcing one over
                # our Accept-Language: ComputerSet.doDoCreateItem's message is localised):
                # whether the node is there says it without words.
                if _status(err) == 400 and self._node(name) is not None:
                    return False
                if _status(err) == 404:
                    # Every Jenkins has computer/doCreateItem (ComputerSet): a 404 is an
                    # address that is not Jenkins' (one without its context path, --prefix,
                    # answers every path 404): the installation's to fix, the builds wait
                    raise Unauthorized(f"Jenkins' address answered HTTP 404 to create node "
                                       f"{name!r} (computer/doCreateItem, on every Jenkins):"
                                       " is JENKINS_URL Jenkins' own, with its context "
                                       "path?") from err
                raise
        return True

    # ---- the label probe (workers.core.label_probe) ---------------------------------------

    def jenkins_nodes(self) -> list[str]:
        """The names of Jenkins' nodes, the built-in one left out (Jenkins.getNodes(): the
        agents, ours or not, and the label probe): computer/api/json lists a computer for
        each, and the built-in node's (Hudson$MasterComputer, "Built-In Node", "master"
        before 2.307) always."""
        computers = self._get_json("list Jenkins' nodes",
                                   "computer/api/json?tree=computer[displayName]")
        return sorted(c["displayName"] for c in computers.get("computer") or []
                      if c.get("displayName") and c.get("_class") != BUILT_IN_COMPUTER)

    def ensure_label_probe(self) -> bool:
        """Register the label probe: label-less, EXCLUSIVE (so nothing runs on it), 1
        executor, an inbound launcher whose agent nobody ever starts (its secret is never
        read). True if made, False if a node of its name was there."""
        name = self._probe_name
        return self._retried(f"create node {name!r}", lambda: self._create_node(
            name, description=self._probe_description, label="", remote_fs=PROBE_REMOTE_FS,
            agent=False))

    def delete_label_probe(self) -> bool:
        """Delete the label probe if it is there and is ours (by its description): True if
        deleted."""
        name = self._probe_name
        return self._retried(f"delete node {name!r}", lambda: self._delete_node(
            name, lambda node: node.get("description") == self._probe_description))

    def _reusable(self, name: str) -> None:
        """A node that was there is reused only if this installation registered it: by its
        description, ours or the plain one of versions before identities (an agent of a
        build in flight while this installation was upgraded). Another's (another
        installation's, a node made by hand) is NotOurs: reusing it would take over its agent
        secret, and our release would delete it under its build."""
        node = self._get_json(f"read node {name!r}", f"computer/{quote(name, safe='')}"
                              "/api/json?tree=description", missing={})
        if not node:  # deleted since: the next attempt makes it
            raise RetryableError(f"Jenkins node {name!r} went while it was being created")
        if not self._ours(node):
            raise NotOurs(f"Jenkins node {name!r} exists and is not this installation's "
                          "(another description): not reused")

    def agent_secret(self, name: str) -> str:
        return self._retried(f"read the agent secret of node {name!r}",
                             lambda: self._agent_secret(name))

    def _agent_secret(self, name: str) -> str:
        url = self._url(f"computer/{quote(name, safe='')}/jenkins-agent.jnlp")
        with self._translated(f"read the agent secret of node {name!r}", fails_a_build=True):
            body = self._server.jenkins_open(requests.Request("GET", url))
        try:  # the secret is the first <argument> of <application-desc>
            secret = ET.fromstring(body).findtext("./application-desc/argument", "").strip()
        except ET.ParseError as err:
            raise PermanentError(f"Jenkins served no JNLP file for node {name!r}") from err
        if not secret:
            raise PermanentError(f"the JNLP file of node {name!r} holds no secret")
        return secret

    def trigger_build(self, job: str, parameters: dict[str, str],
                      find_by: tuple[str, str] | None = None, agent: str | None = None) -> int:
        """Safe to repeat while the build is queued: Jenkins folds a request with the same
        parameters into the queued item and answers with its id. A job Jenkins refuses for
        good (disabled, not parameterized) is a PermanentError with Jenkins' message.

        With `find_by` (a parameter and the build's own value of it), a retry after a failed
        attempt first looks for the build by that parameter, queued or started
        (find_queue_item): an answer lost on its way back (a proxy's 5xx, a timeout) may hide
        a build Jenkins took, and once an agent already online has started it, Jenkins no
        longer folds a second request into it but starts the build twice. `agent`: the
        build's agent, whose executor may have taken the build before its run is made
        (find_queue_item)."""
        attempts, since = 0, time.time()

        def trigger() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and find_by is not None and \
                    (found := self.find_queue_item(job, *find_by, since=since,
                                                   agent=agent)) is not None:
                return found
            try:
                with self._translated(f"trigger job {job!r}", fails_a_build=True):
                    return self._server.build_job(job, _no_quiet_period(parameters))
            except NothingQueued as err:
                if not unquote(err.path).endswith("/" + unquote(_job_path(job))):
                    # no answer Jenkins gives a trigger: a redirect our client took for
                    # Jenkins' own, yet not to this job's page
                    raise RetryableError(f"Jenkins answered the trigger of job {job!r} with a "
                                         f"redirect to {err.path}, not a queue item") from err
                # The redirect to the job's own page: Jenkins' answer when a plugin's
                # QueueDecisionHandler vetoed the build (ParametersDefinitionProperty
                # .buildWithParameters: no item, so sendRedirect(".")): nothing was queued.
                raise PermanentError(
                    f"Jenkins refused to start job {job!r}: it queued no build (a plugin's "
                    "QueueDecisionHandler vetoed it)") from err
            except (RetryableError, PermanentError) as err:
                refused = self._refusal(job, err)
                if refused is None:
                    raise
                raise PermanentError(f"Jenkins refused to start job {job!r}: {refused}") from err
        return self._retried(f"trigger job {job!r}", trigger)

    def job_definition(self, job: str) -> JobDefinition | None:
        # read before every trigger (workers.checks.jobs), its PermanentError failing the build
        page = self._get_json(f"read job {job!r}", f"{_job_path(job)}api/json?tree={JOB_TREE}",
                              missing={}, fails_a_build=True)
        return _definition(job, page) if page else None

    def _refusal(self, job: str, err: BaseException) -> str | None:
        """Jenkins' message when it refused to start `job` for good: 409 "… is not
        buildable!" (read from its error text), or 500 for a job without parameter definitions
        (the message is on the page only with SHOW_STACK_TRACE; otherwise the job is read)."""
        status, body = _status(err), _body(err)
        if status == 409:
            first = body.strip().splitlines()[0] if body.strip() else ""
            match = _NOT_BUILDABLE.fullmatch(first)
            return match.group(1) if match else None
        if status != 500:
            return None
        if NOT_PARAMETERIZED in body:
            return NOT_PARAMETERIZED
        if _JENKINS_ERROR_PAGE not in body:
            return None
        try:
            definition = self.job_definition(job)
        except (RetryableError, PermanentError):
            return None  # cannot tell: a 500 stays retryable
        return NOT_PARAMETERIZED if definition is not None and \
            definition.buildable and definition.parameters is None else None

    def delete_node(self, name: str) -> bool:
        """False too for a node that is not ours (`_ours`): it is never deleted, whichever
        path asks (a release, a stray pod's repair), so no build of another installation
        loses its agent under it."""
        return self._retried(f"delete node {name!r}", lambda: self._delete_node(name))

    def _ours(self, node: dict[str, Any]) -> bool:
        """Whether a node (its page, with its description) is this installation's: ours, or
        the plain description of versions before identities (ours from before an upgrade, or,
        without an identity, the description we write)."""
        return node.get("description") in (self._description, NODE_DESCRIPTION)

    def list_agents(self) -> list[str]:
        return self._agents_described(self._description)

    def legacy_agents(self) -> list[str]:
        """The nodes with the plain description of versions before installation identities,
        when this installation has one (without, they are in list_agents): some may be its
        own, from before its upgrade; the caller tells which by its build state."""
        if self._description == NODE_DESCRIPTION:
            return []
        return self._agents_described(NODE_DESCRIPTION)

    def _agents_described(self, description: str) -> list[str]:
        computers = self._get_json("list the agents",
                                   "computer/api/json?tree=computer[displayName,description]")
        return sorted(c["displayName"] for c in computers.get("computer") or []
                      if c.get("description") == description and c.get("displayName"))

    def queue_items(self) -> list[QueueItem]:
        queue = self._get_json("read the build queue", "queue/api/json?tree=items[id,why,"
                               "blocked,task[name,url],actions[parameters[name,value,label],"
                               "causes[_class,userId]]]")
        return [QueueItem(id=int(item["id"]), job=self._job_of(item.get("task") or {}),
                          why=item.get("why") or "", parameters=_parameters(item.get("actions")),
                          blocked=item.get("blocked") is True,
                          run=run_of_url((item.get("task") or {}).get("url") or ""),
                          causes=_causes(item.get("actions")))
                for item in queue.get("items") or [] if "id" in item]

    def session(self, max_age: float = 0.0) -> str:
        """Jenkins' session (Jenkins.SESSION_HASH), new on every start of the controller: the
        X-Jenkins-Session header hudson.model.Api sends with every API page (setHeaders); ""
        when the answer has none (a proxy that strips it). With `max_age`, what an answer of
        that many seconds ago or less showed serves (every API page this process read, on
        any thread, tells it: jenkins_client.Client), unless an answer since said it may be
        gone (no connection, a 5xx): a burst's triggers, and a reconcile pass's look after
        its calls, make no request of their own."""
        cached = self._session
        if cached is not None and time.monotonic() - cached[1] <= max_age:
            return cached[0]
        what = "read Jenkins' session"

        def get() -> str:
            with self._translated(what, fails_a_build=True):  # before a trigger; the root
                response = self._server.jenkins_request(
                    requests.Request("GET", self._url("api/json?tree=quietingDown")))
            return str(response.headers.get(SESSION_HEADER) or "")
        return self._retried(what, get)

    def _saw(self, session: str | None) -> None:
        """An answer showed Jenkins' session (None: an answer said it may be gone)."""
        self._session = None if session is None else (session, time.monotonic())  # one
        # assignment: safe between threads

    def quieting_down(self) -> bool:
        # Jenkins.isQuietingDown(), exported on the root object as `quietingDown`
        page = self._get_json("read whether Jenkins is quieting down",
                              "api/json?tree=quietingDown", fails_a_build=True)  # the root
        return page.get("quietingDown") is True

    def build_state(self, job: str, queue_item: int | None,
                    number: int | None = None,
                    since: float | None = None) -> tuple[BuildState, int | None]:
        if number is None and queue_item is not None:
            item = self._get_json(f"read queue item {queue_item}",
                                  f"queue/item/{queue_item}/api/json", missing={})
            if not item:
                # Jenkins keeps a left item about 5 minutes (REALITY.md): its run, if it
                # started, still names the item (Run.getQueueId) among the job's runs.
                number = self._run_of_item(job, int(queue_item), since)
                if number is None:
                    return BuildState.UNKNOWN, None
            elif not str(item.get("_class", "")).endswith("LeftItem"):
                return BuildState.QUEUED, None
            elif item.get("cancelled"):
                return BuildState.CANCELLED, None
            else:
                number = (item.get("executable") or {}).get("number")
                if number is None:  # left the queue, the build not numbered yet
                    return BuildState.RUNNING, None
                if (run := run_of(item.get("executable"))) is not None \
                        and run.job.lower() != job.lower():
                    # Its run is another job's: the job was renamed or moved while the item
                    # waited (the item holds the job itself, Queue.Item.task), and `job`'s
                    # run of that number, if `job` is a job made since under the old name,
                    # is not the build's (run_confirm.job_renamed follows the new name)
                    return BuildState.UNKNOWN, None
        if number is None:
            return BuildState.UNKNOWN, None
        build = self._get_json(f"read build {number} of job {job!r}",
                               f"{_job_path(job)}{int(number)}/api/json?tree=building,result",
                               missing={})
        if not build:
            return BuildState.UNKNOWN, int(number)
        if build.get("building") or build.get("result") is None:
            return BuildState.RUNNING, int(number)
        return BuildState.FINISHED, int(number)

    def _run_of_item(self, job: str, queue_item: int, since: float | None) -> int | None:
        """The number of the job's run (made since `since`, or among the newest RUNS_PAGE:
        `_runs`) that left the queue as that item, or None."""
        if not job:
            return None
        return next((int(b["number"]) for b in self._runs(job, "queueId", since)
                     if b.get("queueId") == queue_item and "number" in b), None)

    def _runs(self, job: str, fields: str, since: float | None = None,
              whole: bool = False) -> Iterator[dict[str, Any]]:
        """The job's runs with `fields` (and their number and timestamp), newest first, read
        lazily a page of RUNS_PAGE at a time (`builds`, then `allBuilds`: RUNS_PAGE). Without
        `since`, one page; with it (Unix time), pages on while the page's oldest run is newer
        than `since` (less the clock skew), at most RUNS_MAX_PAGES: a run made before the
        trigger is not the build's (Run's timestamp is set as an executor makes it, after its
        item left the queue). Runs a build discarder deleted are simply not listed. With
        `whole`, NotReadBack once the runs are read to their end without reaching back to
        `since` (none given and a full page, the page cap, a run without its timestamp): the
        build's run may be among those not read."""
        for page in range(RUNS_MAX_PAGES if since is not None else 1):
            low = page * RUNS_PAGE
            name = "builds" if page == 0 else "allBuilds"
            runs = self._get_json(
                f"read the builds of job {job!r}", f"{_job_path(job)}api/json?tree={name}"
                f"[number,timestamp,{fields}]{{{low},{low + RUNS_PAGE}}}",
                missing={}).get(name) or []
            yield from runs
            oldest = runs[-1].get("timestamp") if runs else None
            if len(runs) < RUNS_PAGE or since is not None and isinstance(oldest, int) \
                    and oldest / 1000 < since - CLOCK_SKEW_SECONDS:
                return  # every run the job has, or every one made since `since`
            if since is None or not isinstance(oldest, int):
                break
        if since is not None:
            log.warning("the runs of job %r read do not reach back to the build's trigger "
                        "(more than %d since, or one without its time): the older ones are "
                        "not read", job, RUNS_PAGE * RUNS_MAX_PAGES)
        if whole:
            raise NotReadBack(f"the runs of job {job!r} read do not reach back to the "
                              "build's trigger")

    def run_info(self, job: str, number: int) -> RunInfo | None:
        run = self._get_json(f"read build {number} of job {job!r}",
                             f"{_job_path(job)}{int(number)}/api/json?tree=building,result,"
                             "builtOn,queueId,url,actions[parameters[name,value,label],"
                             "causes[_class,userId]]", missing={})
        if not run:
            return None
        result, built_on, queue_id = run.get("result"), run.get("builtOn"), run.get("queueId")
        return RunInfo(finished=not run.get("building") and result is not None,
                       parameters=_parameters(run.get("actions")),
                       result=str(result) if result is not None else None,
                       # AbstractBuild's (a freestyle run's); a WorkflowRun has none
                       built_on=str(built_on) if built_on is not None else None,
                       queue_id=int(queue_id) if isinstance(queue_id, int) else None,
                       url=url if isinstance(url := run.get("url"), str)
                       and url.startswith(("http://", "https://")) else None,
                       causes=_causes(run.get("actions")))

    def find_queue_item(self, job: str, parameter: str, value: str,
                        queue: list[QueueItem] | None = None,
                        known: int | None = None, since: float | None = None,
                        agent: str | None = None, whole: bool = False) -> int | None:
        """The id of the item of `job` (in any case, as Jenkins finds it: same_job) whose
        `parameter` is `value`: queued (`queue`, or the queue
        read now), or started (among the job's runs, by Run.getQueueId: those made since
        `since`, the build's first trigger attempt, up to RUNS_PAGE * RUNS_MAX_PAGES;
        without it the newest RUNS_PAGE: `_runs`; `whole`: NotReadBack when not found among
        runs that do not reach back to `since`); else `known`,
        the id the build recorded, if that item's own page (queue/item/ID) carries the value.
        An executor that has taken an item has made it a LeftItem, gone from the queue, and
        makes its Run only after that (Executor.run, after Queue.onStartExecuting): neither
        list has it then, and only its page does (kept about 5 minutes). Its parameters are
        read, not its id trusted: a controller killed before it saved its queue gives that id
        to another item (workers.engine.lost_triggers)."""
        for item in self.queue_items() if queue is None else queue:
            if same_job(item.job, job) and item.parameters.get(parameter) == value:
                return item.id
        for build in self._runs(job, "queueId,actions[parameters[name,value,label]]", since,
                                whole):
            if _parameters(build.get("actions")).get(parameter) == value and "queueId" in build:
                return int(build["queueId"])
        if known is not None:
            page = self.queue_item(known)
            if page is not None and same_job(page.job, job) \
                    and page.parameters.get(parameter) == value:
                return int(known)
        if agent is not None:
            self._not_being_started(agent)
        return None

    def queue_item(self, queue_item: int) -> QueueItem | None:
        """The item's own page (queue/item/ID), waiting or left (kept about 5 minutes:
        REALITY.md "The queue"). Its job is its task's URL, the job itself (Queue.Item.task),
        so a job renamed or moved since the item was queued (AbstractItem.renameTo,
        Items.move) is named as Jenkins has it now."""
        page = self._get_json(f"read queue item {int(queue_item)}",
                              f"queue/item/{int(queue_item)}/api/json?tree=id,task[url],"
                              "actions[parameters[name,value,label]]", missing={})
        if not page:
            return None
        return QueueItem(id=int(queue_item), job=self._job_of(page.get("task") or {}),
                         parameters=_parameters(page.get("actions")))

    def _not_being_started(self, agent: str) -> None:
        """Raise RetryableError while the build's agent has an executor busy with no run
        Jenkins names: an executor took an item (Queue.onStartExecuting made it a LeftItem,
        gone from the queue) and Executor.run has not made its Run yet (in no job's runs).
        Without an id (a trigger whose answer was lost) nothing else finds that build, and
        a trigger now starts it twice. Our agent's node is EXCLUSIVE on its build's own
        label, so what it takes is that build: looked for again a moment later, its run is
        there."""
        activity = self.agent_activity(agent)
        if activity is not None and activity.hidden_runs:
            raise RetryableError(f"agent {agent!r} has taken a build whose run Jenkins has not "
                                 "made yet: looked for again before any trigger")

    def cancel_queue_item(self, queue_item: int) -> None:
        """python-jenkins' cancel_queue (POST queue/cancelItem?id=N), which swallows the 404
        for an id Jenkins does not know. Jenkins answers 500 "Could not cancel run" for an
        item that already left the queue (Queue.doCancelItem: a LeftItem cannot be
        cancelled): that is no failure, the item no longer waits."""
        what = f"cancel queue item {queue_item}"

        def cancel() -> None:
            try:
                with self._translated(what):
                    self._server.cancel_queue(int(queue_item))
            except RetryableError as err:
                if _status(err) != 500:
                    raise
                item = self._get_json(f"read queue item {queue_item}",
                                      f"queue/item/{int(queue_item)}/api/json", missing={})
                if not str(item.get("_class", "")).endswith("LeftItem"):
                    raise
        self._retried(what, cancel)

    def abort_build(self, job: str, number: int) -> None:
        """python-jenkins' stop_build (POST job/.../N/stop; Jenkins answers a redirect to the
        build's page, the call's end: jenkins_client.Client._followed); a 404 (no such build) is no
        failure."""
        what = f"abort build {number} of job {job!r}"

        def stop() -> None:
            try:
                with self._translated(what):
                    self._server.stop_build(job, int(number))
            except PermanentError as err:
                if _status(err) != 404:
                    raise
        self._retried(what, stop)

    def online_agents(self) -> set[str]:
        computers = self._get_json("read which agents are online",
                                   "computer/api/json?tree=computer[displayName,offline]")
        return {c["displayName"] for c in computers.get("computer") or []
                if c.get("displayName") and c.get("offline") is False
                and c.get("_class") != BUILT_IN_COMPUTER}  # the controller's, no agent

    def runs_carrying(self, parameter: str, value: str) -> list[RunRef]:
        """The runs on one-off executors whose `parameter` is `value` (one_off_runs)."""
        return self.one_off_runs(parameter).get(value, [])

    def one_off_runs(self, parameter: str) -> dict[str, list[RunRef]]:
        """One GET of the computers' one-off executors: a WorkflowRun is a Queue.FlyweightTask,
        run by a OneOffExecutor (on the built-in node's computer, kept for this with no
        executors: Queue.makeFlyWeightTaskBuildable, AbstractCIBase.updateComputerList) for
        as long as the run goes on, in an `input` before any node block too; each exports
        its currentExecutable, the run, whose actions carry its parameters. A run of a job
        the API user may not READ shows none (Executor.getCurrentExecutableForApi). The runs
        by the value of their `parameter` (those without it left out)."""
        computers = self._get_json(
            "read the runs on one-off executors", "computer/api/json?tree=computer["
            "oneOffExecutors[currentExecutable[number,url,actions["
            "parameters[name,value,label]]]]]")
        found: dict[str, list[RunRef]] = {}
        for computer in computers.get("computer") or []:
            for executor in (computer or {}).get("oneOffExecutors") or []:
                executable = (executor or {}).get("currentExecutable")
                if (run := run_of(executable)) is None:
                    continue
                value = _parameters(executable.get("actions")).get(parameter)
                if value is not None:
                    found.setdefault(value, []).append(run)
        return found

    # ---- adopted agents: what one runs, and taking it offline ----------------------------

    def agent_activity(self, name: str) -> AgentActivity | None:
        data = self._get_json(
            f"read agent {name!r}", f"computer/{quote(name, safe='')}/api/json?tree="
            f"{_ACTIVITY_TREE}", missing={})
        return _activity_of(data) if data else None

    def agents_activity(self) -> dict[str, AgentActivity]:
        """One GET of the computers' list (ComputerSet exports every Computer with the
        fields computer/NAME/api/json gives), by name (displayName: the node's name for an
        agent); the built-in node's left out."""
        computers = self._get_json("read what the agents run",
                                   f"computer/api/json?tree=computer[displayName,"
                                   f"{_ACTIVITY_TREE}]")
        return {str(c["displayName"]): _activity_of(c) for c in computers.get("computer") or []
                if c and c.get("displayName") and c.get("_class") != BUILT_IN_COMPUTER}

    def disable_agent(self, name: str, reason: str) -> bool:
        """True if it was online and is taken offline now (read first). Not by
        computer/NAME/toggleOffline, which flips the state (Computer.doToggleOffline): a person
        taking the agent offline between the read and the POST, or a retried POST whose first
        went through, had it brought back online. computer/NAME/changeOfflineCause sets it
        offline whatever it was (Computer.doChangeOfflineCause). Needs Agent/Disconnect."""
        what = f"take agent {name!r} offline"

        def disable() -> bool:
            with self._translated(what):
                try:
                    state = json.loads(self._server.jenkins_open(requests.Request(
                        "GET", self._url(f"computer/{quote(name, safe='')}/api/json"
                                         "?tree=temporarilyOffline"))))
                    if state.get("temporarilyOffline"):
                        return False
                    self._server.jenkins_open(requests.Request(
                        "POST", self._url(f"computer/{quote(name, safe='')}/changeOfflineCause"),
                        params={"offlineMessage": reason}))
                except jenkins.NotFoundException:  # deleted meanwhile: it takes no work either
                    return False
            return True
        return self._retried(what, disable)

    def enable_agent(self, name: str) -> bool:
        """computer/NAME/toggleOffline again, sent only after reading that the agent is
        temporarily offline (Computer.doToggleOffline flips the state; bringing it back
        needs Agent/Connect)."""
        what = f"bring agent {name!r} back online"

        def enable() -> bool:
            with self._translated(what):
                try:
                    state = json.loads(self._server.jenkins_open(requests.Request(
                        "GET", self._url(f"computer/{quote(name, safe='')}/api/json"
                                         "?tree=temporarilyOffline"))))
                    if not state.get("temporarilyOffline"):
                        return False
                    self._server.jenkins_open(requests.Request(
                        "POST", self._url(f"computer/{quote(name, safe='')}/toggleOffline")))
                except jenkins.NotFoundException:
                    return False
            return True
        return self._retried(what, enable)

    def _job_of(self, task: dict[str, Any]) -> str:
        """A queue item's job as "folder/name", from its task URL: Jenkins escapes each name
        in it (Util.rawEncode: "my build" is my%20build), and may serve under a path
        ("/jenkins/job/..."), so the names are read unescaped after each "job" segment."""
        return job_of_url(task.get("url") or "") or str(task.get("name", ""))

    def _get_json(self, what: str, path: str, *, missing: Any = None,
                  fails_a_build: bool = False) -> Any:
        """GET a JSON page, retried; `missing` (when not None) is the answer to a 404;
        `fails_a_build` as `_translated`'s."""
        def get() -> Any:
            with self._translated(what, fails_a_build=fails_a_build):
                try:
                    body = self._server.jenkins_open(requests.Request("GET", self._url(path)))
                except jenkins.NotFoundException:
                    if missing is None:
                        raise
                    return missing
            try:
                return json.loads(body) if isinstance(body, str) else body
            except ValueError as err:
                raise PermanentError(f"Jenkins served no JSON to {what}") from err
        return self._retried(what, get)

    def _retried(self, what: str, fn: Callable[[], T]) -> T:
        return retrying(what, fn, backoff=self._backoff)

    def _delete_node(self, name: str,
                     ours: Callable[[dict[str, Any]], bool] | None = None) -> bool:
        """Delete the node if it is there and `ours` says so (by default, one of our
        agents: `_ours`)."""
        ours = self._ours if ours is None else ours
        try:
            with self._translated(f"delete node {name!r}"):
                node = self._node(name)
                if node is None or not ours(node):
                    return False
                self._server.delete_node(name)
        except PermanentError as err:
            if _status(err) == 404:  # deleted by someone else between the check and the POST
                return False
            raise
        return True

    def _url(self, path: str) -> str:
        return self._server.server + path  # python-jenkins keeps the base URL with a final "/"

    def _node(self, name: str) -> dict[str, Any] | None:
        """The node's name and description, or None if Jenkins has no such node."""
        url = self._url(f"computer/{quote(name, safe='')}/api/json?tree=displayName,description")
        try:
            response = self._server.jenkins_request(requests.Request("GET", url))
        except jenkins.NotFoundException:
            return None
        try:
            return json.loads(response.text)
        except ValueError as err:
            raise PermanentError(f"Jenkins served no JSON to read node {name!r}") from err

    @contextmanager
    def _translated(self, what: str, *, fails_a_build: bool = False) -> Iterator[None]:
        """Library errors as the project's own (module docstring). `fails_a_build`: a call
        whose PermanentError fails the build for good (its trigger and the reads before it:
        Jenkins' root, the job; its agent's node and secret), where a 403 naming no
        permission is no refusal of Jenkins' (but for a job our user may only discover)."""
        try:
            yield
        except json.JSONDecodeError as err:
            # python-jenkins reads the CSRF crumb before a call with a bare json.loads
            # (maybe_add_crumb), and Jenkins serves crumbIssuer/api/json as JSON always: an
            # address that answers it with a page is not Jenkins' (a wrong JENKINS_URL, one
            # without Jenkins' context path). The installation's to fix: the builds wait.
            raise Unauthorized(f"Jenkins' address served no JSON to {what} where Jenkins "
                               "always does (its crumb, crumbIssuer/api/json): is JENKINS_URL "
                               "Jenkins' own, with its context path?") from err
        except (jenkins.JenkinsException, requests.RequestException) as err:
            status = _status(err)
            response = _response(err)
            lacking = missing_permission(response.headers) if status == 403 and \
                response is not None else None
            if lacking is not None and as_anonymous(response.headers):
                # No credentials reached Jenkins (none set, or a proxy before it drops
                # Authorization): the installation's to fix, as a 401 is; the builds wait
                raise Unauthorized(f"Jenkins answered HTTP 403 to {what} as anonymous (who "
                                   f"lacks the {lacking} permission): JENKINS_USER / "
                                   "JENKINS_API_TOKEN not set, or dropped on the way") from err
            if lacking is not None and fails_a_build and jenkins_wide(response.headers):
                # Agent/Create, Agent/Connect: every build is refused alike until an admin
                # grants it, a setting of the installation as a revoked token is. Failed for
                # good, every build pushed meanwhile had to be pushed again once it was
                # granted; now the builds wait (RQ's retries, then the reconcile pass's
                # restart of stalled builds), each refusal logged at error and counted
                # `unauthorized` (CIProvisioningFailing)
                raise Unauthorized(f"Jenkins answered HTTP 403 to {what}: the Jenkins user "
                                   f"lacks the {lacking} permission (Jenkins-wide: builds "
                                   "wait until it is granted)") from err
            if lacking is not None:  # Jenkins names it (AccessDeniedException3): say which
                # Before the crumb's test: Jenkins' access-denied page (Jenkins/accessDenied.
                # jelly) is an l:layout page, whose <head> carries data-crumb-header and
                # data-crumb-value (lib/layout/layout.jelly) on every Jenkins with CSRF
                # protection: "crumb" is in its body too.
                raise PermissionMissing(f"Jenkins answered HTTP 403 to {what}: the Jenkins user "
                                        f"lacks the {lacking} permission") from err
            if status == 403 and _CRUMB_REFUSED in _body(err).lower():
                # python-jenkins caches the crumb forever; drop it so the next call fetches anew.
                self._server.crumb = None
                raise RetryableError(f"Jenkins refused the CSRF crumb to {what}") from err
            if status == 403 and discover_only(_body(err)):
                # Jenkins' own 403 naming no permission: a job (or a folder above it) our user
                # may DISCOVER but not READ. That job's own setting, as Job/Build is: its build
                # fails, not left waiting as for a front's sign-in page (below)
                raise PermissionMissing(f"Jenkins answered HTTP 403 to {what}: the Jenkins user "
                                        "lacks the Job/Read permission (it may only discover "
                                        "the job)") from err
            if (status == 403 and fails_a_build) or _caused_by(err, NotJenkinsPage):
                # Not Jenkins' answer: its own 403s name the permission lacking (above) or
                # the crumb, and it never answers our calls 200 with HTML
                # (jenkins_client.NotJenkinsPage). A front before it answering with its
                # sign-in page at the URL asked (oauth2-proxy's 403 SignInPage; a forms-login
                # gateway's 200), or a firewall's 403: the installation's to fix, as a
                # sign-in redirect is. Failed for good before (a trigger's build, its pod
                # deleted), or taken for a node made. Only where a PermanentError fails a
                # build (`fails_a_build`): elsewhere a 403 stays one object's refusal (a
                # step's own error, which stops no other step of a reconcile pass).
                html = "html" in str((response.headers if response is not None else {})
                                     .get("Content-Type") or "").lower()
                why = ("a front before Jenkins refusing us? (Jenkins names the permission in "
                       "its own 403s)") if status == 403 else \
                    ("or no Jenkins there? (no JSON where Jenkins always serves it: is "
                     "JENKINS_URL Jenkins' own, with its context path?)")
                raise Unauthorized(f"Jenkins' address answered {what} with HTTP {status} with "
                                   f"{'an HTML page' if html else 'no permission named'}, "
                                   "not Jenkins' answer: a proxy's sign-in page? "
                                   f"(JENKINS_API_EXTRA_HEADERS not accepted), {why}") from err
            if status is None:
                if isinstance(err, jenkins.EmptyResponseException):
                    raise PermanentError(f"Jenkins gave an unusable answer to {what}") from err
                # No answer (connection, timeout) or a failed library post-check: state unknown.
                # Away only with no connection at all (refused, reset, connect timeout): one
                # taken but not answered in time is a slow Jenkins, to which agents connect.
                error = Unavailable if _unreachable(err) else \
                    Overloaded if _timed_out(err) else RetryableError
                raise error(f"could not {what} in Jenkins: {type(err).__name__}") from err
            if _caused_by(err, requests.TooManyRedirects):
                # A proxy's loop (its status, a 3xx, is no answer of Jenkins): the
                # installation's to fix, as a sign-in is; a permanent error failed the build.
                raise Unauthorized(f"Jenkins' address answered {what} with a redirect loop "
                                   f"(more than {MAX_REDIRECTS} redirects): a proxy's "
                                   "https redirect behind a load balancer ending TLS?") from err
            if _caused_by(err, SignInRedirect):
                # Not Jenkins' answer: a proxy before it wants a sign-in (our credential for it
                # expired or was rotated). Like a 401: the installation's to fix, retried; the
                # build is not at fault.
                raise Unauthorized(f"Jenkins' address answered {what} with a redirect to "
                                   f"{redirect_target(err)}, not a Jenkins page: a proxy's "
                                   "sign-in? (JENKINS_API_EXTRA_HEADERS not accepted)") from err
            if status == 401:
                # Basic auth Jenkins does not accept (jenkins.security.BasicHeaderProcessor:
                # "Invalid password/token for user: <name>"): a wrong or revoked API token.
                # Never the body, nor the token: only which settings to look at.
                raise Unauthorized(f"Jenkins answered HTTP 401 to {what}: JENKINS_USER / "
                                   "JENKINS_API_TOKEN not accepted") from err
            if status == 429 or status >= 500:
                response = _response(err)
                wait = retry_after_seconds(response.headers.get("Retry-After")) \
                    if response is not None else None
                # 503: Jenkins restarting (its loading page, hudson.util.HudsonIsLoading, for
                # every URL) or a proxy with no Jenkins behind it
                # 429: Jenkins (or a proxy before it) asks us to slow down
                error = Unavailable if status == 503 else Overloaded if status == 429 \
                    else RetryableError
                raise error(f"Jenkins answered HTTP {status} to {what}",
                            retry_after=wait) from err
            raise PermanentError(f"Jenkins answered HTTP {status} to {what}") from err


# What computer/NAME/api/json (and each computer of computer/api/json) is asked for: what the
# agent does now (AgentActivity)
_ACTIVITY_TREE = ("offline,temporarilyOffline,offlineCauseReason,offlineCause[timestamp],"
                  "executors[idle,currentExecutable[number,url]]")


def _activity_of(data: dict) -> AgentActivity:
    """An AgentActivity from a computer's JSON (_ACTIVITY_TREE)."""
    executors = [executor or {} for executor in data.get("executors") or []]
    runs = tuple(run for run in (run_of(executor.get("currentExecutable"))
                                 for executor in executors) if run)
    # Jenkins' tree API gives every object's _class: a node block's executable is
    # ExecutorStepExecution$PlaceholderTask$PlaceholderExecutable
    blocks = tuple(run for run, executor in ((run_of(e.get("currentExecutable")), e)
                                             for e in executors)
                   if run and str((executor.get("currentExecutable") or {}).get(
                       "_class", "")).endswith(PLACEHOLDER_EXECUTABLE))
    # An executor busy with a run of a job we may not READ shows no currentExecutable
    # (Executor.getCurrentExecutableForApi checks Item.READ) but `idle` false (Executor
    # .isIdle checks nothing): it is not idle for us either
    hidden = sum(1 for executor in executors if executor.get("idle") is False
                 and run_of(executor.get("currentExecutable")) is None)
    return AgentActivity(offline=bool(data.get("offline")),
                         temporarily_offline=bool(data.get("temporarilyOffline")), runs=runs,
                         blocks=blocks,
                         hidden_runs=hidden,
                         # Computer.getOfflineCauseReason: the offlineMessage alone
                         offline_reason=str(data.get("offlineCauseReason") or ""),
                         channel_lost_at=_channel_lost_at(data.get("offlineCause")))
