"""The three baselines for running the same trace, side by side (d and e, which add the job
history and warm agents to c, are in workers.sim.history_sizing and workers.sim.warm_agents).

a. Static agents: one long-running agent per node with 2 executors (Jenkins' default), each
   template's builds pinned to the agents of its label (large builds to the biggest nodes),
   FIFO per label: the classic master/agent setup, where some agents queue while others
   idle. No pod to start; an executor's memory is the template's default.
b. Per-build pods of the template's default size, placed on requests only, as kube-scheduler's
   LeastAllocated scores them (a plain Kubernetes-plugin pod template). Pending pods are
   retried in arrival order whenever capacity frees.
c. ci-autoscaler: the production core (workers.core.placement.decide and
   workers.core.capacity.capacity_state) on what metrics-server shows, with in-flight agents,
   waiting in arrival order and re-driven on every release and reconcile.

Only a and b are models written here (of Jenkins and of kube-scheduler); c calls the core.
"""

from workers.core.capacity import WaitingBuild, capacity_state
from workers.core.usage import expected_use
from workers.core.cluster import Resources
from workers.core.models import PodTemplate
from workers.core.placement import Placement, decide
from workers.core.sizing import template_default, template_min
from workers.sim.engine import BuildRun, Engine


EXECUTORS_PER_AGENT = 2  # the Jenkins default for a node
USAGE_HISTORY = 200  # the latest samples of a template's agents that the estimate uses


class StaticAgents:
    name = "a. static agents"

    def __init__(self, engine: Engine, executors: int = EXECUTORS_PER_AGENT):
        # One agent per node with a fixed number of executors; the biggest nodes carry the
        # agents labelled for "large" builds, the others those for "small" ones.
        largest = max(n.allocatable.cpu_millis for n in engine.nodes)
        big = [n for n in engine.nodes if n.allocatable.cpu_millis == largest]
        if len(big) == len(engine.nodes):  # one shape: its last fifth serves "large"
            big = engine.nodes[-max(1, len(engine.nodes) // 5):]
        self.slots: dict[str, list[tuple[str, int]]] = {"small": [], "large": []}
        for node in engine.nodes:
            label = "large" if node in big else "small"
            self.slots[label] += [(node.name, i) for i in range(executors)]
        self.busy: dict[tuple[str, int], int] = {}
        self.queue: dict[str, list[BuildRun]] = {"small": [], "large": []}

    def submit(self, engine: Engine, b: BuildRun) -> None:
        self.queue[b.spec.template].append(b)
        self.schedule(engine)

    def has_work(self) -> bool:
        return any(self.queue.values())

    def schedule(self, engine: Engine, reconcile: bool = False) -> None:
        for slot, build_id in list(self.busy.items()):
            if engine.builds[build_id].status in ("finished", "failed"):
                del self.busy[slot]
        for label, queue in self.queue.items():
            free = [s for s in self.slots[label] if s not in self.busy]
            while queue and free:
                b, slot = queue.pop(0), free.pop(0)
                engine.start_now(b, slot[0], b.template.memory.default)
                self.busy[slot] = b.id


class RequestsOnly:
    name = "b. pods, requests only"

    def __init__(self, engine: Engine):
        self.pending: list[BuildRun] = []

    def submit(self, engine: Engine, b: BuildRun) -> None:
        self.pending.append(b)
        self.schedule(engine)

    def has_work(self) -> bool:
        return bool(self.pending)

    def schedule(self, engine: Engine, reconcile: bool = False) -> None:
        still = []
        for b in self.pending:
            size = template_default(b.template)
            best, best_score = None, -1.0
            for node in engine.nodes:  # LeastAllocated: mean free share after placement
                free = node.allocatable - node.background_request - node.our_requests - size
                if free.cpu_millis < 0 or free.memory_bytes < 0:
                    continue
                score = (free.cpu_millis / node.allocatable.cpu_millis
                         + free.memory_bytes / node.allocatable.memory_bytes) / 2
                if score > best_score:
                    best, best_score = node.name, score
            if best is None:
                still.append(b)
            else:
                engine.place(b, best, size, size.memory_bytes)
        self.pending = still


class Autoscaler:
    name = "c. ci-autoscaler"

    def __init__(self, engine: Engine, target_utilisation: float = 0.8):
        self.waiting: list[BuildRun] = []
        self.target = target_utilisation
        self._seen: object = None
        self._history: dict[str, list[tuple[float, int]]] = {}
        self._learned: dict[str, Resources] = {}
        self.first_unplaceable_at: float | None = None
        self.first_nodes_needed_at: float | None = None
        self.peak_nodes_needed = 0

    def submit(self, engine: Engine, b: BuildRun) -> None:
        self.waiting.append(b)
        self.schedule(engine)

    def has_work(self) -> bool:
        return bool(self.waiting)

    def schedule(self, engine: Engine, reconcile: bool = False) -> None:
        if engine.pod_usage is not self._seen:  # a new metrics sample of our agents
            self._seen = engine.pod_usage
            for template, samples in engine.pod_usage.items():
                self._history.setdefault(template, []).extend(samples)
                del self._history[template][:-USAGE_HISTORY]
                self._learned[template] = expected_use(self._history[template])
        still, full = [], set()
        for i, b in enumerate(self.waiting):
            if b.spec.template in full:
                still.append(b)
                continue
            nodes = [engine.node_state(n) for n in engine.nodes]
            ahead = len(still) + len(self.waiting) - i - 1
            decision = decide(self.sized(b), nodes, waiting_ahead=ahead,
                              target_utilisation=self.target,
                              expected_use=self._learned.get(b.spec.template))
            if isinstance(decision, Placement):
                engine.place(b, decision.node, decision.size, decision.size.memory_bytes,
                             in_flight=decision.in_flight)
            else:
                full.add(b.spec.template)
                still.append(b)
        newly_short = still and self.first_unplaceable_at is None
        self.waiting = still
        if newly_short:
            self.first_unplaceable_at = engine.now
        if still and (reconcile or newly_short):
            self._capacity(engine)

    def sized(self, b: BuildRun) -> PodTemplate:
        """The template the build is sized from: its own (d sizes from its job's history)."""
        return b.template

    def _capacity(self, engine: Engine) -> None:
        nodes = [engine.node_state(n) for n in engine.nodes]
        state = capacity_state([WaitingBuild(str(b.id), b.template, template_min(b.template))
                                for b in self.waiting], nodes,
                               target_utilisation=self.target)
        self.peak_nodes_needed = max(self.peak_nodes_needed, state.nodes_needed)
        if state.nodes_needed > 0 and self.first_nodes_needed_at is None:
            self.first_nodes_needed_at = engine.now


BASELINES = (StaticAgents, RequestsOnly, Autoscaler)
