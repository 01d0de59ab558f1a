"""The label probe: a Jenkins node that only makes Jenkins name the label a queued build waits
for, while Jenkins has no agent at all. Pure: its name, its description, and when a pass
makes it or deletes it (a decision with a reason).

While Jenkins has no agent node (Jenkins.getNodes() is empty; the built-in node is not one),
Queue.BuildableItem.getCauseOfBlockage drops every item's label ("no master/agent. pointless to
talk about nodes") and every buildable item waits with "Waiting for next available executor",
naming none: a build started by hand on a template's label, on a cluster with no agent yet,
was never adopted (workers.engine.adoption reads the label from that reason only; a Pipeline's node
block exports no label anywhere). With one node, even one that never connects, Jenkins names
the label again ("There are no nodes with the label ‘maven’"). The probe is that node:
label-less, EXCLUSIVE (nothing runs on it), never connected; its name is no agent name
(keys.is_own_agent_name is False for it), and its description is not our agents' (so no
repair lists, counts or deletes it as an agent).
"""

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from workers.core.keys import build_key
from workers.core.ports import QueueItem

# Queue.WaitingForNextAvailableExecutor (hudson/model/Messages.properties): the whole `why` of
# an item whose label Jenkins does not name (no agent at all, or an item with no label).
NO_LABEL_WHY = "Waiting for next available executor"
PROBE_PREFIX = "ci-autoscaler-label-probe"
_PROBE_TAG_CHARS = 6
_QUOTE = "‘"  # Jenkins quotes a label or node name between ‘ and ’ (workers.core.jenkins_queue)


def probe_name(installation: str) -> str:
    """The probe's Jenkins node name: never an agent name (those begin "cia-"), and with a
    tag of the installation when it has one, so two sharing a Jenkins have one each (an
    installation may hold "/", which no node name may: Jenkins.checkGoodName)."""
    if not installation:
        return PROBE_PREFIX
    return f"{PROBE_PREFIX}-{build_key('label-probe', installation)[:_PROBE_TAG_CHARS]}"


def probe_description(installation: str) -> str:
    """What the probe's Jenkins node says it is (what a person reads on the Nodes page)."""
    text = "ci-autoscaler: makes Jenkins name the label a queued build waits for; runs nothing"
    return f"{text} (installation {installation})" if installation else text


class ProbeAction(StrEnum):
    CREATE = "create"
    DELETE = "delete"
    NONE = "none"  # nothing to do: not there and not needed, or there and still needed


@dataclass(frozen=True)
class ProbeDecision:
    action: ProbeAction
    reason: str


def waiting_others(queue: Iterable[QueueItem], *, skip_parameter: str,
                   copies: Collection[int] = ()) -> list[QueueItem]:
    """The buildable items not triggered by us: those without `skip_parameter` (ours carry
    it), and `copies`, which carry one of our build keys but are not that build's own item (a
    Rebuild copies every parameter; workers.engine.adoption adopts it once Jenkins names the label
    of the gone agent it waits on)."""
    return [i for i in queue if not i.blocked
            and (skip_parameter not in i.parameters or i.id in copies)]


def unlabelled(queue: Iterable[QueueItem], *, skip_parameter: str,
               copies: Collection[int] = ()) -> list[int]:
    """The ids of the items not ours that wait naming no label."""
    return [i.id for i in waiting_others(queue, skip_parameter=skip_parameter, copies=copies)
            if i.why == NO_LABEL_WHY]


def decide(*, nodes: Iterable[str], probe: str, queue: Iterable[QueueItem],
           skip_parameter: str, known_unlabelled: Iterable[int] = (),
           copies: Collection[int] = ()) -> ProbeDecision:
    """Whether the probe is to be made or deleted. `nodes`: Jenkins' nodes, the built-in one
    left out; `known_unlabelled`: the items seen naming no label while the probe was there
    (restricted to no label: the probe does not help them); `copies`: as for
    `waiting_others`.

    Made when Jenkins has no node and an item not ours waits naming no label (other than one
    known to have none). Kept while Jenkins has no other node and an item not ours names a
    label (deleted, it would name none again, and the next pass make the probe again).
    Deleted once Jenkins has another node (that node makes Jenkins name labels), or no item
    not ours names a label (only items with no label at all wait, or none).

    Another installation's probe counts as another node only if its name comes first: of two
    installations' probes, each pass keeps the first and deletes the other. Were each to go
    for the other, two passes reading the node list at the same time would delete both, and
    make both again on their next passes, and so on while they stay in step."""
    nodes = set(nodes)
    present = probe in nodes
    others = sorted(n for n in nodes - {probe}
                    if not n.startswith(PROBE_PREFIX) or n < probe)
    waiting = waiting_others(queue, skip_parameter=skip_parameter, copies=copies)
    if others:
        return ProbeDecision(ProbeAction.DELETE if present else ProbeAction.NONE,
                             f"Jenkins has {len(others)} other node(s), {others[0]} first: "
                             "its reasons name labels")
    if present:
        naming = [i for i in waiting if _QUOTE in (i.why or "")]
        if naming:
            return ProbeDecision(ProbeAction.NONE, f"queue item {naming[0].id} waits on a label "
                                                   "Jenkins names only while the probe is there")
        return ProbeDecision(ProbeAction.DELETE, "no queue item not ours waits on a label")
    known = set(known_unlabelled)
    asked = [i for i in waiting if i.why == NO_LABEL_WHY and i.id not in known]
    if asked:
        return ProbeDecision(ProbeAction.CREATE, f"Jenkins has no agent: queue item "
                                                 f"{asked[0].id} waits naming no label")
    return ProbeDecision(ProbeAction.NONE, "no queue item not ours waits naming no label")
