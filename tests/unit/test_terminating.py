"""When a pod of ours stuck Terminating may be force-deleted (workers.core.terminating), and
how such a pod is read and counted (workers.adapters.kube_objects)."""

import pytest

from workers.adapters.kube_objects import pod_info, pod_record
from workers.core.cluster import NodeState, Resources
from workers.core.ports import PodInfo
from workers.core.terminating import STUCK_MARGIN_SECONDS, Stuck, stuck

DUE = 1_000_000.0  # deletionTimestamp: the DELETE's time plus the grace period
LATE = DUE + STUCK_MARGIN_SECONDS + 1
NODES = {"ready": NodeState("ready", Resources(4000, 2**34)),
         "down": NodeState("down", Resources(4000, 2**34), ready=False)}


def pod(node: str | None = "down", *, deleting: bool = True,
        due: float | None = DUE) -> PodInfo:
    return PodInfo(name="cia-build-1", phase="Running", node=node, deleting=deleting,
                   deletion_due=due if deleting else None)


@pytest.mark.parametrize("case, now, expected", [
    (pod(), LATE, Stuck.NODE_NOT_READY),
    (pod("gone"), LATE, Stuck.NODE_GONE),
    (pod(), DUE - 1, None),  # its grace period runs
    (pod(), DUE + STUCK_MARGIN_SECONDS - 1, None),  # within the margin after it
    (pod("ready"), LATE + 86400, None),  # its kubelet is stopping it: waited for
    (pod(deleting=False), LATE, None),  # a live pod is never force-deleted
    (pod(due=None), LATE, None),  # no deletionTimestamp read: not known how long
    (pod(None), LATE, None),  # not bound: the API server removes it at once
])
def test_a_terminating_pod_is_stuck_only_past_grace_and_margin_on_a_node_not_ready(
        case, now, expected):
    assert stuck(case, NODES, now) == expected


def terminating_pod() -> dict:
    return {"metadata": {"name": "cia-build-1", "deletionTimestamp": "2026-01-01T00:00:30Z",
                         "deletionGracePeriodSeconds": 30},
            "spec": {"nodeName": "down", "containers": [
                {"name": "jnlp", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"phase": "Running"}}


def test_a_terminating_pod_is_read_with_when_its_grace_period_ends():
    info = pod_info(terminating_pod())
    assert info.deleting and info.deletion_due == 1767225630.0


def test_a_terminating_pod_still_counts_on_its_node_as_kube_scheduler_counts_it():
    # kube-scheduler's cache drops a pod on its informer's delete only (pkg/scheduler/
    # eventhandlers.go deletePodFromCache): one with a deletionTimestamp holds its requests
    # until the API server removes it.
    record = pod_record(terminating_pod())
    assert record is not None and record[0] == "down"
    assert record[1] == Resources(1000, 2**30)
