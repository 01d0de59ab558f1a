"""A claimed warm agent's pod marked as a build's (agents.podDisruptionBudget). The agents'
budget (helm/ci-autoscaler/templates/pdb-agents.yaml) leaves out pods whose warm label is
"true", so an idle warm agent never holds up a drain; once a build claims the agent its pod
runs that build, and its label becomes "claimed" so the budget protects it like any build's
pod. The label is kept, not removed: the repairs still give the pod a warm agent's longer
deadline (its idle life is part of its age), and the pool still knows it for a warm agent.

A patch that fails leaves the build running unprotected from a drain, never fails the claim:
the agent is the build's already and Jenkins is asked to run it there.
"""

import logging

from workers.core.errors import PermanentError, RetryableError
from workers.core.pods import WARM_CLAIMED, WARM_LABEL
from workers.runtime import Runtime
from workers.warm import agents

log = logging.getLogger("ci_autoscaler.warm")


def mark_claimed(rt: Runtime, agent: str, template: str, build_key: str) -> bool:
    """Label the agent's pod claimed; False (logged, counted in
    ci_autoscaler_warm_unprotected_total) when that could not be done."""
    try:
        if rt.cluster.label_pod(agent, {WARM_LABEL: WARM_CLAIMED}):
            return True
        why = "no pod of ours by that name"
    except (PermanentError, RetryableError) as err:  # the adapter's words: no secret in them
        why = str(err)
    except Exception as err:  # the build is on its agent whatever happened here
        why = type(err).__name__
    log.warning("claimed warm agent's pod not labelled claimed: a drain may evict its build",
                extra={"build_key": build_key, "agent": agent, "error": why})
    agents.metrics(rt).warm_unprotected(template)
    return False
