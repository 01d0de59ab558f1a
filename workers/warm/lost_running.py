"""A claimed warm agent's pod that ended while its build's work ran there (evicted, its node
shut down, its agent process gone) is judged as a build's own pod is from the worker's
watch (workers.agent_starts.watch -> workers.engine.failures.fail_build), which cannot see
this one: a warm pod's build-key label is its own name, no build's. So a Pipeline run whose
warm agent Kubernetes stopped is left to decide (workers.engine.lost_runs: its node deleted,
`retry(conditions: [agent()])` runs its block again on a new agent), a freestyle build is
aborted and failed `pod_lost`, and an end that is the build's own is left to the repairs
(released as `pod_ended`), as for any agent. Before, the repairs released every such build
as a pod that ended: its run went on in Jenkins with no agent, and its retry got none.
Asked by workers.warm.lost once it found that the build's work does not wait for the agent.

A fail that stopped half-way (Jenkins went away before the build's run was aborted or its
queue item cancelled) is finished by a later pass as the start-failure sweep finishes one of
a build's own pod (workers.agent_starts.watch.to_finish): that sweep finds no build of a warm
pod, and the stray pods repair leaves a half-way fail's pod to it, so before, the evicted pod
stood, claimed, until the build's record expired.
"""

from workers.agent_starts.watch import to_finish, worth_failing
from workers.core.ports import PodInfo
from workers.core.start_failures import start_failure
from workers.engine import failures
from workers.runtime import Runtime


def ended_under_build(rt: Runtime, key: str, pod: PodInfo, now: float) -> bool:
    """Fail the build for its warm agent's pod that ended, as the watch would (module
    docstring); whether that did anything (failed it, or left its run to decide)."""
    failure = start_failure(pod, rt.settings.fatal_waiting_reasons, now=now,
                            pull_retry_seconds=rt.settings.image_pull_retry_seconds)
    if failure is None or not worth_failing(rt.state.get_build(key), pod.name, failure):
        return False
    return not failures.fail_build(rt, key, pod.name, failure).get("skipped")


def finish_failed(rt: Runtime, key: str, build: dict[str, str], pod: PodInfo | None) -> bool:
    """Finish the fail of the build on this warm agent's pod that stopped half-way (module
    docstring); whether there was one to finish. Unavailable, Overloaded and Unauthorized
    propagate, as from the sweep: the pass's Jenkins steps stop there."""
    if pod is None or (failure := to_finish(build, pod)) is None:
        return False  # its pod gone: what its fail left in Jenkins is jenkins_leftovers'
    failures.fail_build(rt, key, pod.name, failure)
    return True
