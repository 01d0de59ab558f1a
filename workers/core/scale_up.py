"""Pods that make a cluster autoscaler add nodes for the builds that wait for room. Pure.

Cluster Autoscaler and Karpenter add a node only for a Pending pod that fits on no node
(REALITY.md, "Autoscalers"); a build that waits for capacity here has no pod, so on its own a
cluster with an autoscaler would never grow for it, however long the queue. With scale-up
pods (CI_AUTOSCALER_SCALE_UP_PODS, on by default), each build that waits for room a new
node would give, or for a node its template matches at all (not for a cap, nor while a
node the scheduler would bind it on in vain is there) has one:
pause containers asking what the build's pod's containers ask at its template's minimum size
(one each: a LimitRange's per-container max or default limit then refuses neither or both),
with the template's nodeSelector and tolerations, so the autoscaler picks a node group the build can
use. They carry a managed-by value of their own: nothing that handles agents ever takes one
for an agent (workers.engine.scale_up acts on them alone).

A scale-up pod the scheduler has bound has done its work (a node with room exists now): it
is deleted, and the next re-drive places the build there, by the same placement as any
other. One whose build no longer waits (placed, failed, gone) is deleted too. At most `limit`
exist at once, for the builds that have waited longest.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from workers.core import node_affinity
from workers.core.cluster import NodeState, Resources, TaintEffect
from workers.core.installation_pods import stamp
from workers.core.fit import EPHEMERAL_STORAGE, with_init_containers
from workers.core.keys import build_key as hash_key
from workers.core.models import PodTemplate
from workers.core.tolerations import lasting, tolerates
from workers.core.pods import BUILD_KEY_LABEL, MANAGED_BY_LABEL, container_security_context
from workers.core.quantity import format_memory

SCALE_UP_VALUE = "ci-autoscaler-scale-up"  # their managed-by value: never an agent's
SCALE_UP_SELECTOR = f"{MANAGED_BY_LABEL}={SCALE_UP_VALUE}"
DEFAULT_IMAGE = "registry.k8s.io/pause:3.10"
DEFAULT_LIMIT = 50
# A scale-up pod left behind (its reconcile loop gone) ends by itself after this long.
DEADLINE_SECONDS = 3600
# Not "cia-": every agent's name starts so (keys.agent_name), and a job called "scale-up" must
# never give an agent the name of one of these.
_NAME_PREFIX = "scale-up-"
_KEY_CHARS = 40  # of the build key, in the pod's name (a DNS label: at most 63 characters)
_TAG_CHARS = 6  # of an installation's hash, after it


def is_scale_up(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(MANAGED_BY_LABEL) == SCALE_UP_VALUE


def wants_node(reason: str, in_vain: bool = False) -> bool:
    """Whether a build waiting for this reason would be placed on one more node of its kind:
    room (cpu, memory, pods, ephemeral-storage, an extended resource), a free host port, or
    a node matching its template at all (`no_matching_node`: its node group scaled to zero,
    as GPU pools often are; nodes_needed and the status page ask for one, and only a Pending
    pod makes an autoscaler add it; `unschedulable` in the waiting set, too: refused on its
    candidates, it matches no node left, as when a node autoscaler took its whole group
    away). Not a cap, nor those two while a node the scheduler would bind its pause pod on
    is in the cluster (`in_vain`: binds_pause_pod; the nodes that refused it, just now):
    bound there, deleted and re-driven, the build still matched no node, and its pause pod
    was made and bound again, pass after pass."""
    return reason.startswith("insufficient_") or reason in ("host_ports",
                                                             "pod_anti_affinity") or (
        reason in ("no_matching_node", "unschedulable") and not in_vain)


# The taints the node controllers put on a node that is not Ready (TaintNodesByCondition:
# pkg/controller/nodelifecycle), and the one kube-scheduler's NodeUnschedulable filter reads a
# cordon as (pkg/scheduler/framework/plugins/nodeunschedulable): a pod tolerating them (a
# template's `tolerations: [{operator: Exists}]`) is bound there all the same.
_NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_CORDON_TAINT = "node.kubernetes.io/unschedulable"


def binds_pause_pod(node: NodeState, template: PodTemplate) -> bool:
    """Whether kube-scheduler could bind the template's scale-up pod on this node, as it
    filters it (its nodeSelector, taints, a cordon, its extended resources; room aside):
    what placement.why_not judges for the build, but for what the pause pod lacks, the
    build's left-out nodes, its claims' volume topology, a node a node autoscaler is
    removing, none of which keeps the scheduler from binding it there."""
    if any(node.labels.get(k) != v for k, v in template.node_selector.items()):
        return False
    terms = template.required_node_terms
    if terms is not None and not node_affinity.matches(node, terms):
        return False
    tolerations, no_schedule = lasting(template), TaintEffect.NO_SCHEDULE
    if not node.ready and not tolerates(tolerations, _NOT_READY_TAINT, None, no_schedule):
        return False
    if node.unschedulable and not tolerates(tolerations, _CORDON_TAINT, None, no_schedule):
        return False
    if any(t.effect != TaintEffect.PREFER_NO_SCHEDULE
           and not tolerates(tolerations, t.key, t.value, t.effect) for t in node.taints):
        return False
    have = dict(node.limits.extended)
    return all(have.get(name, 0) > 0 for name in template.resources)


def pod_name(build_key: str, installation: str = "") -> str:
    """scale-up-<build key>; with an installation identity, a tag of it after: two
    installations sharing an agent namespace may wait on the same build key (the same push)."""
    if not installation:
        return _NAME_PREFIX + build_key[:_KEY_CHARS]
    tag = hash_key("scale-up", installation)[:_TAG_CHARS]
    return f"{_NAME_PREFIX}{build_key[:_KEY_CHARS]}-{tag}"


@dataclass(frozen=True)
class Existing:
    name: str
    build_key: str
    bound: bool  # the scheduler placed it: a node with room for the build exists


@dataclass(frozen=True)
class Plan:
    create: tuple[str, ...]  # build keys that get a scale-up pod
    delete: tuple[str, ...]  # pod names: bound, or their build no longer waits (or over limit)
    bound: int  # how many of those deleted were bound (nodes that appeared)


def plan(waiting: Sequence[str], existing: Sequence[Existing], *, limit: int) -> Plan:
    """`waiting`: the build keys that wait for room a node would give, longest waiting first."""
    wanted = list(dict.fromkeys(waiting))[:max(0, limit)]
    keep = set(wanted)
    delete = [e.name for e in existing if e.bound or e.build_key not in keep]
    have = {e.build_key for e in existing if not e.bound and e.build_key in keep}
    # A bound one is not made again at once: the build is placed by the re-drive it brings.
    bound_keys = {e.build_key for e in existing if e.bound}
    create = [k for k in wanted if k not in have and k not in bound_keys]
    return Plan(tuple(create), tuple(delete), sum(1 for e in existing if e.bound))


def manifest(*, build_key: str, template_name: str, template: PodTemplate,
             requests: Sequence[Resources], image: str = DEFAULT_IMAGE,
             installation: str = "", init: Sequence[tuple[Resources, bool]] = ()) -> dict:
    """The scale-up pod of one waiting build: `requests` are its agent pod's containers' at
    the template's minimum size (podsize.container_requests), one pause container each. It
    meets Pod Security `restricted`, mounts no token, and goes at once when deleted. The
    template's ephemeral-storage and extended resources (a GPU) go to the container standing
    in for its build container, as the agent pod has them (core.pods._add_extras): an
    autoscaler adds a node for the pod's requests, and a pause pod without the GPU fitted
    on a node with none (no GPU node was ever added for a build waiting for one).
    `init`: the podSpecPatch's init containers (podsize.init_requests), one pause init
    container each, a native sidecar as one (restartPolicy Always): kube-scheduler and the
    autoscalers count a pod at max(its containers and sidecars, each init container with the
    sidecars before it) (k8s.io/component-helpers/resource PodRequests). Left out, a setup
    step asking more than the pod's containers left the pause pod smaller than the build's:
    bound on a node the build does not fit (deleted, the build re-driven in vain, made again,
    pass after pass), and no node that would take it was ever added. (A pause init container
    never ends, so the pod never starts: it is deleted once bound, all it is for.)"""
    def pause(name: str, r: Resources) -> dict:
        return {"name": name, "image": image,
                "resources": {"requests": {"cpu": f"{r.cpu_millis}m",
                                           "memory": str(r.memory_bytes)},
                              "limits": {"memory": str(r.memory_bytes)}},
                "securityContext": container_security_context()}
    spec: dict = {
        "containers": [pause("pause" if not i else f"pause-{i}", r)
                       for i, r in enumerate(requests)],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65535, "runAsGroup": 65535,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "activeDeadlineSeconds": DEADLINE_SECONDS,
        "restartPolicy": "Never",
    }
    if init:
        spec["initContainers"] = [
            dict(pause(f"pause-init-{i}", r), **({"restartPolicy": "Always"} if sidecar else {}))
            for i, (r, sidecar) in enumerate(init)]
    _add_extras(spec["containers"][1 if template.build_containers
                                    and not template.agent_injection else 0], template)
    if (runtime_class := template.pod_spec_patch.get("runtimeClassName")):
        # admitted as the build's pod is: the class's overhead on it (core.runtime_class)
        spec["runtimeClassName"] = runtime_class
    if template.node_selector:
        spec["nodeSelector"] = dict(template.node_selector)
    if template.node_affinity:
        # the template's own (its podSpecPatch's): an autoscaler adds a node its build may use
        spec["affinity"] = {"nodeAffinity": dict(template.node_affinity)}
    if tolerations := lasting(template):
        spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True)
                               for t in tolerations]
    anti = (template.pod_spec_patch.get("affinity") or {}).get("podAntiAffinity")
    if anti:
        # kept off the nodes its build's pod anti-affinity refuses (core.pod_anti_affinity):
        # bound beside a heavy build there, it was deleted in vain and no node was added
        spec.setdefault("affinity", {})["podAntiAffinity"] = anti
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": stamp({"name": pod_name(build_key, installation),
                               "labels": {MANAGED_BY_LABEL: SCALE_UP_VALUE,
                                          BUILD_KEY_LABEL: build_key,
                                          "ci-autoscaler.io/template": template_name}},
                              installation),
            "spec": spec}


def _add_extras(container: dict, template: PodTemplate) -> None:
    """The template's ephemeral-storage and extended resources on this pause container;
    extended resources as limits equal to requests, as the API requires (Kubernetes docs,
    "Manage extended resources for a node": they cannot be overcommitted). Raised to what a
    podSpecPatch's init container asks of them when more (fit.with_init_containers; its
    pause init container asks cpu and memory only): a setup step's 30Gi of
    ephemeral-storage kept the pause pod at the build's 2Gi, bound where the build does not
    fit, and no node with room for it was added."""
    resources = container["resources"]
    asked = with_init_containers(template.pod_spec_patch, {
        EPHEMERAL_STORAGE: template.ephemeral_storage or 0, **template.resources})
    if ephemeral := asked.pop(EPHEMERAL_STORAGE, 0):
        resources["requests"][EPHEMERAL_STORAGE] = format_memory(ephemeral)
    for resource, amount in sorted(asked.items()):
        if amount:
            resources["requests"][resource] = resources["limits"][resource] = str(amount)
