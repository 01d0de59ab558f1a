"""What a warm agent's pod tells the node autoscalers and the agents' budget, idle and claimed.

An idle warm agent runs no build and is replaceable: the pool makes another, and a claim of
one that went is placed again (workers.warm.lost). So its pod lets Cluster Autoscaler and
Karpenter take its node: with DO_NOT_DISRUPT a node holding only idle warm agents (a pool's
`min`) would never be scaled down. Once a build claims it, one patch of its metadata
(CLAIMED) protects it like any build's pod: DO_NOT_DISRUPT, and the label the agents'
PodDisruptionBudget selects (workers.warm.protect).
"""

from typing import Any

from workers.core.pods import DO_NOT_DISRUPT, WARM_CLAIMED, WARM_IDLE, WARM_LABEL

CA_SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
# Cluster Autoscaler scales down a node whose pods it may evict. A pod with no controller, or
# with local storage (every agent pod's emptyDir), blocks that unless annotated
# safe-to-evict "true" (kubernetes/autoscaler, cluster-autoscaler/FAQ.md, "What types of pods
# can prevent CA from removing a node?"). Karpenter: a pod without karpenter.sh/do-not-disrupt
# may be disrupted (karpenter.sh, Concepts, Disruption, "Pod-Level Controls").
IDLE_ANNOTATIONS = {CA_SAFE_TO_EVICT: "true"}
# The one metadata patch of a claim: the budget's label and the build's DO_NOT_DISRUPT.
CLAIMED_LABELS = {WARM_LABEL: WARM_CLAIMED}
CLAIMED_ANNOTATIONS = dict(DO_NOT_DISRUPT)


def idle_warm(manifest: dict[str, Any]) -> dict[str, Any]:
    """An agent pod manifest (core.pods) as an idle warm agent's: its warm label "true", and
    evictable by the autoscalers (IDLE_ANNOTATIONS, no do-not-disrupt). A new dict; the
    manifest given is left as it was."""
    meta = manifest["metadata"]
    annotations = {k: v for k, v in meta.get("annotations", {}).items()
                   if k not in DO_NOT_DISRUPT}
    return {**manifest, "metadata": {
        **meta, "labels": {**meta.get("labels", {}), WARM_LABEL: WARM_IDLE},
        "annotations": {**annotations, **IDLE_ANNOTATIONS}}}


def protected(annotations: dict[str, str]) -> bool:
    """Whether a claimed warm agent's pod carries the claim's annotations: one claimed by an
    older release's worker (it patched the label alone), or whose patch failed, does not,
    and the autoscalers may take its build's node (workers.warm.pool repairs it)."""
    return all(annotations.get(k) == v for k, v in CLAIMED_ANNOTATIONS.items())
