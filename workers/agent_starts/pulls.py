"""An agent pod whose image pull fails for now (a registry's rate limit, its 5xx, a time-out:
workers.core.image_pulls): the kubelet retries it, and meanwhile the build says why.

The kubelet's error goes into the build's record (PULL_ERROR_FIELD, with the agent's name
in PULL_AGENT_FIELD) and a warning in the worker's log, each time the error changes. The
commit status is touched, but GitLab keeps it: a build's status is pending already (queued)
and GitLab refuses pending on pending (400 "Cannot transition status via :enqueue from
:pending"; workers.core.commit_status.to_send never sends it); the status's text shows the
error only when it is the build's first post (GitLab down until then). A bare
back-off message of an older kubelet does not replace the error it follows (it names none).
Once the pod's containers all run the record forgets it. If the pull still fails
CI_AUTOSCALER_IMAGE_PULL_RETRY_SECONDS after a watch first saw it fail (PULL_SINCE_FIELD,
kept per pod: a new pod starts anew), the build fails
(workers.core.start_failures) with that error.
"""

import logging
from typing import NamedTuple

from workers import commit_statuses
from workers.adapters.redis_state import FINISHED, RedisState
from workers.core import image_pulls
from workers.core.commit_status import redact
from workers.core.image_pulls import (
    PULL_AGENT_FIELD, PULL_ERROR_AT_FIELD, PULL_ERROR_FIELD, PULL_SINCE_FIELD)
from workers.core.ports import ContainerPhase, PodInfo, PodPhase

log = logging.getLogger("ci_autoscaler.agent_starts.pulls")


class Failing(NamedTuple):
    """A pod's pull failing for now, as the build's record keeps it."""
    since: float  # when this pod's pull was first seen failing
    error_at: float  # when the record first kept the error it shows now (PULL_ERROR_AT_FIELD)


def note(state: RedisState, build_key: str, pod: PodInfo, fatal: frozenset[str], *,
         now: float) -> Failing | None:
    """Record (or forget) the pod's pull failing for now: one Redis read (five fields) for a
    pod pulling again or running, a write only when what it shows changes. When this pod's
    pull was first seen failing and when its error now was (`now` the first time), None
    when it is not failing."""
    if pod.deleting:  # its release under way: nothing to show
        return None
    retrying = image_pulls.pulling_again(pod, fatal)
    running = pod.phase == PodPhase.RUNNING and all(
        c.phase == ContainerPhase.RUNNING for c in pod.containers if not c.init)
    if retrying is None and not running:
        return None
    status, error, agent, since, error_at = state.build_fields(
        [build_key], "status", PULL_ERROR_FIELD, PULL_AGENT_FIELD, PULL_SINCE_FIELD,
        PULL_ERROR_AT_FIELD)[0]
    if not status or status in FINISHED:
        return None
    build = {PULL_ERROR_FIELD: error or "", PULL_AGENT_FIELD: agent or ""}
    if retrying is None:  # it runs: the pull passed
        if build.get(PULL_ERROR_FIELD):
            state.update_build(build_key, **{PULL_ERROR_FIELD: None, PULL_AGENT_FIELD: None,
                                             PULL_SINCE_FIELD: None, PULL_ERROR_AT_FIELD: None})
            commit_statuses.touch(state, build_key)
        return None
    # this pod's first failed pull seen: the bound counts from it (a new pod starts anew)
    first = _since({PULL_AGENT_FIELD: agent or "", PULL_SINCE_FIELD: since or ""}, pod.name)
    # a URL's user:password@ (a mirror configured with one) is kept out of the record and log
    text = redact(image_pulls.told(retrying.reason, retrying.message))
    if first is not None and (build.get(PULL_ERROR_FIELD) == text or (
            image_pulls.bare(retrying.message) and build.get(PULL_ERROR_FIELD))):
        # a record from before PULL_ERROR_AT_FIELD (a rolling upgrade): from the first failure
        return Failing(first, _number(error_at) or first)
    state.update_build(build_key, **{PULL_ERROR_FIELD: text, PULL_AGENT_FIELD: pod.name,
                                     PULL_SINCE_FIELD: now if first is None else first,
                                     PULL_ERROR_AT_FIELD: now})
    commit_statuses.touch(state, build_key)
    log.warning("agent image pull failing; the kubelet retries it", extra={
        "build_key": build_key, "agent": pod.name, "container": retrying.name,
        "reason": retrying.reason, "detail": redact(retrying.message)})
    return Failing(now if first is None else first, now)


def _number(value: str | None) -> float | None:
    try:
        return float(value or 0) or None
    except ValueError:
        return None


def _since(build: dict[str, str], agent: str) -> float | None:
    if build.get(PULL_AGENT_FIELD) != agent:
        return None
    return _number(build.get(PULL_SINCE_FIELD))


def error_at(build: dict[str, str], agent: str) -> float | None:
    """When the build's record first kept the pull error it keeps for this agent's pod (None:
    none kept, or kept before that time was)."""
    if build.get(PULL_AGENT_FIELD) != agent or not build.get(PULL_ERROR_FIELD):
        return None
    return _number(build.get(PULL_ERROR_AT_FIELD))


def failing_since(build: dict[str, str], agent: str) -> float | None:
    """When a watch first saw this agent's pod's pull fail for now (None: not seen)."""
    return _since(build, agent)


def last_error(build: dict[str, str], agent: str) -> str:
    """The last pull error the build's record keeps for this agent's pod ("" if none)."""
    return build.get(PULL_ERROR_FIELD, "") if build.get(PULL_AGENT_FIELD) == agent else ""
