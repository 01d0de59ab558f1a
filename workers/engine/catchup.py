"""The catch-up loop: webhooks are hints, GitLab's API is the truth. Every
CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS (120 by default), one instance (a Redis lease, as the
reconcile loop's) lists the branch and tag heads of every project the config names and builds,
once, each routed head no build was seen for: a push whose delivery was lost.

Such a head goes through the webhook's own routing and intake (same commit key, same run mark),
with the delivery id ``catch-up:<commit key>``: a later webhook of that push, a second pass or
a second instance is a duplicate while the run is in flight, and a pass never builds a commit
it recorded. The first pass over a project (or over its tags, once a route asks for them) only
records its heads (workers.core.catchup, BASELINE). A project is looked at by its numeric id
and its builds are keyed by its current path (workers.engine.project_lookup): a rename or move
keeps the id, its pushes' webhooks carry the new path, and a new project at the old path is
another one. It also reads each project's hooks, where the token may, for the disabled-hook
metric. It runs in the reconcile process, in a thread of its own, so a slow or throttled GitLab
never delays a reconcile pass.

Each pass's outcome is recorded (workers.adapters.pass_store, under CATCH_UP): the last that
caught up every project, and since when passes leave one or more not caught up, with the last
error. /metrics exports them and CIGitLabCatchUpFailing pages: every pass failing (a token
expired, revoked or without read_api, GitLab away) leaves the pushes whose webhooks were lost
unbuilt, and GitLab never sends those again.
"""

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from workers.engine import intake
from workers.engine.project_lookup import resolve
from workers.adapters import gitlab as gitlab_api
from workers.adapters.catchup_store import CatchUpStore
from workers.adapters.lease import Lease
from workers.adapters.pass_store import CATCH_UP, PassStore
from workers.adapters.redis_state import RedisState
from workers.config.config_file import FileConfig
from workers.config.settings import Settings
from workers.core import catchup as core, catchup_project as projects
from workers.core.errors import CIAutoscalerError, Overloaded, PermanentError, RetryableError, \
    Unavailable, shown
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.catchup")
LOCK_PERIODS = 3  # a leader that misses two passes in a row is replaced
HOOK_STATE_PERIODS = 3  # the hook metric lives this many passes unless renewed
# Projects in a row whose listing GitLab did not serve (no connection, its front's 502/503/
# 504: an upgrade, a restart) end the pass: gone on, a pass over every project made each
# one's calls and their retries, and logged each one's failure, through all of GitLab's
# downtime. Not one: a front's 502 or 504 can be one slow repository's, every pass, and ended
# there the passes never reached the projects after it. That project's hooks are read all
# the same: a database read, served while Gitaly takes too long to list its branches; served,
# they show GitLab serving, so two slow repositories side by side do not end every pass.
UNSERVED_IN_A_ROW = 2
# Listings run out of time in a row, each project's hooks served: two slow repositories side
# by side are theirs; more in a row are Gitaly overloaded, every listing slow alike (up to
# 4 timeouts each, a pass of hours that added to its load): the pass ends there.
SLOW_IN_A_ROW = UNSERVED_IN_A_ROW
# Failures remembered for logging each once (see _failed), at most: past it the oldest go.
FAILING_REMEMBERED = 10_000
_GROUP_FAILED = "listing a group's projects failed"
_PROJECT_FAILED = "catch-up of a project failed"
_HOOKS_FAILED = "reading a project's hooks failed"
# Not served: no connection or a front's 502/503/504 (Unavailable), or no answer in time, the
# retries' included (Overloaded: a GitLab whose every call times out cost 4 timeouts per call,
# a project's listing and its hooks, for every project of the pass).
NOT_SERVED = (Unavailable, Overloaded)


@dataclass
class CatchUp:
    """What a pass runs against: settings, routes, Redis, and GitLab (a python-gitlab client)."""

    settings: Settings
    config: FileConfig
    state: RedisState
    gl: Any
    store: CatchUpStore = field(init=False)
    metrics: EngineMetrics = field(init=False)
    passes: PassStore = field(init=False)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12], init=False)
    _pass_error: str = field(default="", init=False)  # the pass's last failure (shown)
    _hooks_unreadable_logged: set[str] = field(default_factory=set, init=False)
    # (what, project or group) -> the error last logged for it (see _failed)
    _failing: dict[tuple[str, str], str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.store = CatchUpStore(self.state.redis, prefix=self.state.prefix)
        self.metrics = EngineMetrics(self.state.redis, prefix=self.state.prefix)
        self.passes = PassStore(self.state.redis, prefix=self.state.prefix, name=CATCH_UP)


def from_settings(settings: Settings, config: FileConfig, state: RedisState) -> CatchUp | None:
    """The catch-up, when GITLAB_URL and GITLAB_API_TOKEN are set; else None, with a warning
    when one of them is set alone (the other misnamed, or its secret key missing)."""
    if not settings.catch_up_enabled:
        given = {"GITLAB_URL": bool(settings.gitlab_url), "GITLAB_API_TOKEN": bool(
            settings.gitlab_api_token and settings.gitlab_api_token.get_secret_value())}
        passes = PassStore(state.redis, prefix=state.prefix, name=CATCH_UP)
        if not any(given.values()):
            try:  # its passes, recorded while it was on, would page for ever
                passes.forget()  # (CIGitLabCatchUpFailing)
            except redis.RedisError:  # the next start forgets them
                pass
            return None
        missing = next(name for name, is_set in given.items() if not is_set)
        log.warning("catch-up off: it needs both GITLAB_URL and GITLAB_API_TOKEN; pushes "
                    "whose webhooks GitLab does not send are not built",
                    extra={"missing": missing})
        # Half set (the token's Secret key renamed, or blank after a rotation) is a catch-up
        # that fails, not one turned off: forgotten, its failing streak went, and
        # CIGitLabCatchUpFailing resolved while no lost push was built. Recorded as a failed
        # pass, it pages as one (the streak's start kept across restarts).
        try:
            passes.failed("config", time.time(), f"catch-up off: {missing} is not set",
                          partial=False)
        except redis.RedisError:  # the next start records it
            pass
        return None
    return CatchUp(settings=settings, config=config, state=state, gl=gitlab_api.client(
        url=settings.gitlab_url, token=settings.gitlab_api_token.get_secret_value()))


def listed_projects(cu: CatchUp, failed: Counter | None = None,
                    now: float | None = None) -> dict[str, projects.ProjectRef | None]:
    """The projects the routes name, those of catchUp.projects, and those of catchUp.groups
    (subgroups included) that a route matches; each of a group with the id and path its
    listing gave (the others are looked up by resolve). A group that cannot be listed is
    counted in `failed` and logged; the others go on. An error that ends the pass is raised,
    counted (as is the second of UNSERVED_IN_A_ROW groups GitLab did not serve)."""
    now = time.time() if now is None else now
    routes = cu.config.routes
    # One project per path in any case (GitLab finds a path in any case): a route's
    # "team/app" and a group's listing of "Team/App" are one project, listed once a pass,
    # under the name the config gives it (its metrics' label, which /metrics shows at 0
    # from the start: service.health), else the path GitLab gives it.
    found: dict[str, tuple[str, projects.ProjectRef | None]] = {
        p.lower(): (p, None) for p in core.named_projects(routes, cu.config.catch_up)}
    unserved = 0  # groups in a row GitLab did not serve: as projects (UNSERVED_IN_A_ROW)
    for group in cu.config.catch_up.groups:
        try:
            for p in gitlab_api.group_project_identities(gl=cu.gl, group=group):
                if core.routed(p.path, routes):
                    name = found.get(p.path.lower(), (p.path, None))[0]
                    found[p.path.lower()] = (name, projects.ProjectRef(name, p.id, p.path, now))
            unserved = 0
            _succeeded(cu, _GROUP_FAILED, group)
        except CIAutoscalerError as err:
            if failed is not None:
                failed["groups_failed"] += 1
            _failed(cu, _GROUP_FAILED, group, err)
            # A listing out of time counts neither way: two big groups side by side, slow
            # every pass, ended every pass before its first project. Groups are a few, named
            # in the config; on a GitLab serving nothing the projects' calls end the pass.
            if not _timed_out(err):
                unserved = unserved + 1 if isinstance(err, NOT_SERVED) else 0
            if ends_pass(err) or unserved >= UNSERVED_IN_A_ROW:
                raise
    return dict(found.values())


def catch_up_project(cu: CatchUp, ref: projects.ProjectRef, now: float
                     ) -> tuple[Counter, projects.ProjectRef]:
    """One project's pass: list its heads (by its id), decide on those that changed (under its
    current path: a head with no change costs no lookup), build the missed ones through the
    intake, then remember the heads (by its id). Raises on an API or Redis error, before
    anything is remembered, so the next pass does the same work again. Returns the counts
    and the project as looked at (looked up again when a head changed)."""
    routes = projects.routes_for(ref, cu.config.routes)
    kinds = core.kinds_needed(ref.path, routes)
    if not kinds:
        return Counter(), ref
    listing = gitlab_api.project_heads(gl=cu.gl, project=ref.id, kinds=kinds, name=ref.path)
    heads = listing.heads
    memory, moved_from = projects.memory_name(ref), None
    seen, listed_before = cu.store.seen(memory)
    absent = cu.store.absent(memory)
    if not seen and not listed_before and projects.path_memory_adoptable(ref):
        moved_from = ref.name  # what a version before remembered, under the path
        seen, listed_before = cu.store.seen(moved_from)
        absent = cu.store.absent(moved_from)
    changed = core.changed_heads(heads, seen)
    if changed and ref.resolved_at != now:
        # The builds are keyed by the path: the one GitLab gives now, as the webhooks do.
        fresh = resolve(cu, ref.name, now, again=True)
        if (fresh.id, fresh.path) != (ref.id, ref.path):
            return catch_up_project(cu, fresh, now)
    if listing.unlisted:
        log.warning("GitLab listed fewer refs than it counted (gitlab-org/gitlab#605032 on "
                    "GitLab 18 before its fix): the refs left out are kept as last seen and "
                    "their pushes wait for webhooks", extra={
                        "project": ref.path, "unlisted": sum(listing.unlisted.values()),
                        "listed": len(heads)})
    baseline = kinds - listed_before
    decisions = core.decide(
        ref.path, changed, routes=routes,
        built=cu.store.built({k for h in changed for k in core.head_commit_keys(ref.path, h)}),
        baseline=baseline, received_at=now, installation=cu.settings.installation)
    counts = Counter(d.verdict.value for d in decisions)
    for decision in decisions:
        if decision.verdict is core.Verdict.BUILD:
            counts["queued" if _build(cu, decision, ref) else "duplicate"] += 1
        elif decision.verdict is core.Verdict.SKIPPED:  # which head the count is of, and why
            log.info("missed push not built: its commit's message asks for no build", extra={
                "project": ref.path, "ref": decision.head.ref, "sha": decision.head.sha,
                "reason": decision.reason})
    absences = core.settle_absences(
        core.vanished_refs(heads, seen, partial=listing.unlisted), absent)
    cu.store.record(memory, heads={h.ref: h.sha for h in changed},
                    vanished=absences.forget, absent=absences.absent,
                    kinds=core.kinds_listed(kinds, baseline=baseline, partial=listing.unlisted),
                    now=now, ttl_seconds=cu.settings.build_ttl_seconds,
                    moved_from=moved_from)
    counts["refs"] = len(heads)
    if listing.unlisted:
        counts["refs_unlisted"] = sum(listing.unlisted.values())
    return counts, ref


def _build(cu: CatchUp, decision: core.HeadDecision, ref: projects.ProjectRef) -> bool:
    """The missed push stored in the intake as a webhook stores it, with the project's id (its
    commit statuses go by it); True if it was stored, False if a run of the commit is in
    flight (a webhook came meanwhile) or the delivery was taken (another instance). Counted
    under the project's name in the config, as its hook's state is: the build is keyed by the
    path GitLab gives now (another case, or a new path since a rename)."""
    project_id = ref.id
    request = decision.request
    delivery = core.delivery_id(decision.commit)
    pushed = cu.state.intake.push(
        delivery_id=delivery, mark=request.build_key,
        record=intake.record(delivery, request.to_dict(), project_id=project_id),
        ttl_seconds=cu.settings.dedupe_ttl_seconds, commit=decision.commit,
        run_ttl_seconds=cu.settings.run_mark_ttl_seconds)
    extra = {"build_key": pushed.build_key, "project": request.project, "ref": request.ref,
             "sha": request.sha, "job": request.job, "source": core.SOURCE}
    if pushed:
        cu.metrics.missed_push(ref.name)
        log.warning("missed push built", extra={**extra, "reason": decision.reason})
    else:
        log.info("missed push already under way", extra={**extra, "reason": pushed.reason})
    return bool(pushed)


def check_hooks(cu: CatchUp, project: str, now: float,
                project_id: int | None = None) -> bool | None:
    """Whether our hook of the project is disabled (None: the token may not read the hooks,
    or none of them is ours), recorded for /metrics under the name `project`; read by the
    project's id when known (its name may lead elsewhere since a rename)."""
    hooks = gitlab_api.project_hooks(gl=cu.gl, project=project_id or project, name=project)
    ours = [h for h in hooks or () if core.is_our_hook(h.get("url"))]
    disabled = any(core.hook_disabled(h, now) for h in ours) if ours else None
    if hooks is None and project not in cu._hooks_unreadable_logged:
        cu._hooks_unreadable_logged.add(project)
        log.info("hooks not readable with this token (Maintainer role needed, or the "
                 "project not found): the disabled-hook metric is not exported for it",
                 extra={"project": project})
    if disabled:
        log.warning("GitLab has disabled our webhook: pushes reach us only through the "
                    "catch-up", extra={"project": project})
    cu.store.set_hook_disabled(project, disabled, ttl_seconds=int(
        HOOK_STATE_PERIODS * cu.settings.catch_up_interval_seconds) + 1)
    return disabled


def catch_up_once(cu: CatchUp, now: float | None = None,
                  still_leader: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """A pass over every project, once each (two names that lead to one project: once). A
    project whose lookup or listing fails is counted and left for the next pass; the others go
    on. Stops early if `still_leader` says the lease was lost (the pass then recorded
    neither way: the new leader's are)."""
    now = time.time() if now is None else now
    total: Counter = Counter()
    cu._pass_error = ""
    try:
        listed = listed_projects(cu, total, now)
    except CIAutoscalerError:  # counted and logged: this pass is over
        listed = None
    done: set[int] = set()
    looked_at: list[str] = []  # the names whose hooks were checked
    unserved = 0  # projects in a row GitLab did not serve
    slow_in_a_row = 0  # projects in a row whose listing ran out of time (see _timed_out)
    names = sorted((listed or {}).items())
    leader = True
    for i, (name, ref) in enumerate(names):
        if not still_leader():
            log.warning("catch-up lease lost: pass stopped", extra={"project": name})
            leader = False
            break
        slow = False  # the listing ran out of time (see _timed_out)
        try:
            ref = ref or resolve(cu, name, now)
            if ref.id in done:
                continue
            counts, ref = catch_up_project(cu, ref, now)
            done.add(ref.id)
            total.update(counts)
            total["projects"] += 1
            unserved = slow_in_a_row = 0
            _succeeded(cu, _PROJECT_FAILED, name)
        except CIAutoscalerError as err:
            total["projects_failed"] += 1
            _failed(cu, _PROJECT_FAILED, name, err)
            unserved = unserved + 1 if isinstance(err, NOT_SERVED) else 0
            slow = _timed_out(err)
            slow_in_a_row = slow_in_a_row + 1 if slow else 0
            if ends_pass(err) or unserved >= UNSERVED_IN_A_ROW or slow_in_a_row > SLOW_IN_A_ROW:
                break
        looked_at.append(name)
        try:  # after a listing's 504 too: a slow repository's hooks (a database read) are served
            total["hooks_disabled"] += bool(check_hooks(cu, name, now, ref and ref.id))
            if slow:  # GitLab answered: that repository alone was too slow to list
                unserved = 0
            _succeeded(cu, _HOOKS_FAILED, name)
        except CIAutoscalerError as err:
            _failed(cu, _HOOKS_FAILED, name, err)
            if ends_pass(err):
                if i + 1 < len(names):  # the projects after it are not caught up this pass
                    total["projects_left"] += len(names) - i - 1
                break
    else:  # every project listed was looked at: the hook states of the others are stale
        if listed is not None and not total["groups_failed"]:
            cu.store.keep_hooks_of(looked_at)
    result = dict(total)
    cu.store.note_pass({**result, "at": now})
    if not leader:  # the instance that holds the lease now records its own passes
        return result
    if pass_failed(result):
        cu.passes.failed(cu.instance, now, cu._pass_error, partial=bool(result.get("projects")))
    else:
        cu.passes.passed(cu.instance, now)
    return result


def _timed_out(err: CIAutoscalerError) -> bool:
    """A listing that ran out of time: no answer in time, or its front's timeout (nginx's
    504, Workhorse's 502 "GitLab is not responding"). With the project's hooks served next,
    that repository was slow, not GitLab away: two such side by side end no pass. A 503 with
    the hooks served says a service behind GitLab (Gitaly) is unavailable: every repository
    alike."""
    return isinstance(err, Overloaded) or \
        getattr(err.__cause__, "response_code", None) in (502, 504)


def pass_failed(result: Mapping[str, object]) -> bool:
    """Whether a pass (catch_up_once's counts) left a project or a group not caught up
    (one failed, or, after a hooks read that ended the pass, those not reached yet): logged
    "catch-up pass failed", not "caught up", and `catch-up --once` exits 1."""
    return bool(result.get("projects_failed") or result.get("groups_failed")
                or result.get("projects_left"))


def ends_pass(err: CIAutoscalerError) -> bool:
    """An error no further call of this pass would escape: GitLab refused the token (or its
    scope), asked for a wait longer than a call may take, or still answered 429 after
    python-gitlab's waits and retries (the next pass goes on from where this one was).
    GitLab not serving (Unavailable) ends it too, once UNSERVED_IN_A_ROW projects in a row
    met it (catch_up_once)."""
    return isinstance(err, (gitlab_api.TokenRefused, gitlab_api.ScopeRefused)) or \
        (isinstance(err, RetryableError) and bool(err.retry_after)) or \
        getattr(err.__cause__, "response_code", None) == 429


def _failed(cu: CatchUp, what: str, where: str, err: CIAutoscalerError) -> None:
    """Counted every time; logged as an error or warning once while it fails alike pass after
    pass (a Guest's 403, a deleted project's 404, every 2 minutes for ever), then at INFO. An
    error that ends the pass (a refused token) is one line a pass: always at its level."""
    cu.metrics.error("catch_up", err)
    if what != _HOOKS_FAILED or ends_pass(err):  # a pass failed by it, for the status page
        cu._pass_error = f"{where}: {shown(err)}"
    level = logging.ERROR if isinstance(err, PermanentError) else logging.WARNING
    if cu._failing.pop((what, where), None) == str(err) and not ends_pass(err):
        level = logging.INFO
    cu._failing[(what, where)] = str(err)  # the last failed last: the oldest go first
    if len(cu._failing) > FAILING_REMEMBERED:
        del cu._failing[next(iter(cu._failing))]
    log.log(level, what, extra={"project": where, "error": str(err)})


def _succeeded(cu: CatchUp, what: str, where: str) -> None:
    """What failed there before is news again when it fails next."""
    cu._failing.pop((what, where), None)


def run_forever(cu: CatchUp, stop: threading.Event,
                interval: float | None = None) -> None:
    """A pass every `interval` seconds while holding the catch-up lease (one instance acts;
    another takes over within LOCK_PERIODS intervals if it dies), until `stop` is set."""
    interval = interval or cu.settings.catch_up_interval_seconds
    lease = Lease(cu.state.redis, cu.state.prefix + "catchup-lock", LOCK_PERIODS * interval)
    me = cu.instance
    while not stop.is_set():
        started = time.monotonic()
        try:
            if lease.hold():
                result = catch_up_once(cu, still_leader=lease.renew)
                if pass_failed(result):
                    log.warning("catch-up pass failed", extra={"instance": me, **result})
                else:
                    log.info("caught up", extra={"instance": me, **result})
        except Exception as err:  # Redis or GitLab away: the next pass tries again
            cu.metrics.error("catch_up", err)
            log.warning("catch-up pass failed", extra={"error": f"{type(err).__name__}: {err}"})
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    try:
        lease.release()
    except Exception:  # Redis away: the lease expires by itself
        pass


def start(cu: CatchUp, interval: float | None = None) -> tuple[threading.Thread, threading.Event]:
    """`run_forever` in a daemon thread; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(cu, stop, interval), name="catch-up",
                              daemon=True)
    thread.start()
    return thread, stop
