"""A pool's back-off after its agents fail to start (workers.core.warm_pool.backoff_seconds):
per template, in Redis (every process's pool pass and replenish task reads it), the failures
in a row, until when no agent is started, and the pod fingerprint they failed under. An agent
of the template that comes online ends it; so does another fingerprint (the file changed: an
image fixed), which starts afresh at once."""

import json
import logging

from workers.core.warm_pool import backoff_seconds
from workers.runtime import Runtime
from workers.warm import agents

# (re-exported for the README's and the tests' names)
from workers.core.warm_pool import WARM_BACKOFF_MAX_SECONDS, WARM_BACKOFF_SECONDS  # noqa: F401

log = logging.getLogger("ci_autoscaler.warm")
KEY = "warm-backoff"  # hash: template -> JSON [failures, until, pod fingerprint]


def _read(rt: Runtime, template: str) -> tuple[int, float]:
    """The failures in a row and until when, under the template's pod spec now ((0, 0) when
    none, or when they were under another one)."""
    raw = rt.state.redis.hget(rt.state.prefix + KEY, template)
    if not raw:
        return 0, 0.0
    try:
        failures, until, spec = json.loads(raw)
    except (ValueError, TypeError):  # not ours to fail a pass on
        return 0, 0.0
    if spec != agents.current_spec(rt, template):
        return 0, 0.0
    return int(failures), float(until)


def failed(rt: Runtime, template: str, now: float) -> float:
    """One more start failure in a row (called once per pass, under the pool's lease, however
    many agents failed in it): until when the pool starts none."""
    failures = _read(rt, template)[0] + 1
    until = now + backoff_seconds(failures)
    rt.state.redis.hset(rt.state.prefix + KEY, template,
                        json.dumps([failures, until, agents.current_spec(rt, template)]))
    log.warning("warm agents of the template fail to start: the pool backs off",
                extra={"template": template, "failures": failures,
                       "seconds": round(until - now, 3)})
    return until


def backing_off(rt: Runtime, template: str, now: float) -> bool:
    return now < _read(rt, template)[1]


def online(rt: Runtime, template: str) -> None:
    """An agent of the template came online: its starts work again."""
    rt.state.redis.hdel(rt.state.prefix + KEY, template)
