"""A build's GitLab commit status, decided from its record: which state, which text, whether
GitLab would take it after the state sent last, and when to try again. Pure.

The status is named ``ci-autoscaler/<job>`` on the build's commit (with an installation
identity, ``ci-autoscaler/<job> (<installation>)``: see status_name): ``pending`` with the
reason while it waits (or while its agent starts), ``running`` with the Jenkins build's page
as target, then ``success``, ``failed`` or ``canceled`` from Jenkins' result; an agent that
cannot start is ``failed`` with the reason. Only the newest state is sent (the sender reads
the record when it sends), and never one GitLab's state machine refuses after the last one
sent (lib/api/commit_statuses.rb: a ``pending`` or ``running`` status of that name is
found and moved, ``enqueue`` from pending or running and ``run`` from running are invalid
transitions, answered 400; a finished one is not found, so a new status would start over).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from workers.core.image_pulls import PULL_ERROR_FIELD
from workers.core.notifications import UNCONFIRMED_FIELD
from workers.core.quantity import format_memory
from workers.core.redaction import URL_USERINFO, redact
from workers.core.start_failures import LOST_RUN_FIELD, FailureReason
from workers.core.waiting_text import JENKINS_WAIT_FIELD, jenkins_wait_text, waiting_text

# GitLab refuses a ref, target_url or description over 255 characters with 400, the whole
# status with it (CommitStatus: validates :ref, :target_url, :description, length: {maximum:
# 255}; gitlab-org/gitlab#501079).
DESCRIPTION_MAX_CHARS = 255
TARGET_URL_MAX_CHARS = 255
NAME_PREFIX = "ci-autoscaler/"
# The build's record keeps the name its status was first sent under (workers.commit_statuses).
NAME_FIELD = "status_name"
# The build's record: its project's numeric id, from the push (workers.engine.intake). A
# project renamed or moved keeps its id; its old path leads to it only until another project or
# group takes that path (GitLab's Route#delete_conflicting_redirects), and then names that
# one: a status posted by the path failed (404), or landed on another project's commit (a
# mirror at the old path holds the same commits). Records before it, and the catch-up's, have
# none: their statuses go by the path.
PROJECT_ID_FIELD = "project_id"
# The build's record: the pipeline GitLab put its first status into (the answer's
# pipeline_id), where its later ones go. Without a pipeline_id GitLab takes the newest
# pipeline of the sha and ref (Ci::CreateCommitStatusService#first_matching_pipeline): one
# made of the commit after the first status (the project's own CI, a "Run pipeline")
# took the later states, and the first pipeline's status stayed pending for ever.
PIPELINE_FIELD = "status_pipeline_id"
# PIPELINE_FIELD when GitLab named no pipeline (a GitLab before gitlab-org/gitlab!127559
# answers none; a status refused; a pipeline deleted): the next status goes into the newest.
# A record with a state sent and no PIPELINE_FIELD at all was begun by a release before
# pipelines were kept (workers.commit_statuses.sender: its pipeline is looked up, once).
NO_PIPELINE = "none"
# Retries of a status GitLab did not take (5xx, 429, unreachable): exponential from the
# first pause, capped, unless GitLab asked for a longer wait (Retry-After).
RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 120.0
# A waiting build's text waits this long at most for the capacity state computed after its
# decision (see wait_text_ready).
WAIT_TEXT_SETTLE_SECONDS = 5.0
# A queued build's first status waits this long at most for the worker's decision (see
# wait_text_ready).
DECISION_SETTLE_SECONDS = 10.0
# A build released without a result is taken as ended this long after (see _settling).
RELEASE_SETTLE_SECONDS = 30.0
# The build's record: the memory (bytes) its build container had when the kubelet OOM-killed
# it (workers.job_history.learn), and the result it reads if Jenkins gave none by its release.
OOM_FIELD = "oom_killed_bytes"
OOM_RESULT = "OOMKilled"
# Set beside OOM_FIELD when the container killed ran the Jenkins agent at the template's
# agentMemory, not at the build's size (agentInjection false beside containers marked build).
OOM_AGENT_FIELD = "oom_killed_agent"
# The record of a build started again after its OOM kill names the killed one (retryOnOOM).
RETRY_OF_FIELD = "retry_of"
# Where a build's commit comes from: a webhook delivery or the catch-up (workers.engine.catchup).
_GITLAB_DELIVERIES = ("gitlab:", "catch-up:")
class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL = frozenset({State.SUCCESS, State.FAILED, State.CANCELED})
_VALUES = frozenset(s.value for s in State)
_FINAL_VALUES = frozenset(s.value for s in FINAL)
# The moves GitLab takes onto a status of the same name that is pending or running
# (CommitStatus' state machine: enqueue created -> pending; run pending -> running; success,
# drop, cancel from pending or running). A finished status is not found again (only
# running_or_pending ones are), so after a final state anything would start a new status:
# for one build, nothing is sent after its final state.
_NEXT: dict[State | None, frozenset[State]] = {
    None: frozenset(State),
    State.PENDING: frozenset({State.RUNNING, *FINAL}),
    State.RUNNING: FINAL,
    **{s: frozenset() for s in FINAL},
}
# Jenkins' results (hudson.model.Result) as GitLab states; UNSTABLE (tests failed) is a
# failure to GitLab, which has no such state (the Jenkins GitLab plugin does the same).
JENKINS_RESULTS = {"SUCCESS": State.SUCCESS, "UNSTABLE": State.FAILED,
                   "FAILURE": State.FAILED, "ABORTED": State.CANCELED,
                   "NOT_BUILT": State.CANCELED}


@dataclass(frozen=True)
class Wanted:
    """The status a build should show now, and where."""

    project: str
    sha: str
    name: str
    state: State
    description: str
    target_url: str | None = None
    # The branch or tag the build is of: GitLab keeps a status per name and ref, so two
    # builds of one commit on two branches do not move each other's status.
    ref: str | None = None
    # The project's numeric id (PROJECT_ID_FIELD), which the post goes to when known.
    project_id: str | None = None
    # The pipeline of the build's first status (PIPELINE_FIELD), which the post goes into.
    pipeline_id: str | None = None


def status_name(job: str, installation: str = "") -> str:
    """The status's name (GitLab's `name`, or `context`). GitLab keeps one status per commit,
    name and ref (lib/api/commit_statuses.rb finds the pending or running one of that name
    and ref, and moves it): two installations that built the same push (one push to two hooks)
    under one name moved each other's status, or were refused (pending onto the other's
    pending or running is no transition), and the last word showed for both. So an installation with an identity names
    it; without one, the name stays what it was."""
    return NAME_PREFIX + job + (f" ({installation})" if installation else "")


def capped(text: str, limit: int = DESCRIPTION_MAX_CHARS) -> str:
    text = " ".join(text.split())  # one line: GitLab shows it in a tooltip
    return text if len(text) <= limit else text[:limit - 1] + "…"


def description(text: str, secrets: Iterable[str] = ()) -> str:
    """What GitLab shows: redacted first (a cut must not leave half a secret), then capped."""
    return capped(redact(text, secrets))


def result_state(result: str) -> State:
    """A Jenkins result as a GitLab state; an unknown one is a failure."""
    return JENKINS_RESULTS.get((result or "").upper(), State.FAILED)


def _ended_text(record: Mapping[str, str]) -> tuple[State, str] | None:
    if record.get("fail_reason"):  # its agent could not start, or was lost (workers.engine.failures)
        why = record.get("error") or record["fail_reason"]
        if record["fail_reason"] == FailureReason.POD_LOST:  # workers.engine.lost_agents
            return State.FAILED, f"agent lost while the build ran: {why}"
        return State.FAILED, f"agent could not start: {why}"
    # A Pipeline run left to decide after its agent was lost (workers.engine.lost_runs) that ended
    # without retrying its block on a new agent: Jenkins' ABORTED (its node body cancelled,
    # RemovedNodeCause) or FAILURE is that loss's, and says so; a SUCCESS stands (the
    # Pipeline caught it). While it runs, it is running, never failed.
    if record.get(LOST_RUN_FIELD) and record.get("result") \
            and record["result"].upper() != "SUCCESS":
        return State.FAILED, f"agent lost while the build ran: {record[LOST_RUN_FIELD]}"
    # whatever Jenkins made of its agent's death (ABORTED, FAILURE, no result yet); a SUCCESS
    # stands (a killed side container whose step the Pipeline caught)
    if record.get(OOM_FIELD) and record.get(OOM_AGENT_FIELD) \
            and (record.get("result") or "").upper() != "SUCCESS":
        return State.FAILED, "Jenkins agent ran out of memory: its container OOM-killed at " \
            "its " + _memory(record[OOM_FIELD]) + " limit (raise the template's agentMemory)"
    if record.get(OOM_FIELD) and (record.get("result") or "").upper() != "SUCCESS":
        return State.FAILED, "build ran out of memory: OOM-killed at its " + _memory(
            record[OOM_FIELD]) + " limit" + ("; started again with more memory"
                                             if record.get("replaced_by") else "")
    result = record.get("result")
    if record.get(UNCONFIRMED_FIELD):  # a run discarded before its result was read
        return State.CANCELED, f"build ended, result unknown: {record[UNCONFIRMED_FIELD]}"
    if result:
        state = result_state(result)
        words = {State.SUCCESS: "build succeeded", State.CANCELED: "build canceled"}
        return state, words.get(state, "build failed") + f" (Jenkins: {result.upper()})"
    if record.get("status") == "failed":  # refused for good (workers.engine.tasks.refuse)
        return State.FAILED, f"build could not start: {record.get('error') or 'refused'}"
    if record.get("status") in ("released", "retained"):
        return State.CANCELED, "ended without a result from Jenkins"
    return None


def _memory(value: str) -> str:
    """Bytes as a developer reads a limit: 768Mi, 2Gi, or 1.4Gi when not a whole one."""
    try:
        nbytes = int(float(value))
    except ValueError:
        return value
    exact = format_memory(nbytes)
    if exact.endswith(("Gi", "Mi")):
        return exact
    return f"{nbytes / 2**30:.1f}Gi" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f}Mi"


def settles_at(record: Mapping[str, str]) -> float | None:
    """When a build released without a result or a failure is taken as ended (_settling):
    its release's time and RELEASE_SETTLE_SECONDS; None for any other record."""
    if record.get("status") not in ("released", "retained") or record.get("result") or \
            record.get("fail_reason"):
        return None
    try:
        released = float(record.get("released_at") or record.get("updated_at") or 0)
    except ValueError:
        return None
    return released + RELEASE_SETTLE_SECONDS


def _settling(record: Mapping[str, str], now: float | None) -> bool:
    """Released without a result or a failure, moments ago: a build refused for good is
    marked failed right after its release (workers.engine.tasks.refuse), so that is not its end
    yet. After RELEASE_SETTLE_SECONDS it is (a build whose end Jenkins never notified)."""
    at = settles_at(record)
    return at is not None and now is not None and now < at


def wanted(record: Mapping[str, str], *, nodes_needed: int | None = None,
           secrets: Iterable[str] = (), now: float | None = None,
           installation: str = "", too_big: str = "") -> Wanted | None:
    """The status this build's record calls for; None for a build without a GitLab commit
    (a Jenkins queue item we adopted, a record that expired), or whose end is not settled
    at `now` (None: the record is taken as it is). Named for `installation` (status_name),
    unless the record keeps the name its first status was sent under (NAME_FIELD): a build
    keeps one status from its first post to its last."""
    project, sha, job = record.get("project"), record.get("sha"), record.get("job")
    if not (project and sha and job) or not has_commit(record) or _settling(record, now):
        return None
    target = URL_USERINFO.sub("", record.get("build_url") or "") or None  # no user:pass@
    if target and len(target) > TARGET_URL_MAX_CHARS:
        target = None  # GitLab would refuse the whole status
    ended = _ended_text(record)
    status = record.get("status")
    if ended is not None:
        state, text = ended
    elif status == "running" or record.get("started_at"):
        state, text = State.RUNNING, "running" + (f" on {record['node']}"
                                                   if record.get("node") else "")
    elif status in ("queued", "waiting", "pod_created") and record.get(JENKINS_WAIT_FIELD):
        state, text = State.PENDING, jenkins_wait_text(record[JENKINS_WAIT_FIELD])
    elif status == "waiting":
        state = State.PENDING
        text = waiting_text(record.get("wait_reason", ""), record.get("wait_detail", ""),
                            nodes_needed=nodes_needed, too_big=too_big)
    elif status == "triggered" and record.get("parked_at"):  # workers.engine.blocked_builds
        state = State.PENDING
        text = "waiting in Jenkins" + (f": {record['wait_detail']}"
                                       if record.get("wait_detail") else "")
    elif status in ("pod_created", "triggered"):
        state, text = State.PENDING, "agent starting" + (f" on {record['node']}"
                                                         if record.get("node") else "")
        if record.get(PULL_ERROR_FIELD):  # workers.agent_starts.pulls
            text += f": image pull failing, the kubelet retries: {record[PULL_ERROR_FIELD]}"
    else:
        state, text = State.PENDING, "queued"
    if record.get(RETRY_OF_FIELD) and state not in FINAL:  # workers.job_history.learn.retry
        text = f"{text} (started again with more memory after an OOM kill)"
    name = record.get(NAME_FIELD) or status_name(job, installation)
    project_id = record.get(PROJECT_ID_FIELD) or ""
    pipeline_id = record.get(PIPELINE_FIELD) or ""
    return Wanted(project, sha, name, state, description(text, secrets),
                  target if state != State.PENDING else None, ref_name(record.get("ref", "")),
                  project_id if _is_id(project_id) else None,
                  pipeline_id if _is_id(pipeline_id) else None)


def _is_id(value: str) -> bool:
    return value.isdigit() and value.isascii()


def ref_name(ref: str) -> str | None:
    """A webhook's ref (refs/heads/main, refs/tags/v1) as GitLab's API names it."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):] or None
    return ref or None


def wait_text_ready(record: Mapping[str, str], *, capacity_at: float | None,
                    now: float) -> bool:
    """Whether the build's pending text can be written now. A waiting build's: once the
    capacity state (whose nodes_needed it names) was computed after the build's wait was
    decided, or the decision is WAIT_TEXT_SETTLE_SECONDS old (the worker writes the capacity
    state right after it). A queued build's: once the worker decided (it is no longer
    queued), or DECISION_SETTLE_SECONDS after it was received. GitLab takes one pending text
    only (``enqueue`` from pending is refused): a "queued" sent while the worker was deciding
    was all the commit showed, never why the build waited."""
    if record.get("status") == "queued" and not record.get("started_at"):
        if record.get(JENKINS_WAIT_FIELD):  # decided: it waits on Jenkins
            return True
        return now - _float(record.get("received_at")) >= DECISION_SETTLE_SECONDS
    if record.get("status") != "waiting":
        return True
    decided = _float(record.get("updated_at"))  # unreadable: 0, long past, so ready
    return (capacity_at or 0) >= decided or now - decided >= WAIT_TEXT_SETTLE_SECONDS


def _float(value: str | None) -> float:
    """A record's time field; 0 for one missing or unreadable (taken as long past)."""
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def has_commit(record: Mapping[str, str]) -> bool:
    """Whether the build came from a GitLab push (a webhook's or the catch-up's)."""
    return record.get("delivery", "").startswith(_GITLAB_DELIVERIES)


def is_final(sent: str | None) -> bool:
    return sent in _FINAL_VALUES


def may_follow(sent: State | None, state: State) -> bool:
    """Whether GitLab takes `state` on this build's status after `sent` (None: nothing yet)."""
    return state in _NEXT[sent]


def to_send(sent: str | None, want: Wanted | None) -> Wanted | None:
    """What to post now: the wanted status, unless GitLab has it already or would refuse it
    after the state sent last (a pending reason that changed, a build re-placed after its
    run started: GitLab keeps the state it has)."""
    if want is None:
        return None
    last = State(sent) if sent in _VALUES else None
    return want if may_follow(last, want.state) else None


def retry_delay(attempts: int, retry_after: float | None = None, *,
                first: float = RETRY_FIRST_SECONDS, most: float = RETRY_MAX_SECONDS) -> float:
    """The pause before the next try after `attempts` failed ones (1: the first failure):
    first, 2 x first, 4 x first ... up to `most`; never shorter than GitLab's Retry-After."""
    backoff = min(most, first * 2 ** max(0, attempts - 1))
    return max(backoff, retry_after or 0.0)
