"""The engine's counters as a task reaches them (moved from workers.engine.tasks)."""

from workers import runtime
from workers.telemetry.metrics import EngineMetrics


def engine_metrics(rt: runtime.Runtime) -> EngineMetrics:
    """The cluster-wide counters, kept in the runtime's Redis (see workers.telemetry.metrics)."""
    return EngineMetrics(rt.state.redis, prefix=rt.state.prefix)
