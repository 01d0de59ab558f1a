"""Usage history in Redis: what each running agent uses, and each job's decaying histogram.

Keys (under the prefix):
  ``usage:run:<agent>``   hash: stamp (the last metrics-server sample taken), peak (memory
                          bytes), oom_limit (the build container's memory limit when the
                          kubelet OOM-killed it); expires RUN_TTL_SECONDS after its last sample
  ``usage:cpu:<agent>``   list: the run's CPU samples in millicores, the last MAX_RUN_SAMPLES
  ``usage:job:<job>|<template>``  JSON of workers.core.usage_history.UsageHistory

Every worker process polls the agents' PodMetrics, so a sample is taken once per stamp: the
script skips a stamp it has seen (metrics-server serves one sample per pod per resolution).
A run is folded into its job's history once, when its agent is released: the run's keys are
read and deleted in one transaction, so a second release of the same agent finds nothing.
A job's history is updated with WATCH/MULTI: two releases of one job at once both count.
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from workers.core.usage_history import UsageHistory

RUN_TTL_SECONDS = 24 * 3600  # a run not sampled for a day is over (or never released)
MAX_RUN_SAMPLES = 720  # an hour of 5 s samples; p90 over the last hour of a longer build
HISTORY_TTL_SECONDS = 90 * 24 * 3600  # a job not built for 90 days starts afresh

_SAMPLE = """
if redis.call('HGET', KEYS[1], 'stamp') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'stamp', ARGV[1])
local peak = tonumber(redis.call('HGET', KEYS[1], 'peak') or '0')
if tonumber(ARGV[3]) > peak then redis.call('HSET', KEYS[1], 'peak', ARGV[3]) end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


@dataclass(frozen=True)
class RunUsage:
    """One finished run, as sampled: its peak memory, its CPU samples, and the memory limit
    it was OOM-killed at (0: not killed)."""

    peak_memory_bytes: int
    cpu_samples_millis: tuple[int, ...]
    oom_limit_bytes: int = 0
    # the kill was of the container running the Jenkins agent at its own fixed memory
    oom_agent: bool = False

    @property
    def cpu_p90_millis(self) -> int:
        if not self.cpu_samples_millis:
            return 0
        ordered = sorted(self.cpu_samples_millis)
        return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def _s(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class UsageStore:
    def __init__(self, connection: redis.Redis, *, prefix: str = "cia:"):
        self.redis = connection
        self.prefix = prefix
        self._sample = connection.register_script(_SAMPLE)

    def _run(self, agent: str) -> str:
        return f"{self.prefix}usage:run:{agent}"

    def _cpu(self, agent: str) -> str:
        return f"{self.prefix}usage:cpu:{agent}"

    def _job(self, job: str, template: str) -> str:
        return f"{self.prefix}usage:job:{job}|{template}"

    def sample(self, agent: str, *, stamp: str, cpu_millis: int, memory_bytes: int) -> bool:
        """One metrics-server sample of a running agent; False when this stamp was taken."""
        return bool(self._sample(keys=[self._run(agent), self._cpu(agent)],
                                 args=[stamp, int(cpu_millis), int(memory_bytes),
                                       RUN_TTL_SECONDS, MAX_RUN_SAMPLES]))

    def oom_killed(self, agent: str, *, memory_limit_bytes: int,
                   agent_container: bool = False) -> None:
        """The kubelet OOM-killed the agent's build container at this limit (with
        `agent_container`: the container that runs the Jenkins agent at the template's
        agentMemory, not the build's size: workers.job_history.watch)."""
        pipe = self.redis.pipeline()
        pipe.hset(self._run(agent), mapping={"oom_limit": int(memory_limit_bytes),
                                             **({"oom_agent": 1} if agent_container else {})})
        if not agent_container:
            # a build container's kill after jnlp's (the watch's later event carries both and
            # marks the build's): the run's kill is the build's, at its size, not the agent's
            pipe.hdel(self._run(agent), "oom_agent")
        pipe.expire(self._run(agent), RUN_TTL_SECONDS)
        pipe.execute()

    def oom_pending(self, agent: str) -> bool:
        """Whether the kubelet OOM-killed the agent's build container and its release has
        not taken the run yet (workers.job_history.learn records it on the build then)."""
        return bool(agent) and self.redis.hget(self._run(agent), "oom_limit") is not None

    def take_run(self, agent: str) -> RunUsage | None:
        """The run's usage, removed (None when nothing was sampled or it was taken)."""
        pipe = self.redis.pipeline()
        pipe.hgetall(self._run(agent))
        pipe.lrange(self._cpu(agent), 0, -1)
        pipe.delete(self._run(agent), self._cpu(agent))
        fields, cpu, _ = pipe.execute()
        fields = {_s(k): _s(v) for k, v in fields.items()}
        if not fields:
            return None
        return RunUsage(int(float(fields.get("peak") or 0)),
                        tuple(int(float(_s(c))) for c in cpu),
                        int(float(fields.get("oom_limit") or 0)),
                        oom_agent=bool(fields.get("oom_agent")))

    def history(self, job: str, template: str) -> UsageHistory:
        raw = self.redis.get(self._job(job, template))
        return UsageHistory.from_dict(json.loads(raw)) if raw else UsageHistory()

    def carry_history(self, old_job: str, new_job: str, template: str) -> bool:
        """The history of `old_job` becomes `new_job`'s too, unless it has one (a job renamed
        or moved in Jenkins: workers.job_history.learn); whether it was carried."""
        return bool(self.redis.copy(self._job(old_job, template), self._job(new_job, template)))

    def update_history(self, job: str, template: str, change) -> UsageHistory:
        """Apply `change` (UsageHistory -> UsageHistory) to the stored history, atomically
        against other writers (WATCH/MULTI, retried on a conflict)."""
        key = self._job(job, template)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    current = UsageHistory.from_dict(json.loads(raw)) if raw \
                        else UsageHistory()
                    updated = change(current)
                    pipe.multi()
                    pipe.set(key, json.dumps(updated.to_dict(), separators=(",", ":")),
                             ex=HISTORY_TTL_SECONDS)
                    pipe.execute()
                    return updated
                except redis.WatchError:
                    continue

    def histories(self) -> Iterator[tuple[str, str, UsageHistory]]:
        """Every (job, template, history) stored."""
        pattern = f"{self.prefix}usage:job:*"
        start = len(f"{self.prefix}usage:job:")
        for key in self.redis.scan_iter(match=pattern, count=500):
            name = _s(key)[start:]
            job, _, template = name.rpartition("|")
            raw = self.redis.get(key)
            if raw:
                yield job, template, UsageHistory.from_dict(json.loads(raw))
