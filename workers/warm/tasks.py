"""RQ tasks of the warm pools: start the replacement of a claimed agent at once (not at the
next reconcile pass), and give idle agents up while builds wait for capacity, then re-drive
them."""

from workers import redrive, runtime, scheduling, tasks
from workers.warm import pool


def replenish(template: str) -> dict[str, int]:
    """Bring this template's pool back to its target (a build just took one of its agents)."""
    rt = runtime.current()
    with tasks.engine_metrics(rt).errors_counted("provision"):
        return pool.run(rt, only=template)


def give_way() -> dict[str, int]:
    """Idle warm agents give way to the builds waiting for capacity, which are re-driven."""
    rt = runtime.current()
    with tasks.engine_metrics(rt).errors_counted("provision"):
        rt.state.redis.delete(rt.state.prefix + scheduling.GIVE_WAY_PENDING)
        given = pool.give_way(rt)
        if given:
            redrive.request_redrive(rt)
        return {"warm_gave_way": given}

