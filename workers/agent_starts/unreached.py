"""Whether a build's work never reached its agent: the one question asked of an agent that had
connected (seen by our poll, or shown by Jenkins) and is gone before Jenkins handed it the
build, whatever removed it.

A connected agent is not a build that ran there: one killed after coming online but before
Jenkins' queue handed it the build (or in its handshake) took nothing, and cannot now. Its
build's item (or its Pipeline's `agent` block) waits on the gone agent's label for ever unless
the product acts: a start failure for a pod that ended (workers.engine.failures), a new pod under a
new name on that label for one deleted (workers.engine.lost_agents) or a claimed warm agent lost
(workers.warm.lost). Asked only of agents whose pod ended or went, never per poll.
"""

import time
from collections.abc import Iterable

from workers import runtime
from workers.agent_starts import jenkins_away
from workers.core.jenkins_queue import waiting_label
from workers.core.ports import BuildState, QueueItem, RunRef
from workers.core.routing import AGENT_PARAMETER


def waits_for(rt: runtime.Runtime, *, found: BuildState | None, names: Iterable[str],
              since: float | None, away: float | None = None,
              run: RunRef | None = None) -> bool:
    """Whether the build's work still waits in Jenkins' queue for its agent, never having run
    there; `found`: what Jenkins reports of the build's own queue item. The item has not left
    the queue (a freestyle build, or a Pipeline whose run has not started); or, its Pipeline
    run started on the controller (Jenkins reports it running), an item (its `agent` block:
    ExecutorStepExecution.PlaceholderTask) waits on one of `names` (the agent's, or an earlier
    name of the build's whose label it carries: workers.engine.agent_names), as long as Jenkins was
    not restarted (`away`: last seen so, read here if not given: jenkins_away.restarted; an
    outage resumes no block) since `since` (the pod made, the
    warm agent claimed): a block resumed after a restart waits so too after running there,
    its workspace on that agent, and keeps the lost agent's rules. `run`: the build's run, as
    its queue item left the queue (only its own block counts: _its_block). One read of the
    queue, for a running build only."""
    if found == BuildState.QUEUED:
        return True
    if found != BuildState.RUNNING:
        return False
    away = jenkins_away.restarted(rt, time.time()) if away is None else away
    if away and away >= (since or 0.0):
        return False
    wanted = tuple(names)
    return any(waiting_label(item.why, wanted) and _its_block(item, run)
               for item in rt.jenkins.queue_items())


def _its_block(item: QueueItem, run: RunRef | None) -> bool:
    """Whether a queue item waiting on the agent's label may be the running build's own
    block. A Replay or Rebuild copies the build's parameters (workflow-cps ReplayAction.run2
    copies its ParametersAction), CI_AUTOSCALER_AGENT with them, so its item waits on the
    same label, its run's block too: counted as the build's work, a build whose work ran on
    the agent was taken for one it never reached (an OOM in its block made a start failure,
    its run aborted; a drain placed it again, its run left waiting for the gone agent and
    the new pod running the copy). An item with parameters is a run's own (a Rebuild of a
    freestyle build, or a Pipeline's not started): never a block. A block naming another run
    than the build's is that run's; one naming none (a Jenkins that exports no task URL) or
    a build whose run is not known is counted, as before."""
    if AGENT_PARAMETER in item.parameters:
        return False
    return run is None or item.run is None or item.run == run
