"""From the build's size to the pod's total, and back: placement fits the whole pod.

The build's size (the template's cpu and memory, chosen by sizing) goes to the build
container. With agent injection that container also runs the Jenkins agent, so it gets
agentCpu/agentMemory on top; without it, each container marked `build` gets the size (or
`jnlp` when none is), and `jnlp` gets the agent's requests when it is not the build's.
Service containers add their fixed requests. The init container that copies the agent asks
for no more than the agent's requests, so it never raises the pod's effective request.
Sizing and placement work on the pod's total through `placement_template`; `build_size`
turns the decided total back into the size each build container gets. A job's history is of
the whole pod too (metrics-server's sum over its containers: the agent's JVM and services
included), so its recommendation is the pod's total (`history_share`). Pure arithmetic."""

from dataclasses import replace

from workers.core.cluster import Resources
from workers.core.models import WORKSPACE_VOLUME, CpuRange, MemoryRange, PodTemplate
from workers.core.quantity import cpu_millis, memory_bytes
from workers.core.recommend import Recommendation, recommend
from workers.core.templates import merge
from workers.core.usage_history import UsageHistory


def requests_of(container: dict) -> Resources:
    """A container's requests as written in a pod spec (a limit alone is its request, as the
    API server defaults it); an unreadable quantity counts 0 (config load refuses it:
    workers.config.pod_schema)."""
    resources = container.get("resources") or {}
    asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    try:
        return Resources(cpu_millis(asked.get("cpu", 0)), memory_bytes(asked.get("memory", 0)))
    except (ValueError, TypeError):
        return Resources(0, 0)


def patch_init_containers(template: PodTemplate) -> list[tuple[int, dict, bool]]:
    """The init containers of the podSpecPatch: (index, container, is a native sidecar, one
    with restartPolicy Always, which runs beside the containers)."""
    items = template.pod_spec_patch.get("initContainers") or []
    return [(i, c, c.get("restartPolicy") == "Always") for i, c in enumerate(items)
            if isinstance(c, dict)]


def sidecars(template: PodTemplate) -> list[Resources]:
    """The requests of the podSpecPatch's native sidecars: kube-scheduler adds them to the
    containers' sum (k8s.io/component-helpers/resource PodRequests, Kubernetes 1.28+), so
    placement does too. Left out, a sidecar asking 1 core put the pod on a node placement
    had fitted it to without that core: Unschedulable, or a node over its target."""
    return [requests_of(c) for _, c, sidecar in patch_init_containers(template) if sidecar]


def init_requests(template: PodTemplate) -> list[tuple[Resources, bool]]:
    """The podSpecPatch's init containers in order: (requests, is a native sidecar). A pod
    standing in for the build's (a scale-up pod) has them too, so that kube-scheduler and a
    node autoscaler count it as the build's pod is counted (init_floor)."""
    return [(requests_of(c), sidecar) for _, c, sidecar in patch_init_containers(template)]


def init_floor(template: PodTemplate) -> Resources:
    """The least the pod is counted at by kube-scheduler, whatever its containers ask: per
    resource, the most an init container of the podSpecPatch asks with the sidecars started
    before it (k8s.io/component-helpers/resource PodRequests takes the max of that and the
    containers' sum with the sidecars). A setup step asking 2Gi beside a build of 512Mi
    holds 2Gi of its node for the pod's life; placement fits the pod's total at least that.
    The RuntimeClass's overhead is added after the max (PodRequests; Kubernetes docs, "Pod
    Overhead"), so it is on the floor too: left off, a Kata pod whose setup step was its
    largest part was fitted short of the overhead, and Unschedulable on the node chosen."""
    floor, before = Resources(0, 0), Resources(0, 0)
    for _, container, sidecar in patch_init_containers(template):
        asked = requests_of(container)
        if sidecar:
            before = before + asked
        else:
            floor = floor.clamp_min(before + asked)
    return floor + Resources(*template.overhead) if floor != Resources(0, 0) else floor


def memory_volumes(template: PodTemplate) -> int:
    """The sizeLimits of the pod's memory-backed emptyDirs (the workspace, the template's
    volumes and the podSpecPatch's, merged by name as the pod has them). A tmpfs's pages are
    charged to the memory cgroup of the container that writes them (Kubernetes docs,
    "Volumes", emptyDir: "files you write count against your container's memory limit"), and
    kube-scheduler counts no sizeLimit: the build container gets them on top of its size, so
    a build filling its /tmp on tmpfs is not OOM-killed within what its processes were
    sized. One without a sizeLimit (or an unreadable one) adds nothing."""
    ours = [{"name": WORKSPACE_VOLUME, **template.workspace_source}] + [
        {"name": v.name, **v.source} for v in template.volumes]
    patched = template.pod_spec_patch.get("volumes")  # not a list: config load refuses it
    volumes = merge({"volumes": ours},
                    {"volumes": patched if isinstance(patched, list) else []})["volumes"]
    total = 0
    for volume in volumes:
        empty_dir = volume.get("emptyDir") if isinstance(volume, dict) else None
        if isinstance(empty_dir, dict) and empty_dir.get("medium") == "Memory":
            try:
                total += memory_bytes(empty_dir.get("sizeLimit") or 0)
            except (ValueError, TypeError):
                pass
    return total


def fixed(template: PodTemplate) -> Resources:
    """What the pod requests beside the build's size: its other containers, its sidecars,
    and its RuntimeClass's overhead, which kube-scheduler adds to the containers' (PodRequests;
    core.runtime_class; none until workers.engine.namespace_sizes has applied the class, after
    the LimitRanges, which sum the containers without it)."""
    extra = [Resources(c.cpu, c.memory) for c in template.containers if not c.build]
    extra += sidecars(template)
    extra.append(Resources(*template.overhead))
    extra.append(Resources(0, memory_volumes(template)))
    if template.agent_injection or template.build_containers:
        extra.append(Resources(template.agent_cpu, template.agent_memory))
    return Resources.total(extra)


def container_requests(template: PodTemplate, size: Resources, *,
                       with_sidecars: bool = True) -> list[Resources]:
    """Each container's requests in the pod whose build containers get `size` (core.pods'
    split, the agent's init container left out as it never raises the total): with the
    native sidecars, their sum is pod_total. A pod standing in for the build's (a scale-up
    pod) asks as much container by container, so that a LimitRange's per-container max or
    default treats both alike (`with_sidecars=False`: it has them as init containers, in
    init_requests)."""
    services = [Resources(c.cpu, c.memory) for c in template.containers if not c.build]
    if with_sidecars:
        services += sidecars(template)
    agent = Resources(template.agent_cpu, template.agent_memory)
    first = size + Resources(0, memory_volumes(template))  # the (first) build container
    if template.agent_injection:  # one build container (models), running the agent too
        return [Resources.total([first, agent])] + services
    if template.build_containers:  # each marked one sized, jnlp at the agent's requests
        return [agent, first] + [size] * (len(template.build_containers) - 1) + services
    return [first] + services  # jnlp is the build's


def _shares(template: PodTemplate) -> int:
    return max(1, len(template.build_containers))


def pod_total(template: PodTemplate, size: Resources) -> Resources:
    """The pod's requests when the build's containers get `size` each."""
    n, extra = _shares(template), fixed(template)
    return Resources(size.cpu_millis * n + extra.cpu_millis,
                     size.memory_bytes * n + extra.memory_bytes)


def build_size(template: PodTemplate, total: Resources) -> Resources:
    """The size of each build container for a pod total (the inverse of pod_total, rounded
    down, kept within the template's min and max)."""
    n, extra = _shares(template), fixed(template)
    cpu = (total.cpu_millis - extra.cpu_millis) // n
    memory = (total.memory_bytes - extra.memory_bytes) // n
    return Resources(max(template.cpu.min, min(template.cpu.max, cpu)),
                     max(template.memory.min, min(template.memory.max, memory)))


def placement_template(template: PodTemplate) -> PodTemplate:
    """The template with its ranges as pod totals: what sizing scales and placement fits,
    none below the podSpecPatch's init containers' floor (init_floor), which kube-scheduler
    counts the pod at: a build placed at less went where its setup step had no room
    (Unschedulable); given the floor, its build containers get the rest of what the pod
    holds anyway (build_size, up to the template's max). A template whose pod is the build's
    size alone is returned as it is."""
    floor = init_floor(template)
    if _shares(template) == 1 and fixed(template) == Resources(0, 0) and floor.fits_in(
            Resources(template.cpu.min, template.memory.min)):
        return template
    low, mid, high = (pod_total(template, Resources(c, m)).clamp_min(floor) for c, m in (
        (template.cpu.min, template.memory.min), (template.cpu.default, template.memory.default),
        (template.cpu.max, template.memory.max)))
    return template.model_copy(update={
        "cpu": CpuRange.model_construct(min=low.cpu_millis, default=mid.cpu_millis,
                                        max=high.cpu_millis),
        "memory": MemoryRange.model_construct(min=low.memory_bytes, default=mid.memory_bytes,
                                              max=high.memory_bytes)})


def pod_recommendation(template: PodTemplate, history: UsageHistory, *, min_builds: int,
                       memory_margin: float) -> Recommendation:
    """What a job's pods should ask in total (core.recommend on the template's pod totals):
    its history's peaks and CPU use are the pod's, and so is an OOM kill's floor
    (workers.job_history.learn)."""
    return recommend(placement_template(template), pod_history(template, history),
                     min_builds=min_builds, memory_margin=memory_margin)


def pod_history(template: PodTemplate, history: UsageHistory) -> UsageHistory:
    """The history with its OOM floor as the pod's total: a floor a release before stored as
    the killed build's size doubled (UsageHistory.build_floor_bytes) becomes what the pod asks
    when its build gets that much. Read as a pod total as it was, it held the agent's and the
    services' requests, so a template with a service as big as its build, or with several
    build containers, gave the next build (and the killed build's retry) less memory than it
    had been killed at."""
    if not history.build_floor_bytes:
        return history
    floor = max(history.oom_floor_bytes, pod_memory(template, history.build_floor_bytes))
    return replace(history, oom_floor_bytes=floor, build_floor_bytes=0)


def history_share(template: PodTemplate, pod: Recommendation) -> Recommendation:
    """The build's size from a recommendation for the whole pod (pod_recommendation): what
    the pod asks then is the p95 x margin of its own peaks. Taken as the build's size, the pod
    asked the agent's and the services' requests on top of a peak that holds them already
    (256Mi more than the job was ever seen to use, with the default agentMemory). The build's
    share is the rest, kept within min..max."""
    size = build_size(template, Resources(pod.cpu_millis, pod.memory_bytes))
    return replace(pod, cpu_millis=size.cpu_millis, memory_bytes=size.memory_bytes)


def pod_memory(template: PodTemplate, build_memory_bytes: int) -> int:
    """The pod's memory requests when its build containers get `build_memory_bytes` each."""
    return pod_total(template, Resources(0, build_memory_bytes)).memory_bytes


def limit_build_memory(template: PodTemplate, limit_bytes: int) -> int:
    """The build's size from its (first) build container's memory limit (container_requests:
    memory limit = request): less the memory-backed volumes it gets on top, and the agent's
    share when the agent is injected into it. Taken as the build's size, pod_memory counted
    those a second time."""
    share = memory_volumes(template) + (template.agent_memory if template.agent_injection else 0)
    return limit_bytes - share if limit_bytes > share else limit_bytes


def build_memory(template: PodTemplate, pod_memory_bytes: int) -> int:
    """The memory of each build container for a pod total (build_size's, for memory)."""
    cpu = pod_total(template, Resources(template.cpu.default, 0)).cpu_millis
    return build_size(template, Resources(cpu, pod_memory_bytes)).memory_bytes
