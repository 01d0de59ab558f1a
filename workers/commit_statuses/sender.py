"""The sender: posts each touched build's commit status to GitLab, the newest state only.

A thread of the reconcile process (``start``), as the catch-up is, rather than an RQ queue:
one loop holds a lease (one sender acts at a time, so the posts of one build never race each
other), keeps a single pace for the token (a 429's Retry-After, or a 5xx's back-off, holds
every post, not one job), and reads each build's record when it sends, so what waited out an
outage is collapsed into its newest state. An RQ job per update would fork per post, retry on
RQ's fixed schedule whatever GitLab asked, and send every intermediate state.

Each pass claims the builds due (workers.adapters.status_queue), reads each one's record and
the capacity state, decides the status (workers.core.commit_status) and posts it if GitLab
takes it after the last state sent. GitLab answering 5xx, 429 or not at all: the build is
put back for later (exponential back-off, at least Retry-After) and the pass ends. A 409 (its
lock on that commit's statuses held by another update) puts back that build alone (so does a
400 for a lock of GitLab's; a 400 for its database, as a 5xx, GITLAB_FAILURE_TRIES in a row
at most: workers.adapters.gitlab). A status
GitLab refuses for good (no api scope, an unknown commit) is logged and not tried again, but
one refused for the token's access (a 403, a 404 for the project) is posted again once GitLab
takes a status of that project (on that ref, for a 403: StatusQueue.taken_again); a
400 "Cannot transition" means GitLab has that state already (an earlier answer was lost); a
400 that refuses the link alone (target_url) is followed by the same post without it (after
the pause that answer asked for, if any).
A final status waits (bounded) while the build's pod shows an OOM kill its release has not
recorded yet: GitLab keeps the first final status (workers.core.oom_settle).
"""

import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from workers.adapters import gitlab as gitlab_api
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.lease import Lease
from workers.adapters.redis_state import RedisState
from workers.adapters.status_queue import GITLAB_FAILURES_FIELD, SENT_FIELD, StatusQueue
from workers.adapters.usage_store import UsageStore
from workers.config.settings import Settings
from workers.core import commit_status as core
from workers.core import oom_settle
from workers.core.errors import PermanentError, RetryableError
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.commit_status")
POLL_SECONDS = 1.0  # the longest a touched build waits for the sender (it is idle otherwise)
BATCH = 50  # builds claimed at once; the lease is renewed after each post
PROJECT_IDS_KEPT = 10_000  # (path, id) pairs GitLab was asked about, kept to ask once each
LEASE_SECONDS = 30.0
# A touch counts while a sender renewed its flag this recently: a sender that is gone (or
# commit statuses turned off) leaves no queue growing for long.
ON_TTL_SECONDS = 300.0
_TRANSITION_REFUSED = "Cannot transition status"
# A 400 that is GitLab's own database failure (gitlab_api.GitLabFailed) is tried again as a
# 5xx is, every post waiting, but this many times in a row at most (about 10 minutes on the
# back-off), then taken as GitLab's answer: one that GitLab repeats for this commit alone held
# back every build's status for as long as the build is kept (7 days).
GITLAB_FAILURE_TRIES = 10
WAIT_TEXT_POLL_SECONDS = 0.2  # a waiting build looked at again for its capacity figures
# A queued build looked at again for the worker's decision (a touch on the decision does not
# bring a later look forward: status_queue); a burst's builds are read twice a second each.
QUEUED_POLL_SECONDS = 0.5
# The backstop, level-triggered like the reconcile loop: this often, every build received in
# the window whose final status GitLab does not have yet is looked at again (a touch lost
# with Redis away, a sender that was down, a build whose end settles without a new event).
SWEEP_SECONDS = 60.0
SWEEP_WINDOW_SECONDS = 24 * 3600.0
# A 403 on a project's statuses (the token's user lacks the role, or leave on a protected
# ref), or a 404 "Project Not Found" (a private project the token's user is no member of), is
# logged as an error once per project this often at most, or again after a status of that
# project was taken on the ref whose 403 was logged (one taken on another ref says nothing of
# a protected one; any, after a 404): every build of the project is refused alike, and an
# error a build (three, each state's) buried the first one in the same words. The metric
# counts every refusal.
FORBIDDEN_LOG_SECONDS = 3600.0
FORBIDDEN_PROJECTS_KEPT = 1000


@dataclass
class Sender:
    state: RedisState
    capacity: CapacityStore
    gl: Any  # a python-gitlab client with the api scope
    secrets: tuple[str, ...] = ()  # never shown in a description
    installation: str = ""  # in the statuses' names (workers.core.commit_status.status_name)
    clock: Callable[[], float] = time.time
    retry_first_seconds: float = core.RETRY_FIRST_SECONDS
    retry_max_seconds: float = core.RETRY_MAX_SECONDS
    not_before: float = 0.0  # GitLab asked every post to wait until then
    off: str = ""  # why this sender stopped for good (a token without the api scope)
    # builds whose link GitLab refused: their next post goes without it (_post)
    unlinked: set[str] = field(default_factory=set)
    # project path -> (when its last 403 was logged as an error, how many since were not,
    # the ref of that 403)
    forbidden: dict[str, tuple[float, int, str | None]] = field(default_factory=dict)
    # build key -> when its release settles (core.settles_at): looked at again then. Nothing
    # else touches it: left to the sweep, its final status went up to a minute late.
    settling: dict[str, float] = field(default_factory=dict)
    # (project path in lower case, project id) -> whether GitLab says the id is that
    # project's (_project_id); at most PROJECT_IDS_KEPT
    project_ids: dict[tuple[str, str], bool] = field(default_factory=dict)
    queue: StatusQueue = field(init=False)
    metrics: EngineMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.queue = StatusQueue(self.state.redis, prefix=self.state.prefix)
        self.metrics = EngineMetrics(self.state.redis, prefix=self.state.prefix)


def secrets_of(settings: Settings) -> tuple[str, ...]:
    return settings.secret_values


def from_settings(settings: Settings, state: RedisState,
                  capacity: CapacityStore) -> Sender | None:
    """The sender, when GITLAB_URL and GITLAB_API_TOKEN are set and commit statuses are not
    turned off (CI_AUTOSCALER_COMMIT_STATUS=false); else None."""
    if not settings.commit_status_enabled:
        try:  # a sender's "off" of before would page for ever (CIGitLabCommitStatusOff)
            StatusQueue(state.redis, prefix=state.prefix).turned_off(None)
        except redis.RedisError:  # the next start forgets it
            pass
        return None
    # The session reads every answer's rate-limit headers (last_pause) but neither sleeps nor
    # ends a call for them: this loop keeps the pace (not_before), so a post that GitLab took
    # is never reported failed for the wait its answer asks for, and the stop flag is kept.
    session = gitlab_api.PacedSession(max_wait_seconds=math.inf, sleep=lambda _: None)
    # Longer than GitLab's wait for its lock on a commit's statuses: its 409 (or 201) is heard.
    gl = gitlab_api.client(url=settings.gitlab_url,
                           token=settings.gitlab_api_token.get_secret_value(), session=session,
                           timeout=gitlab_api.STATUS_CALL_TIMEOUT_SECONDS)
    return Sender(state=state, capacity=capacity, gl=gl, secrets=secrets_of(settings),
                  installation=settings.installation)


@dataclass(frozen=True)
class _Capacity:
    nodes_needed: int | None
    at: float | None  # when it was computed
    # why each build bigger than a reference node waits (scheduling.refresh_capacity)
    too_big: dict[str, str] = field(default_factory=dict)


def _capacity(sender: Sender) -> _Capacity:
    state = sender.capacity.read_state()[0]
    try:
        too_big = json.loads(state.get("too_big") or "{}")
        return _Capacity(int(float(state.get("nodes_needed") or 0)),
                         float(state["updated_at"]) if state.get("updated_at") else None,
                         too_big if isinstance(too_big, dict) else {})
    except (ValueError, TypeError):
        return _Capacity(None, None)


def send_due(sender: Sender, *, limit: int = BATCH,
             still_leader: Callable[[], bool] = lambda: True) -> Counter:
    """One pass over the builds due now; what became of them, by result."""
    now = sender.clock()
    done: Counter = Counter()
    settled = [key for key, at in sender.settling.items() if at <= now]
    for key in settled:
        del sender.settling[key]
    sender.queue.touch_all(settled, now=now)
    if now < sender.not_before:
        return done
    claimed = sender.queue.claim(now=now, limit=limit)
    capacity = _capacity(sender) if claimed else _Capacity(None, None)
    for i, key in enumerate(claimed):
        result = send_one(sender, key, capacity=capacity)
        done[result] += 1
        if sender.off:
            break
        if sender.clock() < sender.not_before or not still_leader():
            # GitLab asked for a pause (or another sender took over): the rest wait for it.
            sender.queue.later(*claimed[i + 1:], at=max(sender.not_before, sender.clock()))
            break
    return done


def send_one(sender: Sender, key: str, *, capacity: _Capacity) -> str:
    """Post the build's status if GitLab does not have it; the result (or "unchanged", or
    "later": a waiting build whose capacity figures are not written yet)."""
    record, now = sender.state.get_build(key), sender.clock()
    if not core.wait_text_ready(record, capacity_at=capacity.at, now=now):
        poll = QUEUED_POLL_SECONDS if record.get("status") == "queued" else WAIT_TEXT_POLL_SECONDS
        sender.queue.later(key, at=now + poll)
        return "later"
    # A state sent and no name kept: a version before names sent it, under the plain name,
    # which the build keeps (another name would leave that status pending for ever).
    legacy = record.get(SENT_FIELD) and not record.get(core.NAME_FIELD)
    post = core.to_send(record.get(SENT_FIELD), core.wanted(
        record, nodes_needed=capacity.nodes_needed, too_big=capacity.too_big.get(key, ""),
        secrets=sender.secrets, now=now,
        installation="" if legacy else sender.installation))
    if post is None:
        if (settles := core.settles_at(record)) is not None and now < settles:
            sender.settling[key] = settles  # its end is taken then (core.wanted)
        return "unchanged"
    if oom_settle.may_wait_for_oom(record, post.state, now=now) and UsageStore(
            sender.state.redis, prefix=sender.state.prefix).oom_pending(
            record.get("agent") or ""):
        # its release has not recorded the OOM kill yet: GitLab keeps the first final status
        sender.queue.later(key, at=now + oom_settle.OOM_POLL_SECONDS)
        return "later"
    ctx = {"build_key": key, "state": post.state.value, "status_name": post.name}
    try:
        if post.project_id is not None and not record.get(SENT_FIELD):
            post = dataclasses.replace(post, project_id=_project_id(sender, key, post, ctx))
        elif record.get(SENT_FIELD) and core.PIPELINE_FIELD not in record:
            post = dataclasses.replace(post, pipeline_id=_status_pipeline(sender, post, ctx))
        answer = _post(sender, key, post, ctx,
                       tries=int(record.get(GITLAB_FAILURES_FIELD) or 0))
    except gitlab_api.StatusLocked as err:
        # GitLab's lock is on this commit alone: the other builds' posts go on meanwhile.
        result = _retry_later(sender, key, err, ctx, everyone=False)
        _keep_pace(sender)
        return result
    except RetryableError as err:
        return _retry_later(sender, key, err, ctx)
    except PermanentError as err:
        if isinstance(err, (gitlab_api.TokenRefused, gitlab_api.Misdirected)):
            # every post fails alike: wait long, and try again. A redirect may be for a while
            # only (a maintenance page in front of GitLab): turned off, the statuses stayed
            # off until a restart, while the alert on the one refusal resolved in 15 minutes.
            return _retry_later(sender, key, err, ctx)
        if _lacks_api_scope(err):
            # every post fails alike: off until a restart with the setting changed (the
            # sweep then posts what GitLab lacks)
            sender.off = ("commit statuses are off: GITLAB_API_TOKEN lacks the api scope that "
                          "commit statuses need (read_api is enough for the catch-up); give "
                          "the token the api scope, or set CI_AUTOSCALER_COMMIT_STATUS=false")
            sender.metrics.commit_status("refused")
            sender.queue.turned_off(sender.off)  # ci_autoscaler_commit_status_off
            log.error("commit statuses off", extra={**ctx, "error": sender.off})
            return "refused"
        result = "already" if _TRANSITION_REFUSED in str(err) else "refused"
        # not tried again: GitLab's answer is final. Its pipeline: the one posted into, else
        # none, the next status into the newest; but a status GitLab has already (a post
        # whose answer was lost) is in a pipeline, looked up before the next post
        pipeline = post.pipeline_id or ("" if result == "already" else core.NO_PIPELINE)
        sender.queue.sent(key, post.state.value, post.name,
                          pipeline_id="" if core.PIPELINE_FIELD in record else pipeline)
        sender.metrics.commit_status(result)
        level = logging.INFO if result == "already" else logging.ERROR
        extra = {**ctx, "error": str(err)}
        if isinstance(err, (gitlab_api.Forbidden, gitlab_api.ProjectNotFound)):
            # the token's access (the project, on every ref, for a 404): posted again once
            # a status there is taken (the access given), not left pending for ever
            where = post.ref if isinstance(err, gitlab_api.Forbidden) else None
            sender.queue.refused(key, post.project, where, now=sender.clock(),
                                 ttl_seconds=SWEEP_WINDOW_SECONDS)
            level, extra = _forbidden_log(sender, post.project, where, extra)
        log.log(level, "commit status not taken by GitLab", extra=extra)
        _keep_pace(sender)
        return result
    if (logged := sender.forbidden.get(post.project)) and logged[2] in (None, post.ref):
        # taken where the 403 logged was (anywhere, for a 404 of the project): the next
        # refusal there is news. Not on another ref: with GitLab's default protection of the
        # default branch and a Developer's token, every status of main is refused while the
        # feature branches' are taken.
        del sender.forbidden[post.project]
    # the pipeline GitLab put the status into: the build's next ones go there too
    sender.queue.sent(key, post.state.value, post.name,
                      pipeline_id=str(answer.get("pipeline_id") or core.NO_PIPELINE))
    sender.metrics.commit_status("sent")
    log.info("commit status sent", extra=ctx)
    if again := sender.queue.taken_again(post.project, post.ref, now=sender.clock(),
                                         taken=key):
        # a token changed to a user without access, or a role taken away, then given: the
        # statuses refused meanwhile (their commits left as the old token set them,
        # pending or running) are posted again
        log.warning("commit statuses GitLab refused are posted again: it takes the "
                    "project's now", extra={**ctx, "project": post.project,
                                            "builds": len(again)})
    _keep_pace(sender)
    return "sent"


def _project_id(sender: Sender, key: str, post: core.Wanted, ctx: dict[str, str]
                ) -> str | None:
    """The project id a build's first status goes to: the push's `project.id`, if GitLab says
    it is the project the push named by path; else None (by its path), and the id is dropped
    from the build's record, so its later statuses go by the path too.

    Both are the pusher's word, and routing reads the path alone: a push naming a routed
    project by its path and any other project by its id had the build's statuses posted with
    our API token onto that other project's commit, "success" included (issue 17: no token
    holder reaches further than a build). Asked on a build's first post, while its push is
    fresh: the id's project has the push's path, or the path leads GitLab to that id (the
    project renamed or moved since: GitLab follows the old path as a redirect). One renamed
    and its old path taken before its build's first post, or whose lookup GitLab failed
    (a 429 or 5xx: not waited for, the post goes on as before), is posted to by the path, as
    a build without an id is. Later posts use what the first one settled, whatever GitLab's
    paths become."""
    pair = (post.project.lower(), post.project_id or "")
    known = sender.project_ids.get(pair)
    if known is None:
        try:
            known = _project_has_id(sender, post.project, int(pair[1]))
        except RetryableError as err:
            log.warning("GitLab could not say whether the push's project id is its path's: "
                        "the build's statuses go to the project by its path", extra={
                            **ctx, "project": post.project, "project_id": post.project_id,
                            "error": str(err)})
            sender.queue.forget_project_id(key)
            return None
        if len(sender.project_ids) >= PROJECT_IDS_KEPT:
            sender.project_ids.clear()
        sender.project_ids[pair] = known
    if known:
        return post.project_id
    log.warning("the push's project id names another project than its path: the build's "
                "statuses go to the project by its path", extra={
                    **ctx, "project": post.project, "project_id": post.project_id})
    sender.queue.forget_project_id(key)
    return None


def _project_has_id(sender: Sender, path: str, project_id: int) -> bool:
    """Whether GitLab says project `project_id` is the one at `path`: its path now, or one it
    had (GitLab's redirect)."""
    try:
        if gitlab_api.project_identity(gl=sender.gl, project=project_id,
                                       max_retries=0).path.lower() == path.lower():
            return True
        return gitlab_api.project_identity(gl=sender.gl, project=path,
                                           max_retries=0).id == project_id
    except gitlab_api.ProjectNotFound:
        return False


def _status_pipeline(sender: Sender, post: core.Wanted, ctx: dict[str, str]) -> str | None:
    """The pipeline of a build's status that is pending or running, for a build whose first
    status a release before pipelines were kept sent (a state sent, no PIPELINE_FIELD): its
    later ones go there too, as a build's whose first status this release sent. Posted
    without, they went into the newest pipeline of the commit and ref, and one made after the
    first status kept that one pending for ever. None if GitLab lists none (or cannot say,
    or names no pipelines: a GitLab before gitlab-org/gitlab!127559): the newest, as before."""
    try:
        found = gitlab_api.commit_statuses(
            gl=sender.gl, project=post.project, sha=post.sha, name=post.name, ref=post.ref,
            project_id=post.project_id, max_retries=0)
    except (RetryableError, PermanentError) as err:
        log.warning("GitLab did not list the build's commit statuses: the status goes into "
                    "the newest pipeline of its commit", extra={**ctx, "error": str(err)})
        return None
    open_ = [s for s in found if s.get("status") in ("pending", "running")
             and str(s.get("pipeline_id") or "").isdigit()]
    return str(max(open_, key=lambda s: int(s.get("id") or 0))["pipeline_id"]) \
        if open_ else None


def _post(sender: Sender, key: str, post: core.Wanted, ctx: dict[str, str], *,
          tries: int = 0) -> dict[str, Any]:
    """Post the status; GitLab's answer (the status it stored). If GitLab refuses its link
    alone (LinkRefused: nothing was saved),
    post it again without the link, so that the state still shows on the commit: at once, or
    as a retry (RetryableError) after the pause the refusal's answer asked for. Its pipeline
    deleted (PipelineGone: nothing saved), it goes at once into the newest one. After `tries`
    of GitLab's own failures (GitLabFailed) since its last status taken, the one that makes
    GITLAB_FAILURE_TRIES is taken as its final answer (a PermanentError). Only those count:
    counted with every failed try (an outage's 5xx, a token refused for a while), the first
    database error after a long outage dropped the status for good."""
    def send(target_url: str | None) -> dict[str, Any]:
        nonlocal post
        try:
            return gitlab_api.set_commit_status(
                gl=sender.gl, project=post.project, sha=post.sha, state=post.state.value,
                name=post.name, target_url=target_url, description=post.description,
                ref=post.ref, max_retries=0, project_id=post.project_id,
                pipeline_id=post.pipeline_id)
        except gitlab_api.PipelineGone as err:
            log.warning("the pipeline of the build's commit status is gone: the status goes "
                        "into the newest pipeline of its commit", extra={
                            **ctx, "pipeline_id": post.pipeline_id, "error": str(err)})
            sender.queue.forget_pipeline(key)
            post = dataclasses.replace(post, pipeline_id=None)
            return send(target_url)
    try:
        try:
            answer = send(None if key in sender.unlinked else post.target_url)
        except gitlab_api.LinkRefused as err:
            log.warning("commit status link refused by GitLab: the status is sent without it",
                        extra={**ctx, "error": str(err)})
            sender.unlinked.add(key)
            pause = _asked_pause(sender)
            if pause:
                # The refusal's answer asked for a pause (its RateLimit-* headers): the post
                # without the link waits for it, as every post does (_retry_later). Sent at
                # once, it spent the quota's reserve, or met the 429 the pause was to avoid.
                raise RetryableError(f"{err}; GitLab asked for a pause before the next post",
                                     retry_after=pause)
            answer = send(None)
        sender.unlinked.discard(key)
        return answer
    except gitlab_api.GitLabFailed as err:
        if tries + 1 >= GITLAB_FAILURE_TRIES:
            sender.unlinked.discard(key)
            raise PermanentError(f"{err} ({tries + 1} tries failed so: taken as "
                                 "GitLab's answer)") from err.__cause__
        raise
    except PermanentError:  # GitLab's final answer: not tried again
        sender.unlinked.discard(key)
        raise


def _forbidden_log(sender: Sender, project: str, ref: str | None, extra: dict[str, Any]
                   ) -> tuple[int, dict[str, Any]]:
    """The level and fields of a 403's log line: an error for the project's first one, and
    again FORBIDDEN_LOG_SECONDS later (with how many were not logged so), else DEBUG."""
    now = sender.clock()
    if len(sender.forbidden) >= FORBIDDEN_PROJECTS_KEPT:  # those due to log again go
        sender.forbidden = {path: seen for path, seen in sender.forbidden.items()
                            if now - seen[0] < FORBIDDEN_LOG_SECONDS}
    logged = sender.forbidden.get(project)
    if logged is not None and now - logged[0] < FORBIDDEN_LOG_SECONDS:
        sender.forbidden[project] = (logged[0], logged[1] + 1, logged[2])
        return logging.DEBUG, extra
    sender.forbidden[project] = (now, 0, ref)
    extra = {**extra, "project": project}
    if logged is not None:
        extra["refused_since_last_logged"] = logged[1]
    return logging.ERROR, extra


def _asked_pause(sender: Sender) -> float:
    """The wait GitLab's last answer asked for (workers.core.rate_limits), in seconds."""
    pause = getattr(getattr(sender.gl, "session", None), "last_pause", None)
    return pause.seconds if pause is not None else 0.0


def _keep_pace(sender: Sender) -> None:
    """Before the quota runs out (RateLimit-Remaining at its reserve), the next post waits
    for the window's reset (workers.core.rate_limits)."""
    pause = getattr(getattr(sender.gl, "session", None), "last_pause", None)
    if pause is not None and pause.seconds:
        sender.not_before = max(sender.not_before, sender.clock() + pause.seconds)
        log.info("pacing commit statuses", extra={"pause_seconds": round(pause.seconds, 3),
                                                  "reason": pause.reason})


def sweep(sender: Sender, *, window: float = SWEEP_WINDOW_SECONDS) -> int:
    """Look again at every build of the window whose final status GitLab lacks; how many."""
    now = sender.clock()
    keys = sender.state.builds_since(now - window)
    rows = sender.state.build_fields(keys, SENT_FIELD, "delivery")
    open_ = [k for k, (sent, delivery) in zip(keys, rows)
             if not core.is_final(sent) and core.has_commit({"delivery": delivery or ""})]
    sender.queue.touch_all(open_, now=now)
    return len(open_)


def _lacks_api_scope(err: PermanentError) -> bool:
    """GitLab's 403 insufficient_scope (doc/api/rest/authentication.md): every post fails so."""
    return isinstance(err, gitlab_api.ScopeRefused)


def _retry_later(sender: Sender, key: str, err: Exception, ctx: dict[str, str], *,
                 everyone: bool = True) -> str:
    """The build tried again after its back-off; with `everyone`, every post waits as long
    (GitLab down, throttled, the token refused or GITLAB_URL redirected: the next post would
    fare the same)."""
    attempts = sender.queue.failed_attempt(
        key, gitlab_failure=isinstance(err, gitlab_api.GitLabFailed))
    if isinstance(err, (gitlab_api.TokenRefused, gitlab_api.Misdirected)):
        delay = sender.retry_max_seconds
    else:
        delay = core.retry_delay(max(1, attempts), getattr(err, "retry_after", None),
                                 first=sender.retry_first_seconds,
                                 most=sender.retry_max_seconds)
    at = sender.clock() + delay
    if everyone:
        sender.not_before = at
    sender.queue.later(key, at=at)
    sender.metrics.commit_status("retried")
    log.warning("commit status deferred", extra={**ctx, "error": str(err), "attempts": attempts,
                                                 "retry_in_seconds": round(delay, 3)})
    return "retried"


def run_forever(sender: Sender, stop: threading.Event, *, poll: float = POLL_SECONDS) -> None:
    """Send what is due while holding the sender lease, until `stop` is set; between passes,
    sleep until the next build is due (at most `poll`)."""
    lease = Lease(sender.state.redis, sender.state.prefix + "commit-status-lock", LEASE_SECONDS)
    me = uuid.uuid4().hex[:12]
    swept = float("-inf")
    try:  # a sender before this one turned them off: this one tries again
        sender.queue.turned_off(None)
    except Exception:  # Redis away: the flag stays until a later start
        pass
    while not stop.is_set() and not sender.off:
        wait = poll
        try:
            sender.queue.switch_on(ttl_seconds=ON_TTL_SECONDS)
            if lease.hold():
                if time.monotonic() - swept >= SWEEP_SECONDS:
                    swept = time.monotonic()
                    sweep(sender)
                done = send_due(sender, still_leader=lease.renew)
                if done:
                    log.debug("commit statuses", extra={"instance": me, **done})
                upcoming = max(sender.not_before, sender.queue.next_due() or float("inf"))
                wait = min(poll, max(0.0, upcoming - sender.clock()))
        except Exception as err:  # Redis away: the next pass tries again
            sender.metrics.error("commit_status", err)
            log.warning("commit status pass failed",
                        extra={"error": f"{type(err).__name__}: {err}"})
        stop.wait(wait)
    try:
        if sender.off:  # touches stop at once
            sender.queue.switch_off()
        lease.release()
    except Exception:  # Redis away: the lease and the flag expire by themselves
        pass


def start(sender: Sender, *, poll: float = POLL_SECONDS
          ) -> tuple[threading.Thread, threading.Event]:
    """`run_forever` in a daemon thread; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_forever, args=(sender, stop), kwargs={"poll": poll},
                              name="commit-status", daemon=True)
    thread.start()
    return thread, stop
