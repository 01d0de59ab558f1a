"""Why an agent pod cannot start, read from its container states (pure).

A pod whose agent cannot come up fails its build at once instead of waiting for
activeDeadlineSeconds: a fatal waiting reason on any container or init container (the
kubelet's back-off never fixes a wrong image name or a missing pull secret within a build's
patience; a pull failing for now, a registry's rate limit say, after a bounded time:
workers.core.image_pulls), a failed init container, a container killed or exited, a pod
evicted or ended.
The decision is a value: the reason (a metric label from a small set) and a detail for the
build's state and the log (REALITY.md, "Container states").
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from workers.core import image_pulls
from workers.core.ports import AgentActivity, ContainerPhase, ContainerState, PodInfo, PodPhase
from workers.core.redaction import redact

# The kubelet's waiting reasons that fail a build by default (pkg/kubelet/images/types.go:
# ErrImagePull, ImagePullBackOff, InvalidImageName; pkg/kubelet/kuberuntime:
# CreateContainerConfigError, CreateContainerError). Configurable:
# CI_AUTOSCALER_FATAL_WAITING_REASONS.
DEFAULT_FATAL_WAITING_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                 "CreateContainerConfigError", "CreateContainerError")
DETAIL_MAX_CHARS = 300  # a kubelet message can be long (a registry's whole answer)
# The pod status reasons of the kubelet's other stops, with phase Failed: a graceful node
# shutdown (a spot or preemptible node reclaimed; "Pod was terminated in response to
# imminent node shutdown.": pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go;
# Kubernetes docs, "Node Shutdowns") and a preemption to admit a critical pod ("Preempted in
# order to admit critical pod": pkg/kubelet/preemption/preemption.go). A node-pressure
# eviction is reason Evicted (pkg/kubelet/eviction eviction_manager.go evictPod). From
# Kubernetes 1.26 each also sets the DisruptionTarget condition, reason TerminationByKubelet
# (PodInfo.disruption). A pod bound to a node that has begun to shut down is refused at
# admission: Failed, reason NodeShutdown, "Pod was rejected as the node is shutting down."
# (nodeshutdown_manager_linux.go Admit; no condition), nothing of it ever run.
KUBELET_STOPS = frozenset({"Terminated", "Preempting", "NodeShutdown"})
# The kubelet refusing a pod at admission, after the scheduler bound it (its own fit check
# found the node short: its view of the node's pods ahead of the scheduler's, a GPU the device
# plugin lost): phase Failed, no container ever created, reason "OutOf<resource>"
# (OutOfcpu, OutOfmemory, OutOfpods, OutOfnvidia.com/gpu) for a resource short, the failed
# predicate's name for another (NodeAffinity, NodePorts, ...), UnexpectedAdmissionError for
# a device allocation that failed; message "Pod was rejected: " + the predicate's
# (pkg/kubelet/lifecycle/predicate.go Admit, pkg/kubelet/kubelet.go rejectPod). Nothing of
# the build ran: a disruption (placed again elsewhere once), not the build's failure.
REJECTED_PREFIX = "Pod was rejected:"
KUBELET_REJECTIONS = frozenset({"UnexpectedAdmissionError", "NodeAffinity", "NodePorts",
                                "PodOSSelectorNodeLabelDoesNotMatch", "PodOSNotSupported"})


def rejected_at_admission(pod: PodInfo) -> bool:
    """Whether the node's kubelet refused the pod at admission (KUBELET_REJECTIONS)."""
    return pod.phase == PodPhase.FAILED and bool(pod.reason) and (
        pod.reason.startswith("OutOf") or pod.reason in KUBELET_REJECTIONS
        or (pod.message or "").startswith(REJECTED_PREFIX))


# The kubelet ending a pod at its activeDeadlineSeconds: phase Failed, reason
# DeadlineExceeded, "Pod was active on the node longer than the specified deadline"
# (pkg/kubelet/active_deadline.go). A template's deadline shorter than the pull's bound
# (CI_AUTOSCALER_IMAGE_PULL_RETRY_SECONDS) ends a pod whose pull fails for now before the
# bound does: that build failed "pod_failed: DeadlineExceeded", its pull error unnamed.
DEADLINE_EXCEEDED = "DeadlineExceeded"


class FailureReason(StrEnum):
    """The reasons that are not a kubelet waiting reason."""

    OOM_KILLED = "OOMKilled"  # a container's terminated.reason
    EVICTED = "Evicted"  # the pod's status.reason, with phase Failed
    INIT_CONTAINER_FAILED = "init_container_failed"  # terminated with a non-zero exit code
    CONTAINER_EXITED = "container_exited"  # terminated with a non-zero exit code
    POD_FAILED = "pod_failed"  # phase Failed for another reason
    POD_ENDED = "pod_ended"  # phase Succeeded
    AGENT_CONNECT_TIMEOUT = "agent_connect_timeout"  # Running, the agent never online
    # the API refused to create the pod for good: 4xx other than 409 and 429, and other than a
    # 403 for an exceeded quota (Pod Security admission, a LimitRange, a policy webhook)
    POD_REFUSED = "pod_refused"
    # a build whose Jenkins build was queued already cannot be provisioned for good for another
    # reason (its template gone from the configuration), found by a re-drive
    PROVISION_FAILED = "provision_failed"
    # not a start failure: the pod went away while its build ran (workers.engine.lost_agents), which
    # fails the build the same way but is counted in ci_autoscaler_agents_lost_total
    POD_LOST = "pod_lost"


# A Pipeline run whose agent was lost after it connected is left to decide (workers.engine.lost_runs):
# the build's record keeps why its agent went (the text a failed build's `error` would hold)
# and when, until its run retries its node block on a new agent (the fields cleared) or ends.
# An end other than SUCCESS while they are kept is that loss's doing (core.commit_status).
LOST_RUN_FIELD = "lost_run"
LOST_RUN_AT_FIELD = "lost_run_at"
# Set while the lost agent's Jenkins node is still to delete (Jenkins failed the delete):
# nothing tells the run before it is deleted (RemovedNodeListener fires on the deletion).
LOST_RUN_NODE_LEFT_FIELD = "lost_run_node_left"


# Every reason the start failures counter is created with (configured waiting reasons come
# on top when counted).
START_FAILURE_REASONS = (*DEFAULT_FATAL_WAITING_REASONS,
                         *(r.value for r in FailureReason if r != FailureReason.POD_LOST))


@dataclass(frozen=True)
class StartFailure:
    """A build whose agent cannot start. `only_before_connect`: the pod ended, which is a
    start failure only if its agent never connected (after that, it is the build's own end);
    False when the pod can never run its agent at all (a fatal waiting reason, a failed init
    container). `disrupted`: Kubernetes stopped a pod that was not at fault (an eviction
    under node pressure, a node shutdown): after its agent connected, not the build's own end
    but a lost agent (lost_to_disruption)."""

    reason: str
    detail: str
    only_before_connect: bool = False
    disrupted: bool = False


# The build's record: the pod's end last judged the build's own (its agent had connected and
# its work was not waiting for it: workers.engine.failures), as `judged` words it. A container of a
# pod still Running (a service's OOM kill or exit) is not released by anything: asked again,
# the start-failure sweep read Jenkins (its run, its queue) in every pass for the same answer.
JUDGED = "start_judged"


def judged(agent: str, failure: StartFailure) -> str:
    """The words for one end of one agent's pod: another container's end, or the pod's own
    later, is judged anew (a Pipeline's next block may wait for the agent by then)."""
    return f"{agent} {failure.reason} {failure.detail}"


def _detail(what: str, reason: str, message: str) -> str:
    # redacted here, before it is cut (a cut could leave half a secret) and before it goes
    # anywhere: the kubelet's message may name a registry mirror as https://user:pass@host,
    # and the failure is logged, queued as a job's arguments and judged (JUDGED) as it is
    text = f"{what}: {reason}" + (f": {redact(message)}" if message else "")
    return text if len(text) <= DETAIL_MAX_CHARS else text[:DETAIL_MAX_CHARS - 1] + "…"


def _name(c: ContainerState) -> str:
    return f"{'init container' if c.init else 'container'} {c.name}"


def start_failure(pod: PodInfo, fatal_waiting_reasons: Iterable[str]
                  = DEFAULT_FATAL_WAITING_REASONS, *, now: float | None = None,
                  pull_retry_seconds: float = image_pulls.PULL_RETRY_SECONDS,
                  last_pull_error: str = "",
                  pull_failing_since: float | None = None,
                  pull_error_at: float | None = None) -> StartFailure | None:
    """Why this pod cannot run its agent, or None while it may still. The first cause found,
    in this order: a fatal waiting reason; a failed init container; eviction or another stop
    by the kubelet (a node shutdown; a DisruptionTarget condition); the pod's
    activeDeadlineSeconds (pod_failed: DeadlineExceeded); a container killed or exited
    non-zero; the agent's container ended beside a running service; the pod Failed or
    Succeeded. A pod its activeDeadlineSeconds ended (DeadlineExceeded) while its pull failed
    for now fails with the pull's reason and error (the container's, else `last_pull_error`),
    not as pod_failed. A pod being deleted is None. An image pull that fails for now (a
    registry's 429 or 5xx, a time-out: workers.core.image_pulls) is a failure only
    `pull_retry_seconds` after it was first seen failing, at `now` (never when `now` is not
    given): the kubelet retries it meanwhile. `last_pull_error`: the error the build's record keeps
    (workers.agent_starts.pulls), told instead of a bare back-off; `pull_failing_since`: when
    a watch first saw the pull fail (the record's; else the kubelet's taking the pod);
    `pull_error_at`: when the record first kept the error this container shows (None: it
    keeps another), so a registry host unknown to the DNS on a later try fails the build
    (image_pulls.host_unknown_again)."""
    if pod.deleting:
        return None
    fatal = frozenset(fatal_waiting_reasons)
    for c in pod.containers:
        if c.phase == ContainerPhase.WAITING and c.reason in fatal:
            # the record's time holds for the error it keeps: this one (the watch's note
            # wrote it just before), not another the record kept before
            kept_at = pull_error_at if not last_pull_error or last_pull_error == redact(
                image_pulls.told(c.reason, c.message)) else None
            if image_pulls.for_good(c.reason, c.message) or image_pulls.host_unknown_again(
                    c.reason, c.message, kept_at, now):
                # a pull's without the runtime's wrapping: the registry's answer (the host
                # the DNS does not know, the tag not found) comes at the end of a long text,
                # and GitLab's status showed the wrapping alone, cut before it
                told = image_pulls.short(c.message) if c.reason in image_pulls.PULL_REASONS \
                    else c.message
                return StartFailure(c.reason, _detail(_name(c), c.reason, told))
            since = image_pulls.failing_since(pod, pull_failing_since)
            # its activeDeadlineSeconds ended the pod before the bound: the kubelet tries
            # no more, and the pull is what kept it from running
            deadline = ended_by_deadline(pod)
            if deadline or (now is not None and since is not None
                            and now - since >= pull_retry_seconds):
                # after a deadline told short, the back-off's words cut too: GitLab's
                # status keeps 255 characters, and the registry's answer must fit in them
                told = last_pull_error if last_pull_error and image_pulls.bare(c.message) \
                    else image_pulls.told(c.reason, c.message) if deadline \
                    else image_pulls.short(c.message)
                how_long = f"pod {DEADLINE_EXCEEDED}" if deadline \
                    else f"pull failing for {now - since:.0f}s"
                return StartFailure(c.reason, _detail(_name(c), c.reason, f"{how_long}: {told}"))
    if ended_by_deadline(pod) and last_pull_error and not any(
            c.phase != ContainerPhase.WAITING for c in pod.containers if not c.init):
        # its containers' states no longer say it (the kubelet's status of a pod it ended
        # need not keep a waiting reason): the record's last pull error does
        # (workers.agent_starts.pulls: kept while the pod's pull fails, gone once a watch
        # sees it run). Not once a container ran: its pull passed, and the error kept is
        # one no watch saw go (the pod ran and met its deadline while none watched); told
        # so, the build that ran to its deadline after its agent connected was failed as
        # a pull that never passed, not as its own end (only_before_connect)
        reason = last_pull_error.split(":", 1)[0]
        return StartFailure(reason if reason in image_pulls.PULL_REASONS else "ErrImagePull",
                            _detail("pod", DEADLINE_EXCEEDED, last_pull_error))
    for c in pod.containers:
        # not a sidecar's exit: the kubelet restarts it, or stopped it as the pod ended (its
        # 143 after the agent's build is done, or at an eviction or the deadline); read as a
        # failed init container, it failed a running build for good, before any connect check
        # nor one its deadline killed (an init container's own failure ends the pod at once)
        if c.init and not c.sidecar and c.phase == ContainerPhase.TERMINATED \
                and (c.exit_code or 0) != 0 and not ended_by_deadline(pod):
            reason = FailureReason.OOM_KILLED if c.reason == "OOMKilled" \
                else FailureReason.INIT_CONTAINER_FAILED
            return StartFailure(str(reason), _detail(
                _name(c), c.reason or "Error", f"exit code {c.exit_code}"))
    if pod.reason == FailureReason.EVICTED or (pod.phase == PodPhase.FAILED and (
            pod.reason in KUBELET_STOPS or pod.disruption)) or rejected_at_admission(pod):
        # before its containers' exits: a shutdown's SIGTERM (exit 143) is no fault of theirs
        reason = FailureReason.EVICTED if pod.reason == FailureReason.EVICTED \
            else FailureReason.POD_FAILED
        # A stop with no status.message of its own (the pod GC's, a condition alone) is told
        # by its DisruptionTarget condition's message, not the empty status.
        return StartFailure(str(reason), _detail("pod", pod.reason or pod.disruption,
                                                 pod.message or pod.disruption_message),
                            only_before_connect=True, disrupted=True)
    if ended_by_deadline(pod):
        # before its containers' exits too: the kubelet killed them at the deadline (137 or
        # 143, or ContainerStatusUnknown for one never started), which says nothing of theirs
        return StartFailure(str(FailureReason.POD_FAILED),
                            _detail("pod", DEADLINE_EXCEEDED, pod.message),
                            only_before_connect=True)
    for c in pod.containers:
        if not c.init and c.phase == ContainerPhase.TERMINATED and (c.exit_code or 0) != 0:
            reason = FailureReason.OOM_KILLED if c.reason == "OOMKilled" \
                else FailureReason.CONTAINER_EXITED
            return StartFailure(str(reason), _detail(
                _name(c), c.reason or "Error", f"exit code {c.exit_code}"),
                only_before_connect=True)
    if pod.agent_ended and pod.phase not in (PodPhase.FAILED, PodPhase.SUCCEEDED):
        # its agent's container done (exit 0) while a service runs on: the pod not ended, yet
        # its agent never runs again (restartPolicy Never), as for a pod Succeeded whole below
        return StartFailure(str(FailureReason.POD_ENDED),
                            _detail(f"container {pod.agent_container}", "Completed",
                                    "exit code 0"), only_before_connect=True)
    if pod.phase == PodPhase.FAILED:
        return StartFailure(str(FailureReason.POD_FAILED),
                            _detail("pod", pod.reason or "Failed", pod.message),
                            only_before_connect=True)
    if pod.phase == PodPhase.SUCCEEDED:
        return StartFailure(str(FailureReason.POD_ENDED), "pod: Succeeded",
                            only_before_connect=True)
    return None


def ended_by_deadline(pod: PodInfo) -> bool:
    """Whether the kubelet ended the pod at its activeDeadlineSeconds (a failing pull's
    error, the build record's, is worth reading for it: start_failure's last_pull_error)."""
    return pod.phase == PodPhase.FAILED and pod.reason == DEADLINE_EXCEEDED


def lost_to_disruption(agent: str, failure: StartFailure) -> StartFailure:
    """The build whose connected agent's pod Kubernetes stopped while the build ran
    (`failure.disrupted`): its workspace is gone and Jenkins waits for an agent that cannot
    come back, as for a drained pod (workers.engine.lost_agents). Failed as lost, with the
    kubelet's words, not released as the build's own end."""
    return StartFailure(str(FailureReason.POD_LOST),
                        f"agent pod {agent} stopped by Kubernetes: "
                        f"{failure.detail}")


def had_connected(activity: AgentActivity | None, pod_created_at: float | None) -> bool:
    """Whether Jenkins shows that the agent of a pod made at `pod_created_at` (Unix time) had
    connected, whatever our poll of agents online saw (it runs every few seconds on the
    reconcile leader, and not at all while that is down or busy): online still (its channel
    not closed yet), a run on its executor (Jenkins hands work to online computers only), or
    its connection closed under it since the pod was made (channel_lost_at: Jenkins'
    ChannelTermination; an earlier one is another pod's of the same name, made again by a
    stalled build's restart). A never connected agent shows none of these; nor does any
    agent after a Jenkins restart (new computers, no cause), which is then taken for one
    that never connected, as before. A closed channel is a process that opened one, not a
    build that ran there: one killed in the handshake before its computer came online leaves
    it too (SlaveComputer.setChannel adds the listener that sets it first), so whether the
    build got to the agent is asked of Jenkins' queue besides (workers.engine.failures)."""
    if activity is None:
        return False
    if not activity.offline or activity.runs:
        return True
    return activity.channel_lost_at is not None and pod_created_at is not None \
        and activity.channel_lost_at >= pod_created_at


def connect_timeout(agent: str, seconds: float, attempts: int) -> StartFailure:
    """The agent's pod ran for `seconds` and its Jenkins computer never came online."""
    return StartFailure(str(FailureReason.AGENT_CONNECT_TIMEOUT),
                        f"agent {agent} not online in Jenkins {seconds:.0f}s after its pod "
                        f"ran (attempt {attempts})")
