"""Why an agent pod cannot start: pod statuses as the kubelet writes them, read into container
states (kube_objects.pod_info) and decided on (core.start_failures)."""

import pytest

from workers.adapters.kube_objects import pod_info
from workers.core import image_pulls
from workers.core.ports import AgentActivity, ContainerPhase, RunRef
from workers.core.start_failures import (
    DEFAULT_FATAL_WAITING_REASONS, DETAIL_MAX_CHARS, FailureReason, had_connected,
    start_failure)

# the kubelet's back-off message (1.32 and later: with the last pull's error), an image that
# does not exist: a pull that can never pass (test_image_pull_errors)
PULL_MESSAGE = ('Back-off pulling image "registry.example.com/ci/maven:3.9-typo": ErrImagePull: '
                'rpc error: code = NotFound desc = failed to pull and unpack image: not found')


def pod(phase="Pending", *, containers=(), init=(), reason=None, message=None, deleting=False,
        conditions=(), sidecars=()):
    status = {"phase": phase, "containerStatuses": list(containers)}
    if conditions:
        status["conditions"] = list(conditions)
    if init:
        status["initContainerStatuses"] = list(init)
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    meta = {"name": "cia-agent", "labels": {"app.kubernetes.io/managed-by": "ci-autoscaler"},
            "creationTimestamp": "2024-05-01T10:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T10:05:00Z"
    spec = {"nodeName": "node-a"}
    if sidecars:  # init containers with restartPolicy Always (Kubernetes 1.29+ sidecars)
        spec["initContainers"] = [{"name": n, "image": "x", "restartPolicy": "Always"}
                                  for n in sidecars]
    return pod_info({"metadata": meta, "spec": spec, "status": status})


def waiting(name, reason, message=""):
    return {"name": name, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"waiting": {"reason": reason, "message": message}}}


def running(name, started="2024-05-01T10:00:30Z"):
    return {"name": name, "ready": True, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"running": {"startedAt": started}}}


def terminated(name, reason, code):
    return {"name": name, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"reason": reason, "exitCode": code,
                                     "startedAt": "2024-05-01T10:00:30Z",
                                     "finishedAt": "2024-05-01T10:01:00Z"}}}


def test_container_states_are_read_as_the_kubelet_writes_them():
    info = pod("Running", init=[terminated("agent-copy", "Completed", 0)],
               containers=[running("build"), waiting("db", "ContainerCreating")])
    assert [(c.name, c.init, c.phase) for c in info.containers] == [
        ("agent-copy", True, ContainerPhase.TERMINATED), ("build", False, ContainerPhase.RUNNING),
        ("db", False, ContainerPhase.WAITING)]
    assert info.containers[0].exit_code == 0 and info.containers[0].reason == "Completed"
    assert info.containers[1].started_at == 1714557630.0
    assert info.created_at == 1714557600.0 and info.node == "node-a"
    assert info.running_since is None  # db is not running yet


def test_running_since_is_when_the_last_container_started():
    info = pod("Running", containers=[running("build", "2024-05-01T10:00:30Z"),
                                      running("db", "2024-05-01T10:00:40Z")])
    assert info.running_since == 1714557640.0


@pytest.mark.parametrize("reason", DEFAULT_FATAL_WAITING_REASONS)
def test_every_default_fatal_waiting_reason_fails_the_start(reason):
    failure = start_failure(pod(containers=[waiting("jnlp", reason, PULL_MESSAGE)]))
    assert failure is not None and failure.reason == reason
    told = image_pulls.short(PULL_MESSAGE) if reason in image_pulls.PULL_REASONS \
        else PULL_MESSAGE  # a pull's error without the runtime's wrapping
    assert failure.detail == f"container jnlp: {reason}: {told}"
    assert not failure.only_before_connect


@pytest.mark.parametrize("reason", ["ContainerCreating", "PodInitializing", ""])
def test_a_container_on_its_way_up_is_no_failure(reason):
    assert start_failure(pod(containers=[waiting("jnlp", reason)])) is None


def test_the_fatal_set_is_configurable():
    info = pod(containers=[waiting("jnlp", "ErrImagePull")])
    assert start_failure(info, ("ImagePullBackOff",)) is None
    # a registry unavailable is for now: a failure once the kubelet has retried long enough
    assert start_failure(pod(containers=[waiting("jnlp", "RegistryUnavailable")]),
                         ("RegistryUnavailable",), now=1714557600.0 + 300
                         ).reason == "RegistryUnavailable"


def test_a_fatal_reason_on_a_tool_or_init_container_counts_too():
    info = pod(init=[waiting("agent-copy", "InvalidImageName")],
               containers=[waiting("build", "PodInitializing")])
    failure = start_failure(info)
    assert failure.reason == "InvalidImageName"
    assert failure.detail.startswith("init container agent-copy: InvalidImageName")
    side = pod("Running", containers=[running("build"),
                                      waiting("db", "CreateContainerConfigError",
                                              'secret "db-pass" not found')])
    assert start_failure(side).reason == "CreateContainerConfigError"


def test_a_failed_init_container_fails_the_start_for_certain():
    info = pod("Failed", init=[terminated("agent-copy", "Error", 1)],
               containers=[waiting("build", "PodInitializing")])
    failure = start_failure(info)
    assert failure.reason == FailureReason.INIT_CONTAINER_FAILED
    assert failure.detail == "init container agent-copy: Error: exit code 1"
    assert not failure.only_before_connect
    killed = pod("Failed", init=[terminated("agent-copy", "OOMKilled", 137)])
    assert start_failure(killed).reason == FailureReason.OOM_KILLED


@pytest.mark.parametrize("phase,code,reason", [
    ("Running", 1, "Error"),  # crashed; the kubelet restarts it (the next write: waiting)
    ("Succeeded", 143, "Error"),  # the agent done: the kubelet's SIGTERM to the sidecar
])
def test_a_sidecar_s_exit_is_no_failed_init_container(phase, code, reason):
    """A sidecar (an init container with restartPolicy Always, README: podSpecPatch) is
    restarted by the kubelet, and stopped by it once the pod's containers are done (Kubernetes
    docs, "Sidecar containers"; kubelet_pods.go getPhase leaves it out). Was
    init_container_failed, not only before a connect: a running build failed for good."""
    info = pod(phase, init=[terminated("agent-copy", "Completed", 0),
                            terminated("proxy", reason, code)],
               containers=[running("jnlp") if phase == "Running"
                           else terminated("jnlp", "Completed", 0)], sidecars=["proxy"])
    assert [c.sidecar for c in info.containers] == [False, True, False]
    failure = start_failure(info)
    assert failure is None if phase == "Running" else failure.reason == "pod_ended", failure


def test_a_sidecar_killed_with_its_pod_leaves_the_pod_s_own_reason():
    deadline = pod("Failed", reason="DeadlineExceeded", init=[terminated("proxy", "Error", 137)],
                   containers=[terminated("jnlp", "Error", 137)], sidecars=["proxy"])
    assert start_failure(deadline).detail.startswith("pod: DeadlineExceeded")
    evicted = pod("Failed", reason="Evicted", message="The node was low on resource: memory.",
                  init=[terminated("proxy", "Error", 143)],
                  containers=[terminated("jnlp", "Error", 137)], sidecars=["proxy"])
    failure = start_failure(evicted)
    assert failure.reason == FailureReason.EVICTED and failure.disrupted


def test_an_evicted_pod_fails_its_start_if_the_agent_never_connected():
    info = pod("Failed", reason="Evicted",
               message="The node was low on resource: memory.",
               containers=[terminated("jnlp", "Error", 137)])
    failure = start_failure(info)
    assert failure.reason == FailureReason.EVICTED and failure.only_before_connect
    assert failure.detail == "pod: Evicted: The node was low on resource: memory."


SHUTDOWN = "Pod was terminated in response to imminent node shutdown."
REFUSED = "Pod was rejected: Pod was rejected as the node is shutting down."
BY_KUBELET = {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
              "message": SHUTDOWN}


@pytest.mark.parametrize("reason,conditions,expected,detail", [
    # pkg/kubelet/eviction evictPod: Failed, Evicted (1.26+: DisruptionTarget too)
    ("Evicted", [], FailureReason.EVICTED, "pod: Evicted: low"),
    ("Evicted", [BY_KUBELET], FailureReason.EVICTED, "pod: Evicted: low"),
    # pkg/kubelet/nodeshutdown: Failed, Terminated, with or without the condition; its
    # SIGTERM's exit 143 is not read as the container's own exit
    ("Terminated", [], FailureReason.POD_FAILED, f"pod: Terminated: {SHUTDOWN}"),
    ("Terminated", [BY_KUBELET], FailureReason.POD_FAILED, f"pod: Terminated: {SHUTDOWN}"),
    # pkg/kubelet/preemption: Failed, Preempting, to admit a critical pod
    ("Preempting", [], FailureReason.POD_FAILED,
     "pod: Preempting: Preempted in order to admit critical pod"),
    # pkg/kubelet/nodeshutdown Admit: a pod bound as its node began to shut down is refused
    # at admission (Failed, NodeShutdown; no DisruptionTarget): nothing of it ever ran
    ("NodeShutdown", [], FailureReason.POD_FAILED, f"pod: NodeShutdown: {REFUSED}"),
    # a condition alone (a reason this code does not know): its message tells what
    (None, [BY_KUBELET], FailureReason.POD_FAILED, f"pod: TerminationByKubelet: {SHUTDOWN}"),
    # the pod GC's (node gone): phase Failed and the condition, no status.message
    # (pkg/controller/podgc/gc_controller.go gcOrphaned)
    (None, [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
             "message": "PodGC: node no longer exists"}], FailureReason.POD_FAILED,
     "pod: DeletionByPodGC: PodGC: node no longer exists"),
])
def test_a_pod_the_kubelet_stopped_is_a_disruption(reason, conditions, expected, detail):
    message = {"Evicted": "low", "Terminated": SHUTDOWN, "NodeShutdown": REFUSED,
               "Preempting": "Preempted in order to admit critical pod"}.get(reason or "")
    failure = start_failure(pod("Failed", reason=reason, message=message,
                                containers=[terminated("jnlp", "Error", 143)],
                                conditions=conditions))
    assert (failure.reason, failure.detail) == (expected, detail)
    assert failure.disrupted and failure.only_before_connect


def test_a_false_disruption_condition_or_a_deleting_pod_is_no_disruption():
    """DisruptionTarget False (the disruption was called off) leaves the container's exit;
    a pod being deleted (a drain, a preemption) is workers.engine.lost_agents' to judge."""
    off = {**BY_KUBELET, "status": "False"}
    failure = start_failure(pod("Failed", containers=[terminated("jnlp", "Error", 1)],
                                conditions=[off]))
    assert failure.reason == FailureReason.CONTAINER_EXITED and not failure.disrupted
    assert start_failure(pod("Failed", reason="Evicted", deleting=True,
                             containers=[terminated("jnlp", "Error", 137)])) is None


def test_an_oom_kill_is_no_disruption():
    failure = start_failure(pod("Failed", containers=[terminated("jnlp", "OOMKilled", 137)]))
    assert failure.reason == FailureReason.OOM_KILLED and not failure.disrupted


@pytest.mark.parametrize("reason,code,expected", [
    ("OOMKilled", 137, FailureReason.OOM_KILLED),
    ("Error", 1, FailureReason.CONTAINER_EXITED),
    ("ContainerCannotRun", 128, FailureReason.CONTAINER_EXITED),
])
def test_a_container_that_died_is_a_failure_before_the_agent_connects(reason, code, expected):
    info = pod("Running", containers=[terminated("jnlp", reason, code), running("db")])
    failure = start_failure(info)
    assert failure.reason == expected and failure.only_before_connect
    assert failure.detail == f"container jnlp: {reason}: exit code {code}"


@pytest.mark.parametrize("killed", [
    terminated("jnlp", "Error", 137),  # it ran: the kubelet's kill at the deadline
    terminated("jnlp", "ContainerStatusUnknown", 137),  # never started: marked so when ended
])
def test_a_pod_its_deadline_ended_fails_as_the_deadline_not_its_killed_containers(killed):
    """pkg/kubelet/active_deadline.go: Failed, reason DeadlineExceeded; the kubelet kills its
    containers, whose exits are its doing. Was `container_exited: container jnlp: Error:
    exit code 137`, the deadline unnamed."""
    message = "Pod was active on the node longer than the specified deadline"
    failure = start_failure(pod("Failed", reason="DeadlineExceeded", message=message,
                                containers=[killed, terminated("db", "Error", 143)]))
    assert failure.reason == FailureReason.POD_FAILED and failure.only_before_connect
    assert failure.detail == f"pod: DeadlineExceeded: {message}"
    assert not failure.disrupted  # placed again, it would wait out another deadline


def test_a_pod_its_deadline_ended_while_an_init_container_ran_fails_as_the_deadline():
    """The kubelet kills the init container still running (a clone, a wait for a service) at
    the deadline; a failed one would have ended the pod at once (restartPolicy Never). Was
    init_container_failed, 'exit code 137', the deadline unnamed."""
    info = pod("Failed", reason="DeadlineExceeded", init=[terminated("clone", "Error", 137)],
               containers=[waiting("jnlp", "PodInitializing")])
    failure = start_failure(info)
    assert failure.reason == FailureReason.POD_FAILED and "DeadlineExceeded" in failure.detail


def test_a_container_that_exited_zero_and_running_pods_are_no_failure():
    assert start_failure(pod("Running", containers=[terminated("setup", "Completed", 0),
                                                    running("jnlp")])) is None
    assert start_failure(pod("Running", containers=[running("jnlp")])) is None


@pytest.mark.parametrize("phase,expected", [("Failed", FailureReason.POD_FAILED),
                                            ("Succeeded", FailureReason.POD_ENDED)])
def test_a_pod_that_ended_is_a_failure_only_before_the_agent_connected(phase, expected):
    failure = start_failure(pod(phase, containers=[terminated("jnlp", "Completed", 0)]))
    assert failure.reason == expected and failure.only_before_connect


def test_a_pod_being_deleted_is_left_to_its_deletion():
    assert start_failure(pod(containers=[waiting("jnlp", "ImagePullBackOff")],
                             deleting=True)) is None


def test_a_long_kubelet_message_is_cut():
    failure = start_failure(pod(containers=[waiting("jnlp", "ErrImagePull",
                                                    "not found " + "x" * 5000)]))
    assert len(failure.detail) == DETAIL_MAX_CHARS and failure.detail.endswith("…")


MADE = 1_700_000_000.0  # when the agent's pod was made (Unix time)


@pytest.mark.parametrize("activity, made, expected", [
    (None, MADE, False),  # no such computer: its node deleted, or never made
    (AgentActivity(offline=True, temporarily_offline=False), MADE, False),  # never connected
    (AgentActivity(offline=False, temporarily_offline=False), MADE, True),  # still connected
    (AgentActivity(offline=True, temporarily_offline=False,  # its channel gone: it ran one
                   runs=(RunRef("build", 7),)), MADE, True),
    (AgentActivity(offline=True, temporarily_offline=False, channel_lost_at=MADE + 40),
     MADE, True),  # connected, then its connection closed under it
    (AgentActivity(offline=True, temporarily_offline=False, channel_lost_at=MADE - 60),
     MADE, False),  # an earlier pod's of the same name
    (AgentActivity(offline=True, temporarily_offline=False, channel_lost_at=MADE + 40),
     None, False),  # when the pod was made is not known: no closed channel counts
], ids=["no computer", "never connected", "online", "a run on it", "channel lost since",
        "channel lost before the pod", "pod time unknown"])
def test_jenkins_tells_whether_an_agent_had_connected(activity, made, expected):
    assert had_connected(activity, made) is expected


def test_the_agent_s_own_container_ending_beside_a_running_service_is_the_agent_s_end():
    """The container given JENKINS_AGENT_NAME runs the agent (workers.core.pods); a service's
    end, or none at all, leaves the agent running."""
    spec = {"containers": [{"name": "build", "env": [{"name": "JENKINS_AGENT_NAME",
                                                      "value": "cia-agent"}]},
                           {"name": "db"}]}

    def read(*containers):
        return pod_info({"metadata": {"name": "cia-agent"}, "spec": spec,
                         "status": {"phase": "Running", "containerStatuses": list(containers)}})

    ended = read(terminated("build", "OOMKilled", 137), running("db"))
    assert ended.agent_container == "build" and ended.agent_ended
    assert not read(running("build"), terminated("db", "OOMKilled", 137)).agent_ended
    assert not read(running("build"), running("db")).agent_ended
    assert not pod("Running", containers=[terminated("jnlp", "Error", 1)]).agent_ended  # untold
