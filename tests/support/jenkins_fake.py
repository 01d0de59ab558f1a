"""A Jenkins controller for tests: the REST endpoints python-jenkins calls, over real HTTP.

A werkzeug server on 127.0.0.1 (free port, background thread) that answers with the bodies,
statuses and headers real Jenkins gives, and keeps state a test can read and seed:

- ``nodes``: name -> ``FakeNode`` (label, executors, mode, launcher, remote FS, JNLP secret);
- ``builds``: ``FakeBuild`` per queue item created by ``build``/``buildWithParameters``;
- ``node_blocks``: ``FakeNodeBlock`` per Pipeline ``node(label)`` block waiting or run;
- ``requests``: every request as ``RecordedRequest`` (method, path, query, form, headers);
- ``declared``: ``FakeJob`` per job (``add_job``; ``job(name)`` finds one), with its parameter
  definitions and whether it is disabled. Unless ``any_job`` is False, a job nobody declared
  exists too, declaring the parameters of the README's Jenkinsfile (``DEFAULT_JOB_PARAMETERS``),
  as the jobs ci-autoscaler is made for do; ``jobs = {"a", "b"}`` makes these the only jobs.

Like Jenkins it asks basic auth (user + API token; a wrong one answers 401, none 403 as for an
anonymous user without Overall/Read; with ``user=None`` anonymous may do all, yet any Basic
header, an empty one too, still answers 401: BasicHeaderProcessor), a valid crumb on every POST
(403 "No valid crumb was included in the request" otherwise): a crumb is valid only with the web
session it was issued in, the session cookie crumbIssuer/api/json set (``session_cookie``), as
Jenkins' since 2.176 (DefaultCrumbIssuer.issueCrumb hashes req.getSession().getId(); tests post
by hand with ``crumb_headers``), 400 with ``X-Error`` for an agent
that already exists, 302 after creating or deleting an agent, 201 +
``Location: <url>/queue/item/<n>/`` for a build. Like Jenkins' queue, triggering a job with
the same parameters as an item still in the queue answers that item again (items never leave
this queue: there are no executors).

Jobs behave as Jenkins core's (``ParameterizedJobMixIn.doBuildWithParameters``): a disabled
job answers 409 "<full name> is not buildable!", a job without parameter definitions 500 with
Jenkins' error page ("This build is not parameterized!" shows in it only with
``show_stack_trace``, as Jenkins' own SHOW_STACK_TRACE switch does), an unknown job 404; a
parameter the job does not declare is dropped without a word (SECURITY-170), and one it declares
but the request leaves out takes its default; a job a plugin's QueueDecisionHandler vetoes
(``FakeJob.vetoed``) is answered with a 302 to its own page and nothing is queued. ``job/NAME/api/json`` serves the job's
``property`` (``ParametersDefinitionProperty.parameterDefinitions``), ``buildable`` and
``disabled``, and honours ``tree`` as Jenkins' Exported API does.

An agent's computer is offline until the test says its agent connected (``connect_agent``),
as an inbound agent is until its process connects; one whose connection closed under it
(``disconnect_agent``, ``agent_process_ends``) exports the offlineCause Jenkins gives it,
OfflineCause$ChannelTermination with its time, until it connects again; taken offline by hand
meanwhile, it exports the person's cause instead, and the ChannelTermination again once
brought back (FakeNode.channel_lost_at). ``queue/cancelItem`` and ``job/.../N/stop``
answer as Jenkins does and are recorded in ``cancelled_items`` and ``stopped_builds``; a
cancelled item stays readable as a LeftItem with ``cancelled: true``. Jenkins keeps a left item
about 5 minutes only (REALITY.md "The queue"; Queue.LeftItem, kept in a cache of that lifetime):
``forget_left_items`` plays those minutes passing, after which the item's page and
``queue/cancelItem`` answer 404 as for an id Jenkins never had. A job's build discarder
(``add_job(num_to_keep=N)``) deletes its old runs as one ends (``_discard_old_runs``): their
pages answer 404, the job lists them no more, a left queue item still names them. As in
Jenkins, a job's ``builds`` are its 100 newest runs whatever the range asked
(Job.getNewBuilds); ``allBuilds`` (Job.getBuilds) lists them all, only when a ``tree`` names
it; a range ``{M,N}`` applies as Stapler's Range does; each run exports its ``timestamp``
(``FakeBuild.run_at``, set as it is numbered).

Agents and the queue (the section "Agents that connect, and the queue that hands them work"):
an agent is offline until the test connects it (``connect_agent``); ``dispatch`` plays
Jenkins' queue maintenance, handing each queued item to a node that may take it (its label,
online, not temporarily offline, an idle executor); ``/computer/NAME/toggleOffline`` takes a
node temporarily offline and back, ``changeOfflineCause`` takes it offline whatever it was; a
Pipeline's ``node(label)`` block waits as an item of its
own (``queue_node_block``, ``start_pipeline``, ``replay``), as
ExecutorStepExecution.PlaceholderTask does; a node deleted under a running block has that
block's body cancelled once ``removed_node_timeout`` plays the minutes Jenkins waits
(RemovedNodeListener), and a job's ``agent_retry_count`` runs it again in a new block as
``retry(conditions: [agent()])`` does, or the run ends ABORTED. While the fake has no node
at all, or for an item with no label (``label=""``), an item's `why` names no label, "Waiting for next
available executor", as Jenkins' does (``_waiting_why``); ``computer/api/json`` lists the
built-in node's computer first, as Jenkins always does.

A restart of the controller (the section "a controller restart"): ``go_down`` (connections
refused, agents disconnected), ``come_up`` (every URL 503 with Jenkins' loading page; the queue
restored with its ids, running freestyle builds lost as FAILURE, Pipelines resumed, crumbs
reset), ``finish_loading`` (serving again); ``restart`` does the three. ``go_down(hard=True)``
is a controller killed without its shutdown (SIGKILL, OOM): the queue comes back as Jenkins
last saved it (``save_queue``, Queue.Saver), the items queued since are lost (``lost_items``)
and their ids are given again. Every API page carries the ``X-Jenkins-Session`` of the process
(``session``), a new one on every start (none behind a proxy that strips it:
``session_header``). An outage that is no restart (``cut_off``, then ``reachable``): connections
refused while the controller runs on, its state, agents and session kept.

Timing: ``latency_seconds`` delays every answer (requests overlap, as on a real controller);
``slow_next`` and ``hold_next`` hold one request (for a time, or until the test lets it go);
``most_in_flight`` is the most requests answered at once.

A proxy that authenticates in front of Jenkins and no longer takes our credential
(``sign_in_redirects``) answers 302 to its sign-in page, a 200 HTML form. Behind a proxy that
passes on neither Host nor X-Forwarded-Proto, Jenkins' own redirects name its own address
(``redirect_base``), not the one the client asked.

Permissions the API user lacks (``missing_permissions``, e.g. {"Agent/Connect"}) are refused
403 as Jenkins' AccessDeniedException3 is, where the fake checks them: Agent/Create,
Agent/Connect (the JNLP file, bringing an agent back online), Agent/Disconnect and
Agent/Delete.

Limits: a freestyle job's build waits on CI_AUTOSCALER_AGENT's label whatever that
parameter's type (Jenkins puts it there only from a Label or Node parameter); a crumb is not
bound to the client's IP address (DefaultCrumbIssuer does so only with
``excludeClientIPFromCrumb`` off, before 2.186); nothing builds by itself (the test starts and
finishes builds); ``fail_next`` answers before auth; every parameter takes a string value;
``tree`` is applied to job pages, a computer's own page, the computers' list and the queue only.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.support import jenkins_locale
from tests.support.redis_server import HeldPort

JENKINS_VERSION = "2.462.3"
HOLD_LIMIT_SECONDS = 60  # a request held by `hold_next` is answered 504 if never released
CRUMB_FIELD = "Jenkins-Crumb"
NODE_TYPE = "hudson.slaves.DumbSlave$DescriptorImpl"
JNLP_LAUNCHER = "hudson.slaves.JNLPLauncher"
SIGN_IN_PATH = "/oauth2/sign_in"  # an authenticating proxy's login page (sign_in_redirects)
SIGN_IN_PAGE = ("<!DOCTYPE html><html><head><title>Sign In</title></head><body><form method="
                "\"GET\" action=\"/oauth2/start\"><button type=\"submit\">Sign in with OpenID "
                "Connect</button></form></body></html>")

_JNLP = """<jnlp codebase="{base}/computer/{name}/" spec="1.0+">
  <information>
    <title>Agent for {name}</title>
    <vendor>Jenkins project</vendor>
    <homepage href="https://jenkins-ci.org/"/>
  </information>
  <security>
    <all-permissions/>
  </security>
  <resources>
    <j2se version="1.8+" java-vm-args=""/>
    <jar href="{base}/jnlpJars/remoting.jar"/>
  </resources>
  <application-desc main-class="hudson.remoting.jnlp.Main">
    <argument>{secret}</argument>
    <argument>{name}</argument>
    <argument>-workDir</argument>
    <argument>{remote_fs}</argument>
    <argument>-internalDir</argument>
    <argument>remoting</argument>
    <argument>-url</argument>
    <argument>{base}/</argument>
  </application-desc>
</jnlp>"""


@dataclass
class FakeNode:
    name: str
    label: str = ""
    num_executors: int = 1
    mode: str = "NORMAL"  # Jenkins' Node.Mode: NORMAL or EXCLUSIVE
    remote_fs: str = "/home/jenkins/agent"
    launcher: str = JNLP_LAUNCHER  # the launcher's stapler-class
    description: str = ""
    type: str = NODE_TYPE
    secret: str = field(default_factory=lambda: secrets.token_hex(32))  # a jnlpMac: 64 hex
    # An inbound agent's computer is offline until its process connects (REALITY.md "Agent
    # state"; SlaveComputer.isOffline() is true while it has no channel): here until the test
    # says so (JenkinsFake.connect_agent).
    offline: bool = True
    # Computer.setTemporarilyOffline (toggleOffline): no new work; what runs goes on.
    temporarily_offline: bool = False
    offline_message: str = ""
    offline_since: float = 0.0  # when it was last taken temporarily offline (Unix time)
    running: Any = None  # what its one executor runs: a FakeBuild or a FakeNodeBlock
    # Which agent process holds the computer's channel (agent_connects), "" for one the test
    # connected without naming it (connect_agent), None while there is none.
    process: str | None = None
    # When its agent's channel closed under it (Unix time), None if it never did since the
    # computer was made or last connected: SlaveComputer.setChannel's channel listener, on
    # onClosed with a cause (any close but an orderly shutdown: the agent process killed, or
    # Jenkins' ping finding it gone), sets offlineCause = new OfflineCause.ChannelTermination
    # (its timestamp: OfflineCause.timestamp, made then); setChannel sets offlineCause = null
    # when an agent connects (jenkinsci/jenkins core/src/main/java/hudson/slaves/
    # SlaveComputer.java). A never connected inbound agent has none.
    channel_lost_at: float | None = None

    @property
    def exclusive(self) -> bool:
        return self.mode == "EXCLUSIVE"


_MADE = itertools.count()  # FakeBuild and FakeNodeBlock: which of two holding one id is newer


@dataclass
class FakeBuild:
    """A build requested through the API (or, with `label`, put in the queue by Jenkins itself:
    by hand, a timer). It stays queued until the test starts it."""

    job: str
    parameters: dict[str, str]
    queue_id: int
    # queued -> running -> finished, or queued -> cancelled, or queued -> unrun (taken by an
    # executor that made no run of it: its job disabled, JenkinsFake.dispatch)
    state: str = "queued"
    number: int | None = None
    result: str | None = None
    label: str | None = None  # the label it waits for, when not one of ours by parameter
    node: str | None = None  # the node whose executor took it (dispatch)
    queued_at: float = field(default_factory=time.time)  # when the request made it (Unix time)
    quiet_until: float = 0.0  # a WaitingItem until then (the quiet period), not buildable
    made: int = field(default_factory=lambda: next(_MADE))  # the order items were made in
    # Deleted by the job's build discarder (FakeJob.num_to_keep): its pages answer 404 and the
    # job lists it no more; a left queue item still names it (Queue.LeftItem holds the run).
    discarded: bool = False
    # The run's `timestamp` (Unix time; exported in ms): Run's constructor sets it to the
    # clock, and an executor constructs the Run once the item has left the queue (Executor.run,
    # Queue.Executable created after Queue.onStartExecuting): set as the build is numbered.
    run_at: float | None = None
    # A Pipeline run's node blocks that failed with an agent error (removed_node_timeout):
    # what its retry(count: N, conditions: [agent()]) has used of its N.
    agent_errors: int = 0
    # Who queued it: the user a request came from (buildWithParameters with our API user's
    # token), its item's CauseAction a Cause$UserIdCause naming them (ParameterizedJobMixIn.
    # getBuildCause: no build token, so `new Cause.UserIdCause()`); ANONYMOUS: a request
    # with no user (User.current() null: a UserIdCause of no userId); None: Jenkins itself
    # (a timer: TimerTrigger$TimerTriggerCause).
    started_by: str | None = None


@dataclass
class FakeNodeBlock:
    """A Pipeline run's ``node(label) { ... }`` block waiting in the queue as an item of its
    own (ExecutorStepExecution.PlaceholderTask), while the run itself goes on on the controller
    (a flyweight task: its own item left the queue at once)."""

    queue_id: int
    run: FakeBuild
    label: str
    state: str = "queued"  # queued -> running (on `node`) -> done, or queued -> cancelled
    node: str | None = None
    made: int = field(default_factory=lambda: next(_MADE))
    # When the node it runs on was deleted (JenkinsFake.removed_node_timeout), None if not.
    node_removed_at: float | None = None
    # A block that ran on a node before a restart (the node deleted before it, or there but
    # offline since: every agent reconnects after a restart), resumed waiting on that node's
    # own label: Jenkins gives up on it after TIMEOUT_WAITING_FOR_NODE unless the node takes
    # it (removed_node_timeout).
    resumed: bool = False
    # A resumed block's step label, the one its `node` step asked ("Initially set to
    # ExecutorStep#getLabel ...; later switched to actual self-label when block runs":
    # PlaceholderTask.label): the one its retry asks again (removed_node_timeout).
    step_label: str = ""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int
    remaining: int
    path_prefix: str | None
    headers: dict[str, str]
    body: str | None


# The parameters the README's Jenkinsfile declares (with the routes of
# examples/ci-autoscaler.yaml in mind): what a job no test declared otherwise takes.
DEFAULT_JOB_PARAMETERS: dict[str, str] = {
    "CI_AUTOSCALER_AGENT": "", "CI_AUTOSCALER_BUILD_KEY": "", "GIT_COMMIT": "",
    "GIT_BRANCH": "", "GIT_TAG": "", "GITLAB_PROJECT": "", "GITLAB_USER": ""}
# Queue.WaitingForNextAvailableExecutor (hudson/model/Messages.properties): the reason of an
# item with no label, or of every item while Jenkins has no agent at all (_waiting_why).
NO_LABEL_WHY = "Waiting for next available executor"
# The built-in node's computer (Hudson.MasterComputer): always in computer/api/json, even with
# 0 executors ("we always need Computer for the built-in node as a fallback":
# AbstractCIBase.updateComputer); "Built-In Node" since 2.307, "master" before.
BUILT_IN_COMPUTER = "hudson.model.Hudson$MasterComputer"
# A computer whose agent's channel closed under it: its offlineCause's class (SlaveComputer's
# channel listener, onClosed), and the text Computer.getOfflineCauseReason gives for it
# (OfflineCause.ChannelTermination.toString: Messages OfflineCause.connection_was_broken_,
# "Connection was broken: {0}", {0} the exception as Functions.printThrowable prints it).
CHANNEL_TERMINATION = "hudson.slaves.OfflineCause$ChannelTermination"
_CONNECTION_BROKEN = "Connection was broken: java.nio.channels.ClosedChannelException\n" \
    "\tat org.jenkinsci.remoting.protocol.NetworkLayer.onRecvClosed(NetworkLayer.java:155)\n"
BUILT_IN_NAME = "Built-In Node"
WORKFLOW_JOB = "org.jenkinsci.plugins.workflow.job.WorkflowJob"
FREESTYLE_JOB = "hudson.model.FreeStyleProject"
# The Groovy Label Assignment plugin's JobProperty: at queue time its QueueDecisionHandler runs
# the job's script, the build's parameters bound in it, and puts the build on the label it
# returns (a LabelAssignmentAction: GroovyLabelAssignmentProperty.assignLabel), so a freestyle
# job's String parameter may steer where it runs
GROOVY_LABEL_ASSIGNMENT = \
    "jp.ikedam.jenkins.plugins.groovy_label_assignment.GroovyLabelAssignmentProperty"
FOLDER = "com.cloudbees.hudson.plugins.folder.Folder"


@dataclass
class FakeJob:
    """A job: its full name ("folder/name"), its string parameters (name -> default value;
    None: the job has no ParametersDefinitionProperty, it is not parameterized), disabled."""

    name: str
    parameters: dict[str, str] | None = field(
        default_factory=lambda: dict(DEFAULT_JOB_PARAMETERS))
    disabled: bool = False
    kind: str = WORKFLOW_JOB
    # True: a QueueDecisionHandler vetoes every build of it (core's ItemDeletion while the job
    # is deleted, the Queued Job Limit plugin's QueuedJobLimitDecisionHandler at its limit,
    # Build Blocker's BuildBlockerHandler; Throttle Concurrent Builds only blocks items in
    # the queue, a QueueTaskDispatcher): Queue.schedule2
    # returns ScheduleResult.refused() before any item is made, and the trigger is answered
    # with a redirect to the job's page, no queue item (see JenkinsFake._build).
    vetoed: bool = False
    # False: a Pipeline's disableConcurrentBuilds(), a freestyle job without "Execute
    # concurrent builds if necessary": one build at a time, the others blocked in the queue
    concurrent: bool = True
    # The build discarder's "Max # of builds to keep" (buildDiscarder(logRotator(numToKeepStr:
    # ...))); None: keep every build. See JenkinsFake._discard_old_runs.
    num_to_keep: int | None = None
    # A Pipeline whose node block is wrapped in `retry(count: N, conditions: [agent()])`: N
    # (1: no such retry). See JenkinsFake.removed_node_timeout.
    agent_retry_count: int = 1
    # The type of its CI_AUTOSCALER_AGENT definition (ParameterDefinition.getType); None: what
    # a job made to run on its agent has: a Pipeline a String parameter (its `agent { label
    # params.CI_AUTOSCALER_AGENT }` reads it), a freestyle job a Label parameter of the
    # NodeLabel Parameter plugin (its own label expression takes no parameter:
    # AbstractProject.getAssignedLabel)
    agent_parameter_type: str | None = None
    # The classes of its JobProperties besides its ParametersDefinitionProperty (each shown on
    # its page as its _class: Job.getAllProperties, exported as `property`), e.g.
    # GROOVY_LABEL_ASSIGNMENT
    properties: tuple[str, ...] = ()

    def parameter_type(self, name: str) -> str:
        if name == "CI_AUTOSCALER_AGENT" and self.agent_parameter_type is not None:
            return self.agent_parameter_type
        if name == "CI_AUTOSCALER_AGENT" and self.kind == FREESTYLE_JOB:
            return "LabelParameterDefinition"
        return "StringParameterDefinition"

    @property
    def buildable(self) -> bool:
        # ParameterizedJob.isBuildable(): !isDisabled() && !isHoldOffBuildUntilSave()
        return not self.disabled


class JenkinsFake:
    """What the ``jenkins_fake`` fixture yields; ``start()``/``stop()`` or use as a context."""

    def __init__(self, *, user: str | None = "ci-autoscaler", token: str | None = None,
                 jobs: set[str] | None = None, show_stack_trace: bool = False,
                 context_path: str = "") -> None:
        self.user = user
        # Jenkins started with `--prefix=/jenkins` (Winstone's context path; the jenkins.war
        # docs, "Using a context path"), as behind a reverse proxy that serves it under a path:
        # every page is under the prefix, a path outside it answers 404 (Jetty's default
        # handler), and the root URL, every absolute URL it gives and its redirects carry it.
        self.context_path = context_path.rstrip("/")
        self.token = token if token is not None else "11" + secrets.token_hex(16)
        self.any_job = jobs is None
        self.declared = {n: FakeJob(n) for n in jobs or ()}
        # Jobs deleted or moved away (delete_job, move_job), in lower case: with `any_job`,
        # these names no longer exist either.
        self.deleted_jobs: set[str] = set()
        # Jobs and folders (full names) the API user lacks Item/Read on (a matrix or folder
        # authorization an admin set or changed): Jenkins.getItem / Folder.getItem return null
        # for an item the user may neither READ nor DISCOVER, so its pages and its runs' pages
        # answer 404 as a gone job's do; an executor running one of its runs shows no
        # `currentExecutable` (Executor.getCurrentExecutableForApi checks Item.READ), while
        # its `idle` is false all the same (Executor.isIdle checks nothing).
        self.unreadable: set[str] = set()
        # Of those, the ones the API user may still DISCOVER (Item/Discover granted, Item/Read
        # not): Jenkins.getItem (AbstractFolder.getItem alike) throws a plain
        # AccessDeniedException "Please login to access job <name>", which
        # AccessDeniedHandlerImpl answers 403 with its accessDenied page showing the message
        # and, not being an AccessDeniedException3, no X-Required-Permission (jenkins core
        # jenkins/model/Jenkins.java getItem, hudson/security/AccessDeniedHandlerImpl.java,
        # jenkins/model/Jenkins/accessDenied.jelly).
        self.discoverable: set[str] = set()
        # Permissions the API user lacks, as Jenkins names them ("Agent/Connect"): a page that
        # checks one answers 403 (see _missing). A permission is held through one that implies
        # it (Permission.impliedBy): Agent/Disconnect implies Agent/Connect (Computer.CONNECT
        # is declared impliedBy DISCONNECT), so a user lacking Agent/Connect lacks
        # Agent/Disconnect too. Checked: Agent/Connect on an agent's JNLP file (REALITY.md
        # "Agent state"; jenkins core SlaveComputer.doJenkinsAgentJnlp answers an
        # EncryptedSlaveAgentJnlpFile, whose generateResponse checks CONNECT on the computer
        # before it renders the plain file: the secret is never served to a user without it);
        # Agent/Create on computer/doCreateItem (ComputerSet.doCreateItem:
        # checkPermission(Computer.CREATE)); Agent/Delete on computer/NAME/doDelete
        # (Computer.doDoDelete: checkPermission(DELETE)); Agent/Disconnect to take an agent
        # offline and Agent/Connect to bring it back (Computer.doToggleOffline checks
        # DISCONNECT when online, CONNECT when temporarily offline; doChangeOfflineCause
        # checks DISCONNECT).
        self.missing_permissions: set[str] = set()
        # Jenkins' error page (jenkins/model/Jenkins/oops.jelly) shows the exception only when
        # app.shouldShowStackTrace() (-Djenkins.model.Jenkins.SHOW_STACK_TRACE=true, off by
        # default); otherwise it shows "Oops!" and a logging ID, and the message is only logged.
        self.show_stack_trace = show_stack_trace
        self.nodes: dict[str, FakeNode] = {}
        # Deleted nodes whose executor still runs a Pipeline block: their computers stay
        # until it ends (_dying_computer)
        self.dying: dict[str, FakeNode] = {}
        self.builds: list[FakeBuild] = []
        self.node_blocks: list[FakeNodeBlock] = []
        self.requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._sign_in_redirects: tuple[int, str | None] = (0, None)  # see sign_in_redirects
        self._sign_in_pages: tuple[int, str | None, int] = (0, None, 200)  # see sign_in_pages
        # The base URL Jenkins' own redirects name (None: the address the client asked, as
        # `_base`). Stapler's HttpRedirect("..") and redirectToDot() are relative, and the
        # container makes them absolute with the scheme and Host the request came with
        # (ServletResponse.sendRedirect; Stapler ResponseImpl.sendRedirect2): behind a proxy
        # that passes neither Host nor X-Forwarded-Proto and does not rewrite Location
        # (nginx's proxy_redirect), they name the controller's own address, e.g.
        # http://jenkins:8080/computer/, what Jenkins' docs call a broken reverse proxy set up
        # ("Reverse proxy configuration", ReverseProxySetupMonitor).
        self.redirect_base: str | None = None
        self.cancelled_items: list[int] = []  # queue items cancelled through the API
        self.stopped_builds: list[tuple[str, int]] = []  # (job, number) aborted through the API
        self.forgotten_items: set[int] = set()  # left queue items Jenkins no longer keeps
        self._delays: list[tuple[str, float, threading.Event]] = []
        self._port_hold = HeldPort()  # the port, while the controller is down
        self._holds: list[tuple[str, threading.Event, threading.Event]] = []
        # Seconds every request waits before it is answered (outside the lock, so requests
        # overlap as they do on a real controller, whose API calls take 50-200 ms each:
        # issue 19). 0: answered at once.
        self.latency_seconds = 0.0
        self.in_flight = 0  # requests being answered now
        self.most_in_flight = 0  # the most answered at once so far
        self._salt = secrets.token_hex(16)
        # Jetty's web sessions (ids) and the cookie naming one: winstone names it
        # JSESSIONID.<8 hex of the instance>, scoped to the context path. A crumb is issued
        # for one of them (DefaultCrumbIssuer.issueCrumb: the user's name, ';', and
        # req.getSession().getId(), which makes a session when the request has none) and
        # valid only in it (validateCrumb issues it again for the request's session).
        self.session_cookie = f"JSESSIONID.{secrets.token_hex(4)}"
        self._web_sessions: set[str] = set()
        # An inbound agent's secret is an HMAC of its name under a key the controller keeps
        # (SlaveComputer.getJnlpMac: JnlpAgentReceiver.SLAVE_SECRET.mac(getName())): a node
        # deleted and registered again under the same name has the same secret.
        self._jnlp_key = secrets.token_bytes(32)
        self._next_queue_id = 1
        # An idle executor for every build: a new queue item starts at once, as when its
        # label's agent is already online (Jenkins' queue maintenance hands it to the idle
        # executor); from then on a request with the same parameters is not folded into it.
        self.start_on_arrival = False
        # The name of a node whose executor takes a new item at once and has not made its Run
        # by the next request (begin_start): the moments between Queue.onStartExecuting and
        # the Run's creation in Executor.run, longer on a loaded controller.
        self.taken_on_arrival: str | None = None
        # Jenkins' global quiet period (Jenkins.getQuietPeriod(), 5 by default): a build
        # requested without `delay` waits this long in the queue before it can start.
        self.quiet_period_seconds = 5
        # "Prepare for shutdown" (Jenkins.doQuietDown; `quietingDown` in the root API): no new
        # build starts until it is cancelled (quiet_down / cancel_quiet_down).
        self.quieting_down = False
        # The controller's JVM language, in which it words queue reasons for a request that
        # names none (Accept-Language), and the Locale plugin's "ignore browser preference"
        # (every request in that language): tests/support/jenkins_locale.py.
        self.jvm_language = "en"
        self.language_forced = False
        self._lock = threading.RLock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        # A controller restart (`go_down`, `come_up`, `finish_loading`): None when serving,
        # "down" while nothing listens, "loading" while every URL answers the loading page.
        self.phase: str | None = None
        self._port = 0  # the port it listens on, kept across a restart
        # True once the controller restarted (`come_up`): its folders were loaded from disk.
        # Jenkins.items is CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER) always, and so
        # is a folder's own map as the folder is made (cloudbees-folder AbstractFolder.items),
        # but AbstractFolder.onLoad replaces it with what loadChildren (DefaultChildLoader)
        # makes, a CopyOnWriteMap.Tree<>() in natural order: a folder's items are found by
        # their name's exact case once Jenkins has restarted (`job`).
        self.folders_loaded = False
        # Jenkins.SESSION_HASH: 8 hex digits, new on every start of the controller ("the
        # current session ID number (that changes for every run) to allow clients to reliably
        # wait for a restart": hudson.cli.SessionIdCommand); hudson.model.Api.setHeaders sends
        # it as X-Jenkins-Session with every api/json answer.
        self.session = secrets.token_hex(4)
        # False: a proxy in front of Jenkins strips the header (nginx's proxy_hide_header, a
        # gateway that passes on only the headers it knows): no answer shows the session.
        self.session_header = True
        # queue.xml: the ids of the items queued when Queue.save last ran, and the id counter
        # it saved (Queue.State.counter); None: never saved. See save_queue.
        self._saved_queue: set[int] | None = None
        self._saved_counter = 0
        self._hard_stop = False
        self.lost_items: list[FakeBuild] = []  # queued items a hard stop lost

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> JenkinsFake:
        self._port_hold.release()  # a restart: the port was kept while it was down
        self._server = make_server("127.0.0.1", self._port, self._wsgi, threaded=True,
                                   request_handler=_QuietHandler)  # bound + listening
        self._server.open_connections = set()  # see _QuietHandler; closed by go_down
        self._port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name="jenkins-fake")  # quick shutdown
        self._thread.start()
        return self

    def stop(self) -> None:
        self._port_hold.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = None

    def __enter__(self) -> JenkinsFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, without a final slash."""
        return f"http://127.0.0.1:{self._port}{self.context_path}"  # the same across a restart

    # ---- test controls ---------------------------------------------------------------------

    def fail_next(self, status: int, *, times: int = 1, path_prefix: str | None = None,
                  headers: dict[str, str] | None = None, body: str | None = None) -> None:
        """Answer the next ``times`` requests (whose path starts with ``path_prefix``, if given)
        with ``status``; e.g. ``fail_next(429, headers={"Retry-After": "5"})``. The request is
        recorded but changes nothing."""
        with self._lock:
            self._failures.append(_Failure(status, times, path_prefix, headers or {}, body))

    def sign_in_redirects(self, *, times: int = 1, path_prefix: str | None = None) -> None:
        """A proxy that authenticates in front of Jenkins (oauth2-proxy behind nginx's
        auth_request, the setup of its docs, "Integration": `error_page 401 = @oauth2_signin;`
        with `return 302 /oauth2/sign_in?rd=$scheme://$host$request_uri;`) no longer takes our
        credential (JENKINS_API_EXTRA_HEADERS: a token expired, rotated): the next `times`
        requests (whose path starts with `path_prefix`, if given) are answered 302 to its
        sign-in page, which answers 200 with an HTML form (oauth2-proxy's /oauth2/sign_in,
        "the login page"). Jenkins sees none of them. `times=0`: the credential works again."""
        with self._lock:
            self._sign_in_redirects = (times, path_prefix)

    def sign_in_pages(self, *, times: int = 1, path_prefix: str | None = None,
                      status: int = 200) -> None:
        """A front that authenticates before Jenkins answers, at the URL asked, with its own
        sign-in page when it no longer takes our credential, no redirect: the next `times`
        requests (whose path starts with `path_prefix`, if given) are answered `status` with
        an HTML form, and Jenkins sees none of them.
        - 403: oauth2-proxy in front of Jenkins itself (not behind nginx's auth_request)
          without --skip-provider-button: OAuthProxy.Proxy answers ErrNeedsLogin with
          `p.SignInPage(rw, req, http.StatusForbidden)` for any request not asking for JSON
          (isAjax: Accept application/json; python-jenkins sends `*/*`) (oauth2-proxy
          oauthproxy.go).
        - 200: a front that serves its login form as the page asked, status 200 (IBM
          Domino's HTTP task did so by default until DOMINO_FORCE401_WITH_HTML_LOGIN_PAGE:
          assono.de, "HTTP-Statuscode 200 oder 401 für Login-Seite"; forms-login gateways
          of the same kind).
        Jenkins itself never answers a call of ours 200 with HTML: its API pages are JSON, the
        JNLP file application/x-java-jnlp-file, a POST it took a redirect (201, 302) or 204,
        and a refused form its error page, 400 with X-Error (hudson/model/AbstractModelObject/
        error.jelly, which hudson.model.Failure forwards to). `times=0`: taken again."""
        with self._lock:
            self._sign_in_pages = (times, path_prefix, status)

    def clear_failures(self) -> None:
        """Answer normally again (the failures of ``fail_next`` not used up are dropped)."""
        with self._lock:
            self._failures.clear()

    # ---- jobs ------------------------------------------------------------------------------

    def add_job(self, name: str, *, parameters: dict[str, str] | list[str] | None | object
                = DEFAULT_JOB_PARAMETERS, disabled: bool = False,
                kind: str = WORKFLOW_JOB, concurrent: bool = True,
                num_to_keep: int | None = None, agent_retry_count: int = 1,
                agent_parameter_type: str | None = None,
                properties: tuple[str, ...] = ()) -> FakeJob:
        """Declare a job ("folder/name" in a folder): `parameters` as names (default "") or
        name -> default; None for a job that is not parameterized; `concurrent` False for one
        that runs one build at a time; `num_to_keep` the most builds it keeps (a discarder);
        `agent_retry_count` N for a Pipeline whose node block is in `retry(count: N,
        conditions: [agent()])` (see removed_node_timeout); `agent_parameter_type` the type of
        its CI_AUTOSCALER_AGENT (FakeJob.agent_parameter_type); `properties` the classes of its
        other JobProperties (FakeJob.properties)."""
        if isinstance(parameters, (list, tuple)):
            parameters = {p: "" for p in parameters}
        with self._lock:
            job = self.declared[name] = FakeJob(
                name, None if parameters is None else dict(parameters),  # type: ignore[arg-type]
                disabled=disabled, kind=kind, concurrent=concurrent, num_to_keep=num_to_keep,
                agent_retry_count=agent_retry_count, agent_parameter_type=agent_parameter_type,
                properties=tuple(properties))
            return job

    def job(self, name: str) -> FakeJob | None:
        """The job of that full name, as Jenkins would find it (None: no such job): in any
        case, as Jenkins finds items (Jenkins.items and cloudbees-folder's AbstractFolder.items
        are CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_ORDER)), but for the names inside a
        folder once Jenkins restarted (`folders_loaded`); the job found keeps its own name
        (FakeJob.name), which is what Jenkins gives back."""
        with self._lock:
            if name in self.declared:
                return self.declared[name]
            same = next((j for n, j in self.declared.items() if self._same_item(n, name)),
                        None)
            if same is not None:
                return same
            if not self.any_job or not name or name.lower() in {
                    f.lower() for f in self._folders()} | self.deleted_jobs:
                return None
            return self.declared.setdefault(name, FakeJob(name))

    def _same_item(self, one: str, other: str) -> bool:
        """Whether two full names find one item: the top-level name in any case; a folder's
        item's in any case too, until the folders are loaded from disk (`folders_loaded`)."""
        if not self.folders_loaded:
            return one.lower() == other.lower()
        top, _, inside = one.partition("/")
        other_top, _, other_inside = other.partition("/")
        return top.lower() == other_top.lower() and inside == other_inside

    def delete_job(self, name: str) -> list[FakeBuild]:
        """A person (or branch-api's orphaned item strategy, once branch indexing finds the
        branch deleted) deletes the job, as jenkins core AbstractItem.delete does it: its
        queued items are cancelled (Queue.cancel(task): cancelled LeftItems), every run of it
        on any executor is aborted and the delete waits for them to stop
        (jenkins.model.ItemDeletion.cancelBuildsInProgress, up to 15 s, else the delete
        fails), then the job and its runs are gone (performDelete: Util.deleteRecursive of
        its root dir): its pages answer 404. The aborted runs completed as any run does
        (RunListener.fireCompleted: the Notification plugin sends COMPLETED); they are
        returned, for the test to send or lose that COMPLETED."""
        with self._lock:
            job = self.job(name)
            assert job is not None, f"no job {name!r}"
            aborted = []
            for build in self.builds:
                if build.job != job.name:
                    continue
                if build.state == "queued":
                    build.state = "cancelled"
                elif build.state == "running":
                    if build.number is None:
                        self.start_build(build.queue_id)
                    build.state, build.result = "finished", "ABORTED"
                    self._run_ended(build)
                    aborted.append(build)
            for build in self.builds:
                if build.job == job.name:
                    build.discarded = True  # its directory went with the job's
            self.declared.pop(job.name, None)
            self.deleted_jobs.add(job.name.lower())
            return aborted

    def move_job(self, name: str, folder: str) -> FakeJob:
        """A person moves the job into `folder` (jenkins core Items.move, the "Move" action of
        cloudbees-folder's RelocationAction): the job, its runs and its queued items now live
        under "folder/name"; the old name answers 404. Items.move "does not verify that the
        item's directory is not currently being used ... by a running build": a run goes on,
        on the executor it holds, under the new name."""
        with self._lock:
            job = self.job(name)
            assert job is not None, f"no job {name!r}"
            old, job.name = job.name, f"{folder}/{job.name.rsplit('/', 1)[-1]}"
            self.declared.pop(old, None)
            self.declared[job.name] = job
            self.deleted_jobs.add(old.lower())  # nothing of that name any more
            for build in self.builds:
                if build.job == old:
                    build.job = job.name
            return job

    def disable_job(self, name: str) -> FakeJob:
        """A person disables the job (its page's "Disable Project", POST job/NAME/disable):
        ParameterizedJobMixIn.ParameterizedJob.makeDisabled(true) sets it disabled and calls
        Queue.cancel(task) once, which cancels "the first occurrence" only: the first of the
        job's items in their quiet period (waitingList, ordered by the period's end), or else
        the first blocked one and the first buildable one (ItemList.cancel(task): get(task)).
        Cancelled LeftItems; the job's other items wait on, and an executor that takes one
        makes no run of it (dispatch). A Pipeline run's node block is another task, and waits
        on; what runs goes on (jenkinsci/jenkins core jenkins/model/ParameterizedJobMixIn.java,
        hudson/model/Queue.java)."""
        with self._lock:
            job = self.job(name)
            assert job is not None, f"no job {name!r}"
            job.disabled = True
            queued = sorted((b for b in self.builds if b.job == job.name
                             and b.state == "queued"), key=lambda b: b.queue_id)
            now = time.time()
            waiting = sorted((b for b in queued if b.quiet_until > now),
                             key=lambda b: (b.quiet_until, b.queue_id))
            blocked = [b for b in queued if b not in waiting and self._blocked_by(b)]
            buildable = [b for b in queued if b not in waiting and b not in blocked]
            for first in waiting[:1] or blocked[:1] + buildable[:1]:
                first.state = "cancelled"
            return job

    def rename_job(self, name: str, new_name: str) -> FakeJob:
        """A person renames the job (its page's "Rename": AbstractItem.doConfirmRename ->
        renameTo), in its folder: its runs and its queued items now live under the new name,
        the old one answers 404. Jenkins refuses it while the job's last run is building
        (Job.checkRename: Failure "Unable to rename a job while it is building"), not while
        items of it wait in the queue: a queue item holds the job itself (Queue.Item.task),
        and it builds under the new name (jenkinsci/jenkins core hudson/model/Job.java,
        AbstractItem.java)."""
        with self._lock:
            job = self.job(name)
            assert job is not None, f"no job {name!r}"
            assert not any(b.job == job.name and b.state == "running" for b in self.builds), \
                "Jenkins refuses to rename a job while it is building (Job.checkRename)"
            folder = job.name.rsplit("/", 1)[0] + "/" if "/" in job.name else ""
            old, job.name = job.name, folder + new_name
            self.declared.pop(old, None)
            self.declared[job.name] = job
            self.deleted_jobs.add(old.lower())
            for build in self.builds:
                if build.job == old:
                    build.job = job.name
            return job

    def _named(self, name: str) -> str:
        """The full name Jenkins knows a job by that a request named in any case (`job`)."""
        job = self.job(name)
        return job.name if job is not None else name

    @property
    def jobs(self) -> set[str] | None:
        """The names of the jobs that exist; None when any job exists."""
        return None if self.any_job else set(self.declared)

    @jobs.setter
    def jobs(self, names: set[str] | None) -> None:
        """Only these jobs exist (each declaring ``DEFAULT_JOB_PARAMETERS``); None: any job."""
        with self._lock:
            self.any_job = names is None
            self.declared = {n: self.declared.get(n) or FakeJob(n) for n in names or ()}

    def _folders(self) -> set[str]:
        return {"/".join(name.split("/")[:i]) for name in self.declared
                for i in range(1, name.count("/") + 1)}

    def queue_build(self, job: str, *, label: str, parameters: dict[str, str] | None = None,
                    started_by: str | None = None) -> FakeBuild:
        """A build Jenkins queued by itself (started by hand by `started_by`, or by a timer),
        waiting for an executor on `label` ("": a job restricted to no label); no webhook
        announces it."""
        with self._lock:
            build = FakeBuild(job, dict(parameters or {}), self._take_queue_id(), label=label,
                              started_by=started_by)
            self.builds.append(build)
            return build

    def quiet_down(self) -> None:
        """Manage Jenkins > Prepare for Shutdown (POST /quietDown): builds that run go on,
        queued ones wait (see _queued)."""
        with self._lock:
            self.quieting_down = True

    def cancel_quiet_down(self) -> None:
        """POST /cancelQuietDown: queued builds may start again."""
        with self._lock:
            self.quieting_down = False

    def start_build(self, queue_id: int) -> FakeBuild:
        """The build leaves the queue and runs (an agent took it): it gets its number."""
        with self._lock:
            build = self._by_queue_id(queue_id)
            assert build.state == "queued" or (build.state == "running"
                                               and build.number is None), build
            # Queue.isBlockedByShutdown: a Pipeline's item is kept a BlockedItem
            # (makeBuildable), a freestyle one is never mapped to an executor
            # (LoadBalancer.sanitize returns no mapping while quieting down).
            assert not self.quieting_down, "Jenkins starts no build while quieting down"
            assert self._blocked_by(build) is None, "Jenkins does not start a blocked item"
            assert time.time() >= build.quiet_until, \
                "Jenkins does not start an item in its quiet period (no delay=0sec asked)"
            build.state = "running"
            build.number = 1 + max((b.number or 0 for b in self.builds if b.job == build.job),
                                   default=0)
            build.run_at = time.time()
            return build

    def begin_start(self, queue_id: int, node: str | None = None) -> FakeBuild:
        """An executor has taken the item, and has not made its Run yet: the item is a
        LeftItem whose `executable` is null (Queue.LeftItem.getExecutable reads the work
        unit's executable, set only once Executor.run has made the Run); `start_build`
        numbers it. Neither the queue (Queue.getItems: waiting, blocked, buildable, pending)
        nor the job's runs list it then. With `node`, that node's executor took it: not idle
        (Executor.isIdle: a work unit set), its currentExecutable null (the executable not
        made yet)."""
        with self._lock:
            build = self._by_queue_id(queue_id)
            assert build.state == "queued", build
            build.state = "running"
            if node is not None:
                assert self.nodes[node].running is None, "one executor: it runs something"
                build.node, self.nodes[node].running = node, build
            return build

    def finish_build(self, queue_id: int, result: str = "SUCCESS") -> FakeBuild:
        with self._lock:
            build = self._by_queue_id(queue_id)
            if build.state == "queued":
                self.start_build(queue_id)
            build.state, build.result = "finished", result
            self._run_ended(build)
            return build

    def cancel_by_hand(self, queue_id: int) -> FakeBuild:
        """A person cancels the queued item (the queue widget's "x": Queue.doCancelItem as
        that user); it is a cancelled LeftItem from then on. Not in ``cancelled_items``,
        which holds the cancels sent through the API by the code under test."""
        with self._lock:
            build = self._by_queue_id(queue_id)
            assert build.state == "queued", build
            build.state = "cancelled"
            return build

    def forget_left_items(self) -> set[int]:
        """Five minutes pass: Jenkins forgets every item that has left the queue by now (a
        started or cancelled build, a node block that ran); their ids are returned."""
        with self._lock:
            left = {b.queue_id for b in self.builds if b.state != "queued"} | \
                {b.queue_id for b in self.node_blocks if b.state != "queued"}
            self.forgotten_items |= left
            return left

    def connect_agent(self, name: str) -> FakeNode:
        """The agent process of this node connected: its computer is online from now on."""
        with self._lock:
            node = self.nodes[name]
            node.offline, node.channel_lost_at = False, None  # setChannel: offlineCause null
            if node.process is None:
                node.process = ""
            return node

    def disconnect_agent(self, name: str) -> FakeNode:
        """Its agent's channel closed under it (the process died, or Jenkins' ping found it
        gone): offline, with a ChannelTermination cause (FakeNode.channel_lost_at)."""
        with self._lock:
            node = self.nodes[name]
            if node.process is not None:  # only a channel that was there can close
                node.channel_lost_at = time.time()
            node.offline = True
            node.process = None
            return node

    def agent_dies_connecting(self, name: str) -> FakeNode:
        """An agent process opened its channel and died in the handshake before its computer
        came online (a JVM OOM-killed as it starts): SlaveComputer.setChannel adds the channel
        listener first, then calls the agent (SlaveVersion, DetectOS, AbsolutePath,
        SlaveInitializer, ComputerListener.preOnline), and only then clears offlineCause and
        sets its channel; a close in between leaves a ChannelTermination on a computer that
        was never online, and took no work (jenkinsci/jenkins core/src/main/java/hudson/
        slaves/SlaveComputer.java, setChannel)."""
        with self._lock:
            node = self.nodes[name]
            assert node.process is None, "a connected agent's close is disconnect_agent's"
            node.offline, node.channel_lost_at = True, time.time()
            return node

    def agent_connects(self, name: str, secret: str, process: str) -> str | None:
        """An agent process (`process`: whatever tells two apart, e.g. its pod's uid) tries to
        connect as node `name` with `secret`, as jenkins/inbound-agent does from
        JENKINS_AGENT_NAME and JENKINS_SECRET. None if Jenkins takes it (the computer is
        online from now on, its channel this process's), else Jenkins' refusal:

        - no node of that name (deleted, never made): remoting's JnlpProtocol4Handler refuses
          "Unknown client name: NAME" (JnlpAgentReceiver.DATABASE.exists: no SlaveComputer of
          that name; WebSocketAgents answers 400 "no such agent");
        - a secret that is not the node's: "Authorization failure" (the secret must equal
          DATABASE.getSecretOf(name), JnlpAgentReceiver.SLAVE_SECRET.mac(name): an HMAC of the
          name, so a node deleted and made again under the same name takes the same secret);
        - the computer has a channel already, of another process: DefaultJnlpSlaveReceiver.
          afterProperties refuses "NAME is already connected to this controller. Rejecting this
          connection." (only a reconnect carrying the current channel's cookie, i.e. the same
          process, replaces it).

        What the refused process does (remoting's Engine): over TCP it logs "The server
        rejected the connection" and tries again every 10 s (Engine.onConnectionRejected,
        then the loop in innerRun) for as long as it runs; over WebSocket the failed handshake
        ends Engine.runWebSocket, and the agent process exits (jnlp.Main's listener)."""
        with self._lock:
            node = self.nodes.get(name)
            if node is None or node.launcher != JNLP_LAUNCHER:
                return f"Unknown client name: {name}"
            if not hmac.compare_digest(secret, node.secret):
                return "Authorization failure"
            if node.process is not None and node.process != process:
                return f"{name} is already connected to this controller. Rejecting this " \
                       "connection."
            node.process, node.offline, node.channel_lost_at = process, False, None
            return None

    def agent_process_ends(self, process: str) -> list[str]:
        """An agent process died (its pod's containers killed): the channel it held closes
        and that computer goes offline (SlaveComputer.onClosed). The nodes it was connected
        as."""
        with self._lock:
            held = [n for n in self.nodes.values() if n.process == process]
            for node in held:
                node.process, node.offline, node.channel_lost_at = None, True, time.time()
            return [n.name for n in held]

    def connected_process(self, name: str) -> str | None:
        """The process holding node `name`'s channel (agent_connects), None if none or no
        such node."""
        with self._lock:
            node = self.nodes.get(name)
            return None if node is None else node.process

    def notification(self, build: FakeBuild, phase: str = "COMPLETED") -> dict[str, Any]:
        """The Notification plugin's body for one of this Jenkins' runs, as its JobState and
        BuildState serialise it (jenkinsci/notification-plugin; fields as in the captures of
        ../shared/fixtures/webhooks): the job's short name and relative URL, the run's number,
        queue id, phase, URLs and non-sensitive parameters; `status` once the run has a result
        (null fields are left out)."""
        with self._lock:
            assert build.number is not None, "a run that has not started sends no notification"
            relative = job_url(build.job)
            body: dict[str, Any] = {
                "full_url": f"{self.url}/{relative}{build.number}/", "number": build.number,
                "queue_id": build.queue_id, "phase": phase, "url": f"{relative}{build.number}/",
                "parameters": dict(build.parameters)}
            if build.result is not None and phase in ("COMPLETED", "FINALIZED"):
                body["status"] = build.result
            return {"name": build.job.rsplit("/", 1)[-1], "url": relative, "build": body}

    def build_with(self, parameter: str, value: str) -> list[FakeBuild]:
        with self._lock:
            return [b for b in self.builds if b.parameters.get(parameter) == value]

    def parameter_values(self, parameter: str) -> set[str]:
        """The values the builds so far have for this parameter: one pass over the builds,
        for a test that awaits a build for each of hundreds of values (build_with for each
        is a pass per value, tens of thousands of steps a poll)."""
        with self._lock:
            return {b.parameters[parameter] for b in self.builds if parameter in b.parameters}

    def _by_queue_id(self, queue_id: int) -> FakeBuild:
        return next(b for b in reversed(self.builds) if b.queue_id == queue_id)

    def _take_queue_id(self) -> int:
        """The next queue item id (WaitingItem.COUNTER, incremented). After a hard stop the
        counter is the one last saved, so an id can come again (come_up): the newest item or
        run holding an id is the one found by it, and a forgotten left item of that id is no
        longer what its page answers."""
        queue_id = self._next_queue_id
        self._next_queue_id += 1
        self.forgotten_items.discard(queue_id)
        return queue_id

    def slow_next(self, path_prefix: str, seconds: float) -> threading.Event:
        """Hold the next request whose path starts with `path_prefix` for `seconds` before
        answering it; the returned event is set when that request has arrived."""
        arrived = threading.Event()
        with self._lock:
            self._delays.append((path_prefix, seconds, arrived))
        return arrived

    def hold_next(self, path_prefix: str) -> tuple[threading.Event, threading.Event]:
        """Hold the next request whose path starts with `path_prefix` until the test sets the
        second event returned; the first is set when that request has arrived."""
        arrived, release = threading.Event(), threading.Event()
        with self._lock:
            self._holds.append((path_prefix, arrived, release))
        return arrived, release

    def add_node(self, name: str, **fields: Any) -> FakeNode:
        """Seed an agent as if created earlier (fields of ``FakeNode``)."""
        with self._lock:
            fields.setdefault("secret", self.jnlp_mac(name))
            node = self.nodes[name] = FakeNode(name=name, **fields)
            return node

    def jnlp_mac(self, name: str) -> str:
        """The agent's secret: HMAC-SHA256 of its name, 64 hex digits (see _jnlp_key)."""
        return hmac.new(self._jnlp_key, name.encode(), hashlib.sha256).hexdigest()

    def _crumb_for(self, web_session: str) -> str:
        """The crumb DefaultCrumbIssuer issues the configured user in that web session."""
        return hashlib.sha256(f"{self._salt}:{self.user};{web_session}".encode()).hexdigest()

    def _web_session(self, request: Request) -> str | None:
        """The live web session the request's cookie names, if any."""
        web_session = request.cookies.get(self.session_cookie)
        return web_session if web_session in self._web_sessions else None

    def crumb_headers(self) -> dict[str, str]:
        """The headers of a request a test sends by hand with a valid crumb: a web session's
        cookie and the crumb issued in it (as a client that read crumbIssuer/api/json and kept
        the cookie sends)."""
        with self._lock:
            web_session = secrets.token_hex(16)
            self._web_sessions.add(web_session)
            return {CRUMB_FIELD: self._crumb_for(web_session),
                    "Cookie": f"{self.session_cookie}={web_session}"}

    def crumb_valid(self, request: RecordedRequest) -> bool:
        """Whether a recorded request carried a crumb of the web session its cookie names."""
        cookies = dict(part.strip().split("=", 1) for part in
                       request.headers.get("Cookie", "").split(";") if "=" in part)
        web_session = cookies.get(self.session_cookie)
        return web_session is not None and \
            request.headers.get(CRUMB_FIELD) == self._crumb_for(web_session)

    def expire_web_sessions(self) -> None:
        """Every web session ends (Jetty's session timeout; a restart ends them too): the
        crumbs issued in them are refused from now on (403 "No valid crumb")."""
        with self._lock:
            self._web_sessions.clear()

    def rotate_crumb(self) -> None:
        """Invalidate every crumb issued so far, as a Jenkins restart or session expiry does."""
        with self._lock:
            self._salt = secrets.token_hex(16)
            self._web_sessions.clear()

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests
                    if r.path == path and (method is None or r.method == method)]

    # ---- the server ------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The context path (`context_path`): taken off the path as a servlet container does
        (SCRIPT_NAME), or 404 for a path outside it."""
        if self.context_path:
            path = environ.get("PATH_INFO", "")
            if path != self.context_path and not path.startswith(self.context_path + "/"):
                return _error(404, "Not Found")(environ, start_response)
            environ["SCRIPT_NAME"] = self.context_path
            environ["PATH_INFO"] = path[len(self.context_path):] or "/"
        return self._app(environ, start_response)

    @Request.application
    def _app(self, request: Request) -> Response:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return self._answer(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, request: Request) -> Response:
        with self._lock:
            delay = next((d for d in self._delays if request.path.startswith(d[0])), None)
            if delay is not None:
                self._delays.remove(delay)
            hold = next((h for h in self._holds if request.path.startswith(h[0])), None)
            if hold is not None:
                self._holds.remove(hold)
            latency = self.latency_seconds
        if delay is not None:  # held outside the lock: other requests go on meanwhile
            delay[2].set()
            time.sleep(delay[1])
        if hold is not None:
            hold[1].set()
            if not hold[2].wait(HOLD_LIMIT_SECONDS):
                return _error(504, "held by the test and never released")
        if latency:
            time.sleep(latency)
        with self._lock:
            self.requests.append(RecordedRequest(
                request.method, request.path, request.args.to_dict(), request.form.to_dict(),
                dict(request.headers)))
            response = self._loading_page() or self._injected(request) \
                or self._checked(request) or self._route(request)
            if response.status_code == 200 and request.path.startswith("/queue/") \
                    and request.path.endswith("/api/json"):
                language = self._language(request)
                if language != "en":
                    response.set_data(json.dumps(jenkins_locale.localized(
                        json.loads(response.get_data()), language)))
        response.headers.setdefault("X-Jenkins", JENKINS_VERSION)
        if response.status_code == 200 and request.path.endswith("/api/json") \
                and self.phase is None and self.session_header:
            # hudson.model.Api.doJson -> setHeaders: X-Jenkins and X-Jenkins-Session on every
            # api/json answer (not on a 404 for an unknown object: Stapler answers it before
            # any Api is reached)
            response.headers["X-Jenkins-Session"] = self.session
        return response

    def _injected(self, request: Request) -> Response | None:
        if request.path == SIGN_IN_PATH:  # the proxy's own page, whoever asks
            return Response(SIGN_IN_PAGE, content_type="text/html; charset=utf-8")
        left, prefix, status = self._sign_in_pages
        if left > 0 and (prefix is None or request.path.startswith(prefix)):
            self._sign_in_pages = (left - 1, prefix, status)
            return Response(SIGN_IN_PAGE, status=status, content_type="text/html; charset=utf-8")
        left, prefix = self._sign_in_redirects
        if left > 0 and (prefix is None or request.path.startswith(prefix)):
            self._sign_in_redirects = (left - 1, prefix)
            target = quote(f"{_base(request)}{request.full_path.rstrip('?')}", safe="")
            return _redirect(f"{_base(request)}{SIGN_IN_PATH}?rd={target}")
        for failure in self._failures:
            if failure.path_prefix is None or request.path.startswith(failure.path_prefix):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return _error(failure.status, failure.body or _REASONS.get(failure.status, "Error"),
                              headers=failure.headers)
        return None

    def _checked(self, request: Request) -> Response | None:
        # jenkins.security.BasicHeaderProcessor: every request with a Basic Authorization
        # header is authenticated, on every URL and whatever anonymous may do there (a
        # Jenkins with no user here, `user=None`, whose anonymous may do all): a pair that
        # is not a user's with its API token (an empty one, "Basic Og==", too) is 401
        # "Invalid password/token for user: <name>"; no ':' in it, 401 "Malformed HTTP basic
        # Authorization header". A request without one (or another scheme, "not something
        # we care") goes on as anonymous.
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            auth = request.authorization
            if auth is None:
                return _error(401, "Malformed HTTP basic Authorization header",
                              headers={"WWW-Authenticate": 'Basic realm="Jenkins"'})
            if self.user is None or (auth.username, auth.password) != (self.user, self.token):
                return _error(401, f"Invalid password/token for user: {auth.username}",
                              headers={"WWW-Authenticate": 'Basic realm="Jenkins"'})
        elif self.user is not None:
            return _anonymous_refused(request)
        if request.method == "POST":
            # hudson.security.csrf.CrumbFilter: validateCrumb issues the crumb again for the
            # request's own session (a new one when its cookie names none alive), so a crumb
            # sent without the cookie it came with, or after its session ended, is refused
            web_session = self._web_session(request)
            if web_session is None or \
                    request.headers.get(CRUMB_FIELD) != self._crumb_for(web_session):
                return _error(403, "No valid crumb was included in the request")
        return None

    def _readable(self, job: str) -> bool:
        """Whether the API user may READ the job: neither it nor a folder above it is in
        `unreadable` (the folder's ACL is inherited: AbstractItem.getACL asks the parent's)."""
        hidden = {name.lower() for name in self.unreadable}
        parts = job.lower().split("/")
        return not any("/".join(parts[:i]) in hidden for i in range(1, len(parts) + 1))

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if (m := re.match(r"/((?:job/[^/]+/)+)", path)) and not self._readable(
                "/".join(m.group(1).strip("/").split("/")[1::2])):
            names = m.group(1).strip("/").split("/")[1::2]
            hidden = next(i for i in range(1, len(names) + 1)  # the first it may not READ
                          if not self._readable("/".join(names[:i])))
            if "/".join(names[:hidden]).lower() in {n.lower() for n in self.discoverable}:
                return Response("<!DOCTYPE html><html><head><title>Jenkins</title></head><body>"
                                "<h1>Access Denied</h1><p class=\"error\">Please login to "
                                f"access job {escape(names[hidden - 1])}</p></body></html>",
                                status=403, content_type="text/html;charset=utf-8")
            return _error(404, "Not Found")  # Jenkins.getItem: null without READ/DISCOVER
        if path == "/crumbIssuer/api/json":
            # req.getSession() in DefaultCrumbIssuer.issueCrumb: the request's session, or a
            # new one, whose cookie Jetty sets on the answer (Path: the context path)
            web_session = self._web_session(request)
            fresh = web_session is None
            if fresh:
                web_session = secrets.token_hex(16)
                self._web_sessions.add(web_session)
            answer = _json({"_class": "hudson.security.csrf.DefaultCrumbIssuer",
                            "crumb": self._crumb_for(web_session),
                            "crumbRequestField": CRUMB_FIELD})
            if fresh:
                answer.set_cookie(self.session_cookie, web_session,
                                  path=self.context_path or "/", httponly=True)
            return answer
        if path in ("/", "/computer/"):
            return Response("<html><body>Jenkins</body></html>", content_type="text/html")
        if path == "/api/json":
            return _json({"_class": "hudson.model.Hudson", "mode": "NORMAL",
                          "nodeDescription": "the Jenkins controller's built-in node",
                          "nodeName": "", "numExecutors": 0,
                          "quietingDown": self.quieting_down,
                          "useCrumbs": True, "useSecurity": True,
                          "jobs": self._items_in("")})
        if path in ("/me/api/json", "/whoAmI/api/json"):
            return _json({"_class": "hudson.model.User", "id": self.user,
                          "fullName": self.user, "absoluteUrl": f"{self.url}/user/{self.user}"})
        if path == "/computer/api/json":
            computers = {"_class": "hudson.model.ComputerSet", "busyExecutors": 0,
                         "displayName": "Nodes",
                         "totalExecutors": sum(n.num_executors for n in self.nodes.values()),
                         "computer": [self._built_in_computer()]
                         + [self._computer(n) for n in self.nodes.values()]}
            tree = request.args.get("tree")  # hudson.model.Api: only what the tree names
            return _json(_tree(computers, tree) if tree else computers)
        if path == "/computer/doCreateItem":
            return _post_only(method) or self._missing(
                "Agent/Create", "hudson.model.Computer.Create") or self._create_node(request)
        if m := re.fullmatch(r"/computer/([^/]+)/(api/json|jenkins-agent\.jnlp|slave-agent\.jnlp"
                             r"|doDelete)", path):
            return self._node_page(m.group(1), m.group(2), request)
        if m := re.fullmatch(r"/computer/([^/]+)/(toggleOffline|changeOfflineCause)?", path):
            return self._computer_action(m.group(1), m.group(2), request)
        if m := re.fullmatch(r"/((?:job/[^/]+/)+)(build|buildWithParameters)", path):
            job = self._named("/".join(m.group(1).strip("/").split("/")[1::2]))
            return _post_only(method) or self._build(job, m.group(2), request)
        if path == "/queue/cancelItem":
            return _post_only(method) or self._cancel_item(request.args.get("id", ""))
        if m := re.fullmatch(r"/((?:job/[^/]+/)+)(\d+)/(stop)?", path):
            job = self._named("/".join(m.group(1).strip("/").split("/")[1::2]))
            if m.group(3):
                return _post_only(method) or self._stop(job, int(m.group(2)), request)
            return self._build_page(job, int(m.group(2)))
        if m := re.fullmatch(r"/queue/item/(\d+)/api/json", path):
            if int(m.group(1)) in self.forgotten_items:
                return _error(404, "Not Found")
            block = self._node_block(int(m.group(1)))
            build = next((b for b in reversed(self.builds) if b.queue_id == int(m.group(1))),
                         None)
            # after a hard stop an id can be held twice: the newer item is the one Jenkins has
            return self._queue_item(int(m.group(1))) if block is None or (
                build is not None and build.made > block.made) \
                else _json(self._node_block_item(block))
        if path == "/queue/api/json":
            queue = {"_class": "hudson.model.Queue", "discoverableItems": [],
                     "items": [self._queued(b) for b in self.builds if b.state == "queued"]
                     + [self._node_block_item(b) for b in self.node_blocks
                        if b.state == "queued"]}
            tree = request.args.get("tree")  # hudson.model.Api: only what the tree names
            return _json(_tree(queue, tree) if tree else queue)
        if m := re.fullmatch(r"/((?:job/[^/]+/)+)(?:(\d+)/)?api/json", path):
            job = "/".join(m.group(1).strip("/").split("/")[1::2])
            folder = next((f for f in self._folders() if f.lower() == job.lower()), None)
            if m.group(2) is None and folder is not None:
                return self._folder_page(folder, request.args.get("tree"))
            return self._job_page(self._named(job), int(m.group(2)) if m.group(2) else None,
                                  request.args.get("tree"))
        return _error(404, "Not Found")

    def _built_in_computer(self) -> dict[str, Any]:
        """The built-in node's computer as Jenkins lists it first (ComputerSet.get_all:
        Jenkins.getComputers, the built-in one first): no executors here (numExecutors 0, as
        the controller's own should have), online (a LocalChannel), described by
        Messages.Hudson_NodeDescription. Its `oneOffExecutors` run the Pipeline runs in
        progress: a WorkflowRun is a Queue.FlyweightTask, which Queue.makeFlyWeightTaskBuildable
        starts on the built-in node's computer (kept for this even with no executors:
        AbstractCIBase.updateComputerList) as a OneOffExecutor; each exports its
        currentExecutable, the run with its own exported fields (number, url, actions...),
        between node blocks (an `input`, a `sleep`) as much as within one."""
        runs = [b for b in self.builds if b.state == "running" and b.number is not None
                and getattr(self.job(b.job), "kind", WORKFLOW_JOB) == WORKFLOW_JOB]
        # Executor.getCurrentExecutableForApi: null for a run of a job we may not READ
        one_off = [{"_class": "hudson.model.OneOffExecutor", "idle": False,
                    "likelyStuck": False, "number": -1, "progress": -1,
                    "currentExecutable": None if not self._readable(b.job) else {
                        "_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
                        "number": b.number, "building": True, "result": None,
                        "url": self._run_url(b), "actions": [{
                            "_class": "hudson.model.ParametersAction",
                            "parameters": self._parameter_values(b)}]}}
                   for b in runs]
        return {"_class": BUILT_IN_COMPUTER, "actions": [], "assignedLabels": [
                    {"name": "built-in"}], "description": "the Jenkins controller's built-in node",
                "displayName": BUILT_IN_NAME, "executors": [], "icon": "symbol-computer",
                "iconClassName": "icon-computer", "idle": True, "jnlpAgent": False,
                "launchSupported": True, "manualLaunchAllowed": True, "monitorData": {},
                "numExecutors": 0, "offline": False, "offlineCause": None,
                "offlineCauseReason": "", "oneOffExecutors": one_off,
                "temporarilyOffline": False, "absoluteRemotePath": None}

    def _dying_computer(self, name: str) -> FakeNode | None:
        """The computer of a deleted node while its executor still runs a Pipeline block:
        Jenkins keeps it, executors and all, until they are done ("find out what computers
        are removed, and kill off all executors. when all executors exit, it will be removed
        from the computers map. so don't remove too quickly": jenkins core, hudson.model.
        AbstractCIBase.updateComputerList; Jenkins.getComputer finds it by name), so its page
        shows the block until Jenkins cancels it (removed_node_timeout) or it ends. Only its
        api/json is served here (limit: computer/api/json does not list it)."""
        node = self.dying.get(name)
        if node is None or name in self.nodes:
            return None
        if not isinstance(node.running, FakeNodeBlock) or node.running.state != "running":
            del self.dying[name]  # its executor done: removed from the computers map
            return None
        return node

    def _computer(self, node: FakeNode) -> dict[str, Any]:
        labels = [{"name": node.name}] + [{"name": word} for word in node.label.split()]
        return {"_class": "hudson.slaves.SlaveComputer", "actions": [{}],
                "assignedLabels": labels, "description": node.description,
                "displayName": node.name, "executors": [{}] * node.num_executors,
                "icon": "symbol-computer-offline", "iconClassName": "icon-computer-x",
                "idle": True, "jnlpAgent": node.launcher == JNLP_LAUNCHER,
                "launchSupported": False, "manualLaunchAllowed": True, "monitorData": {},
                "numExecutors": node.num_executors, "offline": node.offline,
                "offlineCause": None, "offlineCauseReason": "", "oneOffExecutors": [],
                "temporarilyOffline": False, "absoluteRemotePath": None} \
            | self._computer_activity(node)

    def _language(self, request: Request) -> str:
        return jenkins_locale.request_language(request.headers.get("Accept-Language"),
                                               self.jvm_language, forced=self.language_forced)

    def _missing(self, permission: str, permission_id: str) -> Response | None:
        """Jenkins' answer to a user without `permission` (ACL.checkPermission throws
        AccessDeniedException3; AccessDeniedHandlerImpl answers 403 with its accessDenied page,
        the message "<user> is missing the <group>/<name> permission"
        (Messages.AccessDeniedException2_MissingPermission) and the headers
        X-You-Are-Authenticated-As and X-Required-Permission); None: the user has it."""
        if not self._lacks(permission):
            return None
        # The page is Jenkins/accessDenied.jelly, an l:layout page: like every page so drawn,
        # its <head> carries the crumb (lib/layout/layout.jelly: data-crumb-header and
        # data-crumb-value, CSRF protection being always on), so "crumb" is in the body of a
        # permission's 403 as well as in CrumbFilter's "No valid crumb" one.
        user = escape(self.user or "anonymous")
        page = (f'<!DOCTYPE html><html><head data-rooturl="" data-crumb-header="{CRUMB_FIELD}" '
                f'data-crumb-value="{self._crumb_for("page")}"><title>Jenkins</title></head><body>'
                f'<h1>Access Denied</h1><p class="error">{user} is missing the {permission} '
                "permission</p></body></html>")
        response = Response(page, status=403, content_type="text/html;charset=utf-8")
        # AccessDeniedException3.reportAsHeaders
        response.headers.update({
            "X-You-Are-Authenticated-As": self.user or "anonymous",
            "X-You-Are-In-Group-Disabled": "JENKINS-39402: use -Dhudson.security."
            "AccessDeniedException2.REPORT_GROUP_HEADERS=true or use /whoAmI to diagnose",
            "X-Required-Permission": permission_id})
        return response

    def _lacks(self, permission: str) -> bool:
        """Whether the user lacks `permission`: named in missing_permissions, or implying one
        that is (holding it would grant that one: Permission.impliedBy)."""
        return permission in self.missing_permissions or any(
            self._lacks(implied) for implied, by in _IMPLIED_BY.items() if by == permission)

    def _create_node(self, request: Request) -> Response:
        name = (request.values.get("name") or "").strip()
        if not name:
            return _error(400, "Query parameter 'name' is required")
        if name in self.nodes:  # worded in the request's language (jenkins_locale)
            return _error(400, jenkins_locale.error(
                f"Agent called ‘{name}’ already exists", self._language(request)))
        if request.values.get("type") != NODE_TYPE:
            return _error(400, f"No node type {request.values.get('type')!r}")
        try:
            form = json.loads(request.values["json"])
            executors = int(form.get("numExecutors") or 0)
        except (KeyError, ValueError, TypeError, AttributeError):
            return _error(400, "This page expects a form submission")
        if executors < 1:
            return _error(400, f"Invalid agent configuration for {name}. "
                               "Number of executors must be greater than 0.")
        if not (form.get("remoteFS") or "").strip():
            return _error(400, "Remote directory is mandatory.")
        self.nodes[name] = FakeNode(
            name=name, secret=self.jnlp_mac(name), label=form.get("labelString") or "",
            num_executors=executors, mode=form.get("mode", "NORMAL"),
            remote_fs=form["remoteFS"], launcher=(form.get("launcher") or {}).get(
                "stapler-class", ""), description=form.get("nodeDescription") or "")
        return _redirect(f"{self._own_base(request)}/computer/")

    def _node_page(self, name: str, page: str, request: Request) -> Response:
        node = self.nodes.get(name)
        dying = node is None and page == "api/json"
        if dying:
            node = self._dying_computer(name)
        if node is None:
            return _error(404, "Not Found")
        if page == "doDelete":
            if request.method != "POST":
                return _error(405, "This URL requires POST")
            if denied := self._missing("Agent/Delete", "hudson.model.Computer.Delete"):
                return denied
            del self.nodes[name]
            # ExecutorStepExecution.RemovedNodeListener (a NodeListener) hears the deletion
            # and schedules the cancel of the node block running there: removed_node_timeout
            if isinstance(node.running, FakeNodeBlock) and node.running.state == "running":
                node.running.node_removed_at = time.time()
                self.dying[name] = node
            # Nodes.removeNode disconnects the computer first (c.disconnect(OfflineCause.
            # create(Messages._Hudson_NodeBeingRemoved()))): a dying computer is offline
            node.offline, node.process = True, None
            return _redirect(f"{self._own_base(request)}/computer/")
        if page == "api/json":
            tree = request.args.get("tree")
            # a dying computer's node is gone: Computer.getDescription answers null
            # ("Node node = getNode(); return (node != null) ? node.getNodeDescription() :
            # null")
            shown = self._computer(node) | ({"description": None} if dying else {})
            return _json(_tree(shown, tree) if tree else shown)
        if node.launcher != JNLP_LAUNCHER:
            return _error(404, "Not Found")
        if denied := self._missing("Agent/Connect", "hudson.model.Computer.Connect"):
            return denied
        return Response(_JNLP.format(base=self.url, name=escape(name), secret=node.secret,
                                     remote_fs=escape(node.remote_fs)),
                        content_type="application/x-java-jnlp-file")

    def _build(self, name: str, endpoint: str, request: Request) -> Response:
        # jenkins.model.ParameterizedJobMixIn: doBuildWithParameters checks, in this order,
        # the job exists (Stapler: 404), isBuildable() (409, "<full name> is not buildable!"),
        # a ParametersDefinitionProperty (IllegalStateException "This build is not
        # parameterized!", answered 500 by Jenkins' error page); doBuild says "is not
        # buildable" without the "!".
        job = self.job(name)
        if job is None:
            return _error(404, "Not Found")
        # BuildAuthorizationToken.checkPermission(job, authToken, req, rsp), first in
        # doBuild/doBuildWithParameters: without a job token, job.checkPermission(Item.BUILD)
        # (jenkins core hudson/model/BuildAuthorizationToken.java). Checked per job or folder
        # (a folder's or project-based matrix); here for all jobs at once.
        if denied := self._missing("Job/Build", "hudson.model.Item.Build"):
            return denied
        if not job.buildable:
            return _stack_trace(409, "java.io.IOException",
                                f"{job.name} is not buildable" + "!" * (endpoint != "build"))
        if job.parameters is None and endpoint == "buildWithParameters":
            return self._oops("java.lang.IllegalStateException",
                              "This build is not parameterized!")
        # ParametersDefinitionProperty.buildWithParameters: one value per declared definition,
        # from the request or the definition's default; anything else the request carries is
        # dropped without a word (SECURITY-170, Jenkins 2.3). `build` reads no parameters
        # (its form submission for a parameterized job is not modelled: defaults are used).
        given = request.values if endpoint == "buildWithParameters" else {}
        parameters = {p: given.get(p, default) for p, default in (job.parameters or {}).items()}
        if job.vetoed:
            # ParametersDefinitionProperty._doBuildWithParameters: `Queue.Item item =
            # Jenkins.get().getQueue().schedule2(...).getItem(); if (item != null)
            # rsp.sendRedirect(SC_CREATED, ...item.getUrl()); else rsp.sendRedirect(".");`:
            # a vetoed schedule (QueueDecisionHandler.shouldSchedule false) has no item, and
            # "." from .../buildWithParameters is the job's own page, a 302 (jenkinsci/jenkins
            # core hudson/model/ParametersDefinitionProperty.java, hudson/model/Queue.java)
            return _redirect(f"{self._own_base(request)}{self._job_path(name)}")
        for queued in self.builds:  # Jenkins folds an identical request into the queued item
            if queued.state == "queued" and queued.job == name \
                    and queued.parameters == parameters:
                return _redirect(f"{self._own_base(request)}/queue/item/{queued.queue_id}/", 201)
        # ParameterizedJobMixIn.doBuildWithParameters(req, rsp, @QueryParameter TimeDuration
        # delay): without `delay`, the job's quiet period, i.e. Jenkins' global one (5 s by
        # default); TimeDuration.fromString takes "0", "0sec" or "0secs".
        delay = request.values.get("delay")
        quiet = self.quiet_period_seconds if delay is None \
            else int(re.sub(r"secs?$", "", delay.strip()) or 0)
        build = FakeBuild(name, parameters, self._take_queue_id(),
                          quiet_until=time.time() + quiet if quiet > 0 else 0.0,
                          started_by=ANONYMOUS if self.user is None else self.user)
        self.builds.append(build)
        if self.start_on_arrival:
            self.start_build(build.queue_id)
        elif self.taken_on_arrival and self.nodes[self.taken_on_arrival].running is None:
            self.begin_start(build.queue_id, self.taken_on_arrival)  # else it waits, queued
        return _redirect(f"{self._own_base(request)}/queue/item/{build.queue_id}/", 201)

    def _oops(self, exception: str, message: str) -> Response:
        """Jenkins' page for an exception a request raised (jenkins/model/Jenkins/oops.jelly,
        through InstallUncaughtExceptionHandler): status 500, "Oops!", a logging ID; the
        exception and its message only with show_stack_trace."""
        trace = (f"<h2>Stack trace</h2><pre>{escape(exception)}: {escape(message)}\n"
                 "\tat jenkins.model.ParameterizedJobMixIn.doBuildWithParameters("
                 "ParameterizedJobMixIn.java:451)</pre>") if self.show_stack_trace else ""
        body = ("<!DOCTYPE html><html><head><title>Jenkins</title></head><body>"
                "<h1><span>Oops!</span></h1><div id=\"error-description\">"
                "<h2>A problem occurred while processing the request</h2>"
                f"<p>Logging ID={uuid.uuid4()}</p></div>{trace}</body></html>")
        return Response(body, status=500, content_type="text/html;charset=utf-8")

    def _own_base(self, request: Request) -> str:
        """The base URL of Jenkins' own redirects (redirect_base)."""
        return self.redirect_base.rstrip("/") if self.redirect_base else _base(request)

    def _cancel_item(self, raw_id: str) -> Response:
        """Jenkins core's Queue.doCancelItem (2.x since the JENKINS-21311 rework, as in
        2.462): 204 when the item waited in the queue and is cancelled now; an item that
        left the queue is still found among the left items for about 5 minutes, and
        LeftItem.cancel() refuses, so Jenkins answers 500 "Could not cancel run for id N";
        an unknown id answers 404 "Provided id (N) not found". (Older cores answered a 302
        to the Referer, forwardToPreviousPage: python-jenkins' cancel_queue sends a Referer
        and swallows a 404 for that reason.) Any item is cancelled so, a Pipeline's node block
        too: doCancelItem takes the item by id whatever its task (Queue.getItem(long), then
        Queue.cancel(Item)), and the node step of its run fails ("Queue task was cancelled",
        ExecutorStepExecution.PlaceholderTask's QueueListener)."""
        try:
            number = int(raw_id)
        except ValueError:
            return _error(400, f"Illegal value for id: {raw_id!r}")
        build = next((b for b in reversed(self.builds) if b.queue_id == number), None)
        block = self._node_block(number)
        # after a hard stop an id can be held twice: the newer item is the one Jenkins has
        item = block if block is not None and (build is None or block.made > build.made) \
            else build
        if item is None or number in self.forgotten_items:
            return _error(404, f"Provided id ({number}) not found")
        if item.state != "queued":
            return _error(500, f"Could not cancel run for id {number}")
        item.state = "cancelled"
        self.cancelled_items.append(number)
        return Response("", status=204)

    def _stop(self, job: str, number: int, request: Request) -> Response:
        """Run.doStop / Executor.doStop: a running build is aborted (result ABORTED); a
        finished one is left alone; either way the answer is a 302 to the Referer, or to the
        build's page ("." relative to .../stop) without one (forwardToPreviousPage)."""
        build = next((b for b in self.builds if b.job == job and b.number == number
                      and not b.discarded), None)
        if build is None:
            return _error(404, "Not Found")
        if build.state == "running":
            build.state, build.result = "finished", "ABORTED"
            self.stopped_builds.append((job, number))
            # A Pipeline's node block waiting in the queue goes with its run: the aborted
            # step's ExecutorStepExecution.stop cancels its PlaceholderTask's item
            # (workflow-durable-task-step, Queue.cancel).
            self._run_ended(build)
        return _redirect(request.headers.get("Referer")
                         or f"{self._own_base(request)}{self._job_path(job)}{number}/")

    def _build_page(self, job: str, number: int) -> Response:
        build = next((b for b in self.builds if b.job == job and b.number == number
                      and not b.discarded), None)
        if build is None:
            return _error(404, "Not Found")
        return Response(f"<html><body>{escape(job)} #{number}</body></html>",
                        content_type="text/html;charset=utf-8")

    @staticmethod
    def _job_path(job: str) -> str:
        return "/" + job_url(job)

    def _blocked_by(self, build: FakeBuild) -> FakeBuild | None:
        """The running build of the same job that holds this one back, for a job that does
        not allow concurrent builds (Job.getCauseOfBlockage: !isConcurrentBuild() and a build
        in progress)."""
        job = self.declared.get(build.job)
        if job is None or job.concurrent:
            return None
        return next((b for b in self.builds if b.job == build.job and b.state == "running"),
                    None)

    def _queued(self, build: FakeBuild) -> dict[str, Any]:
        why = self._waiting_why(build.label or build.parameters.get("CI_AUTOSCALER_AGENT", ""))
        if (left := build.quiet_until - time.time()) > 0:
            # Queue.WaitingItem: Messages.Queue_InQuietPeriod, "In the quiet period. Expires in
            # {0}" (Util.getTimeSpanString: "4.9 sec")
            return {**self._queued_item(build, why=f"In the quiet period. Expires in "
                                                   f"{left:.1f} sec"),
                    "_class": "hudson.model.Queue$WaitingItem", "buildable": False,
                    "timestamp": int(build.quiet_until * 1000)}
        if (running := self._blocked_by(build)) is not None:
            # jenkins.model.BlockedBecauseOfBuildInProgress: "Build #{0} is already in
            # progress{1}", {1} " (ETA: ...)" from the executor, "N/A" with no estimate
            # (Executor.getEstimatedRemainingTime); the item is a Queue$BlockedItem.
            return {**self._queued_item(build, why=f"Build #{running.number} is already in "
                                                   "progress (ETA: N/A)"),
                    "_class": "hudson.model.Queue$BlockedItem", "blocked": True,
                    "buildable": False}
        if self.quieting_down:
            return self._shut_down_item(build)
        return self._queued_item(build, why=why)

    def _waiting_why(self, label: str) -> str:
        """Why a buildable item waits for an executor on `label`, as Jenkins words it
        (hudson.model.Queue.BuildableItem.getCauseOfBlockage, core 2.x): the label's nodes are
        those it names, a node's name being one of its labels (Label.getNodes); when exactly one
        node carries the label, the reason names that NODE, not the label:
          label offline (Label.isOffline: every node offline, or none), one node:
            BecauseNodeIsOffline, Messages Queue.NodeOffline "‘{node}’ is offline";
          label offline, no node: BecauseLabelIsOffline, Queue.LabelHasNoNodes
            "There are no nodes with the label ‘{label}’"; several: Queue.AllNodesOffline
            "All nodes of label ‘{label}’ are offline";
          online, one node: BecauseNodeIsBusy, Queue.WaitingForNextAvailableExecutorOn
            "Waiting for next available executor on ‘{node}’"; several: BecauseLabelIsBusy,
            the same message with the label
        (hudson.model.queue.CauseOfBlockage; strings in core's hudson/model/Messages.properties).
        With no agent at all, or for an item with no label (a job not restricted to one, a
        Pipeline's `node {}`), Jenkins names no label: getCauseOfBlockage reads
            List<Node> allNodes = jenkins.getNodes();   // agents only, not the built-in node
            if (allNodes.isEmpty()) label = null;  // no master/agent. pointless to talk about nodes
        and with `label` null answers CauseOfBlockage.createNeedsMoreExecutor(
        Messages._Queue_WaitingForNextAvailableExecutor()), "Waiting for next available
        executor" (Queue.WaitingForNextAvailableExecutor in Messages.properties), whatever
        label the item asks for."""
        if not self.nodes or not label:
            return NO_LABEL_WHY
        nodes = [n for n in self.nodes.values() if label in [n.name, *n.label.split()]]
        if all(n.offline or n.temporarily_offline for n in nodes):  # Computer.isOffline
            if len(nodes) == 1:
                return f"‘{nodes[0].name}’ is offline"
            return (f"All nodes of label ‘{label}’ are offline" if nodes
                    else f"There are no nodes with the label ‘{label}’")
        named = nodes[0].name if len(nodes) == 1 else label
        return f"Waiting for next available executor on ‘{named}’"

    def _shut_down_item(self, build: FakeBuild) -> dict[str, Any]:
        """An item while Jenkins quiets down (hudson.model.Queue, core 2.4xx): its reason is
        Messages.Queue_HudsonIsAboutToShutDown, "Jenkins is about to shut down"
        (Queue.isBlockedByShutdown). A Pipeline run's item (WorkflowJob is a FlyweightTask)
        leaves the waiting list as a BlockedItem, since makeBuildable refuses it; a freestyle
        job's stays a BuildableItem that LoadBalancer.sanitize maps to no executor, its `why`
        from BuildableItem.getCauseOfBlockage, which checks the shutdown first."""
        item = self._queued_item(build, why="Jenkins is about to shut down")
        job = self.declared.get(build.job)
        if job is None or job.kind == WORKFLOW_JOB:
            item.update({"_class": "hudson.model.Queue$BlockedItem", "blocked": True,
                         "buildable": False})
        return item

    def _parameter_values(self, build: FakeBuild) -> list[dict[str, Any]]:
        """A queue item's or run's ParametersAction's values as the API exports them: a
        StringParameterValue its `value`; the NodeLabel Parameter plugin's LabelParameterValue
        (and NodeParameterValue, its subclass) its `label`, the one field it exports
        (`@Exported(visibility = 3) private String label`), no `value`."""
        job = self.job(build.job)
        values = []
        for name, value in build.parameters.items():
            kind = job.parameter_type(name) if job is not None else "StringParameterDefinition"
            if kind in _PARAMETER_PACKAGES:
                values.append({"_class": f"{_PARAMETER_PACKAGES[kind]}."
                               f"{kind.replace('Definition', 'Value')}",
                               "name": name, "label": value})
            else:
                values.append({"_class": "hudson.model.StringParameterValue", "name": name,
                               "value": value})
        return values

    def _queued_item(self, build: FakeBuild, *, why: str) -> dict[str, Any]:
        return {"_class": "hudson.model.Queue$BuildableItem", "blocked": False,
                "buildable": True, "id": build.queue_id, "stuck": False,
                "inQueueSince": 1700000000000, "params": "".join(
                    f"\n{k}={v}" for k, v in build.parameters.items()),
                "actions": ([{"_class": "hudson.model.ParametersAction",
                              "parameters": self._parameter_values(build)}]
                            if build.parameters else [])
                + [_cause_action(build.started_by)],
                "task": {"_class": "hudson.model.FreeStyleProject",
                         "name": build.job.rsplit("/", 1)[-1], "url": self._job_url(build.job)},
                "url": f"queue/item/{build.queue_id}/", "why": why}

    def _job_url(self, job: str) -> str:
        return f"{self.url}/{job_url(job)}"

    def _queue_item(self, number: int) -> Response:
        build = next((b for b in reversed(self.builds) if b.queue_id == number), None)
        if build is None:
            return _error(404, "Not Found")
        if build.state == "queued":
            return _json(self._queued(build))
        item = self._queued_item(build, why="")
        item.update({"_class": "hudson.model.Queue$LeftItem", "buildable": False,
                     "cancelled": build.state == "cancelled", "why": None,
                     "executable": None if build.number is None else {
                         "_class": "hudson.model.FreeStyleBuild", "number": build.number,
                         "url": f"{self._job_url(build.job)}{build.number}/"}})
        return _json(item)

    def _job_page(self, name: str, number: int | None, tree: str | None) -> Response:
        job = self.job(name)
        if job is None:
            return _error(404, "Not Found")
        builds = [b for b in self.builds if b.job == name and b.number is not None
                  and not b.discarded]

        def page(b: FakeBuild) -> dict[str, Any]:
            # A freestyle run is an AbstractBuild, which exports the node it was built on
            # (getBuiltOnStr as builtOn; "" the built-in node); a Pipeline's WorkflowRun is
            # a plain Run, with no builtOn. Both export queueId (Run.getQueueId).
            freestyle = job.kind == FREESTYLE_JOB
            return {"_class": "hudson.model.FreeStyleBuild" if freestyle else
                    "org.jenkinsci.plugins.workflow.job.WorkflowRun", "number": b.number,
                    "queueId": b.queue_id, "building": b.state == "running",
                    # Run.getAbsoluteUrl, exported as url: under Jenkins' root URL
                    "result": b.result, "url": f"{self._job_url(name)}{b.number}/",
                    # Run.getTimestamp, a Calendar, exported as ms since the epoch
                    "timestamp": int((b.run_at or b.queued_at) * 1000),
                    **({"builtOn": b.node or ""} if freestyle else {}),
                    # the item's CauseAction goes with it into its run ("Started by user")
                    "actions": [{"_class": "hudson.model.ParametersAction",
                                 "parameters": self._parameter_values(b)},
                                _cause_action(b.started_by)]}
        if number is not None:
            build = next((b for b in builds if b.number == number), None)
            return _json(page(build)) if build is not None else _error(404, "Not Found")
        runs = sorted(builds, key=lambda b: -(b.number or 0))
        short = name.rsplit("/", 1)[-1]
        # Job's and ParameterizedJob's @Exported getters (buildable, disabled, property...);
        # a ParametersDefinitionProperty exports its parameterDefinitions, each its name,
        # type (the class's simple name), description and defaultParameterValue.
        body = {"_class": job.kind, "name": short, "fullName": name, "displayName": short,
                "url": self._job_url(name), "buildable": job.buildable,
                "disabled": job.disabled, "color": "disabled" if job.disabled else "blue",
                "inQueue": any(b.job == name and b.state == "queued" for b in self.builds),
                "property": ([] if job.parameters is None else [{
                    "_class": "hudson.model.ParametersDefinitionProperty",
                    "parameterDefinitions": [{
                        "_class": _PARAMETER_PACKAGES.get(job.parameter_type(p), "hudson.model")
                        + "." + job.parameter_type(p),
                        "defaultParameterValue": {
                            "_class": "hudson.model.StringParameterValue", "name": p,
                            "value": default},
                        "description": "", "name": p, "type": job.parameter_type(p)}
                        for p, default in job.parameters.items()]}])
                + [{"_class": cls} for cls in job.properties],
                "builds": [page(b) for b in runs[:JOB_PAGE_BUILDS]]}
        if not tree:
            return _json(body)
        # Job.getBuilds is exported as `allBuilds` (visibility -2: shown only when a tree names
        # it), every run kept, newest first; Stapler's Range ({M,N}) applies to it as to
        # any list (org.kohsuke.stapler.export.Range: elements M to N-1, fewer at the end).
        return _json(_tree({**body, "allBuilds": [page(b) for b in runs]}, tree))

    def _folder_page(self, name: str, tree: str | None) -> Response:
        short = name.rsplit("/", 1)[-1]
        body = {"_class": FOLDER, "name": short, "fullName": name, "displayName": short,
                "url": self._job_url(name), "jobs": self._items_in(name)}
        return _json(_tree(body, tree) if tree else body)

    def _items_in(self, folder: str) -> list[dict[str, Any]]:
        """The declared jobs and folders right inside `folder` ("" for the top level)."""
        prefix = f"{folder}/" if folder else ""
        names = {prefix + n[len(prefix):].split("/")[0] for n in self.declared
                 if n.startswith(prefix)}
        folders = self._folders()
        return [{"_class": FOLDER if n in folders else self.declared[n].kind,
                 "name": n.rsplit("/", 1)[-1], "url": self._job_url(n)}
                for n in sorted(names)]


    # ---- agents that connect, and the queue that hands them work ----------------------------

    def queue_node_block(self, job: str, *, label: str,
                         parameters: dict[str, str] | None = None) -> FakeNodeBlock:
        """A Pipeline run of `job` has started (on the controller) and its ``node(label)``
        block now waits in the queue for an executor on `label` ("": a bare ``node {}``)."""
        with self._lock:
            run = FakeBuild(job, dict(parameters or {}), self._take_queue_id(), state="running")
            run.number = 1 + max((b.number or 0 for b in self.builds if b.job == job), default=0)
            run.run_at = time.time()
            block = FakeNodeBlock(self._take_queue_id(), run, label)
            self.builds.append(run)
            self.node_blocks.append(block)
            return block

    def start_pipeline(self, queue_id: int) -> FakeNodeBlock:
        """A Pipeline's queued build starts as Jenkins starts one: its item leaves the queue at
        once, the run going on on the controller (WorkflowRun is a Queue.FlyweightTask: no
        executor of an agent needed), and its ``agent { label params.CI_AUTOSCALER_AGENT }``
        block waits as an item of its own on that label (ExecutorStepExecution.
        PlaceholderTask) until `dispatch` hands it to an agent."""
        with self._lock:
            run = self.start_build(queue_id)
            block = FakeNodeBlock(self._next_queue_id, run,
                                  run.label or run.parameters["CI_AUTOSCALER_AGENT"])
            self._next_queue_id += 1
            self.node_blocks.append(block)
            return block

    def start_pipeline_on_controller(self, queue_id: int) -> FakeBuild:
        """A Pipeline's queued build starts (its item leaves the queue at once, as in
        `start_pipeline`) and runs steps on the controller before any ``node`` block: an
        ``input`` waiting for a person, a ``sleep``, a ``milestone``, or a declarative
        ``agent none`` whose first stage has no agent. Such steps need no executor of an
        agent (workflow-basic-steps' SleepStep, pipeline-input-step's InputStep run in the
        CPS VM thread on the controller); no item waits on the agent's label until the run
        reaches its first block (`next_node_block`)."""
        with self._lock:
            return self.start_build(queue_id)

    def next_node_block(self, run: FakeBuild, label: str | None = None) -> FakeNodeBlock:
        """The running Pipeline `run` reaches a ``node(label) {}`` block (the first after
        steps on the controller, or one after another: a block's executor is given back when
        its body ends, ExecutorStepExecution's PlaceholderTask ending its work unit, and the
        next block asks anew). It waits in the queue as an item of its own, on `label`
        (default: the run's agent label, ``node(params.CI_AUTOSCALER_AGENT)``; declarative
        per-stage ``agent { label ... }`` is the same step), with a new queue id."""
        with self._lock:
            assert run.state == "running", "only a running Pipeline asks for a node"
            block = FakeNodeBlock(self._take_queue_id(), run,
                                  label if label is not None else
                                  run.label or run.parameters["CI_AUTOSCALER_AGENT"])
            self.node_blocks.append(block)
            return block

    def replay(self, queue_id: int) -> FakeNodeBlock:
        """Replay (or Rebuild) the run that had this queue item: a new run of the same job with
        the same parameters (workflow-cps ReplayAction.run2 copies the ParametersAction), whose
        ``agent { label params.CI_AUTOSCALER_AGENT }`` block waits on the old run's agent."""
        with self._lock:
            old = self._by_queue_id(queue_id)
            return self.queue_node_block(old.job, label=old.parameters["CI_AUTOSCALER_AGENT"],
                                         parameters=old.parameters)

    def finish_node_block(self, block: FakeNodeBlock) -> None:
        """The node block's body is done: its executor is free; the run goes on without it."""
        with self._lock:
            block.state = "done"
            if block.node is not None and self.nodes.get(block.node) is not None \
                    and self.nodes[block.node].running is block:
                self.nodes[block.node].running = None

    def removed_node_timeout(self) -> list[FakeNodeBlock]:
        """The minutes after a node's deletion pass (ExecutorStepExecution.
        TIMEOUT_WAITING_FOR_NODE_MILLIS, 5 min by default): each Pipeline node block that ran
        on a node deleted since (its PlaceholderExecutable on the gone computer's executor),
        that computer offline, has its body cancelled with a RemovedNodeCause
        (jenkinsci/workflow-durable-task-step-plugin, src/main/java/org/jenkinsci/plugins/
        workflow/support/steps/ExecutorStepExecution.java: RemovedNodeListener.onDeleted
        schedules, on jenkins.util.Timer, `body.cancel(new RemovedNodeCause())` for a computer
        that "was missing or online" skipped; RemovedNodeCause, "Agent was removed", is an
        AgentErrorCondition.Retryable). The cancel is a FlowInterruptedException with result
        ABORTED (BodyExecution.cancel(CauseOfInterruption...)), which reaches the block's
        enclosing steps:

        - inside `retry(count: N, conditions: [agent()])` with tries left (workflow-basic-steps
          RetryStepExecution's callback runs the body again when one of its conditions
          matches; AgentErrorCondition.test, in workflow-durable-task-step's support/steps/
          AgentErrorCondition.java, matches a FlowInterruptedException with a Retryable
          cause, a closed channel, an AgentOfflineException): the body runs again, so its
          `node(label)` step schedules a new PlaceholderTask on the same label, a new queue
          item of the same run (its label the one the step asked, not the lost node's self
          label: a new ExecutorStepExecution);
        - otherwise the interruption ends the run with its result, ABORTED (the Kubernetes
          plugin's `kubernetes()` condition would not match either: it is for its own
          KubernetesSlave agents only, KubernetesAgentErrorCondition).

        Our own abort (job/.../N/stop, `_stop`) is a user's interruption (Executor.interrupt
        with CauseOfInterruption.UserInterruption), no Retryable cause: no retry retries it.
        A block resumed by a restart (`come_up`: its node deleted before, the listener's
        timer lost with the old process; or its node there, its agent not back) still waits
        in the queue on that node's label; the resume gives up on it the same way, its item
        cancelled (ExecutorStepDynamicContext.resume: the start condition not met within
        TIMEOUT_WAITING_FOR_NODE_MILLIS, whether the node is there or not).
        Returns the blocks queued again."""
        again = []
        with self._lock:
            for block in [b for b in self.node_blocks if b.run.state == "running" and (
                    (b.node_removed_at is not None and b.state == "running")
                    or (b.resumed and b.state == "queued"))]:
                back = self.nodes.get(block.node or block.label)
                if back is not None and not back.offline:  # c.isOnline(): skipped
                    continue
                label = block.label
                if block.resumed:  # its retry asks the step's own label again
                    block.state = "cancelled"
                    label = block.step_label or label
                else:
                    block.state, block.node_removed_at = "done", None
                run = block.run
                run.agent_errors += 1
                job = self.job(run.job)
                if job is not None and job.agent_retry_count - run.agent_errors > 0:
                    retried = FakeNodeBlock(self._take_queue_id(), run, label)
                    self.node_blocks.append(retried)
                    again.append(retried)
                else:
                    run.state, run.result = "finished", "ABORTED"
                    self._run_ended(run)
        return again

    def dispatch(self) -> list[tuple[int, str]]:
        """One pass of Jenkins' queue maintenance: each queued item, oldest first, goes to the
        first node (by name) that may take it; returns (queue item id, node) for each.

        Which node may take an item (hudson.model.Queue.JobOffer#getCauseOfBlockage): the node
        has the item's label (Node#canTake: `l.contains(this)`; a node's name is a label of its
        own), it is not offline (Computer#isOffline: temporarilyOffline || no channel), it
        accepts tasks, and its executor is idle (workUnit == null). An item that leaves the
        queue becomes a run (a build), or lets its Pipeline run go on on that node (a node
        block)."""
        started = []
        with self._lock:
            waiting = [(b.queue_id, b) for b in self.builds if b.state == "queued"] + \
                [(b.queue_id, b) for b in self.node_blocks if b.state == "queued"]
            for queue_id, item in sorted(waiting, key=lambda pair: pair[0]):
                label = item.label if isinstance(item, FakeNodeBlock) else \
                    item.label or item.parameters.get("CI_AUTOSCALER_AGENT", "")
                node = next((n for _, n in sorted(self.nodes.items())
                             if label in [n.name, *n.label.split()] and not n.offline
                             and not n.temporarily_offline and n.running is None), None)
                if node is None or (isinstance(item, FakeBuild) and not self._startable(item)):
                    continue
                if isinstance(item, FakeBuild) and self._disabled(item.job):
                    # Executor.run: the task's createExecutable() is null for a disabled job
                    # (ParameterizedJob.createExecutable), logged "cannot be run (for example
                    # because it is disabled)": the item has left the queue, not cancelled,
                    # with no executable, and the executor is free again at once
                    item.state = "unrun"
                    started.append((queue_id, node.name))
                    continue
                if isinstance(item, FakeBuild):
                    self.start_build(queue_id)
                item.node, node.running = node.name, item
                if isinstance(item, FakeNodeBlock):
                    item.state = "running"
                started.append((queue_id, node.name))
        return started

    def _disabled(self, name: str) -> bool:
        job = self.declared.get(name)
        return job is not None and job.disabled

    def _startable(self, build: FakeBuild) -> bool:
        """Whether queue maintenance may start this build now: not in its quiet period, not
        blocked, Jenkins not quieting down (what start_build asserts)."""
        return not self.quieting_down and self._blocked_by(build) is None \
            and time.time() >= build.quiet_until

    def _run_ended(self, run: FakeBuild) -> None:
        """A run that ends frees the executor it, or its node block, held, and its job's build
        discarder runs (_discard_old_runs)."""
        self._discard_old_runs(run.job)
        for block in self.node_blocks:
            if block.run is run and block.state in ("queued", "running"):
                block.state = "done" if block.state == "running" else "cancelled"
        for node in self.nodes.values():
            if node.running is run or (isinstance(node.running, FakeNodeBlock)
                                       and node.running.run is run):
                node.running = None

    def _discard_old_runs(self, name: str) -> None:
        """The job's build discarder, run as a run of it is finalized (jenkins core
        GlobalBuildDiscarderListener.onFinalized -> Job.logRotate, on a timer thread, right
        after the Notification plugin sent COMPLETED; here when the test ends the run): with
        "keep N builds", every run after the N newest is deleted (hudson.tasks.LogRotator
        .perform: job.getBuilds().subList(numToKeep, size)); the N newest counted include
        runs still building, and a run is kept that is building, the last successful
        (SUCCESS or UNSTABLE) or the last stable (SUCCESS) one (LogRotator.shouldKeepRun)."""
        job = self.declared.get(name)
        if job is None or job.num_to_keep is None:
            return
        runs = sorted((b for b in self.builds if b.job == name and b.number is not None
                       and not b.discarded), key=lambda b: -(b.number or 0))
        done = [b for b in runs if b.state == "finished"]
        last_successful = next((b for b in done if b.result in ("SUCCESS", "UNSTABLE")), None)
        last_stable = next((b for b in done if b.result == "SUCCESS"), None)
        for run in runs[job.num_to_keep:]:
            if run.state == "finished" and run is not last_successful \
                    and run is not last_stable:
                run.discarded = True

    def _node_block(self, queue_id: int) -> FakeNodeBlock | None:
        return next((b for b in reversed(self.node_blocks) if b.queue_id == queue_id), None)

    def _run_url(self, run: FakeBuild) -> str:
        return f"{self._job_url(run.job)}{run.number}/"

    def _executable(self, item: Any) -> dict[str, Any]:
        """An executor's currentExecutable, and a left queue item's executable: a build, or
        for a node block ExecutorStepExecution.PlaceholderTask.PlaceholderExecutable, whose
        exported fields are the run's number, names, estimated duration, start time and
        (as `url`) the run's absolute URL."""
        if isinstance(item, FakeNodeBlock):
            name = f"{item.run.job.rsplit('/', 1)[-1]} #{item.run.number}"
            return {"_class": "org.jenkinsci.plugins.workflow.support.steps."
                              "ExecutorStepExecution$PlaceholderTask$PlaceholderExecutable",
                    "number": item.run.number, "fullDisplayName": name,
                    "displayName": name, "estimatedDuration": -1, "timestamp": 1700000000000,
                    "url": self._run_url(item.run)}
        return {"_class": "hudson.model.FreeStyleBuild", "number": item.number,
                "url": self._run_url(item)}

    def _computer_activity(self, node: FakeNode) -> dict[str, Any]:
        """The fields of computer/NAME/api/json that say what the agent does: hudson.model.
        Computer exports `offline` (temporarilyOffline || no channel), `temporarilyOffline`,
        `idle`, and each Executor its `currentExecutable`, `idle` and `number`;
        `offlineCauseReason` (Computer.getOfflineCauseReason) is the offline cause's text with
        "Disconnected by USER : " cut off, so the offlineMessage alone, "" when online."""
        busy = node.running is not None
        # an executor whose Run is not made yet (begin_start) names no currentExecutable
        made = not isinstance(node.running, FakeBuild) or node.running.number is not None
        shown = busy and made and self._readable(
            (node.running.run if isinstance(node.running, FakeNodeBlock) else node.running).job)
        executor = {"currentExecutable": self._executable(node.running) if shown else None,
                    "idle": not busy, "likelyStuck": False, "number": 0,
                    "progress": 50 if busy else -1}
        return {"offline": node.offline or node.temporarily_offline,
                "temporarilyOffline": node.temporarily_offline, "idle": not busy,
                "executors": [executor] + [{}] * (node.num_executors - 1),
                "offlineCause": self._offline_cause(node),
                "offlineCauseReason": node.offline_message if node.temporarily_offline else
                _CONNECTION_BROKEN if node.channel_lost_at is not None else ""}

    @staticmethod
    def _offline_cause(node: FakeNode) -> dict[str, Any] | None:
        """Computer.getOfflineCause (@Exported; hudson.slaves.OfflineCause is an @ExportedBean
        exporting `timestamp`, in ms): the cause a temporary offline was given
        (Computer.doToggleOffline: an OfflineCause.UserCause, whose `description` is exported)
        is shown over any other: since core 2.482 it is the node's own (Node.
        setTemporaryOfflineCause; setTemporarilyOffline is deprecated), kept apart from the
        computer's offlineCause, and Computer.getOfflineCause returns the node's temporary
        cause if it has one, else the computer's; so once brought back, a ChannelTermination
        it had shows again. Else a channel closed under it (ChannelTermination, which also exports the
        exception, `cause`: left out here, no caller asks for it), else none. `_class` is
        there because the object's class is not the declared OfflineCause (Stapler's
        ClassAttributeBehaviour.IF_NEEDED, as Jenkins' Api uses it)."""
        if node.temporarily_offline:
            return {"_class": "hudson.slaves.OfflineCause$UserCause",
                    "timestamp": int(node.offline_since * 1000),
                    "description": f"Disconnected by admin : {node.offline_message}"}
        if node.channel_lost_at is not None:
            return {"_class": CHANNEL_TERMINATION, "timestamp": int(node.channel_lost_at * 1000)}
        return None

    def _computer_action(self, name: str, action: str | None, request: Request) -> Response:
        """computer/NAME/ (its page), computer/NAME/toggleOffline and changeOfflineCause:
        hudson.model.Computer#doToggleOffline is @RequirePOST, flips temporarilyOffline with the
        offlineMessage as the cause, and answers HttpResponses.redirectToDot() (302 to the
        computer's page); #doChangeOfflineCause, @RequirePOST too, sets it offline with that
        cause whatever it was (setTemporarilyOffline(true, cause)), and answers the same."""
        node = self.nodes.get(name)
        if node is None:
            return _error(404, "Not Found")
        if action is None:
            return Response(f"<html><body>{escape(name)}</body></html>", content_type="text/html")
        if request.method != "POST":
            return _error(405, "This URL requires POST")
        back = action == "toggleOffline" and node.temporarily_offline
        if denied := self._missing("Agent/Connect", "hudson.model.Computer.Connect") if back \
                else self._missing("Agent/Disconnect", "hudson.model.Computer.Disconnect"):
            return denied
        node.temporarily_offline = action == "changeOfflineCause" or not node.temporarily_offline
        node.offline_message = request.args.get("offlineMessage", "")
        # Node.setTemporaryOfflineCause (core 2.482 on): the node's cause, set or cleared; the
        # computer's offlineCause (a ChannelTermination) is left as it was (_offline_cause)
        node.offline_since = time.time()
        return _redirect(f"{self._own_base(request)}/computer/{name}/")

    def _node_block_item(self, block: FakeNodeBlock) -> dict[str, Any]:
        """A node block in the queue (hudson.model.Queue$BuildableItem) or gone from it
        (Queue$LeftItem, kept about 5 minutes). Its task is ExecutorStepExecution.PlaceholderTask,
        which exports `url` (the run's URL, relative), `name` and `fullDisplayName` ("part of"
        the run, Messages.ExecutorStepExecution_PlaceholderTask_displayName); the item carries no
        parameters (the run has them)."""
        why = self._waiting_why(block.label)
        name = f"part of {block.run.job.rsplit('/', 1)[-1]} #{block.run.number}"
        item = {"_class": "hudson.model.Queue$BuildableItem", "actions": [], "blocked": False,
                "buildable": True, "id": block.queue_id, "inQueueSince": 1700000000000,
                "params": "", "stuck": False, "url": f"queue/item/{block.queue_id}/",
                "why": why,
                "task": {"_class": "org.jenkinsci.plugins.workflow.support.steps."
                                   "ExecutorStepExecution$PlaceholderTask",
                         "name": name, "fullDisplayName": name,
                         "url": f"{job_url(block.run.job)}{block.run.number}/"}}
        if block.state != "queued":
            item.update({"_class": "hudson.model.Queue$LeftItem", "buildable": False,
                         "cancelled": block.state == "cancelled", "why": None,
                         "executable": None if block.state == "cancelled"
                         else self._executable(block)})
        return item

    # ---- a controller restart ----------------------------------------------------------------

    def save_queue(self) -> None:
        """Jenkins writes its queue to queue.xml (Queue.save): the items queued now, and the id
        counter. It does so as it shuts down (Jenkins.cleanUp), and while it runs at most
        DELAY_SECONDS (-Dhudson.model.Queue.Saver.DELAY_SECONDS, 60 by default) after an item
        entered or left the queue (Queue.Saver, a QueueListener: onEnterWaiting and onLeft
        schedule one save on jenkins.util.Timer); here when the test says so."""
        with self._lock:
            self._saved_queue = {b.queue_id for b in self.builds if b.state == "queued"} | \
                {b.queue_id for b in self.node_blocks if b.state == "queued"}
            self._saved_counter = self._next_queue_id - 1

    def go_down(self, *, hard: bool = False) -> None:
        """The controller's process stops (an upgrade, a plugin install, its pod rescheduled;
        often after "Prepare for shutdown"); it saves its queue first (save_queue), unless
        `hard`: killed without its shutdown (SIGKILL, OOM-killed, its node failed), what it
        queued since its last save is lost when it comes up. Nothing listens on its port any
        more: a new connection is refused, and one that was open (python-jenkins'
        keep-alive) is closed under its client. Inbound agents lose their channel: every
        computer is offline until its agent connects again (`connect_agent`;
        jenkins/inbound-agent retries unless -noReconnect). A build the test finishes
        meanwhile sends no Notification event: the plugin runs in the controller."""
        if not hard:
            self.save_queue()  # Jenkins.cleanUp: "Persisting build queue"
        with self._lock:
            self.phase = "down"
            self._hard_stop = hard
            for node in self.nodes.values():
                node.offline = True  # SlaveComputer: no channel, so isOffline()
                node.process = None
                # the new process makes new computers, with no offline cause (Computer's
                # offlineCause is not saved: it is volatile state of the running controller)
                node.channel_lost_at = None
        self._close_port()

    def cut_off(self) -> None:
        """The controller cannot be reached, and runs on: its Service has no ready endpoint
        (a readiness probe failing through a long GC pause), the proxy or ingress before it
        restarts, the network between drops. A new connection is refused, and one that was
        open is closed under its client, as `go_down` does; unlike a restart, nothing of the
        controller changes: its queue, builds, timers (RemovedNodeListener's cancel of a
        deleted node's block still comes: `removed_node_timeout`), agents' channels (they
        reach it by another way) and its session (Jenkins.SESSION_HASH is set once per start
        of the process) stay. `reachable` ends it."""
        self._close_port()

    def _close_port(self) -> None:
        """Nothing listens on the port any more (kept for the next `start`): a new connection
        is refused, and one that was open (python-jenkins' keep-alive) is closed under its
        client."""
        connections = set(getattr(self._server, "open_connections", ()))
        self.stop()
        self._port_hold.keep(self._port)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def reachable(self) -> None:
        """The outage of `cut_off` ends: the same controller answers again, same session."""
        self.start()

    def come_up(self) -> None:
        """A new controller process listens on the same port and loads: until `finish_loading`
        every URL answers HTTP 503 with Jenkins' loading page, whatever the method, without
        asking for credentials or a crumb (hudson.util.HudsonIsLoading.doDynamic sets
        SC_SERVICE_UNAVAILABLE and renders its index.jelly, "Please wait while Jenkins is
        getting ready to work"; it is Stapler's root object until Jenkins has loaded).

        What the new process has, from what the old one saved:
        - the queue from queue.xml: Queue.load() unmarshals each item with its own `id` and
          enters it again (item.enter), and QueueIdStrategy restores the next id, so a queued
          item keeps its id and new ones do not reuse old ids; the left items (a cache in
          memory, kept about 5 minutes) are gone: their pages answer 404;
        - builds from build.xml: a Pipeline build resumes; the work it had on an agent's
          executor is scheduled again as a new queue item (a new id) on that node's own label
          (workflow-durable-task-step's ExecutorPickle / ExecutorStepDynamicContext: "the task
          is rescheduled", assigned to Node#getSelfLabel), which waits until the agent is
          back (`dispatch` then hands it to it); a running freestyle build is lost, loaded as
          completed with result FAILURE (Run.reload: "defensive measure", the result a
          running build never wrote); it never ends by itself, so no COMPLETED is sent;
        - nodes from nodes/NAME/config.xml (the same JNLP secret: a MAC of the name under a
          persisted key), every computer offline;
        - no web session: crumbs issued before are refused (403 "No valid crumb");
        - a new Jenkins.SESSION_HASH (`session`);
        - folders loaded from disk, whose items are found in their name's exact case
          (`folders_loaded`).

        After a hard stop, the queue is what queue.xml held (Queue.load: the items of its
        last save, WaitingItem.COUNTER set to the counter it saved; no queue.xml, nothing and
        a counter from 0): an item queued since is gone, its page 404 and no run names it,
        and the next items take its id again. (Limit: an item saved queued that started
        since is not brought back as a second item, as Jenkins would.)"""
        with self._lock:
            self.phase = "loading"
            self.session = secrets.token_hex(4)
            self.folders_loaded = True  # AbstractFolder.onLoad: loadChildren's map
            if self._hard_stop:
                saved = self._saved_queue or set()
                lost = [b for b in self.builds if b.state == "queued" and b.queue_id not in saved]
                self.lost_items.extend(lost)
                self.builds = [b for b in self.builds if b not in lost]
                self.node_blocks = [b for b in self.node_blocks
                                    if b.state != "queued" or b.queue_id in saved]
                self._next_queue_id = self._saved_counter + 1
                self._hard_stop = False
            self.forgotten_items |= {b.queue_id for b in self.builds if b.state != "queued"} \
                | {b.queue_id for b in self.node_blocks if b.state != "queued"}
            for build in self.builds:
                job = self.declared.get(build.job)
                if build.state == "running" and job is not None and job.kind == FREESTYLE_JOB:
                    build.state, build.result = "finished", "FAILURE"
                    self._run_ended(build)
            for node in self.nodes.values():
                held, node.running = node.running, None
                if held is None:
                    continue
                run = held.run if isinstance(held, FakeNodeBlock) else held
                if isinstance(held, FakeNodeBlock):
                    held.state = "done"
                # resumed on the node's own label, given up on 5 minutes on unless its agent
                # reconnects (ExecutorStepDynamicContext.resume; removed_node_timeout)
                self.node_blocks.append(FakeNodeBlock(
                    self._take_queue_id(), run, node.name, resumed=isinstance(held, FakeNodeBlock),
                    step_label=held.step_label or held.label
                    if isinstance(held, FakeNodeBlock) else ""))
            self.dying.clear()  # a new process: no computer of a deleted node
            # A block whose node was deleted before the stop: RemovedNodeListener's cancel
            # was a jenkins.util.Timer task in the old process, lost with it. The run resumes
            # the block as any (ExecutorStepDynamicContext.resume schedules its PlaceholderTask
            # again, its label the node's self-label since the block ran there: "Initially set
            # to ExecutorStep#getLabel ...; later switched to actual self-label when block
            # runs"), and gives up on it TIMEOUT_WAITING_FOR_NODE_MILLIS after the resume
            # ("... has been removed for 5 min, assuming it is not coming back":
            # FlowInterruptedException(ABORTED, RemovedNodeCause), which retry(agent())
            # retries): removed_node_timeout. (jenkinsci/workflow-durable-task-step-plugin,
            # support/steps/ExecutorStepDynamicContext.java, ExecutorStepExecution.java.)
            for block in [b for b in self.node_blocks if b.state == "running"
                          and b.node_removed_at is not None and b.node not in self.nodes]:
                block.state, block.node_removed_at = "done", None
                self.node_blocks.append(FakeNodeBlock(self._take_queue_id(), block.run,
                                                      block.node or "", resumed=True,
                                                      step_label=block.step_label
                                                      or block.label))
            self._salt = secrets.token_hex(16)
            self._web_sessions.clear()  # Jetty keeps its sessions in memory
        self.start()

    def finish_loading(self) -> None:
        """Jenkins has loaded: it answers as before (agents still offline until they connect)."""
        with self._lock:
            self.phase = None

    def restart(self, *, hard: bool = False) -> None:
        """go_down, come_up and finish_loading at once."""
        self.go_down(hard=hard)
        self.come_up()
        self.finish_loading()

    def _loading_page(self) -> Response | None:
        """While loading: the 503 of hudson.util.HudsonIsLoading (its index.jelly in the page
        layout, text from its index.properties)."""
        if self.phase != "loading":
            return None
        body = ("<!DOCTYPE html><html><head><title>Starting Jenkins</title></head><body>"
                "<div id=\"main-panel\"><h1>Please wait while Jenkins is getting ready to work"
                "<span id=\"progress\">...</span></h1><p>Your browser will reload automatically "
                "when Jenkins is ready.</p></div></body></html>")
        return Response(body, status=503, content_type="text/html;charset=utf-8")


class _QuietHandler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        getattr(self.server, "open_connections", set()).add(self.connection)

    def finish(self) -> None:
        getattr(self.server, "open_connections", set()).discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the test reads ``requests``; no access log on stderr


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


# Where a parameter definition class lives when not in Jenkins core (hudson.model)
_PARAMETER_PACKAGES = {"LabelParameterDefinition": "org.jvnet.jenkins.plugins.nodelabelparameter",
                       "NodeParameterDefinition": "org.jvnet.jenkins.plugins.nodelabelparameter"}


def job_url(job: str) -> str:
    """A job's URL relative to Jenkins' root, as Jenkins gives it out (queue items' tasks,
    runs, notifications): each name of "folder/name" escaped by Util.rawEncode
    (AbstractItem.getShortUrl: "job/" + Util.rawEncode(getName()) + "/"): "Team A/my build"
    -> "job/Team%20A/job/my%20build/".
    """
    return "".join(f"job/{raw_encode(part)}/" for part in job.split("/"))


# What Util.rawEncode leaves as it is besides letters and digits (its uriMap: "so alphanumeric
# and !@$&*()-_=+',. are not encoded"); everything else, '~' and non-ASCII (UTF-8) included,
# is escaped with upper-case hex digits.
_RAW_ENCODE_SAFE = "!@$&*()-_=+',."


def raw_encode(name: str) -> str:
    """jenkins core hudson.Util.rawEncode: Python's quote, but '~' escaped too (quote never
    escapes it)."""
    return quote(name, safe=_RAW_ENCODE_SAFE).replace("~", "%7E")


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), content_type="application/json;charset=utf-8")


# Permission.impliedBy among the permissions the fake checks (jenkins core
# hudson/model/Computer.java: CONNECT is declared with DISCONNECT as the one implying it)
_IMPLIED_BY = {"Agent/Connect": "Agent/Disconnect"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    text = (f"<html><head><title>Error {status} {escape(message)}</title></head><body>"
            f"<h2>HTTP ERROR {status} {escape(message)}</h2></body></html>")
    response = Response(text, status=status, content_type="text/html;charset=utf-8")
    response.headers.update(headers or {})
    if status == 400:  # Jenkins' error page; header values are Latin-1, like Jetty sends them
        response.headers.setdefault(
            "X-Error", message.encode("latin-1", "replace").decode("latin-1"))
    return response


def _anonymous_refused(request: Request) -> Response:
    """Jenkins' answer to a call it took as anonymous, anonymous lacking Overall/Read (every
    Jenkins with security on, the default): HudsonAuthenticationEntryPoint.commence answers 403
    with a white page that sends a browser to the login page (Util.printRedirect,
    "Authentication required") and, as the cause is an AccessDeniedException3, its
    reportAsHeaders: the user (anonymous) and the permission needed, as for a signed-in user
    lacking one (_missing), then its report in an HTML comment (jenkinsci/jenkins core
    hudson/security/HudsonAuthenticationEntryPoint.java, AccessDeniedException3.java)."""
    target = quote(request.full_path.rstrip("?"), safe="")
    login = f"{request.script_root}/login?from={target}"
    page = (f"<html><head><meta http-equiv='refresh' content='1;url={login}'/><script id='"
            f"redirect' data-redirect-url='{login}' src='/static/redirect.js'></script></head>"
            "<body style='background-color:white; color:white;'>\n\nAuthentication required"
            "\n<!--\nYou are authenticated as: anonymous\nGroups that you are in:\n  \n"
            "Permission you need to have (but didn't): hudson.model.Hudson.Read\n-->\n\n"
            "</body></html>")
    response = Response(page, status=403, content_type="text/html;charset=UTF-8")
    response.headers.update({
        "X-You-Are-Authenticated-As": "anonymous",
        "X-You-Are-In-Group-Disabled": "JENKINS-39402: use -Dhudson.security."
        "AccessDeniedException2.REPORT_GROUP_HEADERS=true or use /whoAmI to diagnose",
        "X-Required-Permission": "hudson.model.Hudson.Read"})
    return response


def _stack_trace(status: int, exception: str, message: str) -> Response:
    """Stapler's HttpResponses.error(code, cause): the status, and the cause's stack trace as
    text/plain (its first line is "<exception class>: <message>")."""
    return Response(f"{exception}: {message}\n\tat jenkins.model.ParameterizedJobMixIn"
                    ".doBuildWithParameters(ParameterizedJobMixIn.java:447)\n",
                    status=status, content_type="text/plain;charset=UTF-8")


def _cause_action(user: str | None) -> dict[str, Any]:
    """An item's hudson.model.CauseAction as the API exports it: a request's user
    (Cause$UserIdCause: shortDescription, userId, userName; an anonymous request's has
    userId null and userName "anonymous", jenkins core Cause.UserIdCause.getUserName), or a
    timer's cause."""
    if user is None:
        cause = {"_class": "hudson.triggers.TimerTrigger$TimerTriggerCause",
                 "shortDescription": "Started by timer"}
    else:
        name = user or "anonymous"
        cause = {"_class": "hudson.model.Cause$UserIdCause",
                 "shortDescription": f"Started by user {name}", "userId": user or None,
                 "userName": name}
    return {"_class": "hudson.model.CauseAction", "causes": [cause]}


# FakeBuild.started_by of a request Jenkins took from no user (anonymous may build)
ANONYMOUS = ""
_Tree = dict[str, tuple["_Tree | None", "slice | None"]]
# A job's `builds` are its 100 newest runs (Job.getNewBuilds: getBuilds().limit(100), exported
# as "builds"); a range in the tree applies after that limit ({100,200} is empty).
JOB_PAGE_BUILDS = 100


def _parse_tree(text: str) -> _Tree:
    """Jenkins' `tree` query parameter (hudson.model.Api, TreeString): fields separated by
    commas, a field's own fields in brackets, a list's range in braces: {M,N} from M up to
    (not including) N, {M,} from M, {,N} up to N, {N} the one at N."""
    pos = 0

    def fields() -> _Tree:
        nonlocal pos
        out: _Tree = {}
        while pos < len(text) and text[pos] != "]":
            m = re.match(r"[^\[\]{},]+", text[pos:])
            if m is None:
                raise ValueError(f"bad tree at {pos}: {text!r}")
            name, pos = m.group(0), pos + len(m.group(0))
            sub, rng = None, None
            if pos < len(text) and text[pos] == "[":
                pos += 1
                sub = fields()
                pos += 1  # "]"
            if pos < len(text) and text[pos] == "{":
                end = text.index("}", pos)
                low, comma, high = text[pos + 1:end].partition(",")
                rng = slice(int(low or 0), int(high) if high else None) if comma \
                    else slice(int(low), int(low) + 1)
                pos = end + 1
            out[name] = (sub, rng)
            if pos < len(text) and text[pos] == ",":
                pos += 1
        return out
    return fields()


def _tree(value: Any, spec: str) -> Any:
    return _pruned(value, _parse_tree(spec))


def _pruned(value: Any, tree: _Tree) -> Any:
    """What Jenkins' Exported API gives under a tree: an object keeps its _class and only the
    fields named (an object named without fields of its own is just its _class)."""
    if isinstance(value, list):
        return [_pruned(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    out = {"_class": value["_class"]} if "_class" in value else {}
    for name, (sub, rng) in tree.items():
        if name in value:
            item = value[name]
            if isinstance(item, list) and rng is not None:
                item = item[rng]
            out[name] = _pruned(item, sub or {})
    return out


def _base(request: Request) -> str:
    """The base URL as the client addressed it: Jetty makes Jenkins' relative redirects
    absolute with the request's Host, so a client behind a proxy is sent back through it
    (and the context path, `context_path`)."""
    return request.url_root.rstrip("/")


def _redirect(location: str, status: int = 302) -> Response:
    return Response("", status=status, headers={"Location": location})


def _post_only(method: str) -> Response | None:
    return None if method == "POST" else _error(405, "This URL requires POST")


@pytest.fixture
def jenkins_fake() -> Iterator[JenkinsFake]:
    """A fresh fake Jenkins per test, listening when yielded, shut down afterwards."""
    with JenkinsFake() as fake:
        yield fake
