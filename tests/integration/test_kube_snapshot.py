"""ClusterWatch against kmock's Kubernetes emulator over real HTTP, through the official client.

The emulator fills in no resourceVersion and replays every stored object as ADDED when a watch
starts; a change made with a ``kube`` helper that goes through the API reaches open watches as an
event, one stored directly (``add_pod``, ``add_node``) does not. Changes after start() are awaited
by polling snapshot() against a deadline.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import kubernetes
import pytest

from tests.support.kmock_cluster import NODES, PODS, KubeServer, node_object, terminated
from workers.adapters.kube_objects import effective_request, pod_info
from workers.adapters.kube_snapshot import ClusterWatch
from workers.core.capacity import WaitingBuild, capacity_state
from workers.core.cluster import NodeState, Resources, Taint
from workers.core.errors import RetryableError
from workers.core.fit import Limits
from workers.core.models import CpuRange, MemoryRange, PodTemplate, Toleration
from workers.core.placement import (Placement, capacity_left, decide, free,
                                     reservation_room)
from workers.core.placement_index import node_row
from workers.core.ports import ContainerPhase, PodInfo
from workers.core.pods import (BUILD_KEY_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEMPLATE_LABEL,
                               RETAINED, RETAINED_LABEL, WARM_IDLE, WARM_LABEL)
from workers.core.sizing import template_min

NS, OTHER_NS = "ci-agents", "team-b"
GI, MI = 2**30, 2**20
METRICS_PATH = "/apis/metrics.k8s.io/v1beta1/nodes"
T = TypeVar("T")


def ours(build_key: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY_VALUE, BUILD_KEY_LABEL: build_key}


def by_name(states: list[NodeState]) -> dict[str, NodeState]:
    return {s.name: s for s in states}


def eventually(read: Callable[[], T], ok: Callable[[T], bool], timeout: float = 5.0) -> T:
    """Poll read() until ok(value) or the deadline; the last value either way."""
    deadline = time.monotonic() + timeout
    while not ok(value := read()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def lists_of(kube: KubeServer, path: str) -> int:
    """LIST requests (not watches) the server saw for a collection path."""
    return sum(1 for r in kube.requests()
               if r.split("?")[0] == f"GET {path}" and "watch=true" not in r)


@pytest.fixture
def watching(kube: KubeServer) -> Iterator[Callable[..., ClusterWatch]]:
    """Start a ClusterWatch on the server (metrics every 0.1 s) and await its first sync, as
    the chart's ServiceAccount: a call its RBAC does not grant fails the test (kube fixture)."""
    started: list[ClusterWatch] = []

    def start(**kwargs) -> ClusterWatch:
        watch = ClusterWatch(api_client=kube.api_client(service_account=NS),
                             **{"metrics_interval_seconds": 0.1, **kwargs})
        started.append(watch)
        watch.start()
        assert watch.wait_synced(5)
        return watch
    yield start
    for watch in started:
        watch.stop()


def test_requested_sums_every_pod_bound_to_a_node_ours_or_not_in_any_namespace(kube, watching):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    kube.add_node("node-b", cpu="4", memory="16Gi")
    kube.add_pod(NS, "agent-1", node="node-a", labels=ours("k1"),
                 requests=[{"cpu": "1500m", "memory": "3Gi"}])
    kube.add_pod(OTHER_NS, "db", node="node-a", requests=[{"cpu": "250m", "memory": "512Mi"}])
    kube.add_pod("kube-system", "proxy", node="node-b",
                 requests=[{"cpu": "100m", "memory": "64Mi"}, {"cpu": "1", "memory": "1Gi"}])

    watch = watching()
    nodes = by_name(watch.snapshot())

    assert list(nodes) == ["node-a", "node-b"]
    assert nodes["node-a"].allocatable == Resources(8000, 32 * GI)
    assert nodes["node-a"].requested == Resources(1750, 3 * GI + 512 * MI)
    assert nodes["node-b"].requested == Resources(1100, GI + 64 * MI)
    assert nodes["node-a"].in_flight == Resources()
    assert (watch.pods_on("node-a"), watch.pods_on("node-b"), watch.pods_on("none")) == (2, 1, 0)


def test_terminated_and_unbound_pods_take_no_room_but_pending_bound_ones_do(kube, watching):
    kube.add_node("node-a")
    for name, node, phase in [("done", "node-a", "Succeeded"), ("crashed", "node-a", "Failed"),
                              ("unscheduled", None, "Pending"),
                              ("starting", "node-a", "Pending"), ("no-status", "node-a", None)]:
        kube.add_pod(OTHER_NS, name, node=node, phase=phase,
                     requests=[{"cpu": "1", "memory": "1Gi"}])

    [node] = watching().snapshot()

    assert node.requested == Resources(2000, 2 * GI)  # starting + no-status


def test_a_pod_counts_the_larger_of_containers_and_init_containers_plus_overhead(
        kube, watching):
    kube.add_node("node-a")
    kube.add_pod(OTHER_NS, "init-heavy-cpu", node="node-a",
                 requests=[{"cpu": "100m", "memory": "1Gi"}, {"cpu": "200m", "memory": "1Gi"}],
                 init_requests=[{"cpu": "500m", "memory": "256Mi"}, {"cpu": "50m"}],
                 overhead={"cpu": "50m", "memory": "64Mi"})

    [node] = watching().snapshot()

    # cpu: max(100m + 200m, 500m) + 50m; memory: max(2Gi, 256Mi) + 64Mi
    assert node.requested == Resources(550, 2 * GI + 64 * MI)


def test_sidecars_add_to_the_containers_and_pod_level_requests_win():
    def c(cpu: str, **extra) -> dict:
        return {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "0"}}, **extra}

    with_sidecar = {"initContainers": [c("300m", restartPolicy="Always"), c("1")],
                    "containers": [c("200m")]}
    # app + sidecar = 500m; the init container starts after the sidecar: 300m + 1000m
    assert effective_request(with_sidecar) == Resources(1300, 0)
    pod_level = {"containers": [c("200m")], "resources": {"requests": {"cpu": "2"}}}
    assert effective_request(pod_level) == Resources(2000, 0)
    only_limits = {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}
    assert effective_request(only_limits) == Resources(1000, 0)  # requests default to limits


def test_pods_of_excluded_build_keys_are_left_out_and_the_cache_is_untouched(kube, watching):
    kube.add_node("node-a")
    kube.add_node("node-b")
    kube.add_pod(NS, "agent-1", node="node-a", labels=ours("k1"), requests=[{"cpu": "1"}])
    kube.add_pod(NS, "agent-2", node="node-b", labels=ours("k2"), requests=[{"cpu": "2"}])
    kube.add_pod(OTHER_NS, "app", node="node-a", requests=[{"cpu": "500m"}])
    watch = watching()

    excluded = by_name(watch.snapshot(exclude_build_keys=frozenset({"k1", "unknown"})))
    full = by_name(watch.snapshot())

    assert excluded["node-a"].requested.cpu_millis == 500
    assert excluded["node-b"].requested.cpu_millis == 2000
    assert full["node-a"].requested.cpu_millis == 1500


def test_cordoned_not_ready_and_tainted_nodes_are_reflected(kube, watching):
    kube.add_node("cordoned", unschedulable=True, labels={"pool": "ci"})
    kube.add_node("down", ready=False)
    kube.add_node("spot", taints=[{"key": "spot", "value": "yes", "effect": "NoSchedule"},
                                  {"key": "gpu", "effect": "NoExecute"}])

    nodes = by_name(watching().snapshot())

    assert (nodes["cordoned"].unschedulable, nodes["cordoned"].ready) == (True, True)
    assert nodes["cordoned"].labels["pool"] == "ci"
    assert nodes["cordoned"].hostname == "cordoned"
    assert (nodes["down"].unschedulable, nodes["down"].ready) == (False, False)
    assert nodes["spot"].taints == (Taint("spot", "NoSchedule", "yes"),
                                    Taint("gpu", "NoExecute", None))


def test_a_node_cordoned_after_start_shows_by_watch_without_a_new_list(kube, watching):
    kube.add_node("node-a")
    watch = watching()
    lists = lists_of(kube, "/api/v1/nodes")

    kube.patch_node("node-a", {"spec": {"unschedulable": True}})

    [node] = eventually(watch.snapshot, lambda s: s[0].unschedulable)
    assert node.unschedulable
    assert lists_of(kube, "/api/v1/nodes") == lists


def test_a_node_s_kubelet_reporting_disk_pressure_takes_no_build_once_the_watch_sees_it(
        kube, watching):
    """The kubelet sets DiskPressure in the node's status (kubelet nodestatus setters): the
    next decision leaves the idlest node out, though the template tolerates every taint, and
    takes it again once the condition clears."""
    for name in ("node-a", "node-b"):
        kube.add_node(name, cpu="8", memory="32Gi")
    kube.add_pod(OTHER_NS, "busy", node="node-b", requests=[{"cpu": "4"}])
    watch = watching()
    anywhere = PodTemplate(cpu=CpuRange(min="500m", default="500m", max="500m"),
                           memory=MemoryRange(min=GI, default=GI, max=GI),
                           tolerations=[Toleration(operator="Exists")])
    assert watch.decide(anywhere, reserved={})[0].node == "node-a"

    def conditions(disk: str) -> dict:
        return {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                          {"type": "DiskPressure", "status": disk}]}}
    kube.patch_node("node-a", conditions("True"))
    eventually(lambda: watch.decide(anywhere, reserved={})[0].node, lambda n: n == "node-b")
    assert watch.decide(anywhere, reserved={})[0].node == "node-b"
    kube.patch_node("node-a", conditions("False"))
    eventually(lambda: watch.decide(anywhere, reserved={})[0].node, lambda n: n == "node-a")
    assert watch.decide(anywhere, reserved={})[0].node == "node-a"


def test_usage_comes_from_metrics_k8s_io_and_is_none_for_a_node_without_a_sample(
        kube, watching):
    kube.add_node("node-a")
    kube.add_node("node-b")
    kube.set_node_usage("node-a", cpu="1250m", memory="2Gi")
    # Memory is what the node's pods use beyond their requests (placement adds the requests):
    # not the node's working set, which counts system daemons and page cache (issue 18).
    kube.add_pod(NS, "over", node="node-a", requests=[{"cpu": "100m", "memory": "256Mi"}])
    kube.add_pod(NS, "under", node="node-a", requests=[{"cpu": "100m", "memory": "512Mi"}])
    kube.add_pod(NS, "unsampled", node="node-a", requests=[{"cpu": "100m", "memory": "64Mi"}])
    kube.set_pod_usage(NS, "over", cpu="100m", memory="768Mi")
    kube.set_pod_usage(NS, "under", cpu="100m", memory="100Mi")

    watch = watching(clock=lambda: 1234.5)
    nodes = by_name(eventually(watch.snapshot, lambda s: s[0].usage is not None))

    assert nodes["node-a"].usage == Resources(1250, (768 - 256) * MI)
    assert nodes["node-b"].usage is None
    assert (watch.metrics_available, watch.usage_sampled_at) == (True, 1234.5)

    kube.set_node_usage("node-b", cpu="300000000n", memory="1024Ki")  # the next poll sees it
    nodes = by_name(eventually(watch.snapshot, lambda s: s[1].usage is not None))
    assert nodes["node-b"].usage == Resources(300, 0)  # no pods: none beyond requests


def test_without_pod_metrics_node_memory_leaves_out_what_allocatable_excludes(
        kube, watching):
    node = node_object("node-a", cpu="4", memory="15Gi")
    node["status"]["capacity"]["memory"] = "16Gi"  # 1Gi kept for the system
    kube._put(NODES, None, "node-a", node)
    kube.add_pod(NS, "p", node="node-a", requests=[{"cpu": "100m", "memory": "3Gi"}])
    kube.set_node_usage("node-a", cpu="1", memory="5Gi")
    kube.fail("GET", POD_METRICS_PATH, status=403, reason="Forbidden")
    watch = watching()
    [state] = eventually(watch.snapshot, lambda s: s[0].usage is not None)
    assert state.reserved == Resources(0, GI)
    # 5Gi working set - 1Gi reserved - 3Gi requested: 1Gi beyond the requests
    assert state.usage == Resources(1000, GI)


@pytest.mark.parametrize("outage", ["not-served", "503"])
def test_without_metrics_usage_is_none_everywhere_and_it_warns_once(
        kube, watching, caplog, outage):
    kube.add_node("node-a")
    kube.set_node_usage("node-a", cpu="1", memory="1Gi")
    if outage == "not-served":
        kube.remove_node_metrics()
    else:
        kube.fail("GET", METRICS_PATH, status=503, reason="ServiceUnavailable")
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.snapshot")

    watch = watching()
    eventually(lambda: sum(r.startswith(f"GET {METRICS_PATH}") for r in kube.requests()),
               lambda polls: polls >= 3)

    [node] = watch.snapshot()
    assert node.usage is None
    assert (watch.metrics_available, watch.usage_sampled_at) == (False, None)
    warnings = [r for r in caplog.records if r.name == "ci_autoscaler.snapshot"]
    assert len(warnings) == 1
    assert "metrics.k8s.io unavailable" in warnings[0].getMessage()
    assert ("404" if outage == "not-served" else "503") in warnings[0].getMessage()


def test_usage_is_dropped_when_metrics_go_away_after_start(kube, watching):
    kube.add_node("node-a")
    kube.set_node_usage("node-a", cpu="1", memory="1Gi")
    watch = watching()
    assert watch.snapshot()[0].usage is not None

    kube.remove_node_metrics()

    [node] = eventually(watch.snapshot, lambda s: s[0].usage is None)
    assert node.usage is None
    assert not watch.metrics_available


def test_a_pod_created_after_start_is_in_the_next_snapshot_without_a_new_list(kube, watching):
    kube.add_node("node-a")
    watch = watching()
    lists = lists_of(kube, "/api/v1/pods")

    kube.create_pod(OTHER_NS, "late", node="node-a", requests=[{"cpu": "750m", "memory": "1Gi"}])

    [node] = eventually(watch.snapshot, lambda s: s[0].requested.cpu_millis == 750)
    assert node.requested == Resources(750, GI)
    assert lists_of(kube, "/api/v1/pods") == lists


def test_a_pod_deleted_after_start_is_gone_from_the_next_snapshot_without_a_new_list(
        kube, watching):
    kube.add_node("node-a")
    kube.add_pod(OTHER_NS, "leaving", node="node-a", requests=[{"cpu": "750m"}])
    watch = watching()
    assert watch.snapshot()[0].requested.cpu_millis == 750
    lists = lists_of(kube, "/api/v1/pods")

    kube.delete_pod(OTHER_NS, "leaving")

    [node] = eventually(watch.snapshot, lambda s: s[0].requested.cpu_millis == 0)
    assert node.requested == Resources()
    assert watch.pods_on("node-a") == 0
    assert lists_of(kube, "/api/v1/pods") == lists


def test_daemon_requests_are_the_commonest_daemonset_sum_over_ready_nodes_kept_by_watch(
        kube, watching):
    """What a node joining holds before our builds (nodes_needed's fresh room): the
    DaemonSets' pods on a typical Ready node; a Deployment's pod is not one, a NotReady
    node's count not, and a DaemonSet pod deleted (a DaemonSet removed) leaves the sum."""
    for name in ("a", "b", "c"):
        kube.add_node(name)
        kube.add_pod("kube-system", f"proxy-{name}", node=name, daemon_set="kube-proxy",
                     requests=[{"cpu": "300m", "memory": "128Mi"}])
    kube.add_node("sick", ready=False)
    kube.add_pod("kube-system", "proxy-sick", node="sick", daemon_set="kube-proxy",
                 requests=[{"cpu": "2", "memory": "1Gi"}])
    kube.add_pod("kube-system", "exporter-a", node="a", daemon_set="gpu-exporter",
                 requests=[{"cpu": "1", "memory": "1Gi"}])
    kube.add_pod(OTHER_NS, "web", node="b", requests=[{"cpu": "3"}])
    watch = watching()
    assert watch.daemon_requests() == Resources(300, 128 * MI)

    for name in ("a", "b", "c"):
        kube.delete_pod("kube-system", f"proxy-{name}")

    eventually(watch.daemon_requests, lambda r: r == Resources())
    assert watch.daemon_requests() == Resources()


def test_daemon_requests_count_static_pods_and_leave_out_daemon_pods_being_deleted(
        kube, watching):
    """A node joining runs the static pods its kubelet reads from disk as well as the
    DaemonSets' (GKE's kube-proxy is a static pod on every node; the API shows its mirror,
    owned by the Node), and not a DaemonSet's pods being deleted: Cluster Autoscaler's
    template node holds the example node's mirror and DaemonSet pods but those with a
    deletionTimestamp (simulator/node_info_utils.go, podsExpectedOnFreshNode)."""
    for name in ("a", "b", "c"):
        kube.add_node(name)
        kube.add_pod("kube-system", f"kube-proxy-{name}", node=name, mirror=True,
                     requests=[{"cpu": "100m"}])
        kube.add_pod("logging", f"fluent-bit-{name}", node=name, daemon_set="fluent-bit",
                     requests=[{"cpu": "200m", "memory": "128Mi"}])
    watch = watching()
    assert watch.daemon_requests() == Resources(300, 128 * MI)

    for name in ("a", "b", "c"):  # the DaemonSet deleted: its pods Terminating
        kube.delete_held_by_finalizer("logging", f"fluent-bit-{name}")

    eventually(watch.daemon_requests, lambda r: r == Resources(100, 0))
    assert watch.daemon_requests() == Resources(100, 0)


def test_daemon_requests_are_those_of_the_nodes_the_waiting_templates_may_use(
        kube, watching):
    """A shared cluster: three app nodes run a monitoring agent (a DaemonSet that tolerates
    no taint), two tainted CI nodes do not (the DaemonSet controller places a pod only where
    its tolerations and nodeSelector allow: pkg/controller/daemon NodeShouldRunDaemonPod);
    kube-proxy runs on all. The node added for CI builds is a CI node, as the reference
    shape is taken from the nodes the templates may use (capacity.reference_shape): its
    DaemonSets are the CI nodes', not the app nodes' that outnumber them; every Ready node's
    when no template may use any."""
    taint = {"key": "ci", "value": "true", "effect": "NoSchedule"}
    for name in ("app-a", "app-b", "app-c", "ci-a", "ci-b"):
        ci = name.startswith("ci-")
        kube.add_node(name, labels={"pool": "ci" if ci else "app"},
                      taints=[taint] if ci else [])
        kube.add_pod("kube-system", f"kube-proxy-{name}", node=name, daemon_set="kube-proxy",
                     requests=[{"cpu": "100m", "memory": "64Mi"}])
        if not ci:
            kube.add_pod("monitoring", f"agent-{name}", node=name, daemon_set="agent",
                         requests=[{"cpu": "500m", "memory": "512Mi"}])
    watch = watching()
    ci_builds = PodTemplate(cpu=CpuRange(min="1", default="1", max="1"),
                            memory=MemoryRange(min=GI, default=GI, max=GI),
                            node_selector={"pool": "ci"},
                            tolerations=[Toleration(key="ci", operator="Equal", value="true",
                                                    effect="NoSchedule")])
    assert watch.daemon_requests([ci_builds]) == Resources(100, 64 * MI)
    nowhere = PodTemplate(cpu=CpuRange(min="1", default="1", max="1"),
                          memory=MemoryRange(min=GI, default=GI, max=GI),
                          node_selector={"pool": "gpu"})
    assert watch.daemon_requests([nowhere]) == Resources(600, 576 * MI)
    assert watch.daemon_requests() == Resources(600, 576 * MI)


def test_a_node_added_has_the_daemonsets_and_pod_slots_of_the_nodes_of_its_shape(
        kube, watching):
    """A mixed pool: three general nodes (4 cores, max-pods 17, as an EKS t3.medium's ENIs
    allow) run kube-proxy; two storage nodes of 8 cores and two of 16 run a local-disk
    provisioner too (a DaemonSet whose nodeSelector is the instance family: the DaemonSet
    controller places a pod only where it matches, pkg/controller/daemon
    NodeShouldRunDaemonPod). The node added is of the commonest shape, the general one:
    its DaemonSets and pod slots are those of that shape's nodes, not the storage nodes'
    sum that outnumbers them (taken apart from the shape, 600m went with a 4-core node);
    a shape from config that no node has: the commonest requests over every node, its pod
    slots not known."""
    for name, cpu, storage in (("g-a", "4", False), ("g-b", "4", False), ("g-c", "4", False),
                               ("s-a", "8", True), ("s-b", "8", True),
                               ("s-c", "16", True), ("s-d", "16", True)):
        kube.add_node(name, cpu=cpu, memory="16Gi", pods="17")
        kube.add_pod("kube-system", f"kube-proxy-{name}", node=name, daemon_set="kube-proxy",
                     requests=[{"cpu": "100m", "memory": "64Mi"}])
        if storage:
            for ds in ("local-volume-provisioner", "node-exporter-nvme"):
                kube.add_pod("storage", f"{ds}-{name}", node=name, daemon_set=ds,
                             requests=[{"cpu": "250m", "memory": "128Mi"}])
    watch = watching()
    builds = PodTemplate(cpu=CpuRange(min="1", default="1", max="1"),
                         memory=MemoryRange(min=GI, default=GI, max=GI))
    assert watch.daemon_requests([builds]) == Resources(100, 64 * MI)
    assert watch.fresh_node([builds]) == (Resources(4000, 16 * GI), Resources(100, 64 * MI),
                                          Limits(pods=16))
    # (the pod limit of a shape no node has is not known: a bigger type has more max-pods)
    assert watch.fresh_node([builds], Resources(32000, 64 * GI)) == (
        Resources(32000, 64 * GI), Resources(600, 320 * MI), None)


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-410"])
def test_after_410_gone_it_relists_and_forgets_pods_deleted_meanwhile(kube, watching, as_status):
    kube.add_node("node-a")
    kube.add_pod(OTHER_NS, "stays", node="node-a", requests=[{"cpu": "1"}])
    kube.add_pod(OTHER_NS, "vanishes", node="node-a", requests=[{"cpu": "2"}])
    kube.expire_next_watch(PODS, as_status=as_status, gone_meanwhile=[(OTHER_NS, "vanishes")])

    watch = watching()

    # No DELETED event ever comes for "vanishes": only the second list can drop it.
    [node] = eventually(watch.snapshot, lambda s: s[0].requested.cpu_millis == 1000)
    assert node.requested.cpu_millis == 1000
    assert lists_of(kube, "/api/v1/pods") == 2


def watches_of(kube: KubeServer, path: str) -> list[str]:
    return [r for r in kube.requests() if r.split("?")[0] == f"GET {path}" and "watch=true" in r]


def test_a_bookmark_is_no_pod_and_the_next_watch_resumes_from_its_version(kube, watching):
    """The API server sends a watch that asked for bookmarks a BOOKMARK now and then: a Pod
    holding only metadata.resourceVersion (REALITY.md "Watches"). It is where to resume from,
    never a pod: no phantom pod counts on a node, and the next watch starts at its version
    without a relist."""
    kube.add_node("node-a")
    kube.add_pod(OTHER_NS, "runs", node="node-a", requests=[{"cpu": "1"}])
    kube.bookmark_next_watch(PODS, "Pod", "12746")

    watch = watching(watch_timeout_seconds=0.5)

    watches = eventually(lambda: watches_of(kube, "/api/v1/pods"), lambda w: len(w) >= 2)
    # the API server sends bookmarks only to a watch that asked for them
    assert "allowWatchBookmarks=true" in watches[0], watches
    assert "resourceVersion=12746" in watches[1], watches
    assert lists_of(kube, "/api/v1/pods") == 1
    [node] = watch.snapshot()
    assert node.requested.cpu_millis == 1000
    assert watch.pods_on("node-a") == 1


def test_a_watch_that_ends_is_followed_by_a_watch_from_its_last_version_never_a_relist(
        kube, watching):
    """One list per worker process at start, then watches with bookmarks, each resuming from
    the resourceVersion the last one reached: at 150,000 pods a relist every watch timeout
    would be 300 pages every 5 minutes (bench/results/placement.md)."""
    kube.add_node("node-a")  # kmock ignores timeoutSeconds: only _request_timeout ends it

    watch = watching(watch_timeout_seconds=0.5)

    for path in ("/api/v1/nodes", "/api/v1/pods"):
        watches = eventually(lambda: watches_of(kube, path), lambda w: len(w) >= 3)
        assert len(watches) >= 3, path
        assert all("allowWatchBookmarks=true" in w and "resourceVersion=" in w
                   for w in watches), watches
        assert lists_of(kube, path) == 1
    kube.create_node("node-b")  # still followed, by the watch of the moment
    assert [n.name for n in eventually(watch.snapshot, lambda s: len(s) == 2)] == \
        ["node-a", "node-b"]


def test_a_failing_list_is_retried_and_logged_without_the_response_body(kube, watching, caplog):
    kube.add_node("node-a")
    kube.fail("GET", "/api/v1/nodes", status=500, reason="InternalError", times=1)
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.snapshot")

    watch = watching()

    assert [n.name for n in watch.snapshot()] == ["node-a"]
    [warning] = [r.getMessage() for r in caplog.records if "nodes" in r.getMessage()]
    assert "nodes: list failed: HTTP 500" in warning
    assert "injected" not in warning  # the Status body is not logged


def test_snapshot_before_the_first_list_raises_retryable_error(kube):
    watch = ClusterWatch(api_client=kube.api_client(service_account=NS))
    with pytest.raises(RetryableError, match="not listed yet"):
        watch.snapshot()


def test_stop_returns_promptly_though_watches_are_open_and_ends_every_thread(kube):
    kube.add_node("node-a")
    # 300 s watches, 15 s metrics
    with ClusterWatch(api_client=kube.api_client(service_account=NS)) as watch:
        assert watch.wait_synced(5)
        # Both watches are open and reading once an event came through each.
        kube.patch_node("node-a", {"spec": {"unschedulable": True}})
        kube.create_pod(OTHER_NS, "late", node="node-a", requests=[{"cpu": "1"}])
        [node] = eventually(watch.snapshot,
                            lambda s: s[0].unschedulable and s[0].requested.cpu_millis == 1000)
        assert node.unschedulable and node.requested.cpu_millis == 1000
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name.startswith("cluster-watch-")]


# -- decisions from the watch's placement index -------------------------------------------

TEMPLATES = [
    PodTemplate(),
    PodTemplate(cpu=CpuRange(min="500m", default="2", max="4"),
                memory=MemoryRange(min="1Gi", default="4Gi", max="8Gi"), cpu_limit_factor=1.0,
                node_selector={"pool": "ci"},
                tolerations=(Toleration(key="ci-only", operator="Exists"),)),
    PodTemplate(cpu=CpuRange(min="3", default="3", max="3"),
                memory=MemoryRange(min="1Gi", default="1Gi", max="1Gi")),
]


def observed(watch: ClusterWatch, reserved: dict[str, tuple[str, Resources]]) -> list[NodeState]:
    """What workers.engine.scheduling.observe makes of the snapshot and the reservations."""
    in_flight: dict[str, Resources] = {}
    for node, size in reserved.values():
        in_flight[node] = in_flight.get(node, Resources()) + size
    return [NodeState(**{**n.__dict__, "in_flight": in_flight.get(n.name, Resources())})
            for n in watch.snapshot(exclude_build_keys=frozenset(reserved))]


def assert_index_agrees(watch: ClusterWatch, reserved: dict[str, tuple[str, Resources]]) -> None:
    nodes = observed(watch, reserved)
    for template in TEMPLATES:
        for ahead, use in ((0, None), (7, None), (0, Resources(3500, GI))):
            decision, capacity = watch.decide(template, reserved=reserved, waiting_ahead=ahead,
                                              expected_use=use)
            assert decision == decide(template, nodes, waiting_ahead=ahead, expected_use=use)
            if isinstance(decision, Placement):
                [node] = [n for n in nodes if n.name == decision.node]
                # The room its reservation is checked against: capacity left by use, or for
                # an admission by requests (issue 18) the cpu requests' room.
                assert capacity == reservation_room(node, decision)
                if not decision.by_requests:  # (with the pods it may still take beside)
                    assert Resources(capacity.cpu_millis, capacity.memory_bytes) == \
                        capacity_left(node)
    waiting = [WaitingBuild(f"w{i}", t, template_min(t)) for i, t in enumerate(TEMPLATES * 3)]
    assert watch.capacity_state(waiting, reserved=reserved) == capacity_state(waiting, nodes)
    assert sorted(watch.node_rows(reserved=reserved)) == \
        sorted(node_row(n, free(n)) for n in nodes)


def test_decide_and_capacity_state_from_the_index_equal_the_reference_on_the_snapshot(
        kube, watching):
    kube.add_node("node-a", cpu="8", memory="32Gi", labels={"pool": "ci"})
    kube.add_node("node-b", cpu="4", memory="16Gi", labels={"pool": "ci"},
                  taints=[{"key": "ci-only", "effect": "NoSchedule"}])
    kube.add_node("node-c", cpu="16", memory="64Gi", labels={"pool": "general"})
    kube.add_node("node-d", cpu="8", memory="32Gi", labels={"pool": "ci"}, unschedulable=True)
    kube.add_pod(NS, "agent-1", node="node-a", labels=ours("k1"),
                 requests=[{"cpu": "2", "memory": "4Gi"}])
    kube.add_pod(NS, "agent-2", node="node-c", labels=ours("k2"),
                 requests=[{"cpu": "1", "memory": "1Gi"}])
    kube.add_pod(OTHER_NS, "db", node="node-b", requests=[{"cpu": "1500m", "memory": "6Gi"}])
    kube.set_node_usage("node-a", cpu="5", memory="8Gi")
    kube.set_node_usage("node-c", cpu="2", memory="50Gi")
    watch = watching()
    # k1's pod is left out of requested and counted in flight; k9 has no pod yet
    reserved = {"k1": ("node-a", Resources(3000, 4 * GI)), "k9": ("node-b", Resources(1000, GI))}

    assert_index_agrees(watch, reserved)
    assert_index_agrees(watch, {})

    # The index follows the watches: a pod, a cordon and new usage later, still the same.
    kube.create_pod(OTHER_NS, "late", node="node-c", requests=[{"cpu": "10", "memory": "8Gi"}])
    kube.patch_node("node-d", {"spec": {"unschedulable": False}})
    kube.set_node_usage("node-b", cpu="3", memory="1Gi")
    eventually(lambda: by_name(watch.snapshot()),
               lambda n: n["node-c"].requested.cpu_millis == 11000
               and not n["node-d"].unschedulable and n["node-b"].usage is not None)
    assert_index_agrees(watch, reserved)
    kube.delete_pod(OTHER_NS, "late")
    eventually(lambda: by_name(watch.snapshot()),
               lambda n: n["node-c"].requested.cpu_millis == 1000)
    assert_index_agrees(watch, reserved)


def test_decide_before_the_first_list_raises_retryable_error(kube):
    watch = ClusterWatch(api_client=kube.api_client(service_account=NS))
    with pytest.raises(RetryableError, match="not listed yet"):
        watch.decide(PodTemplate(), reserved={})


# -- our agents' usage, from PodMetrics --------------------------------------------------

POD_METRICS_PATH = "/apis/metrics.k8s.io/v1beta1/pods"  # every pod, in one list


def agent_labels(template: str, managed: bool = True) -> dict[str, str]:
    labels = {TEMPLATE_LABEL: template, BUILD_KEY_LABEL: "some-key"}
    return {**labels, MANAGED_BY_LABEL: MANAGED_BY_VALUE} if managed else labels


def test_expected_use_is_the_median_of_our_agents_pod_metrics_per_template(kube, watching):
    kube.add_node("node-a")
    for i, cores in enumerate(["2", "3", "3500m", "3", "2500m"]):  # median 3 cores
        kube.set_pod_usage(NS, f"agent-{i}", cpu=[cores, "10m"], memory=["1Gi", "100Mi"],
                           labels=agent_labels("small"))
    for i in range(6):  # labelled with our template, but not ours: never counted
        kube.set_pod_usage(NS, f"imposter-{i}", cpu="0", memory="1Mi",
                           labels=agent_labels("small", managed=False))
    for i in range(5):
        kube.set_pod_usage(NS, f"big-{i}", cpu="6", memory="12Gi", labels=agent_labels("big"))

    watch = watching(agent_namespace=NS)

    small = eventually(lambda: watch.expected_use("small"), lambda u: u is not None)
    assert small == Resources(3010, GI + 100 * MI)  # summed over the containers
    assert watch.expected_use("big") == Resources(6000, 12 * GI)
    assert watch.expected_use("unknown") is None
    assert any(r.startswith(f"GET {POD_METRICS_PATH}") for r in kube.requests())


def test_idle_warm_agents_do_not_pull_down_what_a_templates_builds_are_expected_to_use(
        kube, watching):
    """An idle warm agent's pod (workers.warm) carries its template's label and runs no build:
    its JVM waits, using next to nothing. Counted among the template's samples, a pool's
    idle agents dragged the median below what builds use (five builds at 3 cores beside six
    idle agents read 50m: the estimate placement spreads busy builds by fell back to their
    request), and a night of idle agents filled the window with them for the first builds of
    the morning. A claimed one runs its build and counts (its label "claimed")."""
    kube.add_node("node-a")
    for i in range(3):
        kube.set_pod_usage(NS, f"agent-{i}", cpu="3", memory="2Gi", labels=agent_labels("t"))
    for i in range(6):
        kube.set_pod_usage(NS, f"warm-{i}", cpu="50m", memory="200Mi",
                           labels={**agent_labels("t"), WARM_LABEL: WARM_IDLE})
    for i in range(2):  # claimed: their builds' use
        kube.set_pod_usage(NS, f"claimed-{i}", cpu="3", memory="2Gi",
                           labels={**agent_labels("t"), WARM_LABEL: "claimed"})
    watch = watching(agent_namespace=NS)

    assert eventually(lambda: watch.expected_use("t"), lambda u: u is not None) == \
        Resources(3000, 2 * GI)


def test_a_failed_builds_pod_kept_for_debugging_is_no_sample_of_what_builds_use(
        kube, watching):
    """A pod kept by podRetention (workers.engine.retention) runs no build any more: its
    build's processes ended with it, its Jenkins node is deleted, and its agent's JVM waits
    to reconnect for up to podRetentionSeconds, an hour by default. With failing builds kept
    an hour and running ten minutes, the kept pods outnumbered the running ones and the
    template's median read their idle use."""
    kube.add_node("node-a")
    for i in range(3):
        kube.set_pod_usage(NS, f"agent-{i}", cpu="3", memory="2Gi", labels=agent_labels("t"))
    for i in range(4):
        kube.set_pod_usage(NS, f"kept-{i}", cpu="20m", memory="300Mi",
                           labels={**agent_labels("t"), RETAINED_LABEL: RETAINED})
    watch = watching(agent_namespace=NS)

    assert eventually(lambda: watch.expected_use("t"), lambda u: u is not None,
                      timeout=1.0) is None  # three samples of builds: too few to say
    for i in range(3, 5):
        kube.set_pod_usage(NS, f"agent-{i}", cpu="3", memory="2Gi", labels=agent_labels("t"))
    assert eventually(lambda: watch.expected_use("t"), lambda u: u is not None) == \
        Resources(3000, 2 * GI)


def test_a_label_patched_on_a_pod_is_on_its_next_pod_metrics_and_decides_its_sample(
        kube, watching):
    """The retained and warm labels are patched on the pod (workers.engine.retention,
    workers.warm.protect), never on PodMetrics: metrics-server copies the pod's labels as
    its informer has them at each request (tests.support.kmock_cluster._pod_metrics_labels).
    Pods kept for debugging once patched count no more; an idle warm agent claimed counts
    from then on."""
    kube.add_node("node-a")
    core = kubernetes.client.CoreV1Api(kube.api_client())
    for i in range(5):
        kube.create_pod(NS, f"agent-{i}", node="node-a", labels=agent_labels("t"))
        kube.set_pod_usage(NS, f"agent-{i}", cpu="3", memory="2Gi")  # no labels given
    for i in range(6):
        kube.create_pod(NS, f"kept-{i}", node="node-a", labels=agent_labels("t"))
        kube.set_pod_usage(NS, f"kept-{i}", cpu="20m", memory="300Mi",
                           timestamp=f"2024-01-01T00:00:{i:02}Z")
    watch = watching(agent_namespace=NS)
    assert eventually(lambda: watch.expected_use("t"), lambda u: u is not None) == \
        Resources(20, 300 * MI)  # eleven samples, six of them the kept pods' idle use
    for i in range(6):  # kept: labelled on the pod, and each scraped again
        core.patch_namespaced_pod(f"kept-{i}", NS,
                                  {"metadata": {"labels": {RETAINED_LABEL: RETAINED}}})
    for i in range(5):  # the builds scraped again: their newer samples
        kube.set_pod_usage(NS, f"agent-{i}", cpu="3", memory="2Gi",
                           timestamp="2024-01-01T00:01:00Z")
    for i in range(6):
        kube.set_pod_usage(NS, f"kept-{i}", cpu="20m", memory="300Mi",
                           timestamp="2024-01-01T00:01:00Z")
    # ten builds' samples, six idle ones: the median is the builds' now
    assert eventually(lambda: watch.expected_use("t"),
                      lambda u: u == Resources(3000, 2 * GI)) == Resources(3000, 2 * GI)


def test_a_sample_counts_once_until_metrics_server_has_a_new_one(kube, watching):
    kube.add_node("node-a")
    for i in range(4):
        kube.set_pod_usage(NS, f"agent-{i}", cpu="1", memory="1Gi", labels=agent_labels("t"))
    watch = watching(agent_namespace=NS)
    # Polled every 0.1 s, but 4 samples only: fewer than the 5 an estimate needs.
    eventually(lambda: sum(r.startswith(f"GET {POD_METRICS_PATH}") for r in kube.requests()),
               lambda polls: polls >= 4)
    assert watch.expected_use("t") is None

    kube.set_pod_usage(NS, "agent-0", cpu="2", memory="1Gi", labels=agent_labels("t"),
                       timestamp="2024-01-01T00:00:15Z")  # metrics-server's next sample

    assert eventually(lambda: watch.expected_use("t"), lambda u: u is not None) == \
        Resources(1000, GI)


def test_the_agent_namespace_may_be_named_after_start(kube, watching):
    kube.add_node("node-a")
    for i in range(5):
        kube.set_pod_usage(NS, f"agent-{i}", cpu="2", memory="2Gi", labels=agent_labels("t"))
    watch = watching()
    assert watch.expected_use("t") is None

    watch.watch_agent_usage(NS)
    watch.watch_agent_usage("elsewhere")  # the first one named stays

    assert eventually(lambda: watch.expected_use("t"), lambda u: u is not None) == \
        Resources(2000, 2 * GI)
    assert watch.agent_namespace == NS


def test_without_pod_metrics_expected_use_is_none_and_it_warns_once(kube, watching, caplog):
    kube.add_node("node-a")
    kube.set_node_usage("node-a", cpu="1", memory="1Gi")
    kube.fail("GET", POD_METRICS_PATH, status=403, reason="Forbidden")
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.snapshot")

    watch = watching(agent_namespace=NS)
    eventually(lambda: sum(r.startswith(f"GET {POD_METRICS_PATH}") for r in kube.requests()),
               lambda polls: polls >= 3)

    assert watch.expected_use("t") is None
    assert watch.metrics_available and watch.snapshot()[0].usage == Resources(1000, GI)
    warnings = [r.getMessage() for r in caplog.records if r.name == "ci_autoscaler.snapshot"]
    assert len(warnings) == 1 and "agents' usage unavailable" in warnings[0]
    assert "403" in warnings[0] and "injected" not in warnings[0]


def test_pod_listeners_see_the_kubelets_container_states_through_the_watch(kube, watching):
    """What the kubelet writes (kube.kubelet_status: PATCH pods/NAME/status) reaches a listener
    as a MODIFIED event, read into container states; a relist shows every pod as LISTED."""
    kube.add_node("node-a")
    kube.add_pod(NS, "before", node="node-a", labels=ours("k0"))
    seen: list[tuple[str, PodInfo]] = []
    watch = ClusterWatch(api_client=kube.api_client(service_account=NS),
                         metrics_interval_seconds=0.1)
    watch.add_pod_listener(lambda kind, obj: seen.append((kind, pod_info(obj))))
    watch.add_pod_listener(lambda kind, obj: 1 / 0)  # a broken listener harms no other
    with watch:
        assert watch.wait_synced(5)
        assert ("LISTED", "before") in [(k, p.name) for k, p in seen]
        kube.create_pod(NS, "agent-1", labels=ours("k1"), phase="Pending")
        kube.image_pull_backoff(NS, "agent-1")
        event = eventually(lambda: [p for k, p in seen if k == "MODIFIED"
                                    and p.name == "agent-1" and p.containers], bool)
        assert event, seen
        state = event[-1].containers[0]
        assert (state.phase, state.reason) == (ContainerPhase.WAITING, "ImagePullBackOff")
        assert state.message.startswith('Back-off pulling image "busybox": ErrImagePull: ')
        assert event[-1].start_time is not None  # status.startTime, as the kubelet sets it
        kube.kubelet_status(NS, "agent-1", phase="Running", node="node-a",
                            states={"main0": terminated("OOMKilled", 137)})
        killed = eventually(lambda: [p for _, p in seen if p.name == "agent-1" and p.containers
                                     and p.containers[0].reason == "OOMKilled"], bool)
        assert killed and killed[-1].containers[0].exit_code == 137
        assert killed[-1].node == "node-a"
        # the cache followed the same events
        assert eventually(lambda: watch.pods_on("node-a"), lambda n: n == 2) == 2


def test_the_index_agrees_as_a_burst_reserves_one_build_at_a_time_and_pods_come(
        kube, watching):
    """A burst's decisions: each adds one reservation on one node, then its pod shows up in
    the watch; the states of nodes that did not change are reused from the call before
    (ClusterWatch._in_flight), and must still equal the reference at every step."""
    for name in ("node-a", "node-b", "node-c"):
        kube.add_node(name, cpu="16", memory="64Gi", labels={"pool": "ci"})
    watch = watching()
    reserved: dict[str, tuple[str, Resources]] = {}
    made: dict[str, int] = {}  # pods created on each node so far
    for i, node in enumerate(["node-a", "node-b", "node-a", "node-c", "node-a", "node-b"]):
        reserved = {**reserved, f"k{i}": (node, Resources(1000 + 250 * i, GI))}
        assert_index_agrees(watch, reserved)
        kube.create_pod(NS, f"agent-{i}", node=node, labels=ours(f"k{i}"),
                        requests=[{"cpu": "1", "memory": "1Gi"}])
        made[node] = made.get(node, 0) + 1
        # this pod seen, not just the node's first: awaiting ">= 1" for node-b's second pod
        # returned at once, and its watch event then landed between the index's read and the
        # reference's (failed once in a loaded full run: node-b 2 pods against 1)
        eventually(lambda: watch.pods_on(node), lambda n, want=made[node]: n >= want)
        assert_index_agrees(watch, reserved)
    # Released: the same sums as an earlier call, on views that changed since.
    assert_index_agrees(watch, {"k0": reserved["k0"]})
    kube.set_node_usage("node-a", cpu="3", memory="2Gi")
    eventually(lambda: by_name(watch.snapshot()), lambda n: n["node-a"].usage is not None)
    assert_index_agrees(watch, {"k0": reserved["k0"]})
    assert_index_agrees(watch, {})
