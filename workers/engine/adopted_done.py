"""An adopted agent goes when its node block is done, not when its run is: a repair of the
reconcile pass (workers.engine.repairs), after the adoption (workers.engine.adoption).

An adopted agent serves one `node('maven')` block of a run (or one stage's `agent { label
'maven' }` under `agent none`), and is taken temporarily offline once it took it, so that no
other item lands on it. Once that block's body ends, its executor is idle, and being offline
it can take nothing again, the same run's next block included: that block waits on the label
as an item of its own and gets an adopted agent of its own. Kept until the run ended, the
first agent idled through the rest of the run (every later stage, an `input`, hours), and
after it: the run's COMPLETED names the run, which the last agent adopted for it took over
in the `jenkins-runs` record, so only that one was released, the others a
CI_AUTOSCALER_LOST_EVENT_SECONDS later. The Kubernetes plugin does the same with its agents
(OnceRetentionStrategy: an agent is terminated once its one task is done).

Released: an adopted build whose run is recorded, whose agent is temporarily offline with our
reason (adoption.OFFLINE_REASON: an agent we could not take offline may take other work, and
is left as before), and runs nothing (no run named on its executor, nor one hidden from us),
as long as Jenkins runs in the session the agent took its run in (jenkins_sessions.FIELD,
recorded by adoption.watch_adopted) and was not seen restarted since the pod was made
(workers.agent_starts.jenkins_away.restarted; any absence without sessions): a block
Jenkins resumes after a restart waits for the very agent that has its workspace, on its
name, and its executor is idle meanwhile. (Its queue item cannot tell: while the agent is
the label's only node, Jenkins' reason names the agent for a new block on the label too.)
Such an agent is left as before, to the run's end.
"""

import logging

from workers import runtime
from workers.engine import jenkins_sessions, tasks
from workers.adapters import run_bound
from workers.adapters.redis_state import BuildStatus
from workers.engine.adoption import OFFLINE_REASON
from workers.agent_starts import jenkins_away

log = logging.getLogger("ci_autoscaler.adoption")
REASON = "block_ended"  # agents_deleted_total's reason


def release_done(rt: runtime.Runtime, builds: dict[str, dict[str, str]], now: float) -> int:
    """Release the adopted agents whose block is done; `builds` the open builds. How many
    were released (one GET of an agent's computer for each adopted build that took its run,
    and of Jenkins' session once, and again after each agent found done)."""
    away, session = None, None
    released = 0
    for key, build in builds.items():
        run_bound.checkpoint()  # the pass may end before this build
        agent = build.get("agent") or ""
        if not build.get("node_label") or not build.get("jenkins_build") or not agent \
                or build.get("status") != BuildStatus.RUNNING \
                or jenkins_sessions.FIELD not in build:
            continue
        if away is None:  # read once for the pass, when an adopted agent is looked at
            away = jenkins_away.restarted(rt, now)  # (an outage resumes no block)
        if away and away >= float(build.get("pod_created_at") or now):
            continue  # Jenkins was away in its life: a resumed block may wait for it
        if session is None:  # read now, once for the pass, when an adopted agent is looked at
            session = rt.jenkins.session()
        if build[jenkins_sessions.FIELD] != session:
            continue  # Jenkins restarted since it took its run: the same
        activity = rt.jenkins.agent_activity(agent)
        if activity is None or not activity.temporarily_offline \
                or activity.offline_reason != OFFLINE_REASON \
                or activity.runs or activity.hidden_runs:
            continue
        # Read again after the agent: the pass's read may be minutes old by now, and a
        # restart between it and the agent's read is what the session is asked for (a
        # session is one start of Jenkins: the same one now, the same since the run)
        session = rt.jenkins.session()
        if build[jenkins_sessions.FIELD] != session:
            continue
        tasks.release(rt, key, agent, REASON)
        log.info("adopted agent's block is done; released", extra={
            "build_key": key, "agent": agent, "job": build.get("job"),
            "number": build.get("jenkins_build")})
        released += 1
    return released
