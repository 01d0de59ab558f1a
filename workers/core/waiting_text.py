"""Why a build waits, in one line for a person: the status page shows it, and a GitLab commit
status can carry it. Made from what the build's record keeps (its wait reason and the
decision's detail) and the capacity state's nodes_needed."""

from workers.core.placement import WaitReason

_CAPACITY_WORDS = {WaitReason.INSUFFICIENT_CPU: "insufficient cpu",
                   WaitReason.INSUFFICIENT_MEMORY: "insufficient memory",
                   WaitReason.NO_MATCHING_NODE: "no matching node",
                   WaitReason.UNSCHEDULABLE: "kube-scheduler refused it on every node tried"}


def waiting_text(reason: str, detail: str = "", *, nodes_needed: int | None = None) -> str:
    """E.g. "waiting for capacity: insufficient memory, 2 nodes needed", "waiting: cap
    (maxConcurrent 10 of template maven reached)" or "waiting: quota (ResourceQuota compute:
    requests.cpu 8 of 8 used, the pod asks 2)". A cap or quota wait (or a pause: `pods: 0`)
    names no nodes: more nodes would not start it; nor does a lost race for room
    (contention): there was room."""
    if reason in (WaitReason.CAP, WaitReason.QUOTA, WaitReason.PAUSED, WaitReason.CONTENTION):
        return f"waiting: {reason} ({detail})" if detail else f"waiting: {reason}"
    words = _CAPACITY_WORDS.get(reason, reason.replace("_", " ") or "unknown reason")
    text = f"waiting for capacity: {words}"
    if nodes_needed:
        text += f", {nodes_needed} node{'' if nodes_needed == 1 else 's'} needed"
    return text
