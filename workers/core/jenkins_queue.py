"""Reading the Jenkins build queue: which label an item waits for, from Jenkins' own words.

The queue API gives no label field; the reason an item waits (``why``) names it between
Jenkins' typographic quotes, in messages such as (hudson.model.Messages, core 2.x):
  "There are no nodes with the label ‘maven’"
  "Waiting for next available executor on ‘maven’"
  "All nodes of label ‘maven’ are offline"
  "‘maven-1’ is offline"
  "Jenkins doesn’t have label ‘maven’"
The quoted text is a label expression; it is taken only when it is exactly one of our
templates' labels, so a build for someone else's agents is never picked up.
"""

import re
from collections.abc import Iterable

from workers.core.ports import QueueItem

_QUOTED = re.compile(r"‘([^’]+)’")


def waiting_label(why: str, labels: Iterable[str]) -> str | None:
    """The one of `labels` that this queue item's reason names, if any."""
    wanted = set(labels)
    for quoted in _QUOTED.findall(why or ""):
        if quoted.strip() in wanted:
            return quoted.strip()
    return None


def items_waiting_on(items: Iterable[QueueItem], labels: Iterable[str], *,
                     skip_parameter: str) -> list[tuple[QueueItem, str]]:
    """The queue items that wait on one of our labels and were not triggered by us (ours carry
    `skip_parameter` and get their agent from the provision task), with the label each waits on;
    oldest item first."""
    labels = tuple(labels)
    found = []
    for item in sorted(items, key=lambda i: i.id):
        if skip_parameter in item.parameters:
            continue
        label = waiting_label(item.why, labels)
        if label is not None:
            found.append((item, label))
    return found
