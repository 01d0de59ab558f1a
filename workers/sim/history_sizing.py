"""Strategy d: ci-autoscaler with each job sized from its own history (issue 21).

c, with the production recommender in front of placement: a build's template gets its job's
recommended default (workers.core.recommend.recommend and with_default), as
workers.job_history.sized does. The history is kept as production keeps it
(workers.core.usage_history): while a build runs, every metrics sample of its pod is noted
(its CPU use and memory); when it finishes, its peak memory and CPU p90 are folded in; an
OOM kill instead raises the job's floor. A build of a job with no history, or of no job,
is sized as c sizes it. `cpu_above_default=True` (a variant, not the product: its rule until
issue 21's turnaround check) takes the job's CPU p90 even above the template's default, up to
its max.
"""

from dataclasses import replace as dc_replace

from workers.adapters.usage_store import RunUsage
from workers.core.models import PodTemplate
from workers.core.recommend import (DEFAULT_MEMORY_MARGIN, DEFAULT_MIN_BUILDS, SizeSource,
                                    cpu_use, recommend, with_default)
from workers.core.usage_history import DEFAULT_HALF_LIFE_SECONDS, UsageHistory
from workers.sim.engine import BuildRun, Engine
from workers.sim.strategies import Autoscaler


class HistorySized(Autoscaler):
    name = "d. ci-autoscaler + history"

    def __init__(self, engine: Engine, target_utilisation: float = 0.8, *,
                 min_builds: int = DEFAULT_MIN_BUILDS,
                 memory_margin: float = DEFAULT_MEMORY_MARGIN,
                 half_life_seconds: float = DEFAULT_HALF_LIFE_SECONDS,
                 cpu_above_default: bool = False):
        super().__init__(engine, target_utilisation)
        self.min_builds, self.memory_margin = min_builds, memory_margin
        self.half_life_seconds, self.cpu_above_default = half_life_seconds, cpu_above_default
        self.histories: dict[tuple[str, str], UsageHistory] = {}
        # the sized template and where its size came from, per job, until the job learns
        self._templates: dict[tuple[str, str], tuple[PodTemplate, str]] = {}
        self._running: dict[int, BuildRun] = {}  # placed, not yet learned from
        self._samples: dict[int, list[tuple[int, int]]] = {}  # (cpu millis, memory bytes)
        self._sample_seen: float | None = None

    def schedule(self, engine: Engine, reconcile: bool = False) -> None:
        self.learn(engine)
        waiting = list(self.waiting)
        super().schedule(engine, reconcile)
        for b in waiting:
            if b.status != "waiting":
                self._running[b.id] = b

    # --- sizing ---------------------------------------------------------------------------
    def sized(self, b: BuildRun) -> PodTemplate:
        if not b.spec.job:
            return b.template
        key = (b.spec.job, b.spec.template)
        history = self.histories.get(key, UsageHistory())
        b.history_builds = history.builds
        if key not in self._templates:
            rec = recommend(b.template, history, min_builds=self.min_builds,
                            memory_margin=self.memory_margin)
            if self.cpu_above_default and history.builds >= self.min_builds \
                    and history.memory.total() > 0:
                rec = dc_replace(rec, cpu_millis=cpu_use(b.template, history))
            self._templates[key] = (b.template if rec.source is SizeSource.TEMPLATE
                                    else with_default(b.template, rec), str(rec.source))
        template, b.size_source = self._templates[key]
        return template

    # --- learning (the part workers.job_history.watch and learn do in production) ----------
    def learn(self, engine: Engine) -> None:
        if engine.sampled_at != self._sample_seen:  # a new metrics-server stamp
            self._sample_seen = engine.sampled_at
            for b in self._running.values():
                if b.status == "running":
                    self._samples.setdefault(b.id, []).append(
                        (int(b.rate * 1000), min(b.spec.peak_memory_bytes, b.memory_limit)))
        for b in [b for b in self._running.values() if b.status in ("finished", "failed")]:
            del self._running[b.id]
            samples = self._samples.pop(b.id, [])
            if not b.spec.job:
                continue
            key = (b.spec.job, b.spec.template)
            history = self.histories.get(key, UsageHistory())
            if b.reason == "OOMKilled":
                history = history.add_oom_kill(memory_limit_bytes=b.memory_limit,
                                               max_bytes=b.template.memory.max)
            elif samples:  # a run no sample saw teaches nothing, as in production
                run = RunUsage(max(m for _, m in samples), tuple(c for c, _ in samples))
                history = history.add_build(peak_memory_bytes=run.peak_memory_bytes,
                                            cpu_p90_millis=run.cpu_p90_millis, now=engine.now,
                                            half_life_seconds=self.half_life_seconds)
            else:
                continue
            self.histories[key] = history
            self._templates.pop(key, None)
