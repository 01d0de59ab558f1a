"""Why a build waits, in one line for a person: the status page shows it, and a GitLab commit
status can carry it. Made from what the build's record keeps (its wait reason and the
decision's detail) and the capacity state's nodes_needed."""

from workers.core.cluster import ZERO, Resources
from workers.core.placement import WaitReason, fmt

_CAPACITY_WORDS = {WaitReason.INSUFFICIENT_CPU: "insufficient cpu",
                   WaitReason.INSUFFICIENT_MEMORY: "insufficient memory",
                   WaitReason.NO_MATCHING_NODE: "no matching node",
                   WaitReason.UNSCHEDULABLE: "kube-scheduler refused it on every node tried"}

# What each wait reason means for the build, and what starts it, for a person who does not
# know the reason's name (the status page shows it under the reason). Every reason
# workers.telemetry.metrics.WAIT_REASONS counts has one (tests/integration/test_web_redis_acl.py).
MEANING: dict[str, str] = {
    WaitReason.CAP: "a limit of agents at once (the template's maxConcurrent or maxAgents) "
                    "is reached; it starts when one of those agents ends",
    WaitReason.INSUFFICIENT_CPU: "no node has the CPU it needs free, even at its min size; "
                                 "it starts when builds end or nodes are added",
    WaitReason.INSUFFICIENT_MEMORY: "no node has the memory it needs free, even at its min "
                                    "size; it starts when builds end or nodes are added",
    WaitReason.NO_MATCHING_NODE: "no node matches its template's node selector, affinity or "
                                 "tolerations; a node that matches must be added",
    WaitReason.UNSCHEDULABLE: "kube-scheduler refused its pod on every node offered, every "
                              "try (its message says why); the last pod is left Pending to "
                              "the scheduler, and the build starts when it binds it",
    "insufficient_pods": "every node it may use holds as many pods as it allows "
                         "(allocatable pods); it starts when pods end or nodes are added",
    "insufficient_ephemeral-storage": "no node has the ephemeral-storage it needs free; it "
                                      "starts when pods end or nodes are added",
    "host_ports": "every node it may use has a pod on the host port it asks; it starts when "
                  "that pod ends or nodes are added",
    "pod_anti_affinity": "every node it may use runs a pod its template's required pod "
                         "anti-affinity keeps it away from (one per node); it starts when "
                         "that pod ends or nodes are added",
    WaitReason.QUOTA: "a ResourceQuota of the agents' namespace has no room for its pod; it "
                      "starts when other pods there end (more nodes would not help)",
    WaitReason.PAUSED: "an admin paused CI in the agents' namespace (a ResourceQuota of pods: "
                       "0); it starts when the pause is lifted",
    WaitReason.CONTENTION: "a node had room, but builds placed at the same moment took it "
                           "first; it is placed again on the next re-drive (not a lack of "
                           "nodes)",
}


# The build's record: why its provision's last try could not go on with Jenkins, while it
# waits (workers.engine.tasks), the whole reason after "waiting: ". Jenkins refuses us (a
# refused token, a missing Agent/Create or Agent/Connect, a proxy's sign-in page; its
# Unauthorized's message): an admin must fix it (`refused_reason`). Or Jenkins does not answer
# (no connection or its 503 while it restarts and loads: Unavailable; a read timeout or 429 in
# a busy spell: Overloaded): the build goes on by itself (NOT_ANSWERING). The provision
# retries, and the build stays `queued` (or `pod_created`, its trigger not taken): without it
# the developer's commit status said "queued" and the status page nothing. Cleared when
# Jenkins takes it.
JENKINS_WAIT_FIELD = "jenkins_wait"

NOT_ANSWERING = ("Jenkins is not answering (restarting or overloaded); the build goes on once "
                 "it answers")


def refused_reason(detail: str) -> str:
    """Why a build waits on Jenkins refusing us, for its developer: what Jenkins answered
    (redacted by the caller, core.redaction) says what the admin must fix."""
    return ("Jenkins refuses ci-autoscaler until an admin fixes its setup"
            + (f": {detail}" if detail else ""))


def jenkins_wait_text(reason: str) -> str:
    """The commit status of a build waiting on Jenkins (JENKINS_WAIT_FIELD's reason)."""
    return f"waiting: {reason}"


def meaning(reason: str) -> str:
    """What the wait reason means for a person; "" for a reason without a text. An extended
    resource's (insufficient_nvidia.com/gpu) is told by its name."""
    if reason not in MEANING and reason.startswith("insufficient_"):
        name = reason.removeprefix("insufficient_")
        return (f"no node it may use has the {name} it asks free (a node without it never "
                "takes it); it starts when pods holding it end or nodes with it are added")
    return MEANING.get(reason, "")


def too_big_text(asks: Resources, reference: Resources, daemons: Resources = ZERO) -> str:
    """Why a build that no node of the reference shape can hold waits, for a person;
    `daemons`: what the DaemonSets' pods take on such a node (core.capacity.fresh_room)."""
    beside = f", {fmt(daemons)} of it taken by DaemonSets" if daemons != ZERO else ""
    return (f"bigger than a node of the reference shape (it asks {fmt(asks)} at its min "
            f"size; such a node has {fmt(reference)}{beside}): more such nodes would not "
            "start it")


def lacks_text(reason: str) -> str:
    """Why a build that fits a node of the reference shape by cpu and memory waits when such a
    node has too little of something else for it (core.capacity.fresh_lacks' wait reason:
    its GPUs, its pod slots left by the DaemonSets, its ephemeral-storage), for a person."""
    name = reason.removeprefix("insufficient_")
    return (f"asks more {name} than a node of the reference shape has for builds: more such "
            "nodes would not start it")


def waiting_text(reason: str, detail: str = "", *, nodes_needed: int | None = None,
                 too_big: str = "") -> str:
    """E.g. "waiting for capacity: insufficient memory, 2 nodes needed", "waiting: cap
    (maxConcurrent 10 of template maven reached)" or "waiting: quota (ResourceQuota compute:
    requests.cpu 8 of 8 used, the pod asks 2)". A cap or quota wait (or a pause: `pods: 0`)
    names no nodes: more nodes would not start it; nor does a lost race for room
    (contention): there was room. `too_big` (too_big_text): the capacity state found the
    build bigger than a reference node, which nodes_needed does not count; said instead of
    the nodes needed (for other builds), which would not start it."""
    if reason in (WaitReason.CAP, WaitReason.QUOTA, WaitReason.PAUSED, WaitReason.CONTENTION):
        return f"waiting: {reason} ({detail})" if detail else f"waiting: {reason}"
    if too_big:
        return f"waiting for capacity: {too_big}"
    words = _CAPACITY_WORDS.get(reason, reason.replace("_", " ") or "unknown reason")
    text = f"waiting for capacity: {words}"
    if nodes_needed:
        text += f", {nodes_needed} node{'' if nodes_needed == 1 else 's'} needed"
    return text
