"""A GitLab REST API (v4) for tests: the endpoints python-gitlab calls for the catch-up and for
commit statuses, over real HTTP.

A werkzeug server on 127.0.0.1 (free port, background thread) with the shapes, headers and
errors GitLab's own API gives, and state a test can seed and read:

- ``projects``: path -> ``FakeProject`` (``add_project``): branches and tags (name -> commit
  sha), hooks, the statuses posted; ``push``/``tag``/``delete`` move its refs as a push would;
- ``tokens``: token -> scopes. A request without a known ``PRIVATE-TOKEN`` answers 401
  ``{"message":"401 Unauthorized"}`` (lib/api/helpers.rb, ``unauthorized!``); a write with a
  token without ``api`` answers 403 ``insufficient_scope`` (Gitlab::Auth::AuthFinders,
  doc/api/rest/authentication.md), and any request with a token without ``api`` nor
  ``read_api`` (``read_repository`` only, say) answers 403 ``insufficient_scope``;
- ``requests``: every request as ``Recorded`` (method, path, query, status).

Pagination (doc/api/rest/_index.md, "Offset-based pagination"): ``page`` and ``per_page``
(default 20, at most 100); every list answer has ``X-Page``, ``X-Per-Page``, ``X-Next-Page``
and ``X-Prev-Page`` (empty when none), ``X-Total``, ``X-Total-Pages`` and a ``Link`` header
with rel prev, next, first and last, each URL carrying the request's own query, on the
host and port of GitLab's external_url (``external_host``), not the address asked. Branches come
sorted by name (doc/api/branches.md), tags by last update, newest first (doc/api/tags.md:
``order_by`` updated, ``sort`` desc by default).

A project is named by its numeric id or its URL-encoded path (``group%2Fapp``,
doc/api/rest/_index.md#namespaced-paths): a literal ``/`` in it does not route, as in GitLab.
A path (a group's too) is found in any case, and answered as it was created (see ``_find``);
a project's old path after ``rename_project`` or ``move_group`` too, for every method: the API
follows the redirect for a POST as for a GET (API::Helpers#find_project:
``find_by_full_path(id, follow_redirects: true)``, whatever the method; only the web UI
follows for GET alone, RoutableActions#find_routable!: ``follow_redirects: request.get?``),
until a project or group is made at that path or above it (``add_project``, ``add_group``:
Route#delete_conflicting_redirects), when the old path names the new project, or none. An
unknown one answers 404 ``{"message":"404 Project Not Found"}``.

Rate limits (doc/administration/settings/user_and_ip_rate_limits.md, "Response headers"):
with ``rate_limit(limit, period_seconds)``, a fixed window per period counts requests; every
answer carries ``RateLimit-Name``, ``-Limit``, ``-Observed``, ``-Remaining``, ``-Reset`` (Unix
time) and ``-ResetTime`` (HTTP date), and past the limit the answer is 429, plain text
"Retry later" with ``Retry-After`` (seconds to the window's end). ``throttle_next(n, after)``
answers the next n requests 429 with ``Retry-After: after`` whatever the window says.

Hooks (doc/api/project_webhooks.md): ``alert_status`` is ``executable``,
``temporarily_disabled`` or ``disabled``, with ``disabled_until`` (ISO 8601) while temporarily
disabled (app/models/concerns/web_hooks/auto_disabling.rb). Reading them needs the Maintainer
role: a project seeded with ``hooks_readable=False`` answers 403 ``{"message":"403
Forbidden"}``.

Commit statuses (doc/api/commits.md, "Set the pipeline status of a commit"; lib/api/
commit_statuses.rb and Ci::CreateCommitStatusService, GitLab 17-18):
``POST /projects/:id/statuses/:sha`` with ``state`` (pending, running, success, failed,
canceled, skipped), ``name``, ``ref``, ``target_url``, ``description``; 400 for another state
(``{"error":"state does not have a valid value"}``). While ``hold_status_lock(path, sha)``
plays another update of that commit's statuses, a post is answered 409 (the service's lock
per project and sha). Then: 404 ``{"message":"404 Commit Not Found"}`` for a commit the
repository does not hold (a force-pushed one is still held: ``forget_commit``); the pipeline
is the newest of the sha (and of the ref, if one is posted; the one of ``pipeline_id``, an
Integer, if posted: 404 "404 Pipeline for pipeline_id, sha and ref Not Found" if it names
none, ``delete_pipeline``), else a new external one (``add_pipeline`` plays GitLab CI
making one; first_matching_pipeline, find_or_create_pipeline); the ref is the
one posted, as it is, else that pipeline's, else the first branch whose head the commit is
(404 "404 References for commit Not Found" if none). The status of that name and ref that is
pending or running in that pipeline is found (``running_or_pending``, ``in_pipelines``), else
a new one built (state created; older ones of its name in that pipeline are retried); every
answer carries its ``pipeline_id`` (unless ``names_pipelines`` is False); its non-blank
target_url and description are assigned, and validated (400 ``{"message": {"target_url":
[...]}}``, nothing saved; see ``_status_errors``: http(s) only, the allowlist of
``deny_requests_except``, 255 characters for ref, target_url and description:
``CommitStatus`` validates their length). A token whose user is below Developer
(``roles``) is answered 403 ``{"message":"403 Forbidden"}`` (``authorize!
:create_commit_status``), and so is one below Maintainer on a ref ``protect``ed with GitLab's
defaults (Ci::PipelinePolicy, protected_ref). Then the event runs: pending = ``enqueue!``
(created -> pending), running = ``enqueue`` + ``run!`` (pending -> running), success / failed
/ canceled = ``success!`` / ``drop!`` / ``cancel!`` (from created, pending or running:
CommitStatus' state machine). An invalid transition is answered 400 ``{"message":"Cannot
transition status via :run from :running (Reason(s): ...)"}`` (Ci::Pipelines::AddJobService
rescues StateMachines::InvalidTransition) and, the transaction rolled back, keeps nothing.
``GET /projects/:id/repository/commits/:sha/statuses`` lists the latest (not retried)
statuses of the sha's pipelines, of the ``ref`` and ``name`` given, by id, paged (404 for a
commit not held). ``status_posts`` records every POST's state, name,
description, target_url and answer, in order. ``outage(seconds, status)`` answers every
request that status for a while (500 ``{"message":"500 Internal Server Error"}``, or 429 as
below with ``Retry-After``).

Limits: groups hold the projects whose path starts with the group's (subgroups always
included); no keyset pagination (branches and tags have only offset pagination); projects
list no other attributes than their ids, paths and default branch.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import pytest
import requests
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

TOKEN = "glpat-catchup-test-7Hq2"
DEFAULT_PER_PAGE, MAX_PER_PAGE = 20, 100
STATUS_STATES = ("pending", "running", "success", "failed", "canceled", "skipped")
# The state machine's event per posted state, and the states each event moves from
# (app/models/commit_status.rb, GitLab 18: skip from created or pending).
_EVENTS = {"pending": ("enqueue", ("created",)), "running": ("run", ("pending",)),
           "success": ("success", ("created", "pending", "running")),
           "failed": ("drop", ("created", "pending", "running")),
           "canceled": ("cancel", ("created", "pending", "running")),
           "skipped": ("skip", ("created", "pending"))}
STATUS_TEXT_MAX_CHARS = 255
_ROLES = ("guest", "reporter", "developer", "maintainer", "owner")
_ids = itertools.count(1)


def captured_project_id(name: str = "gitlab_push_real_lrz.json") -> int:
    """The project id a real push capture carries: the project a test seeds for its pushes
    has it, as on the GitLab that sent it (commit statuses go by it: workers.core.
    commit_status.PROJECT_ID_FIELD)."""
    from tests.support.payloads import fixture
    return fixture(name)["project"]["id"]


# The head of GitLab's public/502.html, which Workhorse serves while Puma does not answer.
BAD_GATEWAY_PAGE = """<!DOCTYPE html>
<html class="devise-layout-html">
<head>
  <meta content="width=device-width, initial-scale=1, maximum-scale=1" name="viewport">
  <meta charset="utf-8">
  <title>GitLab is not responding (502)</title>
  <style>
    body { color: #666; text-align: center; font-family: "Helvetica Neue", Helvetica, Arial,
    sans-serif; margin: auto; font-size: 14px; }
  </style>
</head>
<body>
  <h1>502</h1>
  <div class="container"><h3>Whoops, GitLab is taking too much time to respond.</h3></div>
</body>
</html>
"""


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))


@dataclass
class FakeCommit:
    sha: str
    committed_at: float
    title: str = "a change"
    message: str = ""  # the whole message (title, blank line, body); "": the title alone

    def json(self, base: str, project: str) -> dict[str, Any]:
        """The commit object inside a branch or a tag (doc/api/branches.md)."""
        at = _iso(self.committed_at)
        return {"id": self.sha, "short_id": self.sha[:8], "created_at": at,
                "parent_ids": [], "title": self.title, "message": self.message or self.title,
                "author_name": "Ann Author", "author_email": "ann@example.com",
                "authored_date": at, "committer_name": "Ann Author",
                "committer_email": "ann@example.com", "committed_date": at,
                "trailers": {}, "extended_trailers": {},
                "web_url": f"{base}/{project}/-/commit/{self.sha}"}


@dataclass
class FakeProject:
    id: int
    path: str
    branches: dict[str, FakeCommit] = field(default_factory=dict)
    tags: dict[str, FakeCommit] = field(default_factory=dict)
    hooks: list[dict[str, Any]] = field(default_factory=list)
    hooks_readable: bool = True
    statuses: list[dict[str, Any]] = field(default_factory=list)
    status_posts: list[dict[str, Any]] = field(default_factory=list)
    status_locks: set[str] = field(default_factory=set)  # shas another update holds
    # The project's pipelines, oldest first: {"id", "sha", "ref", "source"}. A status goes
    # into one of them (see _post_status); add_pipeline plays GitLab CI making one.
    pipelines: list[dict[str, Any]] = field(default_factory=list)
    # Ids of statuses a newer one of the same name in the same pipeline superseded
    # (AddJobService: job.update_older_statuses_retried!): the list leaves them out.
    retried: set[int] = field(default_factory=set)
    # Every commit the repository holds: each sha a branch or tag pointed at, kept after a
    # force-push or a branch delete moved the ref away (unreachable objects stay until
    # housekeeping prunes them: forget_commit).
    commits: set[str] = field(default_factory=set)
    protected: set[str] = field(default_factory=set)  # branches and tags; see protect
    default_branch: str = "main"
    # The project's Repository feature (Settings > General > Visibility): off in a project
    # kept for its issues or wiki. See _project_api.
    repository_enabled: bool = True
    # ... or on for the project's members only (repository_access_level "private"), and the
    # users of these tokens no members (a public project read by an outsider's token)
    repository_members_only: bool = False
    outsiders: set[str] = field(default_factory=set)
    shared_with: set[str] = field(default_factory=set)  # groups (lower case); share_project


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    status: int


class GitLabFake:
    def __init__(self, *, token: str = TOKEN, scopes: tuple[str, ...] = ("read_api",)):
        self.tokens: dict[str, set[str]] = {token: set(scopes)}
        self.token = token
        self.expired_tokens: set[str] = set()  # known tokens past their expiry date; see _respond
        self.projects: dict[str, FakeProject] = {}
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._limit: tuple[int, int] | None = None
        self._window: tuple[int, int] = (0, 0)  # (window start, requests counted)
        self._throttled: list[int] = []  # Retry-After of the next 429s to answer
        self._outage: tuple[float, int, int | str] | None = None  # (until, status, Retry-After)
        self.stall_seconds = 0.0  # see stall
        self._retry_after_on_5xx = False  # see outage
        self.url_allowlist: frozenset[str] | None = None  # see deny_requests_except
        self.redirects: dict[str, str] = {}  # old path (lower case) -> path; rename_project
        self._failing_posts: list[str] = []  # see fail_status_posts
        # path -> (status, the requests' sub-path prefix); see fail_project
        self.failing_projects: dict[str, tuple[int, str]] = {}
        self.failing_groups: dict[str, int] = {}  # group path (lower case) -> status; fail_group
        self.branch_fetch_cap: int | None = None  # see cut_branch_pages
        # host:port of GitLab's external_url, when the client reaches it at another address
        # (an in-cluster Service): its Link headers name that one (see _page)
        self.external_host: str | None = None
        self._deletes_after_page: dict[tuple[str, str], str] = {}  # delete_branch_after_page
        # token -> the role of its user in every project (guest, reporter, developer,
        # maintainer); a token not named here is a maintainer's. See _post_status, and
        # _project_api for a guest's reads.
        self.roles: dict[str, str] = {}
        # False plays a GitLab before gitlab-org/gitlab!127559 (mid-2023), whose statuses
        # (API::Entities::CommitStatus) carry no pipeline_id
        self.names_pipelines = True
        self._server = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> GitLabFake:
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True,
                                   request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name="gitlab-fake")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> GitLabFake:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    # --- seeding ------------------------------------------------------------------------
    def add_project(self, path: str, *, branches: dict[str, str] | None = None,
                    tags: dict[str, str] | None = None, hooks_readable: bool = True,
                    committed_at: float | None = None,
                    project_id: int | None = None) -> FakeProject:
        """A project at `path`; `project_id`: its id, as the pushes a test sends carry it
        (a real capture's project.id), else a new one."""
        at = time.time() if committed_at is None else committed_at
        project = FakeProject(next(_ids) if project_id is None else project_id, path,
                              hooks_readable=hooks_readable)
        project.branches = {n: FakeCommit(s, at) for n, s in (branches or {}).items()}
        project.tags = {n: FakeCommit(s, at) for n, s in (tags or {}).items()}
        project.commits = {c.sha for c in (*project.branches.values(), *project.tags.values())}
        with self._lock:
            self.projects[path] = project
            self._delete_conflicting_redirects(path)
        return project

    def add_group(self, path: str) -> None:
        """A group is made at `path` (the old path of a group that was moved or renamed, in a
        reorganisation): its route takes the path, and every redirect at it or under it goes
        (Route: after_create :delete_conflicting_redirects, RedirectRoute.
        matching_path_and_descendants(path)). The projects moved away are no longer found at
        their old paths: 404 "Project Not Found", by path only (their ids stay)."""
        with self._lock:
            self._delete_conflicting_redirects(path)

    def move_group(self, path: str, new_path: str) -> None:
        """The group is renamed or moved under another group: every project under it moves
        with it, each keeping its id, and each old path stays a redirect (Route#
        rename_descendants: Routes::RenameDescendantsService creates a redirect for every
        descendant's old path)."""
        for project in [p for p in list(self.projects) if p.lower().startswith(
                path.lower() + "/")]:
            self.rename_project(project, new_path + project[len(path):])

    def _delete_conflicting_redirects(self, path: str) -> None:
        """Route#delete_conflicting_redirects: RedirectRoute.matching_path_and_descendants
        (path), in any case (the redirect's path is matched with LOWER)."""
        under = path.lower() + "/"
        for old in [o for o in self.redirects if o == path.lower() or o.startswith(under)]:
            del self.redirects[old]

    def rename_project(self, path: str, new_path: str) -> None:
        """The project is renamed or moved to another group; its id stays. GitLab keeps its
        old path as a redirect (Route#create_redirect_for_old_path), which the API follows
        (API::Helpers#find_project: find_by_full_path(id, follow_redirects: true)) until a
        project is made at that path (Route#delete_conflicting_redirects)."""
        with self._lock:
            project = self.projects.pop(path)
            project.path = new_path
            self.projects[new_path] = project
            self._delete_conflicting_redirects(new_path)  # after_update, as after_create
            for old, target in list(self.redirects.items()):
                if target == path:  # a redirect to the path before leads to the new one
                    self.redirects[old] = new_path
            self.redirects[path.lower()] = new_path

    def remove_project(self, path: str) -> None:
        """The project is gone for this token: deleted, or its user no longer a member of a
        private project. GitLab answers both alike, 404 {"message":"404 Project Not Found"}
        (lib/api/helpers.rb, find_project!; gitlab-org/gitlab-ce#65271), and leaves it out
        of the group's listing."""
        with self._lock:
            del self.projects[path]

    def share_project(self, path: str, group: str) -> None:
        """The project (of another namespace) is shared with the group (Project > Members >
        Invite a group): the group's members get access, and its project listing includes
        it by default (with_shared)."""
        with self._lock:
            self.projects[path].shared_with.add(group.lower())

    def push(self, path: str, branch: str, sha: str, message: str = "") -> None:
        """The branch now points at `sha` (created if new), as after a push; the commit's
        `message` as the branches API lists it (its title is its first line)."""
        with self._lock:
            self.projects[path].branches[branch] = FakeCommit(
                sha, time.time(), *((message.split("\n", 1)[0], message) if message else ()))
            self.projects[path].commits.add(sha)

    def tag(self, path: str, name: str, sha: str) -> None:
        with self._lock:
            self.projects[path].tags[name] = FakeCommit(sha, time.time())
            self.projects[path].commits.add(sha)

    def protect(self, path: str, ref: str) -> None:
        """The branch or tag (by name) is protected with GitLab's defaults: only Maintainers
        may push and merge to it, or create it (doc/user/project/repository/branches/
        protected.md)."""
        with self._lock:
            self.projects[path].protected.add(ref)

    def add_pipeline(self, path: str, sha: str, ref: str, *, source: str = "web") -> int:
        """GitLab makes a pipeline of the commit on `ref` (a project with a .gitlab-ci.yml:
        its push pipeline, or one run by hand with "Run pipeline", source web): from then on
        it is the newest pipeline of that sha and ref, the one a status posted without a
        `pipeline_id` goes into (Ci::CreateCommitStatusService#first_matching_pipeline).
        Its id."""
        with self._lock:
            pipeline = {"id": next(_ids), "sha": sha, "ref": ref, "source": source}
            self.projects[path].pipelines.append(pipeline)
            return pipeline["id"]

    def delete_pipeline(self, path: str, pipeline_id: int) -> None:
        """A Maintainer deletes the pipeline, its statuses with it (Ci::DestroyPipelineService)."""
        with self._lock:
            project = self.projects[path]
            project.pipelines = [p for p in project.pipelines if p["id"] != pipeline_id]
            project.statuses = [s for s in project.statuses
                                if s["pipeline_id"] != pipeline_id]

    def forget_commit(self, path: str, sha: str) -> None:
        """The repository no longer holds the commit (housekeeping pruned it once no ref
        reached it, or it was never pushed here): a status post for it answers 404."""
        with self._lock:
            self.projects[path].commits.discard(sha)

    def delete_branch_after_page(self, path: str, branch: str, page: int) -> None:
        """The branch is deleted (a merged merge request's source branch, say) right after
        page `page` of the project's branches is served: offset pagination then skips the
        branch that moves from the next page onto that one (doc/api/rest/_index.md: offset
        pagination reads a changing list as it is at each request)."""
        with self._lock:
            self._deletes_after_page[(path, str(page))] = branch

    def cut_branch_pages(self, cap: int | None = 100) -> None:
        """Branch pages answered as GitLab 18 answers them with use_new_branches_finder_api
        on (its default) before gitlab-org/gitlab MR 244062 (work item 605032):
        Gitlab::Git::Finders::BranchesFinder fetches page x per_page refs to slice page N out
        of them, and RefsFinder clamps that fetch to 100 (MAX_PER_PAGE): with per_page 100,
        page 2 on is [] while X-Total, X-Total-Pages and Link still count every branch.
        None: fixed."""
        with self._lock:
            self.branch_fetch_cap = cap

    def fail_status_posts(self, count: int, message: str) -> None:
        """The next `count` status posts that pass validation fail inside GitLab, answered 400
        {"message": message} with nothing saved: Ci::Pipelines::AddJobService#execute!
        rescues any StandardError as an error response (gitlab-org/gitlab work item 556736),
        which Ci::CreateCommitStatusService answers bad_request. E.g. 'Failed to obtain a
        lock' (Gitlab::ExclusiveLeaseHelpers#in_lock: the pipeline's add-job lock held past
        20 tries 0.5 s apart), or a database error ('PG::QueryCanceled: ERROR: ...')."""
        with self._lock:
            self._failing_posts += [message] * count

    def fail_project(self, path: str, status: int | None = 504, *, under: str = "") -> None:
        """Every request for this project alone is answered `status` (None: served again), as
        a front answers one slow repository's listing when its own timeout runs out (nginx's
        proxy_read_timeout: 504; Workhorse's proxy timeout: 502) while the others are served.
        With `under` ("repository/"), only the requests below that sub-path of the project:
        listing a repository's branches or tags is Gitaly's work on that repository alone
        (FindAllBranches, FindAllTags), reading its hooks a database query that is served."""
        with self._lock:
            if status is None:
                self.failing_projects.pop(path, None)
            else:
                self.failing_projects[path] = (status, under)

    def fail_group(self, path: str, status: int | None = 504) -> None:
        """Listing this group's projects is answered `status` (None: served again), as a front
        answers a listing that ran past its timeout (nginx's proxy_read_timeout: 504): a big
        group's, its subgroups' projects included, while GitLab serves every other call."""
        with self._lock:
            if status is None:
                self.failing_groups.pop(path.lower(), None)
            else:
                self.failing_groups[path.lower()] = status

    def deny_requests_except(self, *hosts: str) -> None:
        """The instance setting "Block all requests, except those on the allowlist"
        (deny_all_requests_except_allowed, doc/security/webhooks.md, "Filter requests"),
        with `hosts` on the allowlist: a commit status's target_url elsewhere is refused."""
        with self._lock:
            self.url_allowlist = frozenset(h.lower() for h in hosts)

    def delete_branch(self, path: str, branch: str) -> None:
        with self._lock:
            del self.projects[path].branches[branch]

    def hold_status_lock(self, path: str, sha: str) -> None:
        """Another update of this commit's statuses holds GitLab's lock: posts answer 409
        (see _post_status) until release_status_lock."""
        with self._lock:
            self.projects[path].status_locks.add(sha)

    def release_status_lock(self, path: str, sha: str) -> None:
        with self._lock:
            self.projects[path].status_locks.discard(sha)

    def add_hook(self, path: str, url: str, *, alert_status: str = "executable",
                 disabled_until: float | None = None) -> dict[str, Any]:
        project = self.projects[path]
        hook = {"id": next(_ids), "url": url, "name": "", "description": "",
                "project_id": project.id, "created_at": _iso(time.time()),
                "push_events": True, "push_events_branch_filter": "",
                "branch_filter_strategy": "all_branches", "tag_push_events": True,
                "issues_events": False, "confidential_issues_events": False,
                "merge_requests_events": False, "note_events": False,
                "confidential_note_events": False, "job_events": False,
                "pipeline_events": False, "wiki_page_events": False,
                "deployment_events": False, "releases_events": False,
                "enable_ssl_verification": True, "repository_update_events": False,
                "alert_status": alert_status,
                "disabled_until": None if disabled_until is None else _iso(disabled_until),
                "url_variables": [], "custom_webhook_template": "", "custom_headers": []}
        with self._lock:
            project.hooks.append(hook)
        return hook

    def rate_limit(self, limit: int, period_seconds: int) -> None:
        with self._lock:
            self._limit, self._window = (limit, period_seconds), (0, 0)

    def throttle_next(self, count: int, retry_after: int) -> None:
        with self._lock:
            self._throttled += [retry_after] * count

    def outage(self, seconds: float, status: int = 500, retry_after: int | str = 60, *,
               retry_after_on_5xx: bool = False) -> None:
        """Every request for the next `seconds` is answered `status` (500 or 429); with
        `retry_after_on_5xx`, a 5xx carries `Retry-After` too, as a front's maintenance page
        may (a 503 "come back in an hour": RFC 9110 10.2.3 lets a 503 say when, in seconds or
        as an HTTP-date: `retry_after` a string)."""
        with self._lock:
            self._outage = (time.monotonic() + seconds, status, retry_after)
            self._retry_after_on_5xx = retry_after_on_5xx

    def stall(self, seconds: float) -> None:
        """Every request from now on is answered only after `seconds`: GitLab taking calls but
        answering none in time (Puma's workers all busy, or its database or Gitaly stuck:
        Workhorse holds each request up to its proxyHeadersTimeout, 5 minutes by default,
        gitlab-workhorse's config), which a client with a shorter timeout sees as a read
        timeout. 0 ends it."""
        self.stall_seconds = seconds

    def status_history(self, path: str, sha: str | None = None) -> list[tuple[str, str, int]]:
        """(state, description, answer) of every status POST to the project (to that commit),
        in order."""
        with self._lock:
            return [(p["state"], p["description"], p["answer"])
                    for p in self.projects[path].status_posts if sha in (None, p["sha"])]

    def answered(self, status: int, path_part: str = "") -> int:
        """How many requests (whose path contains `path_part`) were answered `status`."""
        return sum(1 for r in self.requests if r.status == status and path_part in r.path)

    # --- the API ------------------------------------------------------------------------
    def _app(self, environ, start_response):
        request = Request(environ)
        raw_path = environ.get("RAW_URI", environ.get("REQUEST_URI", request.path))
        raw_path = raw_path.split("?", 1)[0]
        if self.stall_seconds:
            time.sleep(self.stall_seconds)  # the server's own delay (see stall), no test's wait
        response = self._respond(request, raw_path)
        with self._lock:
            self.requests.append(Recorded(request.method, raw_path, dict(request.args),
                                          response.status_code))
        return response(environ, start_response)

    def _respond(self, request: Request, raw_path: str) -> Response:
        limited = self._count_for_rate_limit()
        if limited is not None:
            return limited
        headers = self._rate_limit_headers()
        token = request.headers.get("PRIVATE-TOKEN") or \
            request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in self.expired_tokens:
            # An access token past its expires_at (GitLab 16+ gives every one at most a year):
            # API::APIGuard rescues Gitlab::Auth::ExpiredError as rack-oauth2's
            # Bearer::Unauthorized(:invalid_token, "Token is expired. You can either do
            # re-authorization or token refresh."), its body as below (lib/api/api_guard.rb)
            return _json({"error": "invalid_token", "error_description": "Token is expired. "
                          "You can either do re-authorization or token refresh."}, 401,
                         {**headers, "WWW-Authenticate": 'Bearer realm="", error='
                          '"invalid_token", error_description="Token is expired."'})
        if token not in self.tokens:
            return _json({"message": "401 Unauthorized"}, 401, headers)
        if not self.tokens[token] & {"api", "read_api"}:
            # A token without an API scope (read_repository, read_user, ...) is refused by
            # every API call, a read too (Gitlab::Auth::AuthFinders#validate_access_token!:
            # a GET allows api and read_api; gitlab-org/gitlab#520392 shows the answer).
            return _json({"error": "insufficient_scope", "error_description": "The request "
                          "requires higher privileges than provided by the access token.",
                          "scope": "api read_api"}, 403, headers)
        parts = raw_path.split("/")
        if parts[:3] != ["", "api", "v4"] or len(parts) < 5:
            return _json({"error": "404 Not Found"}, 404, headers)
        kind, ident, rest = parts[3], unquote(parts[4]), parts[5:]
        with self._lock:
            if kind == "projects":
                return self._project_api(request, ident, rest, token, headers)
            if kind == "groups" and rest == ["projects"] and request.method == "GET":
                return self._group_projects(request, ident, headers)
        return _json({"error": "404 Not Found"}, 404, headers)

    def _find(self, ident: str) -> FakeProject | None:
        if ident.isdigit():
            return next((p for p in self.projects.values() if p.id == int(ident)), None)
        # A path is found in any case: GitLab looks it up exactly, then case-insensitively
        # (Routable.find_by_full_path: Route.find_by(path:) || Route.iwhere(path:)); two
        # routes never differ in case only (Route validates the path's uniqueness with
        # case_sensitive: false). Its answers give the path as created (path_with_namespace).
        return self.projects.get(ident) or next(
            (p for p in self.projects.values() if p.path.lower() == ident.lower()), None) or \
            self.projects.get(self.redirects.get(ident.lower(), ""))

    def _project_api(self, request: Request, ident: str, rest: list[str], token: str,
                     headers: dict[str, str]) -> Response:
        project = self._find(ident)
        if project is None:
            return _json({"message": "404 Project Not Found"}, 404, headers)
        status, under = self.failing_projects.get(project.path, (0, ""))
        if status and "/".join(rest + [""]).startswith(under):
            return _json({"message": f"{status} Gateway Error"}, status, headers)
        base = self.url
        if request.method == "GET" and rest == []:
            return _json(self._project_json(project), 200, headers)
        if rest[:1] == ["repository"] and (not project.repository_enabled or (
                project.repository_members_only and token in project.outsiders)):
            # API::Branches' before: require_repository_enabled!, not_found!("Repository")
            # unless feature_available?(:repository, current_user) (lib/api/helpers.rb),
            # which a members-only feature is not to a non-member (ProjectFeature); API::
            # Tags' authorize_read_code! refuses it first: 403.
            if rest == ["repository", "branches"]:
                return _json({"message": "404 Repository Not Found"}, 404, headers)
            return _json({"message": "403 Forbidden"}, 403, headers)
        if rest in (["repository", "branches"], ["repository", "tags"]) and \
                self.roles.get(token) == "guest":
            # A Guest may not read a private project's code (doc/user/permissions.md; API::
            # Branches' and API::Tags' authorize_read_code!): forbidden!, 403. (Every fake
            # project reads as private to its guests.)
            return _json({"message": "403 Forbidden"}, 403, headers)
        if request.method == "GET" and rest == ["repository", "branches"]:
            items = [{"name": name, "merged": False, "protected": name == project.default_branch,
                      "default": name == project.default_branch, "developers_can_push": False,
                      "developers_can_merge": False, "can_push": False,
                      "web_url": f"{base}/{project.path}/-/tree/{name}",
                      "commit": commit.json(base, project.path)}
                     for name, commit in sorted(project.branches.items())]
            response = self._page(request, items, headers, fetch_cap=self.branch_fetch_cap)
            gone = self._deletes_after_page.pop((project.path, request.args.get("page", "1")),
                                                None)
            if gone is not None:  # deleted while the client reads the pages
                del project.branches[gone]
            return response
        if request.method == "GET" and rest == ["repository", "tags"]:
            # Newest first by default; a lightweight tag's target is its commit.
            ordered = sorted(project.tags.items(), key=lambda kv: -kv[1].committed_at)
            items = [{"name": name, "message": "", "target": commit.sha,
                      "commit": commit.json(base, project.path), "release": None,
                      "protected": False, "created_at": _iso(commit.committed_at)}
                     for name, commit in ordered]
            return self._page(request, items, headers)
        if request.method == "GET" and rest == ["hooks"]:
            if not project.hooks_readable:
                return _json({"message": "403 Forbidden"}, 403, headers)
            return self._page(request, list(project.hooks), headers)
        if request.method == "GET" and len(rest) == 4 and \
                rest[:2] == ["repository", "commits"] and rest[3] == "statuses":
            return self._list_statuses(request, project, rest[2], headers)
        if request.method == "POST" and len(rest) == 2 and rest[0] == "statuses":
            return self._post_status(request, project, rest[1], token, headers)
        return _json({"error": "404 Not Found"}, 404, headers)

    def _project_json(self, project: FakeProject) -> dict[str, Any]:
        name = project.path.rsplit("/", 1)[-1]
        return {"id": project.id, "name": name, "path": name,
                "path_with_namespace": project.path,
                "name_with_namespace": project.path.replace("/", " / "),
                "default_branch": project.default_branch, "archived": False,
                "web_url": f"{self.url}/{project.path}",
                # API::Entities::Project, to any user who sees the project
                "repository_access_level": "disabled" if not project.repository_enabled
                else "private" if project.repository_members_only else "enabled"}

    def _group_projects(self, request: Request, group: str,
                        headers: dict[str, str]) -> Response:
        # A group's path is found in any case too (Routable.find_by_full_path, as _find).
        if group.lower() in self.failing_groups:
            status = self.failing_groups[group.lower()]
            return _json({"message": f"{status} Gateway Error"}, status, headers)
        members = [p for p in self.projects.values()
                   if p.path.lower().startswith(group.lower() + "/")]
        if not members:
            return _json({"message": "404 Group Not Found"}, 404, headers)
        if request.args.get("include_subgroups") not in ("true", "True", "1"):
            members = [p for p in members if "/" not in p.path[len(group) + 1:]]
        if request.args.get("with_shared") not in ("false", "False", "0"):
            # with_shared: "Include projects shared to this group. Default is true"
            # (doc/api/groups.md, "List projects"): projects of other namespaces that were
            # shared with the group (share_project)
            members += [p for p in self.projects.values() if group.lower() in p.shared_with
                        and p not in members]
        items = [self._project_json(p) for p in sorted(members, key=lambda p: p.id)]
        return self._page(request, items, headers)

    def _post_status(self, request: Request, project: FakeProject, sha: str, token: str,
                     headers: dict[str, str]) -> Response:
        if "api" not in self.tokens[token]:
            return _json({"error": "insufficient_scope", "error_description": "The request "
                          "requires higher privileges than provided by the access token.",
                          "scope": "api"}, 403, headers)
        data = request.get_json(silent=True) or dict(request.form) or dict(request.args)
        state = data.get("state")
        if state not in STATUS_STATES:
            return _json({"error": "state does not have a valid value"}, 400, headers)
        if data.get("pipeline_id") is not None:  # Grape: optional :pipeline_id, type: Integer
            try:
                data = {**data, "pipeline_id": int(data["pipeline_id"])}
            except (TypeError, ValueError):
                return _json({"error": "pipeline_id is invalid"}, 400, headers)
        role = _ROLES.index(self.roles.get(token, "maintainer"))
        if role < _ROLES.index("developer"):  # authorize! :create_commit_status
            return _json({"message": "403 Forbidden"}, 403, headers)
        if sha in project.status_locks:
            # Ci::CreateCommitStatusService#execute posts under an exclusive lease per project
            # and sha ("api:commit_statuses:project:ID:sha:SHA"), waits for it about 10 s (20
            # tries, 0.5 s apart; answered at once here), then answers 409 with nothing
            # changed (render_api_error!, reason :conflict).
            project.status_posts.append({"sha": sha, "state": state, "name": data.get("name"),
                                         "description": data.get("description"),
                                         "target_url": data.get("target_url"), "answer": 409})
            return _json({"message": "Another update to this commit status is in progress"},
                         409, headers)
        # Ci::CreateCommitStatusService#validate: the commit first, then the ref: the one
        # posted, as it is (not looked up), else the first branch that contains the commit
        # (repository.branch_names_contains; here: a branch whose head it is).
        # params[:name] || params[:context] || 'default': Ruby's ||, so a blank name is kept
        # (and refused below: CommitStatus validates :name, presence: true)
        name = next((data[k] for k in ("name", "context") if data.get(k) is not None),
                    "default")
        post = {"sha": sha, "state": state, "name": name,
                "description": data.get("description"),
                "target_url": data.get("target_url"), "pipeline_id": data.get("pipeline_id")}
        if sha not in project.commits:
            project.status_posts.append({**post, "answer": 404})
            return _json({"message": "404 Commit Not Found"}, 404, headers)
        # first_matching_pipeline: the newest pipeline of the sha, of the ref posted if any,
        # the one of pipeline_id if one is posted; the ref: the one posted, else that
        # pipeline's, else the first branch that contains the commit (repository.
        # branch_names_contains; here: a branch whose head it is).
        matching = [p for p in reversed(project.pipelines) if p["sha"] == sha
                    and (not data.get("ref") or p["ref"] == data["ref"])
                    and (post["pipeline_id"] is None or p["id"] == post["pipeline_id"])]
        ref = data.get("ref") or (matching[0]["ref"] if matching else None) or next(
            (n for n, c in sorted(project.branches.items()) if c.sha == sha), None)
        if not ref:
            project.status_posts.append({**post, "answer": 404})
            return _json({"message": "404 References for commit Not Found"}, 404, headers)
        if post["pipeline_id"] is not None and not matching:
            # #validate: a pipeline_id that names no pipeline of this sha and ref (deleted)
            project.status_posts.append({**post, "answer": 404})
            return _json({"message": "404 Pipeline for pipeline_id, sha and ref Not Found"},
                         404, headers)
        # find_or_create_pipeline: saved before the checks below, whatever they answer
        pipeline = matching[0] if matching else None
        if pipeline is None:
            pipeline = {"id": next(_ids), "sha": sha, "ref": ref, "source": "external"}
            project.pipelines.append(pipeline)
        if ref in project.protected and role < _ROLES.index("maintainer"):
            # Ci::PipelinePolicy: protected_ref (Gitlab::UserAccess#can_update_branch? or
            # #can_create_tag? false) prevents :update_pipeline, and the service answers
            # forbidden before anything is built
            project.status_posts.append({**post, "answer": 403})
            return _json({"message": "403 Forbidden"}, 403, headers)
        # attributes_for_keys (lib/api/helpers.rb) keeps only the present (non-blank) ones.
        attrs = {k: data[k] for k in ("target_url", "description") if data.get(k)}
        errors = self._status_errors({**attrs, "ref": ref})
        if not str(name).strip():
            errors["name"] = ["can't be blank"]
        if errors:  # commit_status.invalid? -> bad_request(errors.messages): nothing saved
            project.status_posts.append({**post, "answer": 400})
            return _json({"message": errors}, 400, headers)
        now = _iso(time.time())
        # external_commit_status_scope: running_or_pending, in_pipelines(pipeline), for_ref,
        # by_name (and for_user: one token's user here)
        status = next((s for s in project.statuses if s["pipeline_id"] == pipeline["id"]
                       and s["name"] == name and s["ref"] == ref
                       and s["status"] in ("pending", "running")), None)
        if self._failing_posts:  # AddJobService's rescue StandardError: rolled back
            project.status_posts.append({**post, "answer": 400})
            return _json({"message": self._failing_posts.pop(0)}, 400, headers)
        found = status is not None
        if status is None:
            status = {"id": next(_ids), "sha": sha, "ref": ref, "status": "created",
                      "name": name, "target_url": None, "description": None,
                      "created_at": now, "started_at": None, "finished_at": None,
                      "allow_failure": False, "coverage": None,
                      "pipeline_id": pipeline["id"],
                      "author": {"id": 1, "username": "ci-autoscaler",
                                 "name": "ci-autoscaler"}}
        current = status["status"]
        if state == "running" and current == "created":
            current = "pending"  # job.enqueue (no bang) before run!
        event, sources = _EVENTS[state]
        if current not in sources:
            # StateMachines::InvalidTransition, rescued by AddJobService: the transaction is
            # rolled back, so neither the state nor the new texts are kept
            project.status_posts.append({**post, "answer": 400})
            return _json({"message": f"Cannot transition status via :{event} from "
                          f":{current} (Reason(s): Status cannot transition via "
                          f"\"{event}\")"}, 400, headers)
        if not found:
            project.retried.update(s["id"] for s in project.statuses
                                   if s["pipeline_id"] == pipeline["id"] and s["name"] == name)
            project.statuses.append(status)
        status.update(attrs)
        status["status"] = state
        if state == "running":
            status["started_at"] = now
        if state in STATUS_STATES[2:]:
            status["finished_at"] = now
        project.status_posts.append({**post, "answer": 201})
        return _json(self._entity(status), 201, headers)

    def _entity(self, status: dict[str, Any]) -> dict[str, Any]:
        return status if self.names_pipelines else \
            {k: v for k, v in status.items() if k != "pipeline_id"}

    def _list_statuses(self, request: Request, project: FakeProject, sha: str,
                       headers: dict[str, str]) -> Response:
        """GET /projects/:id/repository/commits/:sha/statuses (lib/api/commit_statuses.rb):
        404 "404 Commit Not Found" for a commit the repository does not hold; else the
        statuses of the sha's pipelines, the latest only (not retried) unless `all`, of the
        `ref` and `name` given, ordered by id, paged; each with its pipeline_id (exposed since
        gitlab-org/gitlab!127559)."""
        if sha not in project.commits:
            return _json({"message": "404 Commit Not Found"}, 404, headers)
        ref, name = request.args.get("ref"), request.args.get("name")
        every = request.args.get("all") in ("true", "True", "1")
        items = [s for s in project.statuses if s["sha"] == sha
                 and (every or s["id"] not in project.retried)
                 and (not ref or s["ref"] == ref) and (not name or s["name"] == name)]
        return self._page(request, [self._entity(s) for s in sorted(items, key=lambda s: s["id"])],
                          headers)

    def _status_errors(self, attrs: dict[str, str]) -> dict[str, list[str]]:
        """The validation errors of a commit status's texts, as errors.messages gives them.
        GenericCommitStatus: target_url is an addressable_url (AddressableUrlValidator, its
        defaults: schemes http and https, and the instance's deny_all_requests_except_allowed
        setting; Gitlab::HTTP_V2::UrlBlocker's messages) of at most 255 characters;
        CommitStatus: ref, target_url and description at most 255 characters each."""
        errors: dict[str, list[str]] = {}
        url = attrs.get("target_url")
        if url is not None:
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https"):
                errors["target_url"] = ["is blocked: Only allowed schemes are http, https"]
            elif not parts.hostname:
                errors["target_url"] = ["is blocked: URI is invalid"]
            elif self.url_allowlist is not None and \
                    parts.hostname.lower() not in self.url_allowlist:
                errors["target_url"] = ["is blocked: Requests to hosts and IP addresses not "
                                        "on the Allow List are denied"]
        for key in ("ref", "target_url", "description"):
            if len(attrs.get(key) or "") > STATUS_TEXT_MAX_CHARS:
                errors.setdefault(key, []).append("is too long (maximum is 255 characters)")
        return errors

    def _page(self, request: Request, items: list[Any], headers: dict[str, str],
              fetch_cap: int | None = None) -> Response:
        try:
            page = max(1, int(request.args.get("page", 1)))
            per_page = min(MAX_PER_PAGE, max(1, int(request.args.get("per_page",
                                                                     DEFAULT_PER_PAGE))))
        except ValueError:
            return _json({"error": "page is invalid"}, 400, headers)
        total_pages = max(1, math.ceil(len(items) / per_page))
        # With a fetch cap, the page is sliced out of the first min(page x per_page, cap)
        # items only (see cut_branch_pages); the headers still count them all.
        fetched = items if fetch_cap is None else items[:min(page * per_page, fetch_cap)]
        chunk = fetched[(page - 1) * per_page: page * per_page]
        query = {k: v for k, v in request.args.items() if k not in ("page", "per_page")}

        def link(n: int) -> str:
            q = urlencode({**query, "page": n, "per_page": per_page})
            # Gitlab::Pagination::OffsetHeaderBuilder#base_request_uri: the request's URL
            # with the host and port of GitLab's own external_url (Gitlab.config.gitlab)
            base = f"http://{self.external_host}" if self.external_host else self.url
            return f"{base}{request.environ.get('RAW_URI', request.path).split('?')[0]}?{q}"
        rels = ([(page - 1, "prev")] if page > 1 else []) + \
            ([(page + 1, "next")] if page < total_pages else []) + \
            [(1, "first"), (total_pages, "last")]
        headers = {**headers, "X-Page": str(page), "X-Per-Page": str(per_page),
                   "X-Next-Page": str(page + 1) if page < total_pages else "",
                   "X-Prev-Page": str(page - 1) if page > 1 else "",
                   "X-Total": str(len(items)), "X-Total-Pages": str(total_pages),
                   "Link": ", ".join(f'<{link(n)}>; rel="{rel}"' for n, rel in rels)}
        return _json(chunk, 200, headers)

    # --- rate limits --------------------------------------------------------------------
    def _count_for_rate_limit(self) -> Response | None:
        with self._lock:
            if self._outage is not None and time.monotonic() < self._outage[0]:
                _, status, retry_after = self._outage
                if status == 429:
                    return Response("Retry later\n", 429, {"Retry-After": str(retry_after),
                                                           "Content-Type": "text/plain"})
                if status == 502:
                    # Puma away: Workhorse answers its error page, public/502.html, as HTML
                    # (gitlab-workhorse internal/staticpages/error_pages.go), not JSON
                    return Response(BAD_GATEWAY_PAGE, 502, {"Content-Type": "text/html"})
                return _json({"message": f"{status} Internal Server Error"}, status,
                             {"Retry-After": str(retry_after)} if self._retry_after_on_5xx
                             else {})
            if self._throttled:
                after = self._throttled.pop(0)
                return Response("Retry later\n", 429, {"Retry-After": str(after),
                                                       "Content-Type": "text/plain"})
            if self._limit is None:
                return None
            limit, period = self._limit
            now = int(time.time())
            start = now - now % period
            begun, count = self._window
            count = count + 1 if begun == start else 1
            self._window = (start, count)
            if count <= limit:
                return None
            headers = self._rate_limit_headers_locked()
            headers["Retry-After"] = str(max(1, start + period - now))
            return Response("Retry later\n", 429, {**headers, "Content-Type": "text/plain"})

    def _rate_limit_headers(self) -> dict[str, str]:
        with self._lock:
            return self._rate_limit_headers_locked()

    def _rate_limit_headers_locked(self) -> dict[str, str]:
        if self._limit is None:
            return {}
        limit, period = self._limit
        start, count = self._window
        reset = start + period
        return {"RateLimit-Name": "throttle_authenticated_api", "RateLimit-Limit": str(limit),
                "RateLimit-Observed": str(count),
                "RateLimit-Remaining": str(max(0, limit - count)),
                "RateLimit-Reset": str(reset),
                "RateLimit-ResetTime": formatdate(reset, usegmt=True)}


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(json.dumps(body), status, {**headers, "Content-Type": "application/json"})


class Redirector:
    """A front of the fake, passing every request on to it, except those under `MOVED`
    (GITLAB_URL is `gitlab_url`, the front's own address and `MOVED`): each is answered 301
    to the same path without `MOVED`. On the front itself by default, the same origin, as a
    GitLab moved off its relative URL root (omnibus-gitlab's external_url
    'https://host/gitlab' made 'https://host/', the old root redirected by the front's nginx);
    or on `location`, another origin, as a sign-in proxy in front of GitLab redirects to its
    SSO host. A token goes on to the same origin only, as requests judges an Authorization
    header (requests.Session.should_strip_auth: scheme, host and port; http to https on the
    default ports of one host is kept, omnibus-gitlab's nginx['redirect_http_to_https'], which
    a test cannot bind). `requests` follows a 301 with a GET, so python-gitlab lets reads
    through and refuses a redirected write (gitlab.client.Gitlab._check_redirects,
    RedirectError). With ``redirecting`` False it passes those requests on too, without
    `MOVED`, as a front whose redirect was for a while only (a maintenance page)."""

    MOVED = "/gitlab"

    def __init__(self, target: str, *, location: str | None = None):
        self.target = target.rstrip("/")
        self.location = location
        self.hits = 0
        self.redirecting = True

    def _app(self, environ, start_response):
        self.hits += 1
        path = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        moved = path.startswith(self.MOVED + "/")
        if moved:
            path = path[len(self.MOVED):]
            if self.redirecting:
                return Response("", 301, {"Location": (self.location or self.url) + path})(
                    environ, start_response)
        request = Request(environ)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length")}
        answer = requests.request(request.method, self.target + path, headers=headers,
                                  data=request.get_data(), allow_redirects=False, timeout=10)
        kept = {k: v for k, v in answer.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                     "content-encoding")}
        return Response(answer.content, answer.status_code, kept)(environ, start_response)

    def __enter__(self) -> Redirector:
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True,
                                   request_handler=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True,
                         name="gitlab-redirector").start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def gitlab_url(self) -> str:
        """The GITLAB_URL that this front redirects."""
        return self.url + self.MOVED


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the test reads ``requests``; no access log on stderr


@pytest.fixture
def gitlab_fake() -> Iterator[GitLabFake]:
    """A fresh fake GitLab per test, listening when yielded, shut down afterwards."""
    with GitLabFake() as fake:
        yield fake
