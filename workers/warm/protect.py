"""A claimed warm agent's pod marked as a build's. An idle warm agent's pod holds up neither
a drain (the agents' budget, helm/ci-autoscaler/templates/pdb-agents.yaml, leaves out pods
whose warm label is "true") nor a node autoscaler's scale-down (workers.core.warm_pods); once
a build claims the agent its pod runs that build, and one patch of its metadata protects it
like any build's pod: its label becomes "claimed", which the budget selects, and it gets
DO_NOT_DISRUPT. The label is kept, not removed: the repairs still give the pod a warm
agent's longer deadline (its idle life is part of its age), and the pool still knows it for
a warm agent.

A patch that fails leaves the build running unprotected from a drain and from autoscalers,
never fails the claim: the agent is the build's already and Jenkins is asked to run it there.
"""

import logging

from workers.core.errors import PermanentError, RetryableError
from workers.core.warm_pods import CLAIMED_ANNOTATIONS, CLAIMED_LABELS
from workers.runtime import Runtime
from workers.warm import agents

log = logging.getLogger("ci_autoscaler.warm")


def mark_claimed(rt: Runtime, agent: str, template: str, build_key: str, *,
                 again: bool = False) -> bool:
    """Label the agent's pod claimed and annotate it DO_NOT_DISRUPT, in one patch; False
    (logged, counted in ci_autoscaler_warm_unprotected_total) when that could not be done.
    `again`: the pool pass's repair of a claimed pod (workers.warm.pool), run each pass
    until it holds: a failure is logged at info and not counted (the metric counts builds,
    its claim's failure counted once)."""
    try:
        if rt.cluster.patch_pod_metadata(agent, labels=CLAIMED_LABELS,
                                         annotations=CLAIMED_ANNOTATIONS):
            return True
        why = "no pod of ours by that name"
    except (PermanentError, RetryableError) as err:  # the adapter's words: no secret in them
        why = str(err)
    except Exception as err:  # the build is on its agent whatever happened here
        why = type(err).__name__
    extra = {"build_key": build_key, "agent": agent, "error": why}
    if again:
        log.info("claimed warm agent's pod still not protected", extra=extra)
        return False
    log.warning("claimed warm agent's pod not labelled claimed: a drain may evict its build",
                extra=extra)
    agents.metrics(rt).warm_unprotected(template)
    return False
