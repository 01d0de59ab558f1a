"""The values the core works on: pod templates, routes, and the build request they produce.

Config models use camelCase aliases, as in Kubernetes manifests and Helm values, and refuse
unknown fields so a typo in the YAML file is named instead of silently ignored.
"""

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from workers.core.containers import DEFAULT_FIXED_CPU_MILLIS, DEFAULT_FIXED_MEMORY_BYTES
from workers.core.containers import AGENT_VOLUME, Container, env_names, positive_bytes
from workers.core.containers import positive_millis
from workers.core.node_affinity import problem as node_affinity_problem, required_terms
from workers.core.fit import STANDARD_RESOURCES
from workers.core.quantity import cpu_millis, memory_bytes
from workers.core.templates import merge
from workers.core.volumes import ACCESS_MODE_KEY, AccessMode, Volume, check_source
from workers.core.validation import job_name_problem, project_glob_problem, ref_glob_problem

# The operators of Jenkins' label expressions (hudson.model.labels.LabelExpression: &&, ||, !,
# ->, <->, parentheses, quotes): a template's label naming one is an expression, never the
# one label a queue item's reason names.
LABEL_OPERATORS = frozenset('&|!()<>"')

# The Jenkins inbound agent image, pinned (images/agent-maven builds on the same tag): the
# default `image`, and the image the agent is copied from (`agentImage`).
DEFAULT_AGENT_IMAGE = "jenkins/inbound-agent:3355.v388858a_47b_33-3-jdk21"
# The uid, gid and fsGroup pods run as unless a template says otherwise: the jenkins user of
# the inbound agent image (and of images/agent-maven).
DEFAULT_RUN_AS_ID = 1000
DEFAULT_AGENT_WORKDIR = "/home/jenkins/agent"
DEFAULT_ACTIVE_DEADLINE_SECONDS = 3600
DEFAULT_POD_RETENTION_SECONDS = 3600
DEFAULT_AGENT_CONNECT_TIMEOUT_SECONDS = 300
# The well-known node label of the OS (k8s.io/api/core/v1 LabelOSStable).
OS_LABEL = "kubernetes.io/os"


class _Model(BaseModel):
    # allow_inf_nan: YAML's .inf and .nan are floats; cpuLimitFactor: .inf was a traceback
    # (OverflowError) of check-config and of every process loading the file
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True, allow_inf_nan=False)


class CpuRange(_Model):
    """CPU for one agent, in millicores; written in the file as Kubernetes quantities."""

    min: int = Field(default=500)
    default: int = Field(default=1000)
    max: int = Field(default=2000)

    @field_validator("min", "default", "max", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> int:
        millis = cpu_millis(value)
        if millis <= 0:
            raise ValueError("must be more than 0")
        return millis

    @model_validator(mode="after")
    def _ordered(self) -> "CpuRange":
        if not self.min <= self.default <= self.max:
            raise ValueError("needs min <= default <= max")
        return self


class MemoryRange(_Model):
    """Memory for one agent, in bytes; written in the file as Kubernetes quantities."""

    min: int = Field(default=512 * 2**20)
    default: int = Field(default=2**30)
    max: int = Field(default=4 * 2**30)

    @field_validator("min", "default", "max", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> int:
        nbytes = memory_bytes(value)
        if nbytes <= 0:
            raise ValueError("must be more than 0")
        return nbytes

    @model_validator(mode="after")
    def _ordered(self) -> "MemoryRange":
        if not self.min <= self.default <= self.max:
            raise ValueError("needs min <= default <= max")
        return self


class Toleration(_Model):
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None

    # An empty operator is Equal and an empty effect matches every effect, as the API server
    # reads them (kubernetes pkg/apis/core/validation validateTolerations: `case
    # core.TolerationOpEqual, "":`; "empty toleration effect means match all taint effects"):
    # a chart rendering `operator: ""` or `effect: ""` has its pods created, so it loads.
    @field_validator("operator")
    @classmethod
    def _operator(cls, value: str) -> str:
        if value == "":
            return "Equal"
        if value not in ("Equal", "Exists"):
            raise ValueError("must be Equal or Exists")
        return value

    @field_validator("effect")
    @classmethod
    def _effect(cls, value: str | None) -> str | None:
        if value == "":
            return None
        if value not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError("must be NoSchedule, PreferNoSchedule or NoExecute")
        return value

    @model_validator(mode="after")
    def _api_rules(self) -> "Toleration":
        # The API server's validateTolerations (kubernetes pkg/apis/core/validation): it
        # refuses the pod (422) at creation, every build of the template failing so.
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if not self.key and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is empty (it then matches "
                             "every taint)")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


WORKSPACE_VOLUME = "workspace"
DEFAULT_WARM_IDLE_SECONDS = 600


class WarmPool(_Model):
    """Agents of the template kept connected and idle, at its default CPU and the most memory a
    recent build wanted (workers.warm): between `min` and `max`, sized from demand
    (workers.core.warm_pool); back to `min` after `idleSeconds` without a build."""

    min: int = Field(default=0, ge=0)
    max: int = Field(default=0, ge=0)
    idle_seconds: int = Field(default=DEFAULT_WARM_IDLE_SECONDS, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "WarmPool":
        if self.min > self.max:
            raise ValueError("needs 0 <= min <= max")
        return self


class PodTemplate(_Model):
    """How an agent pod looks; sizes are ranges that the sizing policy picks from.

    With `agentInjection` (the default) an init container copies the Jenkins agent from
    `agentImage`, and the build container (the one marked `build`, or `jnlp` running `image`)
    runs it: `cpu` and `memory` size the build, and `agentCpu`/`agentMemory` are added to that
    container for the agent's own JVM. Without it, `jnlp` runs `image` (which carries its own
    agent) and is the build's unless containers are marked `build`, which then each get the
    size while `jnlp` gets the fixed agent requests. Every container mounts the workspace
    volume at `workdir`; the pod runs as `runAsUser`/`runAsGroup`/`fsGroup`, hardened."""

    image: str = DEFAULT_AGENT_IMAGE
    cpu: CpuRange = CpuRange()
    memory: MemoryRange = MemoryRange()
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()
    volumes: tuple[Volume, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    env: dict[str, str] = {}
    active_deadline_seconds: int = Field(default=DEFAULT_ACTIVE_DEADLINE_SECONDS, gt=0)
    # A Running pod whose agent is not online in Jenkins this long after it started is
    # re-placed once on another node, then its build fails (workers.agent_starts.online).
    agent_connect_timeout_seconds: int = Field(default=DEFAULT_AGENT_CONNECT_TIMEOUT_SECONDS,
                                               gt=0)
    # CPU limit = request x this factor; None (the default) sets no CPU limit.
    cpu_limit_factor: float | None = Field(default=None, ge=1)
    websocket: bool = False
    workdir: str = DEFAULT_AGENT_WORKDIR
    # A Jenkins label: a build that Jenkins queued by itself (by hand, on a timer) waiting for
    # an executor on it gets an agent of this template from the reconcile loop. None: only
    # builds that ci-autoscaler triggers get agents. Several labels, space-separated, as the
    # Kubernetes plugin's podTemplate `label` takes them (`labels`).
    label: str | None = None
    containers: tuple[Container, ...] = ()
    # The volume every container mounts at workdir: one Kubernetes volume source (and, for a
    # claim, its accessMode).
    workspace_volume: dict[str, Any] = {"emptyDir": {}}
    agent_cpu: int = DEFAULT_FIXED_CPU_MILLIS
    agent_memory: int = DEFAULT_FIXED_MEMORY_BYTES
    # The build container runs the Jenkins agent copied in from agent_image (core.pods);
    # False: the `jnlp` container runs `image`, which carries its own agent.
    agent_injection: bool = True
    agent_image: str = Field(default=DEFAULT_AGENT_IMAGE, min_length=1)
    # A Java runtime (17+) of the build image to run the agent with, instead of the copied one.
    agent_java: str | None = None
    # The pod's securityContext ids; None leaves it to the image's own user.
    run_as_user: int | None = DEFAULT_RUN_AS_ID
    run_as_group: int | None = Field(default=DEFAULT_RUN_AS_ID, ge=0)
    fs_group: int | None = Field(default=DEFAULT_RUN_AS_ID, ge=0)
    # At most this many agents of this template at once (None: no cap); see FileConfig.
    max_concurrent: int | None = Field(default=None, gt=0)
    # Size each build from its job's history (workers.core.recommend); `history: off` opts out.
    history: bool = True
    # An OOM-killed build is started again once, at the bigger size its OOM kill taught.
    retry_on_oom: bool = Field(default=False, alias="retryOnOOM")
    # onFailure: the pod of a failed build is kept this long for debugging (workers.engine.retention).
    pod_retention: Literal["never", "onFailure"] = "never"
    pod_retention_seconds: int = Field(default=DEFAULT_POD_RETENTION_SECONDS, gt=0)
    # Warm agents kept connected and idle for its builds (workers.warm); None: none.
    warm: WarmPool | None = None
    # The template this one was merged onto (see core.templates); resolved at config load.
    inherit: str | None = None
    # A raw PodSpec fragment merged into the generated spec (core.templates.merge).
    pod_spec_patch: dict[str, Any] = {}
    # The build container's ephemeral-storage request (a quantity; None: none asked), which
    # kube-scheduler fits against the node's allocatable ephemeral-storage.
    ephemeral_storage: int | None = None
    # Extended resources for the build container, e.g. {"nvidia.com/gpu": 1}: requested and
    # limited alike; the pod goes only to nodes that have them free (core.fit).
    resources: dict[str, int] = {}

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return env_names(value)

    @field_validator("ephemeral_storage", mode="before")
    @classmethod
    def _ephemeral(cls, value: Any) -> int | None:
        return None if value is None else positive_bytes(value)

    @field_validator("resources", mode="before")
    @classmethod
    def _extended(cls, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            raise ValueError("must be a map of extended resource names to counts, "
                             "e.g. nvidia.com/gpu: 1")
        out = {}
        for name, amount in value.items():
            if name in STANDARD_RESOURCES or "/" not in str(name):
                raise ValueError(f"{name!r}: only extended resources (a domain-prefixed name "
                                 "such as nvidia.com/gpu); cpu, memory and ephemeral-storage "
                                 "have their own fields")
            if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                raise ValueError(f"{name}: must be a whole number above 0 (extended resources "
                                 "cannot be fractions or overcommitted)")
            out[str(name)] = amount
        return out

    @field_validator("agent_cpu", mode="before")
    @classmethod
    def _agent_cpu(cls, value: Any) -> int:
        return positive_millis(value)

    @field_validator("agent_memory", mode="before")
    @classmethod
    def _agent_memory(cls, value: Any) -> int:
        return positive_bytes(value)

    @field_validator("workspace_volume")
    @classmethod
    def _workspace_source(cls, value: dict[str, Any]) -> dict[str, Any]:
        mode = value.get(ACCESS_MODE_KEY)
        if mode is not None:
            mode = AccessMode(mode)  # a ValueError names the modes
        check_source(set(value) - {ACCESS_MODE_KEY}, mode)
        return value

    @field_validator("run_as_user")
    @classmethod
    def _non_root(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0: pods run with runAsNonRoot; to run a "
                             "container as root, relax it in podSpecPatch (see README)")
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        """Jenkins splits a node's labels on whitespace (hudson.model.Label.parse) and names
        one label in a queue item's reason (workers.core.jenkins_queue): "maven jdk17" as one
        label never matched a build waiting on `maven`, and none was ever adopted."""
        if value is None:
            return None
        words = list(dict.fromkeys(value.split()))  # a set, as Label.parse makes it
        for word in words:
            if bad := sorted(set(word) & LABEL_OPERATORS):
                raise ValueError(f"{word!r} is a label expression ({' '.join(bad)}); give the "
                                 "labels the agents carry, separated by spaces")
        # none at all ("" loaded before, and the plugin's podTemplate takes it as no label)
        return " ".join(words) or None

    @field_validator("agent_java")
    @classmethod
    def _agent_java(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be the absolute path of a java executable in the build "
                             "image, e.g. /opt/java/openjdk/bin/java")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> "PodTemplate":
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ValueError("containers: two containers have the same name")
        volumes = [v.name for v in self.volumes]
        if WORKSPACE_VOLUME in volumes or len(set(volumes)) != len(volumes):
            raise ValueError("volumes: names must be unique and not 'workspace' "
                             "(set that one with workspaceVolume)")
        if AGENT_VOLUME in volumes:
            raise ValueError(f"volumes: {AGENT_VOLUME!r} is the volume the Jenkins agent is "
                             "copied into; choose another name")
        if not self.workdir.startswith("/"):
            raise ValueError("workdir must be absolute")
        return self

    @model_validator(mode="after")
    def _one_agent(self) -> "PodTemplate":
        """With injection the agent runs as the command of exactly one container."""
        if not self.agent_injection:
            return self
        os = self.pod_spec_patch.get("os")
        if isinstance(os, dict) and os.get("name") == "windows":
            # The init container copies a Linux Java runtime with `cp` from a Linux image: on a
            # Windows node it never pulls (no matching manifest), and the build never starts.
            raise ValueError("podSpecPatch.os: a Windows pod cannot run the injected agent "
                             "(a Linux Java runtime copied by a Linux init container); set "
                             "agentInjection: false and a Windows agent image as `image`, "
                             "e.g. jenkins/inbound-agent:windowsservercore-ltsc2022")
        if len(self.build_containers) > 1:
            raise ValueError("containers: with agentInjection the Jenkins agent runs in the "
                             "build container, so mark at most one container build: true "
                             "(or set agentInjection: false)")
        for i, c in enumerate(self.containers):
            if c.build and (c.command is not None or c.args is not None):
                raise ValueError(f"containers[{i}].command: the build container runs the "
                                 "Jenkins agent as its command (agentInjection); leave "
                                 "command and args out, or set agentInjection: false")
        return self

    @model_validator(mode="after")
    def _windows_volumes(self) -> "PodTemplate":
        """Kubernetes docs, "Windows Storage": Windows nodes do not support "Memory as the
        storage medium (for example, emptyDir.medium set to Memory)"."""
        pod_os = self.pod_spec_patch.get("os")
        if not (isinstance(pod_os, dict) and pod_os.get("name") == "windows"):
            return self
        patched = self.pod_spec_patch.get("volumes")
        sources = [self.workspace_source] + [v.source for v in self.volumes] + [
            v for v in (patched if isinstance(patched, list) else []) if isinstance(v, dict)]
        if any(isinstance(v.get("emptyDir"), dict) and v["emptyDir"].get("medium") == "Memory"
               for v in sources):
            raise ValueError("podSpecPatch.os: Windows nodes have no memory-backed volumes "
                             "(emptyDir medium: Memory); leave the medium out")
        return self

    @model_validator(mode="before")
    @classmethod
    def _placement_from_patch(cls, data: Any) -> Any:
        """A podSpecPatch's nodeSelector and tolerations are the pod's (core.templates.merge:
        the selector merged key by key over the template's, the tolerations list replacing
        it): taken as the template's own, so that placement, scale-up pods and nodes_needed
        judge nodes by what kube-scheduler will. Read from the patch alone, a selector there
        put the pod's candidates on nodes it did not match, and tolerations there left the
        build waiting (no_matching_node) for tainted nodes its pod tolerated."""
        if not isinstance(data, dict):
            return data
        patch = data.get("podSpecPatch", data.get("pod_spec_patch"))
        if not isinstance(patch, dict):
            return data
        out = dict(data)
        for spec_key, name in (("nodeSelector", "node_selector"), ("tolerations", "tolerations")):
            if spec_key not in patch:
                continue
            own = name if name in out and spec_key not in out else spec_key
            value = patch[spec_key]
            if spec_key == "nodeSelector" and isinstance(value, dict):
                value = merge(out.get(own) or {}, value)
            out[own] = [] if value is None and spec_key == "tolerations" else (
                {} if value is None else value)
        pod_os = patch.get("os")
        if isinstance(pod_os, dict) and pod_os.get("name") == "windows":
            # kube-scheduler does not read spec.os, and a Linux node's kubelet refuses the pod
            # (pkg/kubelet/lifecycle/predicate.go, PodOSNotSupported): Windows nodes only,
            # unless the template names the OS label itself.
            own = "node_selector" if "node_selector" in out and "nodeSelector" not in out \
                else "nodeSelector"
            selector = out.get(own) or {}
            if isinstance(selector, dict) and OS_LABEL not in selector:
                out[own] = {**selector, OS_LABEL: "windows"}
        return out

    @field_validator("pod_spec_patch")
    @classmethod
    def _patch(cls, value: dict[str, Any]) -> dict[str, Any]:
        # nodeName skips kube-scheduler altogether, and the candidates placement chose.
        if value.get("nodeName") is not None:
            raise ValueError("nodeName: placement chooses the node (and kube-scheduler has "
                             "the last word); pin the template's pods to a node with "
                             "nodeSelector: {kubernetes.io/hostname: NAME}")
        # null removes the key (core.templates.merge): `affinity: null` or `nodeAffinity:
        # null` took placement's candidates away (core.pods.candidate_affinity), and the pod
        # went to any node. A nodeAffinity of the patch's own is the template's constraint:
        # placement counts only the nodes it matches (core.node_affinity), and the pod gets
        # its terms with our candidates added to each (core.pods).
        affinity = value.get("affinity", {})
        if affinity is None or isinstance(affinity, dict) \
                and "nodeAffinity" in affinity and affinity["nodeAffinity"] is None:
            raise ValueError("affinity.nodeAffinity: null would remove the candidate nodes "
                             "placement gives the pod (its required node affinity); leave "
                             "it out, or give the template's own terms")
        if isinstance(affinity, dict) and affinity.get("nodeAffinity") is not None:
            if found := node_affinity_problem(affinity["nodeAffinity"]):
                raise ValueError(f"affinity.nodeAffinity.{found}" if not found.startswith(
                    "must") else f"affinity.nodeAffinity: {found}")
        policy = value.get("restartPolicy", "Never")
        # Another type is the schema's to refuse; null is not: it removes the key
        # (core.templates.merge), and the API server defaults a pod's restartPolicy to
        # Always (kubernetes pkg/apis/core/v1/defaults.go SetDefaults_PodSpec).
        if policy is None or isinstance(policy, str) and policy != "Never":
            # The kubelet restarts a failed init container or an agent that exited
            # (CrashLoopBackOff, the pod Pending or Running on): a start failure is then seen
            # as neither (core.start_failures reads terminated states) and the build waits
            # for activeDeadlineSeconds; an agent ending its build would connect again.
            raise ValueError("restartPolicy: an agent pod runs once (Never): a failed init "
                             "container or agent must end the pod, so that its build fails "
                             "at once; leave restartPolicy out of the patch")
        for group in ("containers", "initContainers"):
            items = value.get(group) or []
            if not isinstance(items, list):
                raise ValueError(f"{group} must be a list")
            for i, item in enumerate(items):
                if not isinstance(item, dict) or not item.get("name"):
                    raise ValueError(f"{group}[{i}]: needs a name (items merge by name)")
                if group == "containers" and "resources" in item:
                    raise ValueError(
                        f"{group}[{i}].resources: container resources come from cpu, memory, "
                        "agentCpu, agentMemory and containers[].cpu/memory, so that "
                        "placement counts them; declare the container under containers")
        return value

    # What the agent namespace's LimitRange defaults add to the pod's requests beside the
    # template's own (workers.engine.namespace_sizes; core.fit.needs counts it); not configurable.
    _namespace_requests: tuple[tuple[str, int], ...] = PrivateAttr(default=())
    # The pod overhead (cpu millis, memory bytes) its podSpecPatch's RuntimeClass puts on the
    # pod (core.runtime_class; workers.engine.namespace_sizes); not configurable.
    _overhead: tuple[int, int] = PrivateAttr(default=(0, 0))

    # The labels every pod of it carries whatever the build (core.pods; set at config load):
    # what its pod anti-affinity is judged on (core.fit.needs); not configurable.
    _pod_labels: tuple[tuple[str, str], ...] = PrivateAttr(default=())

    def with_pod_labels(self, labels: dict[str, str]) -> "PodTemplate":
        out = self.model_copy()
        out._pod_labels = tuple(sorted(labels.items()))
        return out

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self._pod_labels)

    @property
    def labels(self) -> tuple[str, ...]:
        """The Jenkins labels whose waiting builds get an agent of this template."""
        return tuple((self.label or "").split())

    @property
    def build_containers(self) -> tuple[Container, ...]:
        return tuple(c for c in self.containers if c.build)

    @property
    def node_affinity(self) -> dict[str, Any]:
        """The nodeAffinity of the template's podSpecPatch ({}: none): its required terms
        constrain the nodes placement counts (`required_node_terms`), and the pod keeps both
        its required and preferred terms beside placement's (core.node_affinity.combined)."""
        affinity = self.pod_spec_patch.get("affinity")
        own = affinity.get("nodeAffinity") if isinstance(affinity, dict) else None
        return own if isinstance(own, dict) else {}

    @property
    def required_node_terms(self) -> tuple[dict[str, Any], ...] | None:
        """The required nodeSelectorTerms of its podSpecPatch (None: any node), which
        placement, the placement index, scale-up pods and nodes_needed hold nodes to, as
        kube-scheduler's NodeAffinity filter does (core.node_affinity.matches)."""
        return required_terms(self.node_affinity)

    @property
    def namespace_requests(self) -> tuple[tuple[str, int], ...]:
        return self._namespace_requests

    @property
    def overhead(self) -> tuple[int, int]:
        """(cpu millis, memory bytes) the RuntimeClass admission adds as spec.overhead."""
        return self._overhead

    def with_overhead(self, overhead: tuple[int, int], **update: Any) -> "PodTemplate":
        """This template with a RuntimeClass's overhead (and its scheduling, `update`:
        node_selector, tolerations) as its pods get them (core.runtime_class)."""
        if overhead == self._overhead and all(getattr(self, k) == v for k, v in update.items()):
            return self
        out = self.model_copy(update=update)
        out._overhead = overhead
        return out

    def with_namespace_requests(self, amounts: tuple[tuple[str, int], ...]) -> "PodTemplate":
        """This template with what its namespace's LimitRange defaults add to its pods'
        requests (core.limit_range_requests)."""
        if amounts == self._namespace_requests:
            return self
        out = self.model_copy()
        out._namespace_requests = amounts
        return out

    @property
    def workspace_source(self) -> dict[str, Any]:
        """The workspace's volume source as a pod has it (without accessMode)."""
        return {k: v for k, v in self.workspace_volume.items() if k != ACCESS_MODE_KEY}

    @property
    def workspace_access_mode(self) -> AccessMode | None:
        mode = self.workspace_volume.get(ACCESS_MODE_KEY)
        return AccessMode(mode) if mode is not None else None


class Route(_Model):
    """GitLab project path glob + ref glob -> Jenkins job, pod template and build parameters.

    Parameter values may use the placeholders of ``routing.PLACEHOLDERS``, e.g. ``{sha}``.
    """

    project: str = "*"
    ref: str = "refs/heads/*"
    job: str = Field(min_length=1)
    template: str = "default"
    parameters: dict[str, str] = {}

    @field_validator("project")
    @classmethod
    def _project_can_match(cls, glob: str) -> str:
        if problem := project_glob_problem(glob):
            raise ValueError(problem)
        return glob

    @field_validator("ref")
    @classmethod
    def _ref_can_match(cls, glob: str) -> str:
        if problem := ref_glob_problem(glob):
            raise ValueError(problem)
        return glob

    @field_validator("job")
    @classmethod
    def _job_can_be_named(cls, job: str) -> str:
        if problem := job_name_problem(job):
            raise ValueError(problem)
        return job


class EventKind(StrEnum):
    PUSH = "push"
    TAG_PUSH = "tag_push"


class Source(StrEnum):
    GITLAB = "gitlab"
    JENKINS = "jenkins"


@dataclass(frozen=True)
class BuildRequest:
    """One build to run on one fresh agent; plain data so it travels through RQ as a dict."""

    build_key: str
    agent_name: str
    source: str
    project: str
    ref: str
    sha: str
    user: str
    job: str
    template: str
    parameters: dict[str, str] = field(default_factory=dict)
    received_at: float = 0.0
    # The Jenkins label of the agent: its own name (the build we trigger asks for it), or the
    # template's label for a build found waiting in the Jenkins queue (nothing to trigger).
    node_label: str = ""
    # A newer release's fields, which this release does not know (a rolling upgrade:
    # workers.engine.task_args): not read here, but written back by `to_dict`, so a record or job
    # this release rewrites (a new agent name, a retried trigger, a re-queued provision)
    # still has them when the newer release's worker reads it.
    newer: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies every value through its recursion, a
        # tenth of a webhook's time (bench/results/ingest.md); every field here is a plain value
        # but the parameters, copied. tests/unit pins this to asdict's answer.
        return {**self.newer, "build_key": self.build_key, "agent_name": self.agent_name,
                "source": self.source, "project": self.project, "ref": self.ref,
                "sha": self.sha, "user": self.user, "job": self.job, "template": self.template,
                "parameters": dict(self.parameters), "received_at": self.received_at,
                "node_label": self.node_label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildRequest":
        """The request a job's `build` or a build record's `request` holds, written by this
        release or another one during a rolling upgrade: a field of a newer release is not
        read (the request as this release knows it) but kept in `newer`, for `to_dict` to
        write back; one an older release had not yet is its default (workers.engine.task_args)."""
        known = {name: value for name, value in data.items() if name in _REQUEST_FIELDS}
        if len(known) < len(data):
            known["newer"] = {name: value for name, value in data.items()
                              if name not in _REQUEST_FIELDS}
        return cls(**known)


# "newer" is not a field a release writes: a newer release's own "newer" stays in `newer`
_REQUEST_FIELDS = frozenset(f.name for f in fields(BuildRequest)) - {"newer"}
