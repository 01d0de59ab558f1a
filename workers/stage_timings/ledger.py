"""Record that a build reached a stage, and observe every stage that is due, once.

A stage's time is written only if the build has none yet (a retry, a second worker or a
replaced pod keeps the first), into a build that exists; then each stage ``due``
(workers.core.stages) is claimed in the build's record and observed into
ci_autoscaler_build_stage_seconds by the one call that claimed it. A stage recorded by the web
(STARTED, FINISHED: Jenkins' notifications) is observed by the next worker call about that
build (its agent online, its release). Best effort, like every engine metric: when Redis
cannot be reached it is logged and dropped, never the work it measures. Each record also
touches the build's GitLab commit status (workers.commit_statuses), which a sender posts.
"""

import logging
import time

from workers import commit_statuses
from workers.adapters.redis_state import RedisState
from workers.adapters.stage_store import StageStore
from workers.core.errors import RetryableError
from workers.core.stages import FIELD, Stage, StageTime, due
from workers.telemetry.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.stages")


def record(state: RedisState, build_key: str, stage: Stage | None = None, *,
           at: float | None = None, **first: str) -> list[StageTime] | None:
    """The build reached `stage` at `at` (default now), unless it had already; the `first`
    fields are written likewise (the first wait's reason). With no stage, only observes what
    is due (a stage the web recorded). The stages this call observed; None when Redis could
    not be reached (nothing recorded)."""
    fields = dict(first)
    if stage is not None:
        fields[FIELD[stage]] = repr(time.time() if at is None else float(at))
    store = StageStore(state.redis, prefix=state.prefix)
    try:
        build = store.note(build_key, fields)
        if build is None:
            return []
        todo = due(build)
        claimed = set(store.claim(build_key, {s.stage: s.seconds or 0.0 for s in todo}))
    except RetryableError as err:
        log.warning("stage not recorded: redis unavailable",
                    extra={"build_key": build_key, "stage": stage, "error": str(err)})
        return None
    # A build's stage changed, or an event of its was recorded: its GitLab commit status may
    # follow (queued for the sender; no GitLab call here).
    commit_statuses.touch(state, build_key)
    observed = [s for s in todo if s.stage in claimed]
    metrics = EngineMetrics(state.redis, prefix=state.prefix)
    for step in observed:
        metrics.stage_reached(build.get("template", "unknown"), step.stage.value,
                              step.seconds or 0.0)
    return observed
