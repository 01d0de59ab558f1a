"""Webhook payloads to build requests: parse, decide to ignore, and route. Pure functions."""

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from string import Formatter
from typing import Any

from workers.core.errors import InvalidPayload
from workers.core.hints import hint_parameters, push_option_variables
from workers.core.jenkins_queue import job_of_url
from workers.core.keys import agent_name, commit_key as _commit_key, run_key
from workers.core.models import BuildRequest, EventKind, Route, Source
from workers.core.push_payload import FieldTooLong, push_fields, system_hook_event
from workers.core.push_skip import head_message, message_skips, skip_option
from workers.core.validation import push_problem

# The `after` of a deleted branch or tag: GitLab's blank ref, 40 zeros, or 64 in a project with
# SHA-256 object names (Repository#blank_ref: Gitlab::Git::SHA1_BLANK_SHA / SHA256_BLANK_SHA)
ZERO_SHAS = frozenset({"0" * 40, "0" * 64})
GITLAB_BUILD_EVENTS = {"Push Hook": EventKind.PUSH, "Tag Push Hook": EventKind.TAG_PUSH}
# An instance's system hook sends every project's pushes with this header, the kind in the
# body's `event_name`, and the project hook's push fields (docs.gitlab.com/administration/
# system_hooks: "Push events", "Tag events"; gitlab-ce MR 3744 added them).
SYSTEM_HOOK = "System Hook"
SYSTEM_HOOK_EVENTS = {"push": "Push Hook", "tag_push": "Tag Push Hook"}
PLACEHOLDERS = frozenset({"sha", "ref", "branch", "tag", "project", "user", "event"})
AGENT_PARAMETER = "CI_AUTOSCALER_AGENT"
BUILD_KEY_PARAMETER = "CI_AUTOSCALER_BUILD_KEY"
JENKINS_DONE_PHASES = frozenset({"COMPLETED", "FINALIZED", "FINISHED"})
# The plugin's Phase enum (jenkinsci/notification-plugin, Phase.java) also has NONE, which its
# `notifyEndpoints` step sends when a Pipeline asks for it: a real phase that needs no action.
JENKINS_PHASES = frozenset({"QUEUED", "STARTED", "NONE"}) | JENKINS_DONE_PHASES


@dataclass(frozen=True)
class Ignored:
    """An event that was understood and deliberately not acted on; `refused` when a field of
    it broke a rule (workers.core.validation), which the webhook logs."""

    reason: str
    refused: bool = field(default=False, compare=False)
    # A push its pusher asked to build nothing (workers.core.push_skip): the webhook tells the
    # catch-up its head was seen, so that no later pass builds it as a push never delivered.
    skipped: "Push | None" = field(default=None, compare=False)


@dataclass(frozen=True)
class Push:
    event: EventKind
    project: str
    ref: str
    sha: str
    user: str
    # Size hints from the push options (core.hints), passed on as build parameters.
    hints: dict[str, str] = field(default_factory=dict)
    # The project's numeric id (None: the push had none): a rename keeps it (project_id_of).
    project_id: int | None = None


def _field(payload: dict[str, Any], path: str, kind: type) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InvalidPayload(f"missing field {path!r}")
        value = value[part]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidPayload(f"field {path!r} must be a {kind.__name__}")
    return value


def not_a_build_event(event_header: str | None) -> Ignored:
    """Why an event other than a push or tag push is ignored: its X-Gitlab-Event, or that it
    has none (GitLab sends it with every delivery; a request made by hand, or GitHub's, lacks
    it), which read "event None does not start builds"."""
    if not event_header:
        return Ignored("no X-Gitlab-Event header: not a GitLab push; nothing to build")
    return Ignored(f"event {event_header!r} does not start builds")


def parse_gitlab_push_body(event_header: str | None, body: bytes) -> Push | Ignored:
    """parse_gitlab_push of a body as it came, read for the fields it needs only
    (workers.core.push_payload); other events are ignored without being parsed. A system
    hook's push or tag push is read as the project hook's."""
    if event_header == SYSTEM_HOOK:
        name = system_hook_event(body)
        event_header = SYSTEM_HOOK_EVENTS.get(name or "")
        if event_header is None:
            return Ignored(f"system hook event {name!r} does not start builds")
    if GITLAB_BUILD_EVENTS.get(event_header or "") is None:
        return not_a_build_event(event_header)
    try:
        return parse_gitlab_push(event_header, push_fields(body))
    except FieldTooLong as err:
        return Ignored(str(err), refused=True)


def parse_gitlab_push(event_header: str | None, payload: Any) -> Push | Ignored:
    """A GitLab Push Hook or Tag Push Hook body as a Push; other events and deletions Ignored,
    and so is a push whose sha, ref, project path or user breaks workers.core.validation."""
    event = GITLAB_BUILD_EVENTS.get(event_header or "")
    if event is None:
        return not_a_build_event(event_header)
    if not isinstance(payload, dict):
        raise InvalidPayload("body must be a JSON object")
    ref = _field(payload, "ref", str)
    after = _field(payload, "after", str)
    project = _field(payload, "project.path_with_namespace", str)
    # GitLab names a push's kind by its ref (Gitlab::DataBuilder::Push.build: a tag ref is a
    # tag_push), and so is it read here: a branch's ref is never a tag's {tag}. The header can
    # say otherwise: GitLab's "Test" of tag push events sent its branch push sample (ref
    # refs/heads/<default branch>) as a Tag Push Hook (TestHooks::ProjectService aliased
    # tag_push_events_data to push_events_data, before build_sample took is_tag), and its
    # build got {branch} "" and {tag} "main".
    event = EventKind.TAG_PUSH if ref.startswith("refs/tags/") else \
        EventKind.PUSH if ref.startswith("refs/heads/") else event
    if after in ZERO_SHAS:
        return Ignored("tag deleted" if event is EventKind.TAG_PUSH else "branch deleted")
    if event is EventKind.TAG_PUSH and "checkout_sha" in payload \
            and payload["checkout_sha"] is None:
        # GitLab sends null when it finds no commit for the tag (Gitlab::DataBuilder::Push
        # #checkout_sha: repository.find_tag nil); a real tag push's names its commit. Its
        # "Test > Tag push events" of a project without tags sends tag v1.0.0, which no one
        # pushed, with `after` the default branch's head (build_sample(is_tag: true)): built,
        # a release job ran for a tag that does not exist.
        return Ignored("tag push names no commit (checkout_sha null): GitLab found none for "
                       "the tag, as in its Test of tag push events of a project without tags")
    # An annotated tag's `after` is the tag object; checkout_sha is the commit to build.
    sha = payload.get("checkout_sha") or after
    if not isinstance(sha, str):
        raise InvalidPayload("field 'checkout_sha' must be a str")
    user = str(payload.get("user_username") or payload.get("user_name") or "")
    if problem := push_problem(sha=sha, ref=ref, project=project, user=user):
        return Ignored(problem, refused=True)
    push = Push(event=event, project=project, ref=ref, sha=sha, user=user,
                hints=hint_parameters(push_option_variables(payload.get("push_options"))),
                project_id=project_id_of(payload))
    if option := skip_option(payload.get("push_options")):
        return Ignored(f"push option {option}: the pusher asked for no build", skipped=push)
    if message_skips(head_message(payload.get("commits"), sha)):
        return Ignored("the commit's message asks for no build ([skip ci])", skipped=push)
    return push


def project_id_of(payload: dict[str, Any]) -> int | None:
    """The push's `project.id` (or top-level `project_id`): the id a project keeps when it is
    renamed or moved, where its path changes (GitLab keeps the old path as a redirect only
    until another project or group takes it: Route#delete_conflicting_redirects). None for
    anything but a positive integer: a push is never refused for it."""
    project = payload.get("project")
    for value in (project.get("id") if isinstance(project, dict) else None,
                  payload.get("project_id")):
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
            return value
    return None


def placeholders(text: str) -> set[str]:
    """The {names} a parameter template uses (raises ValueError on a malformed template)."""
    return {name for _, name, _, _ in Formatter().parse(text) if name is not None}


def _context(push: Push) -> dict[str, str]:
    short = push.ref.split("/", 2)[2] if push.ref.count("/") >= 2 else push.ref
    return {
        "sha": push.sha, "ref": push.ref, "project": push.project, "user": push.user,
        "event": str(push.event),
        "branch": short if push.event is EventKind.PUSH else "",
        "tag": short if push.event is EventKind.TAG_PUSH else "",
    }


def commit_key(request: BuildRequest) -> str:
    """The key of the commit a build request builds, the same for every run of it."""
    return _commit_key(request.source, request.project, request.ref, request.sha)


def push_commit_key(push: Push) -> str:
    """The key of the commit a push pushed (as `commit_key` of its build request)."""
    return _commit_key(str(Source.GITLAB), push.project, push.ref, push.sha)


def project_matches(path: str, glob: str) -> bool:
    """Whether a project path matches a route's project glob, in any case. GitLab finds a path
    in any case (Routable.find_by_full_path: exact, then case-insensitive) and never holds two
    that differ in case only (Route validates uniqueness with case_sensitive: false), but its
    webhooks carry the path as created ("Team/App"): a route typed "team/app" names that
    project, and its pushes were answered "no route" while the catch-up built them."""
    return fnmatchcase(path.lower(), glob.lower())


def first_route(routes: list[Route] | tuple[Route, ...], *, project: str,
                ref: str) -> Route | None:
    """The first route whose project and ref globs match, or None."""
    return next((route for route in routes if project_matches(project, route.project)
                 and fnmatchcase(ref, route.ref)), None)


def route_push(push: Push, routes: list[Route] | tuple[Route, ...], *,
               received_at: float = 0.0, delivery: str | None = None,
               commit: str | None = None, installation: str = "") -> BuildRequest | Ignored:
    """The first route whose project and ref globs match makes the build request. With a
    `delivery` id the request is the run of the commit that delivery starts (keys.run_key);
    without, its key is the commit's own. `commit`: the push's commit key, if the caller has
    it already (push_commit_key). `installation`: this installation's identity, which its
    agent names carry (keys.agent_name)."""
    route = first_route(routes, project=push.project, ref=push.ref)
    if route is None:
        return Ignored(f"no route for project {push.project!r} ref {push.ref!r}")
    context = _context(push)
    key = commit or push_commit_key(push)
    if delivery is not None:
        key = run_key(key, delivery)
    agent = agent_name(route.job, key, installation)
    parameters = {name: value.format_map(context) for name, value in route.parameters.items()}
    parameters.update(push.hints)  # the pusher's hint over the route's
    parameters[AGENT_PARAMETER] = agent
    parameters[BUILD_KEY_PARAMETER] = key
    return BuildRequest(build_key=key, agent_name=agent, source=str(Source.GITLAB),
                        project=push.project, ref=push.ref, sha=push.sha, user=push.user,
                        job=route.job, template=route.template, parameters=parameters,
                        received_at=received_at)


@dataclass(frozen=True)
class JenkinsNotification:
    job: str
    number: int
    phase: str
    status: str
    queue_id: int | None
    agent: str | None
    # The job's full name ("folder/name"), from its URL: `name` is the short name only.
    full_job: str = ""
    # The run's page (build.full_url; plugins before 1.6 send none): what a GitLab commit
    # status links to.
    build_url: str = ""

    @property
    def done(self) -> bool:
        return self.phase in JENKINS_DONE_PHASES

    @property
    def delivery_id(self) -> str:
        """Jenkins sends no delivery id; a phase of a build is reported once per build."""
        return f"{self.job}#{self.number}#{self.phase}"


def parse_jenkins_notification(payload: Any) -> JenkinsNotification:
    """A Jenkins Notification plugin body (QUEUED/STARTED/COMPLETED/FINALIZED/NONE, legacy
    FINISHED)."""
    if not isinstance(payload, dict):
        raise InvalidPayload("body must be a JSON object")
    job = _field(payload, "name", str)
    number = _field(payload, "build.number", int)
    phase = _field(payload, "build.phase", str)
    if phase not in JENKINS_PHASES:
        raise InvalidPayload(f"unknown build phase {phase!r}")
    build = payload["build"]
    parameters = build.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidPayload("field 'build.parameters' must be an object")
    queue_id = build.get("queue_id")
    agent = parameters.get(AGENT_PARAMETER)
    url = payload.get("url")
    full_url = build.get("full_url")
    return JenkinsNotification(
        job=job, number=number, phase=phase, status=str(build.get("status") or ""),
        queue_id=queue_id if isinstance(queue_id, int) and not isinstance(queue_id, bool) else None,
        agent=agent if isinstance(agent, str) and agent else None,
        full_job=(job_of_url(url) if isinstance(url, str) else "") or job,
        build_url=full_url if isinstance(full_url, str)
        and full_url.startswith(("http://", "https://")) else "")
