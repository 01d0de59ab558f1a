"""What an RQ task does with arguments from another release, during a rolling upgrade.

The chart replaces web, worker and reconcile pods one at a time, so for minutes a worker of
one release runs jobs a process of the other queued (a job names its task by dotted path
and holds its keyword arguments as JSON: workers.adapters.redis_state.SERIALIZER). The rule
(README "Development", held by tests/integration/test_task_signatures.py against the recorded
signatures in tests/fixtures/task_signatures.json):
- a task keeps its dotted name (a moved task leaves an alias under the old one) and every
  parameter a running release may send;
- a new parameter is a keyword with a default, and a caller sends it only when its value
  is not that default, so the previous release's worker runs the common case;
- a task takes the keyword arguments it does not know (``**newer``: a newer release's) and
  runs without them, as it did before they existed; `ignored` logs their names once.
"""

import logging
import threading
from typing import Any

log = logging.getLogger("ci_autoscaler.task_args")
_seen: set[tuple[str, frozenset[str]]] = set()
_seen_lock = threading.Lock()  # a PoolWorker runs jobs on threads (workers.concurrency)


def ignored(task: str, newer: dict[str, Any]) -> None:
    """Note that `task` runs without these arguments (a newer release's): a warning the first
    time this process sees them for this task. Only their names are logged: a value may be
    anything (an error text, a notification), secrets included."""
    if not newer:
        return
    names = frozenset(newer)
    with _seen_lock:
        if (task, names) in _seen:
            return
        _seen.add((task, names))
    log.warning("job from a newer release: arguments this release does not know ignored",
                extra={"task": task, "arguments": sorted(names)})


def given(**flags: Any) -> dict[str, Any]:
    """The keyword arguments added to a task since the previous release, only those whose
    value is not their default (False, None, empty): a job without them is one the previous
    release's worker runs too (a TypeError there lost the job, and the build's failure)."""
    return {name: value for name, value in flags.items() if value}
