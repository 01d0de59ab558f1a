"""Whether the service's Redis keeps what it answered across its restart
(workers.core.redis_durability), read from INFO persistence and CONFIG GET appendfsync: for
`check-config --live`, the start-up checks of the worker and the reconcile loop
(workers.checks.live) and the web's gunicorn master (service.startup). A Redis that refuses
INFO is not judged; one that refuses CONFIG (a managed Redis, the web's ACL user) is judged on
INFO alone. One that does not answer raises redis-py's error."""

import redis

from workers.core.redis_durability import risks as judged


def replicated(settings) -> bool:
    """Whether a push is answered only once a replica has it (Settings.push_replicas)."""
    return settings.push_replicas > 0


def risks(connection: redis.Redis, *, replicated: bool, config: bool = True) -> list[str]:
    """Without `config`, INFO alone: the web's Redis user may not run CONFIG (the chart's
    cia-web ACL), and each refusal would be an entry in Redis's ACL LOG."""
    try:
        aof = connection.info("persistence").get("aof_enabled")
    except redis.ResponseError:
        return []
    appendfsync = None
    if config and aof:
        try:
            appendfsync = connection.config_get("appendfsync").get("appendfsync")
        except redis.ResponseError:
            pass
    aof_enabled = None if aof is None else bool(int(aof))
    return judged(aof_enabled, str(appendfsync) if appendfsync else None, replicated=replicated)
