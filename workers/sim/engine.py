"""The simulation engine: virtual time, nodes with background workloads, CPU contention,
OOM kills, and metrics-server lag. A strategy decides where builds run; the engine plays the
cluster, the kubelet and metrics-server.

Each step of `dt` seconds: builds arrive; pods that finished starting run; every node's CPU
demand is its background use plus the cores its running builds can use, and when the demand
exceeds the node every pod on it runs proportionally slower; builds progress; a build whose
peak memory exceeds its memory limit is OOM-killed at half its work; finished and failed
builds release their pods and the strategy places what waits. Usage is sampled every
`sample_interval` seconds, as metrics-server does.

Nodes also keep memory for the system (capacity - allocatable), which their daemons use, and
hold page cache, much of it on the nodes that do much I/O (the hot ones): the node's working
set that metrics-server reports counts both (`working_set`). What decisions see as memory in
use is built from the pods' metrics instead (core.usage.memory_over_requests), as in production.
"""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.core.cluster import NodeState, Resources, ZERO
from workers.core.models import PodTemplate
from workers.core.pods import HOSTNAME_LABEL
from workers.core.usage import memory_over_requests
from workers.sim.traces import Scenario, TraceBuild

DT_SECONDS = 5.0
SAMPLE_INTERVAL_SECONDS = 60.0
RECONCILE_INTERVAL_SECONDS = 15.0
POD_START_SECONDS = 20.0
OOM_AT_PROGRESS = 0.5
# capacity - allocatable, as a share of allocatable memory (kube-reserved + system-reserved +
# the eviction threshold: about 6% on a 16Gi EKS node); the daemons use about that much.
SYSTEM_RESERVED_SHARE = 0.06
# Active page cache, as a share of the memory the pods leave: on a node doing much I/O (a hot
# one), and on the others.
PAGE_CACHE_HOT, PAGE_CACHE_IDLE = 0.6, 0.1


@dataclass
class BuildRun:
    id: int
    spec: TraceBuild
    template: PodTemplate
    requests: Resources = ZERO
    memory_limit: int = 0
    node: str | None = None
    placed_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    done_work: float = 0.0
    rate: float = 0.0  # cores it got in the last step (what its pod metrics would show)
    status: str = "waiting"  # waiting -> starting -> running -> finished | failed
    reason: str = ""
    # Strategies that size from each job's history (d, e) say where the size came from
    # (core.recommend.SizeSource) and how many builds of the job were on record then.
    size_source: str = ""
    history_builds: int = 0
    warm: bool = False  # it ran on a warm agent (e)


@dataclass
class NodeSim:
    name: str
    index: int
    allocatable: Resources
    background_request: Resources
    builds: set[int] = field(default_factory=set)
    our_requests: Resources = ZERO
    sample: Resources | None = None
    working_set: int = 0  # the node's memory working set as metrics-server reports it
    # our pods placed since the last usage sample: their requests, and what they count as
    in_flight_requests: Resources = ZERO
    in_flight: Resources = ZERO
    saturated_seconds: float = 0.0
    peak_requested: Resources = ZERO  # the most ever requested of it (ours + background)
    state: NodeState | None = None  # what a decision sees, until the node changes
    busy_core_seconds: float = 0.0
    utilisation: list[float] = field(default_factory=list)


class Engine:
    def __init__(self, scenario: Scenario, *, dt: float = DT_SECONDS,
                 sample_interval: float = SAMPLE_INTERVAL_SECONDS,
                 pod_start_seconds: float = POD_START_SECONDS):
        self.scenario, self.dt = scenario, dt
        self.sample_interval, self.pod_start_seconds = sample_interval, pod_start_seconds
        self.now = 0.0
        self.nodes: list[NodeSim] = []
        for shape in scenario.shapes:
            for _ in range(shape.count):
                alloc = Resources(shape.cpu_millis, shape.memory_bytes)
                bg = Resources(int(alloc.cpu_millis * scenario.background_request),
                               int(alloc.memory_bytes * scenario.background_request))
                self.nodes.append(NodeSim(f"node-{len(self.nodes):03d}", len(self.nodes),
                                          alloc, bg))
        self.by_name = {n.name: n for n in self.nodes}
        self.builds = [BuildRun(i, b, scenario.templates[b.template])
                       for i, b in enumerate(scenario.builds)]
        self._hot: dict[int, frozenset[int]] = {}
        self._phase = [random.Random(scenario.seed * 7919 + i).uniform(0, 2 * math.pi)
                       for i in range(len(self.nodes))]
        self._running: set[int] = set()
        self._starting: set[int] = set()
        self.pod_usage: dict[str, list[tuple[float, int]]] = {}
        self.sampled_at = 0.0

    # --- the world ------------------------------------------------------------------------
    def hot(self, t: float) -> frozenset[int]:
        epoch = int(t // self.scenario.hot_shift_seconds)
        if epoch not in self._hot:
            order = list(range(len(self.nodes)))
            random.Random(self.scenario.seed * 104729 + epoch).shuffle(order)
            self._hot[epoch] = frozenset(order[:round(self.scenario.hot_fraction * len(order))])
        return self._hot[epoch]

    def background_cpu(self, node: NodeSim, t: float) -> float:
        """What others' pods really use, in cores: not what they requested."""
        level = self.scenario.hot_use if node.index in self.hot(t) else self.scenario.idle_use
        drift = 0.05 * math.sin(2 * math.pi * t / 1800 + self._phase[node.index])
        return max(0.0, level + drift) * node.allocatable.cpu_millis / 1000

    def build_cores(self, b: BuildRun) -> float:
        return b.spec.cores

    # --- what a decision sees -------------------------------------------------------------
    def node_state(self, node: NodeSim, *, with_usage: bool = True) -> NodeState:
        if with_usage and node.state is not None:
            return node.state
        pending = node.in_flight_requests if with_usage else ZERO
        state = NodeState(
            name=node.name, allocatable=node.allocatable,
            requested=node.background_request + node.our_requests - pending,
            usage=node.sample if with_usage else None,
            in_flight=node.in_flight if with_usage else ZERO,
            labels={HOSTNAME_LABEL: node.name})
        if with_usage:
            node.state = state
        return state

    def place(self, b: BuildRun, node_name: str, requests: Resources, memory_limit: int,
              in_flight: Resources | None = None) -> None:
        """Bind the build's pod to the node; `in_flight` is what it counts against the node
        until the next usage sample (its requests by default)."""
        node = self.by_name[node_name]
        b.node, b.requests, b.memory_limit = node_name, requests, memory_limit
        b.placed_at, b.status = self.now, "starting"
        node.builds.add(b.id)
        node.our_requests = node.our_requests + requests
        node.peak_requested = (node.background_request + node.our_requests).clamp_min(
            node.peak_requested)
        node.state = None
        node.in_flight_requests = node.in_flight_requests + requests
        node.in_flight = node.in_flight + (requests if in_flight is None else in_flight)
        self._starting.add(b.id)

    def start_now(self, b: BuildRun, node_name: str, memory_limit: int) -> None:
        """Run the build on an agent that is already connected: no pod, no requests."""
        self.place(b, node_name, ZERO, memory_limit)
        b.status, b.started_at = "running", self.now
        self._starting.discard(b.id)
        self._running.add(b.id)

    def hold(self, node_name: str, requests: Resources, in_flight: Resources) -> None:
        """A pod that runs no build yet (a warm agent) takes room on the node: its requests
        count, and `in_flight` until the next usage sample. It uses next to nothing."""
        node = self.by_name[node_name]
        node.our_requests = node.our_requests + requests
        node.peak_requested = (node.background_request + node.our_requests).clamp_min(
            node.peak_requested)
        node.state = None
        node.in_flight_requests = node.in_flight_requests + requests
        node.in_flight = node.in_flight + in_flight

    def unhold(self, node_name: str, requests: Resources, in_flight: Resources,
               held_at: float) -> None:
        """The held pod is deleted (a warm agent given up); what it still counted in flight
        (held since the last sample) goes with it."""
        node = self.by_name[node_name]
        node.our_requests = node.our_requests - requests
        if held_at >= self.sampled_at:
            node.in_flight_requests = (node.in_flight_requests - requests).clamp_min(ZERO)
            node.in_flight = (node.in_flight - in_flight).clamp_min(ZERO)
        node.state = None

    def take_over(self, b: BuildRun, node_name: str, requests: Resources,
                  memory_limit: int) -> None:
        """The build runs at once on a held pod (a warm agent that is online): the pod's
        requests, already counted on the node, become the build's."""
        node = self.by_name[node_name]
        b.node, b.requests, b.memory_limit = node_name, requests, memory_limit
        b.placed_at = b.started_at = self.now
        b.status, b.warm = "running", True
        node.builds.add(b.id)
        node.state = None
        self._running.add(b.id)

    def take_over_starting(self, b: BuildRun, node_name: str, requests: Resources,
                           memory_limit: int, created: float) -> None:
        """The build takes a held pod that is still starting (a warm agent not yet online):
        it starts when the pod does, `pod_start_seconds` after `created`."""
        node = self.by_name[node_name]
        b.node, b.requests, b.memory_limit = node_name, requests, memory_limit
        b.placed_at, b.status, b.warm = created, "starting", True
        node.builds.add(b.id)
        node.state = None
        self._starting.add(b.id)

    def _release(self, b: BuildRun) -> None:
        node = self.by_name[b.node]
        node.builds.discard(b.id)
        node.state = None
        node.our_requests = node.our_requests - b.requests
        self._running.discard(b.id)

    def _sample(self, t: float) -> None:
        self.pod_usage = {}  # template -> [(cores used, memory used)] of running agents
        for b in (self.builds[i] for i in self._running):
            self.pod_usage.setdefault(b.spec.template, []).append(
                (b.rate, min(b.spec.peak_memory_bytes, b.memory_limit)))
        for node in self.nodes:
            ours = sum(self.build_cores(self.builds[i]) for i in node.builds
                       if self.builds[i].status == "running")
            cores = min(node.allocatable.cpu_millis / 1000, self.background_cpu(node, t) + ours)
            pods = [(node.background_request.memory_bytes, node.background_request.memory_bytes)]
            pods += [(self.builds[i].requests.memory_bytes,
                      min(self.builds[i].spec.peak_memory_bytes, self.builds[i].memory_limit)
                      if self.builds[i].status == "running" else None) for i in node.builds]
            used = sum(u or 0 for _, u in pods)
            system = int(SYSTEM_RESERVED_SHARE * node.allocatable.memory_bytes)
            cache = int((PAGE_CACHE_HOT if node.index in self.hot(t) else PAGE_CACHE_IDLE)
                        * max(0, node.allocatable.memory_bytes - used))
            node.working_set = used + system + cache
            node.sample = Resources(int(cores * 1000), memory_over_requests(pods))
            node.state = None
            node.in_flight = node.in_flight_requests = ZERO
        self.sampled_at = t

    # --- the loop -------------------------------------------------------------------------
    def run(self, strategy, *, progress: Callable[[float], None] | None = None) -> None:
        pending = list(range(len(self.builds)))
        end_of_arrivals = self.builds[-1].spec.arrival if self.builds else 0.0
        next_arrival, next_sample, next_reconcile = 0, 0.0, 0.0
        steps = 0
        while next_arrival < len(pending) or self._unfinished(strategy):
            t = self.now
            if t >= next_sample:
                self._sample(t)
                next_sample += self.sample_interval
            while next_arrival < len(pending) and self.builds[pending[next_arrival]].spec.arrival <= t:
                strategy.submit(self, self.builds[pending[next_arrival]])
                next_arrival += 1
            changed = self._advance(t)
            if changed or t >= next_reconcile:
                strategy.schedule(self, reconcile=t >= next_reconcile)
                if t >= next_reconcile:
                    next_reconcile += RECONCILE_INTERVAL_SECONDS
            self.now = t + self.dt
            steps += 1
            if progress is not None and steps % 200 == 0:  # 100% only once it has ended
                progress(min(0.99, t / max(end_of_arrivals, 1.0)))
            if t > end_of_arrivals + 48 * 3600:  # what still waits then waits for good
                break
        if progress is not None:
            progress(1.0)

    def _unfinished(self, strategy) -> bool:
        return bool(self._running or self._starting) or strategy.has_work()

    def _advance(self, t: float) -> bool:
        """One step of the kubelet and the CPU: returns whether capacity was freed."""
        freed = False
        for node in self.nodes:
            starting = [self.builds[i] for i in node.builds if self.builds[i].status == "starting"]
            for b in starting:
                if t - b.placed_at >= self.pod_start_seconds:
                    b.status, b.started_at = "running", t
                    self._starting.discard(b.id)
                    self._running.add(b.id)
            running = [self.builds[i] for i in node.builds if self.builds[i].status == "running"]
            capacity = node.allocatable.cpu_millis / 1000
            demand = self.background_cpu(node, t) + sum(self.build_cores(b) for b in running)
            factor = min(1.0, capacity / demand) if demand > 0 else 1.0
            node.utilisation.append(demand / capacity)
            node.busy_core_seconds += min(demand, capacity) * self.dt
            if demand > capacity:
                node.saturated_seconds += self.dt
            for b in running:
                b.rate = self.build_cores(b) * factor
                b.done_work += b.rate * self.dt
                oom = b.spec.peak_memory_bytes > b.memory_limit
                if oom and b.done_work >= OOM_AT_PROGRESS * b.spec.cpu_seconds:
                    b.status, b.reason, b.ended_at = "failed", "OOMKilled", t + self.dt
                elif b.done_work >= b.spec.cpu_seconds:
                    b.status, b.ended_at = "finished", t + self.dt
                else:
                    continue
                self._release(b)
                freed = True
        return freed
