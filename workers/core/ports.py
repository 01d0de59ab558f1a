"""The two seams of the engine: a cluster that runs agent pods and a Jenkins that runs builds.

Each has a real adapter (``workers.adapters.kube``, ``workers.adapters.jenkins``) and a
simulated one (``workers.sim``). Tasks only ever talk to these protocols.
"""

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from workers.core.cluster import NodeState

if TYPE_CHECKING:  # jenkins_jobs reads routing, which reads the queue items defined here
    from workers.core.jenkins_jobs import JobDefinition


class PodPhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


class ContainerPhase(StrEnum):
    """Which one of a container status's `state` fields the kubelet set."""

    WAITING = "waiting"
    RUNNING = "running"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class ContainerState:
    """One entry of a pod's status.containerStatuses or initContainerStatuses, as the kubelet
    wrote it: e.g. waiting with reason ImagePullBackOff, or terminated with reason OOMKilled
    and exit code 137 (see workers.core.start_failures)."""

    name: str
    phase: ContainerPhase
    init: bool = False  # an init container
    reason: str = ""  # waiting.reason or terminated.reason
    message: str = ""  # the kubelet's message (names an image or a Secret; never a value)
    exit_code: int | None = None  # terminated only
    started_at: float | None = None  # running.startedAt
    # An init container with restartPolicy Always (a sidecar, Kubernetes 1.29+ by default):
    # the kubelet restarts it whatever the pod's restartPolicy, and stops it (SIGTERM, often
    # exit 143; 137 past the grace period) once the pod's containers are done or the pod is
    # killed; its exits do not end the pod (kubelet_pods.go getPhase leaves it out).
    sidecar: bool = False


@dataclass(frozen=True)
class PodInfo:
    name: str
    phase: str
    node: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # metadata.annotations
    # Since when the scheduler has found no node for it (PodScheduled False, Unschedulable).
    unschedulable_since: float | None = None
    # kube-scheduler's message on that condition ("0/5 nodes are available: ...").
    scheduling_message: str = ""
    deleting: bool = False  # a deletion is under way (deletionTimestamp is set)
    # metadata.deletionTimestamp: the API server sets it to the time of the DELETE plus its
    # grace period, by when the kubelet should have stopped the pod (apiserver
    # pkg/registry/rest/delete.go BeforeDelete); None when not deleting or not told.
    deletion_due: float | None = None
    created_at: float | None = None  # metadata.creationTimestamp, when the server sets it
    # status.startTime: when the node's kubelet took the pod, before it pulls any image
    # (pkg/kubelet/status/status_manager.go); None before, or when not told.
    start_time: float | None = None
    # spec.activeDeadlineSeconds: the deadline the pod was made with (its template's then, or
    # a warm pod's longer one); None when not told.
    active_deadline_seconds: int | None = None
    reason: str = ""  # status.reason, e.g. Evicted (with phase Failed)
    message: str = ""  # status.message
    # The reason of a DisruptionTarget condition that is True (Kubernetes 1.26 and later):
    # TerminationByKubelet, PreemptionByScheduler, EvictionByEvictionAPI,
    # DeletionByTaintManager, DeletionByPodGC; "" when the pod has none.
    disruption: str = ""
    # That condition's message, e.g. "PodGC: node no longer exists" (the pod GC writes no
    # status.message: kubernetes pkg/controller/podgc/gc_controller.go gcOrphaned).
    disruption_message: str = ""
    containers: tuple[ContainerState, ...] = ()  # init containers first, then the others
    # The container that runs the Jenkins agent (the one given JENKINS_AGENT_NAME); "" when
    # not told.
    agent_container: str = ""

    @property
    def agent_ended(self) -> bool:
        """Whether the container that runs the agent has terminated: with restartPolicy Never
        it never runs again, though a service container keeps the pod Running (a pod is
        Failed or Succeeded only once all of them have: kubelet_pods.go getPhase)."""
        return any(not c.init and c.name == self.agent_container
                   and c.phase == ContainerPhase.TERMINATED for c in self.containers)

    @property
    def disruption_text(self) -> str:
        """Who took the pod away and why, in the words of its DisruptionTarget condition
        ("DeletionByPodGC: PodGC: node no longer exists"); "" without one."""
        if not self.disruption:
            return ""
        return self.disruption + (f": {self.disruption_message}"
                                  if self.disruption_message else "")

    @property
    def running_since(self) -> float | None:
        """When the pod's last container started running, once all of them run (None before,
        or when the kubelet's startedAt is unknown)."""
        main = [c for c in self.containers if not c.init]
        if self.phase != PodPhase.RUNNING or not main \
                or any(c.phase != ContainerPhase.RUNNING for c in main):
            return None
        starts = [c.started_at for c in main]
        return None if None in starts else max(starts)  # type: ignore[type-var]


class BuildState(StrEnum):
    """Where Jenkins has a build that was put in its queue (by queue item id)."""

    QUEUED = "queued"  # still in the queue
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"  # left the queue without running
    UNKNOWN = "unknown"  # Jenkins no longer knows the queue item (it forgets them after ~5 min)


@dataclass(frozen=True)
class QueueItem:
    """An item in the Jenkins build queue; `why` is Jenkins' own text, e.g. "There are no
    nodes with the label ‘maven’" (see workers.core.jenkins_queue)."""

    id: int
    job: str
    why: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    blocked: bool = False  # a BlockedItem: Jenkins holds it back (`why` says what)
    # A Pipeline node block's item: the run it is part of (its task, ExecutorStepExecution.
    # PlaceholderTask, has the run's URL: getUrl); None for a job's own item
    run: "RunRef | None" = None
    # Its CauseAction's causes: (class, userId) each, userId "" for a cause that names no user
    # (hudson.model.Cause$UserIdCause names the user whose request queued it)
    causes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, eq=False)
class RunRef:
    """One run of a Jenkins job: the job's full name ("folder/name") and the run's number.
    Equal to a run of the job named in any case, as Jenkins finds items (Jenkins.items,
    cloudbees-folder's AbstractFolder.items: CopyOnWriteMap.Tree(String.CASE_INSENSITIVE_
    ORDER)): a route naming "Build" triggers Jenkins' "build", whose runs, node blocks and
    queue items name it so."""

    job: str
    number: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunRef):
            return NotImplemented
        return self.number == other.number and self.job.lower() == other.job.lower()

    def __hash__(self) -> int:
        return hash((self.job.lower(), self.number))


@dataclass(frozen=True)
class RunInfo:
    """What Jenkins' API says of one run (job/NAME/N/api/json): whether it has finished (not
    building, a result set), its parameters, and its `result` (Run.getResult: SUCCESS,
    UNSTABLE, FAILURE, NOT_BUILT, ABORTED; None while it builds)."""

    finished: bool
    parameters: dict[str, str] = field(default_factory=dict)
    result: str | None = None
    # The node it ran on (AbstractBuild.getBuiltOnStr, exported as builtOn: a freestyle
    # run's; "" the built-in node). None: the run exports none (a Pipeline's WorkflowRun is
    # no AbstractBuild; its node blocks each take a node of their own).
    built_on: str | None = None
    queue_id: int | None = None  # the queue item it left the queue as (Run.getQueueId)
    # Its page, as Jenkins names it (Run.getAbsoluteUrl, exported as `url`: under Jenkins'
    # configured root URL). None: not given, or not an http(s) URL.
    url: str | None = None
    causes: tuple[tuple[str, str], ...] = ()  # as QueueItem's: its item's CauseAction


@dataclass(frozen=True)
class AgentActivity:
    """What a Jenkins agent is doing (computer/NAME/api/json): `offline` (not connected, or
    temporarily offline), `temporarily_offline` (it takes no new work; what runs goes on), and
    the runs its executors run now (a Pipeline's node block counts as its run);
    `offline_reason`, the message its temporary offline was given (offlineCauseReason);
    `channel_lost_at`, when its agent's connection closed under it (Unix time): a process
    opened its channel, maybe dying in the handshake before the computer came online
    (SlaveComputer.setChannel), and it is offline since (None if none did since its computer
    was made, it is connected now, or it is temporarily offline: that cause is shown).
    `hidden_runs`: how many of its executors run something Jenkins does not name to us, a
    run of a job the API user may not READ (Executor.getCurrentExecutableForApi answers null
    for it, Executor.isIdle is false all the same): work on the agent all the same."""

    offline: bool
    temporarily_offline: bool
    runs: tuple[RunRef, ...] = ()
    # Of `runs`, the Pipeline runs whose node block holds an executor (its currentExecutable
    # an ExecutorStepExecution.PlaceholderTask.PlaceholderExecutable): what Jenkins' node
    # removal ends (RemovedNodeListener; workers.engine.lost_runs)
    blocks: tuple[RunRef, ...] = ()
    offline_reason: str = ""
    channel_lost_at: float | None = None
    hidden_runs: int = 0


class Cluster(Protocol):
    def create_pod(self, manifest: dict[str, Any],
                   secret: dict[str, Any] | None = None) -> bool:
        """Create the pod (after `secret`, the agent's Secret it reads, when given); True if
        created, False if our own pod of that name already exists. Raises PermanentError if a
        pod of that name exists and is not ours."""
        ...

    def container_bounds(self) -> tuple[dict[str, str], dict[str, str]]:
        """The agent namespace's per-container max and min per resource (its LimitRanges'
        Container items, Kubernetes quantities; none known: empty), which a build's size is
        kept within (core.limit_range_sizing)."""
        ...

    def default_requests(self) -> dict[str, str]:
        """The request per resource the agent namespace's LimitRanges give a container asking
        none (core.limit_ranges.default_requests; none known: empty)."""
        ...

    def runtime_class(self, name: str) -> dict[str, Any] | None:
        """The RuntimeClass `name` as the API server holds it (node.k8s.io/v1; cached), or
        None when it is not there or cannot be read (core.runtime_class)."""
        ...

    def pod_bounds(self) -> tuple[dict[str, str], dict[str, str]]:
        """The agent namespace's per-pod max and min per resource (its LimitRanges' Pod
        items; none known: empty), which a build's pod's sum is kept within
        (core.limit_range_sizing.within_pod)."""
        ...

    def delete_agent_secret(self, name: str) -> bool:
        """Delete the Secret of the agent pod `name` (core.pods.agent_secret_name) if it is
        ours; delete_pod does it too. True if deleted."""
        ...

    def get_pod(self, name: str) -> PodInfo | None:
        """Our pod of that name, or None if there is none (or it is not ours)."""
        ...

    def delete_pod(self, name: str) -> bool:
        """Delete our pod; True if deleted, False if it was already gone. Never deletes a pod
        without our managed-by label."""
        ...

    def force_delete_pod(self, name: str) -> bool:
        """Delete our pod that is being deleted already at once, without its kubelet's word
        (gracePeriodSeconds=0; workers.core.terminating). True if deleted; False if there is no
        pod of ours by that name or it is not being deleted."""
        ...

    def patch_pod_metadata(self, name: str, *, labels: dict[str, str],
                           annotations: dict[str, str]) -> bool:
        """Set these labels and annotations on our pod in one patch (the others kept). False
        if there is no pod of that name."""
        ...

    def list_pods(self) -> list[PodInfo]:
        """Our pods in the agent namespace, filtered by label in code."""
        ...


class ClusterView(Protocol):
    """What decisions read: every node with its requests and usage, from a cache kept
    current by watches (never a full list per decision)."""

    metrics_available: bool

    def snapshot(self, *, exclude_build_keys: Collection[str] | Mapping[str, str] = frozenset()
                 ) -> list[NodeState]:
        """Nodes sorted by name; pods carrying one of these build keys are not counted in
        `requested` (the caller counts them as in-flight reservations). A mapping of build
        key -> node leaves a pod out only on that node, the one its reservation counts it
        on: one bound to another node is counted there."""
        ...

    def deleting(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods of the namespace, those being deleted (deletionTimestamp set)."""
        ...

    def gone(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods of the namespace, those gone (deleted) or ended (Succeeded, Failed:
        evicted); none before the pods are listed."""
        ...

    def agent_ended(self, namespace: str, names: Collection[str]) -> frozenset[str]:
        """Of these pods of the namespace, those whose agent container has ended though the
        pod runs on (PodInfo.agent_ended: a service container keeps it Running)."""
        ...


class Jenkins(Protocol):
    def ensure_node(self, name: str, *, label: str, remote_fs: str) -> bool:
        """Register a permanent inbound (JNLP) agent with 1 executor used exclusively for its
        label; True if created, False if it already existed (and is reused)."""
        ...

    def agent_secret(self, name: str) -> str:
        """The secret the inbound agent connects with."""
        ...

    def trigger_build(self, job: str, parameters: dict[str, str],
                      find_by: tuple[str, str] | None = None, agent: str | None = None) -> int:
        """Start the job with these parameters; returns the queue item id. With `find_by`
        (a parameter and this build's value of it), a retry after a failed attempt returns
        the build Jenkins took on that attempt, queued or started, rather than start another;
        `agent` as for find_queue_item."""
        ...

    def delete_node(self, name: str) -> bool:
        """Delete the agent; True if deleted, False if it was already gone."""
        ...

    def list_agents(self) -> list[str]:
        """The names of the agents this installation registered (by their description)."""
        ...

    def legacy_agents(self) -> list[str]:
        """The agents with the description of versions before installation identities, when
        this installation has one (else none): its own from before its upgrade among them."""
        ...

    def queue_items(self) -> list[QueueItem]:
        """The items in the build queue."""
        ...

    def jenkins_nodes(self) -> list[str]:
        """The names of all of Jenkins' nodes but the built-in one: agents (ours or not)
        and the label probe (workers.core.label_probe)."""
        ...

    def ensure_label_probe(self) -> bool:
        """Register this installation's label probe; True if made, False if a node of its
        name was there."""
        ...

    def delete_label_probe(self) -> bool:
        """Delete this installation's label probe; True if deleted, False if it was not
        there (or a node of its name is not the probe)."""
        ...

    def session(self, max_age: float = 0.0) -> str:
        """Jenkins' session: a value that changes on every start of the controller (its
        X-Jenkins-Session); "" when it cannot be told. With `max_age`, a value read that many
        seconds ago or less may serve."""
        ...

    def quieting_down(self) -> bool:
        """Whether Jenkins is preparing for shutdown (quiet down): it starts no queued build
        until that is cancelled or it restarts."""
        ...

    def run_info(self, job: str, number: int) -> RunInfo | None:
        """One run of `job`, in one API call; None if Jenkins does not know it."""
        ...

    def build_state(self, job: str, queue_item: int | None,
                    number: int | None = None,
                    since: float | None = None) -> tuple[BuildState, int | None]:
        """What became of the build of `job` queued as this item (or numbered `number`, when
        known: Jenkins forgets queue items minutes after they leave the queue), and its build
        number once it has one. `since`: when the build was first triggered; the item
        forgotten, its run is looked for among every run of the job made since (without it,
        only the recent ones). UNKNOWN with no number when the item left the queue as another
        job's run: `job` was renamed or moved since (queue_item names it now)."""
        ...

    def queue_item(self, queue_item: int) -> QueueItem | None:
        """One queue item by its id, waiting or gone from the queue (Jenkins keeps a left item
        about 5 minutes): its job as Jenkins names it now and its parameters; None if Jenkins
        does not keep it."""
        ...

    def find_queue_item(self, job: str, parameter: str, value: str,
                        queue: list[QueueItem] | None = None,
                        known: int | None = None, since: float | None = None,
                        agent: str | None = None, whole: bool = False) -> int | None:
        """The queue item of a build of `job` (queued, or among its runs) that has this
        parameter value; None if there is none. For triggering a build at most once.
        `since`: when the build was first triggered (Unix time): the runs made since are
        looked at, up to a bound (the adapter's: a thousand); without it, only the recent
        ones. `agent`: the
        build's agent; RetryableError while its executor has taken a build whose run is not
        made yet (in neither list, and a trigger then would start it twice). `whole`:
        NotReadBack rather than None when the runs read do not reach back to `since` (more
        than the lookup reads, or no `since` and more than the recent ones), for a caller
        that takes an absence for proof.
        `queue`: the queue as read a moment ago (queue_items), not read again. `known`: the
        item the build recorded, taken if its own page carries the value (one that has just
        left the queue, its run not made yet, is in neither list)."""
        ...

    def job_definition(self, job: str) -> "JobDefinition | None":
        """What Jenkins says of the job: buildable, the parameters it declares; None when
        there is no job of that name."""
        ...

    def cancel_queue_item(self, queue_item: int) -> None:
        """Cancel the item if it still waits in the queue; one that left it (started, or
        cancelled already) or that Jenkins forgot is no error: read build_state after."""
        ...

    def abort_build(self, job: str, number: int) -> None:
        """Stop the build if it runs (result ABORTED); a finished or unknown one is no
        error."""
        ...

    def online_agents(self) -> set[str]:
        """The names of the agents whose computer is online (their agent process connected),
        in one call."""
        ...

    def agent_activity(self, name: str) -> AgentActivity | None:
        """What the agent does now; None if Jenkins has no such agent."""
        ...

    def agents_activity(self) -> dict[str, AgentActivity]:
        """What every agent does now, by name, in one call (the built-in node's left out)."""
        ...

    def runs_carrying(self, parameter: str, value: str) -> list[RunRef]:
        """The runs in progress on one-off executors (a Pipeline's run, which goes on on the
        controller, outside its node blocks too) whose `parameter` is `value`, of any job:
        found by what they carry, whatever their job is called now."""
        ...

    def one_off_runs(self, parameter: str) -> dict[str, list[RunRef]]:
        """runs_carrying for every value at once (one read of Jenkins for a reconcile pass's
        builds, not one each): the runs in progress on one-off executors by the value of
        their `parameter`."""
        ...

    def disable_agent(self, name: str, reason: str) -> bool:
        """Take the agent temporarily offline with this reason: it takes no new work, and a
        build under way on it goes on. True if it went offline now, False if it was already
        (or there is no such agent)."""
        ...

    def enable_agent(self, name: str) -> bool:
        """Bring back an agent taken temporarily offline: True if it was offline and is not
        now, False if it was not (or there is no such agent)."""
        ...
