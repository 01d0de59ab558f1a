"""A pod's tolerations against a node's taints, as Kubernetes matches them: whether one
tolerates a taint (k8s.io/api core/v1 Toleration.ToleratesTaint, kube-scheduler's
TaintToleration filter), and how long a tolerated NoExecute taint lets the pod stay.

The taint eviction controller (pkg/controller/tainteviction) takes, per NoExecute taint, the
first toleration in the pod's list that tolerates it (v1helper.GetMatchingTolerations) and
evicts the pod the least of their tolerationSeconds after it sees it on the node, at once for
0 or less (getMinTolerationTime); a toleration without seconds keeps it for good. Kubernetes
docs, "Taints and Tolerations": "pods that tolerate the taint with a specified
tolerationSeconds remain bound for the specified amount of time". kube-scheduler binds the
pod there all the same: any toleration of the taint passes its filter. Pure."""

from collections.abc import Sequence

from workers.core.models import PodTemplate, Toleration


def first_tolerating(tolerations: Sequence[Toleration], key: str, value: str | None,
                     effect: str) -> Toleration | None:
    """The first toleration that tolerates the taint (key, value, effect), or None. An empty
    effect matches every effect, an empty key (operator Exists) every key."""
    for t in tolerations:
        if t.effect is not None and t.effect != effect:
            continue
        if not t.key and t.operator == "Exists":
            return t
        if t.key == key and (t.operator == "Exists" or (t.value or "") == (value or "")):
            return t
    return None


def tolerates(tolerations: Sequence[Toleration], key: str, value: str | None,
              effect: str) -> bool:
    return first_tolerating(tolerations, key, value, effect) is not None


def evicted_after(tolerations: Sequence[Toleration], key: str, value: str | None) -> int | None:
    """The seconds after which a pod with these tolerations is evicted from a node with this
    NoExecute taint, which they tolerate (0: at once); None when it may stay for good."""
    found = first_tolerating(tolerations, key, value, "NoExecute")
    if found is None or found.toleration_seconds is None:
        return None
    return max(0, found.toleration_seconds)


def cut_short(tolerations: Sequence[Toleration], key: str, value: str | None,
              run_seconds: int) -> int | None:
    """evicted_after, when it evicts the pod before `run_seconds` (a build's
    activeDeadlineSeconds: how long it may run); None when the pod may stay as long."""
    seconds = evicted_after(tolerations, key, value)
    return seconds if seconds is not None and seconds < run_seconds else None


def run_bound(template: PodTemplate) -> int:
    """What `cut_short` holds the template's tolerations to (its activeDeadlineSeconds), or 0
    when none has tolerationSeconds: templates alike but for it use the same nodes."""
    if all(t.toleration_seconds is None for t in template.tolerations):
        return 0
    return template.active_deadline_seconds


def lasting(template: PodTemplate) -> tuple[Toleration, ...]:
    """The template's tolerations but those `cut_short` would hold against it (NoExecute for
    fewer tolerationSeconds than its activeDeadlineSeconds), and any after such a one that
    may tolerate a taint it tolerates (the short one is the first for that taint, so sets
    the build's eviction): what a pod standing in for its build's (a scale-up pod)
    tolerates, so that kube-scheduler binds it only where the build may go
    (placement.why_not) and a node autoscaler adds a node when none is left. Left in, an
    `operator: Exists` after a short one let the pod onto the node the build was kept off."""
    out, short = [], []
    for t in template.tolerations:
        if t.toleration_seconds is not None and \
                max(0, t.toleration_seconds) < template.active_deadline_seconds:
            short.append(t)
        elif not any(_overlap(s, t) for s in short):
            out.append(t)
    return tuple(out)


def _overlap(short: Toleration, t: Toleration) -> bool:
    """Some NoExecute taint both tolerate (`short`'s effect is NoExecute: it has seconds)."""
    if t.effect not in (None, "NoExecute"):
        return False
    if not short.key or not t.key:
        return True
    return short.key == t.key and ("Exists" in (short.operator, t.operator)
                                   or (short.value or "") == (t.value or ""))
