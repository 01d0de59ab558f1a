"""RQ tasks of the warm pools: start the replacement of a claimed agent at once (not at the
next reconcile pass), and give idle agents up while builds wait for capacity, then re-drive
them."""

from typing import Any

from workers import runtime
from workers.engine import redrive, scheduling, task_args, tasks
from workers.warm import giving_way, pool


def replenish(template: str, **newer: Any) -> dict[str, int]:
    """Bring this template's pool back to its target (a build just took one of its agents).
    `newer`: a newer release's arguments, run without (workers.engine.task_args)."""
    task_args.ignored("replenish", newer)
    rt = runtime.current()
    with tasks.engine_metrics(rt).errors_counted("provision"):
        return pool.run(rt, only=template)


def give_way(**newer: Any) -> dict[str, int]:
    """Idle warm agents give way to the builds waiting for capacity, which are re-driven.
    `newer`: a newer release's arguments, run without (workers.engine.task_args)."""
    task_args.ignored("give_way", newer)
    rt = runtime.current()
    with tasks.engine_metrics(rt).errors_counted("provision"):
        rt.state.redis.delete(rt.state.prefix + scheduling.GIVE_WAY_PENDING)
        given = giving_way.give_way(rt)
        if given:
            redrive.request_redrive(rt)
        return {"warm_gave_way": given}

