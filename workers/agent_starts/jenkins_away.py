"""When Jenkins was last seen away (no connection, or its 503 while it restarts and loads), and
when it was last seen restarted, so that an agent's connect clock starts no earlier than the
one, and a lost run's clock no earlier than the other.

An inbound agent cannot connect to a Jenkins that is down or loading; it retries, and connects
some seconds after Jenkins serves again (jenkins/inbound-agent retries unless -noReconnect).
A pod that ran through a Jenkins restart longer than its template's
agentConnectTimeoutSeconds has nothing wrong with it, and an idle warm agent offline just
after one is reconnecting: each gets its full connect time from the last moment Jenkins was
seen away (`last`). The reconcile leader sees it: a pass that fails with `Unavailable`
(workers.engine.reconcile), and its questions "which agents are online?" (every couple of seconds
while some agent is on its way up, workers.agent_starts.online; the warm pools,
workers.warm.pool) record the time here, in Redis, so that a new leader knows it too.

A restart is more than an absence: it drops what the controller held in memory only, such as
the timer with which it cancels a deleted node's block (RemovedNodeListener), and resumes a
Pipeline's blocks on their nodes' own labels (workers.engine.lost_runs). A connection that
failed, or a 503, does not tell a restart from an outage (a Service with no ready endpoint, a
proxy restarting, a network that drops): Jenkins' session does. Jenkins sends it
(Jenkins.SESSION_HASH, new on every start) with every API page (X-Jenkins-Session:
workers.adapters.jenkins_client), so the calls made anyway show it; `notice` keeps, in Redis
for every process, the sessions seen, and a session not seen before is a restart, recorded
when it is first noticed (after the restarted Jenkins resumed its blocks: its clocks start no
later than that). Each reconcile pass notices, so does each question of which agents are
online, and each reader of `restarted`: a restart that came between two passes, with no call
of ours failing, is noticed too. When Jenkins' answers carry no session (a proxy that strips
the header), a restart cannot be told from an outage: `restarted` is then `last`, as before.
"""

import logging
from typing import TYPE_CHECKING

from workers.adapters.redis_state import RedisState
from workers.core.errors import Unavailable

if TYPE_CHECKING:
    from workers.runtime import Runtime

log = logging.getLogger("ci_autoscaler.jenkins_away")
KEY = "jenkins-away-at"  # "at": last seen away (an outage or a restart); RESTARTED: restarted
RESTARTED = "restarted"
SESSIONS_KEY = "jenkins-away-sessions"  # each session seen -> when it was last seen
# A session not seen for this long is forgotten (seen again, it would be taken for new).
KEEP_SECONDS = 2 * 24 * 3600
# What an answer of this many seconds ago showed of the session serves for `notice`: a pass's
# or a poll's own calls show it, and no request of its own is made (JenkinsAdapter.session).
NOTICE_MAX_AGE_SECONDS = 5.0


def record(state: RedisState, at: float) -> None:
    """Jenkins was away at `at` (a later time kept if one was recorded already)."""
    state.redis.zadd(state.prefix + KEY, {"at": at}, gt=True)


def last(state: RedisState) -> float:
    """When Jenkins was last seen away, by an outage or a restart; 0 if never."""
    return float(state.redis.zscore(state.prefix + KEY, "at") or 0)


def notice(rt: "Runtime", now: float) -> str:
    """Look at Jenkins' session (as a call of the last seconds showed it, else read now) and
    record a restart at `now` if it is one not seen before; the session ("": Jenkins' answers
    carry none)."""
    session = rt.jenkins.session(max_age=NOTICE_MAX_AGE_SECONDS)
    if session:
        saw(rt.state, session, now)
    return session


def saw(state: RedisState, session: str, now: float) -> bool:
    """Jenkins answered under `session` at `now`: True if that is a restart (a session not
    seen before, while another was), recorded at `now`. It was away too then: at `now` as
    well, unless an absence was recorded since the session before was last seen (a failed
    call, a 503 while it loaded: agents connect from then on, not from our notice). The first
    session ever seen here is no restart (nothing to compare it with): what was taken for one
    before (any absence, the rule without sessions) is kept as one."""
    with state.redis.pipeline() as pipe:  # one transaction: one process finds it new
        pipe.zrevrange(state.prefix + SESSIONS_KEY, 0, 0, withscores=True)
        pipe.zadd(state.prefix + SESSIONS_KEY, {session: now}, gt=True)
        pipe.zremrangebyscore(state.prefix + SESSIONS_KEY, "-inf", now - KEEP_SECONDS)
        pipe.zcard(state.prefix + SESSIONS_KEY)
        pipe.zscore(state.prefix + KEY, "at")
        before, new, _, known, away = pipe.execute()
    if not new:
        return False
    if known <= 1:
        state.redis.zadd(state.prefix + KEY, {RESTARTED: float(away or 0)}, gt=True)
        return False
    seen_before = before[0][1] if before else 0.0  # the last answer under the session before
    marks = {RESTARTED: now, **({"at": now} if float(away or 0) < seen_before else {})}
    state.redis.zadd(state.prefix + KEY, marks, gt=True)
    log.warning("Jenkins restarted: its session is a new one", extra={"at": now})
    return True


def restarted(rt: "Runtime", now: float) -> float:
    """When Jenkins was last seen restarted (noticed first: `notice`); 0 if never. Without
    sessions (a proxy that strips the header), when it was last seen away (`last`): an
    outage cannot be told from a restart then."""
    if not notice(rt, now):
        return last(rt.state)
    return float(rt.state.redis.zscore(rt.state.prefix + KEY, RESTARTED) or 0)


def online_agents(rt: "Runtime", now: float) -> set[str]:
    """Jenkins' online agents (one call); when Jenkins is away, that is recorded at `now`
    before the error goes on: no agent can connect to it either. Jenkins' session, which the
    answer shows, is noticed (a restart since the last look: `notice`)."""
    try:
        online = rt.jenkins.online_agents()
    except Unavailable:
        record(rt.state, now)
        raise
    notice(rt, now)
    return online
