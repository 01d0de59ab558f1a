"""Jenkins queue items that no template serves, told to the operator: an item waiting on a
label expression (`maven && jdk17`, `maven || gradle`) that names a template's label is
never adopted (workers.engine.adoption makes an agent only for one label of a template), so it
waited for ever with nothing logged or shown. The reconcile pass, after the adoption, logs
each such item once (when first found) and keeps the list for the status page
(workers.adapters.unserved_store). Nothing is provisioned for them.
"""

import logging

from workers import runtime
from workers.adapters import unserved_store
from workers.core.jenkins_queue import items_waiting_on_expressions
from workers.core.ports import QueueItem
from workers.core.routing import BUILD_KEY_PARAMETER

log = logging.getLogger("ci_autoscaler.unserved")


def tell(rt: runtime.Runtime, queue: list[QueueItem], now: float) -> int:
    """Log the items newly found waiting on a label expression of ours, and keep the list
    of those waiting now; how many wait so."""
    labels = {label for t in rt.config.templates.values() for label in t.labels}
    found = items_waiting_on_expressions(queue, labels, skip_parameter=BUILD_KEY_PARAMETER)
    known = unserved_store.read(rt.state)
    if not found and not known:
        return 0  # the usual pass: one read
    current = {}
    for unserved in found:
        item, before = unserved.item, known.get(unserved.item.id)
        current[item.id] = {"job": item.job, "expression": unserved.expression,
                            "reason": unserved.reason,
                            "since": before.get("since", now) if before else now}
        if before is None:
            log.warning("queue item waits on a label expression no template serves",
                        extra={"queue_item": item.id, "job": item.job,
                               "expression": unserved.expression,
                               "labels": list(unserved.ours), "reason": unserved.reason})
    unserved_store.replace(rt.state, current)  # found again: its expiry renewed
    return len(current)
