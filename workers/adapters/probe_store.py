"""What the reconcile pass remembers of the label probe (workers.engine.label_probe): that it made
the probe (so a pass reads Jenkins' node list only when the probe may be there, or an item
waits naming no label), and which queue items waited naming no label while the probe was
there (restricted to no label: the probe is not made again for them).

Keys (under the prefix):
  ``label-probe``             string: when this installation made the probe (Unix time)
  ``label-probe:unlabelled``  set: queue item ids; expires a day after its last change
  ``label-probe:checked``     string: Jenkins' node list was read for the probe; expires
                              after CHECK_SECONDS, so a probe whose record was lost (Redis
                              came back empty, the create's every answer lost) is found
"""

from workers.adapters.redis_state import RedisState

MADE = "label-probe"
UNLABELLED = "label-probe:unlabelled"
UNLABELLED_TTL_SECONDS = 24 * 3600
CHECKED = "label-probe:checked"
CHECK_SECONDS = 3600


def made(state: RedisState) -> bool:
    """Whether this installation made the probe and has not deleted it since."""
    return bool(state.redis.exists(state.prefix + MADE))


def note_made(state: RedisState, now: float) -> None:
    state.redis.set(state.prefix + MADE, repr(now))


def note_deleted(state: RedisState) -> None:
    state.redis.delete(state.prefix + MADE)


def checked(state: RedisState) -> bool:
    """Whether a pass read Jenkins' node list for the probe less than CHECK_SECONDS ago."""
    return bool(state.redis.exists(state.prefix + CHECKED))


def note_checked(state: RedisState) -> None:
    state.redis.set(state.prefix + CHECKED, "1", ex=CHECK_SECONDS)


def unlabelled(state: RedisState) -> set[int]:
    return {int(i) for i in state.redis.smembers(state.prefix + UNLABELLED)}


def keep_unlabelled(state: RedisState, ids: set[int]) -> None:
    """The items known to have no label are these now (those gone from the queue dropped)."""
    key = state.prefix + UNLABELLED
    with state.redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if ids:
            pipe.sadd(key, *sorted(ids))
            pipe.expire(key, UNLABELLED_TTL_SECONDS)
        pipe.execute()
