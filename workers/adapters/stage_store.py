"""A build's stage times in its Redis hash (``build:<key>``, see workers.adapters.redis_state):
each stage's time written the first time only, and each stage's observation claimed once, so
that any number of workers, retries and watch events record and count a stage once.

Fields (see workers.core.stages): ``<stage>_at`` and the like (FIELD), the first wait's
reason, and ``stage:<name>`` = the seconds observed for that stage.
"""

from typing import Any

import redis

from workers.core.errors import RetryableError
from workers.core.stages import Stage, observed_field

# KEYS[1] the build's hash; ARGV field, value pairs, each written only if the field is absent
# (HSETNX), and only into a build that exists: a late event of a build whose state expired
# must not leave a stray hash behind. The whole record is the answer (nil: no such build).
_NOTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
for i = 1, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
return redis.call('HGETALL', KEYS[1])
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StageStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self._note = connection.register_script(_NOTE)

    def _k(self, build_key: str) -> str:
        return f"{self.prefix}build:{build_key}"

    def note(self, build_key: str, first: dict[str, str]) -> dict[str, str] | None:
        """Write each of `first` unless the build has that field already, and read the
        build's record, in one round trip; None when the build has no state."""
        args = [item for pair in first.items() for item in pair]
        try:
            flat = self._note(keys=[self._k(build_key)], args=args)
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        if flat is None:
            return None
        return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat), 2)}

    def claim(self, build_key: str, seconds: dict[Stage, float]) -> list[Stage]:
        """Mark these stages observed with their seconds; the ones this call marked (the
        others were claimed by another process in the meantime)."""
        if not seconds:
            return []
        stages = list(seconds)
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for stage in stages:
                    pipe.hsetnx(self._k(build_key), observed_field(stage),
                                f"{seconds[stage]:.3f}")
                taken = pipe.execute()
        except redis.RedisError as err:
            raise RetryableError(f"redis unavailable: {type(err).__name__}") from err
        return [stage for stage, won in zip(stages, taken) if won]
