"""GitLab's REST API through python-gitlab, as task-shaped functions: a project's id and current
path, the branch and tag heads of a project, the projects of a group, a project's hooks, and a
commit status (for issue 20).

Every call goes through one `PacedSession`: before each request it waits out what GitLab's
last answer asked for (Retry-After on a 429; the RateLimit-* headers when the quota runs low,
workers.core.rate_limits), so a pass slows down before it is throttled. python-gitlab itself
sends a 429'd request again after its Retry-After (obey_rate_limit), and follows the `Link`
header from page to page. A wait longer than MAX_WAIT_SECONDS ends the call instead, as a
RetryableError carrying the wait. Library errors become RetryableError / PermanentError with
the HTTP status and GitLab's message; the token is sent in a header and never in a message.
"""

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gitlab
import requests
from gitlab import exceptions as gl_errors

from workers.core import rate_limits
from workers.core.catchup import BRANCH_PREFIX, TAG_PREFIX, Head
from workers.core.errors import CredentialsRefused, Overloaded, PermanentError, RetryableError, \
    Unavailable
from workers.core.models import EventKind
from workers.core.push_skip import message_skips
from workers.core.redaction import URL_USERINFO, cut

log = logging.getLogger("ci_autoscaler.gitlab")

PER_PAGE = 100  # GitLab's maximum page size
CALL_TIMEOUT_SECONDS = 10.0
MAX_RETRIES = 3  # python-gitlab's tries again after a 429 or a 5xx (4 calls in all)
MAX_WAIT_SECONDS = 60.0  # a longer Retry-After (or reset) gives up this call, to try next pass
# A commit status post waits in GitLab for its lock on the commit's statuses: 20 tries 0.5 s
# apart, 10 s, before the 409, then the update itself (p99 about 2 s, says its comment)
# (Ci::CreateCommitStatusService#pipeline_lock_params). A post given CALL_TIMEOUT_SECONDS was
# abandoned as "unreachable" just before GitLab's 409 (or its 201) came.
STATUS_LOCK_WAIT_SECONDS = 10.0
STATUS_CALL_TIMEOUT_SECONDS = STATUS_LOCK_WAIT_SECONDS + 10.0
_BODY_CHARS = 200
_HTML_TITLE = re.compile(r"<title[^>]*>([^<]*)</title>", re.IGNORECASE)
_HTML_HEAD_CHARS = 4000
# What a load balancer or GitLab's own nginx/Workhorse answers while Puma is away (an upgrade,
# a restart), and Cloudflare's 520-530 in front of one (python-gitlab retries them all, as
# transient: gitlab.const.RETRYABLE_TRANSIENT_ERROR_CODES): every call fails alike, not one
# project's (a 500 can be one repository's, a Gitaly error). Raised as Unavailable, as is no
# connection at all.
GATEWAY_ERRORS = frozenset({502, 503, 504, *range(520, 531)})
# The answers python-gitlab sends again (retry_transient_errors), a 429 apart.
RETRIED_STATUSES = frozenset(gitlab.const.RETRYABLE_TRANSIENT_ERROR_CODES) - {429}


class TokenRefused(PermanentError, CredentialsRefused):
    """GitLab answered 401: every further call with this token fails the same way. Counted
    as `unauthorized`, as Jenkins refusing its token is: the token needs a person, not the
    call (a `permanent` error says a request was wrong)."""


class ScopeRefused(PermanentError, CredentialsRefused):
    """GitLab answered 403 insufficient_scope: the token lacks the scope the call needs (a
    read needs read_api or api, a write api; Gitlab::Auth::AuthFinders#
    validate_access_token!). Every further call of that kind fails alike, in every project,
    until the token is replaced: counted as `unauthorized`, as a refused token is. Not a
    TokenRefused: a token that reads may still be refused writes only (commit statuses turn
    themselves off then, workers.commit_statuses)."""


class ProjectNotFound(PermanentError):
    """GitLab answered 404 "Project Not Found" for a project: deleted, out of the token's
    reach (GitLab answers a private project its user is no member of alike), or, by path,
    a renamed project's old path that a new group or project took (Route#
    delete_conflicting_redirects), which leads to it no more."""


class StatusLocked(RetryableError):
    """GitLab answered 409 to a commit status post: another update of the same commit's
    statuses held its lock (per project and sha) past its wait, and nothing was changed; or
    400 'Failed to obtain a lock', the same for the lock on the commit's pipeline (below).
    Only that commit is held up, not the token or GitLab."""


# Ci::Pipelines::AddJobService#execute! rescues any StandardError while it adds a status to
# its pipeline and answers it as an error, which Ci::CreateCommitStatusService answers 400
# with the exception's message (gitlab-org/gitlab work item 556736), nothing saved: a 400 that
# is GitLab's own failure, not a refusal. Its lock on the pipeline (in_lock, 20 tries 0.5 s
# apart) says 'Failed to obtain a lock' (Gitlab::ExclusiveLeaseHelpers); a database error,
# ActiveRecord's message, the PG exception's class first ('PG::QueryCanceled: ERROR: ...').
_LOCK_FAILED = "Failed to obtain a lock"
# API::Helpers#find_project!'s answer for a project the token's user may not see, or none at
# that id or path (not_found!('Project')): a commit or ref GitLab does not find says so.
_PROJECT_NOT_FOUND = "404 Project Not Found"
_PIPELINE_NOT_FOUND = "404 Pipeline for pipeline_id"
# require_repository_enabled!'s answer (not_found!('Repository')): the project's Repository
# feature is off for the token's user.
_REPOSITORY_NOT_FOUND = "404 Repository Not Found"
_INSUFFICIENT_SCOPE = "insufficient_scope"
_DATABASE_ERROR_PREFIX = "PG::"


class GitLabFailed(RetryableError):
    """GitLab answered 400 to a commit status with a database error of its own ('PG::...',
    above): nothing was saved, and the same post may be taken later; or may fail alike each
    time (a statement that times out on that commit's pipeline alone), so a caller bounds
    its tries (workers.commit_statuses)."""


class Misdirected(PermanentError):
    """GITLAB_URL answers a write with a 301 or 302 (plain http to a GitLab that redirects
    to https: omnibus-gitlab's redirect_http_to_https): requests would send the POST on as a
    GET, so python-gitlab refuses it (Gitlab._check_redirects, RedirectError). Reads follow
    the redirect and work; every write fails alike until GITLAB_URL is where it leads."""


class Forbidden(PermanentError):
    """GitLab answered 403 (not insufficient_scope) to a commit status: the token's user may
    not set statuses in that project, or on that protected ref. Every build of the project
    (or ref) is refused alike until someone changes the role or the protection."""


class PipelineGone(PermanentError):
    """GitLab answered 404 "Pipeline for pipeline_id, sha and ref Not Found" to a commit
    status posted with a pipeline_id (Ci::CreateCommitStatusService#validate): that pipeline
    was deleted. Nothing was saved; the same post without it goes into the newest one."""


class LinkRefused(PermanentError):
    """GitLab answered 400 to a commit status for its target_url alone, and saved nothing:
    GenericCommitStatus validates it as an addressable_url (http or https; on an instance that
    blocks requests to hosts off its allowlist, "is blocked: Requests to hosts and IP
    addresses not on the Allow List are denied", Gitlab::HTTP_V2::UrlBlocker) of at most 255
    characters. The state itself was not refused: without the link, GitLab takes it."""


# The headers python-gitlab sends a token in (gitlab._backends.requests_backend: a personal,
# project or group token; a CI job's; an OAuth token).
_TOKEN_HEADERS = ("PRIVATE-TOKEN", "JOB-TOKEN", "Authorization")


class PacedSession(requests.Session):
    """A requests session that waits, before each request, for what the last answer's
    rate-limit headers asked (workers.core.rate_limits.pause)."""

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time,
                 max_wait_seconds: float = MAX_WAIT_SECONDS):
        super().__init__()
        self._sleep, self._clock = sleep, clock
        self.max_wait_seconds = max_wait_seconds
        self._not_before = 0.0
        self.paused_seconds = 0.0  # how long this session waited for rate limits, in all
        self.last_pause = rate_limits.NO_PAUSE  # what the last answer asked for

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        wait = self._not_before - self._clock()
        if wait > 0:
            self._sleep(wait)
            self.paused_seconds += wait
        response = super().send(request, **kwargs)
        pause = self.last_pause = rate_limits.pause(
            response.headers, status=response.status_code, now=self._clock())
        if pause.seconds > self.max_wait_seconds:
            raise RetryableError(f"GitLab rate limit: {pause.reason}; more than "
                                 f"{self.max_wait_seconds:g}s away, left for a later pass",
                                 retry_after=pause.seconds)
        if response.status_code in RETRIED_STATUSES:
            # python-gitlab waits a retried 5xx's Retry-After (else its RateLimit-Reset, by our
            # clock) before it sends again, uncapped (gitlab.utils.Retry): a maintenance
            # page's 503 "Retry-After: 3600" slept the catch-up an hour, three times. Held
            # to what a 429 may ask; without it, python-gitlab's short backoff, not the
            # quota's reset, which our pause has read already.
            asked = rate_limits.retry_after(response.headers, now=self._clock())
            if asked is not None and asked > self.max_wait_seconds:
                raise RetryableError(f"GitLab answered {response.status_code} with Retry-After "
                                     f"{asked:g}s; more than {self.max_wait_seconds:g}s away, "
                                     "left for a later pass", retry_after=asked)
            response.headers.pop("RateLimit-Reset", None)
        if response.status_code == 429 or response.status_code in RETRIED_STATUSES:
            _whole_retry_after(response, self._clock())
        if pause.seconds and response.status_code != 429:
            log.info("pacing GitLab API calls", extra={"pause_seconds": round(pause.seconds, 3),
                                                       "reason": pause.reason})
        # On a 429, python-gitlab waits Retry-After itself before it sends again.
        self._not_before = self._clock() + (0.0 if response.status_code == 429
                                            else pause.seconds)
        return response

    def rebuild_auth(self, prepared_request: requests.PreparedRequest,
                     response: requests.Response) -> None:
        """requests drops Authorization on a redirect to another origin, not python-gitlab's
        PRIVATE-TOKEN or JOB-TOKEN header (requests.Session.rebuild_auth), and python-gitlab
        follows a redirected read (a write too, before _check_redirects refuses it after the
        fact; a 307/308 it does not refuse): a GITLAB_URL that redirects elsewhere (a sign-in
        proxy's SSO host, a host name now someone else's, another port's service) was sent
        the token with every read of every pass. Every token header goes on to the same
        origin only, as requests judges Authorization (should_strip_auth: scheme, host and
        port; http to https on one host's default ports kept)."""
        if self.should_strip_auth(response.request.url, prepared_request.url):
            for name in _TOKEN_HEADERS:
                prepared_request.headers.pop(name, None)
        super().rebuild_auth(prepared_request, response)


def _whole_retry_after(response: requests.Response, now: float) -> None:
    """python-gitlab reads a retried answer's Retry-After with int() (gitlab.utils.Retry): an
    HTTP-date (RFC 9110 10.2.3) or a fraction raised ValueError out of the call, past every
    GitLab error the catch-up handles. Given to it as the whole seconds it means; one
    neither form reads is dropped (python-gitlab's own backoff then)."""
    asked = rate_limits.retry_after(response.headers, now=now)
    if asked is None:
        response.headers.pop("Retry-After", None)
    else:
        response.headers["Retry-After"] = str(math.ceil(asked))


def client(*, url: str, token: str, timeout: float = CALL_TIMEOUT_SECONDS,
           session: requests.Session | None = None) -> gitlab.Gitlab:
    """A python-gitlab client with a personal, project or group access token (read_api for the
    catch-up; api for commit statuses), paging by PER_PAGE. The next pages are asked of `url`
    too (keep_base_url): GitLab's Link headers name the host and port of its external_url,
    whatever address was asked (Gitlab::Pagination::OffsetHeaderBuilder#base_request_uri),
    which a GITLAB_URL of an in-cluster Service may not reach."""
    return gitlab.Gitlab(url, private_token=token, timeout=timeout, per_page=PER_PAGE,
                         retry_transient_errors=True, keep_base_url=True,
                         session=session or PacedSession())


def _message(err: gl_errors.GitlabError) -> str:
    text = err.error_message
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = str(text)
    # An HTML page (Workhorse's public/502.html while Puma is away, a proxy's own error page):
    # its title, not its doctype and meta tags, says what happened
    title = _HTML_TITLE.search(text[:_HTML_HEAD_CHARS]) if text.lstrip().startswith("<") \
        else None
    if title:
        text = " ".join(title.group(1).split())
    return cut(text, _BODY_CHARS)


def _description(err: gl_errors.GitlabError) -> str:
    """GitLab's `error_description` beside an OAuth-style `error` (python-gitlab keeps the
    `error` alone as the message): a 401's `invalid_token` says only there that the token
    "is expired" or "was revoked" (API::APIGuard: rack-oauth2's Bearer::Unauthorized)."""
    try:
        body = json.loads(err.response_body or b"")
    except (TypeError, ValueError):
        return ""
    text = body.get("error_description") if isinstance(body, dict) else None
    return f": {cut(text, _BODY_CHARS)}" if isinstance(text, str) and text else ""


@contextmanager
def _translated(what: str, scope: str = "read_api") -> Iterator[None]:
    """python-gitlab's and requests' errors as ours, with the HTTP status and GitLab's own
    message (never the request's headers, which hold the token); a refused token is told to
    need `scope`, the one the call needs."""
    try:
        yield
    except gl_errors.GitlabAuthenticationError as err:
        raise TokenRefused(f"{what}: GitLab refused the API token (401: {_message(err)}"
                           f"{_description(err)}); "
                           f"give GITLAB_API_TOKEN a valid token with the {scope} scope"
                           ) from err
    except gl_errors.RedirectError as err:
        # python-gitlab's message ends "... from: '<url>' to '<url>'"; the API's root is
        # what GITLAB_URL should be (userinfo left out: it is no place for a secret).
        target = re.search(r" to '([^']*)'$", str(err.error_message))
        where = URL_USERINFO.sub("", target.group(1).split("/api/v4/", 1)[0]) if target \
            else "the URL GitLab redirects it to"
        raise Misdirected(f"{what}: GitLab redirects writes sent to GITLAB_URL, which "
                          f"python-gitlab does not follow: set GITLAB_URL to {where} "
                          "(reads follow the redirect, so the catch-up works)") from err
    except gl_errors.GitlabParsingError as err:
        raise RetryableError(f"{what}: GitLab's answer is not JSON") from err
    except gl_errors.GitlabError as err:
        code = err.response_code or 0
        detail = f"{what}: GitLab answered {code or 'an error'}: {_message(err)}"
        # GitLab's body {"error": "insufficient_scope", ...} (api_guard.rb: rack-oauth2's
        # Bearer::Forbidden), which python-gitlab's error_message is; not the text around
        # it, which names the project (a Guest's 403 of a project named so was no scope's)
        if code == 403 and _message(err) == _INSUFFICIENT_SCOPE:
            raise ScopeRefused(f"{detail}: the token lacks the scope this call needs; give "
                               f"GITLAB_API_TOKEN a token with the {scope} scope") from err
        if code in GATEWAY_ERRORS:
            raise Unavailable(detail) from err
        if code == 429 or code >= 500 or code == 0:
            raise RetryableError(detail) from err
        raise PermanentError(detail) from err
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        raise Unavailable(f"{what}: GitLab unreachable ({type(err).__name__})") from err
    except requests.Timeout as err:
        # A read timeout (a connect timeout is a ConnectionError, above): GitLab took the call
        # and answered none in time, after python-gitlab's retries. One slow repository's, or
        # GitLab overloaded, whose every call then times out alike (the catch-up tells them
        # apart by projects in a row, as it does GitLab not serving).
        raise Overloaded(f"{what}: GitLab answered not in time ({type(err).__name__})"
                         ) from err
    except requests.RequestException as err:
        raise RetryableError(f"{what}: GitLab unreachable ({type(err).__name__})") from err


def _project(gl: gitlab.Gitlab, project: str | int):
    """A project by its path or numeric id, without a request: python-gitlab URL-encodes the
    path (group%2Fproject) in every call made through it."""
    return gl.projects.get(project, lazy=True)


class ProjectIdentity(NamedTuple):
    """A project as GitLab names it now: its numeric id, which a rename or move keeps, and its
    current path_with_namespace."""

    id: int
    path: str


def project_identity(*, gl: gitlab.Gitlab, project: str | int,
                     max_retries: int = MAX_RETRIES) -> ProjectIdentity:
    """GET /projects/:id, by path or id: the project's id and current path. By a renamed or
    moved project's old path, GitLab answers the project itself, with its new path (API::
    Helpers#find_project: find_by_full_path(id, follow_redirects: true)), until a project or
    group is made at that path: then ProjectNotFound, or the new project. With max_retries=0
    a 429 or 5xx is not tried again here (set_commit_status)."""
    try:
        with _translated(f"look up project {project}"):
            found = gl.projects.get(project, max_retries=max_retries)
            return ProjectIdentity(int(found.id), str(found.path_with_namespace))
    except PermanentError as err:
        if getattr(err.__cause__, "response_code", None) == 404:
            raise ProjectNotFound(str(err)) from err.__cause__
        raise


@dataclass(frozen=True)
class RefListing:
    """A project's heads as GitLab listed them, and per kind of ref (branches, tags) how
    many GitLab counted (X-Total) but left out of its pages: GitLab 18 before gitlab-org/
    gitlab MR 244062 (work item 605032) answers every branch page past the 100th branch []
    while its headers count them all. A ref left out is not a ref deleted."""

    heads: list[Head]
    unlisted: dict[EventKind, int] = field(default_factory=dict)


def project_heads(*, gl: gitlab.Gitlab, project: str | int,
                  kinds: Iterable[EventKind] = (EventKind.PUSH, EventKind.TAG_PUSH),
                  name: str | None = None) -> RefListing:
    """Every branch and/or tag of the project (by path or id; `name` names it in messages)
    with the commit it points at, all pages read. A project whose Repository feature is off
    (one kept for its issues or wiki) has none: GitLab answers its branches 404 "Repository
    Not Found" (API::Branches: require_repository_enabled!) and its tags 403, as it answers a
    Guest's (API::Tags: authorize_read_code!; ProjectPolicy: repository_disabled prevents
    read_code). Both are told apart by the project's repository_access_level (API::Entities::
    Project): the 404 comes too for a repository of its members only that the token's user
    is none of ("private"), whose pushes are then out of reach: that stays an error."""
    kinds = frozenset(kinds)
    try:
        return _project_heads(gl, project, kinds, name)
    except PermanentError as err:
        status = getattr(err.__cause__, "response_code", None)
        if (status == 404 and isinstance(err.__cause__, gl_errors.GitlabError) and
                _message(err.__cause__) == _REPOSITORY_NOT_FOUND) or (
                status == 403 and EventKind.PUSH not in kinds):
            with _translated(f"look up project {name or project}"):
                found = gl.projects.get(project, max_retries=MAX_RETRIES)
            if found.attributes.get("repository_access_level") == "disabled":
                return RefListing([])
        raise


def _project_heads(gl: gitlab.Gitlab, project: str | int, kinds: frozenset[EventKind],
                   name: str | None) -> RefListing:
    listing = RefListing([])
    proj = _project(gl, project)
    with _translated(f"list the refs of {name or project}"):
        if EventKind.PUSH in kinds:
            pages = proj.branches.list(iterator=True, per_page=PER_PAGE,
                                       max_retries=MAX_RETRIES)
            branches = list(pages)
            listing.heads.extend(Head(BRANCH_PREFIX + b.name, b.commit["id"],
                                      message_skips(b.commit.get("message"))) for b in branches)
            _count_unlisted(listing, EventKind.PUSH, len(branches), pages.total)
        if EventKind.TAG_PUSH in kinds:
            pages = proj.tags.list(iterator=True, per_page=PER_PAGE, max_retries=MAX_RETRIES)
            tags = list(pages)
            # A tag's `commit` is the commit it points at, also for an annotated tag (whose
            # `target` is the tag object): the webhook's checkout_sha.
            listing.heads.extend(Head(TAG_PREFIX + t.name, t.commit["id"],
                                      message_skips(t.commit.get("message"))) for t in tags
                                 if t.commit)
            _count_unlisted(listing, EventKind.TAG_PUSH, len(tags), pages.total)
    return listing


def _count_unlisted(listing: RefListing, kind: EventKind, listed: int,
                    counted: int | None) -> None:
    """GitLab's X-Total (left out above 10,000 items: then nothing is known) against what its
    pages held."""
    if counted is not None and listed < counted:
        listing.unlisted[kind] = counted - listed


def group_project_identities(*, gl: gitlab.Gitlab, group: str) -> list[ProjectIdentity]:
    """The group's projects (id and current path), its subgroups' included, archived ones
    and those of other namespaces shared with it left out (GitLab includes these unless
    with_shared=false, doc/api/groups.md), by path."""
    with _translated(f"list the projects of group {group}"):
        grp = gl.groups.get(group, lazy=True)
        return sorted((ProjectIdentity(int(p.id), str(p.path_with_namespace))
                       for p in grp.projects.list(
                           iterator=True, per_page=PER_PAGE, include_subgroups=True,
                           archived=False, with_shared=False, max_retries=MAX_RETRIES)),
                      key=lambda p: p.path)


def project_hooks(*, gl: gitlab.Gitlab, project: str | int,
                  name: str | None = None) -> list[dict[str, Any]] | None:
    """The project's webhooks as GitLab gives them; None when the token may not read them
    (they need the Maintainer role: 403), nor see the project at all (404 "Project Not Found",
    GitLab's answer for a private project the user is no member of, as for a deleted one)."""
    try:
        with _translated(f"list the hooks of {name or project}"):
            return [h.asdict() for h in _project(gl, project).hooks.list(
                iterator=True, per_page=PER_PAGE, max_retries=MAX_RETRIES)]
    except PermanentError as err:
        if isinstance(err.__cause__, gl_errors.GitlabError) and \
                err.__cause__.response_code in (403, 404):
            return None
        raise


def set_commit_status(*, gl: gitlab.Gitlab, project: str, sha: str, state: str, name: str,
                      target_url: str | None = None, description: str | None = None,
                      ref: str | None = None, max_retries: int = MAX_RETRIES,
                      project_id: int | str | None = None,
                      pipeline_id: int | str | None = None) -> dict[str, Any]:
    """POST /projects/:id/statuses/:sha (needs the api scope): the status GitLab stored.
    With max_retries=0 a 429 or 5xx is not tried again here: the RetryableError carries the
    wait GitLab asked for (Retry-After, or the RateLimit-* reset), for a caller that keeps
    its own schedule (workers.commit_statuses). With `project_id`, the post goes to the
    project by its numeric id, which a rename or move keeps (GitLab follows an old path only
    until another project or group takes it); `project` (its path) names it in messages.
    With `pipeline_id`, into that pipeline, not the newest of the sha and ref."""
    data = {"state": state, "name": name}
    if pipeline_id:
        data["pipeline_id"] = int(pipeline_id)  # Grape: type: Integer
    if target_url:
        data["target_url"] = target_url
    if description:
        data["description"] = description
    if ref:
        data["ref"] = ref
    try:
        with _translated(f"set the commit status {name} of {project}@{sha[:12]}",
                         scope="api"):
            commit = _project(gl, project_id or project).commits.get(sha, lazy=True)
            return commit.statuses.create(data, max_retries=max_retries).asdict()
    except PermanentError as err:
        # 409: another update of this commit's statuses held GitLab's lock on it past its
        # wait (Ci::CreateCommitStatusService#execute, "Another update to this commit status
        # is in progress"), and nothing was changed: the same post later is taken. Dropped,
        # the commit would keep the state before (a status "running" for ever).
        if getattr(err.__cause__, "response_code", None) == 409:
            raise StatusLocked(str(err)) from err.__cause__
        if _refused_fields(err) == {"target_url"}:
            raise LinkRefused(str(err)) from err.__cause__
        if getattr(err.__cause__, "response_code", None) == 403 and \
                not isinstance(err, ScopeRefused):
            # authorize! :create_commit_status (the Developer role), then Ci::PipelinePolicy:
            # on a protected branch or tag, update_pipeline needs leave to push or merge to
            # it (to create it): by GitLab's defaults a Maintainer's
            raise Forbidden(
                f"{err}; the token's user needs the Developer role in the project and, for a "
                f"protected branch or tag ({ref or 'the ref'} here, if protected), leave to "
                "push or merge to it (to create it): the Maintainer role by GitLab's "
                "defaults; an archived project is read-only to all") from err.__cause__
        if getattr(err.__cause__, "response_code", None) == 404 and pipeline_id and \
                _message(err.__cause__).startswith(_PIPELINE_NOT_FOUND):
            raise PipelineGone(str(err)) from err.__cause__
        if getattr(err.__cause__, "response_code", None) == 404 and \
                _message(err.__cause__) == _PROJECT_NOT_FOUND:
            # find_project! before anything else: every build of the project is refused alike
            raise ProjectNotFound(
                f"{err}; the token's user does not see the project: not a member of a "
                "private project (GitLab answers it as a deleted one), or it was deleted"
            ) from err.__cause__
        if getattr(err.__cause__, "response_code", None) == 400:
            text = _message(err.__cause__)
            if text.startswith(_LOCK_FAILED):
                raise StatusLocked(str(err)) from err.__cause__
            if text.startswith(_DATABASE_ERROR_PREFIX):
                raise GitLabFailed(str(err)) from err.__cause__
        raise
    except RetryableError as err:
        session = getattr(gl, "session", None)
        if err.retry_after is None and isinstance(session, PacedSession) and \
                session.last_pause.seconds:
            err.retry_after = session.last_pause.seconds
        raise


def commit_statuses(*, gl: gitlab.Gitlab, project: str, sha: str, name: str,
                    ref: str | None = None, project_id: int | str | None = None,
                    max_retries: int = MAX_RETRIES) -> list[dict[str, Any]]:
    """GET /projects/:id/repository/commits/:sha/statuses of that name (and ref), every page:
    the latest statuses of the commit's pipelines, each with its pipeline_id (a GitLab since
    gitlab-org/gitlab!127559). With max_retries=0 a 429 or 5xx is not tried again here."""
    params = {"name": name, **({"ref": ref} if ref else {})}
    with _translated(f"read the commit statuses {name} of {project}@{sha[:12]}"):
        commit = _project(gl, project_id or project).commits.get(sha, lazy=True)
        return [s.asdict() for s in commit.statuses.list(
            get_all=True, max_retries=max_retries, **params)]


def _refused_fields(err: PermanentError) -> set[str]:
    """The fields a 400 validation error names: Ci::CreateCommitStatusService answers an
    invalid status with bad_request(commit_status.errors.messages), {"message": {field:
    [...]}}, which python-gitlab keeps as the error's message."""
    cause = err.__cause__
    message = getattr(cause, "error_message", None)
    if getattr(cause, "response_code", None) != 400 or not isinstance(message, dict):
        return set()
    return set(message)
