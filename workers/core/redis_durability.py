"""Whether Redis keeps what it answered across its own restart, judged from INFO persistence
(`aof_enabled`) and CONFIG GET appendfsync (REALITY.md, Redis; redis.io, "Redis
persistence"). A 2xx to a webhook promises the push is on disk: without the append-only file,
a Redis restart loses every key written since its last RDB snapshot (all of them with
`save ""`): answered pushes, build records, delivery marks. With `appendfsync everysec` a crash
of Redis or its node loses up to the last second of them; with `no`, what the kernel had not
written yet. Said in one line each, for `check-config --live` and the start-up warnings of
the web, the worker and the reconcile loop: a risk, not a refusal (a test Redis, say)."""

WHERE_TO_READ = "README: When things fail"
FSYNCED = "always"


def risks(aof_enabled: bool | None, appendfsync: str | None, *, replicated: bool) -> list[str]:
    """The lines saying what Redis may lose of what we answered; [] when nothing. None for a
    value Redis did not give (INFO without aof_enabled; CONFIG refused: a managed Redis).
    `replicated`: a push is answered only once a replica has it (Sentinel's WAIT), which a
    lost second of the master's file does not undo."""
    if aof_enabled is False:
        return [f"Redis: appendonly no: a restart of Redis loses every key written since its "
                f"last RDB snapshot, answered pushes among them (a 2xx promises them), build "
                f"records and delivery marks; set appendonly yes and appendfsync {FSYNCED} "
                f"({WHERE_TO_READ})"]
    if aof_enabled and appendfsync and appendfsync != FSYNCED and not replicated:
        return [f"Redis: appendfsync {appendfsync}: a crash of Redis or its node loses the "
                f"writes not yet fsynced (up to the last second with everysec), answered "
                f"pushes among them; set appendfsync {FSYNCED} ({WHERE_TO_READ})"]
    return []
