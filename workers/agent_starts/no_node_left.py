"""A build whose agent did not come online is re-placed with the node it failed on left out
(workers.agent_starts.online). When that leaves it no node at all (a one-node cluster, a
template whose nodeSelector matches a single node: a GPU pool of one), its provision found
"no matching node" and it waited for good: its queue item in Jenkins, nothing paging (no
node is short, a node it may not use is there). It fails instead, as its next connect
timeout would have (agent_connect_timeout), its queue item cancelled
(workers.engine.failures, queued once the provision has let go of the build). Not while a
node of its own is only closed for now (cordoned for an upgrade's drain, NotReady for a
kubelet restart, under a pressure the kubelet clears; placement.closed): failed, the build
was lost to a drain of minutes; it waits for that node as before.
(tests/integration/test_no_node_left_for_now.py)"""

from workers import runtime
from workers.agent_starts.watch import queue_failure
from workers.core.models import BuildRequest
from workers.core.placement import Wait, WaitReason, being_removed, closed, unsuited
from workers.core.start_failures import FailureReason, StartFailure
from workers.engine import scheduling


def fail_if_none(rt: runtime.Runtime, request: BuildRequest, state: dict[str, str],
                 decision: Wait) -> bool:
    """Queue the build's failure if its wait is for want of a node that its connect timeouts
    did not leave out; True if so (the build is not to wait)."""
    left_out = scheduling.excluded(state)
    if decision.reason != WaitReason.NO_MATCHING_NODE or not state.get("connect_timeouts") \
            or not left_out or _closed_for_now(rt, request, left_out):
        return False
    rt.capacity.remove_waiting(request.build_key)
    queue_failure(rt.state, request.build_key, request.agent_name, StartFailure(
        str(FailureReason.AGENT_CONNECT_TIMEOUT),
        f"agent not online in Jenkins on {', '.join(sorted(left_out))} within its connect "
        f"timeout, and no other node can take the build ({decision.detail})"))
    return True


def _closed_for_now(rt: runtime.Runtime, request: BuildRequest, left_out: frozenset[str]
                    ) -> bool:
    """Whether a node the build may use, not left out, is only closed for now: not one a
    node autoscaler is removing (gone soon: the next re-drive finds no node and fails it)."""
    template = rt.config.templates.get(request.template)
    return template is not None and any(
        node.name not in left_out and closed(node) is not None and not being_removed(node)
        and unsuited(node, template) is None for node in rt.view.snapshot())
