"""What the reconcile pass last found in Jenkins' queue that no template serves
(workers.engine.unserved): items waiting on a label expression that names a template's label.
The status page lists them, and each is logged once, when first found.

Keys (under the prefix):
  ``unserved-items``  hash: queue item id -> JSON {job, expression, reason, since}; expires
                      UNSERVED_TTL_SECONDS after the last pass that found one (with no
                      leader passing, none is left shown for long)
"""

import json
from typing import Any

from workers.adapters.redis_state import RedisState

UNSERVED = "unserved-items"
UNSERVED_TTL_SECONDS = 3600


def read(state: RedisState) -> dict[int, dict[str, Any]]:
    raw = state.redis.hgetall(state.prefix + UNSERVED)
    found = {}
    for item, value in raw.items():
        try:
            found[int(item)] = json.loads(value)
        except ValueError:  # not ours to read: left out, replaced by the next write
            continue
    return found


def replace(state: RedisState, items: dict[int, dict[str, Any]]) -> None:
    """The items found now (those gone from the queue, or served, dropped)."""
    key = state.prefix + UNSERVED
    with state.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if items:
            pipe.hset(key, mapping={str(i): json.dumps(v, sort_keys=True)
                                    for i, v in items.items()})
            pipe.expire(key, UNSERVED_TTL_SECONDS)
        pipe.execute()
