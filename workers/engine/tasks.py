"""RQ tasks: provision an agent for a build, release it when the build ends (which re-drives
the builds waiting for capacity: workers.engine.redrive).

Every step is idempotent, keyed by the build key: a retried or duplicated job never makes a
second pod or a second Jenkins build. A build whose Jenkins job cannot take it (checked before
its first trigger, or refused by Jenkins) fails for good and leaves nothing behind (`refuse`).

A worker runs many of these at once (workers.concurrency.pool_worker), and within one, calls
that do not depend on each other run side by side (workers.concurrency.side): the pod's create
and the build's trigger, a release's pod and Jenkins node deletes, a re-drive's builds. A
status written after such calls only moves the build forward: one that finished, or whose
Jenkins build started, meanwhile keeps its status (RedisState.advance_build).

The tasks live in modules named for what they hold: workers.engine.provision (the task),
provision_held (its steps under the lease), provision_outcomes (its ends other than a placed
pod), provision_lease, provision_queue, pod_marks, build_trigger, release and engine_metrics.
This module keeps every name it held importable: RQ jobs already in Redis name
`workers.engine.tasks.*` (and workers/tasks.py re-exports from here), and other modules and
tests use these names.
"""

from typing import Any

from workers.engine.build_trigger import SESSION_MAX_AGE_SECONDS, _trigger_once
from workers.engine.engine_metrics import engine_metrics
from workers.engine.pod_marks import (_PLACED_MARKS, _POD_MARKS, _SIZE_MARKS, POD_ATTEMPTED,
                                      POD_PLANNED)
from workers.engine.provision import _note_jenkins_wait, _provision, log, provision_agent
from workers.engine.provision_held import TemplateGone, _provision_held
from workers.engine.provision_lease import BeingProvisioned, lease_key, provision_lease
from workers.engine.provision_outcomes import (_adopted, _agent_refused, _ended_meanwhile,
                                               _name_taken, _park_quieting, _quota_reason,
                                               _refused_pod, _sized_anew, _unreserve,
                                               _wait_for_quota)
from workers.engine.provision_queue import PROVISION_TASK, queue_provision
from workers.engine.release import (JOB_REFUSED, _current_agent, delete_node_or_leave, refuse,
                                    release, release_agent)

__all__ = [
    "PROVISION_TASK", "SESSION_MAX_AGE_SECONDS", "JOB_REFUSED", "POD_ATTEMPTED", "POD_PLANNED",
    "_POD_MARKS", "_PLACED_MARKS", "_SIZE_MARKS", "BeingProvisioned", "TemplateGone", "log",
    "engine_metrics", "provision_agent", "queue_provision", "lease_key", "provision_lease",
    "_provision", "_note_jenkins_wait", "_provision_held", "_park_quieting", "_sized_anew",
    "_refused_pod", "_agent_refused", "_name_taken", "_ended_meanwhile", "_adopted",
    "_wait_for_quota", "_quota_reason", "_unreserve", "_trigger_once", "refuse", "release_agent",
    "_current_agent", "delete_node_or_leave", "release", "redrive_waiting",
]


def redrive_waiting(**newer: Any) -> dict[str, int]:
    """The re-drive's RQ task under the dotted name it has always been queued by
    (workers.engine.redrive.REDRIVE_TASK): jobs queued before an upgrade, and by workers of the
    previous release during a rolling one, run it. The re-drive lives in workers.engine.redrive."""
    from workers.engine import redrive  # it imports this module
    return redrive.redrive_waiting(**newer)
