"""The label probe's repair, run by the reconcile pass right after it reads Jenkins' queue
(workers.engine.repairs): while Jenkins has no agent at all, every queued build waits with "Waiting
for next available executor", naming no label, so a build started in Jenkins on a template's
label (Build Now on a new installation, before any agent exists) was never adopted. The pass
then registers the probe, a node that runs nothing (workers.core.label_probe), and reads the
queue again, so the adoption sees the label that same pass; a later pass deletes the probe
once nothing needs it (another node is there, or no build waits on a label).

Jenkins' node list is read only when the probe was made (probe_store), or an item not ours
waits naming no label that is not known to have none, or it was last read an hour ago or more
(a probe whose record is lost makes every item name its label: without that, it would stay
for good): most passes cost no call more.
"""

import logging

from workers import runtime
from workers.adapters import probe_store
from workers.core.errors import PermanentError, shown
from workers.core.label_probe import NO_LABEL_WHY, ProbeAction, decide, probe_name, \
    unlabelled
from workers.core.ports import QueueItem
from workers.core.routing import BUILD_KEY_PARAMETER

log = logging.getLogger("ci_autoscaler.label_probe")


def tend(rt: runtime.Runtime, queue: list[QueueItem],
         now: float) -> tuple[list[QueueItem], dict[str, int]]:
    """Make or delete the probe as the queue asks; the queue the adoption is to read (read
    again once the probe is made), and what was done (label_probes_made, _deleted)."""
    done = {"label_probes_made": 0, "label_probes_deleted": 0}
    made = probe_store.made(rt.state)
    copies = _copies(rt, queue, every=made)
    waiting = unlabelled(queue, skip_parameter=BUILD_KEY_PARAMETER, copies=copies)
    before = probe_store.unlabelled(rt.state) if waiting else set()
    if not made and set(waiting) <= before and probe_store.checked(rt.state):
        return queue, done  # none waits, or only items with no label
    probe = probe_name(rt.settings.installation)
    nodes = rt.jenkins.jenkins_nodes()
    probe_store.note_checked(rt.state)
    if (probe in nodes) != made:  # made by a pass whose answer was lost, or deleted by hand
        (probe_store.note_made(rt.state, now) if probe in nodes
         else probe_store.note_deleted(rt.state))
        copies = _copies(rt, queue, every=probe in nodes)
    # With any node there, Jenkins drops no label: an item naming none has none.
    known = (before & {i.id for i in queue}) | (set(waiting) if nodes else set())
    decision = decide(nodes=nodes, probe=probe, queue=queue, skip_parameter=BUILD_KEY_PARAMETER,
                      known_unlabelled=known, copies=copies)
    if decision.action == ProbeAction.CREATE:
        try:
            rt.jenkins.ensure_label_probe()
        except PermanentError as err:  # 403: our user lacks Computer/Create
            log.warning("Jenkins refused to register the label probe: a build started in "
                        "Jenkins while it has no agent is not adopted",
                        extra={"agent": probe, "error": shown(err)})
        else:
            probe_store.note_made(rt.state, now)
            done["label_probes_made"] = 1
            log.info("registered the label probe", extra={"agent": probe,
                                                          "reason": decision.reason})
            queue = rt.jenkins.queue_items()
            known |= set(unlabelled(queue, skip_parameter=BUILD_KEY_PARAMETER, copies=copies))
    elif decision.action == ProbeAction.DELETE:
        try:
            deleted = rt.jenkins.delete_label_probe()
        except PermanentError as err:  # 403: our user lacks Computer/Delete
            log.warning("Jenkins refused to delete the label probe",
                        extra={"agent": probe, "error": shown(err)})
        else:
            probe_store.note_deleted(rt.state)
            done["label_probes_deleted"] = int(deleted)
            log.info("deleted the label probe", extra={"agent": probe,
                                                       "reason": decision.reason})
    if known != before:
        probe_store.keep_unlabelled(rt.state, known)
    return queue, done


def _copies(rt: runtime.Runtime, queue: list[QueueItem], *, every: bool) -> set[int]:
    """The items carrying one of our build keys that are not that build's own queue item: a
    Rebuild of one of our builds (it copies every parameter), which waits on the label of that
    build's gone agent. Looked up (one Redis round trip) for the items waiting naming no label,
    or, `every`, all of them (with the probe there, a copy that names its label keeps it)."""
    items = [i for i in queue if not i.blocked and BUILD_KEY_PARAMETER in i.parameters
             and (every or i.why == NO_LABEL_WHY)]
    if not items:
        return set()
    rows = rt.state.build_fields([i.parameters[BUILD_KEY_PARAMETER] for i in items],
                                 "queue_item")
    return {i.id for i, (own,) in zip(items, rows) if own != str(i.id)}
