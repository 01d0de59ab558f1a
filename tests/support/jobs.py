"""Task functions for queue tests: what a stock RQ worker imports and runs by dotted name."""

import redis


def mark_done(*, redis_url: str, key: str) -> str:
    """Leaves a trace in Redis, so a test can see that a worker ran the job."""
    redis.Redis.from_url(redis_url).incr(key)
    return "done"


def always_fails(**_kwargs) -> None:
    raise RuntimeError("this task fails on purpose, so its retry policy applies")
