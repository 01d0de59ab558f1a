"""Catch-up: the heads GitLab's API shows, compared with the builds seen. Pure decisions.

Webhooks are hints (GitLab never re-sends a failed delivery and disables a failing hook), so
a periodic pass lists every routed branch and tag head and builds, once, a head no build was
seen for. This module holds what that pass decides, as data with a reason: which refs changed
since the last pass (only those cost work), and for each changed head whether it is built
(`BUILD`, through the same routing and intake as a webhook), already built, unrouted, or only
recorded because the project is seen for the first time (`BASELINE`: no burst of builds of
every existing branch after an install). A project is followed by its numeric id
(workers.core.catchup_project): a rename or move keeps it, and its heads are keyed by its
current path, as its webhooks' pushes are.
"""

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, field_validator

from workers.core.keys import cased_commit_key
from workers.core.models import BuildRequest, EventKind, Route, Source
from workers.core.routing import Ignored, Push, project_matches, push_commit_key, route_push
from workers.core.validation import push_problem

DELIVERY_PREFIX = "catch-up:"  # the intake delivery id of a build the catch-up started
SOURCE = "catch-up"
BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"
_GLOB_CHARS = "*?["
# The path of our GitLab endpoint: a project hook whose URL ends with it is ours.
WEBHOOK_PATH = "/webhooks/gitlab"
# GitLab's alert_status of a hook that is not sent (WebHooks::AutoDisabling#alert_status).
DISABLED_HOOK_STATUSES = frozenset({"disabled", "temporarily_disabled"})


class CatchUpSources(BaseModel):
    """`catchUp` in the config file: projects and groups to catch up on besides the projects
    the routes name literally (a route glob such as "*" names no project)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Full paths, or numeric ids (GitLab's API takes either for :id, doc/api/rest/_index.md)
    projects: tuple[str, ...] = ()
    # Every project in these groups and their subgroups that a route matches.
    groups: tuple[str, ...] = ()

    @field_validator("projects", "groups")
    @classmethod
    def _paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if not path or path != path.strip("/ ") or any(c in path for c in _GLOB_CHARS):
                raise ValueError(f"{path!r} must be a full path such as 'group/project' "
                                 "(no glob, no leading or trailing '/')")
        return paths

    @field_validator("projects")
    @classmethod
    def _project_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:  # a project is always in a group or a user's namespace
            if path.isascii() and path.isdecimal():
                continue
            # nor is its path ever a URL or ends in '.git' (Gitlab::PathRegex): a clone or
            # web URL copied in was asked of GitLab (404) every pass
            if "/" not in path or "://" in path or path.endswith(".git"):
                raise ValueError(f"{path!r} is no project's path: a project is named by its "
                                 "full path, 'group/project' (not its URL nor '.git'), or "
                                 "its numeric id (a group goes in catchUp.groups)")
        return paths


@dataclass(frozen=True)
class Head:
    """A branch or tag as the API lists it: its full ref and the commit it points at."""

    ref: str
    sha: str
    # the commit's message asks for no build ([skip ci]: workers.core.push_skip), as GitLab
    # lists it with the ref; False where it was not read
    skips: bool = field(default=False, compare=False)

    @property
    def event(self) -> EventKind:
        return EventKind.TAG_PUSH if self.ref.startswith(TAG_PREFIX) else EventKind.PUSH


class Verdict(StrEnum):
    BUILD = "build"        # routed, and no build of this commit on this ref seen
    BUILT = "built"        # a run of this commit on this ref is known (webhook or catch-up)
    UNROUTED = "unrouted"  # no route matches: never built
    BASELINE = "baseline"  # the project's first pass: recorded, not built
    SKIPPED = "skipped"    # its commit's message asks for no build ([skip ci]): never built


@dataclass(frozen=True)
class HeadDecision:
    head: Head
    verdict: Verdict
    reason: str
    commit: str  # the commit key (keys.commit_key) of this head
    request: BuildRequest | None = None  # the build, for BUILD


def delivery_id(commit: str) -> str:
    """The delivery id of the catch-up's build of a commit: the same on every pass, so a second
    pass (or a second instance) is a duplicate delivery in the intake."""
    return DELIVERY_PREFIX + commit


def head_push(project: str, head: Head) -> Push:
    """The push a webhook would have carried for this head (no pusher: the API does not say)."""
    return Push(event=head.event, project=project, ref=head.ref, sha=head.sha, user="")


def head_commit_key(project: str, head: Head) -> str:
    """The same commit key as the webhook's for this push (routing.push_commit_key)."""
    return push_commit_key(head_push(project, head))


def head_commit_keys(project: str, head: Head) -> set[str]:
    """The keys a run mark of this head's push may be under: its commit key, and the one
    versions before any-case paths gave it (keys.cased_commit_key), for a push whose webhook
    such a version took after the catch-up's last pass before the upgrade."""
    return {head_commit_key(project, head),
            cased_commit_key(str(Source.GITLAB), project, head.ref, head.sha)}


def changed_heads(heads: Iterable[Head], seen: Mapping[str, str]) -> list[Head]:
    """The heads whose ref is new or points at another commit than at the last pass."""
    return [h for h in heads if seen.get(h.ref) != h.sha]


def vanished_refs(heads: Iterable[Head], seen: Mapping[str, str], *,
                  partial: Collection[EventKind] = ()) -> list[str]:
    """The refs seen at the last pass that the API lists no more (deleted); none of a kind
    whose listing GitLab cut short (`partial`: it counted more than it listed), where a ref
    left out may still be there, and would come back as new, built, on a full listing."""
    now = {h.ref for h in heads}
    return sorted(ref for ref in seen
                  if ref not in now and Head(ref, "").event not in partial)


@dataclass(frozen=True)
class Absences:
    """What becomes of the refs seen before that a pass did not list."""

    forget: list[str]  # not listed by this pass nor the one before: deleted
    absent: list[str]  # not listed for the first time: kept as seen, forgotten if again


def settle_absences(vanished: Iterable[str], absent_before: Collection[str]) -> Absences:
    """A ref is forgotten once two passes in a row do not list it. Offset pages read a list
    that changes between them: a branch deleted while a pass reads them (a merged merge
    request's source branch) moves the next page's first branch onto a page already read, and
    that one listing leaves it out; forgotten at once, it was a new head on the next pass, its
    old commit built as a push never heard of."""
    vanished = list(vanished)
    return Absences(forget=[r for r in vanished if r in absent_before],
                    absent=[r for r in vanished if r not in absent_before])


def kinds_listed(kinds: Collection[EventKind], *, baseline: Collection[EventKind],
                 partial: Collection[EventKind]) -> frozenset[EventKind]:
    """The kinds of ref a pass counts as listed for the project from now on: not one whose
    first listing (its baseline) GitLab cut short, so that its next full listing is its
    baseline too (the refs left out would otherwise all be new heads, built at once)."""
    return frozenset(kinds) - (frozenset(baseline) & frozenset(partial))


def decide(project: str, changed: Iterable[Head], *, routes: Collection[Route],
           built: Collection[str], baseline: Collection[EventKind],
           received_at: float, installation: str = "") -> list[HeadDecision]:
    """What to do with each changed head. `built`: the keys (head_commit_keys) of these heads
    for which a run is known (the commit's run mark). `baseline`: the kinds of ref (branches,
    tags) listed for the first time in this project: all on its first pass; tags alone when a
    route for them was added since (else every existing tag would build at once)."""
    out = []
    for head in changed:
        push = head_push(project, head)
        commit = push_commit_key(push)
        # the webhook's rule for a push's fields: a head it would answer "ignored" (a ref
        # over 255 bytes) is never built, nor its record set aside by the mover
        problem = push_problem(sha=push.sha, ref=push.ref, project=push.project,
                               user=push.user)
        routed = Ignored(problem, refused=True) if problem else route_push(
            push, tuple(routes), received_at=received_at, delivery=delivery_id(commit),
            commit=commit, installation=installation)
        if isinstance(routed, Ignored):
            out.append(HeadDecision(head, Verdict.UNROUTED, routed.reason, commit))
        elif head.event in baseline:
            out.append(HeadDecision(head, Verdict.BASELINE, "first pass over these refs of "
                                    "this project: heads recorded, not built", commit))
        elif any(k in built for k in head_commit_keys(project, head)):
            out.append(HeadDecision(head, Verdict.BUILT, "a build of this commit on this ref "
                                    "was seen", commit))
        elif head.skips:  # its webhook's push was ignored alike (routing.parse_gitlab_push)
            out.append(HeadDecision(head, Verdict.SKIPPED, "the commit's message asks for no "
                                    "build ([skip ci])", commit))
        else:
            out.append(HeadDecision(head, Verdict.BUILD, "routed head with no build seen "
                                    "(its push was not delivered)", commit, routed))
    return out


def _literal_prefix(glob: str) -> str:
    cut = min((glob.index(c) for c in _GLOB_CHARS if c in glob), default=len(glob))
    return glob[:cut]


def _may_match(ref_glob: str, prefix: str) -> bool:
    literal = _literal_prefix(ref_glob)
    return literal.startswith(prefix) or prefix.startswith(literal)


def kinds_needed(project: str, routes: Iterable[Route]) -> frozenset[EventKind]:
    """Branches, tags or both: what a route for this project may match, so that a project
    routed for branches only never pays for listing its tags."""
    kinds = set()
    for route in routes:
        if not project_matches(project, route.project):
            continue
        if _may_match(route.ref, BRANCH_PREFIX):
            kinds.add(EventKind.PUSH)
        if _may_match(route.ref, TAG_PREFIX):
            kinds.add(EventKind.TAG_PUSH)
    return frozenset(kinds)


def named_projects(routes: Iterable[Route], sources: CatchUpSources | None) -> list[str]:
    """The projects to catch up on, groups aside: those the routes name without a glob, and
    those listed in `catchUp.projects`."""
    named = {r.project for r in routes if not any(c in r.project for c in _GLOB_CHARS)}
    return sorted(named | set(sources.projects if sources else ()))


def routed(project: str, routes: Iterable[Route]) -> bool:
    return any(project_matches(project, r.project) for r in routes)


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_our_hook(url: object) -> bool:
    """A hook is ours when its URL's path ends with our GitLab endpoint."""
    if not isinstance(url, str):
        return False
    path = url.split("#", 1)[0].split("?", 1)[0].rstrip("/")
    return path.endswith(WEBHOOK_PATH)


def hook_disabled(hook: Mapping[str, object], now: float) -> bool:
    """GitLab sends nothing through a hook whose alert_status is disabled or
    temporarily_disabled, or whose disabled_until is still ahead
    (WebHooks::AutoDisabling#temporarily_disabled?, #permanently_disabled?)."""
    if hook.get("alert_status") in DISABLED_HOOK_STATUSES:
        return True
    until = _timestamp(hook.get("disabled_until"))
    return until is not None and until >= now
