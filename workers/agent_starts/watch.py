"""From a pod event to a failed build, within one watch event.

``StartWatch`` is a pod listener of the worker's ClusterWatch: for each event of one of our
agent pods (the agent namespace, our managed-by label and this installation's, checked here
in code) it reads the
container states and, when the pod cannot start (workers.core.start_failures), queues one
``workers.failures.fail_start`` job at the front of the queue. Every worker process watches
every pod, so the job is deduped in Redis (SET NX on ``start-failure:<build key>``): several
workers act once. ``sweep`` is the reconcile pass's level-triggered backstop over the listed
pods, for an event no worker saw.
"""

import logging
import time
from collections.abc import Iterable
from typing import Any

from workers import runtime
from workers.engine import failures, task_args
from workers.adapters import run_bound
from workers.adapters.kube_objects import pod_info
from workers.adapters.legacy_pods import LegacyPods, is_ours
from workers.adapters.redis_state import (
    FINISHED, JOB_FAILURE_TTL_SECONDS, JOB_RESULT_TTL_SECONDS, JOB_RETRY, JOB_TIMEOUT_SECONDS,
    START_FAILURE, BuildStatus, RedisState)
from workers.agent_starts import pulls
from workers.core.errors import CIAutoscalerError, Overloaded, Unauthorized, Unavailable
from workers.core.image_pulls import (
    PULL_AGENT_FIELD, PULL_ERROR_AT_FIELD, PULL_ERROR_FIELD, PULL_REASONS, PULL_RETRY_SECONDS,
    PULL_SINCE_FIELD)
from workers.core.pods import BUILD_KEY_LABEL, is_managed
from workers.core.ports import PodInfo
from workers.core.start_failures import (
    JUDGED, StartFailure, ended_by_deadline, judged, start_failure)

log = logging.getLogger("ci_autoscaler.agent_starts.watch")
FAIL_TASK = "workers.failures.fail_start"
# How long a queued failure of a build keeps others from being queued (a job's retries
# included); the reconcile pass catches what is left after that.
FAIL_DEDUPE_SECONDS = 3600


class StartWatch:
    """A ClusterWatch pod listener (see the module docstring)."""

    def __init__(self, *, state: RedisState, namespace: str,
                 fatal_waiting_reasons: Iterable[str], installation: str = "",
                 legacy_known: LegacyPods | None = None,
                 pull_retry_seconds: float = PULL_RETRY_SECONDS):
        self.state = state
        self.namespace = namespace
        self.installation, self.legacy_known = installation, legacy_known
        self.fatal = frozenset(fatal_waiting_reasons)
        self.pull_retry_seconds = pull_retry_seconds

    def __call__(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != self.namespace or not is_managed(labels) \
                or not labels.get(BUILD_KEY_LABEL) \
                or not is_ours(meta, self.installation, self.legacy_known):
            return
        pod, key, now = pod_info(obj), labels[BUILD_KEY_LABEL], time.time()
        # a pull failing for now shown on the build (agent_starts.pulls), first: its bound
        # counts from when it was first seen failing
        failing = pulls.note(self.state, key, pod, self.fatal, now=now)
        since, error_at = failing or (None, None)
        failure = start_failure(pod, self.fatal, now=now,
                                pull_retry_seconds=self.pull_retry_seconds,
                                pull_failing_since=since, pull_error_at=error_at)
        if failure is None:
            return
        # told with the error the record keeps (a pod its deadline ended: named by it)
        if failure.reason in PULL_REASONS or ended_by_deadline(pod):
            failure = start_failure(
                pod, self.fatal, now=now, pull_retry_seconds=self.pull_retry_seconds,
                last_pull_error=pulls.last_error(self.state.get_build(key), pod.name),
                pull_failing_since=since, pull_error_at=error_at)
        queue_failure(self.state, key, pod.name, failure)


def worth_failing(state: dict[str, str], agent: str, failure: StartFailure) -> bool:
    """Whether the build is still one to fail: not failed or over already, and this end of
    its agent's pod not judged the build's own already (JUDGED). A pod that ended after its
    agent was seen online is one too: whether its build's work ever reached that agent is
    the fail's to ask Jenkins (workers.engine.failures; once per end of a pod, none per poll).
    Dropped here, a build whose agent died before Jenkins handed it the build was released
    as pod_ended, its queue item left waiting on the gone agent's label."""
    return bool(state) and not state.get("fail_reason") and state.get("status") not in FINISHED \
        and state.get(JUDGED) != judged(agent, failure)


def unfinished(state: dict[str, str]) -> bool:
    """Whether the build was failed for its agent (fail_reason) while its pod still stands:
    the fail stopped before its clean-up (Jenkins went away before its queue item was
    cancelled or its run aborted), whatever the pod shows (one that cannot start; or one
    running whose agent never connected: agent_connect_timeout). fail_build does the clean-up
    again; left to the release of a finished build, the item would wait in Jenkins for ever."""
    return state.get("status") == BuildStatus.FAILED and bool(state.get("fail_reason"))


def to_finish(state: dict[str, str], pod: PodInfo) -> StartFailure | None:
    """The fail to finish of a build whose fail stopped half-way (unfinished), while its pod
    stands (not being deleted); None if there is none. The sweep asks it of a build's own pod,
    workers.warm.lost of a claimed warm agent's (whose build-key label is its own name)."""
    if not unfinished(state) or pod.deleting:
        return None
    return StartFailure(state["fail_reason"], state.get("error", ""))


def queue_failure(state: RedisState, build_key: str, agent: str,
                  failure: StartFailure) -> bool:
    """Queue the build's fail_start job, once per build; True if this call queued it."""
    if not worth_failing(state.get_build(build_key), agent, failure):
        return False
    if not state.redis.set(f"{state.prefix}{START_FAILURE}{build_key}", failure.reason,
                           nx=True, ex=FAIL_DEDUPE_SECONDS):
        return False
    state.queue.enqueue_call(
        # the flags added since the first fail_start only when set: a job without them is
        # one the previous release's worker runs too, during a rolling upgrade (it had no
        # `disrupted`, and failed the job on a TypeError: the build's failure was lost)
        FAIL_TASK, kwargs={"build_key": build_key, "agent_name": agent,
                           "reason": failure.reason, "detail": failure.detail,
                           **task_args.given(only_before_connect=failure.only_before_connect,
                                             disrupted=failure.disrupted)},
        timeout=JOB_TIMEOUT_SECONDS, result_ttl=JOB_RESULT_TTL_SECONDS,
        failure_ttl=JOB_FAILURE_TTL_SECONDS, retry=JOB_RETRY, at_front=True,
        description=f"fail_start {build_key}")
    # A pod that ended (OOM kill, eviction) may have run its agent: fail_start judges then
    # whether it is a start failure, the build's own end or a lost agent; said so here
    log.warning("agent pod ended: judging its build" if failure.only_before_connect
                or failure.disrupted else "agent pod cannot start: failing its build",
                extra={"build_key": build_key, "agent": agent, "reason": failure.reason,
                       "detail": failure.detail})
    return True


_SWEEP_FIELDS = ("status", "fail_reason", "error", JUDGED, PULL_ERROR_FIELD, PULL_AGENT_FIELD,
                 PULL_SINCE_FIELD, PULL_ERROR_AT_FIELD)


def sweep(rt: runtime.Runtime, pods: Iterable[PodInfo], now: float | None = None) -> set[str]:
    """The reconcile pass: fail the builds of our listed pods that cannot start and were not
    failed from a watch event, and finish the fails that stopped half-way (unfinished); the
    names of the pods whose build it failed (deleted). `Unavailable` (Jenkins away),
    `Overloaded` (Jenkins struggling) and `Unauthorized` (our API token refused) stop it: the
    pass's Jenkins steps stop there (workers.engine.jenkins_steps), and the stray pods repair leaves
    a fail it stopped half-way to a later pass (starts_judged). `now`: the pass's time (an
    image pull failing for now fails its build once it has failed long enough)."""
    now = time.time() if now is None else now
    mine = [(pod, pod.labels.get(BUILD_KEY_LABEL, "")) for pod in pods
            if is_managed(pod.labels) and pod.labels.get(BUILD_KEY_LABEL)]
    rows = rt.state.build_fields([key for _, key in mine], *_SWEEP_FIELDS) if mine else []
    failed: set[str] = set()
    for (pod, key), row in zip(mine, rows):
        run_bound.checkpoint()  # the pass may end before this build
        state = {k: v for k, v in zip(_SWEEP_FIELDS, row) if v is not None}
        failure = start_failure(pod, rt.settings.fatal_waiting_reasons, now=now,
                                pull_retry_seconds=rt.settings.image_pull_retry_seconds,
                                last_pull_error=pulls.last_error(state, pod.name),
                                pull_failing_since=pulls.failing_since(state, pod.name),
                                pull_error_at=pulls.error_at(state, pod.name))
        if failure is None:  # a fail of a pod that could start (its agent never connected)
            failure = to_finish(state, pod)
        if failure is None or not (worth_failing(state, pod.name, failure)
                                   or unfinished(state)):
            continue
        try:
            result = failures.fail_build(rt, key, pod.name, failure)
        except (Unavailable, Overloaded, Unauthorized):  # Jenkins away, struggling or
            # refusing our token: the others wait for it too, and the stray pods repair
            # leaves theirs (workers.engine.repairs.delete_stray_pods, starts_judged): a half-way
            # fail's pod released as finished left its queue item waiting in Jenkins for ever
            raise
        except CIAutoscalerError as err:  # the next pass tries again
            log.warning("could not fail a build whose agent cannot start",
                        extra={"build_key": key, "error": str(err)})
            continue
        if "failed" in result:
            failed.add(pod.name)
    return failed
