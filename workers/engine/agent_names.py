"""A build placed again gets a Jenkins agent of a new name; the old name's agent is deleted
first, so the old pod's agent process can never take the build.

Jenkins' inbound-agent secret is an HMAC of the node's name under a key the controller keeps
(JnlpAgentReceiver.SLAVE_SECRET.mac(name), SlaveComputer.getJnlpMac): a node deleted and
registered again under the same name has the same secret. A build placed again under its
old name would leave the old pod's process able to connect: a pod force-deleted from a node
that cannot be reached runs until its kubelet comes back, and one deleted normally runs until
its grace period ends. Connected first, that process takes the build (on a node we took for
gone, at the old pod's size) and Jenkins refuses the new pod's agent ("NAME is already
connected to this controller", DefaultJnlpSlaveReceiver.afterProperties); when the old pod
is killed the build loses its agent, with the new pod still standing under that name. The
refused agent (remoting's hudson.remoting.Engine) tries again every 10 s over TCP
(onConnectionRejected), and takes the name once the old channel closes: a Pipeline's node
block is then resumed on a pod without its workspace; over WebSocket the refused handshake
ends Engine.runWebSocket and the agent process exits, and so does its pod (restartPolicy
Never), after the old process was already counted as the build's agent online.

So each placement after the first (the build had a pod, none now: a connect timeout's
re-placement, a pod stuck Terminating and force-deleted, one drained or evicted before its
agent connected, a lost warm agent, a resumed park) registers a node named for the build and
the attempt (keys.agent_name of the build key and the placement's number) and makes its pod
under that name; the Jenkins label stays the build's first agent's name, the label its queue
item (CI_AUTOSCALER_AGENT) waits on. The old name's node is deleted before: the old process is
refused as an unknown client from then on. It is taken offline first, so that a process
connecting before the deletion is handed nothing; one that runs the build (on its executor)
is waited for (RetryableError), as workers.engine.terminating does.

The build's record names its current agent (`agent`, `request`); the agents index keeps every
name it had (a Replay's item, on the first name, is still known for its build:
workers.engine.adoption), listed in `previous_agents` so that expiry drops them with the build
(workers.adapters.expiry).
"""

import logging
from dataclasses import replace

from workers import runtime
from workers.engine import scheduling
from workers.core.errors import PermanentError, RetryableError
from workers.core.keys import PREVIOUS_AGENTS, agent_name, build_key
from workers.core.models import BuildRequest

log = logging.getLogger("ci_autoscaler.agent_names")
PLACEMENTS = "placements"  # how many agent names the build has had after its first
PREVIOUS = PREVIOUS_AGENTS  # its earlier agent names, comma-separated
OFFLINE_REASON = "ci-autoscaler: deleted, its build placed again under a new agent name"


def busy(rt: runtime.Runtime, name: str, context: dict[str, str]) -> bool:
    """Take the agent offline (it takes no new work from now on), then read whether it runs
    a build; if it does, bring it back (its run goes on, and so may its Pipeline's next node
    block; also when it was offline already with our message) and True. Jenkins refusing the offline (403: the user lacks Agent/Disconnect) is
    logged, and then an agent it shows connected counts as busy, as before."""
    try:
        disabled: bool | None = rt.jenkins.disable_agent(name, OFFLINE_REASON)
    except PermanentError as err:
        log.warning("could not take an agent offline before deleting it",
                    extra={**context, "agent": name, "error": str(err)})
        disabled = None
    activity = rt.jenkins.agent_activity(name)
    if activity is None:
        return False
    # A run of a job we may not READ shows on its executor as no run, busy all the same
    # (AgentActivity.hidden_runs): deleting the agent would kill it
    running = bool(activity.runs) or activity.hidden_runs > 0
    if disabled is None:
        return not activity.offline or activity.temporarily_offline or running
    if not running:
        return False
    # Offline already by our hand (an earlier attempt stopped between its offline and its
    # read, or its POST went through and the retried one found it offline): ours to undo
    # too, or the agent stays offline for ever. A person's offline (another message) is left.
    if disabled or (activity.temporarily_offline and activity.offline_reason == OFFLINE_REASON):
        try:
            rt.jenkins.enable_agent(name)
        except PermanentError as err:
            log.warning("could not bring an agent running a build back online",
                        extra={**context, "agent": name, "error": str(err)})
    return True


def placement_name(request: BuildRequest, placement: int, installation: str) -> str:
    """The agent name of the build's `placement`-th placement after its first: a name of its
    job this installation gives (keys.is_own_agent_name), unique to the build and attempt."""
    return agent_name(request.job, build_key("placement", request.build_key, str(placement)),
                      installation)


def previous(state: dict[str, str]) -> list[str]:
    return [name for name in (state.get(PREVIOUS) or "").split(",") if name]


def renamed(rt: runtime.Runtime, request: BuildRequest, state: dict[str, str],
            cleared: tuple[str, ...]) -> BuildRequest:
    """Under the build's provision lease, its previous pod gone: delete the old name's Jenkins
    node and give the build its next agent name (module docstring). `cleared`: the record's
    fields that say a pod was made under the old name, dropped (the new name has none yet)."""
    key, old = request.build_key, request.agent_name
    # Offline first (it takes no new work), then read, then deleted: a process that connects
    # between the read and the deletion is handed nothing. Read first and deleted while
    # online, it was handed the build's queue item at once (it waits on that node's label)
    # and the run lost its node under it. (Offline, an agent's computer reads offline whether
    # connected or not: Computer.isOffline is temporarilyOffline || no channel.)
    if busy(rt, old, context={"build_key": key}):
        raise RetryableError(f"build {key}: the agent of its previous pod {old} is still "
                             "connected to Jenkins, running its build")
    rt.jenkins.delete_node(old)  # its process is refused from now on: an unknown client
    # Its pod's Secret goes with its pod; one made for a create that failed (retryably, the
    # pod not made) would be left behind by the name change.
    rt.cluster.delete_agent_secret(old)
    placement = int(state.get(PLACEMENTS) or 0) + 1
    new = placement_name(request, placement, rt.settings.installation)
    moved = replace(request, agent_name=new, node_label=request.node_label or old)
    rt.state.redis.hset(rt.state.prefix + "agents", new, key)
    # The new name's agent has not connected: its build is pending again, and its connect
    # timeout applies (workers.agent_starts.online), whatever the old agent did.
    rt.state.update_build(key, agent=new, request=scheduling.request_json(moved),
                          agent_online_at=None,
                          **{PLACEMENTS: placement,
                             PREVIOUS: ",".join([*previous(state), old])},
                          **{field: None for field in cleared})
    log.warning("build placed again under a new agent name; the old one's Jenkins node "
                "deleted", extra={"build_key": key, "agent": new, "previous_agent": old,
                                  "label": moved.node_label, "placement": placement})
    return moved
