"""Strategy e: ci-autoscaler with warm agents (issue 22), on top of d's history sizing.

Each template keeps a pool of agents that are online and idle, sized by the production rules
(workers.core.warm_pool): the target from the template's arrival rate over the last
ARRIVAL_WINDOW_SECONDS times the measured time an agent takes to come online (`target_size`),
what to start or retire (`plan`), and which idle agents give way to builds that wait for room
(`give_way`: while builds wait, none is started). Warm agents are placed by the same core as
builds (`decide` on the template pinned at their size) and hold their requests on the node;
one idle WARM_MAX_AGE_SECONDS after its pod was made is retired and replaced.

A build that finds an idle agent with at least the memory it wants (its job's history size,
as d sizes it; the template's max for a job with no history yet) runs on it at once, and a
replacement is started; otherwise it goes d's way. What a build wants, which agent covers it,
which of those it takes and the size agents are made at are the product's rules
(workers.core.warm_claim), called here as workers.warm calls them.

Choices, each a variant against the product's rule (bench/results/simulation.md has the
figures of both sides):
- `sizing`: warm agents' memory is "demand", the most any build of the template arriving in
  the window wanted (the template's default while none arrived), as the product makes them,
  or "default", the template's default (the product before issue 22's parity work).
- `cover_arrival` (target_size's option, the product's default): one agent more than the
  quantile of a start window's arrivals, so that a build finds one with the quantile's
  probability.
- `gap_cap` (target_size's option, the product's default): while no build arrives, the
  rate the target is made from is capped by the gap (workers.core.warm_pool.gap_rate), so idle
  agents end when arrivals slow, not only `idleSeconds` after the last one.
- `prefer_room`: a build takes the idle agent whose node has the most room by use for what
  its builds use, as the product does, not the oldest (warm agents are placed long before
  they are used, and a node may have turned busy since).
- `stale`: idle agents on a node that no longer has that room are given up at each reconcile
  (and started again elsewhere). Off: it lowers saturation but costs hits.
- `history`: off, a build wants the template's max memory (c's sizing: e is then c with
  warm agents).
- `claim_starting` (off): a build that finds no idle agent that covers it takes the starting
  one that comes online soonest (its build starts when the agent connects) and a replacement
  is started; the pool's target is then made over the online time minus `wait_budget`
  seconds, the longest a build may wait for such an agent (a build waits longer only when
  the target's count of builds arrived within that shorter window).
"""

from dataclasses import dataclass, replace

from workers.core.cluster import ZERO, Resources
from workers.core.models import PodTemplate, WarmPool
from workers.core.placement import Wait, capacity_left, decide, free
from workers.core.sizing import template_default, template_min
from workers.core.warm_claim import (Candidate, Want, agent_size, claim_order, covers,
                                     largest_room, load_after)
from workers.core.warm_claim import wanted as wanted_of
from workers.core.warm_pool import (DEFAULT_QUANTILE, WARM_MAX_AGE_SECONDS, IdleAgent, Need,
                                    WarmAgent, WarmState, arrival_rate, give_way, pinned,
                                    plan, target_size)
from workers.sim.engine import BuildRun, Engine
from workers.sim.history_sizing import HistorySized
from workers.warm.pool import ARRIVAL_WINDOW_SECONDS, DEFAULT_ONLINE_SECONDS

# The pool every template gets here: none kept overnight (min 0), at most 20.
POOL = WarmPool(min=0, max=20, idle_seconds=600)
SIZINGS = ("demand", "default")


@dataclass
class WarmPod:
    name: str
    template: str
    node: str
    size: Resources
    in_flight: Resources
    created: float
    online_at: float

    def idle(self, now: float) -> bool:
        return self.online_at <= now

    def agent(self, now: float) -> WarmAgent:
        if self.idle(now):
            return WarmAgent(self.name, WarmState.IDLE, self.online_at)
        return WarmAgent(self.name, WarmState.STARTING, self.created)


class WarmPools(HistorySized):
    name = "e. ci-autoscaler + warm agents"

    def __init__(self, engine: Engine, target_utilisation: float = 0.8, *,
                 pool: WarmPool = POOL, quantile: float = DEFAULT_QUANTILE,
                 sizing: str = "demand", history: bool = True,
                 cover_arrival: bool = True, prefer_room: bool = True, stale: bool = False,
                 gap_cap: bool = True, claim_starting: bool = False,
                 wait_budget: float = 5.0):
        super().__init__(engine, target_utilisation)
        if sizing not in SIZINGS:
            raise ValueError(f"sizing must be one of {SIZINGS}")
        self.pool, self.quantile, self.sizing, self.history = pool, quantile, sizing, history
        self.cover_arrival, self.prefer_room, self.stale = cover_arrival, prefer_room, stale
        self.gap_cap = gap_cap
        self.claim_starting, self.wait_budget = claim_starting, wait_budget
        names = list(engine.scenario.templates)
        self.pods: dict[str, list[WarmPod]] = {t: [] for t in names}  # oldest first
        self.arrivals: dict[str, list[float]] = {t: [] for t in names}
        self.demand: dict[str, list[tuple[float, Resources]]] = {t: [] for t in names}
        self.starts_seen: list[float] = []  # how long warm agents took to come online
        self.hits = 0
        self.starting_hits = 0  # builds that took an agent still starting (claim_starting)
        self.started = 0
        self.gave_way = 0
        self.idle_seconds = 0.0  # of agents no longer idle; see idle_agent_seconds

    def sized(self, b: BuildRun) -> PodTemplate:
        return super().sized(b) if self.history else b.template

    # --- builds ---------------------------------------------------------------------------
    def wanted(self, engine: Engine, b: BuildRun) -> Want:
        """What the build needs of a warm agent (the product's rule): its job's history
        size; with no history, the template's max memory, no more than the pod may have on
        the biggest node (as the pool makes its agents: workers.warm.claim). The simulator
        has no hints."""
        sized = self.sized(b)
        return wanted_of(b.template, sized, largest=self.largest(engine, b.template)
                         if sized is b.template else None)

    @staticmethod
    def largest(engine: Engine, template: PodTemplate) -> Resources | None:
        """The most room a pod of the template could have on a node (the product's
        scheduling.largest_node: largest_room on what pods not ours request, here each
        node's background). Taken as the biggest allocatable, with every node's background
        requests left out, the agents of a template whose max no node holds fitted on no
        node, and the pool stayed empty."""
        return largest_room([replace(engine.node_state(n), requested=n.background_request)
                             for n in engine.nodes], template)

    def submit(self, engine: Engine, b: BuildRun) -> None:
        t = b.spec.template
        wanted = self.wanted(engine, b)
        self.arrivals[t].append(b.spec.arrival)
        self.demand[t].append((b.spec.arrival, wanted.size))
        if self.claim(engine, b, wanted):
            self.fill(engine, t)  # the replacement, at once (production queues a task)
            return
        super().submit(engine, b)

    def claim(self, engine: Engine, b: BuildRun, wanted: Want) -> bool:
        now = engine.now
        idle = {p.name: p for p in self.pods[b.spec.template] if p.idle(now)}
        # without prefer_room no load is known: the core's order is then the oldest first
        order = claim_order([Candidate(p.name, p.size, p.online_at,
                                       self._load_after(engine, p) if self.prefer_room
                                       else None) for p in idle.values()], wanted)
        if not order:
            return self.claim_starting and self._claim_starting(engine, b, wanted)
        pod = idle[order[0]]
        self._end(pod, now)
        engine.take_over(b, pod.node, pod.size, pod.size.memory_bytes)
        self._running[b.id] = b  # its history is learned as any build's
        self.hits += 1
        return True

    def _claim_starting(self, engine: Engine, b: BuildRun, wanted: Want) -> bool:
        """The starting agent that covers the build and comes online soonest becomes its pod:
        the build starts when the agent connects (Jenkins keeps it queued until then)."""
        now = engine.now
        starting = [p for p in self.pods[b.spec.template] if not p.idle(now)
                    and covers(p.size, wanted)]
        if not starting:
            return False
        pod = min(starting, key=lambda p: p.online_at)
        self._end(pod, now)  # never idle: no idle seconds
        engine.take_over_starting(b, pod.node, pod.size, pod.size.memory_bytes, pod.created)
        self._running[b.id] = b
        self.starting_hits += 1
        return True

    def _load_after(self, engine: Engine, pod: WarmPod) -> float:
        state = engine.node_state(engine.by_name[pod.node])
        extra = (pod.in_flight - pod.size).clamp_min(ZERO)
        return load_after(state.allocatable, free(state, self.target), extra)

    def schedule(self, engine: Engine, reconcile: bool = False) -> None:
        now = engine.now
        if reconcile:
            for pods in self.pods.values():  # idle too long: retired, a fresh one follows
                for pod in [p for p in pods if p.idle(now)
                            and now - p.created > WARM_MAX_AGE_SECONDS]:
                    self.retire(engine, pod)
            if self.stale:
                self.retire_stale(engine)
        if self.waiting and any(p.idle(now) or self.claim_starting
                                for ps in self.pods.values() for p in ps):
            for b in list(self.waiting):  # an agent online (or starting) since it waited
                if self.claim(engine, b, self.wanted(engine, b)):
                    self.waiting.remove(b)
        super().schedule(engine, reconcile)
        if self.waiting:  # builds always win: idle agents whose room lets them fit go
            if self.give_way(engine):
                super().schedule(engine, reconcile=False)
        elif reconcile:
            for t in self.pods:
                self.fill(engine, t)

    # --- the pools ------------------------------------------------------------------------
    def pool_target(self, t: str, now: float) -> int:
        times = self.arrivals[t]
        horizon = now - max(ARRIVAL_WINDOW_SECONDS, self.pool.idle_seconds)
        while times and times[0] < horizon:
            times.pop(0)
        online = (sum(self.starts_seen) / len(self.starts_seen) if self.starts_seen
                  else DEFAULT_ONLINE_SECONDS)
        if self.claim_starting:  # a build waits past the budget only beyond this window
            online = max(0.0, online - self.wait_budget)
        return target_size(minimum=self.pool.min, maximum=self.pool.max,
                           idle_seconds=self.pool.idle_seconds,
                           arrivals_per_second=arrival_rate(
                               times, now=now, window_seconds=ARRIVAL_WINDOW_SECONDS),
                           online_seconds=online, last_arrival_at=times[-1] if times else None,
                           now=now, quantile=self.quantile, cover_arrival=self.cover_arrival,
                           gap_cap=self.gap_cap)

    def agent_size(self, template: PodTemplate, t: str, now: float,
                   largest: Resources | None = None) -> Resources:
        if self.sizing == "default":
            return template_default(template)
        wanted = self.demand[t]
        while wanted and wanted[0][0] < now - ARRIVAL_WINDOW_SECONDS:
            wanted.pop(0)
        return agent_size(template, [w for _, w in wanted], largest)

    def fill(self, engine: Engine, t: str) -> None:
        """Bring the template's pool to its target (nothing is started while builds wait)."""
        if self.waiting:
            return
        now = engine.now
        pods = self.pods[t]
        decided = plan([p.agent(now) for p in pods], self.pool_target(t, now),
                       builds_waiting=0)
        for name in decided.retire:
            self.retire(engine, next(p for p in pods if p.name == name))
        if not decided.start:
            return
        template = engine.scenario.templates[t]
        pinned_at = pinned(template, self.agent_size(template, t, now,
                                                     self.largest(engine, template)))
        for _ in range(decided.start):  # each decision sees the agents held before it
            decision = decide(pinned_at, [engine.node_state(n) for n in engine.nodes],
                              target_utilisation=self.target,
                              expected_use=self._learned.get(t))
            # no room by use: builds come first (a warm agent is never admitted by requests)
            if isinstance(decision, Wait) or decision.by_requests:
                return
            in_flight = decision.in_flight or decision.size
            engine.hold(decision.node, decision.size, in_flight)
            self.started += 1
            pods.append(WarmPod(f"warm-{t}-{self.started}", t, decision.node, decision.size,
                                in_flight, now, now + engine.pod_start_seconds))
            self.starts_seen.append(engine.pod_start_seconds)

    def retire_stale(self, engine: Engine) -> None:
        """Idle agents on a node whose room by use can no longer take what their build will
        use (it turned busy since the agent was placed) are given up, to start elsewhere."""
        now = engine.now
        for pods in self.pods.values():
            for pod in [p for p in pods if p.idle(now)]:
                state = engine.node_state(engine.by_name[pod.node])
                need = (pod.in_flight - pod.size).clamp_min(ZERO)
                if not need.fits_in(capacity_left(state, self.target)):
                    self.retire(engine, pod)

    def give_way(self, engine: Engine) -> bool:
        now = engine.now
        idle = {p.name: p for ps in self.pods.values() for p in ps if p.idle(now)}
        if not idle:
            return False
        room = {n.name: free(engine.node_state(n), self.target) for n in engine.nodes}
        chosen = give_way([IdleAgent(p.name, p.node, p.size, p.online_at) for p in idle.values()],
                          room, [Need(template_min(b.template)) for b in self.waiting])
        for name in chosen:
            self.retire(engine, idle[name])
        self.gave_way += len(chosen)
        return bool(chosen)

    def retire(self, engine: Engine, pod: WarmPod) -> None:
        self._end(pod, engine.now)
        engine.unhold(pod.node, pod.size, pod.in_flight, pod.created)

    def _end(self, pod: WarmPod, now: float) -> None:
        self.pods[pod.template].remove(pod)
        self.idle_seconds += max(0.0, now - pod.online_at)

    def idle_agent_seconds(self, now: float) -> float:
        """Seconds warm agents spent online and idle, up to `now`."""
        return self.idle_seconds + sum(max(0.0, now - p.online_at)
                                       for ps in self.pods.values() for p in ps)
