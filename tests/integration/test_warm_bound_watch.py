"""What the claim and the pool read of the worker's watched cache (workers.adapters.kube_snapshot),
on kmock over HTTP: which pods are being deleted (deletionTimestamp set), from the first list
and from events, until the pod is gone; and since when a node is not Ready (its Ready
condition's lastTransitionTime)."""

import time
from collections.abc import Callable

import pytest

from tests.support.kmock_cluster import KubeServer
from tests.support.monitoring import wait_until
from workers.adapters.kube_snapshot import ClusterWatch

NS = "ci-agents"


@pytest.fixture
def watch(kube: KubeServer):
    watches: list[ClusterWatch] = []

    def start() -> ClusterWatch:
        made = ClusterWatch(api_client=kube.api_client(service_account=NS),
                            metrics_interval_seconds=0.1)
        watches.append(made)
        made.start()
        assert made.wait_synced(5)
        return made
    yield start
    for made in watches:
        made.stop()


def test_pods_being_deleted_are_known_from_the_list_and_from_events_until_gone(
        kube, watch: Callable[[], ClusterWatch]):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    for name in ("listed", "evented", "fine"):
        kube.add_pod(NS, name, node="node-a")
    kube.delete_held_by_finalizer(NS, "listed")  # Terminating before the first list
    cache = watch()
    names = ["listed", "evented", "fine", "unknown"]
    assert cache.deleting(NS, names) == {"listed"}
    assert cache.deleting("elsewhere", names) == frozenset()

    kube.hold_deletions("node-a")  # the kubelet still stops its containers: Terminating
    kube.delete_pod(NS, "evented")
    wait_until(lambda: cache.deleting(NS, names) == {"listed", "evented"}, timeout=5,
               what="the MODIFIED event with the deletionTimestamp")
    kube.kubelet_confirms_deletion(NS, "evented")
    wait_until(lambda: cache.deleting(NS, names) == {"listed"}, timeout=5,
               what="the DELETED event")


def test_a_not_ready_node_carries_since_when_from_its_ready_condition(
        kube, watch: Callable[[], ClusterWatch]):
    kube.add_node("node-a")
    kube.add_node("node-b", ready=False)  # no lastTransitionTime told
    cache = watch()
    states = {n.name: n for n in cache.snapshot()}
    assert states["node-a"].not_ready_since is None and states["node-b"].not_ready_since is None

    since = int(time.time()) - 30
    kube.patch_node("node-a", {"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "KubeletNotReady",
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))}]}})
    wait_until(lambda: {n.name: n for n in cache.snapshot()}["node-a"].not_ready_since == since,
               timeout=5, what="node-a NotReady since then")
    assert not {n.name: n for n in cache.snapshot()}["node-a"].ready


def test_pods_gone_or_ended_are_known_from_the_list_and_from_events(
        kube, watch: Callable[[], ClusterWatch]):
    """A pod deleted (DELETED) or ended (phase Failed: an eviction under node pressure,
    pkg/kubelet/eviction) is gone, as is one never seen; one Pending unbound, or running, is
    not."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    for name in ("running", "evicted", "deleted"):
        kube.add_pod(NS, name, node="node-a")
    kube.add_pod(NS, "pending", phase="Pending")  # not bound yet: not gone either
    kube.evict(NS, "evicted")
    cache = watch()
    names = ["running", "evicted", "deleted", "pending", "never-made"]
    assert cache.gone(NS, names) == {"evicted", "never-made"}

    kube.delete_pod(NS, "deleted")
    wait_until(lambda: cache.gone(NS, names) == {"evicted", "deleted", "never-made"},
               timeout=5, what="the DELETED event")
    kube.evict(NS, "running")
    wait_until(lambda: cache.gone(NS, names) == {"running", "evicted", "deleted", "never-made"},
               timeout=5, what="the MODIFIED event with phase Failed")
    assert "pending" not in cache.gone(NS, names)
